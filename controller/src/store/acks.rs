//! End-to-end ack watermarks: per agent run, the highest seq such that every
//! seq from 0 up to it is committed. Batches committed out of order wait as
//! ranges until the gap below them fills; an agent's `low_water_seq` says
//! which gaps will never fill (the agent dropped them), so the mark moves past.
//!
//! The marks live in the database (`ack_state`, `ack_ranges`) and are
//! updated in the transaction that commits the rows, under a row lock, so
//! several controller replicas writing one node's batches agree on them.

use std::collections::BTreeMap;

/// Ranges above the watermark remembered per run at most; beyond, the
/// highest are forgotten (their batches are resent, as they are not acked).
const MAX_RANGES: usize = 4096;

/// Watermark of one agent run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunMark {
    /// Every seq in 0..next is committed.
    pub next: u64,
    /// Committed ranges [start, end) above `next`.
    ranges: BTreeMap<u64, u64>,
}

impl RunMark {
    /// A mark where 0..next and the given ranges are committed.
    #[must_use]
    pub fn new(next: u64, ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut m = Self { next, ranges: BTreeMap::new() };
        for (s, e) in ranges {
            m.commit(s, e, 0);
        }
        m
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

    /// Number of committed ranges above the watermark.
    #[must_use]
    pub fn range_count(&self) -> usize {
        self.ranges.len()
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
    fn rebuilt_from_stored_parts() {
        let m = RunMark::new(10, [(20, 30), (10, 12)]);
        assert_eq!(m.up_to(), Some(11));
        assert_eq!(m.ranges(8).collect::<Vec<_>>(), [(20, 30)]);
        assert_eq!(m.range_count(), 1);
    }
}
