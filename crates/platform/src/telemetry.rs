//! Ingest of the black box: every message on a device topic is checked
//! against the device contract, its numbers become readings written to the
//! store in batches, its log lines are kept, and what breaks the contract is
//! counted per device. The latest value of each metric stays in memory, and
//! live readings go out on a broadcast channel for the console.
//!
//! The platform reads the broker as any MQTT client does (DESIGN.md), so the
//! same code serves the embedded broker and an external cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use device_protocol::{Reading, split_topic};
use store::{NewLogLine, NewReading, Store};
use tokio::sync::broadcast;

/// Flush when this many rows wait, or every [`FLUSH_EVERY`].
const BATCH_ROWS: usize = 5_000;
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// A transaction takes everything that waits, up to this: what arrives while
/// one is written goes into the next (group commit), so batches grow with
/// the load. A write costs about one page per device it touches, whatever
/// the rows, so a device's seconds of readings had better share one.
const MAX_TRANSACTION_ROWS: usize = 500_000;
/// Readings waiting in memory, whether the database is slower than the
/// fleet or refuses writes: past it the oldest are dropped and counted
/// (`readings_dropped`), so a slow database costs readings, not the
/// process. About 5 minutes of 10,000 devices reporting every second, in
/// about 400 MB; [`Ingest::set_max_backlog`] changes it.
pub const DEFAULT_MAX_BACKLOG: usize = 4_000_000;
/// Log lines waiting in memory for the database; past it the oldest are
/// dropped and counted (`log_lines_dropped`).
pub const MAX_BACKLOG_LINES: usize = 1_000_000;
/// Distinct metric series one device may have: each is a row per reading
/// and an entry in memory, and the names come from the device.
pub const MAX_METRICS_PER_DEVICE: usize = 256;
/// How far a reading's time may be from the server's: older or newer
/// readings are faults (a device clock at 1970 would otherwise send
/// retention and roll-up over decades of empty hours).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(24 * 3600);
/// A device that keeps sending bad messages is logged once a minute.
const FAULT_LOG_EVERY: Duration = Duration::from_secs(60);

/// One reading as the console's live view gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveReading {
    pub device_id: i64,
    pub metric: String,
    pub ts: i64,
    pub value: f64,
}

/// Counters of what the ingest saw, for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub messages: AtomicU64,
    pub readings_stored: AtomicU64,
    pub log_lines_stored: AtomicU64,
    pub rejected: AtomicU64,
    pub unknown_devices: AtomicU64,
    pub write_failures: AtomicU64,
    /// Readings given up, oldest first, when more waited for the database
    /// than the backlog bound allows.
    pub readings_dropped: AtomicU64,
    /// Log lines given up the same way, past [`MAX_BACKLOG_LINES`].
    pub log_lines_dropped: AtomicU64,
    /// Acknowledgements released to the broker once what they stood for
    /// was written.
    pub acknowledgements_released: AtomicU64,
    /// Acknowledgements given up unwritten: their devices send again.
    pub acknowledgements_lost: AtomicU64,
}

/// The broker's acknowledgement of messages the ingest was handed, held
/// until what they carried is written (DESIGN.md: acknowledged means
/// durable). Dropped unwritten — its readings were given up past the
/// backlog bound, or the process stops first — it tells the broker they were
/// not kept, and the device sends them again.
pub trait Acknowledgement: Send + 'static {
    /// Everything handed in before it is in the database.
    fn written(self: Box<Self>);
}

/// An acknowledgement waiting for the readings handed in before it:
/// positions `from..to` of the ingest's count of readings queued.
struct WaitingAck {
    from: u64,
    to: u64,
    ack: Box<dyn Acknowledgement>,
}

#[derive(Default)]
struct Pending {
    /// Oldest first; a deque so a flush takes its batch off the front
    /// without moving a backlog of millions, and a failed batch goes back
    /// in front.
    readings: std::collections::VecDeque<NewReading>,
    /// Readings ever taken off the front of `readings` (written or given
    /// up): the position of its first.
    taken: u64,
    /// Acknowledgements in the order they were handed in, each waiting for
    /// its readings and for the flush after it.
    acks: std::collections::VecDeque<WaitingAck>,
    /// Where the last acknowledgement's readings ended: the next one's
    /// begin there (or later, see `written_to`).
    acked_to: u64,
    /// Readings before this position are written.
    written_to: u64,
    lines: std::collections::VecDeque<NewLogLine>,
    faults: HashMap<i64, (u64, String)>,
    firmware: HashMap<i64, String>,
    /// The latest radio state each device reported since the last flush.
    radio: HashMap<i64, store::RadioState>,
}

/// Device → metric → (device time, value).
type LatestByDevice = HashMap<i64, HashMap<String, (i64, f64)>>;

/// What the ingest remembers of a topic's device. An unknown one is asked
/// again after [`UNKNOWN_DEVICE_TTL`]: another instance on the database
/// may have registered it since (its import clears only its own cache).
#[derive(Debug, Clone, Copy)]
enum CachedDevice {
    Known(KnownDevice),
    Unknown(Instant),
}

const UNKNOWN_DEVICE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct KnownDevice {
    id: i64,
}

pub struct Ingest {
    store: Store,
    /// `dwr/{model}/{mac}/` → its device, or when no device owned it.
    devices: Mutex<HashMap<Box<str>, CachedDevice>>,
    pending: Mutex<Pending>,
    latest: Mutex<LatestByDevice>,
    fault_logged: Mutex<HashMap<String, Instant>>,
    live: broadcast::Sender<LiveReading>,
    alarms: Option<Arc<crate::alarms::AlarmEngine>>,
    /// Where answers on `tasks/…` topics and boot ids go.
    tasks: std::sync::OnceLock<Arc<crate::tasks::TaskService>>,
    /// Where `sessions/…/out` frames and devices' goodbyes go.
    remote: std::sync::OnceLock<Arc<crate::remote::RemoteSessions>>,
    /// Wakes the [`BatchWriter`] before its tick when a batch is full.
    batch_full: tokio::sync::Notify,
    max_backlog: std::sync::atomic::AtomicUsize,
    /// Milliseconds a reading may be older / newer than the server's clock.
    max_age_ms: AtomicU64,
    max_ahead_ms: AtomicU64,
    pub counters: IngestCounters,
}

impl Ingest {
    pub fn new(store: Store) -> Arc<Self> {
        Self::build(store, None)
    }

    /// An ingest whose readings also feed the alarm engine's threshold rules.
    pub fn with_alarms(store: Store, alarms: Arc<crate::alarms::AlarmEngine>) -> Arc<Self> {
        Self::build(store, Some(alarms))
    }

    fn build(store: Store, alarms: Option<Arc<crate::alarms::AlarmEngine>>) -> Arc<Self> {
        Arc::new(Ingest {
            store,
            devices: Mutex::default(),
            pending: Mutex::default(),
            latest: Mutex::default(),
            fault_logged: Mutex::default(),
            live: broadcast::channel(4096).0,
            alarms,
            tasks: std::sync::OnceLock::new(),
            remote: std::sync::OnceLock::new(),
            batch_full: tokio::sync::Notify::new(),
            max_backlog: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_BACKLOG),
            max_age_ms: AtomicU64::new(DEFAULT_MAX_AGE.as_millis() as u64),
            max_ahead_ms: AtomicU64::new(DEFAULT_MAX_AHEAD.as_millis() as u64),
            counters: IngestCounters::default(),
        })
    }

    /// Hands devices' task answers and boot ids to `tasks` (once).
    pub fn set_tasks(&self, tasks: Arc<crate::tasks::TaskService>) {
        let _ = self.tasks.set(tasks);
    }

    /// Hands devices' remote-session frames to `remote` (once).
    pub fn set_remote(&self, remote: Arc<crate::remote::RemoteSessions>) {
        let _ = self.remote.set(remote);
    }

    /// Bounds the readings waiting in memory (at least one).
    pub fn set_max_backlog(&self, readings: usize) {
        self.max_backlog.store(readings.max(1), Ordering::Relaxed);
    }

    fn max_backlog(&self) -> usize {
        self.max_backlog.load(Ordering::Relaxed)
    }

    /// How far from the server's clock a reading's time may be.
    pub fn set_timestamp_window(&self, max_age: Duration, max_ahead: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.max_age_ms.store(ms(max_age), Ordering::Relaxed);
        self.max_ahead_ms.store(ms(max_ahead), Ordering::Relaxed);
    }

    /// Why a device time is outside the window, if it is.
    fn outside_window(&self, ts: i64) -> Option<String> {
        let now = store::now_millis();
        let max_age = i64::try_from(self.max_age_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let max_ahead =
            i64::try_from(self.max_ahead_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        if ts < now.saturating_sub(max_age) {
            Some(format!(
                "ts {ts} is more than {} days before the server's time",
                max_age / 86_400_000
            ))
        } else if ts > now.saturating_add(max_ahead) {
            Some(format!(
                "ts {ts} is more than {} hours after the server's time",
                max_ahead / 3_600_000
            ))
        } else {
            None
        }
    }

    /// Drops the oldest waiting log lines past [`MAX_BACKLOG_LINES`], counted.
    /// Holds `ack` until everything handed to [`Self::handle`] before it is
    /// written, and asks the writer for a transaction now (group commit:
    /// what arrives while one is written goes into the next).
    pub fn acknowledge_when_written(&self, ack: Box<dyn Acknowledgement>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let to = pending.taken + pending.readings.len() as u64;
        // Readings handed in without an acknowledgement (QoS 0) since the
        // last one count as this one's, unless they are written already.
        let from = pending.acked_to.max(pending.written_to).min(to);
        pending.acked_to = to;
        pending.acks.push_back(WaitingAck { from, to, ack });
        drop(pending);
        self.batch_full.notify_one();
    }

    /// Gives up the oldest `count` waiting readings: the acknowledgements
    /// of the messages they came in go unwritten.
    fn drop_oldest(&self, pending: &mut Pending, count: usize) {
        pending.readings.drain(..count);
        pending.taken += count as u64;
        self.lose_acks_before(pending);
    }

    /// Drops the acknowledgements some of whose readings were given up.
    fn lose_acks_before(&self, pending: &mut Pending) {
        let taken = pending.taken;
        let before = pending.acks.len();
        pending.acks.retain(|a| a.from == a.to || a.from >= taken);
        self.counters
            .acknowledgements_lost
            .fetch_add((before - pending.acks.len()) as u64, Ordering::Relaxed);
    }

    fn bound_log_lines(&self, pending: &mut Pending) {
        if pending.lines.len() > MAX_BACKLOG_LINES {
            let excess = pending.lines.len() - MAX_BACKLOG_LINES;
            pending.lines.drain(..excess);
            self.counters
                .log_lines_dropped
                .fetch_add(excess as u64, Ordering::Relaxed);
        }
    }

    /// Counts a message that broke the contract against its device.
    fn fault(&self, device_id: i64, topic: &str, error: String) {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        self.log_fault(topic, &error);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let fault = pending.faults.entry(device_id).or_default();
        fault.0 += 1;
        fault.1 = error;
    }

    /// Live readings of every device, for the console's stream.
    pub fn subscribe_live(&self) -> broadcast::Receiver<LiveReading> {
        self.live.subscribe()
    }

    /// The latest value of each metric of a device, as ingested here.
    pub fn latest(&self, device_id: i64) -> Vec<(String, i64, f64)> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, i64, f64)> = latest
            .get(&device_id)
            .map(|m| m.iter().map(|(k, (ts, v))| (k.clone(), *ts, *v)).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The device owning `dwr/{model}/{mac}/`, the topic's first levels
    /// (`key`), looked up without allocating for a device already known.
    async fn device(&self, key: &str, model: &str, mac: &str) -> Option<KnownDevice> {
        match self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            Some(CachedDevice::Known(known)) => return Some(*known),
            Some(CachedDevice::Unknown(since)) if since.elapsed() < UNKNOWN_DEVICE_TTL => {
                return None;
            }
            _ => {}
        }
        let found = match self.store.device_login(mac).await {
            Ok(Some(login)) if login.topic_segment == model => Some(KnownDevice {
                id: login.device_id,
            }),
            Ok(_) => None,
            // Not cached: the next message asks again.
            Err(e) => {
                tracing::warn!(error = %e, "device lookup failed");
                return None;
            }
        };
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key.into(),
                found.map_or(CachedDevice::Unknown(Instant::now()), CachedDevice::Known),
            );
        found
    }

    /// Forgets what it knows of devices (after an import or a deletion).
    pub fn forget_devices(&self) {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether something logged under `key` is due again (once a minute).
    fn log_due(&self, key: String) -> bool {
        let mut logged = self.fault_logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = logged
            .get(&key)
            .is_none_or(|at| now.duration_since(*at) >= FAULT_LOG_EVERY);
        if due {
            logged.insert(key, now);
        }
        due
    }

    fn log_fault(&self, topic: &str, error: &str) {
        // One key per device, whichever of its topics was bad.
        let key = split_topic(topic).map_or(topic.to_owned(), |(model, device, _)| {
            format!("{model}/{device}")
        });
        if self.log_due(key) {
            tracing::warn!(%topic, %error, "device message breaks the contract (logged once a minute per device)");
        }
    }

    /// A device's `status` message (or its will) read for presence: online
    /// or not, to `presence`. Whatever else is wrong with it is the
    /// ingest's to report when it reads the same message.
    pub async fn presence_from_status(
        &self,
        topic: &str,
        payload: &[u8],
        presence: &crate::presence::PresenceRecorder,
    ) {
        let Some((model, mac, "status")) = split_topic(topic) else {
            return;
        };
        let key = &topic[..topic.len() - "status".len()];
        let (Some(device), Ok(Reading::Status(status))) = (
            self.device(key, model, mac).await,
            device_protocol::parse("status", payload),
        ) else {
            return;
        };
        presence.reported(device.id, status.state == "online");
    }

    /// A broker's report that the client `client_id` connected or
    /// disconnected: a device logs in with its device id as client id, so
    /// that names it; any other client (the platform's own, a console
    /// user's) is not a device and is ignored.
    pub async fn presence_from_client_event(
        &self,
        client_id: &str,
        online: bool,
        presence: &crate::presence::PresenceRecorder,
    ) {
        let Ok(mac) = crate::identifiers::normalize_mac(client_id) else {
            return;
        };
        match self.store.device_login(&mac).await {
            Ok(Some(login)) => presence.reported(login.device_id, online),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "device lookup for a client event failed"),
        }
    }

    /// Takes one message from the broker. Never fails: a bad message is
    /// counted against its device.
    pub async fn handle(&self, topic: &str, payload: &[u8]) {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let Some((model, mac, suffix)) = split_topic(topic) else {
            return;
        };
        // The topic up to the suffix names the device: `dwr/{model}/{mac}/`.
        let key = &topic[..topic.len() - suffix.len()];
        let Some(device) = self.device(key, model, mac).await else {
            self.counters
                .unknown_devices
                .fetch_add(1, Ordering::Relaxed);
            self.log_fault(topic, "no device in the registry owns this topic");
            return;
        };
        if let Some(task_topic) = device_protocol::task::TaskTopic::parse(suffix) {
            use device_protocol::task::TaskTopic;
            match (task_topic, self.tasks.get()) {
                // The platform's own request, seen on `dwr/#`.
                (Ok(TaskTopic::Request(_)), _) => {}
                (Ok(answer), Some(tasks)) => tasks.take_answer(
                    device.id,
                    mac,
                    answer,
                    bytes::Bytes::copy_from_slice(payload),
                ),
                (Ok(_), None) => self.fault(
                    device.id,
                    topic,
                    "tasks: this platform runs no tasks".into(),
                ),
                (Err(e), _) => self.fault(device.id, topic, e),
            }
            return;
        }
        if let Some(session_topic) = device_protocol::session::parse_topic(suffix) {
            use device_protocol::session::Direction;
            match (session_topic, self.remote.get()) {
                // The platform's own frames, seen on `dwr/#`.
                (Ok((_, Direction::In)), _) => {}
                (Ok((id, Direction::Out)), Some(remote)) => {
                    let reply = format!("{key}sessions/{id}/in");
                    remote.from_device(
                        device.id,
                        id,
                        bytes::Bytes::copy_from_slice(payload),
                        reply,
                    );
                }
                (Ok(_), None) => self.fault(
                    device.id,
                    topic,
                    "sessions: this platform offers no remote access".into(),
                ),
                (Err(e), _) => self.fault(device.id, topic, e),
            }
            return;
        }
        let reading = match device_protocol::parse(suffix, payload) {
            Ok(r) => r,
            Err(e) => return self.fault(device.id, topic, e.to_string()),
        };
        if let (Reading::Status(status), Some(remote)) = (&reading, self.remote.get())
            && status.state == "offline"
        {
            // Before the age check: a will's time is its connection's.
            remote.device_offline(device.id);
        }
        let ts = reading.timestamp();
        let line_times = match &reading {
            Reading::Syslog(b) | Reading::Dmesg(b) => b.lines.iter().map(|l| l.ts).collect(),
            _ => Vec::new(),
        };
        if let Some(why) = std::iter::once(ts)
            .chain(line_times)
            .find_map(|t| self.outside_window(t))
        {
            return self.fault(device.id, topic, format!("{suffix}: {why}"));
        }
        let mut metrics = reading.metrics();
        if !metrics.is_empty() {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let entry = latest.entry(device.id).or_default();
            // A device may not grow its series without bound: new names past
            // the limit are a fault; known ones go on.
            let before = metrics.len();
            let mut room = MAX_METRICS_PER_DEVICE.saturating_sub(entry.len());
            metrics.retain(|(metric, _)| {
                entry.contains_key(metric.as_str())
                    || (room > 0 && {
                        room -= 1;
                        true
                    })
            });
            if metrics.len() < before {
                drop(latest);
                self.fault(
                    device.id,
                    topic,
                    format!(
                        "{suffix}: more than {MAX_METRICS_PER_DEVICE} metric series for one device; {} readings not kept",
                        before - metrics.len()
                    ),
                );
                latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            }
            let entry = latest.entry(device.id).or_default();
            let listened = self.live.receiver_count() > 0;
            for (metric, value) in &metrics {
                match entry.get_mut(metric.as_str()) {
                    Some(latest) => *latest = (ts, *value),
                    None => {
                        entry.insert(metric.clone(), (ts, *value));
                    }
                }
                if listened {
                    // A receiver gone since is fine.
                    let _ = self.live.send(LiveReading {
                        device_id: device.id,
                        metric: metric.clone(),
                        ts,
                        value: *value,
                    });
                }
            }
        }
        if let Some(alarms) = &self.alarms {
            alarms.observe(device.id, ts, &metrics).await;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .readings
            .extend(metrics.into_iter().map(|(metric, value)| NewReading {
                device_id: device.id,
                metric,
                ts,
                value,
            }));
        match reading {
            Reading::Syslog(batch) => {
                pending
                    .lines
                    .extend(batch.lines.into_iter().map(|l| NewLogLine {
                        device_id: device.id,
                        stream: "syslog".into(),
                        ts: l.ts,
                        line: l.text,
                    }))
            }
            Reading::Dmesg(batch) => {
                pending
                    .lines
                    .extend(batch.lines.into_iter().map(|l| NewLogLine {
                        device_id: device.id,
                        stream: "dmesg".into(),
                        ts: l.ts,
                        line: l.text,
                    }))
            }
            Reading::Firmware(f) => {
                pending.firmware.insert(device.id, f.version);
            }
            Reading::Lte(lte) => {
                pending
                    .radio
                    .insert(device.id, radio_state(device.id, &lte));
            }
            Reading::Status(status) => {
                if let (Some(boot_id), Some(tasks)) = (&status.boot_id, self.tasks.get())
                    && status.state == "online"
                {
                    tasks.take_boot(device.id, boot_id);
                }
            }
            _ => {}
        }
        self.bound_log_lines(&mut pending);
        let max_backlog = self.max_backlog();
        if pending.readings.len() > max_backlog {
            let excess = pending.readings.len() - max_backlog;
            self.drop_oldest(&mut pending, excess);
            drop(pending);
            self.counters
                .readings_dropped
                .fetch_add(excess as u64, Ordering::Relaxed);
            if self.log_due(String::new()) {
                tracing::warn!(
                    backlog = max_backlog,
                    dropped_total = self.counters.readings_dropped.load(Ordering::Relaxed),
                    "the store falls behind the fleet: oldest waiting readings dropped (logged once a minute)"
                );
            }
            self.batch_full.notify_one();
            return;
        }
        if pending.readings.len() + pending.lines.len() >= BATCH_ROWS {
            self.batch_full.notify_one();
        }
    }

    /// Writes until less than a full transaction waits (`all`: until
    /// nothing waits); a failed write is kept for the next call.
    async fn write_backlog(&self, all: bool) {
        loop {
            match self.flush().await {
                Ok(rows) if rows >= MAX_TRANSACTION_ROWS || (all && rows > 0) => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry batch not written; kept for the next try");
                    return;
                }
            }
        }
    }

    /// Writes what waits, oldest first, in one transaction of at most
    /// [`MAX_TRANSACTION_ROWS`] readings. On a write failure the batch is
    /// kept for the next flush (up to the backlog bound),
    /// so a short database outage loses nothing.
    pub async fn flush(&self) -> Result<usize, store::StoreError> {
        let (mut readings, lines, faults, firmware, radio, acks, from) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let take = pending.readings.len().min(MAX_TRANSACTION_ROWS);
            let from = pending.taken;
            pending.taken += take as u64;
            // Released by this transaction: those whose readings are all in
            // it or written before (everything else a message carries goes
            // whole into each transaction).
            let mut acks = Vec::new();
            while pending.acks.front().is_some_and(|a| a.to <= pending.taken) {
                acks.extend(pending.acks.pop_front());
            }
            (
                pending.readings.drain(..take).collect::<Vec<_>>(),
                Vec::from(std::mem::take(&mut pending.lines)),
                std::mem::take(&mut pending.faults),
                std::mem::take(&mut pending.firmware),
                std::mem::take(&mut pending.radio),
                acks,
                from,
            )
        };
        // In key order, the insert walks each device's end of the table once.
        readings.sort_unstable_by_key(|r| (r.device_id, r.ts));
        let rows = readings.len() + lines.len();
        let result = async {
            self.store.insert_readings(&readings).await?;
            self.store.insert_log_lines(&lines).await?;
            for (device_id, (count, error)) in &faults {
                self.store
                    .record_telemetry_faults(*device_id, *count as i64, error)
                    .await?;
            }
            let firmware: Vec<(i64, String)> =
                firmware.iter().map(|(d, v)| (*d, v.clone())).collect();
            self.store.set_devices_firmware(&firmware).await?;
            let radio: Vec<store::RadioState> = radio.values().cloned().collect();
            self.store.record_radio(&radio).await.map(|_| ())
        }
        .await;
        if let Err(e) = result {
            self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let room = self.max_backlog().saturating_sub(pending.readings.len());
            let lost = readings.len().saturating_sub(room);
            if lost > 0 {
                self.counters
                    .readings_dropped
                    .fetch_add(lost as u64, Ordering::Relaxed);
            }
            // Back in front of what came meanwhile; the oldest go if too many,
            // and with them the acknowledgements of this batch.
            for reading in readings.into_iter().rev().take(room) {
                pending.readings.push_front(reading);
            }
            pending.taken = from + lost as u64;
            if lost == 0 {
                for ack in acks.into_iter().rev() {
                    pending.acks.push_front(ack);
                }
            } else {
                self.counters
                    .acknowledgements_lost
                    .fetch_add(acks.len() as u64, Ordering::Relaxed);
                drop(acks);
                self.lose_acks_before(&mut pending);
            }
            let newer_lines = std::mem::replace(&mut pending.lines, lines.into());
            pending.lines.extend(newer_lines);
            self.bound_log_lines(&mut pending);
            for (device_id, (count, error)) in faults {
                let fault = pending.faults.entry(device_id).or_insert((0, error));
                fault.0 += count;
            }
            for (device_id, version) in firmware {
                pending.firmware.entry(device_id).or_insert(version);
            }
            for (device_id, state) in radio {
                pending.radio.entry(device_id).or_insert(state);
            }
            return Err(e);
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.written_to = pending.written_to.max(from + readings.len() as u64);
        }
        self.counters
            .acknowledgements_released
            .fetch_add(acks.len() as u64, Ordering::Relaxed);
        for waiting in acks {
            waiting.ack.written();
        }
        self.counters
            .readings_stored
            .fetch_add(readings.len() as u64, Ordering::Relaxed);
        self.counters
            .log_lines_stored
            .fetch_add(lines.len() as u64, Ordering::Relaxed);
        Ok(rows)
    }
}

/// A `hardware/lte` reading as the radio state it shows.
pub fn radio_state(device_id: i64, lte: &device_protocol::Lte) -> store::RadioState {
    store::RadioState {
        device_id,
        technology: Some(lte.technology.clone()),
        band: lte.band.clone(),
        carrier_aggregation: carrier_json(&lte.carrier_aggregation),
        operator: lte.operator.clone(),
        cell_id: lte.cell_id.and_then(|c| i64::try_from(c).ok()),
        smcc: lte.smcc.map(i64::from),
        smnc: lte.smnc.map(i64::from),
        source: "telemetry".into(),
        updated_at: lte.ts,
    }
}

/// Carrier components as stored: `[{band, pci, rsrp_dbm}]`.
pub fn carrier_json(components: &[device_protocol::CarrierComponent]) -> String {
    serde_json::to_string(components).unwrap_or_else(|_| "[]".into())
}

/// Where the ingest reads device messages.
#[derive(Debug, Clone)]
pub struct BrokerConnection {
    pub endpoint: crate::broker_client::BrokerEndpoint,
    /// Each a connection and persistent session of its own, read side by
    /// side: a broker hands one session's messages over in order, so what
    /// must not wait behind a backlog of readings (task answers, terminal
    /// output) is read on a session that has none.
    pub sessions: Vec<IngestSession>,
}

/// One client session of the ingest and what it subscribes.
#[derive(Debug, Clone)]
pub struct IngestSession {
    pub client_id: String,
    /// E.g. `$share/telemark/dwr/+/+/hardware/#`: with several platform
    /// instances on a cluster, each shared filter splits its messages
    /// between them.
    pub filters: Vec<String>,
}

/// Writes the ingest's batches beside whatever feeds it: every
/// [`FLUSH_EVERY`], or at once when a batch is full.
pub struct BatchWriter {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl BatchWriter {
    pub fn start(ingest: Arc<Ingest>) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = ingest.batch_full.notified() => false,
                    _ = stopped.changed() => true,
                };
                ingest.write_backlog(last).await;
                if last {
                    return;
                }
            }
        });
        BatchWriter { task, stop }
    }

    /// Writes what still waits and stops. Call it once the feed has stopped,
    /// so nothing arrives after the last write.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Messages handed over together, with the acknowledgement the broker
/// holds for them (none when nothing in it waits for one).
pub struct FeedBatch {
    pub messages: Vec<(Arc<str>, bytes::Bytes)>,
    pub ack: Option<Box<dyn Acknowledgement>>,
}

/// One subscription stream in, as the embedded broker hands it over
/// in-process: messages a batch at a time, oldest first.
pub trait MessageFeed: Send {
    /// The next messages; `None` once the feed has ended.
    fn next_batch(&mut self) -> impl std::future::Future<Output = Option<FeedBatch>> + Send;
}

/// Reads `feed` until it ends or `stop` fires, while a [`BatchWriter`]
/// writes. Writes what waits before it returns.
pub async fn run_feed(
    ingest: Arc<Ingest>,
    mut feed: impl MessageFeed,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let writer = BatchWriter::start(ingest.clone());
    loop {
        let batch = tokio::select! {
            batch = feed.next_batch() => batch,
            _ = stop.changed() => break,
        };
        let Some(batch) = batch else { break };
        for (topic, payload) in batch.messages {
            ingest.handle(&topic, &payload).await;
        }
        if let Some(ack) = batch.ack {
            ingest.acknowledge_when_written(ack);
        }
    }
    writer.finish().await;
}

/// The acknowledgement of one message the ingest read as an MQTT client:
/// sent (manual acknowledgement) once the message is written. Dropped
/// unwritten, it asks for a new connection, on which the broker sends the
/// unacknowledged message again [MQTT-4.4.0-1].
struct ClientAck {
    client: rumqttc::AsyncClient,
    publish: rumqttc::Publish,
    lost: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Acknowledgement for ClientAck {
    fn written(mut self: Box<Self>) {
        self.lost = None;
        if self.client.try_ack(&self.publish).is_err() {
            // The request channel is full: wait for room off this path.
            let (client, publish) = (self.client.clone(), self.publish.clone());
            tokio::spawn(async move {
                let _ = client.ack(&publish).await;
            });
        }
    }
}

impl Drop for ClientAck {
    fn drop(&mut self) {
        if let Some(lost) = &self.lost {
            lost.store(true, Ordering::Release);
        }
    }
}

/// Reads the broker as an MQTT client until `stop` fires, one connection
/// per session of `connection`, reconnecting after failures, while one
/// [`BatchWriter`] writes (one, so an acknowledgement is released only by
/// the transaction that wrote its readings). A QoS 1 message is
/// acknowledged to the broker only once it is written, so one acknowledged
/// is never lost with this process. Writes what waits before it returns.
pub async fn run(
    ingest: Arc<Ingest>,
    connection: BrokerConnection,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let writer = BatchWriter::start(ingest.clone());
    let mut readers = tokio::task::JoinSet::new();
    for session in connection.sessions {
        readers.spawn(read_session(
            ingest.clone(),
            connection.endpoint.clone(),
            session,
            stop.clone(),
        ));
    }
    while readers.join_next().await.is_some() {}
    writer.finish().await;
}

async fn read_session(
    ingest: Arc<Ingest>,
    endpoint: crate::broker_client::BrokerEndpoint,
    session: IngestSession,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::broker_client::{RETRY_FIRST, RETRY_MAX};
    use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
    let options = |attempt: usize| {
        let mut options = endpoint.options(attempt, &session.client_id);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(1000);
        options
    };
    let filters: Vec<SubscribeFilter> = session
        .filters
        .iter()
        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
        .collect();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut attempt, mut retry) = (0, RETRY_FIRST);
    'connection: loop {
        let (client, mut events) = AsyncClient::new(options(attempt), 1024);
        loop {
            let event = tokio::select! {
                event = events.poll() => event,
                _ = stop.changed() => {
                    let _ = client.disconnect().await;
                    break 'connection;
                }
            };
            if lost.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    client_id = %session.client_id,
                    "a message was not written; reconnecting so the broker sends it again"
                );
                let _ = client.disconnect().await;
                continue 'connection;
            }
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    retry = RETRY_FIRST;
                    if let Err(e) = client.subscribe_many(filters.clone()).await {
                        tracing::warn!(error = %e, "ingest cannot subscribe");
                    }
                    tracing::info!(
                        client_id = %session.client_id,
                        filters = ?session.filters,
                        broker = %events.mqtt_options.broker_address().0,
                        "ingest subscribed"
                    );
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    ingest.handle(&p.topic, &p.payload).await;
                    if p.qos != QoS::AtMostOnce {
                        ingest.acknowledge_when_written(Box::new(ClientAck {
                            client: client.clone(),
                            publish: p,
                            lost: Some(lost.clone()),
                        }));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        client_id = %session.client_id,
                        error = %e,
                        "ingest lost the broker; trying the next address"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.changed() => break 'connection,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    attempt += 1;
                    // The same client and its unacknowledged messages: the
                    // acknowledgements of what is written go out on the next
                    // connection (the session is persistent).
                    events.mqtt_options = options(attempt);
                }
            }
        }
    }
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How long the black box keeps what.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub raw_days: u32,
    pub hourly_days: u32,
}

/// One retention pass at `now`: roll every full hour up to an hour ago into
/// hourly aggregates (an hour of grace for late, buffered readings), then
/// delete raw readings and logs past `raw_days` and aggregates past
/// `hourly_days`. Returns the hours rolled up.
pub async fn retention_pass(
    store: &Store,
    retention: Retention,
    now: i64,
) -> Result<u32, store::StoreError> {
    let until = (now / HOUR_MS - 1) * HOUR_MS;
    let start = match store.rolled_up_until().await? {
        Some(mark) => mark,
        None => match store.oldest_reading().await? {
            Some(oldest) => (oldest / HOUR_MS) * HOUR_MS,
            None => until,
        },
    };
    let mut hours = 0;
    let mut hour = start;
    while hour < until {
        store.roll_up_hours(hour, hour + HOUR_MS).await?;
        hour += HOUR_MS;
        hours += 1;
    }
    store
        .prune_telemetry(now - i64::from(retention.raw_days) * DAY_MS)
        .await?;
    store
        .prune_hourly(now - i64::from(retention.hourly_days) * DAY_MS)
        .await?;
    Ok(hours)
}

/// Runs [`retention_pass`] every five minutes on whichever instance holds
/// the lease.
pub async fn run_retention(
    store: Store,
    retention: Retention,
    holder: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match store
            .take_lease("telemetry-retention", &holder, 600_000)
            .await
        {
            Ok(true) => match retention_pass(&store, retention, store::now_millis()).await {
                Ok(hours) if hours > 0 => tracing::info!(hours, "telemetry rolled up"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry retention failed; next pass retries")
                }
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "retention lease not taken"),
        }
    }
}
