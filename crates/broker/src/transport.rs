//! Byte streams a connection runs over: TCP, TLS, WebSocket frames, or an
//! in-process pipe.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Any duplex byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A connection's transport. Reads are cancel-safe, so they can sit in a
/// `select!` with the session's wake-up.
pub(crate) enum Transport {
    Stream(Box<dyn Io>),
    WebSocket(Box<WebSocketStream<Box<dyn Io>>>),
}

impl Transport {
    /// Appends what arrives to `buf`; `Ok(0)` is the end of the stream.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Stream(stream) => {
                buf.reserve(8 * 1024);
                stream.read_buf(buf).await
            }
            Transport::WebSocket(ws) => loop {
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
            },
        }
    }

    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Stream(stream) => {
                stream.write_all(data).await?;
                stream.flush().await
            }
            Transport::WebSocket(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }

    pub(crate) async fn close(&mut self) {
        match self {
            Transport::Stream(stream) => {
                let _ = stream.shutdown().await;
            }
            Transport::WebSocket(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}
