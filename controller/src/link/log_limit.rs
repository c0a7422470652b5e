//! Logs about one node at most once a minute, so a flood of bad messages
//! cannot flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Logs a bad message at most once per node per minute.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: HashMap<String, Instant>,
}

impl LogLimiter {
    /// Entries kept at most; beyond, the map is cleared (a burst of logs at worst).
    const MAX: usize = 10_000;

    /// True when a message about `node` may be logged now.
    pub fn allow(&mut self, node: &str) -> bool {
        let now = Instant::now();
        if self.last.len() > Self::MAX {
            self.last.clear();
        }
        match self.last.get(node) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
            _ => {
                self.last.insert(node.to_owned(), now);
                true
            }
        }
    }
}
