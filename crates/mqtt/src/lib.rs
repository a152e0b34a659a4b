//! MQTT 3.1, 3.1.1 and 5.0 control packets and a strict, incremental codec.
//!
//! This crate does no I/O: [`Decoder::decode`] takes whatever bytes have arrived
//! and answers `Ok(None)` until a whole packet is there, a [`Packet`] once it is,
//! or a [`DecodeError`] naming the normative statement the bytes break and the
//! MQTT 5 reason code a server answers it with. [`encode`] writes a packet for a
//! given protocol version. Payloads are [`bytes::Bytes`] shared without copying.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;
pub mod topic;
mod version;

pub use decode::{Decoder, MAX_CONNECT_SIZE};
pub use encode::{EncodeError, PublishRef, encode, encode_publish};
pub use error::DecodeError;
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, PubResponse, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use properties::{MAX_SUBSCRIPTION_IDENTIFIER, Properties, PropertyContext};
pub use reason::ReasonCode;
pub use version::ProtocolVersion;

/// The largest remaining length a fixed header can express [MQTT-1.5.5]: 256 MiB.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
