//! Queued deliveries past the broker's memory bound for queues
//! (`max_queued_bytes_total`), kept on disk instead of dropped when the
//! broker has a data directory. A queue that must not grow in memory writes
//! what comes next, in order, to a file of its own under `DATA/spill`, and
//! reads it back as it drains; the file goes when the queue has read it all
//! or is dropped. Spill files are scratch: what a persistent session is
//! owed is in the journal, from which a restart rebuilds its queue (and
//! spills again past the bound), so a start clears the directory.
//!
//! A record is the journal's own route record for one delivery, framed
//! like the journal's (length, CRC-32), so the one strict reader serves both.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::persistence::{LoggedDelivery, Now, Record, SessionKey};
use crate::session::{Delivery, delivery_size};

/// Bytes read back at a time: what a drained queue holds in memory again.
const REFILL_BYTES: usize = 64 * 1024;

/// The spill directory of a broker and its figures.
#[derive(Debug)]
pub struct SpillStore {
    dir: PathBuf,
    /// Bytes on disk past which queues stop spilling.
    limit: u64,
    next_file: AtomicU64,
    /// Deliveries on disk now.
    pub messages: AtomicU64,
    /// Topic and payload bytes on disk now.
    pub bytes: AtomicU64,
    /// Deliveries ever written to disk.
    pub written: AtomicU64,
    /// Spill files that could not be written or read (logged).
    pub failures: AtomicU64,
}

impl SpillStore {
    /// Uses `dir`, removing what an earlier run left in it; keeps at most
    /// `limit` topic and payload bytes there.
    pub fn open(dir: PathBuf, limit: u64) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&dir)?;
        Ok(SpillStore {
            dir,
            limit,
            next_file: AtomicU64::new(1),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Whether a queue may put more on disk.
    pub fn has_room(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) < self.limit
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(dir = %self.dir.display(), error = %e, "queue spill file could not be {what}");
    }
}

/// The deliveries of one queue that are on disk, oldest first, all after
/// the ones it holds in memory.
#[derive(Debug)]
pub struct SpilledTail {
    store: Arc<SpillStore>,
    path: PathBuf,
    out: BufWriter<File>,
    /// Offset of the next record to read back.
    read_at: u64,
    /// Offset where the next record goes.
    end: u64,
    count: usize,
    /// Topic and payload bytes on disk.
    bytes: usize,
}

impl SpilledTail {
    /// A new, empty spill file; None (logged, counted) when it cannot be made.
    pub fn create(store: &Arc<SpillStore>) -> Option<SpilledTail> {
        let n = store.next_file.fetch_add(1, Ordering::Relaxed);
        let path = store.dir.join(format!("queue-{n}.spill"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path);
        let mut out = match file {
            Ok(file) => BufWriter::with_capacity(REFILL_BYTES, file),
            Err(e) => {
                store.failed("created", &e);
                return None;
            }
        };
        if let Err(e) = out.write_all(journal::MAGIC) {
            store.failed("written", &e);
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let start = journal::MAGIC.len() as u64;
        Some(SpilledTail {
            store: store.clone(),
            path,
            out,
            read_at: start,
            end: start,
            count: 0,
            bytes: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Topic and payload bytes on disk.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Writes `delivery` after the others; gives it back if it cannot.
    /// Only a delivery without a receipt comes here: a receipt is a
    /// promise in memory, not a thing a file can hold.
    pub fn push(&mut self, delivery: Delivery) -> Result<(), Delivery> {
        let mut payload = Vec::new();
        Record::Route {
            message: delivery.message.clone(),
            deliveries: vec![LoggedDelivery {
                session: SessionKey {
                    client: Arc::from(""),
                    epoch: 0,
                },
                seq: delivery.seq,
                qos: delivery.qos,
                retain: delivery.retain,
                subscription_ids: delivery.subscription_ids.clone(),
            }],
            received: None,
        }
        .encode(&mut payload);
        let mut framed = Vec::with_capacity(payload.len() + 8);
        journal::frame(&mut framed, &payload);
        if let Err(e) = self.out.write_all(&framed) {
            self.store.failed("written", &e);
            return Err(delivery);
        }
        let size = delivery_size(&delivery);
        self.end += framed.len() as u64;
        self.count += 1;
        self.bytes += size;
        self.store.messages.fetch_add(1, Ordering::Relaxed);
        self.store.bytes.fetch_add(size as u64, Ordering::Relaxed);
        self.store.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reads back the oldest deliveries, about `REFILL_BYTES` of them (at
    /// least one), into `into`; all of them with `all`. Returns how many it
    /// read and their topic and payload bytes. A file that cannot be read back is given up (logged, counted):
    /// what it held for a persistent session is still in the journal, and
    /// comes back with the next start.
    pub fn refill(&mut self, into: &mut VecDeque<Delivery>, all: bool) -> (usize, usize) {
        if let Err(e) = self.out.flush() {
            self.give_up("written", &e);
            return (0, 0);
        }
        let now = Now::get();
        let mut taken = 0;
        let mut bytes = 0;
        while self.count > 0 && (all || bytes < REFILL_BYTES) {
            let payload = match journal::read_frame_at(self.out.get_ref(), self.read_at, self.end) {
                Ok(payload) => payload,
                Err(e) => {
                    self.give_up("read", &e);
                    return (taken, bytes);
                }
            };
            let delivery = match Record::decode(&payload, now) {
                Ok(Record::Route {
                    message,
                    deliveries,
                    ..
                }) => deliveries.into_iter().next().map(|d| Delivery {
                    message,
                    qos: d.qos,
                    retain: d.retain,
                    subscription_ids: d.subscription_ids,
                    receipt: None,
                    seq: d.seq,
                }),
                Ok(_) => None,
                Err(e) => {
                    self.give_up("read", &e);
                    return (taken, bytes);
                }
            };
            let Some(delivery) = delivery else {
                self.give_up("read", &"a record that is not a delivery");
                return (taken, bytes);
            };
            let size = delivery_size(&delivery);
            self.read_at += (payload.len() + 8) as u64;
            self.count -= 1;
            self.bytes -= size;
            bytes += size;
            self.store.messages.fetch_sub(1, Ordering::Relaxed);
            self.store.bytes.fetch_sub(size as u64, Ordering::Relaxed);
            into.push_back(delivery);
            taken += 1;
        }
        (taken, bytes)
    }

    fn give_up(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.store.failed(what, e);
        tracing::error!(file = %self.path.display(), deliveries = self.count, "queued deliveries on disk given up; a persistent session's come back from the journal at the next start");
        self.forget();
    }

    fn forget(&mut self) {
        self.store
            .messages
            .fetch_sub(self.count as u64, Ordering::Relaxed);
        self.store
            .bytes
            .fetch_sub(self.bytes as u64, Ordering::Relaxed);
        self.count = 0;
        self.bytes = 0;
    }
}

impl Drop for SpilledTail {
    fn drop(&mut self) {
        self.forget();
        let _ = std::fs::remove_file(&self.path);
    }
}
