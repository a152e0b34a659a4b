//! The broker's durable state: persistent sessions with their
//! subscriptions, wills and expiry, their queued and in-flight QoS 1 and 2
//! deliveries (with the QoS 2 state both ways), and retained messages, in a
//! write-ahead journal (`journal` crate) under `data_dir`.
//!
//! Connections hand records to one writer thread; it appends them, syncs by
//! the fsync policy, and only then keeps the receipts a client's
//! acknowledgement waits on (`receipt`), so a PUBACK or PUBREC goes out
//! once the message is in the journal. The writer also applies each record
//! to its own picture of the state (`model`), which it writes out whole as a
//! new journal when the old one has grown: compaction needs nothing from
//! the broker's locks.

mod model;
mod record;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::receipt::Receipt;
pub(crate) use model::LoggedState;
pub(crate) use record::{LoggedDelivery, Now, Record, SessionKey, unix_ms};

/// When the journal is synced to the disk, and so what a power cut can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// Sync after each write of the records that came in meanwhile (group
    /// commit); acknowledgements wait for it. A power cut loses nothing
    /// acknowledged.
    #[default]
    Always,
    /// Sync at most every `fsync_interval_ms`, collecting records in
    /// between; acknowledgements wait for the sync. A power cut loses
    /// nothing acknowledged; latency grows by up to the interval, syncs
    /// (and disk wear) shrink under load.
    Batch,
    /// Never sync: acknowledgements wait only for the write to the
    /// operating system. `kill -9` loses nothing; a power cut loses what
    /// the kernel had not yet written back (up to ~30 s on Linux defaults).
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("could not start the journal's writer thread: {0}")]
    Thread(std::io::Error),
    #[error("could not prepare the queue spill directory {path}: {source}")]
    Spill {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Figures of the journal for `$SYS` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct JournalStats {
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub compactions: AtomicU64,
    pub failures: AtomicU64,
}

struct Pending {
    records: Vec<(Record, Option<Receipt>)>,
    stopping: bool,
}

/// The handle connections write through. Once the writer holds the last
/// one (the broker is gone) it writes what it was given and stops.
pub(crate) struct Persistence {
    pending: Mutex<Pending>,
    wake: Condvar,
    next_epoch: AtomicU64,
    pub stats: JournalStats,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence").finish_non_exhaustive()
    }
}

/// How the writer runs, from the broker's settings.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    /// Compact once the file is past this and twice its last compacted size.
    pub compact_bytes: u64,
    /// Write the synced length to `journal.synced` after each sync, for
    /// the power-cut test to cut the file there.
    pub record_synced_length: bool,
}

impl Persistence {
    /// Opens the journal in `settings.dir`, reads it back (reporting any
    /// damaged tail, which is dropped), writes the recovered state as a new
    /// journal and starts the writer. Returns the state to rebuild the
    /// broker from.
    pub(crate) fn open(
        settings: WriterSettings,
    ) -> Result<(Arc<Persistence>, LoggedState), PersistenceError> {
        let (mut journal, contents) = journal::Journal::open(&settings.dir)?;
        let Replayed {
            mut state,
            records,
            damage,
            undecodable,
        } = replay(&contents);
        let path = journal.path();
        if let Some(damage) = damage {
            tracing::warn!(journal = %path.display(), offset = damage.offset, dropped_bytes = damage.dropped, reason = damage.reason, records, "journal recovered up to a damaged tail (a crash or power cut during a write); the tail is dropped");
        }
        if let Some((offset, error)) = undecodable {
            tracing::error!(journal = %path.display(), offset, %error, records, "journal record with a good checksum could not be read (written by another version?); recovered up to it, the rest is dropped");
        }
        state.forget_early_ends();
        let queued: usize = state.sessions.values().map(|s| s.deliveries.len()).sum();
        tracing::info!(journal = %path.display(), records, bytes = contents.len(), sessions = state.sessions.len(), queued, retained = state.retained.len(), "journal recovered");
        // The recovered state goes out as a new journal, and the broker is
        // rebuilt from the same records as they are written.
        let mut copy = LoggedState::with_messages();
        let mut replacement = journal.start_replacement()?;
        let now = Now::get();
        let mut payload = Vec::new();
        let relocation = state.write_snapshot(
            &mut |at| {
                journal::frame_at(&contents, at as usize)
                    .and_then(|payload| route_message(payload, now))
                    .ok_or_else(|| unreadable_route(&path, at))
            },
            &mut |record| {
                payload.clear();
                record.encode(&mut payload);
                let at = replacement.append(&payload)?;
                copy.apply(record, at);
                Ok(at)
            },
        )?;
        drop(contents);
        let last_compacted = replacement.len();
        journal.finish_replacement(replacement)?;
        state.relocate(relocation);
        if settings.record_synced_length {
            mark_synced(&settings.dir, journal.len());
        }
        let persistence = Arc::new(Persistence {
            pending: Mutex::new(Pending {
                records: Vec::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
            next_epoch: AtomicU64::new(state.next_epoch.max(1)),
            stats: JournalStats::default(),
            writer: Mutex::new(None),
        });
        persistence
            .stats
            .bytes
            .store(journal.len(), Ordering::Relaxed);
        let writer = Writer {
            journal,
            model: state,
            settings,
            last_compacted,
            broken: false,
            persistence: Arc::downgrade(&persistence),
        };
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run())
            .map_err(PersistenceError::Thread)?;
        *lock(&persistence.writer) = Some(handle);
        Ok((persistence, copy))
    }

    /// A new incarnation number for a persistent session.
    pub(crate) fn new_epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands a record to the writer.
    pub(crate) fn write(&self, record: Record) {
        self.write_kept(record, None);
    }

    /// Hands a record to the writer; `receipt` is kept once it is durable,
    /// or dropped (lost) if it cannot be written.
    pub(crate) fn write_kept(&self, record: Record, receipt: Option<Receipt>) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.records.is_empty();
        pending.records.push((record, receipt));
        drop(pending);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Writes what it was given and stops the writer; waits for it.
    pub(crate) fn stop(&self) {
        lock(&self.pending).stopping = true;
        self.wake.notify_one();
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
    }
}

/// Writes `len` to `journal.synced` in place, fixed width: a kill between
/// two writes leaves the old figure or the new, never an empty file.
fn mark_synced(dir: &std::path::Path, len: u64) {
    use std::os::unix::fs::FileExt;
    let marker = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("journal.synced"));
    if let Ok(marker) = marker {
        let _ = marker.write_all_at(format!("{len:020}\n").as_bytes(), 0);
    }
}

/// What reading a journal's contents gave.
pub(crate) struct Replayed {
    pub state: LoggedState,
    pub records: u64,
    pub damage: Option<journal::Damage>,
    /// A record whose checksum is good but whose contents are not a record
    /// this version reads: where it starts and why.
    pub undecodable: Option<(usize, record::RecordError)>,
}

/// Applies a journal's records in order, up to the first damaged or
/// unreadable one.
pub(crate) fn replay(contents: &[u8]) -> Replayed {
    let now = Now::get();
    let mut state = LoggedState::default();
    let mut scan = journal::scan(contents);
    let mut records = 0u64;
    let mut undecodable = None;
    loop {
        let offset = scan.good_len();
        let Some(payload) = scan.next() else { break };
        match Record::decode(payload, now) {
            Ok(record) => {
                state.apply(record, offset as u64);
                records += 1;
            }
            Err(e) => {
                undecodable = Some((offset, e));
                break;
            }
        }
    }
    Replayed {
        state,
        records,
        damage: scan.damage().cloned(),
        undecodable,
    }
}

/// The message of a route record's payload.
fn route_message(payload: &[u8], now: Now) -> Option<Arc<crate::message::Message>> {
    match Record::decode(payload, now) {
        Ok(Record::Route { message, .. }) => Some(message),
        _ => None,
    }
}

fn unreadable_route(path: &std::path::Path, at: u64) -> journal::JournalError {
    journal::JournalError::BadRecord {
        path: path.to_owned(),
        offset: at,
        reason: "no route record there",
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Writer {
    journal: journal::Journal,
    model: LoggedState,
    settings: WriterSettings,
    last_compacted: u64,
    /// A write failed: the file's tail may be torn, so the next write
    /// starts by writing the model out whole.
    broken: bool,
    persistence: std::sync::Weak<Persistence>,
}

impl Writer {
    fn run(mut self) {
        let mut framed = Vec::new();
        let mut payload = Vec::new();
        let mut last_sync = Instant::now();
        loop {
            let Some(persistence) = self.persistence.upgrade() else {
                return;
            };
            let (mut batch, stopping) = {
                let mut pending = lock(&persistence.pending);
                while pending.records.is_empty() && !pending.stopping {
                    // Wakes now and then to notice a dropped broker.
                    pending = persistence
                        .wake
                        .wait_timeout(pending, Duration::from_secs(1))
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0);
                    if std::sync::Arc::strong_count(&persistence) == 1 {
                        pending.stopping = true;
                    }
                }
                (std::mem::take(&mut pending.records), pending.stopping)
            };
            if self.settings.fsync == FsyncPolicy::Batch && !stopping {
                let due = last_sync + self.settings.fsync_interval;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                    batch.append(&mut lock(&persistence.pending).records);
                }
            }
            if !batch.is_empty() {
                framed.clear();
                // Where each record starts within this write.
                let mut starts = Vec::with_capacity(batch.len());
                for (record, _) in &batch {
                    starts.push(framed.len() as u64);
                    payload.clear();
                    record.encode(&mut payload);
                    journal::frame(&mut framed, &payload);
                }
                let written = self.write(&framed);
                last_sync = Instant::now();
                let stats = &persistence.stats;
                if written {
                    stats
                        .records
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if self.settings.fsync != FsyncPolicy::Never {
                        stats.syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    let base = self.journal.len() - framed.len() as u64;
                    for ((record, receipt), start) in batch.into_iter().zip(starts) {
                        self.model.apply(record, base + start);
                        if let Some(receipt) = receipt {
                            receipt.kept();
                        }
                    }
                    self.compact_if_due(stats);
                } else {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    // Receipts dropped unkept: their publishers are told
                    // to send again. The records are not in the model.
                    drop(batch);
                }
                stats.bytes.store(self.journal.len(), Ordering::Relaxed);
            }
            if stopping {
                return;
            }
        }
    }

    /// Appends and syncs by the policy; false if the journal could not be
    /// written (logged).
    fn write(&mut self, framed: &[u8]) -> bool {
        if self.broken {
            if let Err(e) = self.rewrite() {
                tracing::error!(error = %e, "journal still cannot be written; acknowledgements are withheld");
                return false;
            }
            self.broken = false;
            tracing::warn!("journal written again after a failure");
        }
        let result = self.journal.append(framed).and_then(|()| {
            if self.settings.fsync == FsyncPolicy::Never {
                Ok(())
            } else {
                self.journal.sync()
            }
        });
        match result {
            Ok(()) => {
                self.mark_synced();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "journal write failed; the messages it carried are not acknowledged");
                self.broken = true;
                false
            }
        }
    }

    fn mark_synced(&self) {
        if self.settings.record_synced_length {
            mark_synced(&self.settings.dir, self.journal.len());
        }
    }

    fn compact_if_due(&mut self, stats: &JournalStats) {
        let len = self.journal.len();
        if len < self.settings.compact_bytes || len < self.last_compacted.saturating_mul(2) {
            return;
        }
        match self.rewrite() {
            Ok(()) => {
                tracing::debug!(from = len, to = self.last_compacted, "journal compacted");
                stats.compactions.fetch_add(1, Ordering::Relaxed);
                self.mark_synced();
            }
            Err(e) => {
                tracing::error!(error = %e, "journal compaction failed; the journal goes on growing");
                self.broken = true;
            }
        }
    }

    /// Writes the live state as a new journal, record by record, copying
    /// each queued message from the old file, and puts it in place.
    fn rewrite(&mut self) -> Result<(), journal::JournalError> {
        let mut replacement = self.journal.start_replacement()?;
        let journal = &self.journal;
        let path = journal.path();
        let now = Now::get();
        let mut payload = Vec::new();
        let relocation = self.model.write_snapshot(
            &mut |at| {
                let record = journal.read_at(at)?;
                route_message(&record, now).ok_or_else(|| unreadable_route(&path, at))
            },
            &mut |record| {
                payload.clear();
                record.encode(&mut payload);
                replacement.append(&payload)
            },
        )?;
        self.last_compacted = replacement.len();
        self.journal.finish_replacement(replacement)?;
        self.model.relocate(relocation);
        Ok(())
    }
}
