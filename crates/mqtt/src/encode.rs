//! Encoding packets for a given protocol version.

use bytes::{BufMut, BytesMut};

use crate::packet::*;
use crate::{MAX_REMAINING_LENGTH, Properties, ProtocolVersion, ReasonCode};

/// A packet that cannot be written: a field is longer than its length prefix
/// allows, or the whole is longer than a remaining length can say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("string or binary field of {0} bytes exceeds 65535 [MQTT-1.5.4]")]
    FieldTooLong(usize),
    #[error("packet body of {0} bytes exceeds the maximum remaining length [MQTT-1.5.5]")]
    PacketTooLong(usize),
}

pub(crate) fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_var_int(out: &mut BytesMut, mut value: usize) -> Result<(), EncodeError> {
    if value > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLong(value));
    }
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return Ok(());
        }
    }
}

pub(crate) fn put_binary(out: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong(data.len()))?;
    out.put_u16(len);
    out.put_slice(data);
    Ok(())
}

pub(crate) fn put_string(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}

fn put_props(out: &mut BytesMut, v5: bool, props: &Properties) -> Result<(), EncodeError> {
    if v5 {
        props.encode(out)?;
    }
    Ok(())
}

/// Appends `packet`, written for `version`, to `out`. On error `out` is left as
/// it was.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    restored_on_error(out, |out| encode_inner(packet, version, out))
}

/// Runs `write`; on error `out` is left as it was before.
fn restored_on_error(
    out: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// A PUBLISH by reference: what a server sends to each subscriber of a
/// message without building a [`Packet`] (and a topic `String`) per copy.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty in 5.0 when a topic alias stands for it.
    pub topic: &'a str,
    /// Zero for QoS 0, where the packet carries none.
    pub packet_id: u16,
    pub properties: &'a Properties,
    pub payload: &'a [u8],
}

/// Encodes a PUBLISH as [`encode`] does a `Packet::Publish`; on error `out`
/// is left as it was.
pub fn encode_publish(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    restored_on_error(out, |out| encode_publish_inner(publish, version, out))
}

fn encode_publish_inner(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    // The hot path: sized exactly, written once, the payload copied once.
    let v5 = version.is_v5();
    let props_len = if v5 {
        publish.properties.encoded_len()
    } else {
        0
    };
    let id_len = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + publish.topic.len() + id_len + props_len + publish.payload.len();
    let mut first = (PacketType::Publish as u8) << 4 | (publish.qos as u8) << 1;
    if publish.dup {
        first |= 0x08;
    }
    if publish.retain {
        first |= 0x01;
    }
    out.reserve(1 + var_int_len(remaining) + remaining);
    out.put_u8(first);
    put_var_int(out, remaining)?;
    put_string(out, publish.topic)?;
    if id_len == 2 {
        out.put_u16(publish.packet_id);
    }
    put_props(out, v5, publish.properties)?;
    out.put_slice(publish.payload);
    Ok(())
}

fn encode_inner(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    if let Packet::Publish(p) = packet {
        return encode_publish_inner(
            &PublishRef {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: &p.topic,
                packet_id: p.packet_id,
                properties: &p.properties,
                payload: &p.payload,
            },
            version,
            out,
        );
    }

    let mut body = BytesMut::with_capacity(64);
    let first: u8 = match packet {
        Packet::Publish(_) => 0x30,
        Packet::Connect(c) => {
            put_string(&mut body, version.protocol_name())?;
            body.put_u8(version.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(will) = &c.will {
                flags |= 0x04 | (will.qos as u8) << 3;
                if will.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            put_props(&mut body, v5, &c.properties)?;
            put_string(&mut body, &c.client_id)?;
            if let Some(will) = &c.will {
                put_props(&mut body, v5, &will.properties)?;
                put_string(&mut body, &will.topic)?;
                put_binary(&mut body, &will.payload)?;
            }
            if let Some(username) = &c.username {
                put_string(&mut body, username)?;
            }
            if let Some(password) = &c.password {
                put_binary(&mut body, password)?;
            }
            0x10
        }
        Packet::ConnAck(ack) => {
            // 3.1 has no session present flag; the byte is reserved.
            let present = ack.session_present && version != ProtocolVersion::V3_1;
            body.put_u8(u8::from(present));
            if v5 {
                body.put_u8(ack.reason as u8);
                ack.properties.encode(&mut body)?;
            } else {
                body.put_u8(ack.reason.to_v3_connack());
            }
            0x20
        }
        Packet::PubAck(r) => pub_response(&mut body, v5, r, 0x40)?,
        Packet::PubRec(r) => pub_response(&mut body, v5, r, 0x50)?,
        Packet::PubRel(r) => pub_response(&mut body, v5, r, 0x62)?,
        Packet::PubComp(r) => pub_response(&mut body, v5, r, 0x70)?,
        Packet::Subscribe(s) => {
            body.put_u16(s.packet_id);
            put_props(&mut body, v5, &s.properties)?;
            for (filter, o) in &s.filters {
                put_string(&mut body, filter)?;
                let mut byte = o.qos as u8;
                if v5 {
                    byte |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling as u8) << 4;
                }
                body.put_u8(byte);
            }
            0x82
        }
        Packet::SubAck(s) => {
            body.put_u16(s.packet_id);
            put_props(&mut body, v5, &s.properties)?;
            for reason in &s.reasons {
                body.put_u8(if v5 {
                    *reason as u8
                } else {
                    reason.to_v3_suback()
                });
            }
            0x90
        }
        Packet::Unsubscribe(u) => {
            body.put_u16(u.packet_id);
            put_props(&mut body, v5, &u.properties)?;
            for filter in &u.filters {
                put_string(&mut body, filter)?;
            }
            0xA2
        }
        Packet::UnsubAck(u) => {
            body.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(&mut body)?;
                for reason in &u.reasons {
                    body.put_u8(*reason as u8);
                }
            }
            0xB0
        }
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(d) => {
            if v5 && (d.reason != ReasonCode::Success || !d.properties.is_empty()) {
                body.put_u8(d.reason as u8);
                if !d.properties.is_empty() {
                    d.properties.encode(&mut body)?;
                }
            }
            0xE0
        }
        Packet::Auth(a) => {
            if a.reason != ReasonCode::Success || !a.properties.is_empty() {
                body.put_u8(a.reason as u8);
                if !a.properties.is_empty() {
                    a.properties.encode(&mut body)?;
                }
            }
            0xF0
        }
    };
    out.reserve(5 + body.len());
    out.put_u8(first);
    put_var_int(out, body.len())?;
    out.put_slice(&body);
    Ok(())
}

fn pub_response(
    body: &mut BytesMut,
    v5: bool,
    r: &PubResponse,
    first: u8,
) -> Result<u8, EncodeError> {
    body.put_u16(r.packet_id);
    // [MQTT-3.4.2.1] reason and properties may be left out when they say nothing.
    if v5 && (r.reason != ReasonCode::Success || !r.properties.is_empty()) {
        body.put_u8(r.reason as u8);
        if !r.properties.is_empty() {
            r.properties.encode(body)?;
        }
    }
    Ok(first)
}
