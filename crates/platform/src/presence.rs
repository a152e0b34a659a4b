//! Online and offline, as the broker reports connections: written to the
//! registry in batches, retried while the database refuses, never dropped.
//!
//! The broker's callbacks only add to a per-device count of connections
//! (a map as large as the fleet, not a queue as long as the events), so a
//! reconnect storm or a database outage costs no memory beyond one entry
//! per device. A device is online while it has a connection: a reconnect
//! may be reported before the old connection's end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::Store;

/// The most changes written in one transaction.
const BATCH: usize = 5_000;
/// Waits between tries while the database refuses.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct PresenceCounters {
    /// Batches the store refused (kept and retried).
    pub write_failures: AtomicU64,
    /// Changes written.
    pub changes_written: AtomicU64,
}

#[derive(Debug, Default)]
pub struct PresenceRecorder {
    /// Device → connections opened minus closed since the writer last looked.
    deltas: Mutex<HashMap<i64, i64>>,
    /// Device → online or not as its last `status` message said, since the
    /// writer last looked: presence behind an external broker, whose
    /// connections the platform does not see.
    reports: Mutex<HashMap<i64, bool>>,
    wake: tokio::sync::Notify,
    pub counters: PresenceCounters,
}

impl PresenceRecorder {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn add(&self, device_id: i64, delta: i64) {
        *self
            .deltas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device_id)
            .or_default() += delta;
        self.wake.notify_one();
    }

    pub fn connected(&self, device_id: i64) {
        self.add(device_id, 1);
    }

    pub fn disconnected(&self, device_id: i64) {
        self.add(device_id, -1);
    }

    /// A device's `status` message (or its will), in the order the broker
    /// delivered them: the last one read says.
    pub fn reported(&self, device_id: i64, online: bool) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id, online);
        self.wake.notify_one();
    }

    /// Writes changes as `instance` until `stop`, then writes what is left
    /// once more. Returns only then.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        instance: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut connections: HashMap<i64, i64> = HashMap::new();
        // Device → online, waiting to be written (the latest state wins).
        let mut unwritten: HashMap<i64, bool> = HashMap::new();
        let mut retry = RETRY_FIRST;
        let mut stopping = false;
        loop {
            stopping |= *stop.borrow();
            let deltas =
                std::mem::take(&mut *self.deltas.lock().unwrap_or_else(|p| p.into_inner()));
            for (device_id, delta) in deltas {
                let count = connections.entry(device_id).or_default();
                let before = *count;
                *count = (*count + delta).max(0);
                match (before > 0, *count > 0) {
                    (false, true) => {
                        unwritten.insert(device_id, true);
                    }
                    (true, false) => {
                        unwritten.insert(device_id, false);
                    }
                    _ => {}
                }
                if *count == 0 {
                    connections.remove(&device_id);
                }
            }
            // After the connection counts: a report is what the device said
            // last, through the broker.
            unwritten.extend(std::mem::take(
                &mut *self.reports.lock().unwrap_or_else(|p| p.into_inner()),
            ));
            let mut failed = false;
            while !unwritten.is_empty() {
                let batch: Vec<(i64, bool)> = unwritten
                    .iter()
                    .take(BATCH)
                    .map(|(d, o)| (*d, *o))
                    .collect();
                match store.set_devices_online(&batch, &instance).await {
                    Ok(()) => {
                        for (device_id, _) in &batch {
                            unwritten.remove(device_id);
                        }
                        self.counters
                            .changes_written
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        retry = RETRY_FIRST;
                    }
                    Err(e) => {
                        self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, waiting = unwritten.len(), "presence not recorded; retrying");
                        failed = true;
                        break;
                    }
                }
            }
            if stopping {
                return;
            }
            // A stop signal whose sender is gone is a stop too.
            if failed {
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    changed = stop.changed() => stopping |= changed.is_err(),
                }
                retry = (retry * 2).min(RETRY_MAX);
            } else {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    changed = stop.changed() => stopping |= changed.is_err(),
                }
            }
        }
    }
}
