//! The durable log: append-only segments of framed records, the group
//! commit (fsync by time or bytes), the disk budget, the acknowledged
//! position and its cursor file, and reading records back one at a time.
//! What is in flight and what to send next is the window's (`window`).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fleet_proto::v1::TelemetryBatch;
use prost::Message;

use super::record;
use super::segment::{self, HEADER_LEN, MAX_RECORD};
use super::types::{Appended, Position, SpoolConfig, SpoolError, SpoolStats, io_err};

/// The log target of one line per append and per fsync (`batch` numbers the
/// appends of this process; `through_batch` says every append up to it is on
/// disk): `RUST_LOG=fleet_agent::spool::durability=debug`. The power-cut tests
/// read it to know what the agent had made durable before its power went.
const DURABILITY: &str = "fleet_agent::spool::durability";

/// One segment file and its length (valid bytes).
#[derive(Debug, Clone)]
pub(super) struct SegInfo {
    pub id: u64,
    pub len: u64,
}

/// What reading a record found (its payload is in the caller's buffer).
pub(super) enum Read {
    Record {
        next: Position,
        boot_id: Arc<str>,
        first_seq: u64,
        samples: u64,
    },
    End,
    /// Unreadable from here to the end of its segment (or this record); continue there.
    Skipped(Position),
}

/// A reader kept at the position where the last read ended, so a replay
/// streams through a segment with few system calls.
pub(super) struct SeqReader {
    seg: u64,
    off: u64,
    inner: BufReader<File>,
}

/// The log. Opened by `recover`.
pub(super) struct Log {
    pub cfg: SpoolConfig,
    pub seg_dir: PathBuf,
    pub quarantine_dir: PathBuf,
    pub cursor_path: PathBuf,
    pub segments: Vec<SegInfo>,
    /// The active (last) segment's file: appends go through this buffer.
    pub writer: BufWriter<File>,
    /// Bytes of the active segment already handed to the OS (not just buffered).
    pub flushed: u64,
    pub unsynced: u64,
    pub last_sync: Instant,
    /// Everything before this is acknowledged.
    pub acked: Position,
    /// What the `cursor` file says.
    pub durable: Position,
    /// Batches (records) from `acked` to the end.
    pub pending: u64,
    pub reader: Option<SeqReader>,
    /// Record payload buffer, reused.
    pub buf: Vec<u8>,
    /// Run ids in use, shared by in-flight entries.
    pub boots: Vec<Arc<str>>,
    /// Run and first seq of the record at `acked` (cached).
    pub head: Option<(Arc<str>, u64)>,
    pub stats: SpoolStats,
}

/// A segment's file name.
pub(super) fn seg_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The cursor file's bytes: the position and its CRC32C.
fn encode_cursor(p: Position) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&p.seg.to_le_bytes());
    b[8..16].copy_from_slice(&p.off.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A position from the cursor file's bytes; `None` when damaged.
pub(super) fn decode_cursor(b: &[u8]) -> Option<Position> {
    if b.len() != 20 || crc32c::crc32c(&b[..16]).to_le_bytes() != b[16..20] {
        return None;
    }
    let seg = u64::from_le_bytes(b[..8].try_into().ok()?);
    let off = u64::from_le_bytes(b[8..16].try_into().ok()?);
    Some(Position { seg, off })
}

/// Makes a directory's entries durable (a new or renamed file in it).
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    fleet_durable::sync_dir(dir).map_err(io_err(dir))
}

/// Creates (or opens) segment `id` for appends.
pub(super) fn create_segment(seg_dir: &Path, id: u64) -> Result<(BufWriter<File>, SegInfo), SpoolError> {
    let path = seg_dir.join(seg_name(id));
    let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
    let len = f.metadata().map_err(io_err(&path))?.len();
    sync_dir(seg_dir)?;
    Ok((BufWriter::with_capacity(64 * 1024, f), SegInfo { id, len }))
}

impl Log {
    fn active(&self) -> &SegInfo {
        // Invariant: there is always an active segment.
        &self.segments[self.segments.len() - 1]
    }

    /// The position just after the last record.
    pub fn end(&self) -> Position {
        let a = self.active();
        Position { seg: a.id, off: a.len }
    }

    /// A position at the end of a sealed segment is the start of the next one.
    pub fn normalize(&self, mut p: Position) -> Position {
        for (i, s) in self.segments.iter().enumerate() {
            if s.id < p.seg {
                continue;
            }
            if s.id > p.seg {
                return Position { seg: s.id, off: 0 };
            }
            if p.off >= s.len && i + 1 < self.segments.len() {
                p = Position { seg: self.segments[i + 1].id, off: 0 };
                continue;
            }
            return p;
        }
        self.end()
    }

    /// Records from `from` to the end of its segment.
    pub fn count_records_in_segment_from(&mut self, from: Position) -> Result<u64, SpoolError> {
        let mut n = 0;
        let mut p = from;
        let mut buf = std::mem::take(&mut self.buf);
        while p.seg == from.seg {
            match self.read_at(p, &mut buf)? {
                Read::Record { next, .. } => {
                    n += 1;
                    p = next;
                }
                Read::Skipped(next) => p = next,
                Read::End => break,
            }
        }
        self.buf = buf;
        Ok(n)
    }

    fn ensure_flushed(&mut self, p: Position) -> Result<(), SpoolError> {
        if p.seg == self.active().id && p.off >= self.flushed {
            let path = self.seg_dir.join(seg_name(p.seg));
            self.writer.flush().map_err(io_err(&path))?;
            self.flushed = self.active().len;
        }
        Ok(())
    }

    /// The shared copy of a run id.
    pub fn intern(&mut self, boot_id: &str) -> Arc<str> {
        if let Some(b) = self.boots.iter().find(|b| &***b == boot_id) {
            return b.clone();
        }
        if self.boots.len() >= 64 {
            // Only runs still referenced elsewhere stay alive; the table is a cache.
            self.boots.clear();
        }
        let b: Arc<str> = Arc::from(boot_id);
        self.boots.push(b.clone());
        b
    }

    /// Reads the record at `p` into `buf` (at most `MAX_RECORD` bytes).
    pub fn read_at(&mut self, p: Position, buf: &mut Vec<u8>) -> Result<Read, SpoolError> {
        let p = self.normalize(p);
        if p >= self.end() {
            return Ok(Read::End);
        }
        self.ensure_flushed(p)?;
        let seg_len = self.segments.iter().find(|s| s.id == p.seg).map_or(0, |s| s.len);
        let path = self.seg_dir.join(seg_name(p.seg));
        let positioned = self.reader.as_ref().is_some_and(|r| r.seg == p.seg && r.off == p.off);
        if !positioned {
            let mut file = match self.reader.take() {
                Some(r) if r.seg == p.seg => r.inner.into_inner(),
                _ => File::open(&path).map_err(io_err(&path))?,
            };
            file.seek(SeekFrom::Start(p.off)).map_err(io_err(&path))?;
            self.reader = Some(SeqReader { seg: p.seg, off: p.off, inner: BufReader::with_capacity(64 * 1024, file) });
        }
        let Some(reader) = self.reader.as_mut() else { return Ok(Read::End) };
        let outcome = segment::read_record(&mut reader.inner, buf).map_err(io_err(&path))?;
        let skip_segment = self.normalize(Position { seg: p.seg, off: seg_len });
        let what = match outcome {
            segment::Outcome::Record(len) => {
                let reader = self.reader.as_mut().map(|r| {
                    r.off += HEADER_LEN + u64::from(len);
                    r.off
                });
                let next = self.normalize(Position { seg: p.seg, off: reader.unwrap_or(seg_len) });
                let Some(m) = record::meta(buf) else {
                    tracing::error!(segment = %path.display(), at = p.off, "Spool: record is not a batch of ours; skipped.");
                    return Ok(Read::Skipped(next));
                };
                let (first_seq, samples) = (m.first_seq, u64::from(m.samples));
                let boot_id = self.intern(m.boot_id);
                return Ok(Read::Record { next, boot_id, first_seq, samples });
            }
            segment::Outcome::End | segment::Outcome::Torn => "data ends inside a record",
            segment::Outcome::Corrupt(reason) => reason,
        };
        self.reader = None;
        tracing::error!(segment = %path.display(), bytes_from = p.off, bytes_to = seg_len, what,
            "Spool: unreadable record; skipping the rest of this segment.");
        Ok(Read::Skipped(skip_segment))
    }

    /// Appends a batch (encoded here, once); fsyncs when the group-commit
    /// policy says so. The caller enforces the disk budget after.
    pub fn append(&mut self, batch: &TelemetryBatch) -> Result<Appended, SpoolError> {
        let payload = record::encode(batch).ok_or(SpoolError::TooLarge(batch.encoded_len()))?;
        if payload.len() > MAX_RECORD as usize {
            return Err(SpoolError::TooLarge(payload.len()));
        }
        let rec = HEADER_LEN + payload.len() as u64;
        if self.active().len > 0 && self.active().len + rec > self.cfg.segment_bytes {
            self.rotate()?;
        }
        let pos = self.end();
        // The segment's path only when there is an error to name it in (an
        // append is a few hundred nanoseconds; formatting a path is a fifth of that).
        self.writer
            .write_all(&segment::header(&payload))
            .and_then(|()| self.writer.write_all(&payload))
            .map_err(|e| io_err(&self.seg_dir.join(seg_name(pos.seg)))(e))?;
        if let Some(a) = self.segments.last_mut() {
            a.len += rec;
        }
        self.unsynced += rec;
        self.pending += 1;
        self.stats.appended_batches += 1;
        tracing::debug!(target: DURABILITY, batch = self.stats.appended_batches, boot_id = %batch.boot_id,
            first_seq = batch.first_seq, samples = batch.samples.len(), bytes = rec, "spool appended");
        if self.cfg.fsync_interval.is_zero() || self.unsynced >= self.cfg.fsync_bytes {
            self.sync()?;
        }
        Ok(Appended { pos, next: Position { seg: pos.seg, off: pos.off + rec }, payload })
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        let id = self.active().id + 1;
        let (writer, info) = create_segment(&self.seg_dir, id)?;
        self.writer = writer;
        self.flushed = 0;
        self.segments.push(info);
        Ok(())
    }

    /// Writes buffered records and fsyncs them.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let path = self.seg_dir.join(seg_name(self.active().id));
        self.writer.flush().map_err(io_err(&path))?;
        self.writer.get_ref().sync_data().map_err(io_err(&path))?;
        self.flushed = self.active().len;
        self.unsynced = 0;
        self.last_sync = Instant::now();
        self.stats.fsyncs += 1;
        tracing::debug!(target: DURABILITY, through_batch = self.stats.appended_batches, "spool synced");
        Ok(())
    }

    /// Group commit by time: fsyncs if data has waited `fsync_interval`.
    pub fn maybe_sync(&mut self, now: Instant) -> Result<(), SpoolError> {
        if self.unsynced > 0 && now.duration_since(self.last_sync) >= self.cfg.fsync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Bytes on disk.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Drops the oldest sealed segments while the log is over its budget
    /// (unacknowledged batches in them are counted as dropped). Returns each
    /// dropped segment and where the data after it starts.
    pub fn enforce_budget(&mut self) -> Result<Vec<(u64, Position)>, SpoolError> {
        let mut dropped = Vec::new();
        while self.total_bytes() > self.cfg.max_bytes && self.segments.len() > 1 {
            let victim = self.segments[0].clone();
            let next = Position { seg: self.segments[1].id, off: 0 };
            if self.acked.seg == victim.id {
                self.drop_unacknowledged(victim.id)?;
                self.acked = next;
                self.head = None;
            }
            let path = self.seg_dir.join(seg_name(victim.id));
            if self.reader.as_ref().is_some_and(|r| r.seg == victim.id) {
                self.reader = None;
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.segments.remove(0);
            dropped.push((victim.id, next));
        }
        Ok(dropped)
    }

    /// Counts (and logs) the unacknowledged batches of segment `seg`, about to be dropped.
    fn drop_unacknowledged(&mut self, seg: u64) -> Result<(), SpoolError> {
        let (mut batches, mut samples) = (0u64, 0u64);
        let mut p = self.acked;
        let mut buf = std::mem::take(&mut self.buf);
        while p.seg == seg {
            match self.read_at(p, &mut buf)? {
                Read::Record { next, samples: n, .. } => {
                    batches += 1;
                    samples += n;
                    p = next;
                }
                Read::Skipped(n) => p = n,
                Read::End => break,
            }
        }
        self.buf = buf;
        self.stats.dropped_batches += batches;
        self.stats.dropped_samples += samples;
        self.pending = self.pending.saturating_sub(batches);
        tracing::error!(
            segment = seg,
            batches,
            samples,
            max_bytes = self.cfg.max_bytes,
            "Spool over its disk budget: dropped the oldest unacknowledged segment."
        );
        Ok(())
    }

    /// Moves the acknowledged position over one acknowledged record.
    pub fn ack_head(&mut self, next: Position) {
        self.acked = next;
        self.pending = self.pending.saturating_sub(1);
    }

    /// Deletes segments wholly before the acknowledged position.
    pub fn release_acked_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 && self.segments[0].id < self.acked.seg {
            let id = self.segments[0].id;
            let path = self.seg_dir.join(seg_name(id));
            if self.reader.as_ref().is_some_and(|r| r.seg == id) {
                self.reader = None;
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.segments.remove(0);
        }
        Ok(())
    }

    /// Writes the acknowledged position to disk if it moved (atomically).
    pub fn persist_cursor(&mut self) -> Result<(), SpoolError> {
        if self.acked == self.durable && self.cursor_path.exists() {
            return Ok(());
        }
        fleet_durable::replace(&self.cursor_path, &encode_cursor(self.acked), 0o644)
            .map_err(io_err(&self.cursor_path))?;
        self.durable = self.acked;
        Ok(())
    }

    /// Lowest seq of `boot_id` the spool still holds, as far as it can tell
    /// cheaply: the head record's first seq if the head is of that run, else 0
    /// (everything of the run is held: older runs are always dropped first).
    pub fn low_water(&mut self, boot_id: &str) -> Result<u64, SpoolError> {
        if self.head.is_none() {
            let mut p = self.acked;
            let mut buf = Vec::new();
            loop {
                match self.read_at(p, &mut buf)? {
                    Read::Record { boot_id, first_seq, .. } => {
                        self.head = Some((boot_id, first_seq));
                        break;
                    }
                    Read::Skipped(n) => p = n,
                    Read::End => break,
                }
            }
        }
        Ok(match &self.head {
            Some((boot, first)) if &**boot == boot_id => *first,
            _ => 0,
        })
    }

    /// Every unacknowledged batch, oldest first, streamed from disk.
    pub fn for_each_pending(&mut self, mut f: impl FnMut(&TelemetryBatch)) -> Result<(), SpoolError> {
        let mut p = self.acked;
        let mut buf = Vec::new();
        loop {
            match self.read_at(p, &mut buf)? {
                Read::Record { next, .. } => {
                    if let Some(b) = record::meta(&buf).and_then(|m| TelemetryBatch::decode(m.wire).ok()) {
                        f(&b);
                    }
                    p = next;
                }
                Read::Skipped(n) => p = n,
                Read::End => return Ok(()),
            }
        }
    }
}
