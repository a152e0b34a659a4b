//! One channel of a remote session: a byte stream on this side (a PTY, a
//! TCP connection) turned into frames and back, paced by the session's
//! byte-credit windows. The agent runs it against the device's PTY and
//! local ports, `telemark tunnel` against the engineer's TCP connections.
//!
//! A `Close` with an empty reason ends one direction (like a TCP FIN: the
//! writer is flushed and shut down); a reason ends the channel at once.

use device_protocol::session::{Frame, MAX_DATA, ReceiveWindow, SendWindow};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Pumps `reader` into Data frames on `out` and the channel's incoming
/// Data frames into `writer`, until both directions are closed (Ok) or
/// something failed (Err with why; the caller tells the peer).
pub async fn pump<R, W>(
    channel: u32,
    window: u32,
    mut reader: R,
    writer: W,
    mut incoming: mpsc::UnboundedReceiver<Frame>,
    out: mpsc::Sender<Frame>,
) -> Result<(), String>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut send = SendWindow::new(window);
    let mut receive = ReceiveWindow::new(window);
    // Unbounded, yet never more than a window: `receive.data` checks first.
    let (to_writer, writer_queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let (consumed_tx, mut consumed) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_side(writer, writer_queue, consumed_tx));
    let _stop_writer = AbortOnDrop(writer);
    let mut to_writer = Some(to_writer);
    let mut buf = vec![0u8; MAX_DATA];
    let (mut read_done, mut write_done, mut incoming_open) = (false, false, true);
    let gone = || "the session ended".to_owned();
    while !(read_done && write_done) {
        let room = send.room().min(MAX_DATA);
        tokio::select! {
            read = reader.read(&mut buf[..room]), if !read_done && room > 0 => match read {
                Ok(0) => {
                    read_done = true;
                    out.send(Frame::Close { channel, reason: String::new() }).await.map_err(|_| gone())?;
                }
                Ok(n) => {
                    let offset = send.sent(n);
                    let bytes = buf[..n].to_vec();
                    out.send(Frame::Data { channel, offset, bytes }).await.map_err(|_| gone())?;
                }
                Err(e) => return Err(format!("read: {e}")),
            },
            frame = incoming.recv(), if incoming_open => match frame {
                // Both ends said all they had: only our writer is left.
                None if read_done && to_writer.is_none() => incoming_open = false,
                None => return Err(gone()),
                Some(Frame::Data { offset, bytes, .. }) => {
                    receive.data(offset, bytes.len()).map_err(|e| e.to_string())?;
                    match &to_writer {
                        Some(w) if w.send(bytes).is_ok() => {}
                        _ => return Err("data after the end of the stream".into()),
                    }
                }
                Some(Frame::Ack { consumed, .. }) => send.ack(consumed).map_err(|e| e.to_string())?,
                Some(Frame::Close { reason, .. }) if reason.is_empty() => to_writer = None,
                Some(Frame::Close { reason, .. }) => return Err(reason),
                Some(other) => return Err(format!("unexpected {other:?} on a channel")),
            },
            done = consumed.recv(), if !write_done => match done {
                Some(Ok(n)) => {
                    if let Some(acked) = receive.consumed(n) {
                        // A peer already finished with the channel needs no
                        // credit; the bytes still go out.
                        let _ = out.send(Frame::Ack { channel, consumed: acked }).await;
                    }
                }
                Some(Err(e)) => return Err(e),
                // The writer flushed everything after the peer's close.
                None => write_done = true,
            },
        }
    }
    Ok(())
}

async fn write_side<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    consumed: mpsc::UnboundedSender<Result<usize, String>>,
) {
    while let Some(bytes) = queue.recv().await {
        if let Err(e) = writer.write_all(&bytes).await {
            let _ = consumed.send(Err(format!("write: {e}")));
            return;
        }
        let _ = consumed.send(Ok(bytes.len()));
    }
    let _ = writer.shutdown().await;
}

/// Aborts a spawned task when its owner goes away.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pumps back to back over in-memory pipes carry a stream larger
    /// than the window both ways, and close in order.
    #[tokio::test]
    async fn two_pumps_carry_a_stream_both_ways() {
        let (a_app, a_side) = tokio::io::duplex(64 * 1024);
        let (b_app, b_side) = tokio::io::duplex(64 * 1024);
        let (a_out, mut a_frames) = mpsc::channel(16);
        let (b_out, mut b_frames) = mpsc::channel(16);
        let (a_in, a_incoming) = mpsc::unbounded_channel();
        let (b_in, b_incoming) = mpsc::unbounded_channel();
        // The wire: what one side sends, the other receives.
        tokio::spawn(async move {
            while let Some(f) = a_frames.recv().await {
                if b_in.send(f).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(f) = b_frames.recv().await {
                if a_in.send(f).is_err() {
                    break;
                }
            }
        });
        let (ar, aw) = tokio::io::split(a_side);
        let (br, bw) = tokio::io::split(b_side);
        let a = tokio::spawn(pump(1, 8 * 1024, ar, aw, a_incoming, a_out));
        let b = tokio::spawn(pump(1, 8 * 1024, br, bw, b_incoming, b_out));
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut a_read, mut a_write) = tokio::io::split(a_app);
        let (mut b_read, mut b_write) = tokio::io::split(b_app);
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            a_write.write_all(&sent).await.expect("write");
            a_write.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        b_read.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(got, payload);
        b_write.write_all(b"bye").await.expect("answer");
        b_write.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        a_read.read_to_end(&mut answer).await.expect("read answer");
        assert_eq!(answer, b"bye");
        assert_eq!(a.await.expect("a"), Ok(()));

        assert_eq!(b.await.expect("b"), Ok(()));
    }
}
