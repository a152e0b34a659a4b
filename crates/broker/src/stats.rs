//! Broker statistics: counted once, shown as `$SYS/broker/...` topics and as
//! Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Counters updated on the packet path. The connection gauge is one atomic
/// (it moves once per connection); the per-message counters are striped.
#[derive(Debug)]
pub struct BrokerStats {
    pub started: Instant,
    pub clients_connected: AtomicU64,
    pub connections_total: Counter,
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub publish_received: Counter,
    pub publish_sent: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub messages_dropped: Counter,
    pub malformed_packets: Counter,
    pub auth_failures: Counter,
    /// CONNECTs refused for their client identifier (reserved, or not the
    /// identity the credentials belong to).
    pub client_id_refusals: Counter,
    /// Retained PUBLISHes refused past the retained limits.
    pub retained_refused: Counter,
}

impl Default for BrokerStats {
    fn default() -> Self {
        BrokerStats {
            started: Instant::now(),
            clients_connected: AtomicU64::new(0),
            connections_total: Counter::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            publish_received: Counter::default(),
            publish_sent: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            messages_dropped: Counter::default(),
            malformed_packets: Counter::default(),
            auth_failures: Counter::default(),
            client_id_refusals: Counter::default(),
            retained_refused: Counter::default(),
        }
    }
}

/// Stripes per counter; more worker threads than this share stripes, which
/// costs speed, never a count.
const STRIPES: usize = 8;

/// A counter bumped by every worker thread at every message. Each thread
/// adds to a stripe of its own on its own cache line: one shared atomic
/// would move its line between the cores at every message of every
/// connection.
#[derive(Debug, Default)]
pub struct Counter {
    stripes: [Stripe; STRIPES],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.stripes[stripe_of_this_thread()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

fn stripe_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// One reading of every figure, with the gauges the broker fills in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub uptime_secs: u64,
    pub clients_connected: u64,
    /// Connected clients whose connection hibernates (no task while idle).
    pub clients_hibernated: u64,
    pub sessions: u64,
    pub connections_total: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub publish_received: u64,
    pub publish_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub messages_dropped: u64,
    pub malformed_packets: u64,
    pub auth_failures: u64,
    pub client_id_refusals: u64,
    pub retained_refused: u64,
    pub retained_messages: u64,
    pub subscriptions: u64,
    /// Bytes queued by sessions holding 64 KiB or more, against the total bound.
    pub queued_bytes: u64,
    /// The journal (with `data_dir`): its size, and what its writer did.
    pub journal_bytes: u64,
    pub journal_records: u64,
    pub journal_syncs: u64,
    pub journal_compactions: u64,
    pub journal_failures: u64,
    /// Queued deliveries past `max_queued_bytes_total` kept on disk (with
    /// `data_dir`): now, their bytes, ever written, failures.
    pub spilled_messages: u64,
    pub spilled_bytes: u64,
    pub spilled_written: u64,
    pub spill_failures: u64,
}

pub(crate) fn add(counter: &Counter, n: u64) {
    counter.add(n);
}

impl BrokerStats {
    pub(crate) fn snapshot(
        &self,
        hibernated: u64,
        sessions: u64,
        retained: u64,
        subscriptions: u64,
        queued_bytes: u64,
    ) -> StatsSnapshot {
        let get = Counter::get;
        StatsSnapshot {
            uptime_secs: self.started.elapsed().as_secs(),
            clients_connected: self.clients_connected.load(Ordering::Relaxed),
            clients_hibernated: hibernated,
            sessions,
            connections_total: get(&self.connections_total),
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            publish_received: get(&self.publish_received),
            publish_sent: get(&self.publish_sent),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            messages_dropped: get(&self.messages_dropped),
            malformed_packets: get(&self.malformed_packets),
            auth_failures: get(&self.auth_failures),
            client_id_refusals: get(&self.client_id_refusals),
            retained_refused: get(&self.retained_refused),
            retained_messages: retained,
            subscriptions,
            queued_bytes,
            journal_bytes: 0,
            journal_records: 0,
            journal_syncs: 0,
            journal_compactions: 0,
            journal_failures: 0,
            spilled_messages: 0,
            spilled_bytes: 0,
            spilled_written: 0,
            spill_failures: 0,
        }
    }
}

impl StatsSnapshot {
    /// `$SYS` topics and values, as Mosquitto names them where it has a name.
    pub fn sys_topics(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "$SYS/broker/version",
                format!("telemark {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.uptime_secs),
            ),
            (
                "$SYS/broker/clients/connected",
                self.clients_connected.to_string(),
            ),
            (
                "$SYS/broker/clients/hibernated",
                self.clients_hibernated.to_string(),
            ),
            ("$SYS/broker/clients/total", self.sessions.to_string()),
            (
                "$SYS/broker/clients/connections",
                self.connections_total.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                self.messages_received.to_string(),
            ),
            ("$SYS/broker/messages/sent", self.messages_sent.to_string()),
            (
                "$SYS/broker/publish/messages/received",
                self.publish_received.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                self.publish_sent.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped",
                self.messages_dropped.to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                self.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", self.bytes_sent.to_string()),
            (
                "$SYS/broker/clients/refused-client-id",
                self.client_id_refusals.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                self.retained_messages.to_string(),
            ),
            (
                "$SYS/broker/subscriptions/count",
                self.subscriptions.to_string(),
            ),
            ("$SYS/broker/queued/bytes", self.queued_bytes.to_string()),
            ("$SYS/broker/journal/bytes", self.journal_bytes.to_string()),
            ("$SYS/broker/journal/syncs", self.journal_syncs.to_string()),
            (
                "$SYS/broker/queued/spilled/messages",
                self.spilled_messages.to_string(),
            ),
            (
                "$SYS/broker/queued/spilled/bytes",
                self.spilled_bytes.to_string(),
            ),
        ]
    }

    /// The Prometheus text exposition format, names `telemark_broker_<name>_<unit>`.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP telemark_broker_{name} {help}");
            let _ = writeln!(out, "# TYPE telemark_broker_{name} {kind}");
            let _ = writeln!(out, "telemark_broker_{name} {value}");
        };
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the broker started.",
            self.uptime_secs,
        );
        metric(
            "clients_connected",
            "gauge",
            "Clients connected now.",
            self.clients_connected,
        );
        metric(
            "clients_hibernated",
            "gauge",
            "Connected clients idle without a task of their own.",
            self.clients_hibernated,
        );
        metric(
            "sessions",
            "gauge",
            "Sessions held, connected or not.",
            self.sessions,
        );
        metric(
            "connections_total",
            "counter",
            "Connections accepted.",
            self.connections_total,
        );
        metric(
            "packets_received_total",
            "counter",
            "Control packets received.",
            self.messages_received,
        );
        metric(
            "packets_sent_total",
            "counter",
            "Control packets sent.",
            self.messages_sent,
        );
        metric(
            "publish_received_total",
            "counter",
            "PUBLISH packets received.",
            self.publish_received,
        );
        metric(
            "publish_sent_total",
            "counter",
            "PUBLISH packets sent.",
            self.publish_sent,
        );
        metric(
            "publish_dropped_total",
            "counter",
            "Messages dropped by full queues, expiry or size.",
            self.messages_dropped,
        );
        metric(
            "received_bytes_total",
            "counter",
            "Bytes read from clients.",
            self.bytes_received,
        );
        metric(
            "sent_bytes_total",
            "counter",
            "Bytes written to clients.",
            self.bytes_sent,
        );
        metric(
            "malformed_packets_total",
            "counter",
            "Connections closed for a malformed packet or protocol error.",
            self.malformed_packets,
        );
        metric(
            "auth_failures_total",
            "counter",
            "CONNECTs refused by authentication.",
            self.auth_failures,
        );
        metric(
            "client_id_refusals_total",
            "counter",
            "CONNECTs refused for their client identifier (reserved, or not the credentials' own).",
            self.client_id_refusals,
        );
        metric(
            "retained_refused_total",
            "counter",
            "Retained PUBLISHes refused past the retained limits.",
            self.retained_refused,
        );
        metric(
            "retained_messages",
            "gauge",
            "Retained messages held.",
            self.retained_messages,
        );
        metric(
            "subscriptions",
            "gauge",
            "Subscriptions held.",
            self.subscriptions,
        );
        metric(
            "queued_bytes",
            "gauge",
            "Topic and payload bytes queued for sessions, counted in 64 KiB steps per session holding at least that much (the figure max_queued_bytes_total bounds).",
            self.queued_bytes,
        );
        metric(
            "journal_bytes",
            "gauge",
            "Size of the journal of persistent sessions and retained messages (0 without data_dir).",
            self.journal_bytes,
        );
        metric(
            "journal_records_total",
            "counter",
            "Records written to the journal.",
            self.journal_records,
        );
        metric(
            "journal_syncs_total",
            "counter",
            "Syncs of the journal to the disk (each releases the acknowledgements waiting on it).",
            self.journal_syncs,
        );
        metric(
            "journal_compactions_total",
            "counter",
            "Times the journal was rewritten as the live state.",
            self.journal_compactions,
        );
        metric(
            "journal_failures_total",
            "counter",
            "Journal writes or syncs that failed; their acknowledgements were withheld.",
            self.journal_failures,
        );
        metric(
            "queued_spilled_messages",
            "gauge",
            "Queued deliveries kept on disk because all queues together reached max_queued_bytes_total (with data_dir).",
            self.spilled_messages,
        );
        metric(
            "queued_spilled_bytes",
            "gauge",
            "Topic and payload bytes of the queued deliveries kept on disk.",
            self.spilled_bytes,
        );
        metric(
            "queued_spilled_total",
            "counter",
            "Queued deliveries ever written to disk past the memory bound.",
            self.spilled_written,
        );
        metric(
            "queued_spill_failures_total",
            "counter",
            "Spill files that could not be written or read (what a persistent session was owed comes back from the journal at the next start).",
            self.spill_failures,
        );
        out
    }
}
