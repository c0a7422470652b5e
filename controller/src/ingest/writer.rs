//! The telemetry writer: gathers queued batches into one bulk write (by row
//! count and delay), commits rows and ack watermarks in one transaction, then
//! has the link send each affected run's `Ack` so agents can forget what is safe.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_proto::v1::{Ack, SeqRange, TelemetryBatch};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::IngestConfig;
use super::queue::WriteItem;
use crate::ControllerError;
use crate::link::Link;
use crate::metrics::{Metrics, ReasonLabel};
use crate::registry::Registry;
use crate::store::acks::RunMark;
use crate::store::{RunRange, Store};

/// A telemetry write that takes this long is logged (one line, no SQL).
const SLOW_WRITE: Duration = Duration::from_secs(1);

/// Committed ranges above the watermark sent in each ack, at most.
const ACK_RANGES: usize = 64;

/// One of ingest's writers.
pub struct Writer {
    store: Store,
    registry: Registry,
    metrics: Arc<Metrics>,
    /// Sends the acks (never waits: the writer never waits on the broker).
    link: Link,
    cfg: IngestConfig,
    /// Whether the last write stored every row (no redeliveries): then the
    /// next one tries the faster plain insert first.
    optimistic: AtomicBool,
}

/// A group of queued batches taken for one write.
type Group = Vec<WriteItem>;

impl Writer {
    /// A writer into `store` that acknowledges through `link`.
    #[must_use]
    pub fn new(store: Store, registry: Registry, metrics: Arc<Metrics>, link: Link, cfg: IngestConfig) -> Self {
        Self { store, registry, metrics, link, cfg, optimistic: AtomicBool::new(true) }
    }

    /// Writes until the queue closes or `shutdown` fires; on shutdown the
    /// batches already queued are still written. Several writers share `rx`:
    /// one gathers a group while the others write theirs.
    pub async fn run(self, rx: Arc<Mutex<mpsc::Receiver<WriteItem>>>, shutdown: CancellationToken) {
        while let Some(group) = self.gather(&rx, &shutdown).await {
            self.metrics.ingest_queue.dec_by(i64::try_from(group.len()).unwrap_or(0));
            let oldest = group.iter().map(|w| w.queued_at).min();
            let mut permits = Vec::with_capacity(group.len());
            let mut spans = Vec::with_capacity(group.len());
            let (batches, dones): (Vec<TelemetryBatch>, Vec<_>) = group
                .into_iter()
                .map(|w| {
                    permits.push(w.permit);
                    spans.push(w.span);
                    (w.batch, w.done)
                })
                .unzip();
            let ok = self.write_traced(batches, &spans).await.is_ok();
            drop(permits);
            if let Some(t) = oldest {
                self.metrics.ingest_lag_ms.set(i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX));
            }
            for d in dones.into_iter().flatten() {
                let _ = d.send(ok);
            }
            if !ok {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }

    /// The next group: the first batch waits as long as it takes, the rest
    /// until the group has `max_rows_per_write` rows or `max_write_delay`
    /// passed. `None` when the queue is closed and empty.
    async fn gather(&self, rx: &Mutex<mpsc::Receiver<WriteItem>>, shutdown: &CancellationToken) -> Option<Group> {
        let mut rx = rx.lock().await;
        let first = tokio::select! {
            b = rx.recv() => b,
            () = shutdown.cancelled() => { rx.close(); rx.recv().await }
        };
        let first = first?;
        let mut rows = first.batch.samples.len();
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + self.cfg.max_write_delay;
        while rows < self.cfg.max_rows_per_write {
            let next = tokio::select! {
                b = rx.recv() => b,
                () = tokio::time::sleep_until(deadline) => None,
            };
            let Some(b) = next else { break };
            rows += b.batch.samples.len();
            group.push(b);
        }
        Some(group)
    }

    /// [`Self::write_group`] with each batch's trace: a `db.write` span per
    /// batch over the shared write and commit, and its node's ack sent in
    /// `ack.publish` under that node's last batch.
    async fn write_traced(&self, group: Vec<TelemetryBatch>, spans: &[tracing::Span]) -> Result<(), ControllerError> {
        // Not tracing (the spans are disabled): nothing to make per batch on this hot path.
        let traced = || spans.iter().zip(&group).filter(|(s, _)| !s.is_disabled());
        let writes: Vec<tracing::Span> = traced()
            .map(|(s, b)| tracing::debug_span!(parent: s, "db.write", batches = group.len(), node.id = %b.node_id))
            .collect();
        let acks: HashMap<String, tracing::Span> = traced().map(|(s, b)| (b.node_id.clone(), s.clone())).collect();
        let r = self.write_group(group, &acks).await;
        drop(writes);
        r
    }

    async fn write_group(
        &self,
        group: Vec<TelemetryBatch>,
        spans: &HashMap<String, tracing::Span>,
    ) -> Result<(), ControllerError> {
        // Every batch's whole seq range counts as handled for its run's ack,
        // also the samples a value rule refuses below.
        let runs: Vec<RunRange> = group
            .iter()
            .map(|b| RunRange {
                node_id: b.node_id.clone(),
                boot_id: b.boot_id.clone(),
                start: b.first_seq,
                end: b.first_seq + b.samples.len() as u64,
                low_water: b.low_water_seq,
            })
            .collect();
        let group = self.value_rules(group);
        let rows: u64 = group.iter().map(|b| b.samples.len() as u64).sum();
        let started = Instant::now();
        let optimistic = self.optimistic.load(Ordering::Relaxed);
        let written = match self.store.write_opt(&group, &runs, optimistic).await {
            Ok(w) => w,
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, rows, "Telemetry write failed; agents will resend.");
                return Err(e);
            }
        };
        self.optimistic.store(written.inserted == rows, Ordering::Relaxed);
        let took = started.elapsed();
        self.metrics.write_seconds.observe(took.as_secs_f64());
        if took >= SLOW_WRITE {
            // One short line; the statements themselves are never logged
            // (thousands of placeholders under load).
            tracing::warn!(
                kind = "telemetry insert",
                rows,
                batches = group.len(),
                took_ms = took.as_millis() as u64,
                "Slow database write."
            );
        }
        self.metrics.rows_written.inc_by(written.inserted);
        self.metrics.rows_duplicate.inc_by(rows.saturating_sub(written.inserted));
        self.metrics.batches_written.inc_by(group.len() as u64);
        let mut per_node: HashMap<&str, u64> = HashMap::new();
        for b in &group {
            *per_node.entry(b.node_id.as_str()).or_default() += b.samples.len() as u64;
        }
        for (node, n) in per_node {
            self.registry.record_samples(node, n);
        }
        self.acknowledge(written.marks, spans);
        Ok(())
    }

    /// Value rules (docs/schema.md): NaN and infinities have no place in
    /// SQL; a time too far ahead of our clock is refused too (clamping it
    /// would store a different time on each redelivery). Refused samples are
    /// counted by reason.
    fn value_rules(&self, group: Vec<TelemetryBatch>) -> Vec<TelemetryBatch> {
        let limit = fleet_proto::now_unix_ms()
            .saturating_add(i64::try_from(self.cfg.max_future_skew.as_millis()).unwrap_or(i64::MAX));
        let (mut non_finite, mut future) = (0u64, 0u64);
        for s in group.iter().flat_map(|b| &b.samples) {
            if !s.value.is_finite() {
                non_finite += 1;
            } else if s.time_unix_ms > limit {
                future += 1;
            }
        }
        if future > 0 {
            self.metrics.dropped.get_or_create(&ReasonLabel { reason: "future_time" }).inc_by(future);
        }
        if non_finite > 0 {
            self.metrics.dropped.get_or_create(&ReasonLabel { reason: "non_finite_value" }).inc_by(non_finite);
        }
        if non_finite + future > 0 {
            split_keep(group, |s| s.value.is_finite() && s.time_unix_ms <= limit)
        } else {
            group
        }
    }

    /// Each run's committed mark, as an `Ack` to its node.
    fn acknowledge(&self, marks: Vec<(String, String, RunMark)>, spans: &HashMap<String, tracing::Span>) {
        for (node, boot, mark) in marks {
            if let Some(up_to) = mark.up_to() {
                let committed = mark.ranges(ACK_RANGES).map(|(start, end)| SeqRange { start, end }).collect();
                let span = spans.get(&node).map(|s| tracing::debug_span!(parent: s, "ack.publish", up_to_seq = up_to));
                let _in = span.as_ref().map(tracing::Span::enter);
                match self.link.ack(&node, &Ack { boot_id: boot, up_to_seq: up_to, committed }) {
                    Ok(()) => {
                        self.metrics.acks_published.inc();
                    }
                    Err(_) => self.metrics.drop_msg("ack_queue_full"),
                }
            }
        }
    }
}

/// Splits batches around the samples `keep` refuses, so every kept sample keeps its seq.
fn split_keep(group: Vec<TelemetryBatch>, keep: impl Fn(&fleet_proto::v1::Sample) -> bool) -> Vec<TelemetryBatch> {
    let mut out = Vec::with_capacity(group.len());
    for b in group {
        let mut cur: Option<TelemetryBatch> = None;
        for (i, s) in b.samples.into_iter().enumerate() {
            if keep(&s) {
                cur.get_or_insert_with(|| TelemetryBatch {
                    node_id: b.node_id.clone(),
                    boot_id: b.boot_id.clone(),
                    first_seq: b.first_seq + i as u64,
                    samples: Vec::new(),
                    low_water_seq: b.low_water_seq,
                })
                .samples
                .push(s);
            } else if let Some(c) = cur.take() {
                out.push(c);
            }
        }
        out.extend(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::Sample;

    #[test]
    fn split_keeps_seqs() {
        let v = [1.0, f64::NAN, 2.0, 3.0, f64::INFINITY];
        let b = TelemetryBatch {
            node_id: "n".into(),
            boot_id: "b".into(),
            first_seq: 10,
            samples: v.iter().map(|&value| Sample { metric: "m".into(), value, time_unix_ms: 0 }).collect(),
            low_water_seq: 0,
        };
        let out = split_keep(vec![b], |s| s.value.is_finite());
        assert_eq!(out.iter().map(|b| (b.first_seq, b.samples.len())).collect::<Vec<_>>(), [(10, 1), (12, 2)]);
    }
}
