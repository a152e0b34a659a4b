//! An append-only file of records, each framed with its length and a CRC-32C
//! so a reader can tell where a crash or a power cut left the file: the
//! records before the first damaged one are good, the rest is reported and
//! dropped, never guessed at.
//!
//! File: the 8-byte [`MAGIC`], then frames of `length: u32 LE`,
//! `crc32: u32 LE` (of the payload), `payload`. It knows nothing of what
//! the payloads mean; the broker's persistence gives them their meaning.
//!
//! Compaction writes the live state as a new file beside the old, syncs it
//! and renames it over the old one ([`Journal::replace`]), so a crash during
//! compaction leaves one whole file or the other.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The first bytes of a journal file: the format and its version.
pub const MAGIC: &[u8; 8] = b"TMKJRNL1";

/// The largest payload a frame may carry: an MQTT packet's largest size and
/// room for what a record says about it. A length beyond it is damage.
pub const MAX_RECORD: usize = 268_435_460 + 64 * 1024;

const FRAME_HEADER: usize = 8;
const FILE_NAME: &str = "journal";
const NEXT_NAME: &str = "journal.next";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a Telemark journal (its first bytes are not {MAGIC:?}); move it away or point data_dir elsewhere"
    )]
    NotAJournal { path: PathBuf },
    #[error("{path}: the record at offset {offset} cannot be read back ({reason})")]
    BadRecord {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Appends one framed record to `out`.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&frame_header(payload));
    out.extend_from_slice(payload);
}

fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER] {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut header = [0u8; FRAME_HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

/// Where the good records end and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset in the file of the first byte not read as a good record.
    pub offset: usize,
    /// Bytes from there to the end of the file, dropped.
    pub dropped: usize,
    pub reason: &'static str,
}

/// The records of a journal's contents (after the magic), in order, up to
/// the first that is cut short or fails its checksum.
#[derive(Debug)]
pub struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
    damage: Option<Damage>,
}

/// Reads `contents` as a whole journal file (magic included). An empty file
/// or one cut inside its magic holds no records.
pub fn scan(contents: &[u8]) -> Scan<'_> {
    let at = if contents.len() >= MAGIC.len() {
        MAGIC.len()
    } else {
        contents.len()
    };
    Scan {
        bytes: contents,
        at,
        damage: None,
    }
}

/// The payload of the record framed at `offset` of a whole file's
/// `contents`; None when no good record starts there.
pub fn frame_at(contents: &[u8], offset: usize) -> Option<&[u8]> {
    if offset < MAGIC.len() || offset > contents.len() {
        return None;
    }
    Scan {
        bytes: contents,
        at: offset,
        damage: None,
    }
    .next()
}

impl<'a> Scan<'a> {
    /// Where reading stopped early, once the iterator has ended.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Bytes of the file that hold good records (magic included).
    pub fn good_len(&self) -> usize {
        self.at
    }

    fn stop(&mut self, reason: &'static str) -> Option<&'a [u8]> {
        self.damage = Some(Damage {
            offset: self.at,
            dropped: self.bytes.len() - self.at,
            reason,
        });
        self.at = self.bytes.len();
        None
    }
}

impl<'a> Iterator for Scan<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = &self.bytes[self.at..];
        if rest.is_empty() {
            return None;
        }
        let Some((header, body)) = rest.split_first_chunk::<FRAME_HEADER>() else {
            return self.stop("a record header cut short");
        };
        let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        if len > MAX_RECORD {
            return self.stop("a record length beyond any record's");
        }
        let Some(payload) = body.get(..len) else {
            return self.stop("a record cut short");
        };
        if crc32fast::hash(payload) != crc {
            return self.stop("a record whose checksum does not match");
        }
        self.at += FRAME_HEADER + len;
        Some(payload)
    }
}

/// Reads back the payload of the record framed at `offset` of `file`,
/// whose records end at `end`, checking its length and checksum (for any
/// file of journal frames: the journal, or a broker's queue spill).
pub fn read_frame_at(file: &File, offset: u64, end: u64) -> Result<Vec<u8>, JournalError> {
    use std::os::unix::fs::FileExt;
    let path = PathBuf::new();
    let bad = |reason| JournalError::BadRecord {
        path: PathBuf::new(),
        offset,
        reason,
    };
    if offset < MAGIC.len() as u64 || offset + FRAME_HEADER as u64 > end {
        return Err(bad("beyond the file"));
    }
    let mut header = [0u8; FRAME_HEADER];
    file.read_exact_at(&mut header, offset)
        .map_err(io_error(&path))?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_RECORD || offset + (FRAME_HEADER + len) as u64 > end {
        return Err(bad("a length beyond the file"));
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + FRAME_HEADER as u64)
        .map_err(io_error(&path))?;
    if crc32fast::hash(&payload) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Err(bad("a checksum that does not match"));
    }
    Ok(payload)
}

/// The journal file of a data directory, open for appending.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    len: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and returns its contents for
    /// recovery. A `journal.next` left by a compaction that did not finish
    /// is removed: the old file is still whole.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<u8>), JournalError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let next = dir.join(NEXT_NAME);
        if next.exists() {
            std::fs::remove_file(&next).map_err(io_error(&next))?;
        }
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(io_error(&path))?;
        let whole_magic = contents.len() >= MAGIC.len();
        let magic_so_far = &contents[..contents.len().min(MAGIC.len())];
        if magic_so_far != &MAGIC[..magic_so_far.len()] {
            return Err(JournalError::NotAJournal { path });
        }
        if !whole_magic {
            // Created and cut before its magic was whole: nothing in it.
            file.set_len(0).map_err(io_error(&path))?;
            file.write_all(MAGIC).map_err(io_error(&path))?;
            file.sync_all().map_err(io_error(&path))?;
            contents.clear();
            contents.extend_from_slice(MAGIC);
        }
        let len = contents.len() as u64;
        Ok((
            Journal {
                dir: dir.to_owned(),
                file,
                len,
            },
            contents,
        ))
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Writes framed records at the end (to the operating system, not yet
    /// to the disk: see [`Journal::sync`]).
    pub fn append(&mut self, framed: &[u8]) -> Result<(), JournalError> {
        let path = self.path();
        self.file.write_all(framed).map_err(io_error(&path))?;
        self.len += framed.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far survive a power cut.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        let path = self.path();
        self.file.sync_data().map_err(io_error(&path))
    }

    /// Replaces the whole file with `framed` records (the magic is added):
    /// written beside it, synced, renamed over it, the directory synced.
    /// Appends go to the new file from then on.
    pub fn replace(&mut self, framed: &[u8]) -> Result<(), JournalError> {
        let mut replacement = self.start_replacement()?;
        replacement.append_framed(framed)?;
        self.finish_replacement(replacement)
    }

    fn reopen(&mut self) -> Result<(), JournalError> {
        let path = self.path();
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(())
    }

    /// Reads back the payload of the record framed at `offset` (where the
    /// frame's header starts), checking its length and checksum.
    pub fn read_at(&self, offset: u64) -> Result<Vec<u8>, JournalError> {
        read_frame_at(&self.file, offset, self.len).map_err(|e| match e {
            // Named after this file.
            JournalError::BadRecord { offset, reason, .. } => JournalError::BadRecord {
                path: self.path(),
                offset,
                reason,
            },
            JournalError::Io { source, .. } => JournalError::Io {
                path: self.path(),
                source,
            },
            other => other,
        })
    }

    /// Starts a new file to replace this one, written record by record
    /// (so a large state is never whole in memory) and put in place by
    /// [`Journal::finish_replacement`]. The old file stays readable and
    /// appendable until then.
    pub fn start_replacement(&self) -> Result<Replacement, JournalError> {
        let path = self.dir.join(NEXT_NAME);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io_error(&path))?;
        Ok(Replacement {
            out,
            path,
            len: MAGIC.len() as u64,
        })
    }

    /// Syncs the replacement, renames it over the journal and syncs the
    /// directory; appends go to the new file from then on.
    pub fn finish_replacement(&mut self, replacement: Replacement) -> Result<(), JournalError> {
        let Replacement { out, path, len } = replacement;
        let file = out
            .into_inner()
            .map_err(|e| io_error(&path)(e.into_error()))?;
        file.sync_all().map_err(io_error(&path))?;
        drop(file);
        let journal = self.path();
        std::fs::rename(&path, &journal).map_err(io_error(&journal))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.dir))?;
        self.len = len;
        self.reopen()
    }
}

/// A journal file being written beside the live one (see
/// [`Journal::start_replacement`]).
#[derive(Debug)]
pub struct Replacement {
    out: std::io::BufWriter<File>,
    path: PathBuf,
    len: u64,
}

impl Replacement {
    /// Appends one record; returns the offset its frame starts at in the
    /// new file.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, JournalError> {
        let at = self.len;
        self.append_framed(&frame_header(payload))?;
        self.append_framed(payload)?;
        Ok(at)
    }

    /// Appends bytes already framed with [`frame`].
    pub fn append_framed(&mut self, framed: &[u8]) -> Result<(), JournalError> {
        self.out.write_all(framed).map_err(io_error(&self.path))?;
        self.len += framed.len() as u64;
        Ok(())
    }

    /// Bytes of the new file so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_of(records: &[&[u8]]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for r in records {
            frame(&mut out, r);
        }
        out
    }

    #[test]
    fn records_read_back_in_order() {
        let file = file_of(&[b"one", b"", b"three"]);
        let mut scan = scan(&file);
        let read: Vec<&[u8]> = scan.by_ref().collect();
        assert_eq!(read, [&b"one"[..], b"", b"three"]);
        assert!(scan.damage().is_none());
        assert_eq!(scan.good_len(), file.len());
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_reported() {
        let file = file_of(&[b"kept", b"torn record"]);
        let cut = &file[..file.len() - 3];
        let mut scan = scan(cut);
        assert_eq!(scan.by_ref().count(), 1);
        let damage = scan.damage().expect("damage reported");
        assert_eq!(damage.reason, "a record cut short");
        assert_eq!(damage.offset, MAGIC.len() + 8 + 4);
        assert_eq!(damage.dropped, cut.len() - damage.offset);
    }

    #[test]
    fn a_flipped_bit_stops_reading_at_that_record() {
        let mut file = file_of(&[b"first", b"second", b"third"]);
        let second_payload = MAGIC.len() + 8 + 5 + 8;
        file[second_payload] ^= 0x01;
        let mut scan = scan(&file);
        assert_eq!(scan.by_ref().count(), 1);
        assert_eq!(
            scan.damage().map(|d| d.reason),
            Some("a record whose checksum does not match")
        );
    }

    #[test]
    fn open_append_reopen_and_replace() -> Result<(), JournalError> {
        let dir = tempfile::tempdir().map_err(io_error(Path::new("tmp")))?;
        let (mut journal, contents) = Journal::open(dir.path())?;
        assert_eq!(contents, MAGIC);
        assert!(journal.is_empty());
        let mut framed = Vec::new();
        frame(&mut framed, b"a");
        frame(&mut framed, b"b");
        journal.append(&framed)?;
        journal.sync()?;
        drop(journal);
        let (mut journal, contents) = Journal::open(dir.path())?;
        assert_eq!(scan(&contents).collect::<Vec<_>>(), [&b"a"[..], b"b"]);
        let mut snapshot = Vec::new();
        frame(&mut snapshot, b"state");
        journal.replace(&snapshot)?;
        let mut more = Vec::new();
        frame(&mut more, b"after");
        journal.append(&more)?;
        drop(journal);
        let (_, contents) = Journal::open(dir.path())?;
        assert_eq!(
            scan(&contents).collect::<Vec<_>>(),
            [&b"state"[..], b"after"]
        );
        Ok(())
    }

    #[test]
    fn records_read_back_by_offset_before_and_after_a_streamed_replacement()
    -> Result<(), JournalError> {
        let dir = tempfile::tempdir().map_err(io_error(Path::new("tmp")))?;
        let (mut journal, _) = Journal::open(dir.path())?;
        let mut framed = Vec::new();
        frame(&mut framed, b"first");
        let second = (MAGIC.len() + framed.len()) as u64;
        frame(&mut framed, b"second");
        journal.append(&framed)?;
        assert_eq!(journal.read_at(second)?, b"second");
        let whole = std::fs::read(journal.path()).map_err(io_error(dir.path()))?;
        assert_eq!(frame_at(&whole, second as usize), Some(&b"second"[..]));
        assert_eq!(frame_at(&whole, 0), None, "the magic is no record");
        assert!(journal.read_at(second + 1).is_err(), "not a frame's start");
        assert!(journal.read_at(journal.len()).is_err(), "past the end");

        let mut next = journal.start_replacement()?;
        let kept = next.append(&journal.read_at(second)?)?;
        let added = next.append(b"third")?;
        journal.finish_replacement(next)?;
        assert_eq!(journal.read_at(kept)?, b"second");
        assert_eq!(journal.read_at(added)?, b"third");
        drop(journal);
        let (_, contents) = Journal::open(dir.path())?;
        assert_eq!(
            scan(&contents).collect::<Vec<_>>(),
            [&b"second"[..], b"third"]
        );
        Ok(())
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() -> Result<(), JournalError> {
        let dir = tempfile::tempdir().map_err(io_error(Path::new("tmp")))?;
        std::fs::write(dir.path().join(FILE_NAME), b"SQLite format 3\0")
            .map_err(io_error(dir.path()))?;
        assert!(matches!(
            Journal::open(dir.path()),
            Err(JournalError::NotAJournal { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_leftover_compaction_file_is_removed() -> Result<(), JournalError> {
        let dir = tempfile::tempdir().map_err(io_error(Path::new("tmp")))?;
        std::fs::write(dir.path().join(NEXT_NAME), b"half a snapshot")
            .map_err(io_error(dir.path()))?;
        Journal::open(dir.path())?;
        assert!(!dir.path().join(NEXT_NAME).exists());
        Ok(())
    }

    proptest! {
        /// Whatever the bytes, scanning ends, never panics, and the good
        /// records plus the damage account for the whole file.
        #[test]
        fn any_bytes_scan_to_a_prefix(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut contents = MAGIC.to_vec();
            contents.extend_from_slice(&bytes);
            let mut scan = scan(&contents);
            let read: usize = scan.by_ref().map(|r| r.len() + 8).sum();
            let damaged = scan.damage().map_or(0, |d| d.dropped);
            prop_assert_eq!(MAGIC.len() + read + damaged, contents.len());
        }

        /// Cutting a file anywhere keeps every record wholly before the cut.
        #[test]
        fn a_cut_keeps_every_whole_record(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8), cut in any::<prop::sample::Index>()) {
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            let file = file_of(&refs);
            let at = cut.index(file.len() + 1);
            let read: Vec<&[u8]> = scan(&file[..at]).collect();
            let mut end = MAGIC.len();
            let whole = records.iter().take_while(|r| { end += 8 + r.len(); end <= at }).count();
            prop_assert_eq!(read.len(), whole);
        }
    }
}
