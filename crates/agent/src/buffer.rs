//! Store and forward: readings that could not be sent wait in a bounded
//! queue kept in a file, so neither a broker outage nor an agent restart
//! loses them. A full queue drops its oldest reading and counts the drop.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One message waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffered {
    pub topic: String,
    /// The JSON payload as text.
    pub payload: String,
    pub retain: bool,
}

pub struct DiskBuffer {
    path: PathBuf,
    queue: VecDeque<Buffered>,
    capacity: usize,
    file: File,
    dropped: u64,
}

impl DiskBuffer {
    /// Opens the buffer in `dir`, with what a previous run left in it.
    pub fn open(dir: &Path, capacity: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("buffer.jsonl");
        let mut queue = VecDeque::new();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines() {
                // A line cut short by a crash is the only kind that fails.
                if let Ok(item) = serde_json::from_str::<Buffered>(&line?) {
                    queue.push_back(item);
                }
            }
        }
        let mut buffer = DiskBuffer {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
            queue,
            capacity: capacity.max(1),
            dropped: 0,
        };
        while buffer.queue.len() > buffer.capacity {
            buffer.queue.pop_front();
            buffer.dropped += 1;
        }
        buffer.rewrite()?;
        Ok(buffer)
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

    pub fn push(&mut self, item: Buffered) -> std::io::Result<()> {
        let line = serde_json::to_string(&item).map_err(std::io::Error::other)?;
        self.queue.push_back(item);
        if self.queue.len() > self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
            // The file still has the dropped line: write the queue anew
            // once in a while, not on every push.
            if self.dropped.is_multiple_of(1024) {
                return self.rewrite();
            }
        }
        writeln!(self.file, "{line}")?;
        self.file.flush()
    }

    /// Everything waiting, oldest first; the buffer is empty afterwards.
    pub fn drain(&mut self) -> std::io::Result<Vec<Buffered>> {
        let items: Vec<Buffered> = self.queue.drain(..).collect();
        self.rewrite()?;
        Ok(items)
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            for item in &self.queue {
                let line = serde_json::to_string(item).map_err(std::io::Error::other)?;
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
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

    #[test]
    fn survives_a_restart_in_order_and_drops_the_oldest_when_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut buffer = DiskBuffer::open(dir.path(), 3).expect("open");
            for n in 0..5 {
                buffer.push(item(n)).expect("push");
            }
            assert_eq!(buffer.dropped(), 2);
        }
        let mut buffer = DiskBuffer::open(dir.path(), 3).expect("reopen");
        let items = buffer.drain().expect("drain");
        assert_eq!(items, vec![item(2), item(3), item(4)]);
        assert!(buffer.is_empty());
        let buffer = DiskBuffer::open(dir.path(), 3).expect("reopen");
        assert!(buffer.is_empty(), "drained means gone from disk too");
    }
}
