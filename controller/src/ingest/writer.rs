//! The telemetry writer: gathers queued batches into one bulk write (by row
//! count and delay), commits rows and ack watermarks in one transaction, then
//! publishes each affected run's `Ack` so agents can forget what is safe.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{Ack, SeqRange, TelemetryBatch};
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acks::{AckTracker, RunMark};
use crate::config::IngestConfig;
use crate::metrics::{Metrics, ReasonLabel};
use crate::registry::Registry;
use crate::store::{AckMark, Store};

/// Committed ranges above the watermark sent in each ack, at most.
const ACK_RANGES: usize = 64;

/// A batch for the writer; `done` (Kafka) hears whether its rows are committed.
#[derive(Debug)]
pub struct WriteItem {
    pub batch: TelemetryBatch,
    pub done: Option<tokio::sync::oneshot::Sender<bool>>,
    /// When it entered the queue: the write lag metric is measured from here.
    pub queued_at: Instant,
}

impl WriteItem {
    /// A batch whose outcome `done` hears (Kafka).
    #[must_use]
    pub fn with_done(batch: TelemetryBatch, done: tokio::sync::oneshot::Sender<bool>) -> Self {
        Self { batch, done: Some(done), queued_at: Instant::now() }
    }
}

impl From<TelemetryBatch> for WriteItem {
    fn from(batch: TelemetryBatch) -> Self {
        Self { batch, done: None, queued_at: Instant::now() }
    }
}

/// Everything the writer needs.
pub struct Writer {
    pub store: Store,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Used only with `try_publish`, so the writer never waits on the broker.
    pub client: AsyncClient,
    pub cfg: IngestConfig,
}

impl Writer {
    /// Writes until the queue closes or `shutdown` fires; on shutdown the
    /// batches already queued are still written.
    pub async fn run(self, mut rx: mpsc::Receiver<WriteItem>, shutdown: CancellationToken) {
        let mut tracker = AckTracker::default();
        loop {
            let first = tokio::select! {
                b = rx.recv() => b,
                () = shutdown.cancelled() => { rx.close(); rx.recv().await }
            };
            let Some(first) = first else { break };
            let mut rows = first.batch.samples.len();
            let mut group = vec![first];
            let deadline = tokio::time::Instant::now() + self.cfg.max_write_delay;
            while rows < self.cfg.max_rows_per_write {
                let next = tokio::select! {
                    b = rx.recv() => b,
                    () = tokio::time::sleep_until(deadline) => None,
                };
                match next {
                    Some(b) => {
                        rows += b.batch.samples.len();
                        group.push(b);
                    }
                    None => break,
                }
            }
            self.metrics.ingest_queue.dec_by(i64::try_from(group.len()).unwrap_or(0));
            let oldest = group.iter().map(|w| w.queued_at).min();
            let (batches, dones): (Vec<TelemetryBatch>, Vec<_>) = group.into_iter().map(|w| (w.batch, w.done)).unzip();
            let ok = self.write_group(batches, &mut tracker).await.is_ok();
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

    async fn write_group(&self, group: Vec<TelemetryBatch>, tracker: &mut AckTracker) -> Result<(), ()> {
        // Non-finite values have no place in SQL; they are refused and counted,
        // yet their seqs count as handled so the ack can move on.
        let ranges: Vec<(String, String, u64, u64, u64)> = group
            .iter()
            .map(|b| {
                (
                    b.node_id.clone(),
                    b.boot_id.clone(),
                    b.first_seq,
                    b.first_seq + b.samples.len() as u64,
                    b.low_water_seq,
                )
            })
            .collect();
        let non_finite: u64 =
            group.iter().map(|b| b.samples.iter().filter(|s| !s.value.is_finite()).count() as u64).sum();
        let mut group = if non_finite > 0 { split_finite(group) } else { group };
        // Clocks run ahead on nodes without RTC or NTP: clamp, keep the sample, count it.
        let limit = fleet_proto::now_unix_ms()
            .saturating_add(i64::try_from(self.cfg.max_future_skew.as_millis()).unwrap_or(i64::MAX));
        let clamp_to = fleet_proto::now_unix_ms();
        let mut clamped = 0u64;
        for s in group.iter_mut().flat_map(|b| b.samples.iter_mut()) {
            if s.time_unix_ms > limit {
                s.time_unix_ms = clamp_to;
                clamped += 1;
            }
        }
        if clamped > 0 {
            self.metrics.dropped.get_or_create(&ReasonLabel { reason: "clamped_future_time" }).inc_by(clamped);
        }
        if non_finite > 0 {
            self.metrics.dropped.get_or_create(&ReasonLabel { reason: "non_finite_value" }).inc_by(non_finite);
        }

        // New marks, tentatively: applied to the tracker only after commit.
        let mut marks: HashMap<(String, String), RunMark> = HashMap::new();
        for (node, boot, start, end, low) in &ranges {
            let key = (node.clone(), boot.clone());
            if !marks.contains_key(&key) {
                let mark = match tracker.get(node, boot) {
                    Some(m) => m.clone(),
                    None => match self.store.load_ack(node, boot).await {
                        Ok(v) => RunMark::from_next(v.map_or(0, |s| s + 1)),
                        Err(e) => {
                            self.metrics.write_errors.inc();
                            tracing::error!(error = %e, "Cannot read ack state; batches will be resent.");
                            return Err(());
                        }
                    },
                };
                marks.insert(key.clone(), mark);
            }
            if let Some(m) = marks.get_mut(&key) {
                m.commit(*start, *end, *low);
            }
        }
        let ack_marks: Vec<AckMark> = marks
            .iter()
            .filter_map(|((n, b), m)| {
                m.up_to().map(|u| AckMark { node_id: n.clone(), boot_id: b.clone(), up_to_seq: u })
            })
            .collect();

        let rows: u64 = group.iter().map(|b| b.samples.len() as u64).sum();
        let started = Instant::now();
        match self.store.write(&group, &ack_marks).await {
            Ok(inserted) => {
                self.metrics.write_seconds.observe(started.elapsed().as_secs_f64());
                self.metrics.rows_written.inc_by(inserted);
                self.metrics.rows_duplicate.inc_by(rows.saturating_sub(inserted));
                self.metrics.batches_written.inc_by(group.len() as u64);
                let mut per_node: HashMap<&str, u64> = HashMap::new();
                for b in &group {
                    *per_node.entry(b.node_id.as_str()).or_default() += b.samples.len() as u64;
                }
                for (node, n) in per_node {
                    self.registry.record_samples(node, n);
                }
                for ((node, boot), mark) in marks {
                    if let Some(up_to) = mark.up_to() {
                        let committed = mark.ranges(ACK_RANGES).map(|(start, end)| SeqRange { start, end }).collect();
                        let ack = Ack { boot_id: boot.clone(), up_to_seq: up_to, committed };
                        match self.client.try_publish(
                            node_topic(&node, Channel::Ack),
                            QoS::AtLeastOnce,
                            true,
                            ack.encode_to_vec(),
                        ) {
                            Ok(()) => {
                                self.metrics.acks_published.inc();
                            }
                            Err(_) => self.metrics.drop_msg("ack_queue_full"),
                        }
                    }
                    tracker.put(&node, &boot, mark);
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, rows, "Telemetry write failed; agents will resend.");
                Err(())
            }
        }
    }
}

/// Splits batches around non-finite samples so every kept sample keeps its seq.
fn split_finite(group: Vec<TelemetryBatch>) -> Vec<TelemetryBatch> {
    let mut out = Vec::with_capacity(group.len());
    for b in group {
        let mut cur: Option<TelemetryBatch> = None;
        for (i, s) in b.samples.into_iter().enumerate() {
            if s.value.is_finite() {
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
        let out = split_finite(vec![b]);
        assert_eq!(out.iter().map(|b| (b.first_seq, b.samples.len())).collect::<Vec<_>>(), [(10, 1), (12, 2)]);
    }
}
