//! Store and forward: readings that could not be sent wait in a bounded
//! queue kept in a file, so neither a broker outage nor an agent restart
//! loses them. A reading leaves the queue (and the file) only when the
//! broker acknowledged it; handed to the MQTT client is not enough. A full
//! queue drops its oldest reading and counts the drop. A disk that refuses
//! writes (full, read-only) costs the file, not the agent: the queue goes
//! on in memory, the agent says so, and the file is written again once the
//! disk takes it.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One message waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffered {
    pub topic: String,
    /// The JSON payload as text.
    pub payload: String,
    pub retain: bool,
}

/// Acknowledged readings are taken out of the file at most this often
/// (or at once when the queue empties): a rewrite per acknowledgement
/// would wear a router's flash.
const REWRITE_EVERY: Duration = Duration::from_secs(5);

pub struct DiskBuffer {
    path: PathBuf,
    /// Oldest first, each with its sequence number.
    queue: VecDeque<(u64, Buffered)>,
    next_seq: u64,
    /// Readings before this sequence number were handed to the client on
    /// the current connection.
    sent_before: u64,
    /// Acknowledged, but behind an older one that is not yet.
    acknowledged: BTreeSet<u64>,
    capacity: usize,
    /// None while the disk refuses writes.
    file: Option<File>,
    /// Lines in the file that are no longer in the queue.
    stale_lines: usize,
    last_rewrite: Instant,
    dropped: u64,
    disk_error: Option<String>,
}

impl DiskBuffer {
    /// Opens the buffer in `dir`, with what a previous run left in it. A
    /// directory that cannot be written leaves a buffer in memory.
    pub fn open(dir: &Path, capacity: usize) -> Self {
        let path = dir.join("buffer.jsonl");
        let mut buffer = DiskBuffer {
            path,
            queue: VecDeque::new(),
            next_seq: 0,
            sent_before: 0,
            acknowledged: BTreeSet::new(),
            capacity: capacity.max(1),
            file: None,
            stale_lines: 0,
            last_rewrite: Instant::now(),
            dropped: 0,
            disk_error: None,
        };
        if let Ok(file) = File::open(&buffer.path) {
            for line in BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                // A line cut short by a crash is the only kind that fails.
                if let Ok(item) = serde_json::from_str::<Buffered>(&line) {
                    buffer.queue.push_back((buffer.next_seq, item));
                    buffer.next_seq += 1;
                }
            }
        }
        while buffer.queue.len() > buffer.capacity {
            buffer.queue.pop_front();
            buffer.dropped += 1;
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            buffer.disk_failed(&e);
        }
        buffer.rewrite();
        buffer
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Readings dropped because the buffer was full, since it was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Why the file is not written, while it is not.
    pub fn disk_error(&self) -> Option<&str> {
        self.disk_error.as_deref()
    }

    fn disk_failed(&mut self, e: &std::io::Error) {
        if self.disk_error.is_none() {
            tracing::warn!(path = %self.path.display(), error = %e, "the buffer file cannot be written; readings wait in memory until the disk takes them again");
        }
        self.disk_error = Some(e.to_string());
        self.file = None;
    }

    pub fn push(&mut self, item: Buffered) {
        let line = serde_json::to_string(&item).unwrap_or_default();
        self.queue.push_back((self.next_seq, item));
        self.next_seq += 1;
        if self.queue.len() > self.capacity {
            if let Some((seq, _)) = self.queue.pop_front() {
                self.acknowledged.remove(&seq);
            }
            self.dropped += 1;
            self.stale_lines += 1;
        }
        let written = match &mut self.file {
            Some(file) => writeln!(file, "{line}").and_then(|()| file.flush()),
            None => Err(std::io::Error::other("no file")),
        };
        if let Err(e) = written {
            if self.file.is_some() {
                self.disk_failed(&e);
            } else if self.last_rewrite.elapsed() >= REWRITE_EVERY {
                // Try the disk again now and then.
                self.rewrite();
            }
        } else if self.stale_lines > self.capacity {
            self.rewrite();
        }
    }

    /// Up to `max` readings not yet handed to the client on this
    /// connection, oldest first, with their sequence numbers.
    pub fn next_unsent(&mut self, max: usize) -> Vec<(u64, Buffered)> {
        let start = self
            .queue
            .partition_point(|(seq, _)| *seq < self.sent_before);
        let out: Vec<(u64, Buffered)> = self
            .queue
            .range(start..)
            .filter(|(seq, _)| !self.acknowledged.contains(seq))
            .take(max)
            .cloned()
            .collect();
        if let Some((last, _)) = out.last() {
            self.sent_before = last + 1;
        }
        out
    }

    /// Readings handed to the client and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        let sent = self
            .queue
            .partition_point(|(seq, _)| *seq < self.sent_before);
        sent - self.acknowledged.range(..self.sent_before).count()
    }

    /// The connection is gone: what was not acknowledged is sent again on
    /// the next one.
    pub fn rewind(&mut self) {
        self.sent_before = self.queue.front().map_or(self.next_seq, |(seq, _)| *seq);
    }

    /// The broker acknowledged reading `seq`: it leaves the queue, and the
    /// file soon after.
    pub fn acknowledge(&mut self, seq: u64) {
        if self.queue.binary_search_by_key(&seq, |(s, _)| *s).is_err() {
            return;
        }
        self.acknowledged.insert(seq);
        while let Some((front, _)) = self.queue.front() {
            if !self.acknowledged.remove(front) {
                break;
            }
            self.queue.pop_front();
            self.stale_lines += 1;
        }
        if self.queue.is_empty() || self.last_rewrite.elapsed() >= REWRITE_EVERY {
            self.rewrite();
        }
    }

    /// Writes the queue anew (what is acknowledged or dropped goes), and
    /// reopens the file for appending.
    fn rewrite(&mut self) {
        self.last_rewrite = Instant::now();
        let tmp = self.path.with_extension("jsonl.tmp");
        let written = (|| -> std::io::Result<File> {
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            for (seq, item) in &self.queue {
                if self.acknowledged.contains(seq) {
                    continue;
                }
                let line = serde_json::to_string(item).map_err(std::io::Error::other)?;
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            out.get_ref().sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            OpenOptions::new().append(true).open(&self.path)
        })();
        match written {
            Ok(file) => {
                if self.disk_error.take().is_some() {
                    tracing::info!(path = %self.path.display(), "the buffer file is written again");
                }
                self.file = Some(file);
                self.stale_lines = 0;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.disk_failed(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Buffered {
        Buffered {
            topic: format!("dwr/m/d/hardware/cpu/{n}"),
            payload: format!("{{\"n\":{n}}}"),
            retain: false,
        }
    }

    /// What a restarted agent with `capacity` finds.
    fn on_disk(dir: &Path, capacity: usize) -> Vec<Buffered> {
        let mut reopened = DiskBuffer::open(dir, capacity);
        reopened
            .next_unsent(100)
            .into_iter()
            .map(|(_, i)| i)
            .collect()
    }

    #[test]
    fn survives_a_restart_in_order_and_drops_the_oldest_when_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut buffer = DiskBuffer::open(dir.path(), 3);
            for n in 0..5 {
                buffer.push(item(n));
            }
            assert_eq!(buffer.dropped(), 2);
        }
        assert_eq!(on_disk(dir.path(), 3), vec![item(2), item(3), item(4)]);
    }

    #[test]
    fn a_reading_leaves_only_when_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut buffer = DiskBuffer::open(dir.path(), 10);
        for n in 0..4 {
            buffer.push(item(n));
        }
        let sent = buffer.next_unsent(3);
        assert_eq!(sent.len(), 3);
        assert_eq!(buffer.in_flight(), 3);
        assert!(buffer.next_unsent(10).len() == 1, "only the fourth is new");
        // Sent is not gone: a crash now keeps all four on disk.
        assert_eq!(on_disk(dir.path(), 10).len(), 4);
        // Acknowledged out of order: the queue shrinks by its acked front.
        buffer.acknowledge(sent[1].0);
        assert_eq!(buffer.len(), 4);
        buffer.acknowledge(sent[0].0);
        assert_eq!(buffer.len(), 2);
        // The link drops: what is not acknowledged goes again.
        buffer.rewind();
        let again: Vec<Buffered> = buffer.next_unsent(10).into_iter().map(|(_, i)| i).collect();
        assert_eq!(again, vec![item(2), item(3)]);
        for (seq, _) in buffer.queue.clone() {
            buffer.acknowledge(seq);
        }
        assert!(buffer.is_empty());
        assert!(
            on_disk(dir.path(), 10).is_empty(),
            "acknowledged means gone from disk too"
        );
    }

    #[test]
    fn a_disk_that_refuses_writes_costs_the_file_not_the_readings() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A path under a regular file: no directory can be made there.
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, "x").expect("file");
        let mut buffer = DiskBuffer::open(&blocked.join("buffer"), 10);
        assert!(buffer.disk_error().is_some());
        for n in 0..3 {
            buffer.push(item(n));
        }
        assert_eq!(buffer.len(), 3, "kept in memory");
        let sent = buffer.next_unsent(10);
        for (seq, _) in sent {
            buffer.acknowledge(seq);
        }
        assert!(buffer.is_empty());
    }
}
