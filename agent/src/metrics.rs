//! The agent's Prometheus endpoint (docs/metrics.md): `GET /metrics` in the
//! OpenMetrics text format, from a snapshot the event loop refreshes once a
//! second. Off by default (`[metrics] listen = ""`): a Pi should open no
//! port it does not need, and the same counters already reach the controller
//! in every status. Turn it on for a Prometheus on the node
//! (`127.0.0.1:9464`) or one that scrapes over the WireGuard overlay (the
//! node's overlay address).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use fleet_proto::v1::NodeStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::watch;

use crate::AgentError;

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served, e.g. `127.0.0.1:9464`. Empty (default): nowhere.
    pub listen: String,
}

impl MetricsConfig {
    /// The address to serve on, if any.
    ///
    /// # Errors
    /// `listen` that is no socket address.
    pub fn addr(&self) -> Result<Option<SocketAddr>, AgentError> {
        fleet_net::optional_listen("metrics.listen", &self.listen, "127.0.0.1:9464").map_err(AgentError::Invalid)
    }
}

/// What a scrape shows: the status the agent would send now, and what the status leaves out.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub status: NodeStatus,
    pub connected: bool,
    pub jobs_ran: u64,
    pub jobs_refused: u64,
    /// When the controller last acknowledged a batch (0: never in this run).
    pub last_ack_unix_ms: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Info {
    version: String,
    node_id: String,
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: Option<f64>) {
    if let Some(v) = v {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(v);
        r.register(name, help, g);
    }
}

/// The OpenMetrics text of `s` (every name prefixed `fleet_agent_`).
#[must_use]
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("fleet_agent");
    let c = s.status.counters.clone().unwrap_or_default();
    let v = s.status.vitals.unwrap_or_default();
    let info = Family::<Info, Gauge>::default();
    info.get_or_create(&Info { version: s.status.agent_version.clone(), node_id: s.status.node_id.clone() }).set(1);
    r.register("build", "The agent's version and node id (always 1)", info);
    counter(&mut r, "samples_taken", "Samples taken since start", c.samples_taken);
    counter(&mut r, "batches_published", "Telemetry batches handed to the uplink", c.batches_published);
    counter(&mut r, "publish_failures", "Messages the uplink could not take", c.publish_failures);
    counter(&mut r, "batches_dropped", "Batches dropped (spool over budget, unreadable): data lost", c.batches_dropped);
    counter(&mut r, "samples_dropped", "Samples dropped with those batches", c.samples_dropped);
    counter(&mut r, "samples_acked", "Samples the controller acknowledged as committed", c.samples_acked);
    counter(
        &mut r,
        "spool_quarantined_segments",
        "Spool segments found corrupt and moved aside",
        c.spool_quarantined_segments,
    );
    counter(&mut r, "spool_torn_tails", "Torn writes cut off the spool's tail at start", c.spool_torn_tails);
    let refused = Family::<Reason, Counter>::default();
    for (reason, n) in &c.controller_messages_refused_by_reason {
        refused.get_or_create(&Reason { reason: reason.clone() }).inc_by(*n);
    }
    r.register("controller_messages_refused", "Messages on this node's topics it did not believe, by reason", refused);
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let f = |n: u64| Some(n as f64);
    gauge(&mut r, "spool_bytes", "Bytes in the disk spool", f(c.spool_bytes));
    gauge(&mut r, "spool_batches_unacked", "Batches in the spool not yet acknowledged", f(c.batches_unacked));
    gauge(&mut r, "uplink_connected", "1 while the uplink is connected", Some(if s.connected { 1.0 } else { 0.0 }));
    #[allow(clippy::cast_precision_loss)] // ms since 1970 fit an f64 exactly for ages
    let last_ack = (s.last_ack_unix_ms > 0).then(|| s.last_ack_unix_ms as f64 / 1000.0);
    gauge(&mut r, "last_ack_timestamp_seconds", "When the controller last acknowledged a batch", last_ack);
    gauge(
        &mut r,
        "power_profile",
        "Power profile: 1 performance, 2 balanced, 3 saver, 4 critical",
        Some(f64::from(s.status.power_profile)),
    );
    gauge(&mut r, "battery_soc_percent", "Battery state of charge", v.battery_soc_pct);
    gauge(&mut r, "on_battery", "1 while running on battery", v.on_battery.map(|b| if b { 1.0 } else { 0.0 }));
    gauge(&mut r, "input_power_watts", "Power from the external input", v.input_power_w);
    gauge(&mut r, "soc_temperature_celsius", "SoC temperature", v.soc_temp_c);
    gauge(&mut r, "cpu_usage_percent", "CPU use", v.cpu_usage_pct);
    gauge(&mut r, "memory_used_percent", "Memory use", v.mem_used_pct);
    counter(&mut r, "jobs_ran", "Inference jobs started", s.jobs_ran);
    counter(&mut r, "jobs_refused", "Inference jobs refused (profile, queue, model)", s.jobs_refused);
    gauge(&mut r, "jobs_active", "Inference jobs running or queued", Some(f64::from(s.status.jobs_active)));
    gauge(&mut r, "jobs_max", "Jobs the power profile admits at once", Some(f64::from(s.status.max_jobs)));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

async fn scrape(State(rx): State<watch::Receiver<Snapshot>>) -> impl IntoResponse {
    let text = render(&rx.borrow());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

/// Serves `/metrics` on `addr` until the returned sender is dropped (the agent stops).
///
/// # Errors
/// When `addr` cannot be bound (in use, or not this machine's).
pub fn serve(addr: SocketAddr) -> Result<(watch::Sender<Snapshot>, SocketAddr), AgentError> {
    let std_listener = std::net::TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l));
    let listener = std_listener.and_then(tokio::net::TcpListener::from_std).map_err(|e| {
        AgentError::Config(format!("key `metrics.listen` = {addr}: {e}; choose a free address, or leave it empty"))
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let (tx, rx) = watch::channel(Snapshot::default());
    let mut closed = rx.clone();
    let app = Router::new().route("/metrics", get(scrape)).with_state(rx);
    tokio::spawn(async move {
        let stop = async move { while closed.changed().await.is_ok() {} };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::warn!(error = %e, "The metrics endpoint stopped.");
        }
    });
    tracing::info!(addr = %bound, "Metrics on http://{bound}/metrics");
    Ok((tx, bound))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::{AgentCounters, NodeVitals};

    #[test]
    fn a_snapshot_renders_as_openmetrics() {
        let s = Snapshot {
            status: NodeStatus {
                node_id: "pi-1".into(),
                agent_version: "0.1.0".into(),
                power_profile: 3,
                counters: Some(AgentCounters {
                    samples_taken: 42,
                    spool_bytes: 4096,
                    controller_messages_refused_by_reason: [("replay".to_owned(), 2)].into(),
                    ..Default::default()
                }),
                vitals: Some(NodeVitals { battery_soc_pct: Some(17.5), on_battery: Some(true), ..Default::default() }),
                ..Default::default()
            },
            connected: true,
            jobs_ran: 5,
            ..Default::default()
        };
        let t = render(&s);
        for want in [
            "fleet_agent_samples_taken_total 42",
            "fleet_agent_spool_bytes 4096",
            "fleet_agent_controller_messages_refused_total{reason=\"replay\"} 2",
            "fleet_agent_battery_soc_percent 17.5",
            "fleet_agent_on_battery 1",
            "fleet_agent_power_profile 3",
            "fleet_agent_uplink_connected 1",
            "fleet_agent_jobs_ran_total 5",
            "fleet_agent_build{version=\"0.1.0\",node_id=\"pi-1\"} 1",
            "# EOF",
        ] {
            assert!(t.contains(want), "{want} missing in\n{t}");
        }
        // No reading, no series (absent hardware is not a zero).
        assert!(!t.contains("soc_temperature"), "{t}");
    }

    #[test]
    fn the_address_is_checked() {
        assert_eq!(MetricsConfig::default().addr().unwrap(), None);
        let bad = MetricsConfig { listen: "localhost".into() };
        assert!(bad.addr().unwrap_err().to_string().contains("127.0.0.1:9464"));
    }
}
