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
const MAX_TRANSACTION_ROWS: usize = 50_000;
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
}

#[derive(Default)]
struct Pending {
    /// Oldest first; a deque so a flush takes its batch off the front
    /// without moving a backlog of millions.
    readings: std::collections::VecDeque<NewReading>,
    lines: Vec<NewLogLine>,
    faults: HashMap<i64, (u64, String)>,
    firmware: HashMap<i64, String>,
}

/// Device → metric → (device time, value).
type LatestByDevice = HashMap<i64, HashMap<String, (i64, f64)>>;

#[derive(Debug, Clone, Copy)]
struct KnownDevice {
    id: i64,
}

pub struct Ingest {
    store: Store,
    /// MAC and model segment → device, or None for a topic no device owns.
    devices: Mutex<HashMap<(String, String), Option<KnownDevice>>>,
    pending: Mutex<Pending>,
    latest: Mutex<LatestByDevice>,
    fault_logged: Mutex<HashMap<String, Instant>>,
    live: broadcast::Sender<LiveReading>,
    alarms: Option<Arc<crate::alarms::AlarmEngine>>,
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
            counters: IngestCounters::default(),
        })
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

    async fn device(&self, model: &str, mac: &str) -> Option<KnownDevice> {
        let key = (mac.to_owned(), model.to_owned());
        if let Some(known) = self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return *known;
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
            .insert(key, found);
        found
    }

    /// Forgets what it knows of devices (after an import or a deletion).
    pub fn forget_devices(&self) {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn log_fault(&self, topic: &str, error: &str) {
        let mut logged = self.fault_logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // One key per device, whichever of its topics was bad.
        let key = split_topic(topic).map_or(topic.to_owned(), |(model, device, _)| {
            format!("{model}/{device}")
        });
        if logged
            .get(&key)
            .is_none_or(|at| now.duration_since(*at) >= FAULT_LOG_EVERY)
        {
            logged.insert(key, now);
            tracing::warn!(%topic, %error, "device message breaks the contract (logged once a minute per device)");
        }
    }

    /// Takes one message from the broker. Never fails: a bad message is
    /// counted against its device.
    pub async fn handle(&self, topic: &str, payload: &[u8]) {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let Some((model, mac, suffix)) = split_topic(topic) else {
            return;
        };
        let Some(device) = self.device(model, mac).await else {
            self.counters
                .unknown_devices
                .fetch_add(1, Ordering::Relaxed);
            self.log_fault(topic, "no device in the registry owns this topic");
            return;
        };
        let reading = match device_protocol::parse(suffix, payload) {
            Ok(r) => r,
            Err(e) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                let error = e.to_string();
                self.log_fault(topic, &error);
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let fault = pending.faults.entry(device.id).or_default();
                fault.0 += 1;
                fault.1 = error;
                return;
            }
        };
        let ts = reading.timestamp();
        let metrics = reading.metrics();
        if !metrics.is_empty() {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let entry = latest.entry(device.id).or_default();
            for (metric, value) in &metrics {
                entry.insert(metric.clone(), (ts, *value));
                // Nobody listening is fine.
                let _ = self.live.send(LiveReading {
                    device_id: device.id,
                    metric: metric.clone(),
                    ts,
                    value: *value,
                });
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
            _ => {}
        }
    }

    fn should_flush(&self) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.readings.len() + pending.lines.len() >= BATCH_ROWS
    }

    /// Writes what waits. On a write failure the batch is kept for the next
    /// flush, up to ten batches, so a short database outage loses nothing.
    pub async fn flush(&self) -> Result<usize, store::StoreError> {
        // At most MAX_TRANSACTION_ROWS readings a transaction, oldest first:
        // a backlog is written in steady steps, not one transaction that
        // holds the database for seconds.
        let mut batch = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let take = pending.readings.len().min(MAX_TRANSACTION_ROWS);
            Pending {
                readings: pending.readings.drain(..take).collect(),
                lines: std::mem::take(&mut pending.lines),
                faults: std::mem::take(&mut pending.faults),
                firmware: std::mem::take(&mut pending.firmware),
            }
        };
        let rows = batch.readings.len() + batch.lines.len();
        let result = async {
            self.store
                .insert_readings(batch.readings.make_contiguous())
                .await?;
            self.store.insert_log_lines(&batch.lines).await?;
            Ok::<_, store::StoreError>(())
        }
        .await;
        if let Err(e) = result {
            self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.readings.len() < BATCH_ROWS * 10 {
                let newer_readings = std::mem::replace(&mut pending.readings, batch.readings);
                pending.readings.extend(newer_readings);
                let newer_lines = std::mem::replace(&mut pending.lines, batch.lines);
                pending.lines.extend(newer_lines);
            }
            return Err(e);
        }
        self.counters
            .readings_stored
            .fetch_add(batch.readings.len() as u64, Ordering::Relaxed);
        self.counters
            .log_lines_stored
            .fetch_add(batch.lines.len() as u64, Ordering::Relaxed);
        for (device_id, (count, error)) in batch.faults {
            self.store
                .record_telemetry_faults(device_id, count as i64, &error)
                .await?;
        }
        let firmware: Vec<(i64, String)> = batch.firmware.into_iter().collect();
        self.store.set_devices_firmware(&firmware).await?;
        Ok(rows)
    }
}

/// Where the ingest reads device messages.
#[derive(Debug, Clone)]
pub struct BrokerConnection {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// `dwr/#` on the embedded broker; `$share/telemark/dwr/#` on a cluster
    /// with several platform instances.
    pub filter: String,
    pub client_id: String,
}

/// Reads the broker until `stop` fires, reconnecting after failures, and
/// flushes batches to the store. Flushes what waits before it returns.
pub async fn run(
    ingest: Arc<Ingest>,
    connection: BrokerConnection,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(&connection.client_id, &connection.host, connection.port);
    options
        .set_credentials(&connection.username, &connection.password)
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000);
    let (client, mut events) = AsyncClient::new(options, 1024);
    // Writing runs beside reading: the loop below only parses and queues,
    // and wakes the writer early when a batch is full.
    let batch_full = Arc::new(tokio::sync::Notify::new());
    let flusher = {
        let ingest = ingest.clone();
        let mut stop = stop.clone();
        let batch_full = batch_full.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = batch_full.notified() => {}
                    _ = stop.changed() => break,
                }
                // Write until what waits is less than a batch.
                loop {
                    match ingest.flush().await {
                        Ok(rows) if rows >= MAX_TRANSACTION_ROWS => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "telemetry batch not written; kept for the next try");
                            break;
                        }
                    }
                }
            }
        })
    };
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = stop.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.subscribe(&connection.filter, QoS::AtLeastOnce).await {
                    tracing::warn!(error = %e, "ingest cannot subscribe");
                }
                tracing::info!(filter = %connection.filter, "ingest subscribed");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                ingest.handle(&p.topic, &p.payload).await;
                if ingest.should_flush() {
                    batch_full.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ingest lost the broker; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let _ = client.disconnect().await;
    flusher.abort();
    loop {
        match ingest.flush().await {
            Ok(rows) if rows >= MAX_TRANSACTION_ROWS => {}
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "last telemetry batch not written");
                break;
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
