//! Why bytes are not a valid packet, each naming the statement they break.

use crate::ReasonCode;

/// A packet that cannot be accepted. Every variant cites the normative
/// statement it enforces and maps to the MQTT 5 reason code a server sends in
/// its DISCONNECT (or CONNACK) before it closes the connection [MQTT-4.13.1-1].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet type 0 is reserved [MQTT-2.1.2]")]
    ReservedPacketType,
    #[error("AUTH is not a packet of MQTT 3.1.1 [MQTT-2.1.2]")]
    AuthBeforeV5,
    #[error("reserved flag bits of the fixed header are wrong for packet type {0} [MQTT-2.1.3-1]")]
    InvalidHeaderFlags(u8),
    #[error("remaining length uses more than four bytes [MQTT-1.5.5-1]")]
    MalformedRemainingLength,
    #[error("variable byte integer uses more than four bytes [MQTT-1.5.5-1]")]
    MalformedVariableInteger,
    #[error("packet of {size} bytes is larger than the maximum packet size {max} [MQTT-3.1.2-24]")]
    PacketTooLarge { size: usize, max: usize },
    #[error("packet ends before its fields do: {0}")]
    Truncated(&'static str),
    #[error("{0} bytes left after the last field of the packet")]
    TrailingBytes(usize),
    #[error("string is not well-formed UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    #[error("string contains U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    #[error("first packet must be CONNECT [MQTT-3.1.0-1]")]
    FirstPacketNotConnect,
    #[error("protocol name {0:?} is not MQTT or MQIsdp [MQTT-3.1.2-1]")]
    InvalidProtocolName(String),
    #[error("protocol level {0} is not supported [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel(u8),
    #[error("reserved CONNECT flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    #[error("will QoS or will retain set without a will [MQTT-3.1.2-11] [MQTT-3.1.2-13]")]
    WillFlagsWithoutWill,
    #[error("password flag set without user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    #[error("QoS 3 is not a QoS [MQTT-3.3.1-4]")]
    InvalidQoS,
    #[error("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQoS0,
    #[error("topic name {0:?} contains a wildcard [MQTT-3.3.2-2]")]
    WildcardInTopicName(String),
    #[error("topic name is empty [MQTT-4.7.3-1]")]
    EmptyTopicName,
    #[error("topic filter {0:?} is not valid [MQTT-4.7.1-2] [MQTT-4.7.1-3]")]
    InvalidTopicFilter(String),
    #[error("packet identifier is 0 [MQTT-2.2.1-3]")]
    ZeroPacketId,
    #[error("SUBSCRIBE carries no topic filter [MQTT-3.8.3-3]")]
    EmptySubscribe,
    #[error("UNSUBSCRIBE carries no topic filter [MQTT-3.10.3-2]")]
    EmptyUnsubscribe,
    #[error("reserved bits of the subscription options are set [MQTT-3.8.3-5]")]
    SubscriptionOptionsReserved,
    #[error("retain handling 3 is reserved [MQTT-3.8.3.1]")]
    InvalidRetainHandling,
    #[error("no local on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    #[error("reason code 0x{code:02X} is not valid in {packet} [MQTT-2.4]")]
    InvalidReasonCode { code: u8, packet: &'static str },
    #[error("property 0x{0:02X} is not an MQTT 5 property [MQTT-2.2.2]")]
    UnknownProperty(u8),
    #[error("property {0} is not allowed in {1} [MQTT-2.2.2]")]
    PropertyNotAllowed(&'static str, &'static str),
    #[error("property {0} appears more than once [MQTT-2.2.2]")]
    DuplicateProperty(&'static str),
    #[error("property {0} has a value the specification forbids")]
    InvalidPropertyValue(&'static str),
    #[error("property length runs past the end of the packet")]
    PropertyLength,
    #[error("{0} must have remaining length 0")]
    NonEmptyBody(&'static str),
    #[error("CONNACK acknowledge flags reserved bits are set [MQTT-3.2.2-1]")]
    ConnAckReservedFlags,
}

impl DecodeError {
    /// The MQTT 5 reason code to answer this error with.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolLevel(_) | InvalidProtocolName(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            FirstPacketNotConnect
            | DuplicateProperty(_)
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | EmptySubscribe
            | EmptyUnsubscribe
            | ZeroPacketId
            | AuthBeforeV5
            | InvalidPropertyValue(_) => ReasonCode::ProtocolError,
            WildcardInTopicName(_) | EmptyTopicName => ReasonCode::TopicNameInvalid,
            _ => ReasonCode::MalformedPacket,
        }
    }
}
