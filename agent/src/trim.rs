//! Gives back, once start-up is over, the pages of program code that only
//! start-up used. Parsing flags and config, loading the enrollment, opening
//! the spool and connecting touch several megabytes of code (ours and the
//! shared libraries') that the 1 Hz loop never runs again; the kernel keeps
//! them mapped, and they count in the agent's RSS, until memory runs short.
//! Here the agent unmaps its read-only, unmodified file mappings
//! (`madvise(MADV_DONTNEED)`): the pages stay in the page cache, and the ones
//! the loop does use come back at their next touch (a minor fault). What this
//! saves is measured in BENCHMARKS.md ("The agent under 6 MB").

use std::fs;

/// What one pass gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub mappings: usize,
    pub bytes: u64,
}

/// A mapping of `/proc/self/smaps` that may be dropped: read-only (or
/// read-execute), private, backed by a file, and never written (no anonymous
/// pages: relocated data such as RELRO is written once at start and must stay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// The droppable mappings described by `smaps`.
fn droppable(smaps: &str) -> Vec<Droppable> {
    let mut out = Vec::new();
    let mut current: Option<Droppable> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let ok = (perms == "r-xp" || perms == "r--p") && path.starts_with('/');
            current = ok.then_some(Droppable { start: a, len: b.saturating_sub(a) });
        } else if first == "Anonymous:" {
            let anon_kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(1);
            if let Some(d) = current.take()
                && anon_kb == 0
            {
                out.push(d);
            }
        }
    }
    out
}

/// Drops the droppable mappings' pages from this process's page tables, once
/// per process (several agents in one process, as in fleet-local, ask once each).
#[must_use]
pub fn release_startup_pages() -> Trimmed {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return Trimmed::default();
    }
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else { return Trimmed::default() };
    let mut t = Trimmed::default();
    for d in droppable(&smaps) {
        if advise_dontneed(d) {
            t.mappings += 1;
            t.bytes += d.len as u64;
        }
    }
    t
}

// SAFETY (why this crate allows unsafe code here only): `d` is a whole
// mapping of this process that is private, read-only, file-backed and holds no
// anonymous (written) page, as /proc/self/smaps said a moment ago; dropping the
// page-table entries of such a mapping cannot change what is read there: the
// next access maps the same file page again. No Rust object lives in it.
#[allow(unsafe_code)]
fn advise_dontneed(d: Droppable) -> bool {
    let r = unsafe { libc::madvise(d.start as *mut libc::c_void, d.len, libc::MADV_DONTNEED) };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5600aa000000-5600aa100000 r--p 00000000 fd:01 123 /usr/bin/fleet-agent
Size:               1024 kB
Anonymous:             0 kB
5600aa100000-5600aa800000 r-xp 00100000 fd:01 123 /usr/bin/fleet-agent
Anonymous:             0 kB
5600aa800000-5600aa900000 r--p 00800000 fd:01 123 /usr/bin/fleet-agent
Anonymous:           600 kB
5600aa900000-5600aa910000 rw-p 00900000 fd:01 123 /usr/bin/fleet-agent
Anonymous:            64 kB
5600ab000000-5600ab100000 rw-p 00000000 00:00 0 [heap]
Anonymous:           268 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0
Anonymous:             0 kB
";

    #[test]
    fn only_unwritten_read_only_file_mappings_are_dropped() {
        let d = droppable(SMAPS);
        assert_eq!(
            d,
            [
                Droppable { start: 0x5600_aa00_0000, len: 0x10_0000 },
                Droppable { start: 0x5600_aa10_0000, len: 0x70_0000 }
            ],
            "the relocated (written) r--p mapping, rw data, heap and anonymous mappings stay"
        );
    }

    #[test]
    fn releasing_keeps_the_program_running() {
        let t = release_startup_pages();
        assert!(t.mappings > 0 && t.bytes > 0, "{t:?}");
        assert_eq!(release_startup_pages(), Trimmed::default(), "once per process");
        // Code and read-only data still work: they come back on use.
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[255], "ff");
    }
}
