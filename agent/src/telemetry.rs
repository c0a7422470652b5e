//! Telemetry on the node: the `[telemetry]` settings (sampling, batching,
//! acknowledgement) and the batcher that numbers samples per boot and cuts
//! them into `TelemetryBatch`es.

use std::time::Duration;

use fleet_proto::v1::{Sample, TelemetryBatch};
use prost::Message;
use serde::Deserialize;

use crate::AgentError;

/// `[telemetry]`: sampling and delivery.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Sampling interval. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Batch cut interval. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Samples per batch at most. Default 512.
    pub max_batch_samples: usize,
    /// Resend after this long without the controller's ack. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Status republish interval. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// Wait for acks at shutdown. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            flush_interval: Duration::from_secs(1),
            max_batch_samples: 512,
            ack_timeout: Duration::from_secs(15),
            status_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl TelemetryConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), AgentError> {
        for (key, d) in [
            ("telemetry.interval", self.interval),
            ("telemetry.flush_interval", self.flush_interval),
            ("telemetry.ack_timeout", self.ack_timeout),
            ("telemetry.status_interval", self.status_interval),
        ] {
            if d < Duration::from_millis(10) {
                return Err(AgentError::Invalid(format!("key `{key}`: {d:?} is too short; use at least 10ms")));
            }
        }
        if self.max_batch_samples == 0 {
            return Err(AgentError::Invalid("key `telemetry.max_batch_samples` must be at least 1".into()));
        }
        Ok(())
    }
}

/// Numbers samples per boot and cuts them into batches that fit the uplink.
pub struct Batcher {
    node_id: String,
    boot_id: String,
    /// The seq of the next sample; seqs run on without a gap for the whole boot.
    next_seq: u64,
    pending: Vec<Sample>,
    max_samples: usize,
    max_bytes: usize,
}

impl Batcher {
    /// A batcher for this boot: batches of at most `max_samples` samples whose
    /// encoding fits `max_bytes`.
    #[must_use]
    pub fn new(node_id: &str, boot_id: &str, max_samples: usize, max_bytes: usize) -> Self {
        Self {
            node_id: node_id.to_owned(),
            boot_id: boot_id.to_owned(),
            next_seq: 0,
            pending: Vec::new(),
            max_samples,
            max_bytes,
        }
    }

    /// Takes samples; true when a whole batch waits (cut it now).
    pub fn push(&mut self, samples: Vec<Sample>) -> bool {
        self.pending.extend(samples);
        self.pending.len() >= self.max_samples
    }

    /// Cuts everything taken so far into batches, numbered on from the last.
    pub fn cut(&mut self) -> Vec<TelemetryBatch> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let samples = std::mem::take(&mut self.pending);
        cut_batches(&self.node_id, &self.boot_id, &mut self.next_seq, samples, self.max_samples, self.max_bytes)
    }
}

/// Cuts samples into batches of at most `max_samples` whose encoding fits `max_bytes`.
fn cut_batches(
    node_id: &str,
    boot_id: &str,
    next_seq: &mut u64,
    samples: Vec<Sample>,
    max_samples: usize,
    max_bytes: usize,
) -> Vec<TelemetryBatch> {
    let mut out = Vec::new();
    let mut rest = samples;
    while !rest.is_empty() {
        let mut take = rest.len().min(max_samples.max(1));
        loop {
            let b = TelemetryBatch {
                node_id: node_id.to_owned(),
                boot_id: boot_id.to_owned(),
                first_seq: *next_seq,
                samples: rest[..take].to_vec(),
                low_water_seq: 0,
            };
            if b.encoded_len() <= max_bytes || take == 1 {
                *next_seq += take as u64;
                rest.drain(..take);
                out.push(b);
                break;
            }
            take /= 2;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_numbered_contiguously_and_fit() {
        let samples: Vec<Sample> =
            (0..100).map(|i| Sample { metric: "cpu.usage_pct".into(), value: f64::from(i), time_unix_ms: 1 }).collect();
        let mut seq = 7;
        let b = cut_batches("n", "b", &mut seq, samples, 30, 600);
        assert_eq!(seq, 107);
        let mut expect = 7;
        for batch in &b {
            assert_eq!(batch.first_seq, expect);
            assert!(batch.encoded_len() <= 600);
            expect += batch.samples.len() as u64;
        }
        assert!(b.iter().all(|x| x.samples.len() <= 30));
    }

    #[test]
    fn the_batcher_numbers_on_across_cuts() {
        let s = |n: usize| vec![Sample { metric: "m".into(), value: 1.0, time_unix_ms: 1 }; n];
        let mut b = Batcher::new("n", "boot", 4, 1 << 20);
        assert!(!b.push(s(3)));
        assert!(b.push(s(2)));
        let first = b.cut();
        assert_eq!(first.iter().map(|x| (x.first_seq, x.samples.len())).collect::<Vec<_>>(), [(0, 4), (4, 1)]);
        assert!(b.cut().is_empty());
        b.push(s(1));
        assert_eq!(b.cut()[0].first_seq, 5);
    }
}
