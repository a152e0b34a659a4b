//! What the broker writes to its journal, one record per change of durable
//! state, and their binary form. Messages and wills are kept as MQTT 5
//! PUBLISH packets, so the codec that checks every client's packet checks
//! what comes back from disk too.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mqtt::{
    Decoder, Packet, ProtocolVersion, PublishRef, QoS, RetainHandling, SubscriptionOptions,
};

use crate::message::Message;
use crate::session::StoredWill;
use crate::tree::Subscription;

/// A session's place in the journal: its client and the epoch of this
/// incarnation (a Clean Start or a new session is a new epoch), so that a
/// record written for an earlier incarnation never touches a later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionKey {
    pub client: Arc<str>,
    pub epoch: u64,
}

/// One QoS 1 or 2 delivery to a persistent session, by its number in that
/// session (which also gives its packet identifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedDelivery {
    pub session: SessionKey,
    pub seq: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub(crate) enum Record {
    /// Epochs below this are taken (written first in every snapshot).
    Epochs {
        next: u64,
    },
    /// A persistent session began (`fresh`: everything before is gone) or
    /// was resumed by a new connection.
    Session {
        session: SessionKey,
        fresh: bool,
        protocol: ProtocolVersion,
        expiry: u32,
        will: Option<Box<StoredWill>>,
        /// Deliveries numbered up to this one exist or existed.
        last_seq: u64,
    },
    /// Its connection went, at this time (Unix ms), with this expiry.
    Detached {
        session: SessionKey,
        at_ms: u64,
        expiry: u32,
    },
    /// Its will was published or deleted.
    WillGone {
        session: SessionKey,
    },
    SessionEnded {
        session: SessionKey,
    },
    Subscribed {
        session: SessionKey,
        filter: String,
        subscription: Subscription,
    },
    Unsubscribed {
        session: SessionKey,
        filter: String,
    },
    /// A message and every persistent session it was queued for; and, for a
    /// QoS 2 PUBLISH from a persistent session, its packet identifier now
    /// awaiting PUBREL. One record, so a crash keeps all of it or none.
    Route {
        message: Arc<Message>,
        deliveries: Vec<LoggedDelivery>,
        received: Option<(SessionKey, u16)>,
    },
    /// PUBREC received for an outgoing QoS 2 delivery: only PUBREL remains.
    Released {
        session: SessionKey,
        seq: u64,
    },
    /// A delivery finished (PUBACK, PUBCOMP) or dropped (expired, queue full).
    Done {
        session: SessionKey,
        seq: u64,
    },
    /// An incoming QoS 2 packet identifier awaits PUBREL (snapshots).
    Received {
        session: SessionKey,
        packet_id: u16,
    },
    /// PUBREL received: the identifier is free.
    ReceiveDone {
        session: SessionKey,
        packet_id: u16,
    },
    Retained {
        message: Arc<Message>,
    },
    RetainCleared {
        topic: Arc<str>,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("record cut short")]
    Short,
    #[error("unknown record tag {0}")]
    Tag(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("stored packet: {0}")]
    Packet(#[from] mqtt::DecodeError),
}

const EPOCHS: u8 = 1;
const SESSION: u8 = 2;
const DETACHED: u8 = 3;
const WILL_GONE: u8 = 4;
const SESSION_ENDED: u8 = 5;
const SUBSCRIBED: u8 = 6;
const UNSUBSCRIBED: u8 = 7;
const ROUTE: u8 = 8;
const RELEASED: u8 = 9;
const DONE: u8 = 10;
const RECEIVED: u8 = 11;
const RECEIVE_DONE: u8 = 12;
const RETAINED: u8 = 13;
const RETAIN_CLEARED: u8 = 14;

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Record {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Record::Epochs { next } => {
                w.u8(EPOCHS);
                w.u64(*next);
            }
            Record::Session {
                session,
                fresh,
                protocol,
                expiry,
                will,
                last_seq,
            } => {
                w.u8(SESSION);
                w.key(session);
                w.u8(u8::from(*fresh));
                w.u8(protocol.level());
                w.u32(*expiry);
                w.u64(*last_seq);
                match will {
                    Some(will) => {
                        w.u8(1);
                        w.u32(u32::try_from(will.delay.as_secs()).unwrap_or(u32::MAX));
                        w.publish(
                            &will.will.topic,
                            &will.will.payload,
                            will.will.qos,
                            will.will.retain,
                            &Message::forwardable(will.will.properties.clone()),
                        );
                    }
                    None => w.u8(0),
                }
            }
            Record::Detached {
                session,
                at_ms,
                expiry,
            } => {
                w.u8(DETACHED);
                w.key(session);
                w.u64(*at_ms);
                w.u32(*expiry);
            }
            Record::WillGone { session } => {
                w.u8(WILL_GONE);
                w.key(session);
            }
            Record::SessionEnded { session } => {
                w.u8(SESSION_ENDED);
                w.key(session);
            }
            Record::Subscribed {
                session,
                filter,
                subscription,
            } => {
                w.u8(SUBSCRIBED);
                w.key(session);
                w.str(filter);
                w.u8(options_byte(subscription.options));
                w.u32(subscription.identifier.unwrap_or(0));
            }
            Record::Unsubscribed { session, filter } => {
                w.u8(UNSUBSCRIBED);
                w.key(session);
                w.str(filter);
            }
            Record::Route {
                message,
                deliveries,
                received,
            } => {
                w.u8(ROUTE);
                w.message(message);
                w.u32(deliveries.len() as u32);
                for d in deliveries {
                    w.key(&d.session);
                    w.u64(d.seq);
                    w.u8(d.qos as u8 | (u8::from(d.retain) << 2));
                    w.u32(d.subscription_ids.len() as u32);
                    for id in &d.subscription_ids {
                        w.u32(*id);
                    }
                }
                match received {
                    Some((session, packet_id)) => {
                        w.u8(1);
                        w.key(session);
                        w.u16(*packet_id);
                    }
                    None => w.u8(0),
                }
            }
            Record::Released { session, seq } => {
                w.u8(RELEASED);
                w.key(session);
                w.u64(*seq);
            }
            Record::Done { session, seq } => {
                w.u8(DONE);
                w.key(session);
                w.u64(*seq);
            }
            Record::Received { session, packet_id } => {
                w.u8(RECEIVED);
                w.key(session);
                w.u16(*packet_id);
            }
            Record::ReceiveDone { session, packet_id } => {
                w.u8(RECEIVE_DONE);
                w.key(session);
                w.u16(*packet_id);
            }
            Record::Retained { message } => {
                w.u8(RETAINED);
                w.message(message);
            }
            Record::RetainCleared { topic } => {
                w.u8(RETAIN_CLEARED);
                w.str(topic);
            }
        }
    }

    /// Reads one record; `now` turns stored times back into instants.
    pub(crate) fn decode(bytes: &[u8], now: Now) -> Result<Record, RecordError> {
        let mut r = Reader { bytes, at: 0 };
        let record = match r.u8()? {
            EPOCHS => Record::Epochs { next: r.u64()? },
            SESSION => {
                let session = r.key()?;
                let fresh = r.u8()? != 0;
                let protocol = match r.u8()? {
                    3 => ProtocolVersion::V3_1,
                    4 => ProtocolVersion::V3_1_1,
                    5 => ProtocolVersion::V5,
                    _ => return Err(RecordError::Invalid("protocol level")),
                };
                let expiry = r.u32()?;
                let last_seq = r.u64()?;
                let will = match r.u8()? {
                    0 => None,
                    _ => {
                        let delay = Duration::from_secs(u64::from(r.u32()?));
                        let publish = r.publish()?;
                        Some(Box::new(StoredWill {
                            will: mqtt::Will {
                                topic: publish.topic,
                                payload: publish.payload,
                                qos: publish.qos,
                                retain: publish.retain,
                                properties: publish.properties,
                            },
                            delay,
                        }))
                    }
                };
                Record::Session {
                    session,
                    fresh,
                    protocol,
                    expiry,
                    will,
                    last_seq,
                }
            }
            DETACHED => Record::Detached {
                session: r.key()?,
                at_ms: r.u64()?,
                expiry: r.u32()?,
            },
            WILL_GONE => Record::WillGone { session: r.key()? },
            SESSION_ENDED => Record::SessionEnded { session: r.key()? },
            SUBSCRIBED => {
                let session = r.key()?;
                let filter = r.string()?;
                let options = options_from(r.u8()?)?;
                let identifier = match r.u32()? {
                    0 => None,
                    id => Some(id),
                };
                Record::Subscribed {
                    session,
                    filter,
                    subscription: Subscription {
                        options,
                        identifier,
                    },
                }
            }
            UNSUBSCRIBED => Record::Unsubscribed {
                session: r.key()?,
                filter: r.string()?,
            },
            ROUTE => {
                let message = r.message(now)?;
                let count = r.u32()? as usize;
                // Each delivery takes at least 25 bytes: no count past what is there.
                if count > r.remaining() / 25 {
                    return Err(RecordError::Short);
                }
                let mut deliveries = Vec::with_capacity(count);
                for _ in 0..count {
                    let session = r.key()?;
                    let seq = r.u64()?;
                    let flags = r.u8()?;
                    let qos =
                        QoS::from_u8(flags & 0b11).ok_or(RecordError::Invalid("delivery QoS"))?;
                    let ids = r.u32()? as usize;
                    if ids > r.remaining() / 4 {
                        return Err(RecordError::Short);
                    }
                    let mut subscription_ids = Vec::with_capacity(ids);
                    for _ in 0..ids {
                        subscription_ids.push(r.u32()?);
                    }
                    deliveries.push(LoggedDelivery {
                        session,
                        seq,
                        qos,
                        retain: flags & 0b100 != 0,
                        subscription_ids,
                    });
                }
                let received = match r.u8()? {
                    0 => None,
                    _ => Some((r.key()?, r.u16()?)),
                };
                Record::Route {
                    message: Arc::new(message),
                    deliveries,
                    received,
                }
            }
            RELEASED => Record::Released {
                session: r.key()?,
                seq: r.u64()?,
            },
            DONE => Record::Done {
                session: r.key()?,
                seq: r.u64()?,
            },
            RECEIVED => Record::Received {
                session: r.key()?,
                packet_id: r.u16()?,
            },
            RECEIVE_DONE => Record::ReceiveDone {
                session: r.key()?,
                packet_id: r.u16()?,
            },
            RETAINED => Record::Retained {
                message: Arc::new(r.message(now)?),
            },
            RETAIN_CLEARED => Record::RetainCleared {
                topic: r.string()?.into(),
            },
            tag => return Err(RecordError::Tag(tag)),
        };
        if r.remaining() != 0 {
            return Err(RecordError::Invalid("bytes after the record"));
        }
        Ok(record)
    }
}

/// The moment records are read, as both clocks: stored wall-clock times
/// become instants relative to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub instant: Instant,
    pub unix_ms: u64,
}

impl Now {
    pub(crate) fn get() -> Self {
        Now {
            instant: Instant::now(),
            unix_ms: unix_ms(SystemTime::now()),
        }
    }

    fn instant_of(self, at_ms: u64) -> Instant {
        let ago = Duration::from_millis(self.unix_ms.saturating_sub(at_ms));
        self.instant.checked_sub(ago).unwrap_or(self.instant)
    }
}

/// [MQTT-3.8.3.1] the subscription options byte.
fn options_byte(o: SubscriptionOptions) -> u8 {
    o.qos as u8
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn options_from(byte: u8) -> Result<SubscriptionOptions, RecordError> {
    let invalid = RecordError::Invalid("subscription options");
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(byte & 0b11).ok_or(RecordError::Invalid("subscription QoS"))?,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling: match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(invalid),
        },
    })
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn key(&mut self, key: &SessionKey) {
        self.str(&key.client);
        self.u64(key.epoch);
    }
    fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: &mqtt::Properties,
    ) {
        let mut packet = BytesMut::new();
        let publish = PublishRef {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: u16::from(qos != QoS::AtMostOnce),
            properties,
            payload,
        };
        // A message the broker took in encodes again; if one ever did not,
        // an empty packet is stored and reading it back reports it.
        if mqtt::encode_publish(&publish, ProtocolVersion::V5, &mut packet).is_err() {
            packet.clear();
        }
        self.bytes(&packet);
    }
    fn message(&mut self, m: &Message) {
        let received = SystemTime::now()
            .checked_sub(m.received_at.elapsed())
            .unwrap_or(UNIX_EPOCH);
        self.u64(unix_ms(received));
        match &m.publisher {
            Some(p) => {
                self.u8(1);
                self.str(p);
            }
            None => self.u8(0),
        }
        self.publish(&m.topic, &m.payload, m.qos, m.retain, &m.properties);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).ok_or(RecordError::Short)?;
        let slice = self.bytes.get(self.at..end).ok_or(RecordError::Short)?;
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let slice = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, RecordError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| RecordError::Invalid("UTF-8"))
    }
    fn key(&mut self) -> Result<SessionKey, RecordError> {
        Ok(SessionKey {
            client: self.string()?.into(),
            epoch: self.u64()?,
        })
    }
    fn publish(&mut self) -> Result<mqtt::Publish, RecordError> {
        let mut packet = BytesMut::from(self.bytes()?);
        let mut decoder = Decoder::with_version(ProtocolVersion::V5);
        match decoder.decode(&mut packet)? {
            Some(Packet::Publish(publish)) if packet.is_empty() => Ok(publish),
            _ => Err(RecordError::Invalid("stored PUBLISH")),
        }
    }
    fn message(&mut self, now: Now) -> Result<Message, RecordError> {
        let received_ms = self.u64()?;
        let publisher: Option<Arc<str>> = match self.u8()? {
            0 => None,
            _ => Some(self.string()?.into()),
        };
        let publish = self.publish()?;
        Ok(Message {
            topic: publish.topic.into(),
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
            publisher,
            received_at: now.instant_of(received_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(client: &str) -> SessionKey {
        SessionKey {
            client: client.into(),
            epoch: 7,
        }
    }

    fn round_trip(record: &Record) -> Record {
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        match Record::decode(&bytes, Now::get()) {
            Ok(r) => r,
            Err(e) => panic!("decode failed: {e}"),
        }
    }

    #[test]
    fn a_route_comes_back_whole() {
        let mut message = Message::new(
            "dwr/acme/r1/telemetry",
            Bytes::from_static(b"{}"),
            QoS::ExactlyOnce,
            true,
        );
        message.properties.message_expiry_interval = Some(60);
        message.properties.content_type = Some("application/json".into());
        message.publisher = Some("r1".into());
        let record = Record::Route {
            message: Arc::new(message),
            deliveries: vec![LoggedDelivery {
                session: key("console"),
                seq: 42,
                qos: QoS::AtLeastOnce,
                retain: true,
                subscription_ids: vec![3, 9],
            }],
            received: Some((key("r1"), 17)),
        };
        let Record::Route {
            message,
            deliveries,
            received,
        } = round_trip(&record)
        else {
            panic!("not a route");
        };
        assert_eq!(&*message.topic, "dwr/acme/r1/telemetry");
        assert_eq!(message.payload, Bytes::from_static(b"{}"));
        assert_eq!(message.qos, QoS::ExactlyOnce);
        assert!(message.retain);
        assert_eq!(message.publisher.as_deref(), Some("r1"));
        assert_eq!(
            message.properties.content_type.as_deref(),
            Some("application/json")
        );
        assert!(message.remaining_expiry().is_some_and(|left| left >= 59));
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].seq, 42);
        assert_eq!(deliveries[0].subscription_ids, [3, 9]);
        assert!(deliveries[0].retain);
        assert_eq!(received, Some((key("r1"), 17)));
    }

    #[test]
    fn a_session_with_its_will_and_a_subscription_come_back() {
        let will = StoredWill {
            will: mqtt::Will {
                topic: "dwr/acme/r1/status".into(),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: mqtt::Properties::default(),
            },
            delay: Duration::from_secs(30),
        };
        let record = Record::Session {
            session: key("r1"),
            fresh: true,
            protocol: ProtocolVersion::V3_1_1,
            expiry: 3600,
            will: Some(Box::new(will)),
            last_seq: 5,
        };
        let Record::Session {
            protocol,
            expiry,
            will,
            last_seq,
            fresh,
            ..
        } = round_trip(&record)
        else {
            panic!("not a session");
        };
        assert!(fresh);
        assert_eq!(protocol, ProtocolVersion::V3_1_1);
        assert_eq!((expiry, last_seq), (3600, 5));
        let will = will.expect("will kept");
        assert_eq!(will.delay, Duration::from_secs(30));
        assert_eq!(will.will.payload, Bytes::from_static(b"offline"));
        assert!(will.will.retain);

        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        let Record::Subscribed {
            filter,
            subscription,
            ..
        } = round_trip(&Record::Subscribed {
            session: key("r1"),
            filter: "$share/g/a/+".into(),
            subscription: Subscription {
                options,
                identifier: Some(12),
            },
        })
        else {
            panic!("not a subscription");
        };
        assert_eq!(filter, "$share/g/a/+");
        assert_eq!(subscription.options, options);
        assert_eq!(subscription.identifier, Some(12));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let mut bytes = Vec::new();
        Record::Done {
            session: key("r1"),
            seq: 1,
        }
        .encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut], Now::get()).is_err());
        }
        assert!(Record::decode(&[99], Now::get()).is_err());
    }
}
