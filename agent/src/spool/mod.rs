//! The agent's disk spool: every batch is appended here before it is sent,
//! and leaves only when the controller acknowledges it (or the disk budget
//! forces the oldest out, counted).
//!
//! Layout under the spool directory:
//! - `segments/{id:016x}.seg`: append-only files of framed records (see `segment`);
//! - `quarantine/`: segments found corrupt, moved aside for inspection;
//! - `cursor`: the acknowledged position (segment id, offset, CRC32C).
//!
//! Guarantee after a power cut: every batch appended before the last
//! completed fsync survives; batches appended after it (at most
//! `fsync_interval` or `fsync_bytes` of them) may be lost, and a record cut
//! short is truncated at start. A corrupt record in a sealed segment moves that
//! segment to `quarantine/`; its intact records before the damage are kept and
//! everything else is still delivered. The agent always starts.
//!
//! Memory is bounded whatever the backlog: start-up scans segments through a
//! small buffer, replay reads one record at a time, and only the in-flight
//! window (at most `max_inflight` entries of metadata) is held.
//!
//! Delivery: after every (re)connect everything unacknowledged is replayed
//! from disk, oldest first, at most `replay_batches_per_s`; batches appended
//! meanwhile are published at once (live first, backlog interleaved), so a long
//! outage never starves live data.

pub mod record;
pub mod segment;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::v1::{Ack, TelemetryBatch};
use prost::Message;
use serde::Deserialize;

use segment::{HEADER_LEN, MAX_RECORD, ScanEnd};

/// Errors of the spool that stop the agent (a full or broken disk); corruption
/// is handled, counted and logged instead.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}; check the disk and the permissions of the agent's data_dir")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a batch of {0} bytes (or a boot id over 255 bytes) does not fit a spool record")]
    TooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_owned(), source }
}

/// `[spool]`: where batches wait for their acknowledgement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// A segment is sealed and a new one started past this size. Default 8 MiB.
    pub segment_bytes: u64,
    /// Disk budget: past it the oldest segments are dropped (counted). Default 256 MiB.
    pub max_bytes: u64,
    /// Group commit: fsync at least this often while data is unsynced; 0 fsyncs every batch. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// ...or as soon as this many bytes are unsynced. Default 1 MiB.
    pub fsync_bytes: u64,
    /// Batches sent and not yet acknowledged, at most. Default 1024.
    pub max_inflight: usize,
    /// Backlog replay rate after a reconnect, batches per second. Default 500.
    pub replay_batches_per_s: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 8 << 20,
            max_bytes: 256 << 20,
            fsync_interval: Duration::from_secs(1),
            fsync_bytes: 1 << 20,
            max_inflight: 1024,
            replay_batches_per_s: 500,
        }
    }
}

impl SpoolConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 4096 {
            return Err("key `spool.segment_bytes`: use at least 4096".into());
        }
        if self.max_bytes < self.segment_bytes * 4 {
            return Err("key `spool.max_bytes`: use at least 4 x spool.segment_bytes".into());
        }
        if self.max_inflight == 0 || self.replay_batches_per_s == 0 {
            return Err("keys `spool.max_inflight` and `spool.replay_batches_per_s` must be at least 1".into());
        }
        Ok(())
    }
}

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub seg: u64,
    pub off: u64,
}

/// What the spool has counted since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub appended_batches: u64,
    /// Unacknowledged batches dropped by the disk budget (or unreadable).
    pub dropped_batches: u64,
    pub dropped_samples: u64,
    pub quarantined_segments: u64,
    /// Bytes moved to quarantine that held no intact record we could keep.
    pub quarantined_bytes: u64,
    pub torn_tails_truncated: u64,
    pub fsyncs: u64,
}

#[derive(Debug, Clone)]
struct SegInfo {
    id: u64,
    len: u64,
}

#[derive(Debug, Clone)]
struct InFlight {
    next: Position,
    boot_id: Arc<str>,
    first: u64,
    end: u64,
    samples: u64,
    sent_at: Instant,
    acked: bool,
}

/// The latest ack heard per run (few runs: the current one and leftovers).
#[derive(Debug, Clone, Default)]
struct KnownAck {
    boot_id: String,
    /// Every seq below is committed.
    next: u64,
    ranges: Vec<(u64, u64)>,
}

impl KnownAck {
    fn covers(&self, first: u64, end: u64) -> bool {
        end <= self.next || self.ranges.iter().any(|&(s, e)| s <= first && end <= e)
    }
}

/// Runs whose acks are remembered.
const KNOWN_RUNS: usize = 8;

/// What reading a record found (its payload is in the caller's buffer).
enum Read {
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

/// A batch to publish: its place in the spool and its wire bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub pos: Position,
    pub wire: Vec<u8>,
}

/// A reader kept at the position where the last read ended, so a replay
/// streams through a segment with few system calls.
struct SeqReader {
    seg: u64,
    off: u64,
    inner: BufReader<File>,
}

/// The spool. See the module documentation.
pub struct Spool {
    cfg: SpoolConfig,
    seg_dir: PathBuf,
    quarantine_dir: PathBuf,
    cursor_path: PathBuf,
    segments: Vec<SegInfo>,
    // The active (last) segment's file: appends go through this buffer.
    writer: BufWriter<File>,
    /// Bytes of the active segment already handed to the OS (not just buffered).
    flushed: u64,
    unsynced: u64,
    last_sync: Instant,
    /// Everything before this is acknowledged.
    acked: Position,
    /// What the `cursor` file says.
    durable: Position,
    /// Batches (records) from `acked` to the end.
    pending: u64,
    /// Next record to replay, and where replay stops (`None`: the end).
    replay: Option<Position>,
    replay_end: Option<Position>,
    /// Appends are published directly (connected and not behind).
    live: bool,
    inflight: BTreeMap<Position, InFlight>,
    known: Vec<KnownAck>,
    reader: Option<SeqReader>,
    /// Record payload buffer, reused.
    buf: Vec<u8>,
    /// Run ids in use, shared by in-flight entries.
    boots: Vec<Arc<str>>,
    /// Run and first seq of the record at `acked` (cached).
    head: Option<(Arc<str>, u64)>,
    stats: SpoolStats,
}

fn seg_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

fn encode_cursor(p: Position) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&p.seg.to_le_bytes());
    b[8..16].copy_from_slice(&p.off.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_cursor(b: &[u8]) -> Option<Position> {
    if b.len() != 20 || crc32c::crc32c(&b[..16]).to_le_bytes() != b[16..20] {
        return None;
    }
    let seg = u64::from_le_bytes(b[..8].try_into().ok()?);
    let off = u64::from_le_bytes(b[8..16].try_into().ok()?);
    Some(Position { seg, off })
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: truncates a torn tail,
    /// quarantines corrupt segments, reads the acknowledged position, enforces
    /// the disk budget, and starts a fresh segment for appends.
    ///
    /// # Errors
    /// When the directory cannot be created, read or written.
    pub fn open(dir: &Path, cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let seg_dir = dir.join("segments");
        let quarantine_dir = dir.join("quarantine");
        fs::create_dir_all(&seg_dir).map_err(io_err(&seg_dir))?;
        fs::create_dir_all(&quarantine_dir).map_err(io_err(&quarantine_dir))?;
        let cursor_path = dir.join("cursor");
        let mut stats = SpoolStats::default();

        let mut ids: Vec<u64> = fs::read_dir(&seg_dir)
            .map_err(io_err(&seg_dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
            })
            .collect();
        ids.sort_unstable();

        let cursor = match fs::read(&cursor_path) {
            Ok(b) => decode_cursor(&b).or_else(|| {
                tracing::error!(path = %cursor_path.display(), "Spool cursor is damaged; resending from the oldest segment.");
                None
            }),
            Err(_) => None,
        };

        let mut segments = Vec::with_capacity(ids.len());
        // Intact records per segment, from the scan: counting the backlog needs no second pass.
        let mut records: Vec<(u64, u64)> = Vec::with_capacity(ids.len());
        let last = ids.last().copied();
        for id in ids {
            let path = seg_dir.join(seg_name(id));
            if cursor.is_some_and(|c| id < c.seg) {
                // Wholly acknowledged: nothing to read.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let scan = segment::scan(&path).map_err(io_err(&path))?;
            let len = match scan.end {
                ScanEnd::Clean => scan.valid_len,
                ScanEnd::Torn { at } | ScanEnd::Corrupt { at, tail_only: true, .. } if Some(id) == last => {
                    tracing::warn!(segment = %path.display(), at, cut = scan.file_len - at,
                        "Spool: truncated a torn write at the end of the last segment.");
                    let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                    f.set_len(at).and_then(|()| f.sync_all()).map_err(io_err(&path))?;
                    stats.torn_tails_truncated += 1;
                    at
                }
                ScanEnd::Torn { at } | ScanEnd::Corrupt { at, .. } => {
                    let reason = match scan.end {
                        ScanEnd::Corrupt { reason, .. } => reason,
                        _ => "record cut short in a sealed segment",
                    };
                    Self::quarantine(&path, &quarantine_dir, at, scan.file_len, reason)?;
                    stats.quarantined_segments += 1;
                    stats.quarantined_bytes += scan.file_len - at;
                    at
                }
            };
            segments.push(SegInfo { id, len });
            records.push((id, scan.records));
        }

        // A fresh active segment: never append after bytes a crash may have left.
        let next_id = segments.last().map_or(1, |s| s.id + 1).max(cursor.map_or(0, |c| c.seg));
        let (writer, info) = Self::create_segment(&seg_dir, next_id)?;
        segments.push(info);

        let first = Position { seg: segments[0].id, off: 0 };
        let mut acked = match cursor {
            Some(c) if c >= first => c,
            _ => first,
        };
        if let Some(s) = segments.iter().find(|s| s.id == acked.seg) {
            acked.off = acked.off.min(s.len);
        } else {
            // The cursor's segment is gone (acknowledged, then deleted): the next one holds the rest.
            let next = segments.iter().find(|s| s.id > acked.seg).map_or(next_id, |s| s.id);
            acked = Position { seg: next, off: 0 };
        }

        let mut spool = Spool {
            cfg,
            seg_dir,
            quarantine_dir,
            cursor_path,
            segments,
            writer,
            flushed: 0,
            unsynced: 0,
            last_sync: Instant::now(),
            acked,
            durable: cursor.unwrap_or(acked),
            pending: 0,
            replay: None,
            replay_end: None,
            live: false,
            inflight: BTreeMap::new(),
            known: Vec::new(),
            reader: None,
            buf: Vec::new(),
            boots: Vec::new(),
            head: None,
            stats,
        };
        spool.acked = spool.normalize(spool.acked);
        let head = spool.acked;
        spool.pending = spool.count_records_in_segment_from(head)?
            + records.iter().filter(|(id, _)| *id > head.seg).map(|(_, n)| n).sum::<u64>();
        spool.enforce_budget()?;
        spool.persist_cursor()?;
        Ok(spool)
    }

    fn create_segment(seg_dir: &Path, id: u64) -> Result<(BufWriter<File>, SegInfo), SpoolError> {
        let path = seg_dir.join(seg_name(id));
        let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let len = f.metadata().map_err(io_err(&path))?.len();
        sync_dir(seg_dir)?;
        Ok((BufWriter::with_capacity(64 * 1024, f), SegInfo { id, len }))
    }

    /// Moves a damaged segment aside and puts its intact prefix back in its place.
    fn quarantine(path: &Path, qdir: &Path, good: u64, file_len: u64, reason: &str) -> Result<(), SpoolError> {
        let stamp = fleet_proto::now_unix_ms();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dest = qdir.join(format!("{name}.{stamp}"));
        tracing::error!(segment = %path.display(), bytes_from = good, bytes_to = file_len, reason,
            moved_to = %dest.display(),
            "Spool: corrupt segment quarantined; batches in that byte range are lost, the rest is delivered.");
        fs::rename(path, &dest).map_err(io_err(path))?;
        let mut src = File::open(&dest).map_err(io_err(&dest))?;
        let tmp = path.with_extension("salvage");
        let mut out = File::create(&tmp).map_err(io_err(&tmp))?;
        std::io::copy(&mut std::io::Read::take(&mut src, good), &mut out).map_err(io_err(&tmp))?;
        out.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn active(&self) -> &SegInfo {
        // Invariant: there is always an active segment.
        &self.segments[self.segments.len() - 1]
    }

    /// The position just after the last record.
    #[must_use]
    pub fn end(&self) -> Position {
        let a = self.active();
        Position { seg: a.id, off: a.len }
    }

    /// A position at the end of a sealed segment is the start of the next one.
    fn normalize(&self, mut p: Position) -> Position {
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
    fn count_records_in_segment_from(&mut self, from: Position) -> Result<u64, SpoolError> {
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

    fn intern(&mut self, boot_id: &str) -> Arc<str> {
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
    fn read_at(&mut self, p: Position, buf: &mut Vec<u8>) -> Result<Read, SpoolError> {
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

    /// Appends a batch; fsyncs when the group-commit policy says so and drops
    /// the oldest segments past the disk budget. Returns the batch's position.
    ///
    /// # Errors
    /// Disk errors, or a batch too large for a record.
    pub fn append(&mut self, batch: &TelemetryBatch) -> Result<Position, SpoolError> {
        let payload = record::encode(batch).ok_or(SpoolError::TooLarge(batch.encoded_len()))?;
        if payload.len() > MAX_RECORD as usize {
            return Err(SpoolError::TooLarge(payload.len()));
        }
        let rec = HEADER_LEN + payload.len() as u64;
        if self.active().len > 0 && self.active().len + rec > self.cfg.segment_bytes {
            self.rotate()?;
        }
        let path = self.seg_dir.join(seg_name(self.active().id));
        let pos = self.end();
        self.writer
            .write_all(&segment::header(&payload))
            .and_then(|()| self.writer.write_all(&payload))
            .map_err(io_err(&path))?;
        if let Some(a) = self.segments.last_mut() {
            a.len += rec;
        }
        self.unsynced += rec;
        self.pending += 1;
        self.stats.appended_batches += 1;
        if self.cfg.fsync_interval.is_zero() || self.unsynced >= self.cfg.fsync_bytes {
            self.sync()?;
        }
        if self.total_bytes() > self.cfg.max_bytes {
            self.enforce_budget()?;
        }
        Ok(pos)
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        let id = self.active().id + 1;
        let (writer, info) = Self::create_segment(&self.seg_dir, id)?;
        self.writer = writer;
        self.flushed = 0;
        self.segments.push(info);
        Ok(())
    }

    /// Writes buffered records and fsyncs them.
    ///
    /// # Errors
    /// Disk errors.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let path = self.seg_dir.join(seg_name(self.active().id));
        self.writer.flush().map_err(io_err(&path))?;
        self.writer.get_ref().sync_data().map_err(io_err(&path))?;
        self.flushed = self.active().len;
        self.unsynced = 0;
        self.last_sync = Instant::now();
        self.stats.fsyncs += 1;
        Ok(())
    }

    /// Group commit by time: fsyncs if data has waited `fsync_interval`.
    ///
    /// # Errors
    /// Disk errors.
    pub fn maybe_sync(&mut self, now: Instant) -> Result<(), SpoolError> {
        if self.unsynced > 0 && now.duration_since(self.last_sync) >= self.cfg.fsync_interval {
            self.sync()?;
        }
        Ok(())
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Drops the oldest sealed segments while the spool is over its budget.
    fn enforce_budget(&mut self) -> Result<(), SpoolError> {
        while self.total_bytes() > self.cfg.max_bytes && self.segments.len() > 1 {
            let victim = self.segments[0].clone();
            let next = Position { seg: self.segments[1].id, off: 0 };
            if self.acked.seg == victim.id {
                let (mut batches, mut samples) = (0u64, 0u64);
                let mut p = self.acked;
                let mut buf = std::mem::take(&mut self.buf);
                while p.seg == victim.id {
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
                    segment = victim.id,
                    batches,
                    samples,
                    max_bytes = self.cfg.max_bytes,
                    "Spool over its disk budget: dropped the oldest unacknowledged segment."
                );
                self.acked = next;
                self.head = None;
            }
            self.inflight.retain(|p, _| p.seg != victim.id);
            if let Some(r) = self.replay.as_mut()
                && r.seg <= victim.id
            {
                *r = next;
            }
            let path = self.seg_dir.join(seg_name(victim.id));
            if self.reader.as_ref().is_some_and(|r| r.seg == victim.id) {
                self.reader = None;
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.segments.remove(0);
        }
        Ok(())
    }

    /// Deletes segments wholly before the acknowledged position.
    fn release_acked_segments(&mut self) -> Result<(), SpoolError> {
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
    ///
    /// # Errors
    /// Disk errors.
    pub fn persist_cursor(&mut self) -> Result<(), SpoolError> {
        if self.acked == self.durable && self.cursor_path.exists() {
            return Ok(());
        }
        let tmp = self.cursor_path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&encode_cursor(self.acked)).and_then(|()| f.sync_all()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.cursor_path).map_err(io_err(&self.cursor_path))?;
        self.durable = self.acked;
        Ok(())
    }

    /// Lowest seq of `boot_id` the spool still holds, as far as it can tell
    /// cheaply: the head record's first seq if the head is of that run, else 0
    /// (everything of the run is held: older runs are always dropped first).
    fn low_water(&mut self, boot_id: &str) -> Result<u64, SpoolError> {
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

    /// Called on every (re)connect: forget what was in flight and replay every
    /// unacknowledged batch from disk; publish new batches live meanwhile.
    pub fn on_connect(&mut self) {
        self.inflight.clear();
        let end = self.end();
        self.replay = (self.acked < end).then_some(self.acked);
        self.replay_end = Some(end);
        self.live = true;
    }

    /// Called when the connection is lost: batches now wait on disk.
    pub fn on_disconnect(&mut self) {
        self.live = false;
    }

    /// After `append`: should the batch at `pos` be published now? If so it is
    /// registered in flight and returned as wire bytes with its low-water mark
    /// set. If not, it waits for replay.
    ///
    /// # Errors
    /// Disk errors reading the head record.
    pub fn take_live(
        &mut self,
        pos: Position,
        batch: &TelemetryBatch,
        now: Instant,
    ) -> Result<Option<Outgoing>, SpoolError> {
        if self.live && self.inflight.len() < self.cfg.max_inflight * 2 {
            let rec_len = record::encode(batch).map_or(0, |r| r.len() as u64);
            let next = Position { seg: pos.seg, off: pos.off + HEADER_LEN + rec_len };
            let low = self.low_water(&batch.boot_id)?;
            let boot = self.intern(&batch.boot_id);
            self.track(pos, next, boot, batch.first_seq, batch.samples.len() as u64, now);
            let wire = TelemetryBatch { low_water_seq: low, ..batch.clone() }.encode_to_vec();
            return Ok(Some(Outgoing { pos, wire }));
        }
        if self.live {
            // In-flight window full: from here on the batches wait for replay.
            self.live = false;
            self.replay.get_or_insert(pos);
            self.replay_end = None;
        }
        Ok(None)
    }

    /// The client refused a batch handed out by `take_live` or `replay`: send it again later.
    pub fn send_failed(&mut self, pos: Position) {
        if let Some(e) = self.inflight.get_mut(&pos) {
            e.sent_at = Instant::now() - Duration::from_secs(3600);
        }
    }

    fn track(&mut self, pos: Position, next: Position, boot_id: Arc<str>, first: u64, samples: u64, now: Instant) {
        self.inflight
            .insert(pos, InFlight { next, boot_id, first, end: first + samples, samples, sent_at: now, acked: false });
    }

    fn known_acked(&self, boot_id: &str, first: u64, end: u64) -> bool {
        self.known.iter().any(|k| k.boot_id == boot_id && k.covers(first, end))
    }

    /// The next backlog batches to send (at most `limit`, and while the
    /// in-flight window has room), oldest first.
    ///
    /// # Errors
    /// Disk errors.
    pub fn replay(&mut self, now: Instant, limit: usize) -> Result<Vec<Outgoing>, SpoolError> {
        let mut out = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        while out.len() < limit && self.inflight.len() < self.cfg.max_inflight {
            let Some(p) = self.replay else { break };
            let stop = self.replay_end.unwrap_or_else(|| self.end());
            if p >= stop {
                self.replay = None;
                if self.replay_end.is_none() {
                    self.live = true;
                }
                break;
            }
            match self.read_at(p, &mut buf)? {
                Read::End => {
                    self.replay = None;
                    self.live = true;
                }
                Read::Skipped(n) => {
                    self.replay = Some(n);
                    self.stats.dropped_batches += 1;
                    if self.acked == p {
                        self.acked = n;
                        self.head = None;
                    }
                }
                Read::Record { next, boot_id, first_seq, samples } => {
                    self.replay = Some(next);
                    if self.inflight.contains_key(&p) {
                        continue;
                    }
                    let acked = self.known_acked(&boot_id, first_seq, first_seq + samples);
                    let low = if acked { 0 } else { self.low_water(&boot_id)? };
                    self.track(p, next, boot_id, first_seq, samples, now);
                    if acked {
                        if let Some(e) = self.inflight.get_mut(&p) {
                            e.acked = true;
                        }
                    } else if let Some(m) = record::meta(&buf) {
                        out.push(Outgoing { pos: p, wire: record::wire_with_low_water(m.wire, low) });
                    }
                }
            }
        }
        self.buf = buf;
        self.advance()?;
        Ok(out)
    }

    /// Batches in flight longer than `timeout` without an ack (at most `limit`), re-read from disk.
    ///
    /// # Errors
    /// Disk errors.
    pub fn resends(&mut self, now: Instant, timeout: Duration, limit: usize) -> Result<Vec<Outgoing>, SpoolError> {
        let due: Vec<Position> = self
            .inflight
            .iter()
            .filter(|(_, e)| !e.acked && now.duration_since(e.sent_at) >= timeout)
            .map(|(p, _)| *p)
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        let mut buf = std::mem::take(&mut self.buf);
        for p in due {
            if let Read::Record { boot_id, .. } = self.read_at(p, &mut buf)? {
                let low = self.low_water(&boot_id)?;
                if let (Some(e), Some(m)) = (self.inflight.get_mut(&p), record::meta(&buf)) {
                    e.sent_at = now;
                    out.push(Outgoing { pos: p, wire: record::wire_with_low_water(m.wire, low) });
                }
            }
        }
        self.buf = buf;
        Ok(out)
    }

    /// Applies an ack from the controller; returns the samples newly acknowledged.
    ///
    /// # Errors
    /// Disk errors while releasing acknowledged segments.
    pub fn ack(&mut self, ack: &Ack) -> Result<u64, SpoolError> {
        let known = KnownAck {
            boot_id: ack.boot_id.clone(),
            next: ack.up_to_seq.saturating_add(1),
            ranges: ack.committed.iter().map(|r| (r.start, r.end)).collect(),
        };
        // Acks from two controller replicas can arrive out of order: an older
        // (lower) one never takes back what a newer one said.
        if let Some(k) = self.known.iter().find(|k| k.boot_id == ack.boot_id)
            && k.next > known.next
        {
            return Ok(0);
        }
        self.known.retain(|k| k.boot_id != ack.boot_id);
        self.known.push(known.clone());
        if self.known.len() > KNOWN_RUNS {
            self.known.remove(0);
        }
        let mut samples = 0;
        for e in self.inflight.values_mut() {
            if !e.acked && *e.boot_id == *ack.boot_id && known.covers(e.first, e.end) {
                e.acked = true;
                samples += e.samples;
            }
        }
        self.advance()?;
        Ok(samples)
    }

    /// The batch at `pos` is durable elsewhere (a Kafka delivery report);
    /// returns its samples if it was in flight.
    ///
    /// # Errors
    /// Disk errors while releasing acknowledged segments.
    pub fn ack_position(&mut self, pos: Position) -> Result<u64, SpoolError> {
        let samples = match self.inflight.get_mut(&pos) {
            Some(e) if !e.acked => {
                e.acked = true;
                e.samples
            }
            _ => 0,
        };
        self.advance()?;
        Ok(samples)
    }

    /// Moves the acknowledged position over acknowledged batches at the head.
    fn advance(&mut self) -> Result<(), SpoolError> {
        let before = self.acked;
        loop {
            let p = self.normalize(self.acked);
            self.acked = p;
            match self.inflight.get(&p) {
                Some(e) if e.acked => {
                    let next = e.next;
                    self.inflight.remove(&p);
                    self.acked = next;
                    self.pending = self.pending.saturating_sub(1);
                }
                _ => break,
            }
        }
        if self.acked != before {
            self.head = None;
            self.release_acked_segments()?;
        }
        Ok(())
    }

    /// Batches not yet acknowledged (on disk, from the acknowledged position on).
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Batches sent and waiting for an ack.
    #[must_use]
    pub fn inflight(&self) -> usize {
        self.inflight.values().filter(|e| !e.acked).count()
    }

    /// Bytes on disk.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.total_bytes()
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// The acknowledged position.
    #[must_use]
    pub fn acked(&self) -> Position {
        self.acked
    }

    /// Where quarantined segments go.
    #[must_use]
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine_dir
    }

    /// Every unacknowledged batch, oldest first, streamed from disk (tests and tools).
    ///
    /// # Errors
    /// Disk errors.
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

    /// Syncs and persists the cursor (clean shutdown).
    ///
    /// # Errors
    /// Disk errors.
    pub fn close(mut self) -> Result<u64, SpoolError> {
        self.sync()?;
        self.persist_cursor()?;
        Ok(self.pending)
    }
}

#[cfg(test)]
mod tests;
