//! Opening the log after whatever happened to the node: acknowledged
//! segments are deleted, a torn tail of the last segment is truncated, a
//! corrupt sealed segment is quarantined with its intact prefix kept, the
//! acknowledged position is read back, and appends go to a fresh segment.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::time::Instant;

use super::log::{Log, SegInfo, create_segment, decode_cursor, seg_name, sync_dir};
use super::segment::{self, ScanEnd};
use super::types::{Position, SpoolConfig, SpoolError, SpoolStats, io_err};

/// The acknowledged position as the cursor file says (a damaged one is logged and ignored).
fn read_cursor(path: &Path) -> Option<Position> {
    let b = fs::read(path).ok()?;
    let c = decode_cursor(&b);
    if c.is_none() {
        tracing::error!(path = %path.display(), "Spool cursor is damaged; resending from the oldest segment.");
    }
    c
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
    sync_dir(qdir)?;
    let mut src = File::open(&dest).map_err(io_err(&dest))?;
    let tmp = path.with_extension("salvage");
    let mut out = File::create(&tmp).map_err(io_err(&tmp))?;
    std::io::copy(&mut std::io::Read::take(&mut src, good), &mut out).map_err(io_err(&tmp))?;
    out.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    fleet_durable::sync_parent(path).map_err(io_err(path))
}

/// The segments left, and the intact records of each (by segment id).
type Scanned = (Vec<SegInfo>, Vec<(u64, u64)>);

/// The segments that hold unacknowledged data, each scanned and repaired,
/// with its count of intact records (counting the backlog needs no second pass).
fn scan_segments(
    seg_dir: &Path,
    quarantine_dir: &Path,
    cursor: Option<Position>,
    stats: &mut SpoolStats,
) -> Result<Scanned, SpoolError> {
    let mut ids: Vec<u64> = fs::read_dir(seg_dir)
        .map_err(io_err(seg_dir))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
        })
        .collect();
    ids.sort_unstable();
    let mut segments = Vec::with_capacity(ids.len());
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
                quarantine(&path, quarantine_dir, at, scan.file_len, reason)?;
                stats.quarantined_segments += 1;
                stats.quarantined_bytes += scan.file_len - at;
                at
            }
        };
        segments.push(SegInfo { id, len });
        records.push((id, scan.records));
    }
    Ok((segments, records))
}

/// Where delivery resumes: the cursor, inside the segments that are left.
fn start_position(segments: &[SegInfo], cursor: Option<Position>, next_id: u64) -> Position {
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
    acked
}

impl Log {
    /// Opens (or creates) the log in `dir`: truncates a torn tail,
    /// quarantines corrupt segments, reads the acknowledged position, enforces
    /// the disk budget, and starts a fresh segment for appends.
    ///
    /// # Errors
    /// When the directory cannot be created, read or written.
    pub(super) fn open(dir: &Path, cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let seg_dir = dir.join("segments");
        let quarantine_dir = dir.join("quarantine");
        fs::create_dir_all(&seg_dir).map_err(io_err(&seg_dir))?;
        fs::create_dir_all(&quarantine_dir).map_err(io_err(&quarantine_dir))?;
        let cursor_path = dir.join("cursor");
        let cursor = read_cursor(&cursor_path);
        let mut stats = SpoolStats::default();
        let (mut segments, records) = scan_segments(&seg_dir, &quarantine_dir, cursor, &mut stats)?;
        // A fresh active segment: never append after bytes a crash may have left.
        let next_id = segments.last().map_or(1, |s| s.id + 1).max(cursor.map_or(0, |c| c.seg));
        let (writer, info) = create_segment(&seg_dir, next_id)?;
        segments.push(info);
        let acked = start_position(&segments, cursor, next_id);
        let mut log = Log {
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
            reader: None,
            buf: Vec::new(),
            boots: Vec::new(),
            head: None,
            stats,
        };
        log.acked = log.normalize(log.acked);
        let head = log.acked;
        log.pending = log.count_records_in_segment_from(head)?
            + records.iter().filter(|(id, _)| *id > head.seg).map(|(_, n)| n).sum::<u64>();
        // Nothing is in flight yet, so the dropped segments concern no one else.
        log.enforce_budget()?;
        log.persist_cursor()?;
        Ok(log)
    }
}
