//! Prometheus metrics of the controller, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of `fleet_messages_received_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: &'static str,
}

/// Label of `fleet_messages_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Labels of `fleet_jobs_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub status: &'static str,
    pub site: &'static str,
}

/// Every metric the controller keeps.
pub struct Metrics {
    pub registry: Registry,
    pub received: Family<ChannelLabel, Counter>,
    pub dropped: Family<ReasonLabel, Counter>,
    pub rows_written: Counter,
    pub rows_duplicate: Counter,
    pub batches_written: Counter,
    pub write_seconds: Histogram,
    pub write_errors: Counter,
    pub nodes_online: Gauge,
    pub nodes_known: Gauge,
    pub ingest_queue: Gauge,
    pub ingest_lag_ms: Gauge,
    pub acks_published: Counter,
    pub jobs_submitted: Counter,
    pub jobs_finished: Family<JobLabel, Counter>,
    pub jobs_rerouted: Counter,
    pub jobs_joint: Counter,
    pub jobs_late_results: Counter,
    pub jobs_unrecorded: Counter,
    pub jobs_in_flight: Gauge,
    pub api_rejected: Family<ReasonLabel, Counter>,
    pub usage_dropped: Counter,
    pub model_bytes_served: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fleet");
        let m = Self {
            received: Family::default(),
            dropped: Family::default(),
            rows_written: Counter::default(),
            rows_duplicate: Counter::default(),
            batches_written: Counter::default(),
            write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            write_errors: Counter::default(),
            nodes_online: Gauge::default(),
            nodes_known: Gauge::default(),
            ingest_queue: Gauge::default(),
            ingest_lag_ms: Gauge::default(),
            acks_published: Counter::default(),
            jobs_submitted: Counter::default(),
            jobs_finished: Family::default(),
            jobs_rerouted: Counter::default(),
            jobs_joint: Counter::default(),
            jobs_late_results: Counter::default(),
            jobs_unrecorded: Counter::default(),
            jobs_in_flight: Gauge::default(),
            api_rejected: Family::default(),
            usage_dropped: Counter::default(),
            model_bytes_served: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("model_bytes_served", "Bytes of model files sent to nodes", m.model_bytes_served.clone());
        registry.register("messages_received", "MQTT messages received, by channel", m.received.clone());
        registry.register("messages_dropped", "Messages dropped, by reason", m.dropped.clone());
        registry.register("rows_written", "Telemetry rows inserted", m.rows_written.clone());
        registry.register("rows_duplicate", "Telemetry rows skipped as already stored", m.rows_duplicate.clone());
        registry.register("batches_written", "Telemetry batches committed", m.batches_written.clone());
        registry.register("write_latency_seconds", "Duration of one bulk database write", m.write_seconds.clone());
        registry.register(
            "write_errors",
            "Failed database writes (batches are resent by agents)",
            m.write_errors.clone(),
        );
        registry.register("nodes_online", "Nodes whose last status is online", m.nodes_online.clone());
        registry.register("nodes_known", "Nodes in the live view", m.nodes_known.clone());
        registry.register("ingest_queue_batches", "Batches waiting for the database writer", m.ingest_queue.clone());
        registry.register(
            "ingest_lag_milliseconds",
            "Time the oldest batch of the last write waited in the queue (database lag)",
            m.ingest_lag_ms.clone(),
        );
        registry.register("acks_published", "End-to-end acks published to agents", m.acks_published.clone());
        registry.register("jobs_submitted", "Inference jobs accepted by SubmitJob", m.jobs_submitted.clone());
        registry.register("jobs_finished", "Inference jobs finished, by status and site", m.jobs_finished.clone());
        registry.register(
            "jobs_rerouted",
            "Job attempts given up (node refused, failed, went offline or stayed silent) and sent elsewhere",
            m.jobs_rerouted.clone(),
        );
        registry.register(
            "jobs_joint",
            "Edge answers under the confidence threshold re-run on the cloud tier",
            m.jobs_joint.clone(),
        );
        registry.register(
            "jobs_late_results",
            "Answers to job attempts already given up (ignored)",
            m.jobs_late_results.clone(),
        );
        registry.register(
            "jobs_unrecorded",
            "Finished jobs not written to the store (record queue full or database error)",
            m.jobs_unrecorded.clone(),
        );
        registry.register("jobs_in_flight", "Jobs submitted and not finished", m.jobs_in_flight.clone());
        registry.register(
            "api_rejected",
            "gRPC calls refused: unauthenticated, permission_denied, rate_limited, over_quota",
            m.api_rejected.clone(),
        );
        registry.register(
            "usage_dropped",
            "API usage counts not kept: the store was unreachable so long that the memory bound was reached",
            m.usage_dropped.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one dropped message.
    pub fn drop_msg(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts one finished job (`status` and `site` as words: "succeeded", "edge").
    pub fn job_finished(&self, status: &'static str, site: &'static str) {
        self.jobs_finished.get_or_create(&JobLabel { status, site }).inc();
    }

    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
