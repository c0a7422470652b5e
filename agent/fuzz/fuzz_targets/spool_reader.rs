//! Arbitrary bytes as a spool segment: scanning never panics and never
//! allocates beyond the record limit, and opening a spool whose segment holds
//! them always succeeds and replays only intact records.
#![no_main]

use std::io::Cursor;
use std::time::Instant;

use fleet_agent::spool::segment::{self, MAX_RECORD};
use fleet_agent::spool::{Spool, SpoolConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scan = segment::scan_reader(Cursor::new(data), data.len() as u64).expect("in-memory reads cannot fail");
    assert!(scan.valid_len <= data.len() as u64);

    let mut buf = Vec::new();
    let mut r = Cursor::new(data);
    while let Ok(segment::Outcome::Record(_)) = segment::read_record(&mut r, &mut buf) {
        assert!(buf.capacity() <= MAX_RECORD as usize * 2);
    }

    // The same bytes as the middle segment of a real spool directory.
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = dir.path().join("segments");
    std::fs::create_dir_all(&segs).expect("mkdir");
    std::fs::write(segs.join(format!("{:016x}.seg", 1)), data).expect("write");
    std::fs::write(segs.join(format!("{:016x}.seg", 2)), b"").expect("write");
    let mut spool = Spool::open(dir.path(), SpoolConfig::default()).expect("the spool always opens");
    spool.on_connect();
    let _ = spool.replay(Instant::now(), 1024).expect("replay reads what open kept");
});
