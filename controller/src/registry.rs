//! The hot tier: the controller's live, in-memory view of every node, fed by
//! status messages and telemetry, read by the API (and later the router).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use fleet_proto::v1::{Event, Node, NodeState, NodeStatus, PowerProfile};
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// Changes buffered per watcher before it is told it lagged.
const WATCH_BUFFER: usize = 1024;
/// Recent events kept per node (the dashboard's node page), the oldest dropped first.
pub const EVENTS_PER_NODE: usize = 16;

/// The live view. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    nodes: Arc<RwLock<HashMap<String, Node>>>,
    // Every change goes here; each WatchNodes stream holds a receiver.
    changes: broadcast::Sender<Node>,
    /// Each node's latest events, newest last (in memory only: Kafka consumers keep the history).
    events: Arc<Mutex<HashMap<String, VecDeque<Event>>>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    #[must_use]
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Self { nodes: Arc::default(), changes, events: Arc::default(), metrics }
    }

    fn with_nodes<R>(&self, f: impl FnOnce(&mut HashMap<String, Node>) -> R) -> R {
        let mut guard = self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    fn refresh_gauges(&self, nodes: &HashMap<String, Node>) {
        let online =
            nodes.values().filter(|n| n.status.as_ref().is_some_and(|s| s.state == NodeState::Online as i32)).count();
        self.metrics.nodes_online.set(i64::try_from(online).unwrap_or(i64::MAX));
        self.metrics.nodes_known.set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
    }

    /// Applies a status message. An offline status from an older run (a late
    /// last will) does not override a newer run's online status.
    pub fn update_status(&self, status: NodeStatus) {
        let now = fleet_proto::now_unix_ms();
        let changed = self.with_nodes(|nodes| {
            let node = nodes
                .entry(status.node_id.clone())
                .or_insert_with(|| Node { node_id: status.node_id.clone(), ..Default::default() });
            if let Some(cur) = &node.status {
                let stale_will = status.state == NodeState::Offline as i32
                    && cur.boot_id != status.boot_id
                    && cur.state == NodeState::Online as i32;
                if stale_will {
                    return None;
                }
            }
            node.status = Some(status);
            node.last_seen_unix_ms = now;
            let n = node.clone();
            self.refresh_gauges(nodes);
            Some(n)
        });
        if let Some(n) = changed {
            let _ = self.changes.send(n);
        }
    }

    /// Applies a reported state.
    pub fn update_reported(&self, reported: fleet_proto::v1::ReportedState) {
        let changed = self.with_nodes(|nodes| {
            let node = nodes
                .entry(reported.node_id.clone())
                .or_insert_with(|| Node { node_id: reported.node_id.clone(), ..Default::default() });
            node.reported = Some(reported);
            node.clone()
        });
        let _ = self.changes.send(changed);
    }

    /// Records that a node sent telemetry: `samples` more are stored.
    pub fn record_samples(&self, node_id: &str, samples: u64) {
        let now = fleet_proto::now_unix_ms();
        self.with_nodes(|nodes| {
            let node = nodes
                .entry(node_id.to_owned())
                .or_insert_with(|| Node { node_id: node_id.to_owned(), ..Default::default() });
            node.samples_stored += samples;
            node.last_seen_unix_ms = now;
            if nodes.len() != usize::try_from(self.metrics.nodes_known.get()).unwrap_or(0) {
                self.refresh_gauges(nodes);
            }
        });
    }

    /// Every node, sorted by id.
    #[must_use]
    pub fn list(&self) -> Vec<Node> {
        let guard = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<Node> = guard.values().cloned().collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// One node.
    #[must_use]
    pub fn get(&self, node_id: &str) -> Option<Node> {
        let guard = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.get(node_id).cloned()
    }

    /// Runs `f` on every node without copying them (the read lock is held meanwhile).
    pub fn read<R>(&self, f: impl FnOnce(&HashMap<String, Node>) -> R) -> R {
        let guard = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// Keeps a node's event (a verified one) among its latest [`EVENTS_PER_NODE`].
    pub fn record_event(&self, event: Event) {
        let mut all = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let kept = all.entry(event.node_id.clone()).or_default();
        if kept.len() >= EVENTS_PER_NODE {
            kept.pop_front();
        }
        kept.push_back(event);
    }

    /// A node's latest events, newest first.
    #[must_use]
    pub fn events(&self, node_id: &str) -> Vec<Event> {
        let all = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.get(node_id).map(|k| k.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// A receiver of every future change.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Node> {
        self.changes.subscribe()
    }
}

/// A node's state word: `online`, `offline`, or `unknown` before its first status.
#[must_use]
pub fn state_word(n: &Node) -> &'static str {
    match n.status.as_ref().map(|s| NodeState::try_from(s.state).unwrap_or_default()) {
        Some(NodeState::Online) => "online",
        Some(NodeState::Offline) => "offline",
        _ => "unknown",
    }
}

/// A node's power profile word, as the agent names it (`unknown` before its first status).
#[must_use]
pub fn profile_word(n: &Node) -> &'static str {
    match n.status.as_ref().map(|s| PowerProfile::try_from(s.power_profile).unwrap_or_default()) {
        Some(PowerProfile::Performance) => "performance",
        Some(PowerProfile::Balanced) => "balanced",
        Some(PowerProfile::Saver) => "saver",
        Some(PowerProfile::Critical) => "critical",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(node: &str, boot: &str, state: NodeState) -> NodeStatus {
        NodeStatus { node_id: node.into(), boot_id: boot.into(), state: state as i32, ..Default::default() }
    }

    #[test]
    fn late_will_of_an_old_run_does_not_hide_the_new_run() {
        let r = Registry::new(Arc::new(Metrics::new()));
        r.update_status(status("a", "1", NodeState::Online));
        r.update_status(status("a", "2", NodeState::Online));
        r.update_status(status("a", "1", NodeState::Offline));
        assert_eq!(r.get("a").unwrap().status.unwrap().state, NodeState::Online as i32);
        r.update_status(status("a", "2", NodeState::Offline));
        assert_eq!(r.get("a").unwrap().status.unwrap().state, NodeState::Offline as i32);
    }

    #[test]
    fn gauges_follow_states_and_watchers_see_changes() {
        let m = Arc::new(Metrics::new());
        let r = Registry::new(m.clone());
        let mut rx = r.subscribe();
        r.update_status(status("a", "1", NodeState::Online));
        r.update_status(status("b", "1", NodeState::Online));
        r.record_samples("c", 5);
        assert_eq!((m.nodes_online.get(), m.nodes_known.get()), (2, 3));
        assert_eq!(rx.try_recv().unwrap().node_id, "a");
        assert_eq!(r.list().iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
