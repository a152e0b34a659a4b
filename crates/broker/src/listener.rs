//! Listeners: TCP, TLS (optionally mutual), WebSocket and secure WebSocket.
//! Every listener serves every protocol version [MQTT-4.2].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tracing::{debug, warn};

use crate::Broker;
use crate::connection::{self, ConnectionInfo};
use crate::transport::{Io, Transport};

/// The path MQTT over WebSocket is served on.
pub const WEBSOCKET_PATH: &str = "/mqtt";

/// The certificate, key and (for mTLS) client CA of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Clients present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With a client CA: refuse clients without a certificate.
    pub require_client_certificate: bool,
}

/// A TLS setup that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsFiles {
    /// Builds the acceptor: rustls with the ring provider.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let read_err = |path: &PathBuf, e: &dyn std::fmt::Display| TlsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.certificate)
            .map_err(|e| read_err(&self.certificate, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| read_err(&self.certificate, &e))?;
        let key = PrivateKeyDer::from_pem_file(&self.private_key)
            .map_err(|e| read_err(&self.private_key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| read_err(ca, &e))? {
                    roots
                        .add(cert.map_err(|e| read_err(ca, &e))?)
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_client_certificate {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// How a listener speaks to its clients.
#[derive(Clone)]
pub enum ListenerKind {
    Tcp,
    Tls(TlsAcceptor),
    WebSocket,
    SecureWebSocket(TlsAcceptor),
}

impl std::fmt::Debug for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ListenerKind {
    pub fn name(&self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls(_) => "tls",
            ListenerKind::WebSocket => "ws",
            ListenerKind::SecureWebSocket(_) => "wss",
        }
    }
}

impl Broker {
    /// Serves clients from an already bound listener until shutdown.
    pub fn serve(&self, listener: TcpListener, kind: ListenerKind) -> JoinHandle<()> {
        let broker = self.clone();
        // Linux gives an accepted socket the listener's TCP_NODELAY: set
        // once here, it spares a system call at every connection.
        let nodelay_inherited = cfg!(target_os = "linux")
            && socket2::SockRef::from(&listener)
                .set_tcp_nodelay(true)
                .is_ok();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = broker.shutting_down() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        // Small packets go out at once: an MQTT ack or a
                        // delivery must not wait for the peer's delayed ACK.
                        if !nodelay_inherited {
                            let _ = stream.set_nodelay(true);
                        }
                        if let ListenerKind::Tcp = kind {
                            // No handshake: the connection is the whole task,
                            // with nothing else kept in it for its life.
                            let info = ConnectionInfo {
                                peer,
                                listener: kind.name(),
                                certificate_fingerprint: None,
                            };
                            tokio::spawn(connection::run(
                                broker.shared.clone(),
                                Transport::tcp(stream),
                                info,
                            ));
                            continue;
                        }
                        let broker = broker.clone();
                        let kind = kind.clone();
                        tokio::spawn(async move {
                            if let Err(e) = broker.accept_secured(stream, peer, kind).await {
                                debug!(%peer, error = %e, "connection setup failed");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then go on.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    /// A TLS or WebSocket connection: the handshake, then the connection.
    async fn accept_secured(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
    ) -> io::Result<()> {
        let listener = kind.name();
        // Boxed so the handshake's state does not stay in the connection's
        // task once it is done.
        let (transport, fingerprint) = Box::pin(self.handshake(stream, kind)).await?;
        let info = ConnectionInfo {
            peer,
            listener,
            certificate_fingerprint: fingerprint,
        };
        Box::pin(connection::run(self.shared.clone(), transport, info)).await;
        Ok(())
    }

    async fn handshake(
        &self,
        stream: TcpStream,
        kind: ListenerKind,
    ) -> io::Result<(Transport, Option<String>)> {
        let handshake_timeout = Duration::from_secs(self.shared.settings.connect_timeout_secs);
        let mut fingerprint = None;
        let io: Box<dyn Io> = match &kind {
            ListenerKind::Tcp | ListenerKind::WebSocket => Box::new(stream),
            ListenerKind::Tls(acceptor) | ListenerKind::SecureWebSocket(acceptor) => {
                let tls = tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                fingerprint = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map(|cert| hex(&Sha256::digest(cert.as_ref())));
                Box::new(tls)
            }
        };
        let transport = match &kind {
            ListenerKind::WebSocket | ListenerKind::SecureWebSocket(_) => {
                let ws = tokio::time::timeout(
                    handshake_timeout,
                    tokio_tungstenite::accept_hdr_async(io, websocket_handshake),
                )
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "WebSocket handshake timed out")
                })?
                .map_err(io::Error::other)?;
                Transport::websocket(ws)
            }
            _ => Transport::stream(io),
        };
        Ok((transport, fingerprint))
    }

    /// Serves one connection over any byte stream: an in-process client of
    /// the embedding application, or a test.
    pub async fn serve_stream(&self, stream: impl Io, peer: SocketAddr, listener: &'static str) {
        let info = ConnectionInfo {
            peer,
            listener,
            certificate_fingerprint: None,
        };
        connection::run(
            self.shared.clone(),
            Transport::stream(Box::new(stream)),
            info,
        )
        .await;
    }
}

/// Accepts the upgrade on `/mqtt` and selects the `mqtt` subprotocol
/// [MQTT-6.0.0-3] (or `mqttv3.1` for old clients).
#[allow(clippy::result_large_err)]
fn websocket_handshake(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != WEBSOCKET_PATH {
        let mut refusal = ErrorResponse::new(Some(format!("MQTT is served on {WEBSOCKET_PATH}")));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offered: Vec<String> = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    for wanted in ["mqtt", "mqttv3.1"] {
        if offered.iter().any(|p| p == wanted) {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(wanted));
            break;
        }
    }
    Ok(response)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Broker::serve` counts on where it skips the per-connection call.
    #[tokio::test]
    async fn accepted_sockets_keep_the_listeners_nodelay_on_linux() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .expect("nodelay");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        if cfg!(target_os = "linux") {
            assert!(accepted.nodelay().expect("read nodelay"));
        }
        drop(client);
    }
}
