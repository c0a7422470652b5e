//! The router: picks where an inference job runs (the best edge node or the
//! cloud tier) from the live view, and says why.
//!
//! It keeps, per model, the nodes that could take a job now ordered by score
//! (highest first, ties by node id), so a decision reads the first matching
//! entry instead of scoring the whole fleet; a node is re-keyed only when its
//! status, its round trip or our count of its jobs changes. The scoring is in
//! [`score`] and explained in docs/routing.md.

pub mod score;
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use fleet_proto::v1::{NodeStatus, Placement, PowerProfile};
use serde::Deserialize;

use crate::ControllerError;

pub use score::{Breakdown, Exclusion, NodeFacts, ScoreConfig};

/// `[router]` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    /// The cloud tier competes at this score: an edge node scoring lower
    /// loses to it (when the job may run in the cloud).
    pub cloud_score: i32,
    pub score: ScoreConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self { cloud_score: 250, score: ScoreConfig::default() }
    }
}

/// `[router]`: where jobs run (docs/routing.md).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSection {
    /// The cloud tier competes at this score (0-1000): an edge node scoring
    /// lower loses the job to the cloud. Default 250.
    pub cloud_score: i32,
    /// A node this close to its thermal limit gets no job. Default 2.0 °C.
    pub hot_margin_c: f64,
    /// A node whose measured round trip is over this gets no job. Default 1000 ms.
    pub max_rtt_ms: f64,
}

impl Default for RouterSection {
    fn default() -> Self {
        let r = RouterConfig::default();
        Self { cloud_score: r.cloud_score, hot_margin_c: r.score.hot_margin_c, max_rtt_ms: r.score.max_rtt_ms }
    }
}

impl RouterSection {
    /// The router's settings.
    #[must_use]
    pub fn router(&self) -> RouterConfig {
        RouterConfig {
            cloud_score: self.cloud_score,
            score: ScoreConfig { hot_margin_c: self.hot_margin_c, max_rtt_ms: self.max_rtt_ms },
        }
    }

    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if !(0..=1000).contains(&self.cloud_score) {
            return Err(ControllerError::Invalid(
                "key `router.cloud_score`: a score from 0 (cloud last) to 1000 (cloud first)".into(),
            ));
        }
        Ok(())
    }
}

/// No site can run a job; the sentence says what stopped each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoSite(pub String);

/// Where a job goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Edge(Arc<str>),
    Cloud,
}

impl Target {
    /// True when this is the edge node `id` (no allocation, for hot paths).
    #[must_use]
    pub fn is_node(&self, id: &str) -> bool {
        matches!(self, Target::Edge(n) if **n == *id)
    }
}

/// A decision and its reason, for the caller and the job's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    /// The chosen site's score.
    pub score: i32,
    pub reason: String,
}

/// What the router needs to know about a job.
#[derive(Debug, Clone, Copy)]
pub struct JobSpec<'a> {
    pub model: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub placement: Placement,
    /// Only this node, when not empty.
    pub node: &'a str,
    /// Only nodes running this version of the model, when not empty.
    pub version: &'a str,
    /// Nodes this job already failed on (or left).
    pub tried: &'a [Arc<str>],
}

/// The cloud tier as the router sees it at decision time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudView {
    pub enabled: bool,
    pub has_model: bool,
    /// Its pool and queue are full.
    pub saturated: bool,
}

struct Entry {
    facts: NodeFacts,
    /// Our jobs on the node (sent, no result yet).
    inflight: u32,
    /// Smoothed dispatch-to-result time minus the node's own time, ms.
    rtt_ms: f64,
    /// The score under which the node sits in the index, if it is eligible.
    key: Option<i32>,
}

/// The routing state. Not internally locked: the job manager holds it in a mutex.
pub struct Router {
    cfg: RouterConfig,
    /// Node id to its slot in `entries`.
    slots: HashMap<Arc<str>, usize>,
    entries: Vec<(Arc<str>, Entry)>,
    /// Per model, eligible nodes by (score descending, id ascending), with
    /// their slot so a decision walks the order without hashing.
    index: HashMap<String, BTreeSet<IndexKey>>,
}

type IndexKey = (Reverse<i32>, Arc<str>, usize);

impl Router {
    #[must_use]
    pub fn new(cfg: RouterConfig) -> Self {
        Self { cfg, slots: HashMap::new(), entries: Vec::new(), index: HashMap::new() }
    }

    /// Nodes known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no node is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn update(&mut self, node_id: &str, f: impl FnOnce(&mut Entry)) {
        let Some(&slot) = self.slots.get(node_id) else { return };
        let (id, e) = &mut self.entries[slot];
        if let Some(k) = e.key.take() {
            for m in &e.facts.models {
                if let Some(set) = self.index.get_mut(m.as_str()) {
                    set.remove(&(Reverse(k), id.clone(), slot));
                }
            }
        }
        f(e);
        if let Ok(b) = score::score(&e.facts, e.inflight, e.rtt_ms, &self.cfg.score) {
            let k = b.total();
            e.key = Some(k);
            for m in &e.facts.models {
                self.index.entry(m.clone()).or_default().insert((Reverse(k), id.clone(), slot));
            }
        }
    }

    /// Takes in a node's latest status.
    pub fn observe(&mut self, status: &NodeStatus) {
        let facts = NodeFacts::from_status(status);
        if !self.slots.contains_key(status.node_id.as_str()) {
            let id: Arc<str> = status.node_id.as_str().into();
            self.slots.insert(id.clone(), self.entries.len());
            let e = Entry { facts: facts.clone(), inflight: 0, rtt_ms: score::DEFAULT_RTT_MS, key: None };
            self.entries.push((id, e));
        }
        self.update(&status.node_id, |e| e.facts = facts);
    }

    /// Counts a job sent to `node`.
    pub fn dispatched(&mut self, node: &str) {
        self.update(node, |e| e.inflight += 1);
    }

    /// Counts a job of `node` finished (answered, failed or abandoned).
    pub fn finished(&mut self, node: &str) {
        self.update(node, |e| e.inflight = e.inflight.saturating_sub(1));
    }

    /// Folds one measured round trip into the node's smoothed one.
    pub fn observe_rtt(&mut self, node: &str, rtt_ms: f64) {
        if rtt_ms.is_finite() && rtt_ms >= 0.0 {
            self.update(node, |e| e.rtt_ms = 0.8 * e.rtt_ms + 0.2 * rtt_ms);
        }
    }

    /// Our jobs in flight on `node`.
    #[must_use]
    pub fn inflight(&self, node: &str) -> u32 {
        self.slots.get(node).map_or(0, |&s| self.entries[s].1.inflight)
    }

    fn check(&self, id: &Arc<str>, e: &Entry, spec: &JobSpec<'_>) -> Result<Breakdown, Exclusion> {
        if !spec.node.is_empty() && *spec.node != **id {
            return Err(Exclusion::NotPinned);
        }
        if spec.tried.contains(id) {
            return Err(Exclusion::AlreadyTried);
        }
        if !e.facts.online {
            return Err(Exclusion::Offline);
        }
        if !e.facts.has_model(spec.model) {
            return Err(Exclusion::ModelMissing);
        }
        if !e.facts.runs_version(spec.model, spec.version) {
            return Err(Exclusion::WrongVersion);
        }
        if !labels_match(&e.facts.labels, spec.labels) {
            return Err(Exclusion::Labels);
        }
        score::score(&e.facts, e.inflight, e.rtt_ms, &self.cfg.score)
    }

    /// The best edge node for `spec`, if any.
    fn best_edge(&self, spec: &JobSpec<'_>) -> Option<(Arc<str>, Breakdown)> {
        if !spec.node.is_empty() {
            let (id, e) = &self.entries[*self.slots.get(spec.node)?];
            return self.check(id, e, spec).ok().map(|b| (id.clone(), b));
        }
        for (_, id, slot) in self.index.get(spec.model)? {
            let Some((_, e)) = self.entries.get(*slot) else { continue };
            if spec.tried.contains(id)
                || !labels_match(&e.facts.labels, spec.labels)
                || !e.facts.runs_version(spec.model, spec.version)
            {
                continue;
            }
            if let Ok(b) = score::score(&e.facts, e.inflight, e.rtt_ms, &self.cfg.score) {
                return Some((id.clone(), b));
            }
        }
        None
    }

    /// Decides where `spec` runs.
    ///
    /// # Errors
    /// No site can run it: the reason says what stopped each.
    pub fn route(&self, spec: &JobSpec<'_>, cloud: CloudView) -> Result<Decision, NoSite> {
        let edge_ok = spec.placement != Placement::CloudOnly;
        let cloud_allowed = spec.placement != Placement::EdgeOnly
            && spec.labels.is_empty()
            && spec.node.is_empty()
            && spec.version.is_empty();
        let cloud_ok = cloud_allowed && cloud.enabled && cloud.has_model && !cloud.saturated;
        let edge = if edge_ok { self.best_edge(spec) } else { None };
        match edge {
            Some((id, b)) if !cloud_ok || b.total() >= self.cfg.cloud_score => {
                let e = &self.entries[self.slots[&id]].1;
                let mut reason = edge_reason(&id, e, &b);
                if !spec.version.is_empty() {
                    let _ = write!(reason, "; runs {} version {}", spec.model, spec.version);
                }
                if cloud_ok {
                    let _ = write!(reason, "; the cloud tier scores {}", self.cfg.cloud_score);
                } else if cloud_allowed {
                    let _ = write!(reason, "; cloud tier {}", cloud_state(cloud));
                }
                Ok(Decision { target: Target::Edge(id), score: b.total(), reason })
            }
            Some((id, b)) => Ok(Decision {
                target: Target::Cloud,
                score: self.cfg.cloud_score,
                reason: format!(
                    "cloud tier: the best edge node {id} scores {} (under the cloud's {})",
                    b.total(),
                    self.cfg.cloud_score
                ),
            }),
            None if cloud_ok => Ok(Decision {
                target: Target::Cloud,
                score: self.cfg.cloud_score,
                reason: if edge_ok {
                    format!("cloud tier: no edge node can run it ({})", self.why_no_edge(spec))
                } else {
                    "cloud tier: the job asked for the cloud".to_owned()
                },
            }),
            None => {
                let mut reason = format!("no site can run model {:?}: ", spec.model);
                if edge_ok {
                    let _ = write!(reason, "edge: {}", self.why_no_edge(spec));
                } else {
                    reason.push_str("edge: the job asked for the cloud");
                }
                if cloud_allowed {
                    let _ = write!(reason, "; cloud tier {}", cloud_state(cloud));
                } else {
                    reason.push_str("; cloud tier not allowed by the job's constraints");
                }
                Err(NoSite(reason))
            }
        }
    }

    /// Every node's verdict for `spec`, sorted by id: its score, or why not.
    #[must_use]
    pub fn explain(&self, spec: &JobSpec<'_>) -> Vec<(Arc<str>, Result<Breakdown, Exclusion>)> {
        let mut v: Vec<_> = self.entries.iter().map(|(id, e)| (id.clone(), self.check(id, e, spec))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// "3 nodes: 2 saving power, 1 too hot" (first few node ids per cause).
    fn why_no_edge(&self, spec: &JobSpec<'_>) -> String {
        if self.entries.is_empty() {
            return "no node is known".into();
        }
        let mut by: BTreeMap<Exclusion, Vec<Arc<str>>> = BTreeMap::new();
        for (id, r) in self.explain(spec) {
            if let Err(x) = r {
                by.entry(x).or_default().push(id);
            }
        }
        let parts: Vec<String> = by
            .iter()
            .map(|(x, ids)| {
                let shown: Vec<&str> = ids.iter().take(3).map(|s| &**s).collect();
                let more = if ids.len() > 3 { ", ..." } else { "" };
                format!("{} {} ({}{more})", ids.len(), x.as_str(), shown.join(", "))
            })
            .collect();
        format!("{} nodes: {}", self.entries.len(), parts.join("; "))
    }
}

fn labels_match(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn cloud_state(c: CloudView) -> &'static str {
    if !c.enabled {
        "disabled"
    } else if !c.has_model {
        "lacks the model"
    } else if c.saturated {
        "busy (pool and queue full)"
    } else {
        "available"
    }
}

#[allow(clippy::cast_possible_truncation)] // display only; the values are small
fn whole(x: f64) -> i64 {
    // Integer formatting: exact float formatting costs more than the rest of a decision.
    x.round() as i64
}

fn edge_reason(id: &str, e: &Entry, b: &Breakdown) -> String {
    let f = &e.facts;
    let profile = match f.profile {
        PowerProfile::Performance => "performance",
        PowerProfile::Balanced => "balanced",
        _ => "profile unknown",
    };
    let mut s = String::with_capacity(192);
    let _ = write!(
        s,
        "edge node {id} scores {}/1000: queue {}/{} -{}, cpu {}% -{}, {profile} -{}, ",
        b.total(),
        e.inflight,
        f.max_jobs,
        b.queue,
        whole(f.cpu_pct),
        b.cpu,
        b.profile,
    );
    match (f.on_battery, f.battery_pct) {
        (false, _) => s.push_str("on mains"),
        (true, None) => s.push_str("on battery"),
        (true, Some(p)) => {
            let _ = write!(s, "on battery {}%", whole(p));
        }
    }
    let _ = write!(s, " -{}, ", b.battery);
    match f.temp_c {
        Some(t) => {
            let _ = write!(s, "{}/{} °C", whole(t), whole(f.thermal_limit_c));
        }
        None => s.push_str("temperature unknown"),
    }
    let _ = write!(s, " -{}, rtt {} ms -{}", b.thermal, whole(e.rtt_ms), b.rtt);
    s
}
