//! The engine: once a second, one replica (the advisory lock's holder on
//! PostgreSQL) reads every rollout from the store and moves it on: nodes
//! updating are judged from what they report (confirmed, reverted, a model
//! FAILED, or past the node timeout), the failure threshold is checked,
//! the current batch gets more nodes up to `max_concurrent`, and a finished
//! batch under its success threshold stops the rollout. All it knows is in
//! the store, so a restarted controller goes on where the last one stopped.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::{
    DesiredState, ModelUpdateState, Node, NodeState as Online, OfflinePolicy, OnFailure, Rollout, RolloutNode,
    RolloutNodeState as NodeState, RolloutSpec, RolloutState as State, SetDesiredStateRequest,
};

use super::plan::{busy, failed, is};
use super::{Inner, spec_of};
use crate::ControllerError;
use crate::store::{Store, Which};

/// How often rollouts are moved on.
const TICK: Duration = Duration::from_secs(1);
/// A node's time to finish when the spec gives none.
const DEFAULT_NODE_TIMEOUT_MS: u64 = 600_000;

pub(super) async fn run(inner: Arc<Inner>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = step_all(&inner).await {
                    tracing::warn!(error = %e, "Rollouts not moved on this second; trying again.");
                }
            }
        }
    }
}

async fn step_all(inner: &Inner) -> Result<(), ControllerError> {
    let Some(_lock) = inner.store.rollout_lock().await? else { return Ok(()) };
    for r in inner.store.rollouts(Which::All).await? {
        let catching_up = r.nodes.iter().any(|n| is(n, NodeState::RolloutNodeCatchingUp));
        if r.state == State::RolloutRunning as i32 || catching_up {
            step(inner, r).await?;
        }
    }
    Ok(())
}

async fn step(inner: &Inner, mut r: Rollout) -> Result<(), ControllerError> {
    let spec = spec_of(&r);
    let now = fleet_proto::now_unix_ms();
    for n in
        r.nodes.iter_mut().filter(|n| is(n, NodeState::RolloutNodeUpdating) || is(n, NodeState::RolloutNodeCatchingUp))
    {
        if let Some((state, reason)) = judge(n, inner.registry.get(&n.node_id).as_ref(), &spec, now) {
            tracing::info!(rollout = %r.rollout_id, node = %n.node_id, state = ?state, %reason, "Rollout node done.");
            (n.state, n.reason, n.finished_unix_ms) = (state as i32, reason, now);
            inner.store.put_rollout_node(&r.rollout_id, n).await?;
        }
    }
    if r.state != State::RolloutRunning as i32 {
        return Ok(());
    }
    if let Some(why) = over_failure_threshold(&r, &spec) {
        return on_failure(&inner.store, &r, &spec, why).await;
    }
    let last = r.nodes.iter().map(|n| n.batch).max().unwrap_or(0);
    for b in 0..=last {
        if r.nodes.iter().any(|n| n.batch == b && busy(n)) {
            return start_batch(inner, &mut r, b, &spec).await;
        }
        if b >= r.batches_cleared
            && let Some(why) = under_success_threshold(&r, b, &spec)
        {
            if b == last {
                return stop(&inner.store, &r, State::RolloutFailed, &why).await;
            }
            return on_failure(&inner.store, &r, &spec, why).await;
        }
    }
    let done = r.nodes.iter().filter(|n| is(n, NodeState::RolloutNodeSucceeded)).count();
    let behind = r.nodes.iter().filter(|n| is(n, NodeState::RolloutNodeCatchingUp)).count();
    let mut why = format!("{done} of {} nodes updated", r.nodes.len());
    if behind > 0 {
        why.push_str(&format!("; {behind} offline, catching up when back"));
    }
    stop(&inner.store, &r, State::RolloutSucceeded, &why).await
}

/// What a node's report says of its change, if it is done.
fn judge(n: &RolloutNode, node: Option<&Node>, spec: &RolloutSpec, now: i64) -> Option<(NodeState, String)> {
    let reported = node.and_then(|x| x.reported.clone()).unwrap_or_default();
    let v = n.desired_version;
    if reported.confirmed_version >= v {
        return Some((NodeState::RolloutNodeSucceeded, String::new()));
    }
    if reported.rejected_version >= v {
        return Some((NodeState::RolloutNodeFailed, reported.rejected_reason));
    }
    let change = spec.change.clone().unwrap_or_default();
    let model_failed = reported.models.iter().find(|m| {
        m.name == change.model
            && m.wanted == change.model_version
            && m.state == ModelUpdateState::ModelUpdateFailed as i32
    });
    if let Some(m) = model_failed.filter(|_| reported.applied_version >= v) {
        return Some((NodeState::RolloutNodeFailed, format!("model {} {}: {}", m.name, m.wanted, m.reason)));
    }
    let timeout = if spec.node_timeout_ms == 0 { DEFAULT_NODE_TIMEOUT_MS } else { spec.node_timeout_ms };
    let late = now.saturating_sub(n.started_unix_ms) > i64::try_from(timeout).unwrap_or(i64::MAX);
    if !is(n, NodeState::RolloutNodeUpdating) || !late {
        return None;
    }
    let online = node.and_then(|x| x.status.as_ref()).is_some_and(|s| s.state == Online::Online as i32);
    if !online && spec.offline == OfflinePolicy::CatchUp as i32 {
        return Some((NodeState::RolloutNodeCatchingUp, "offline through its batch; gets the change when back".into()));
    }
    let offline = if online { "" } else { " (offline)" };
    Some((NodeState::RolloutNodeTimedOut, format!("not done within {} s{offline}", timeout / 1000)))
}

fn over_failure_threshold(r: &Rollout, spec: &RolloutSpec) -> Option<String> {
    let failures = r.nodes.iter().filter(|n| failed(n)).count().saturating_sub(r.forgiven_failures as usize);
    let finished = r.nodes.iter().filter(|n| failed(n) || is(n, NodeState::RolloutNodeSucceeded)).count();
    let by_count = spec.failure_threshold_count > 0 && failures >= spec.failure_threshold_count as usize;
    let share = if finished == 0 { 0.0 } else { failures as f64 * 100.0 / finished as f64 };
    let by_share = spec.failure_threshold_pct > 0.0
        && finished >= spec.failure_min_nodes as usize
        && share >= f64::from(spec.failure_threshold_pct);
    (by_count || by_share).then(|| format!("failure threshold reached: {failures} of {finished} finished nodes failed"))
}

fn under_success_threshold(r: &Rollout, b: u32, spec: &RolloutSpec) -> Option<String> {
    let nodes: Vec<&RolloutNode> = r.nodes.iter().filter(|n| n.batch == b).collect();
    let counted = nodes.iter().filter(|n| !is(n, NodeState::RolloutNodeCatchingUp)).count();
    let ok = nodes.iter().filter(|n| is(n, NodeState::RolloutNodeSucceeded)).count();
    let want = if spec.success_threshold_pct == 0.0 { 100.0 } else { f64::from(spec.success_threshold_pct) };
    let share = if counted == 0 { 100.0 } else { ok as f64 * 100.0 / counted as f64 };
    (share < want)
        .then(|| format!("batch {}: {ok} of {counted} nodes succeeded, under the success threshold {want}%", b + 1))
}

/// Gives the change to the waiting nodes of batch `b`, up to `max_concurrent` updating at once.
async fn start_batch(inner: &Inner, r: &mut Rollout, b: u32, spec: &RolloutSpec) -> Result<(), ControllerError> {
    let updating = r.nodes.iter().filter(|n| is(n, NodeState::RolloutNodeUpdating)).count();
    let room =
        if spec.max_concurrent == 0 { usize::MAX } else { (spec.max_concurrent as usize).saturating_sub(updating) };
    let id = r.rollout_id.clone();
    for n in r.nodes.iter_mut().filter(|n| n.batch == b && is(n, NodeState::RolloutNodeWaiting)).take(room) {
        if let Some(version) = give(inner, &n.node_id, spec).await? {
            (n.state, n.desired_version) = (NodeState::RolloutNodeUpdating as i32, version);
            n.started_unix_ms = fleet_proto::now_unix_ms();
            inner.store.put_rollout_node(&id, n).await?;
        }
    }
    Ok(())
}

/// Applies the change to a node's desired state; the version it got, or
/// None to try again next second.
async fn give(inner: &Inner, node: &str, spec: &RolloutSpec) -> Result<Option<u64>, ControllerError> {
    let current = inner.store.get_desired(node).await?;
    let before = current.as_ref().map_or(0, |d| d.version);
    let mut d = current.unwrap_or_else(|| DesiredState { node_id: node.to_owned(), ..Default::default() });
    let c = spec.change.clone().unwrap_or_default();
    if !c.model.is_empty() {
        d.model_versions.insert(c.model, c.model_version);
    }
    if !c.power_policy_toml.is_empty() {
        d.power_policy_toml = c.power_policy_toml;
    }
    if c.telemetry_interval_ms != 0 {
        d.telemetry_interval_ms = c.telemetry_interval_ms;
    }
    d.labels.extend(c.labels);
    d.health_window_ms = spec.health_window_ms;
    let req = SetDesiredStateRequest { desired: Some(d), expected_version: before };
    match inner.desired.set(req).await {
        Ok(stored) => Ok(Some(stored.version)),
        Err(s) => {
            // Stored but not yet published: the link publishes it when the broker is back.
            let after = inner.store.get_desired(node).await?.map_or(0, |d| d.version);
            if after > before {
                return Ok(Some(after));
            }
            tracing::warn!(node, error = %s.message(), "Rollout could not give a node its change; trying again.");
            Ok(None)
        }
    }
}

async fn on_failure(store: &Store, r: &Rollout, spec: &RolloutSpec, why: String) -> Result<(), ControllerError> {
    if spec.on_failure == OnFailure::Abort as i32 {
        return stop(store, r, State::RolloutAborted, &why).await;
    }
    tracing::warn!(rollout = %r.rollout_id, reason = %why, "Rollout paused.");
    store.set_rollout_state(&r.rollout_id, State::RolloutPaused as i32, &why).await
}

/// Ends a rollout in `state`; nodes still waiting are skipped.
pub(super) async fn stop(store: &Store, r: &Rollout, state: State, why: &str) -> Result<(), ControllerError> {
    for n in r.nodes.iter().filter(|n| is(n, NodeState::RolloutNodeWaiting)) {
        let skipped = RolloutNode { state: NodeState::RolloutNodeSkipped as i32, ..n.clone() };
        store.put_rollout_node(&r.rollout_id, &skipped).await?;
    }
    tracing::info!(rollout = %r.rollout_id, state = ?state, reason = why, "Rollout ended.");
    store.set_rollout_state(&r.rollout_id, state as i32, why).await
}
