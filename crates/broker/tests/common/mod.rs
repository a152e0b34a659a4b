//! A broker on 127.0.0.1 and a raw MQTT client on the project's codec, for
//! tests that need to see every byte the broker sends.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::{AllowAll, Authenticator, Broker, ListenerKind, Settings};
use bytes::{Bytes, BytesMut};
use mqtt::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const WAIT: Duration = Duration::from_secs(5);

/// A will of "gone" at QoS 1 on `topic`.
pub fn will(topic: &str) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    }
}

pub struct TestBroker {
    pub broker: Broker,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
}

pub async fn start() -> TestBroker {
    start_with(Settings::default(), Arc::new(AllowAll)).await
}

pub async fn start_with(settings: Settings, auth: Arc<dyn Authenticator>) -> TestBroker {
    let broker = Broker::new(settings, auth);
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let (tcp_addr, ws_addr) = (
        tcp.local_addr().expect("addr"),
        ws.local_addr().expect("addr"),
    );
    broker.serve(tcp, ListenerKind::Tcp);
    broker.serve(ws, ListenerKind::WebSocket);
    TestBroker {
        broker,
        tcp: tcp_addr,
        ws: ws_addr,
    }
}

pub fn quick_settings() -> Settings {
    Settings {
        sys_interval_secs: 0,
        ..Settings::default()
    }
}

/// Options of a test CONNECT.
#[derive(Clone)]
pub struct Conn {
    pub version: ProtocolVersion,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub properties: Properties,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

impl Conn {
    pub fn v5(client_id: &str) -> Self {
        Conn {
            version: ProtocolVersion::V5,
            client_id: client_id.into(),
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub fn v311(client_id: &str) -> Self {
        Conn {
            version: ProtocolVersion::V3_1_1,
            ..Conn::v5(client_id)
        }
    }

    pub fn persistent(mut self, expiry: u32) -> Self {
        self.clean_start = false;
        if self.version.is_v5() {
            self.properties.session_expiry_interval = Some(expiry);
        }
        self
    }

    pub fn resume(mut self) -> Self {
        self.clean_start = false;
        self
    }

    pub fn packet(&self) -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol: self.version,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            properties: self.properties.clone(),
            client_id: self.client_id.clone(),
            will: self.will.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
        }))
    }
}

pub struct Client {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
    next_id: u16,
}

impl Client {
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            version,
            decoder: Decoder::with_version(version),
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    /// Connects and returns the CONNACK, whatever it says.
    pub async fn connect_with(addr: SocketAddr, conn: &Conn) -> (Client, ConnAck) {
        let mut client = Client::open(addr, conn.version).await;
        client.send(&conn.packet()).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and insists on success.
    pub async fn connect(addr: SocketAddr, conn: &Conn) -> (Client, ConnAck) {
        let (client, ack) = Client::connect_with(addr, conn).await;
        assert_eq!(ack.reason, ReasonCode::Success, "CONNACK {ack:?}");
        (client, ack)
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed: a failed write shows up as a
        // close on the next read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or None when the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        match self.recv_within(WAIT).await {
            Ok(p) => p,
            Err(_) => panic!("no packet within {WAIT:?}"),
        }
    }

    pub async fn recv_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<Packet>, tokio::time::error::Elapsed> {
        tokio::time::timeout(limit, async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(p)) => return Some(p),
                    Ok(None) => {}
                    Err(e) => panic!("broker sent a bad packet: {e}"),
                }
                self.buf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Asserts nothing arrives for `limit`.
    pub async fn expect_silence(&mut self, limit: Duration) {
        if let Ok(p) = self.recv_within(limit).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Asserts the broker closes the connection, after an optional
    /// DISCONNECT whose reason is returned.
    pub async fn expect_closed(&mut self) -> Option<ReasonCode> {
        match self.recv().await {
            None => None,
            Some(Packet::Disconnect(d)) => {
                assert_eq!(
                    self.recv().await,
                    None,
                    "connection stays open after DISCONNECT"
                );
                Some(d.reason)
            }
            Some(other) => panic!("expected close, got {other:?}"),
        }
    }

    pub fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> SubAck {
        let packet_id = self.next_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            filters: vec![(filter.into(), options)],
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, packet_id);
                ack
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> ReasonCode {
        let ack = self
            .subscribe_with(
                filter,
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
                Properties::default(),
            )
            .await;
        ack.reasons[0]
    }

    pub fn publish_packet(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Publish {
        Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: if qos == QoS::AtMostOnce {
                0
            } else {
                self.next_id()
            },
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// Publishes and completes the QoS flow; returns the broker's reason.
    pub async fn publish_full(&mut self, publish: Publish) -> ReasonCode {
        let id = publish.packet_id;
        let qos = publish.qos;
        self.send(&Packet::Publish(publish)).await;
        match qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => match self.recv().await {
                Some(Packet::PubAck(ack)) if ack.packet_id == id => ack.reason,
                other => panic!("expected PUBACK {id}, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let reason = match self.recv().await {
                    Some(Packet::PubRec(rec)) if rec.packet_id == id => rec.reason,
                    other => panic!("expected PUBREC {id}, got {other:?}"),
                };
                if reason.is_error() {
                    return reason;
                }
                self.send(&Packet::PubRel(PubResponse::new(id))).await;
                match self.recv().await {
                    Some(Packet::PubComp(c)) if c.packet_id == id => reason,
                    other => panic!("expected PUBCOMP {id}, got {other:?}"),
                }
            }
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> ReasonCode {
        let p = self.publish_packet(topic, payload, qos, retain);
        self.publish_full(p).await
    }

    /// The next PUBLISH, acknowledged as its QoS asks.
    pub async fn recv_publish(&mut self) -> Publish {
        let p = self.recv_publish_no_ack().await;
        self.ack(&p).await;
        p
    }

    pub async fn recv_publish_no_ack(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn ack(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.send(&Packet::PubAck(PubResponse::new(p.packet_id)))
                    .await
            }
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(PubResponse::new(p.packet_id)))
                    .await;
                match self.recv().await {
                    Some(Packet::PubRel(r)) if r.packet_id == p.packet_id => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(PubResponse::new(p.packet_id)))
                    .await;
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .await;
        let _ = self.stream.shutdown().await;
    }
}

/// A certificate authority made for one test, with its files in a temp dir.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pub certificate: rcgen::Certificate,
}

impl TestCa {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // OpenSSL takes a certificate whose issuer equals its subject for
        // self-signed: the CA needs a name of its own.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Telemark test CA");
        let certificate = params.self_signed(&key).expect("ca");
        TestCa {
            dir: tempfile::tempdir().expect("tempdir"),
            params,
            key,
            certificate,
        }
    }

    /// A certificate for `name`, signed by this CA, with its key.
    pub fn issue(&self, name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.into()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("certificate");
        (cert, key)
    }

    pub fn write(&self, name: &str, pem: String) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    }

    /// Server files for `localhost`; with `client_ca`, clients need a
    /// certificate from this CA.
    pub fn server_files(&self, client_ca: bool) -> broker::TlsFiles {
        let (server, key) = self.issue("localhost");
        broker::TlsFiles {
            certificate: self.write("server.crt", server.pem()),
            private_key: self.write("server.key", key.serialize_pem()),
            client_ca: client_ca.then(|| self.write("ca.crt", self.certificate.pem())),
            require_client_certificate: client_ca,
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.certificate.der().clone()).expect("root");
        roots
    }
}
