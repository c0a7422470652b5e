//! A rollout's plan: its spec checked, its nodes picked, cut into batches,
//! and its progress counted per batch. Pure functions, tested here.

use std::collections::BTreeMap;

use fleet_proto::v1::{Node, Rollout, RolloutBatch, RolloutNode, RolloutNodeState as NodeState, RolloutSpec};
use tonic::Status;

/// Batches a spec may give at most.
const MAX_BATCHES: usize = 100;

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("spec.{field}: {why}"))
}

/// Checks a spec's form.
///
/// # Errors
/// INVALID_ARGUMENT naming the field and what to give.
pub fn check(s: &RolloutSpec) -> Result<(), Status> {
    let t = s.target.clone().unwrap_or_default();
    if t.selector.is_empty() == t.node_ids.is_empty() {
        return Err(bad("target", "give a label selector or a list of nodes (one of the two)"));
    }
    for n in &t.node_ids {
        fleet_proto::validate_node_id(n).map_err(|e| bad("target.node_ids", e))?;
    }
    let c = s.change.clone().unwrap_or_default();
    let config = !c.power_policy_toml.is_empty() || c.telemetry_interval_ms != 0 || !c.labels.is_empty();
    match (c.model.is_empty(), c.model_version.is_empty()) {
        (true, false) | (false, true) => return Err(bad("change", "give both the model and its version")),
        (true, true) if !config => {
            return Err(bad("change", "give a model and its version, or a desired-state change"));
        }
        _ => {}
    }
    if !c.model.is_empty() {
        fleet_inference::registry::check_model_ref(&c.model, &c.model_version).map_err(|e| bad("change", e))?;
    }
    if c.telemetry_interval_ms != 0 && c.telemetry_interval_ms < 100 {
        return Err(bad("change.telemetry_interval_ms", "use 0 (unchanged) or at least 100"));
    }
    if !c.power_policy_toml.is_empty() {
        toml::from_str::<toml::Table>(&c.power_policy_toml)
            .map_err(|e| bad("change.power_policy_toml", format!("not valid TOML: {}", e.message())))?;
    }
    check_batches(s)?;
    let pct = |v: f32| (0.0..=100.0).contains(&v);
    if !pct(s.success_threshold_pct) || !pct(s.failure_threshold_pct) {
        return Err(bad("thresholds", "percentages are 0 to 100"));
    }
    Ok(())
}

fn check_batches(s: &RolloutSpec) -> Result<(), Status> {
    if s.batch_counts.is_empty() == s.batch_percents.is_empty() {
        return Err(bad("batches", "give batch sizes as counts or as cumulative percentages (one of the two)"));
    }
    if s.batch_counts.len().max(s.batch_percents.len()) > MAX_BATCHES {
        return Err(bad("batches", format!("at most {MAX_BATCHES}")));
    }
    if s.batch_counts.contains(&0) {
        return Err(bad("batch_counts", "every batch needs at least one node"));
    }
    let p = &s.batch_percents;
    if p.iter().any(|v| !(*v > 0.0 && *v <= 100.0)) || p.windows(2).any(|w| w[1] <= w[0]) {
        return Err(bad("batch_percents", "cumulative percentages, increasing, each above 0 and at most 100"));
    }
    Ok(())
}

/// The nodes a spec targets, sorted: those carrying every selector label,
/// or those listed (each must be known to the controller).
///
/// # Errors
/// INVALID_ARGUMENT when a listed node is unknown or no node matches.
pub fn targets(s: &RolloutSpec, fleet: &[Node]) -> Result<Vec<String>, Status> {
    let t = s.target.clone().unwrap_or_default();
    let mut ids: Vec<String> = if t.node_ids.is_empty() {
        fleet
            .iter()
            .filter(|n| {
                let labels = n.status.as_ref().map(|s| &s.labels);
                t.selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .map(|n| n.node_id.clone())
            .collect()
    } else {
        if let Some(unknown) = t.node_ids.iter().find(|id| !fleet.iter().any(|n| n.node_id == **id)) {
            return Err(bad("target.node_ids", format!("node {unknown:?} is not known (fleetctl nodes list)")));
        }
        t.node_ids.clone()
    };
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Err(bad("target", "no node matches the selector"));
    }
    Ok(ids)
}

/// Batch sizes for `n` nodes: the counts given (the last batch taking
/// every node left), or the cumulative percentages rounded up; empty
/// batches dropped.
#[must_use]
pub fn batches_of(s: &RolloutSpec, n: usize) -> Vec<u32> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    let mut ends: Vec<u32> = if s.batch_counts.is_empty() {
        s.batch_percents
            .iter()
            .map(|p| {
                let end = (f64::from(*p) * f64::from(n) / 100.0).ceil();
                if end >= f64::from(n) { n } else { end as u32 }
            })
            .collect()
    } else {
        let mut acc = 0u32;
        s.batch_counts
            .iter()
            .map(|c| {
                acc = acc.saturating_add(*c);
                acc
            })
            .collect()
    };
    ends.iter_mut().for_each(|e| *e = (*e).min(n));
    if let Some(last) = ends.last_mut() {
        *last = n;
    }
    let mut sizes = Vec::new();
    let mut start = 0;
    for e in ends {
        if e > start {
            sizes.push(e - start);
            start = e;
        }
    }
    sizes
}

/// Whether a node of a rollout is in state `s`.
pub(super) fn is(n: &RolloutNode, s: NodeState) -> bool {
    n.state == s as i32
}

/// Failed, or timed out (both count against the failure threshold).
pub(super) fn failed(n: &RolloutNode) -> bool {
    is(n, NodeState::RolloutNodeFailed) || is(n, NodeState::RolloutNodeTimedOut)
}

/// Not started yet, or updating.
pub(super) fn busy(n: &RolloutNode) -> bool {
    is(n, NodeState::RolloutNodeWaiting) || is(n, NodeState::RolloutNodeUpdating)
}

/// Fills in the per-batch progress from the node rows.
#[must_use]
pub fn summarize(mut r: Rollout) -> Rollout {
    let mut by: BTreeMap<u32, RolloutBatch> = BTreeMap::new();
    for n in &r.nodes {
        let b = by.entry(n.batch).or_insert_with(|| RolloutBatch { index: n.batch, ..Default::default() });
        b.nodes += 1;
        match NodeState::try_from(n.state).unwrap_or_default() {
            NodeState::RolloutNodeWaiting | NodeState::RolloutNodeSkipped => b.waiting += 1,
            NodeState::RolloutNodeUpdating => b.updating += 1,
            NodeState::RolloutNodeSucceeded => b.succeeded += 1,
            NodeState::RolloutNodeFailed | NodeState::RolloutNodeTimedOut => b.failed += 1,
            NodeState::RolloutNodeCatchingUp => b.catching_up += 1,
            NodeState::Unspecified => {}
        }
    }
    r.batches = by.into_values().collect();
    r
}

/// Failures so far, and the batches done so far: what a resume forgives.
#[must_use]
pub fn forgive(r: &Rollout) -> (u32, u32) {
    let failures = r.nodes.iter().filter(|n| failed(n)).count();
    let last = r.nodes.iter().map(|n| n.batch).max().unwrap_or(0);
    let cleared = (0..=last).find(|b| r.nodes.iter().any(|n| n.batch == *b && busy(n))).unwrap_or(last + 1);
    (u32::try_from(failures).unwrap_or(u32::MAX), cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(counts: &[u32], percents: &[f32]) -> RolloutSpec {
        RolloutSpec { batch_counts: counts.to_vec(), batch_percents: percents.to_vec(), ..Default::default() }
    }

    #[test]
    fn batches_as_counts_and_as_cumulative_percentages() {
        assert_eq!(batches_of(&spec(&[2, 5], &[]), 20), [2, 18], "the last batch takes the rest");
        assert_eq!(batches_of(&spec(&[5, 5, 5, 5, 5], &[]), 12), [5, 5, 2]);
        assert_eq!(batches_of(&spec(&[], &[10.0, 30.0, 60.0]), 100), [10, 20, 70]);
        assert_eq!(batches_of(&spec(&[], &[10.0, 50.0, 100.0]), 20), [2, 8, 10]);
        assert_eq!(batches_of(&spec(&[], &[1.0, 2.0, 100.0]), 3), [1, 2], "empty batches dropped");
    }

    #[test]
    fn a_spec_says_what_is_missing() {
        let e = check(&spec(&[1], &[])).unwrap_err();
        assert!(e.message().contains("spec.target"), "{}", e.message());
        let mut s = spec(&[1], &[50.0]);
        s.target = Some(fleet_proto::v1::RolloutTarget { node_ids: vec!["a".into()], ..Default::default() });
        s.change =
            Some(fleet_proto::v1::RolloutChange { model: "m".into(), model_version: "2".into(), ..Default::default() });
        assert!(check(&s).unwrap_err().message().contains("one of the two"));
        s.batch_percents.clear();
        assert!(check(&s).is_ok());
        s.change = Some(fleet_proto::v1::RolloutChange { model: "m".into(), ..Default::default() });
        assert!(check(&s).unwrap_err().message().contains("both"));
    }
}
