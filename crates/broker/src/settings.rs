//! The broker's limits and behaviour, with defaults fit for a 10,000-device fleet.

use std::path::PathBuf;

use serde::Deserialize;

pub use crate::persistence::FsyncPolicy;

/// What happens when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QueuePolicy {
    /// Make room by dropping the oldest queued message.
    #[default]
    DropOldest,
    /// Keep the queue and drop the new message.
    DropNewest,
}

/// Limits and switches of the broker. Every field has a default, so an
/// empty `[broker]` section is a working broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Connections open at once; more are refused at CONNECT.
    pub max_connections: usize,
    /// Largest packet accepted, header included (bytes) [MQTT-3.2.2-15].
    pub max_packet_size: u32,
    /// Longest topic name or filter accepted (bytes).
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Most subscriptions one session may hold.
    pub max_subscriptions_per_client: usize,
    /// Receive Maximum announced to clients: QoS 1 and 2 messages a client
    /// may have unacknowledged towards the broker [MQTT-3.2.2.3.3].
    pub receive_maximum: u16,
    /// Most QoS 1 and 2 messages in flight towards one client, even if the
    /// client allows more.
    pub max_inflight: u16,
    /// Messages queued for one session (offline or slow) before the policy applies.
    pub max_queued_messages: usize,
    /// Payload and topic bytes queued for one session before the policy
    /// applies. Sessions the embedder gives a queue of their own (the
    /// platform's ingest) are bounded by their message count only.
    pub max_queued_bytes: usize,
    /// Payload and topic bytes queued in memory for all sessions together.
    /// Past it a session holding 64 KiB or more writes what comes next to
    /// `data_dir/spill` and reads it back as it drains (`spill`); without
    /// a data directory it stops growing (its policy applies as if it were
    /// full). Offline and slow sessions cannot take the process's memory
    /// between them; `telemark_broker_queued_bytes`,
    /// `telemark_broker_queued_spilled_bytes`.
    pub max_queued_bytes_total: usize,
    /// Topic and payload bytes of queued deliveries kept on disk past
    /// `max_queued_bytes_total`, all sessions together: past it queues stop
    /// growing as without a data directory, so clients that do not read
    /// cannot fill the disk either. 0 keeps nothing on disk.
    pub max_spilled_bytes_total: u64,
    /// Retained messages held in all, their topic and payload bytes, and
    /// per publishing client; past a limit a retained PUBLISH is refused
    /// (MQTT 5: 0x97).
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub max_retained_per_client: usize,
    pub queue_policy: QueuePolicy,
    /// Queue QoS 0 messages for sessions that are offline.
    pub queue_qos0_offline: bool,
    /// Longest session expiry interval granted (seconds).
    pub max_session_expiry: u32,
    /// Longest keep alive granted (seconds); MQTT 5 clients asking for more,
    /// or for none, are told this value as Server Keep Alive [MQTT-3.2.2-21].
    pub max_keep_alive: u16,
    /// Topic aliases a client may set up towards the broker [MQTT-3.2.2.3.8].
    pub topic_alias_maximum: u16,
    /// Seconds to wait for CONNECT after a connection opens.
    pub connect_timeout_secs: u64,
    /// Seconds between `$SYS` updates; 0 turns them off.
    pub sys_interval_secs: u64,
    /// Seconds a graceful shutdown waits for connections to close.
    pub shutdown_timeout_secs: u64,
    /// Milliseconds a plain TCP connection waits with nothing to do before it
    /// hibernates: it gives up its task and buffers (about 1 KB) until a
    /// packet, a delivery or its keep-alive wakes it. A connection woken
    /// within 10 s then waits twice its last quiet spell (up to 10 s)
    /// before it hibernates again, so devices that publish every few
    /// seconds stay awake. 0 never hibernates.
    pub hibernate_after_ms: u64,
    /// Refuse a CONNECT with a user name whose client identifier is not that
    /// user name (CONNACK 0x85, 3.1.1: 0x02), so one login cannot take over
    /// or read another's session. The platform's device logins always are.
    pub client_id_must_match_username: bool,
    /// Directory of the journal that keeps persistent sessions (their
    /// subscriptions, wills, queued and in-flight QoS 1 and 2 messages) and
    /// retained messages across restarts and crashes. Unset: all in memory.
    /// With it, a QoS 1 or 2 message for a persistent session, a retained
    /// one, or a QoS 2 one from a persistent session is acknowledged only
    /// once it is in the journal (docs/durability.md).
    pub data_dir: Option<PathBuf>,
    /// When the journal is synced to the disk: `always`, `batch`, `never`.
    pub fsync: FsyncPolicy,
    /// With `fsync = "batch"`: the longest wait between syncs (ms).
    pub fsync_interval_ms: u64,
    /// The journal is compacted (rewritten as the live state) once it is
    /// past this many bytes and twice its size after the last compaction.
    pub journal_compact_bytes: u64,
    /// Writes the journal's synced length to `journal.synced` after every
    /// sync: for the power-cut test, which cuts the journal there.
    pub journal_record_synced_length: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_connections: 200_000,
            max_packet_size: 1024 * 1024 * 16,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_subscriptions_per_client: 1000,
            receive_maximum: 1024,
            max_inflight: 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_queued_bytes_total: 1024 * 1024 * 1024,
            max_spilled_bytes_total: 16 * 1024 * 1024 * 1024,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            max_retained_per_client: 1_000,
            queue_policy: QueuePolicy::DropOldest,
            queue_qos0_offline: false,
            max_session_expiry: 7 * 24 * 3600,
            max_keep_alive: 65_535,
            topic_alias_maximum: 256,
            connect_timeout_secs: 10,
            sys_interval_secs: 10,
            shutdown_timeout_secs: 5,
            hibernate_after_ms: 100,
            client_id_must_match_username: false,
            data_dir: None,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 5,
            journal_compact_bytes: 64 * 1024 * 1024,
            journal_record_synced_length: false,
        }
    }
}

impl Settings {
    /// Every problem at once, so a bad config file is fixed in one go.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.max_packet_size < 64 {
            problems.push("broker.max_packet_size must be at least 64 bytes".to_owned());
        }
        if self.max_packet_size as usize > mqtt::MAX_REMAINING_LENGTH + 5 {
            problems.push("broker.max_packet_size must be at most 268435460 bytes".to_owned());
        }
        if self.receive_maximum == 0 {
            problems.push("broker.receive_maximum must be at least 1".to_owned());
        }
        if self.max_inflight == 0 {
            problems.push("broker.max_inflight must be at least 1".to_owned());
        }
        if self.max_queued_messages == 0 {
            problems.push("broker.max_queued_messages must be at least 1".to_owned());
        }
        if self.max_queued_bytes_total < crate::session::QUEUE_CHARGE_STEP {
            problems.push("broker.max_queued_bytes_total must be at least 65536".to_owned());
        }
        if self.max_queued_bytes < self.max_packet_size as usize {
            problems.push(
                "broker.max_queued_bytes must hold at least one packet of max_packet_size"
                    .to_owned(),
            );
        }
        if self.max_topic_levels == 0 || self.max_topic_length == 0 {
            problems
                .push("broker.max_topic_levels and max_topic_length must be at least 1".to_owned());
        }
        if self.max_keep_alive == 0 {
            problems.push("broker.max_keep_alive must be at least 1".to_owned());
        }
        if self.fsync == FsyncPolicy::Batch && !(1..=1000).contains(&self.fsync_interval_ms) {
            problems.push("broker.fsync_interval_ms must be 1 to 1000".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
