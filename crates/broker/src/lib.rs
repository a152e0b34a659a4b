//! The MQTT broker: listeners, sessions, the subscription tree, retained
//! messages, wills and the QoS flows of MQTT 3.1, 3.1.1 and 5.0.
//!
//! It knows nothing of devices or tenants: who may connect and what they may
//! do is asked of an [`Authenticator`] the embedder provides. Start one with
//! [`Broker::new`], then hand it bound listeners with [`Broker::serve`].

pub mod auth;
mod broker;
mod connection;
mod hibernation;
pub mod listener;
pub mod local;
pub mod message;
mod persistence;
pub mod receipt;
pub mod retained;
pub mod session;
pub mod settings;
pub mod spill;
pub mod stats;
mod transport;
pub mod tree;

pub use auth::{
    Action, AllowAll, AuthConversation, AuthStep, Authenticator, BoxFuture, ClientIdentity,
    ConnectRequest, FileAuthenticator,
};
pub use broker::Broker;
pub use listener::{ListenerKind, TlsFiles, WEBSOCKET_PATH};
pub use local::{LocalSubscribeError, LocalSubscriber};
pub use message::Message;
pub use persistence::PersistenceError;
pub use receipt::Receipt;
pub use settings::{FsyncPolicy, QueuePolicy, Settings};
pub use stats::StatsSnapshot;

/// Reads `contents` as a journal file the way recovery does (frames,
/// records, applied in order) and returns how many records were good: for
/// the fuzzer (`fuzz/fuzz_targets/journal.rs`).
#[doc(hidden)]
pub fn replay_journal(contents: &[u8]) -> u64 {
    persistence::replay(contents).records
}
