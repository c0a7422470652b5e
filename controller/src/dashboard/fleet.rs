//! The fleet page's table: the live view's nodes filtered (state, power
//! profile, label, id), sorted and paged on the server, with the counts by
//! state and profile of the whole fleet. Pure: the HTTP handler passes the
//! registry's nodes and the query string.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use fleet_proto::v1::Node;
use serde::{Deserialize, Serialize};

use crate::registry::{profile_word, state_word};

/// Rows a page holds by default, and at most.
pub const PER_PAGE: usize = 50;
pub const MAX_PER_PAGE: usize = 500;

/// What the table is sorted by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    #[default]
    Id,
    State,
    Profile,
    Battery,
    Temp,
    Cpu,
    Backlog,
    LastSeen,
    Version,
}

/// The query string of `/api/fleet` (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetQuery {
    /// `online`, `offline` or `unknown`.
    pub state: Option<String>,
    /// `performance`, `balanced`, `saver`, `critical` or `unknown`.
    pub profile: Option<String>,
    /// `key=value`, or `key` for any value.
    pub label: Option<String>,
    /// Part of the node id (case-insensitive).
    pub q: Option<String>,
    pub sort: SortKey,
    pub desc: bool,
    /// 0-based.
    pub page: usize,
    /// 0: [`PER_PAGE`]; at most [`MAX_PER_PAGE`].
    pub per_page: usize,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub node_id: String,
    pub state: String,
    pub profile: String,
    pub battery_pct: Option<f64>,
    pub on_battery: Option<bool>,
    pub soc_temp_c: Option<f64>,
    pub cpu_pct: Option<f64>,
    /// Bytes waiting in the node's spool, and batches not yet acknowledged.
    pub spool_bytes: u64,
    pub batches_unacked: u64,
    pub last_seen_unix_ms: i64,
    pub agent_version: String,
    pub labels: BTreeMap<String, String>,
}

/// A page of the table and the fleet's counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetPage {
    /// Nodes in the fleet, and those the filters keep.
    pub total: usize,
    pub matching: usize,
    pub by_state: BTreeMap<String, usize>,
    pub by_profile: BTreeMap<String, usize>,
    pub page: usize,
    pub per_page: usize,
    pub rows: Vec<Row>,
}

/// What filtering and sorting read of one node, borrowed.
struct View<'a> {
    node: &'a Node,
    state: &'static str,
    profile: &'static str,
    battery: Option<f64>,
    temp: Option<f64>,
    cpu: Option<f64>,
    spool_bytes: u64,
    version: &'a str,
}

fn view(n: &Node) -> View<'_> {
    let s = n.status.as_ref();
    let v = s.and_then(|s| s.vitals).unwrap_or_default();
    View {
        node: n,
        state: state_word(n),
        profile: profile_word(n),
        battery: v.battery_soc_pct,
        temp: v.soc_temp_c,
        cpu: v.cpu_usage_pct,
        spool_bytes: s.and_then(|s| s.counters.as_ref()).map_or(0, |c| c.spool_bytes),
        version: s.map_or("", |s| s.agent_version.as_str()),
    }
}

/// One row, for the nodes of the page only.
#[must_use]
pub fn row(n: &Node) -> Row {
    let s = n.status.clone().unwrap_or_default();
    let v = s.vitals.unwrap_or_default();
    let c = s.counters.unwrap_or_default();
    Row {
        node_id: n.node_id.clone(),
        state: state_word(n).to_owned(),
        profile: profile_word(n).to_owned(),
        battery_pct: v.battery_soc_pct,
        on_battery: v.on_battery,
        soc_temp_c: v.soc_temp_c,
        cpu_pct: v.cpu_usage_pct,
        spool_bytes: c.spool_bytes,
        batches_unacked: c.batches_unacked,
        last_seen_unix_ms: n.last_seen_unix_ms,
        agent_version: s.agent_version,
        labels: s.labels.into_iter().collect(),
    }
}

fn keeps(v: &View<'_>, q: &FleetQuery, search: Option<&str>) -> bool {
    let labels = v.node.status.as_ref().map(|s| &s.labels);
    let label = q.label.as_deref().is_none_or(|l| match l.split_once('=') {
        Some((k, want)) => labels.and_then(|m| m.get(k)).is_some_and(|x| x == want),
        None => labels.is_some_and(|m| m.contains_key(l)),
    });
    q.state.as_deref().is_none_or(|s| v.state == s)
        && q.profile.as_deref().is_none_or(|p| v.profile == p)
        && label
        && search.is_none_or(|s| v.node.node_id.to_ascii_lowercase().contains(s))
}

/// Missing values sort last whichever the direction.
fn by_opt(a: Option<f64>, b: Option<f64>, desc: bool) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => {
            let o = x.total_cmp(&y);
            if desc { o.reverse() } else { o }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn compare(a: &View<'_>, b: &View<'_>, key: SortKey, desc: bool) -> Ordering {
    let dir = |o: Ordering| if desc { o.reverse() } else { o };
    let (an, bn) = (a.node, b.node);
    let o = match key {
        SortKey::Id => Ordering::Equal,
        SortKey::State => dir(a.state.cmp(b.state)),
        SortKey::Profile => dir(a.profile.cmp(b.profile)),
        SortKey::Battery => by_opt(a.battery, b.battery, desc),
        SortKey::Temp => by_opt(a.temp, b.temp, desc),
        SortKey::Cpu => by_opt(a.cpu, b.cpu, desc),
        SortKey::Backlog => dir(a.spool_bytes.cmp(&b.spool_bytes)),
        SortKey::LastSeen => dir(an.last_seen_unix_ms.cmp(&bn.last_seen_unix_ms)),
        SortKey::Version => dir(a.version.cmp(b.version)),
    };
    // Ties (and the id sort) by id, so pages never overlap.
    o.then_with(|| if key == SortKey::Id { dir(an.node_id.cmp(&bn.node_id)) } else { an.node_id.cmp(&bn.node_id) })
}

/// The page `q` asks for out of `nodes` (read in place: only the page's rows are copied).
#[must_use]
pub fn page<'a>(nodes: impl IntoIterator<Item = &'a Node>, q: &FleetQuery) -> FleetPage {
    let per_page = if q.per_page == 0 { PER_PAGE } else { q.per_page.min(MAX_PER_PAGE) };
    let search = q.q.as_deref().map(str::to_ascii_lowercase).filter(|s| !s.is_empty());
    let mut counts = Counts::default();
    let mut kept = Vec::new();
    for n in nodes {
        let v = view(n);
        counts.add(&v);
        if keeps(&v, q, search.as_deref()) {
            kept.push(v);
        }
    }
    let Counts { total, by_state, by_profile } = counts;
    let matching = kept.len();
    let start = q.page.saturating_mul(per_page).min(matching);
    let end = start.saturating_add(per_page).min(matching);
    // Only the rows up to the page's end need their final order.
    if end > 0 && end < matching {
        kept.select_nth_unstable_by(end - 1, |a, b| compare(a, b, q.sort, q.desc));
        kept.truncate(end);
    }
    kept.sort_unstable_by(|a, b| compare(a, b, q.sort, q.desc));
    let rows = kept[start..end].iter().map(|v| row(v.node)).collect();
    FleetPage { total, matching, by_state, by_profile, page: q.page, per_page, rows }
}

/// Nodes by state and by power profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: usize,
    pub by_state: BTreeMap<String, usize>,
    pub by_profile: BTreeMap<String, usize>,
}

impl Counts {
    /// The counts of `nodes`.
    #[must_use]
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Self {
        let mut c = Self::default();
        for n in nodes {
            c.add(&view(n));
        }
        c
    }

    fn add(&mut self, v: &View<'_>) {
        self.total += 1;
        count(&mut self.by_state, v.state);
        count(&mut self.by_profile, v.profile);
    }
}

fn count(m: &mut BTreeMap<String, usize>, word: &str) {
    match m.get_mut(word) {
        Some(n) => *n += 1,
        None => {
            m.insert(word.to_owned(), 1);
        }
    }
}

#[cfg(test)]
mod tests;
