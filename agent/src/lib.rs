//! The Spark Fleet agent: samples its node (sysinfo and the board), numbers
//! samples per boot, cuts them into `TelemetryBatch`es and publishes them by
//! MQTT at QoS 1 (or Kafka), keeping each batch in a crash-safe spool until
//! the controller acknowledges that it is committed. Manages the node's
//! power, applies the desired state, runs inference jobs, and publishes a
//! retained `NodeStatus` with a last will that marks the node offline.
//!
//! `run` is the whole agent: this file is its event loop; each part does its
//! own work (`delivery`, `power`, `desired`, `overlay`, `jobs`, `outbox`),
//! `agent` puts them together; `main.rs` only parses flags.
// `trim` is the one place with unsafe code (one madvise call, its safety
// argued there); everything else forbids it.
#![deny(unsafe_code)]

pub mod agent;
pub mod board;
pub mod config;
pub mod delivery;
pub mod desired;
pub mod enroll;
pub mod error;
pub mod health;
pub mod identity;
pub mod jobs;
pub mod local;
pub mod metrics;
pub mod models;
pub mod outbox;
pub mod overlay;
pub mod power;
pub mod sampler;
pub mod signer;
pub mod spool;
pub mod telemetry;
pub mod trim;
pub mod uplink;

use std::time::Duration;

use fleet_net::systemd;
use fleet_proto::v1::{AgentCounters, NodeState};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use agent::Agent;
pub use agent::resolve_node_id;
pub use config::AgentConfig;
pub use error::AgentError;

/// What the agent did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReport {
    pub node_id: String,
    pub boot_id: String,
    pub counters: AgentCounters,
    /// Batches still unacknowledged at exit, kept in the spool for the next start.
    pub batches_kept: u64,
}

/// How often the delivery tick runs (replay is paced per tick).
const DELIVER_TICK: Duration = Duration::from_millis(100);
/// How often model updates and the health window are looked at.
const UPDATE_TICK: Duration = Duration::from_secs(1);
/// When start-up is over and its code pages are given back (`trim`).
const TRIM_AFTER: Duration = Duration::from_secs(10);
/// How long a stopping agent lets running jobs finish.
const JOB_DRAIN: Duration = Duration::from_secs(2);
/// The watchdog tick outside systemd (or without `WatchdogSec=`), where a ping is a no-op.
const NO_WATCHDOG: Duration = Duration::from_secs(3600);

fn ticker(every: Duration, missed: MissedTickBehavior) -> Interval {
    let mut t = interval(every);
    t.set_missed_tick_behavior(missed);
    t
}

/// The loop's clocks.
struct Ticks {
    sample: Interval,
    flush: Interval,
    status: Interval,
    deliver: Interval,
    /// systemd's watchdog (`WatchdogSec=`): pinged from this loop, so a hung loop gets the agent restarted.
    watchdog: Interval,
    /// Model updates and the health window.
    updates: Interval,
}

/// Runs the agent until `shutdown` is cancelled, then stops cleanly: the last
/// samples are cut into a batch and written to the spool, the agent waits up
/// to `shutdown_grace` for the controller's acks, publishes its offline
/// status, disconnects, and syncs the spool; what is unacknowledged is sent
/// after the next start.
///
/// # Errors
/// Bad configuration, or a data directory that cannot be used.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<AgentReport, AgentError> {
    let (mut a, mut results) = Agent::start(cfg)?;
    let t = &a.cfg.telemetry;
    let mut ticks = Ticks {
        sample: ticker(a.power.interval(), MissedTickBehavior::Skip),
        flush: ticker(t.flush_interval, MissedTickBehavior::Delay),
        status: ticker(t.status_interval, MissedTickBehavior::Delay),
        deliver: ticker(DELIVER_TICK, MissedTickBehavior::Delay),
        watchdog: ticker(systemd::watchdog_every().unwrap_or(NO_WATCHDOG), MissedTickBehavior::Delay),
        updates: ticker(UPDATE_TICK, MissedTickBehavior::Delay),
    };
    systemd::ready(&format!("node {} sampling", a.node.id));
    let trim = tokio::time::sleep(TRIM_AFTER);
    tokio::pin!(trim);
    let mut trimmed = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = &mut trim, if !trimmed => {
                trimmed = true;
                let t = trim::release_startup_pages();
                tracing::debug!(mappings = t.mappings, bytes = t.bytes, "Start-up's code pages given back.");
            }
            _ = ticks.sample.tick() => {
                if let Some(every) = a.sample() {
                    ticks.sample = ticker(every, MissedTickBehavior::Skip);
                    ticks.sample.reset();
                }
            }
            _ = ticks.flush.tick() => {
                a.flush();
                a.publish_metrics();
            }
            _ = ticks.deliver.tick() => {
                a.delivery.tick(&mut a.out);
                a.publish_local();
            }
            _ = ticks.status.tick() => a.publish_status(NodeState::Online),
            _ = ticks.watchdog.tick() => systemd::watchdog(),
            () = a.jobs.loaded(), if a.jobs.is_loading() => a.publish_status(NodeState::Online),
            Some((r, span, model)) = results.recv() => a.job_done(&r, &span, &model),
            done = a.updater.next() => a.update_done(done),
            _ = ticks.updates.tick(), if a.updating() => {
                if let Some(every) = a.update_tick() {
                    ticks.sample = ticker(every, MissedTickBehavior::Skip);
                }
            }
            ev = a.out.next_event() => {
                if let Some(every) = a.on_event(ev) {
                    ticks.sample = ticker(every, MissedTickBehavior::Skip);
                }
            }
        }
    }
    stop(a, &mut results, &mut ticks.deliver).await
}

/// The clean stop: no more jobs (the router is told), the running ones
/// finish briefly, nothing sampled is left out of the spool, acks are
/// awaited for `shutdown_grace`, then the offline status and goodbye.
async fn stop(
    mut a: Agent,
    results: &mut mpsc::Receiver<jobs::Finished>,
    deliver: &mut Interval,
) -> Result<AgentReport, AgentError> {
    systemd::stopping();
    a.jobs.stop();
    a.publish_status(NodeState::Online);
    a.jobs.drain(JOB_DRAIN).await;
    while let Ok((r, span, _)) = results.try_recv() {
        span.in_scope(|| a.out.result(&r));
    }
    a.flush();
    a.delivery.make_durable();
    let deadline = Instant::now() + a.cfg.telemetry.shutdown_grace;
    while a.delivery.pending() > 0 && Instant::now() < deadline {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            _ = deliver.tick() => a.delivery.tick(&mut a.out),
            ev = a.out.next_event() => { a.on_event(ev); }
        }
    }
    a.publish_status(NodeState::Offline);
    let counters = a.counters();
    let Agent { out, delivery, node, .. } = a;
    out.close().await;
    let kept = delivery.close()?;
    if kept > 0 {
        tracing::warn!(
            batches = kept,
            "Not every batch was acknowledged before shutdown; the spool sends them after the next start."
        );
    }
    tracing::info!(samples = counters.samples_taken, acked = counters.samples_acked, "Agent stopped.");
    Ok(AgentReport { node_id: node.id, boot_id: node.boot_id, counters, batches_kept: kept })
}
