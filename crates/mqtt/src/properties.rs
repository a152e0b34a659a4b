//! MQTT 5 properties [MQTT-2.2.2]: one struct for every packet, checked on
//! decode against the packet it arrived in.

use bytes::{BufMut, Bytes, BytesMut};

use crate::DecodeError;
use crate::decode::Reader;
use crate::encode::{put_binary, put_string, put_var_int, var_int_len};

/// Which packet (or the will) a property list belongs to; decides which
/// properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "will properties",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::PubResponse => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }
}

/// All MQTT 5 properties. A packet of 3.1.1 always has the empty list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Several in a PUBLISH from the server; at most one in SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The largest subscription identifier a variable byte integer holds [MQTT-3.8.2.1.2].
pub const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

fn allowed(id: u8, ctx: PropertyContext) -> bool {
    use PropertyContext as C;
    match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => matches!(ctx, C::Publish | C::Will),
        SUBSCRIPTION_IDENTIFIER => matches!(ctx, C::Publish | C::Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ctx == C::ConnAck,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => {
            matches!(ctx, C::Connect | C::ConnAck | C::Auth)
        }
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => ctx == C::Connect,
        WILL_DELAY_INTERVAL => ctx == C::Will,
        SERVER_REFERENCE => matches!(ctx, C::ConnAck | C::Disconnect),
        REASON_STRING => !matches!(
            ctx,
            C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe
        ),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(ctx, C::Connect | C::ConnAck)
        }
        TOPIC_ALIAS => ctx == C::Publish,
        USER_PROPERTY => true,
        _ => false,
    }
}

fn name(id: u8) -> &'static str {
    match id {
        PAYLOAD_FORMAT_INDICATOR => "Payload Format Indicator",
        MESSAGE_EXPIRY_INTERVAL => "Message Expiry Interval",
        CONTENT_TYPE => "Content Type",
        RESPONSE_TOPIC => "Response Topic",
        CORRELATION_DATA => "Correlation Data",
        SUBSCRIPTION_IDENTIFIER => "Subscription Identifier",
        SESSION_EXPIRY_INTERVAL => "Session Expiry Interval",
        ASSIGNED_CLIENT_IDENTIFIER => "Assigned Client Identifier",
        SERVER_KEEP_ALIVE => "Server Keep Alive",
        AUTHENTICATION_METHOD => "Authentication Method",
        AUTHENTICATION_DATA => "Authentication Data",
        REQUEST_PROBLEM_INFORMATION => "Request Problem Information",
        WILL_DELAY_INTERVAL => "Will Delay Interval",
        REQUEST_RESPONSE_INFORMATION => "Request Response Information",
        RESPONSE_INFORMATION => "Response Information",
        SERVER_REFERENCE => "Server Reference",
        REASON_STRING => "Reason String",
        RECEIVE_MAXIMUM => "Receive Maximum",
        TOPIC_ALIAS_MAXIMUM => "Topic Alias Maximum",
        TOPIC_ALIAS => "Topic Alias",
        MAXIMUM_QOS => "Maximum QoS",
        RETAIN_AVAILABLE => "Retain Available",
        USER_PROPERTY => "User Property",
        MAXIMUM_PACKET_SIZE => "Maximum Packet Size",
        WILDCARD_SUBSCRIPTION_AVAILABLE => "Wildcard Subscription Available",
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => "Subscription Identifier Available",
        SHARED_SUBSCRIPTION_AVAILABLE => "Shared Subscription Available",
        _ => "unknown",
    }
}

fn set_once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(name(id)));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(id: u8, value: u8) -> Result<u8, DecodeError> {
    if value > 1 {
        return Err(DecodeError::InvalidPropertyValue(name(id)));
    }
    Ok(value)
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads the property length and the properties after it.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.var_int()? as usize;
        if len > r.remaining() {
            return Err(DecodeError::PropertyLength);
        }
        let end = r.position() + len;
        let mut p = Properties::default();
        while r.position() < end {
            let id = r.var_int()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
            if name(id) == "unknown" {
                return Err(DecodeError::UnknownProperty(id));
            }
            if !allowed(id, ctx) {
                return Err(DecodeError::PropertyNotAllowed(name(id), ctx.name()));
            }
            match id {
                PAYLOAD_FORMAT_INDICATOR => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.payload_format_indicator, id, v)?
                }
                MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, id, r.u32()?)?,
                CONTENT_TYPE => set_once(&mut p.content_type, id, r.string()?)?,
                RESPONSE_TOPIC => {
                    let topic = r.string()?;
                    // [MQTT-3.3.2-14] the response topic is a topic name, not a filter.
                    crate::topic::validate_topic_name(&topic)?;
                    set_once(&mut p.response_topic, id, topic)?
                }
                CORRELATION_DATA => set_once(&mut p.correlation_data, id, r.binary()?)?,
                SUBSCRIPTION_IDENTIFIER => {
                    let v = r.var_int()?;
                    // [MQTT-3.8.2.1.2] a value of 0 is a Protocol Error.
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(name(id)));
                    }
                    if ctx == PropertyContext::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::DuplicateProperty(name(id)));
                    }
                    p.subscription_identifiers.push(v);
                }
                SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, id, r.u32()?)?,
                ASSIGNED_CLIENT_IDENTIFIER => {
                    set_once(&mut p.assigned_client_identifier, id, r.string()?)?
                }
                SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, id, r.u16()?)?,
                AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, id, r.string()?)?,
                AUTHENTICATION_DATA => set_once(&mut p.authentication_data, id, r.binary()?)?,
                REQUEST_PROBLEM_INFORMATION => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.request_problem_information, id, v)?
                }
                WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, id, r.u32()?)?,
                REQUEST_RESPONSE_INFORMATION => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.request_response_information, id, v)?
                }
                RESPONSE_INFORMATION => set_once(&mut p.response_information, id, r.string()?)?,
                SERVER_REFERENCE => set_once(&mut p.server_reference, id, r.string()?)?,
                REASON_STRING => set_once(&mut p.reason_string, id, r.string()?)?,
                RECEIVE_MAXIMUM => {
                    let v = r.u16()?;
                    // [MQTT-3.1.2.11.3] a value of 0 is a Protocol Error.
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(name(id)));
                    }
                    set_once(&mut p.receive_maximum, id, v)?
                }
                TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, id, r.u16()?)?,
                TOPIC_ALIAS => set_once(&mut p.topic_alias, id, r.u16()?)?,
                MAXIMUM_QOS => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.maximum_qos, id, v)?
                }
                RETAIN_AVAILABLE => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.retain_available, id, v)?
                }
                USER_PROPERTY => {
                    let key = r.string()?;
                    let value = r.string()?;
                    p.user_properties.push((key, value));
                }
                MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    // [MQTT-3.1.2.11.4] a value of 0 is a Protocol Error.
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(name(id)));
                    }
                    set_once(&mut p.maximum_packet_size, id, v)?
                }
                WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.wildcard_subscription_available, id, v)?
                }
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.subscription_identifier_available, id, v)?
                }
                SHARED_SUBSCRIPTION_AVAILABLE => {
                    let v = flag(id, r.u8()?)?;
                    set_once(&mut p.shared_subscription_available, id, v)?
                }
                _ => return Err(DecodeError::UnknownProperty(id)),
            }
            if r.position() > end {
                return Err(DecodeError::PropertyLength);
            }
        }
        Ok(p)
    }

    /// Bytes the properties take, without the length prefix.
    pub(crate) fn body_len(&self) -> usize {
        fn s(v: &Option<String>) -> usize {
            v.as_ref().map_or(0, |v| 3 + v.len())
        }
        fn b(v: &Option<Bytes>) -> usize {
            v.as_ref().map_or(0, |v| 3 + v.len())
        }
        fn n<T>(v: &Option<T>, size: usize) -> usize {
            v.as_ref().map_or(0, |_| 1 + size)
        }
        n(&self.payload_format_indicator, 1)
            + n(&self.message_expiry_interval, 4)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|id| 1 + var_int_len(*id as usize))
                .sum::<usize>()
            + n(&self.session_expiry_interval, 4)
            + s(&self.assigned_client_identifier)
            + n(&self.server_keep_alive, 2)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n(&self.request_problem_information, 1)
            + n(&self.will_delay_interval, 4)
            + n(&self.request_response_information, 1)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n(&self.receive_maximum, 2)
            + n(&self.topic_alias_maximum, 2)
            + n(&self.topic_alias, 2)
            + n(&self.maximum_qos, 1)
            + n(&self.retain_available, 1)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n(&self.maximum_packet_size, 4)
            + n(&self.wildcard_subscription_available, 1)
            + n(&self.subscription_identifier_available, 1)
            + n(&self.shared_subscription_available, 1)
    }

    /// Bytes the properties take with their length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        let body = self.body_len();
        var_int_len(body) + body
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), crate::EncodeError> {
        put_var_int(out, self.body_len())?;
        macro_rules! byte {
            ($field:ident, $id:expr) => {
                if let Some(v) = self.$field {
                    out.put_u8($id);
                    out.put_u8(v);
                }
            };
        }
        macro_rules! short {
            ($field:ident, $id:expr) => {
                if let Some(v) = self.$field {
                    out.put_u8($id);
                    out.put_u16(v);
                }
            };
        }
        macro_rules! int {
            ($field:ident, $id:expr) => {
                if let Some(v) = self.$field {
                    out.put_u8($id);
                    out.put_u32(v);
                }
            };
        }
        macro_rules! string {
            ($field:ident, $id:expr) => {
                if let Some(v) = &self.$field {
                    out.put_u8($id);
                    put_string(out, v)?;
                }
            };
        }
        macro_rules! binary {
            ($field:ident, $id:expr) => {
                if let Some(v) = &self.$field {
                    out.put_u8($id);
                    put_binary(out, v)?;
                }
            };
        }
        byte!(payload_format_indicator, PAYLOAD_FORMAT_INDICATOR);
        int!(message_expiry_interval, MESSAGE_EXPIRY_INTERVAL);
        string!(content_type, CONTENT_TYPE);
        string!(response_topic, RESPONSE_TOPIC);
        binary!(correlation_data, CORRELATION_DATA);
        for id in &self.subscription_identifiers {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_var_int(out, *id as usize)?;
        }
        int!(session_expiry_interval, SESSION_EXPIRY_INTERVAL);
        string!(assigned_client_identifier, ASSIGNED_CLIENT_IDENTIFIER);
        short!(server_keep_alive, SERVER_KEEP_ALIVE);
        string!(authentication_method, AUTHENTICATION_METHOD);
        binary!(authentication_data, AUTHENTICATION_DATA);
        byte!(request_problem_information, REQUEST_PROBLEM_INFORMATION);
        int!(will_delay_interval, WILL_DELAY_INTERVAL);
        byte!(request_response_information, REQUEST_RESPONSE_INFORMATION);
        string!(response_information, RESPONSE_INFORMATION);
        string!(server_reference, SERVER_REFERENCE);
        string!(reason_string, REASON_STRING);
        short!(receive_maximum, RECEIVE_MAXIMUM);
        short!(topic_alias_maximum, TOPIC_ALIAS_MAXIMUM);
        short!(topic_alias, TOPIC_ALIAS);
        byte!(maximum_qos, MAXIMUM_QOS);
        byte!(retain_available, RETAIN_AVAILABLE);
        for (k, v) in &self.user_properties {
            out.put_u8(USER_PROPERTY);
            put_string(out, k)?;
            put_string(out, v)?;
        }
        int!(maximum_packet_size, MAXIMUM_PACKET_SIZE);
        byte!(
            wildcard_subscription_available,
            WILDCARD_SUBSCRIPTION_AVAILABLE
        );
        byte!(
            subscription_identifier_available,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE
        );
        byte!(shared_subscription_available, SHARED_SUBSCRIPTION_AVAILABLE);
        Ok(())
    }
}
