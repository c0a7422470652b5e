//! The fleet page's table: the live view's nodes filtered (state, power
//! profile, label, id), sorted and paged on the server, with the counts by
//! state and profile of the whole fleet. Pure: the HTTP handler passes the
//! registry's nodes and the query string.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use fleet_proto::v1::{Node, PowerProfile};
use serde::{Deserialize, Serialize};

use crate::registry::state_word;

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

/// A power profile's word (as the agent names it).
fn profile_word(p: PowerProfile) -> &'static str {
    match p {
        PowerProfile::Performance => "performance",
        PowerProfile::Balanced => "balanced",
        PowerProfile::Saver => "saver",
        PowerProfile::Critical => "critical",
        PowerProfile::Unspecified => "unknown",
    }
}

fn row(n: &Node) -> Row {
    let s = n.status.clone().unwrap_or_default();
    let v = s.vitals.unwrap_or_default();
    let c = s.counters.unwrap_or_default();
    let profile = PowerProfile::try_from(s.power_profile).unwrap_or_default();
    Row {
        node_id: n.node_id.clone(),
        state: state_word(n).to_owned(),
        profile: profile_word(profile).to_owned(),
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

fn keeps(r: &Row, q: &FleetQuery, search: Option<&str>) -> bool {
    let label = q.label.as_deref().is_none_or(|l| match l.split_once('=') {
        Some((k, v)) => r.labels.get(k).is_some_and(|x| x == v),
        None => r.labels.contains_key(l),
    });
    q.state.as_deref().is_none_or(|s| r.state == s)
        && q.profile.as_deref().is_none_or(|p| r.profile == p)
        && label
        && search.is_none_or(|s| r.node_id.to_ascii_lowercase().contains(s))
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

fn compare(a: &Row, b: &Row, key: SortKey, desc: bool) -> Ordering {
    let dir = |o: Ordering| if desc { o.reverse() } else { o };
    let o = match key {
        SortKey::Id => Ordering::Equal,
        SortKey::State => dir(a.state.cmp(&b.state)),
        SortKey::Profile => dir(a.profile.cmp(&b.profile)),
        SortKey::Battery => by_opt(a.battery_pct, b.battery_pct, desc),
        SortKey::Temp => by_opt(a.soc_temp_c, b.soc_temp_c, desc),
        SortKey::Cpu => by_opt(a.cpu_pct, b.cpu_pct, desc),
        SortKey::Backlog => dir(a.spool_bytes.cmp(&b.spool_bytes)),
        SortKey::LastSeen => dir(a.last_seen_unix_ms.cmp(&b.last_seen_unix_ms)),
        SortKey::Version => dir(a.agent_version.cmp(&b.agent_version)),
    };
    // Ties (and the id sort) by id, so pages never overlap.
    o.then_with(|| if key == SortKey::Id { dir(a.node_id.cmp(&b.node_id)) } else { a.node_id.cmp(&b.node_id) })
}

/// The page `q` asks for out of `nodes`.
#[must_use]
pub fn page(nodes: &[Node], q: &FleetQuery) -> FleetPage {
    let per_page = if q.per_page == 0 { PER_PAGE } else { q.per_page.min(MAX_PER_PAGE) };
    let search = q.q.as_deref().map(str::to_ascii_lowercase).filter(|s| !s.is_empty());
    let (mut by_state, mut by_profile) = (BTreeMap::new(), BTreeMap::new());
    let mut kept = Vec::new();
    for n in nodes {
        let r = row(n);
        *by_state.entry(r.state.clone()).or_insert(0) += 1;
        *by_profile.entry(r.profile.clone()).or_insert(0) += 1;
        if keeps(&r, q, search.as_deref()) {
            kept.push(r);
        }
    }
    let matching = kept.len();
    let start = q.page.saturating_mul(per_page).min(matching);
    let end = start.saturating_add(per_page).min(matching);
    // Only the rows up to the page's end need their final order.
    if end > 0 && end < matching {
        kept.select_nth_unstable_by(end - 1, |a, b| compare(a, b, q.sort, q.desc));
        kept.truncate(end);
    }
    kept.sort_unstable_by(|a, b| compare(a, b, q.sort, q.desc));
    let rows = kept.drain(start..end).collect();
    FleetPage { total: nodes.len(), matching, by_state, by_profile, page: q.page, per_page, rows }
}

#[cfg(test)]
mod tests;
