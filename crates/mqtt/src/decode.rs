//! Incremental decoding: bytes in, a packet out once it is whole [MQTT-2].

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::*;
use crate::topic::{SharedFilter, validate_topic_filter, validate_topic_name};
use crate::{DecodeError, Properties, PropertyContext, ProtocolVersion, ReasonCode};

/// A cursor over one packet's body. Slices of it are shared, not copied.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1, "byte")?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2, "two byte integer")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "four byte integer")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer of at most four bytes [MQTT-1.5.5-1].
    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVariableInteger)
    }

    /// Binary data: a two byte length and that many bytes [MQTT-1.5.6].
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if self.remaining() < len {
            return Err(DecodeError::Truncated("binary data"));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// A UTF-8 encoded string [MQTT-1.5.4]: well-formed [MQTT-1.5.4-1] and
    /// without U+0000 [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len, "string")?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        Ok(s.to_owned())
    }

    fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        out
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// The largest CONNECT accepted: client id, will topic and payload, user
/// name and password at 64 KiB each, with room for properties.
pub const MAX_CONNECT_SIZE: usize = 512 * 1024;
/// How much the decoder asks the buffer to grow by for an incomplete packet.
const RESERVE_AHEAD: usize = 64 * 1024;

/// Decodes packets from a stream of bytes. A server's decoder starts with no
/// version and learns it from CONNECT; a client's is told its version.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A server-side decoder: the first packet must be CONNECT [MQTT-3.1.0-1].
    pub fn new() -> Self {
        Decoder {
            version: None,
            max_packet_size: crate::MAX_REMAINING_LENGTH + 5,
        }
    }

    /// A decoder for a connection whose version is known.
    pub fn with_version(version: ProtocolVersion) -> Self {
        Decoder {
            version: Some(version),
            ..Decoder::new()
        }
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// Packets larger than this (whole packet, header included) are refused
    /// before they are buffered [MQTT-3.2.2-15].
    pub fn set_max_packet_size(&mut self, max: usize) {
        self.max_packet_size = max;
    }

    /// Takes one packet off the front of `buf`. `Ok(None)` means the packet is
    /// not complete yet; nothing is consumed then.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let first = buf[0];
        let type_bits = first >> 4;
        if self.version.is_none() && type_bits != PacketType::Connect as u8 {
            return Err(DecodeError::FirstPacketNotConnect);
        }
        let mut remaining: usize = 0;
        let mut header_len = 1;
        loop {
            if header_len > 4 {
                return Err(DecodeError::MalformedRemainingLength);
            }
            let Some(&byte) = buf.get(header_len) else {
                return Ok(None);
            };
            remaining |= usize::from(byte & 0x7F) << (7 * (header_len - 1));
            header_len += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let size = header_len + remaining;
        // Before CONNECT the peer is a stranger: a CONNECT larger than
        // every field at its largest could make is refused, whatever the
        // broker's packet limit.
        let max = if self.version.is_none() {
            self.max_packet_size.min(MAX_CONNECT_SIZE)
        } else {
            self.max_packet_size
        };
        if size > max {
            return Err(DecodeError::PacketTooLarge { size, max });
        }
        if buf.len() < size {
            // Room for what is on its way, not for what was declared: a
            // header alone must not make the caller allocate megabytes.
            buf.reserve((size - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let mut frame = buf.split_to(size);
        frame.advance(header_len);
        let packet = self.decode_body(first, frame.freeze())?;
        if let (Packet::Connect(connect), None) = (&packet, self.version) {
            self.version = Some(connect.protocol);
        }
        Ok(Some(packet))
    }

    fn decode_body(&self, first: u8, body: Bytes) -> Result<Packet, DecodeError> {
        let type_bits = first >> 4;
        let flags = first & 0x0F;
        let packet_type = match PacketType::from_u8(type_bits) {
            Some(t) => t,
            None => return Err(DecodeError::ReservedPacketType),
        };
        // [MQTT-2.1.3-1] fixed header flags are fixed for every type but PUBLISH.
        let expected_flags = match packet_type {
            PacketType::Publish => flags,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        };
        if flags != expected_flags {
            return Err(DecodeError::InvalidHeaderFlags(type_bits));
        }
        let mut r = Reader::new(body);
        let version = self.version.unwrap_or(ProtocolVersion::V3_1_1);
        let v5 = version.is_v5();
        let packet = match packet_type {
            PacketType::Connect => Packet::Connect(Box::new(decode_connect(&mut r)?)),
            PacketType::ConnAck => {
                let ack_flags = r.u8()?;
                if ack_flags & 0xFE != 0 {
                    return Err(DecodeError::ConnAckReservedFlags);
                }
                let code = r.u8()?;
                let reason = if v5 {
                    reason_in(code, PacketType::ConnAck, "CONNACK")?
                } else {
                    ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode {
                        code,
                        packet: "CONNACK",
                    })?
                };
                let properties = props(&mut r, v5, PropertyContext::ConnAck)?;
                Packet::ConnAck(ConnAck {
                    // 3.1 has no session present flag: the byte is reserved.
                    session_present: ack_flags & 1 == 1 && version != ProtocolVersion::V3_1,
                    reason,
                    properties,
                })
            }
            PacketType::Publish => Packet::Publish(decode_publish(&mut r, flags, v5)?),
            PacketType::PubAck => Packet::PubAck(decode_pub_response(&mut r, v5, packet_type)?),
            PacketType::PubRec => Packet::PubRec(decode_pub_response(&mut r, v5, packet_type)?),
            PacketType::PubRel => Packet::PubRel(decode_pub_response(&mut r, v5, packet_type)?),
            PacketType::PubComp => Packet::PubComp(decode_pub_response(&mut r, v5, packet_type)?),
            PacketType::Subscribe => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
            PacketType::SubAck => {
                let packet_id = packet_id(&mut r)?;
                let properties = props(&mut r, v5, PropertyContext::SubAck)?;
                let mut reasons = Vec::with_capacity(r.remaining());
                while r.remaining() > 0 {
                    let code = r.u8()?;
                    let reason = if v5 {
                        reason_in(code, PacketType::SubAck, "SUBACK")?
                    } else {
                        match code {
                            0 => ReasonCode::Success,
                            1 => ReasonCode::GrantedQoS1,
                            2 => ReasonCode::GrantedQoS2,
                            0x80 => ReasonCode::UnspecifiedError,
                            _ => {
                                return Err(DecodeError::InvalidReasonCode {
                                    code,
                                    packet: "SUBACK",
                                });
                            }
                        }
                    };
                    reasons.push(reason);
                }
                Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    reasons,
                })
            }
            PacketType::Unsubscribe => {
                let packet_id = packet_id(&mut r)?;
                let properties = props(&mut r, v5, PropertyContext::Unsubscribe)?;
                let mut filters = Vec::new();
                while r.remaining() > 0 {
                    let filter = r.string()?;
                    validate_topic_filter(&filter)?;
                    filters.push(filter);
                }
                if filters.is_empty() {
                    return Err(DecodeError::EmptyUnsubscribe);
                }
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            }
            PacketType::UnsubAck => {
                let packet_id = packet_id(&mut r)?;
                let properties = props(&mut r, v5, PropertyContext::UnsubAck)?;
                let mut reasons = Vec::new();
                if v5 {
                    while r.remaining() > 0 {
                        reasons.push(reason_in(r.u8()?, PacketType::UnsubAck, "UNSUBACK")?);
                    }
                }
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    reasons,
                })
            }
            PacketType::PingReq => {
                r.finish()
                    .map_err(|_| DecodeError::NonEmptyBody("PINGREQ"))?;
                Packet::PingReq
            }
            PacketType::PingResp => {
                r.finish()
                    .map_err(|_| DecodeError::NonEmptyBody("PINGRESP"))?;
                Packet::PingResp
            }
            PacketType::Disconnect => {
                if !v5 {
                    r.finish()
                        .map_err(|_| DecodeError::NonEmptyBody("DISCONNECT"))?;
                    Packet::Disconnect(Disconnect::new(ReasonCode::Success))
                } else {
                    // [MQTT-3.14.2.1] no reason code means 0x00.
                    let reason = if r.remaining() == 0 {
                        ReasonCode::Success
                    } else {
                        reason_in(r.u8()?, PacketType::Disconnect, "DISCONNECT")?
                    };
                    let properties = if r.remaining() == 0 {
                        Properties::default()
                    } else {
                        Properties::decode(&mut r, PropertyContext::Disconnect)?
                    };
                    Packet::Disconnect(Disconnect { reason, properties })
                }
            }
            PacketType::Auth => {
                if !v5 {
                    return Err(DecodeError::AuthBeforeV5);
                }
                let reason = if r.remaining() == 0 {
                    ReasonCode::Success
                } else {
                    reason_in(r.u8()?, PacketType::Auth, "AUTH")?
                };
                let properties = if r.remaining() == 0 {
                    Properties::default()
                } else {
                    Properties::decode(&mut r, PropertyContext::Auth)?
                };
                Packet::Auth(Auth { reason, properties })
            }
        };
        r.finish()?;
        Ok(packet)
    }
}

fn reason_in(code: u8, packet: PacketType, name: &'static str) -> Result<ReasonCode, DecodeError> {
    match ReasonCode::from_u8(code) {
        Some(reason) if reason.allowed_in(packet) => Ok(reason),
        _ => Err(DecodeError::InvalidReasonCode { code, packet: name }),
    }
}

fn props(r: &mut Reader, v5: bool, ctx: PropertyContext) -> Result<Properties, DecodeError> {
    if v5 {
        Properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

/// [MQTT-2.2.1-3] SUBSCRIBE, UNSUBSCRIBE and QoS>0 PUBLISH carry a non-zero packet id.
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        ("MQTT", _) | ("MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolLevel(level)),
        _ => return Err(DecodeError::InvalidProtocolName(name)),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    // [MQTT-3.1.2-3] the reserved flag must be 0.
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    // [MQTT-3.1.2-14] will QoS 3 is malformed.
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS)?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, PropertyContext::Connect)?;
    // [MQTT-3.1.3-1] the payload fields come in this order.
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5, PropertyContext::Will)?;
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName);
        }
        validate_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    // [MQTT-3.3.1-2] DUP must be 0 for QoS 0.
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupOnQoS0);
    }
    let topic = r.string()?;
    // [MQTT-4.7.3-1] an empty topic only stands with a topic alias (MQTT 5,
    // checked by the receiver that knows the alias).
    if topic.is_empty() && !v5 {
        return Err(DecodeError::EmptyTopicName);
    }
    validate_topic_name(&topic)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = props(r, v5, PropertyContext::Publish)?;
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

fn decode_pub_response(
    r: &mut Reader,
    v5: bool,
    packet_type: PacketType,
) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r)?;
    let name = match packet_type {
        PacketType::PubAck => "PUBACK",
        PacketType::PubRec => "PUBREC",
        PacketType::PubRel => "PUBREL",
        _ => "PUBCOMP",
    };
    // [MQTT-3.4.2.1] no reason code means Success, no properties means none.
    let reason = if v5 && r.remaining() > 0 {
        reason_in(r.u8()?, packet_type, name)?
    } else {
        ReasonCode::Success
    };
    let properties = if v5 && r.remaining() > 0 {
        Properties::decode(r, PropertyContext::PubResponse)?
    } else {
        Properties::default()
    };
    Ok(PubResponse {
        packet_id,
        reason,
        properties,
    })
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropertyContext::Subscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        validate_topic_filter(&filter)?;
        let options = r.u8()?;
        if v5 {
            // [MQTT-3.8.3-5] bits 6 and 7 are reserved.
            if options & 0xC0 != 0 {
                return Err(DecodeError::SubscriptionOptionsReserved);
            }
        } else if options & 0xFC != 0 {
            // [MQTT-3-8.3-4] in 3.1.1 the upper six bits are reserved.
            return Err(DecodeError::SubscriptionOptionsReserved);
        }
        let qos = QoS::from_u8(options & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let no_local = options & 0x04 != 0;
        let retain_as_published = options & 0x08 != 0;
        let retain_handling = match (options >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        if no_local && SharedFilter::parse(&filter).is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

#[cfg(test)]
mod reservation {
    use super::*;

    #[test]
    fn a_declared_size_is_not_reserved_before_it_arrives() {
        let mut decoder = Decoder::new();
        // A CONNECT declaring 400 KiB, of which 5 bytes arrived.
        let mut buf = BytesMut::from(&[0x10u8, 0x80, 0x80, 0x19, 0x00][..]);
        assert!(matches!(decoder.decode(&mut buf), Ok(None)));
        assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());
        // Larger than any CONNECT can be: refused before anything is kept.
        let mut buf = BytesMut::from(&[0x10u8, 0xF9, 0xFF, 0xFF, 0x07][..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(DecodeError::PacketTooLarge { .. })
        ));
    }
}
