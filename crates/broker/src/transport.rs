//! Byte streams a connection runs over: TCP, TLS, WebSocket frames, or an
//! in-process pipe.

use std::io;
use std::pin::Pin;
use std::task::ready;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::io::poll_read_buf;

/// Bytes asked of the socket per read: small at first (a CONNECT is a few
/// dozen bytes, and thousands of idle devices should not each leave a large
/// freed buffer behind), doubling while reads come back full.
const FIRST_READ: usize = 512;
const LARGEST_READ: usize = 64 * 1024;

/// Any duplex byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A connection's transport. Reads are cancel-safe, so they can sit in a
/// `select!` with the session's wake-up.
pub(crate) struct Transport {
    kind: TransportKind,
    read_size: usize,
}

enum TransportKind {
    /// Plain TCP, without the indirection of a boxed stream.
    Tcp(tokio::net::TcpStream),
    Stream(Box<dyn Io>),
    WebSocket(Box<WebSocketStream<Box<dyn Io>>>),
}

impl Transport {
    pub(crate) fn tcp(stream: tokio::net::TcpStream) -> Self {
        Transport::new(TransportKind::Tcp(stream))
    }

    pub(crate) fn stream(stream: Box<dyn Io>) -> Self {
        Transport::new(TransportKind::Stream(stream))
    }

    pub(crate) fn websocket(ws: WebSocketStream<Box<dyn Io>>) -> Self {
        Transport::new(TransportKind::WebSocket(Box::new(ws)))
    }

    fn new(kind: TransportKind) -> Self {
        Transport {
            kind,
            read_size: FIRST_READ,
        }
    }

    /// Plain TCP: the only kind that can hibernate.
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self.kind, TransportKind::Tcp(_))
    }

    pub(crate) fn into_tcp(self) -> Option<tokio::net::TcpStream> {
        match self.kind {
            TransportKind::Tcp(stream) => Some(stream),
            _ => None,
        }
    }

    /// Appends what arrives to `buf`; `Ok(0)` is the end of the stream.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let size = self.read_size;
        let n = match &mut self.kind {
            // Polled by hand: this future is part of every idle connection's
            // state, and an async block with its awaits is three times the size.
            TransportKind::Tcp(stream) => {
                std::future::poll_fn(|cx| {
                    if buf.capacity() == 0 {
                        // An idle connection holds no buffer: one is taken
                        // only once the socket has something to read.
                        ready!(stream.poll_read_ready(cx))?;
                    }
                    buf.reserve(size);
                    // A read into the buffer (not try_read) lets tokio see a
                    // short read and skip the extra read that would only say
                    // WouldBlock.
                    poll_read_buf(Pin::new(&mut *stream), cx, buf)
                })
                .await?
            }
            TransportKind::Stream(stream) => {
                buf.reserve(size);
                std::future::poll_fn(|cx| poll_read_buf(Pin::new(&mut *stream), cx, buf)).await?
            }
            // Boxed: WebSocket clients are few, and its reader is large.
            TransportKind::WebSocket(ws) => return Box::pin(read_websocket(ws, buf)).await,
        };
        self.read_size = if n >= size {
            (size * 2).min(LARGEST_READ)
        } else {
            (size / 2).max(FIRST_READ)
        };
        Ok(n)
    }

    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.kind {
            TransportKind::Tcp(stream) => stream.write_all(data).await,
            TransportKind::Stream(stream) => {
                stream.write_all(data).await?;
                stream.flush().await
            }
            TransportKind::WebSocket(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes after the broker ended the connection with a reason (a
    /// DISCONNECT or a refusing CONNACK): half-closes, then reads and
    /// discards what the client still sends until it closes too. Closing
    /// with unread data, or data still on its way, makes the kernel answer
    /// with a reset: the client's next write fails and it may never read
    /// the reason waiting in its receive buffer. A client still answering
    /// (PUBREL for each PUBREC, say) is read for as long as it keeps
    /// sending, within bounds: `idle` without a byte, `DRAIN_FOR` in all,
    /// `DRAIN_AT_MOST` bytes.
    pub(crate) async fn close_and_drain(&mut self, idle: std::time::Duration) {
        self.close().await;
        let mut sink = BytesMut::new();
        let deadline = tokio::time::Instant::now() + DRAIN_FOR;
        let mut drained = 0;
        while drained < DRAIN_AT_MOST {
            sink.clear();
            let until = deadline.min(tokio::time::Instant::now() + idle);
            match tokio::time::timeout_at(until, self.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }

    pub(crate) async fn close(&mut self) {
        match &mut self.kind {
            TransportKind::Tcp(stream) => {
                let _ = stream.shutdown().await;
            }
            TransportKind::Stream(stream) => {
                let _ = stream.shutdown().await;
            }
            TransportKind::WebSocket(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}

/// How long, and how much, a closing connection reads and discards.
/// Without a byte for `DRAIN_IDLE` (shorter while the broker shuts down,
/// which waits for every connection), a client is taken to be done.
pub(crate) const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(2);
pub(crate) const DRAIN_IDLE_AT_SHUTDOWN: std::time::Duration =
    std::time::Duration::from_millis(300);
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);
const DRAIN_AT_MOST: usize = 1 << 20;

async fn read_websocket(
    ws: &mut WebSocketStream<Box<dyn Io>>,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    loop {
        match ws.next().await {
            None => return Ok(0),
            Some(Ok(WsMessage::Binary(data))) => {
                buf.extend_from_slice(&data);
                if !data.is_empty() {
                    return Ok(data.len());
                }
            }
            // [MQTT-6.0.0-1] MQTT goes in binary frames; anything else
            // closes the connection.
            Some(Ok(WsMessage::Text(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text frame on an MQTT WebSocket [MQTT-6.0.0-1]",
                ));
            }
            Some(Ok(WsMessage::Close(_))) => return Ok(0),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(io::Error::other(e)),
        }
    }
}
