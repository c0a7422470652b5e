//! The ack marks a telemetry write moves: the seq ranges its batches cover,
//! applied to each run's stored mark (both backends share these rules).

use std::collections::HashMap;

use crate::store::acks::RunMark;

/// The seq range one batch covered, for the ack watermark of its run:
/// `[start, end)` is handled (stored, or refused by a value rule) and the
/// agent will never send anything below `low_water` again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRange {
    pub node_id: String,
    pub boot_id: String,
    pub start: u64,
    pub end: u64,
    pub low_water: u64,
}

/// What a write committed: rows inserted and the new ack mark of each run.
#[derive(Debug, Default)]
pub struct Written {
    pub inserted: u64,
    pub marks: Vec<(String, String, RunMark)>,
}

/// The distinct runs of `runs`, sorted: row locks are always taken in this
/// order, so concurrent writers (replicas) cannot deadlock on them.
pub(super) fn run_keys(runs: &[RunRange]) -> Vec<(&str, &str)> {
    let mut keys: Vec<(&str, &str)> = runs.iter().map(|r| (r.node_id.as_str(), r.boot_id.as_str())).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Applies `runs` to the stored marks; returns the new marks in key order.
pub(super) fn apply_runs(
    keys: &[(&str, &str)],
    mut stored: HashMap<(String, String), RunMark>,
    runs: &[RunRange],
) -> Vec<(String, String, RunMark)> {
    for r in runs {
        if let Some(m) = stored.get_mut(&(r.node_id.clone(), r.boot_id.clone())) {
            m.commit(r.start, r.end, r.low_water);
        }
    }
    keys.iter()
        .filter_map(|&(n, b)| {
            let key = (n.to_owned(), b.to_owned());
            stored.remove(&key).map(|m| (key.0, key.1, m))
        })
        .collect()
}

/// Ranges a mark keeps in `ack_ranges` at most; beyond, the highest are
/// forgotten (their batches are resent, as they are not acknowledged).
pub(super) const STORED_RANGES: usize = 1024;

/// Marks as stored: `ack_state` rows (-1: nothing yet) and their ranges.
pub(super) fn stored_marks(
    state: Vec<(String, String, i64)>,
    ranges: Vec<(String, String, i64, i64)>,
) -> HashMap<(String, String), RunMark> {
    let mut by_run: HashMap<(String, String), Vec<(u64, u64)>> = HashMap::new();
    for (n, b, s, e) in ranges {
        if let (Ok(s), Ok(e)) = (u64::try_from(s), u64::try_from(e)) {
            by_run.entry((n, b)).or_default().push((s, e));
        }
    }
    state
        .into_iter()
        .map(|(n, b, up_to)| {
            let next = u64::try_from(up_to.saturating_add(1)).unwrap_or(0);
            let ranges = by_run.remove(&(n.clone(), b.clone())).unwrap_or_default();
            ((n, b), RunMark::new(next, ranges))
        })
        .collect()
}
