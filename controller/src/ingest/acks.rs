//! End-to-end ack watermarks: per agent run, the highest seq such that every
//! seq from 0 up to it is committed. Batches committed out of order wait as
//! ranges until the gap below them fills; an agent's `low_water_seq` says
//! which gaps will never fill (the agent dropped them), so the mark moves past.

use std::collections::{BTreeMap, HashMap};

/// Ranges above the watermark remembered per run at most; beyond, the
/// highest are forgotten (their batches are resent, as they are not acked).
const MAX_RANGES: usize = 4096;
/// Runs remembered per node at most (the oldest is forgotten first).
const MAX_RUNS_PER_NODE: usize = 4;

/// Watermark of one agent run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunMark {
    /// Every seq in 0..next is committed.
    pub next: u64,
    /// Committed ranges [start, end) above `next`.
    ranges: BTreeMap<u64, u64>,
}

impl RunMark {
    /// A mark where 0..next is committed.
    #[must_use]
    pub fn from_next(next: u64) -> Self {
        Self { next, ranges: BTreeMap::new() }
    }

    /// Records a committed range [start, end) and the agent's low water mark.
    pub fn commit(&mut self, start: u64, end: u64, low_water: u64) {
        if low_water > self.next {
            self.next = low_water;
        }
        if end > self.next {
            let start = start.max(self.next);
            let e = self.ranges.entry(start).or_insert(end);
            *e = (*e).max(end);
        }
        // Absorb every range that now touches the mark.
        while let Some((&s, &e)) = self.ranges.first_key_value() {
            if s > self.next {
                break;
            }
            self.ranges.pop_first();
            self.next = self.next.max(e);
        }
        while self.ranges.len() > MAX_RANGES {
            self.ranges.pop_last();
        }
    }

    /// The lowest `n` committed ranges above the watermark, `[start, end)`.
    pub fn ranges(&self, n: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().take(n).map(|(&s, &e)| (s, e))
    }

    /// The ack to publish: highest contiguous committed seq, if any.
    #[must_use]
    pub fn up_to(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }
}

/// All runs' marks, keyed by node, then boot.
#[derive(Debug, Default)]
pub struct AckTracker {
    nodes: HashMap<String, Vec<(String, RunMark)>>,
}

impl AckTracker {
    /// The mark of a run, if it is known in memory.
    #[must_use]
    pub fn get(&self, node_id: &str, boot_id: &str) -> Option<&RunMark> {
        self.nodes.get(node_id)?.iter().find(|(b, _)| b == boot_id).map(|(_, m)| m)
    }

    /// Stores a run's mark, forgetting the node's oldest run beyond the cap.
    pub fn put(&mut self, node_id: &str, boot_id: &str, mark: RunMark) {
        let runs = self.nodes.entry(node_id.to_owned()).or_default();
        if let Some(pos) = runs.iter().position(|(b, _)| b == boot_id) {
            runs.remove(pos);
        }
        runs.push((boot_id.to_owned(), mark));
        if runs.len() > MAX_RUNS_PER_NODE {
            runs.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_out_of_order_commits() {
        let mut m = RunMark::default();
        assert_eq!(m.up_to(), None);
        m.commit(0, 10, 0);
        assert_eq!(m.up_to(), Some(9));
        m.commit(20, 30, 0);
        assert_eq!(m.up_to(), Some(9));
        assert_eq!(m.ranges(8).collect::<Vec<_>>(), [(20, 30)]);
        m.commit(10, 20, 0);
        assert_eq!(m.up_to(), Some(29));
        m.commit(5, 15, 0); // duplicate
        assert_eq!(m.up_to(), Some(29));
    }

    #[test]
    fn low_water_moves_past_gaps_the_agent_gave_up() {
        let mut m = RunMark::default();
        m.commit(0, 10, 0);
        m.commit(50, 60, 40);
        // 10..40 was dropped by the agent; 40..50 is still on its way.
        assert_eq!(m.up_to(), Some(39));
        m.commit(40, 50, 40);
        assert_eq!(m.up_to(), Some(59));
    }

    #[test]
    fn tracker_keeps_a_few_runs_per_node() {
        let mut t = AckTracker::default();
        for b in 0..6 {
            t.put("n", &b.to_string(), RunMark::from_next(b));
        }
        assert!(t.get("n", "0").is_none());
        assert_eq!(t.get("n", "5").unwrap().next, 5);
    }
}
