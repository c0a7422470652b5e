use std::collections::HashMap;

use fleet_proto::v1::{AgentCounters, NodeState, NodeStatus, NodeVitals, PowerProfile};

use super::*;

/// Node `i` of a test fleet: every third offline, profiles in turn, every
/// fifth without a battery reading, labels `site=a|b`.
fn node(i: usize) -> Node {
    let profiles = [PowerProfile::Performance, PowerProfile::Balanced, PowerProfile::Saver, PowerProfile::Critical];
    let state = if i.is_multiple_of(3) { NodeState::Offline } else { NodeState::Online };
    Node {
        node_id: format!("pi-{i:05}"),
        status: Some(NodeStatus {
            node_id: format!("pi-{i:05}"),
            state: state as i32,
            power_profile: profiles[i % 4] as i32,
            agent_version: format!("0.{}.0", i % 3),
            labels: HashMap::from([("site".to_owned(), if i.is_multiple_of(2) { "a" } else { "b" }.to_owned())]),
            vitals: Some(NodeVitals {
                battery_soc_pct: (!i.is_multiple_of(5)).then_some((i % 100) as f64),
                soc_temp_c: Some(40.0 + (i % 30) as f64),
                cpu_usage_pct: Some((i * 7 % 100) as f64),
                ..Default::default()
            }),
            counters: Some(AgentCounters { spool_bytes: (i * 13 % 1000) as u64, ..Default::default() }),
            ..Default::default()
        }),
        last_seen_unix_ms: 1_000 + i as i64,
        ..Default::default()
    }
}

fn fleet(n: usize) -> Vec<Node> {
    (0..n).map(node).collect()
}

fn ids(p: &FleetPage) -> Vec<&str> {
    p.rows.iter().map(|r| r.node_id.as_str()).collect()
}

#[test]
fn counts_cover_the_whole_fleet_whatever_the_filter() {
    let nodes = fleet(12);
    let q = FleetQuery { state: Some("offline".into()), ..Default::default() };
    let p = page(&nodes, &q);
    assert_eq!((p.total, p.matching), (12, 4));
    assert_eq!(p.by_state.get("online"), Some(&8));
    assert_eq!(p.by_state.get("offline"), Some(&4));
    assert_eq!(p.by_profile.values().sum::<usize>(), 12);
    assert!(p.rows.iter().all(|r| r.state == "offline"));
    let unknown = page(&[Node { node_id: "new".into(), ..Default::default() }], &FleetQuery::default());
    assert_eq!(unknown.rows[0].state, "unknown");
}

#[test]
fn filters_combine() {
    let nodes = fleet(40);
    let q = FleetQuery {
        profile: Some("saver".into()),
        label: Some("site=a".into()),
        q: Some("PI-0001".into()),
        ..Default::default()
    };
    let p = page(&nodes, &q);
    assert_eq!(ids(&p), ["pi-00010", "pi-00014", "pi-00018"]);
    let any_site = FleetQuery { label: Some("site".into()), ..Default::default() };
    assert_eq!(page(&nodes, &any_site).matching, 40);
    let no_such = FleetQuery { label: Some("rack=1".into()), ..Default::default() };
    assert_eq!(page(&nodes, &no_such).matching, 0);
}

#[test]
fn pages_are_disjoint_and_cover_every_match_in_order() {
    let nodes = fleet(1_003);
    for (sort, desc) in
        [(SortKey::Id, false), (SortKey::Battery, true), (SortKey::Cpu, false), (SortKey::LastSeen, true)]
    {
        let mut seen: Vec<Row> = Vec::new();
        for n in 0.. {
            let p = page(&nodes, &FleetQuery { sort, desc, page: n, per_page: 100, ..Default::default() });
            if p.rows.is_empty() {
                break;
            }
            seen.extend(p.rows);
        }
        assert_eq!(seen.len(), 1_003, "{sort:?}");
        let mut views: Vec<View<'_>> = nodes.iter().map(view).collect();
        views.sort_by(|a, b| compare(a, b, sort, desc));
        let all: Vec<Row> = views.iter().map(|v| row(v.node)).collect();
        assert_eq!(seen, all, "{sort:?} desc={desc}: the pages are the whole sorted table");
    }
}

#[test]
fn missing_readings_sort_last_both_ways() {
    let nodes = fleet(10);
    for desc in [false, true] {
        let p = page(&nodes, &FleetQuery { sort: SortKey::Battery, desc, ..Default::default() });
        let tail: Vec<Option<f64>> = p.rows.iter().rev().take(2).map(|r| r.battery_pct).collect();
        assert_eq!(tail, [None, None], "desc={desc}");
        let known: Vec<f64> = p.rows.iter().filter_map(|r| r.battery_pct).collect();
        let mut sorted = known.clone();
        sorted.sort_by(|a, b| if desc { b.total_cmp(a) } else { a.total_cmp(b) });
        assert_eq!(known, sorted);
    }
}

#[test]
fn page_size_is_bounded_and_a_page_past_the_end_is_empty() {
    let nodes = fleet(1_000);
    let p = page(&nodes, &FleetQuery { per_page: 100_000, ..Default::default() });
    assert_eq!((p.per_page, p.rows.len()), (MAX_PER_PAGE, MAX_PER_PAGE));
    assert_eq!(page(&nodes, &FleetQuery::default()).rows.len(), PER_PAGE);
    let past = page(&nodes, &FleetQuery { page: usize::MAX, ..Default::default() });
    assert!(past.rows.is_empty());
    assert_eq!(past.matching, 1_000);
}

#[test]
fn the_query_string_is_checked() {
    let q: FleetQuery = serde_json::from_str(r#"{"state":"online","sort":"last_seen","desc":true,"page":2}"#).unwrap();
    assert_eq!((q.sort, q.desc, q.page), (SortKey::LastSeen, true, 2));
    assert!(serde_json::from_str::<FleetQuery>(r#"{"sort":"nope"}"#).is_err());
    assert!(serde_json::from_str::<FleetQuery>(r#"{"colour":"red"}"#).is_err());
}
