//! A lean MQTT client for load: one TCP stream, the project's codec, batched
//! writes. Only what the scenarios need.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt::{
    ConnAck, Connect, Decoder, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::BenchError;

const HANDSHAKE: Duration = Duration::from_secs(30);

/// A connected client.
pub(crate) struct BenchConnection {
    pub stream: TcpStream,
    pub decoder: Decoder,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub version: ProtocolVersion,
    /// QoS 1 and 2 PUBLISHes the broker takes unacknowledged: its Receive
    /// Maximum from the CONNACK (MQTT 5), else all packet identifiers.
    pub send_quota: usize,
}

impl BenchConnection {
    /// Opens TCP (from `source` when given, so many connections can use many
    /// loopback addresses) and completes CONNECT/CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        client_id: &str,
        version: ProtocolVersion,
        persistent: bool,
    ) -> Result<Self, BenchError> {
        let connect_err = |source| BenchError::Connect { addr, source };
        let stream = match source {
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(connect_err)?;
                socket.bind(SocketAddr::new(ip, 0)).map_err(connect_err)?;
                socket.connect(addr).await.map_err(connect_err)?
            }
            None => TcpStream::connect(addr).await.map_err(connect_err)?,
        };
        stream.set_nodelay(true)?;
        let mut conn = BenchConnection {
            stream,
            decoder: Decoder::with_version(version),
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: BytesMut::with_capacity(8 * 1024),
            version,
            send_quota: usize::from(u16::MAX),
        };
        // A persistent session makes the broker keep what it owes the
        // client past the connection: with persistence on, in its log.
        // MQTT 5 starts it fresh with an expiry [MQTT-3.1.2-23]; 3.1.1 can
        // only ask to keep it (Clean Session 0) [MQTT-3.1.2-4].
        let properties = if version.is_v5() {
            Properties {
                receive_maximum: Some(u16::MAX),
                session_expiry_interval: persistent.then_some(3_600),
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        conn.push(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: version.is_v5() || !persistent,
            keep_alive: 0,
            properties,
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
        })));
        conn.flush().await?;
        match tokio::time::timeout(HANDSHAKE, conn.next()).await {
            Err(_) => Err(BenchError::Timeout("CONNACK")),
            Ok(Ok(Packet::ConnAck(ConnAck {
                reason: ReasonCode::Success,
                properties,
                ..
            }))) => {
                // [MQTT-3.3.4-7] no more unacknowledged than the server takes.
                if let Some(max) = properties.receive_maximum {
                    conn.send_quota = usize::from(max);
                }
                Ok(conn)
            }
            Ok(Ok(Packet::ConnAck(ack))) => Err(BenchError::Refused(ack.reason)),
            Ok(Ok(_)) => Err(BenchError::Closed),
            Ok(Err(e)) => Err(e),
        }
    }

    pub fn push(&mut self, packet: &Packet) {
        // Our own packets always encode; a failure would be a bug in a scenario.
        let _ = encode(packet, self.version, &mut self.wbuf);
    }

    pub async fn flush(&mut self) -> Result<(), BenchError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// The next packet, reading as needed.
    pub async fn next(&mut self) -> Result<Packet, BenchError> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(p);
            }
            self.read_more().await?;
        }
    }

    /// Reads what is available (cancel-safe).
    pub async fn read_more(&mut self) -> Result<(), BenchError> {
        self.rbuf.reserve(64 * 1024);
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(BenchError::Closed),
            _ => Ok(()),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BenchError> {
        self.push(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        }));
        self.flush().await?;
        loop {
            match tokio::time::timeout(HANDSHAKE, self.next()).await {
                Err(_) => return Err(BenchError::Timeout("SUBACK")),
                Ok(Ok(Packet::SubAck(ack))) => {
                    return match ack.reasons.first() {
                        Some(r) if !r.is_error() => Ok(()),
                        Some(r) => Err(BenchError::Refused(*r)),
                        None => Err(BenchError::Closed),
                    };
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.push(&Packet::Disconnect(mqtt::Disconnect::new(
            ReasonCode::Success,
        )));
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// A PUBLISH for the generator.
pub(crate) fn publish(topic: &str, qos: QoS, packet_id: u16, payload: Bytes) -> Packet {
    Packet::Publish(mqtt::Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id,
        properties: Properties::default(),
        payload,
    })
}
