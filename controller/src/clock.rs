//! The time security decisions are made at (bootstrap-token expiry): the
//! wall clock, but never earlier than a high-water mark the controller keeps
//! in its store. At start the mark is read back and time runs on from it by
//! the monotonic clock, so a wall clock set back (a day, across a restart, or
//! while running) cannot make an expired token valid again. A wall clock set
//! forward wins at once: tokens then end early, the safe direction, and the
//! mark keeps the later time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// How often the running controller writes the high-water mark (a restart
/// with the wall clock set back can gain at most this much).
pub const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Wall-clock time that never runs backwards below what was seen.
#[derive(Debug)]
pub struct Clock {
    /// The mark at start (or the wall clock then, if later), in ms since the epoch...
    base_ms: i64,
    /// ...and the monotonic instant it was taken at.
    base: Instant,
    /// The latest time handed out (for the next persisted mark).
    seen_ms: AtomicI64,
}

impl Clock {
    /// A clock that starts at `high_water_ms` (read from the store) or the
    /// wall clock, whichever is later.
    #[must_use]
    pub fn new(high_water_ms: i64) -> Self {
        Self::at(high_water_ms, fleet_proto::now_unix_ms())
    }

    fn at(high_water_ms: i64, wall_ms: i64) -> Self {
        let base_ms = high_water_ms.max(wall_ms);
        Self { base_ms, base: Instant::now(), seen_ms: AtomicI64::new(base_ms) }
    }

    /// Now, in ms since the epoch: the wall clock, or the mark run on by the
    /// monotonic clock if the wall clock is behind it.
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        self.now_with_wall(fleet_proto::now_unix_ms())
    }

    fn now_with_wall(&self, wall_ms: i64) -> i64 {
        let ran = i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX);
        let now = wall_ms.max(self.base_ms.saturating_add(ran));
        self.seen_ms.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// The latest time handed out: what to persist as the next mark.
    #[must_use]
    pub fn high_water_ms(&self) -> i64 {
        self.now_ms().max(self.seen_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const T: i64 = 1_800_000_000_000;

    #[test]
    fn a_wall_clock_set_back_cannot_take_time_below_the_mark() {
        // Restarted with the wall clock a day behind the mark.
        let c = Clock::at(T, T - DAY);
        let now = c.now_with_wall(T - DAY);
        assert!((T..T + 60_000).contains(&now), "{now}");
        // Set back again while running: still not below.
        assert!(c.now_with_wall(T - 2 * DAY) >= T);
        assert!(c.high_water_ms() >= T);
    }

    #[test]
    fn a_wall_clock_set_forward_wins_at_once() {
        let c = Clock::at(T, T);
        assert_eq!(c.now_with_wall(T + DAY), T + DAY);
        assert!(c.high_water_ms() >= T + DAY, "the mark keeps the later time");
    }

    #[test]
    fn a_first_start_runs_on_the_wall_clock() {
        let c = Clock::at(0, T);
        let now = c.now_with_wall(T + 5);
        assert_eq!(now, T + 5);
    }
}
