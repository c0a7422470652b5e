use std::fs::{self, OpenOptions};
use std::path::PathBuf;

use fleet_proto::v1::{Sample, SeqRange};
use prost::Message;

use super::*;

fn cfg() -> SpoolConfig {
    SpoolConfig { segment_bytes: 4096, max_bytes: 1 << 20, ..Default::default() }
}

fn batch(boot: &str, first: u64, n: usize) -> TelemetryBatch {
    TelemetryBatch {
        node_id: "n".into(),
        boot_id: boot.into(),
        first_seq: first,
        samples: (0..n).map(|i| Sample { metric: "cpu.usage_pct".into(), value: i as f64, time_unix_ms: 7 }).collect(),
        low_water_seq: 0,
    }
}

fn decode(o: &Outgoing) -> TelemetryBatch {
    TelemetryBatch::decode(o.wire.as_slice()).unwrap()
}

fn ack(boot: &str, up_to: u64) -> Ack {
    Ack { boot_id: boot.into(), up_to_seq: up_to, committed: vec![] }
}

/// Appends `count` batches of 10 samples of run `boot`.
fn fill(s: &mut Spool, boot: &str, count: u64) {
    for i in 0..count {
        s.append(&batch(boot, i * 10, 10)).unwrap();
    }
}

fn firsts(s: &mut Spool) -> Vec<u64> {
    let mut v = Vec::new();
    s.for_each_pending(|b| v.push(b.first_seq)).unwrap();
    v
}

fn segments_in(dir: &Path) -> usize {
    fs::read_dir(dir.join("segments")).unwrap().count()
}

#[test]
fn replay_ack_and_reopen_resend_only_the_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "a", 100);
    assert_eq!(s.pending(), 100);
    s.on_connect();
    let now = Instant::now();
    let sent = s.replay(now, 1000).unwrap();
    assert_eq!(sent.len(), 100);
    assert!(sent.windows(2).all(|w| decode(&w[0]).first_seq < decode(&w[1]).first_seq), "in order");
    assert_eq!(s.ack(&ack("a", 599)).unwrap(), 600);
    assert_eq!(s.pending(), 40);
    s.close().unwrap();
    assert!(segments_in(dir.path()) < 10, "acknowledged segments are deleted");

    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.pending(), 40);
    assert_eq!(firsts(&mut s).first(), Some(&600));
    s.on_connect();
    let sent = s.replay(Instant::now(), 1000).unwrap();
    assert_eq!(sent.len(), 40);
    assert_eq!(decode(&sent[0]).first_seq, 600);
}

#[test]
fn live_batches_go_out_while_the_backlog_replays_at_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "a", 50);
    s.on_connect();
    let now = Instant::now();
    // A live batch is published at once, ahead of the 50 waiting.
    let live = batch("a", 500, 10);
    let appended = s.append(&live).unwrap();
    let out = s.take_live(appended, now).unwrap().expect("live batch published");
    let out = decode(&out);
    assert_eq!((out.first_seq, out.low_water_seq), (500, 0), "the run's oldest held seq");
    // The backlog comes at most `limit` at a time and stops before the live one.
    assert_eq!(s.replay(now, 20).unwrap().len(), 20);
    assert_eq!(s.replay(now, 100).unwrap().len(), 30);
    assert!(s.replay(now, 100).unwrap().is_empty());
    // Acks arrive for everything: the spool empties.
    s.ack(&ack("a", 509)).unwrap();
    assert_eq!(s.pending(), 0);
    assert_eq!(s.inflight(), 0);
}

#[test]
fn ranges_in_the_ack_stop_resends_and_the_head_waits_for_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "a", 3);
    s.on_connect();
    let t0 = Instant::now();
    assert_eq!(s.replay(t0, 10).unwrap().len(), 3);
    // Seqs 0..5 and 10..30 committed; 5..10 (in the head batch) not yet.
    let partial = Ack { boot_id: "a".into(), up_to_seq: 4, committed: vec![SeqRange { start: 10, end: 30 }] };
    assert_eq!(s.ack(&partial).unwrap(), 20);
    assert_eq!(s.pending(), 3, "the head batch (0..10) is not acknowledged");
    let later = t0 + Duration::from_secs(60);
    let again = s.resends(later, Duration::from_secs(10), 10).unwrap();
    assert_eq!(again.iter().map(|o| decode(o).first_seq).collect::<Vec<_>>(), [0]);
    s.ack(&ack("a", 9)).unwrap();
    assert_eq!(s.pending(), 0);
}

#[test]
fn an_older_ack_from_another_replica_takes_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "a", 3);
    s.on_connect();
    assert_eq!(s.replay(Instant::now(), 10).unwrap().len(), 3);
    assert_eq!(s.ack(&ack("a", 19)).unwrap(), 20);
    // Replica B's ack, sent before A's, arrives late.
    assert_eq!(s.ack(&ack("a", 9)).unwrap(), 0);
    assert_eq!(s.pending(), 1);
    s.ack(&ack("a", 29)).unwrap();
    assert_eq!(s.pending(), 0);
}

#[test]
fn torn_tail_is_truncated_and_the_agent_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "a", 5);
    s.close().unwrap();
    // Cut the last non-empty segment in the middle of its last record.
    let seg = newest_nonempty_segment(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 7).unwrap();
    // The spool opened a fresh segment at close: make the cut one the last again.
    remove_empty_segments(dir.path());
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.stats().torn_tails_truncated, 1);
    assert_eq!(s.stats().quarantined_segments, 0);
    assert_eq!(firsts(&mut s), [0, 10, 20, 30]);
}

#[test]
fn corrupt_middle_segment_is_quarantined_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "a", 60); // several 4 KiB segments
    s.close().unwrap();
    let mut segs: Vec<PathBuf> =
        fs::read_dir(dir.path().join("segments")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    assert!(segs.len() >= 4, "{segs:?}");
    let victim = &segs[1];
    let mut bytes = fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(victim, bytes).unwrap();

    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.stats().quarantined_segments, 1);
    assert_eq!(fs::read_dir(s.quarantine_dir()).unwrap().count(), 1);
    let got = firsts(&mut s);
    assert!(got.len() < 60 && got.len() >= 50, "lost only part of one segment: {}", got.len());
    assert_eq!(got.first(), Some(&0));
    assert_eq!(got.last(), Some(&590), "everything after the damage is still there");
    // And it replays without tripping on the damage again.
    s.on_connect();
    assert_eq!(s.replay(Instant::now(), 1000).unwrap().len(), got.len());
}

#[test]
fn disk_budget_drops_the_oldest_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let c = SpoolConfig { segment_bytes: 4096, max_bytes: 16384, ..Default::default() };
    let mut s = Spool::open(dir.path(), c).unwrap();
    fill(&mut s, "a", 200);
    assert!(s.bytes() <= 16384, "{}", s.bytes());
    let st = s.stats();
    assert!(st.dropped_batches > 0 && st.dropped_samples == st.dropped_batches * 10, "{st:?}");
    assert_eq!(st.dropped_batches + s.pending(), 200);
    let got = firsts(&mut s);
    assert_eq!(got.last(), Some(&1990), "the newest are kept");
    // The low-water mark tells the controller where the run now starts.
    s.on_connect();
    let sent = s.replay(Instant::now(), 1).unwrap();
    assert_eq!(decode(&sent[0]).low_water_seq, got[0]);
}

#[test]
fn damaged_cursor_means_resend_everything_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "a", 10);
    s.on_connect();
    s.replay(Instant::now(), 100).unwrap();
    s.ack(&ack("a", 49)).unwrap();
    s.close().unwrap();
    fs::write(dir.path().join("cursor"), b"garbage").unwrap();
    let s = Spool::open(dir.path(), cfg()).unwrap();
    assert!(s.pending() >= 5);
}

#[test]
fn group_commit_policy() {
    let dir = tempfile::tempdir().unwrap();
    let every = SpoolConfig { fsync_interval: Duration::ZERO, ..cfg() };
    let mut s = Spool::open(dir.path(), every).unwrap();
    let base = s.stats().fsyncs;
    fill(&mut s, "a", 10);
    assert_eq!(s.stats().fsyncs - base, 10);

    let dir = tempfile::tempdir().unwrap();
    let timed = SpoolConfig { fsync_interval: Duration::from_secs(3600), fsync_bytes: 1 << 30, ..cfg() };
    let mut s = Spool::open(dir.path(), timed).unwrap();
    let base = s.stats().fsyncs;
    s.append(&batch("a", 0, 10)).unwrap();
    s.maybe_sync(Instant::now()).unwrap();
    assert_eq!(s.stats().fsyncs, base, "not due yet");
    s.maybe_sync(Instant::now() + Duration::from_secs(3601)).unwrap();
    assert_eq!(s.stats().fsyncs, base + 1);
}

fn newest_nonempty_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir.join("segments")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    segs.into_iter().rev().find(|p| fs::metadata(p).unwrap().len() > 0).unwrap()
}

fn remove_empty_segments(dir: &Path) {
    for e in fs::read_dir(dir.join("segments")).unwrap() {
        let p = e.unwrap().path();
        if fs::metadata(&p).unwrap().len() == 0 {
            fs::remove_file(p).unwrap();
        }
    }
}

/// Writes a few real segments as fuzz seeds when FLEET_FUZZ_SEEDS names a directory.
#[test]
fn fuzz_seed_segments() {
    let Ok(out) = std::env::var("FLEET_FUZZ_SEEDS") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg()).unwrap();
    fill(&mut s, "seed", 12);
    s.close().unwrap();
    for (i, e) in fs::read_dir(dir.path().join("segments")).unwrap().enumerate() {
        fs::copy(e.unwrap().path(), Path::new(&out).join(format!("seed-{i}"))).unwrap();
    }
}
