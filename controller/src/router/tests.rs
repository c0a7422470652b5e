use super::*;
use fleet_proto::v1::{NodeState, NodeVitals};

fn node(id: &str) -> NodeStatus {
    NodeStatus {
        node_id: id.into(),
        boot_id: "b".into(),
        state: NodeState::Online as i32,
        power_profile: PowerProfile::Performance as i32,
        max_jobs: 4,
        models: vec!["minilm".into(), "severity".into()],
        vitals: Some(NodeVitals {
            cpu_usage_pct: Some(10.0),
            soc_temp_c: Some(45.0),
            on_battery: Some(false),
            ..Default::default()
        }),
        thermal_limit_c: Some(75.0),
        ..Default::default()
    }
}

fn router(nodes: &[NodeStatus]) -> Router {
    let mut r = Router::new(RouterConfig::default());
    for n in nodes {
        r.observe(n);
    }
    r
}

const NO_LABELS: &BTreeMap<String, String> = &BTreeMap::new();
const CLOUD: CloudView = CloudView { enabled: true, has_model: true, saturated: false };
const NO_CLOUD: CloudView = CloudView { enabled: false, has_model: true, saturated: false };

fn spec(model: &str) -> JobSpec<'_> {
    JobSpec { model, labels: NO_LABELS, placement: Placement::Any, node: "", version: "", tried: &[] }
}

fn edge(d: &Decision) -> &str {
    match &d.target {
        Target::Edge(id) => id,
        Target::Cloud => "cloud",
    }
}

#[test]
fn a_node_saving_power_is_avoided() {
    let mut saver = node("a");
    saver.power_profile = PowerProfile::Saver as i32;
    let r = router(&[saver, node("b")]);
    let d = r.route(&spec("minilm"), CLOUD).unwrap();
    assert_eq!(edge(&d), "b");
    assert!(d.reason.contains("edge node b"), "{}", d.reason);
    // Alone, it is still avoided: the cloud runs the job and says why.
    let mut saver = node("a");
    saver.power_profile = PowerProfile::Critical as i32;
    let d = router(&[saver]).route(&spec("minilm"), CLOUD).unwrap();
    assert_eq!(d.target, Target::Cloud);
    assert!(d.reason.contains("1 saving power (a)"), "{}", d.reason);
}

#[test]
fn a_hot_or_throttled_node_is_avoided_and_a_warm_one_scores_less() {
    let mut hot = node("a");
    hot.vitals.as_mut().unwrap().soc_temp_c = Some(74.0);
    let mut throttled = node("b");
    throttled.throttle_bits = 0x4;
    let mut warm = node("c");
    warm.vitals.as_mut().unwrap().soc_temp_c = Some(68.0);
    let r = router(&[hot.clone(), throttled, warm]);
    let d = r.route(&spec("minilm"), NO_CLOUD).unwrap();
    assert_eq!(edge(&d), "c");
    let r = router(&[hot, node("d"), {
        let mut w = node("c");
        w.vitals.as_mut().unwrap().soc_temp_c = Some(68.0);
        w
    }]);
    assert_eq!(edge(&r.route(&spec("minilm"), NO_CLOUD).unwrap()), "d");
    let verdicts = r.explain(&spec("minilm"));
    assert_eq!(verdicts[0].1, Err(Exclusion::Hot));
    assert_eq!(verdicts[1].1.unwrap().thermal, 80); // 7 °C of headroom: 8 under 15
}

#[test]
fn a_full_queue_is_avoided_and_load_spreads() {
    let mut small = node("a");
    small.max_jobs = 1;
    let mut r = router(&[small, node("b")]);
    assert_eq!(edge(&r.route(&spec("minilm"), NO_CLOUD).unwrap()), "a");
    r.dispatched("a");
    let d = r.route(&spec("minilm"), NO_CLOUD).unwrap();
    assert_eq!(edge(&d), "b");
    r.dispatched("b");
    // b has 1/4: still better than nothing; a is full.
    assert_eq!(r.explain(&spec("minilm"))[0].1, Err(Exclusion::QueueFull));
    r.finished("a");
    assert_eq!(edge(&r.route(&spec("minilm"), NO_CLOUD).unwrap()), "a");
    // Jobs spread over equal nodes: each dispatch lowers the node's score.
    let mut r = router(&[node("x"), node("y"), node("z")]);
    let mut got = Vec::new();
    for _ in 0..6 {
        let d = r.route(&spec("minilm"), NO_CLOUD).unwrap();
        let id = edge(&d).to_owned();
        r.dispatched(&id);
        got.push(id);
    }
    assert_eq!(got, ["x", "y", "z", "x", "y", "z"]);
}

#[test]
fn labels_and_pins_are_honoured() {
    let mut a = node("a");
    a.labels.insert("site".into(), "berlin".into());
    let mut b = node("b");
    b.labels.insert("site".into(), "paris".into());
    b.vitals.as_mut().unwrap().cpu_usage_pct = Some(0.0); // b scores higher
    let r = router(&[a, b]);
    let want: BTreeMap<String, String> = [("site".to_owned(), "berlin".to_owned())].into();
    let s = JobSpec { labels: &want, ..spec("minilm") };
    assert_eq!(edge(&r.route(&s, CLOUD).unwrap()), "a");
    assert_eq!(edge(&r.route(&spec("minilm"), CLOUD).unwrap()), "b");
    let lyon: BTreeMap<String, String> = [("site".to_owned(), "lyon".to_owned())].into();
    // Labels keep data at a site: never the cloud.
    let err = r.route(&JobSpec { labels: &lyon, ..spec("minilm") }, CLOUD).unwrap_err().0;
    assert!(err.contains("2 labels do not match"), "{err}");
    assert!(err.contains("cloud tier not allowed"), "{err}");
    assert_eq!(edge(&r.route(&JobSpec { node: "a", ..spec("minilm") }, CLOUD).unwrap()), "a");
    let tried: Vec<Arc<str>> = vec!["b".into()];
    assert_eq!(edge(&r.route(&JobSpec { tried: &tried, ..spec("minilm") }, CLOUD).unwrap()), "a");
}

#[test]
fn a_model_version_is_only_found_on_the_nodes_that_run_it() {
    let mut old = node("a");
    old.model_versions.insert("minilm".into(), "1".into());
    old.vitals.as_mut().unwrap().cpu_usage_pct = Some(0.0); // a scores higher
    let mut new = node("b");
    new.model_versions.insert("minilm".into(), "2".into());
    let r = router(&[old, new, node("c")]);
    assert_eq!(edge(&r.route(&spec("minilm"), CLOUD).unwrap()), "a", "no version asked: the best node");
    let d = r.route(&JobSpec { version: "2", ..spec("minilm") }, CLOUD).unwrap();
    assert_eq!(edge(&d), "b");
    assert!(d.reason.contains("runs minilm version 2"), "{}", d.reason);
    assert!(!d.reason.contains("cloud"), "a version keeps the job at the edge: {}", d.reason);
    let err = r.route(&JobSpec { version: "3", ..spec("minilm") }, CLOUD).unwrap_err().0;
    assert!(err.contains("3 runs another version (a, b, c)"), "{err}");
    assert!(err.contains("cloud tier not allowed"), "{err}");
}

#[test]
fn ties_are_broken_by_node_id() {
    let r = router(&[node("n3"), node("n1"), node("n2")]);
    for _ in 0..3 {
        assert_eq!(edge(&r.route(&spec("minilm"), NO_CLOUD).unwrap()), "n1");
    }
}

#[test]
fn model_missing_battery_and_rtt() {
    let mut no_model = node("a");
    no_model.models = vec!["severity".into()];
    let mut battery = node("b");
    let v = battery.vitals.as_mut().unwrap();
    v.on_battery = Some(true);
    v.battery_soc_pct = Some(50.0);
    let mut r = router(&[no_model, battery, node("c")]);
    assert_eq!(edge(&r.route(&spec("minilm"), NO_CLOUD).unwrap()), "c");
    let verdicts = r.explain(&spec("minilm"));
    assert_eq!(verdicts[0].1, Err(Exclusion::ModelMissing));
    assert_eq!(verdicts[1].1.unwrap().battery, 130);
    // A slow link costs c its lead.
    for _ in 0..30 {
        r.observe_rtt("c", 400.0);
    }
    assert_eq!(edge(&r.route(&spec("minilm"), NO_CLOUD).unwrap()), "b");
}

#[test]
fn cloud_competes_and_unavailable_says_why() {
    let mut weak = node("a");
    weak.power_profile = PowerProfile::Balanced as i32;
    weak.vitals.as_mut().unwrap().cpu_usage_pct = Some(100.0);
    weak.vitals.as_mut().unwrap().on_battery = Some(true);
    weak.max_jobs = 2;
    let mut r = router(&[weak]);
    r.dispatched("a"); // 1/2 -200, cpu -200, balanced -100, battery -100, rtt 20 ms -20: 380
    assert_eq!(edge(&r.route(&spec("minilm"), CLOUD).unwrap()), "a");
    r.observe_rtt("a", 2000.0); // smoothed 416 ms, -200: 200 is under the cloud's 250
    let d = r.route(&spec("minilm"), CLOUD).unwrap();
    assert_eq!(d.target, Target::Cloud);
    assert!(d.reason.contains("under the cloud's 250"), "{}", d.reason);
    // Edge only: the weak node still runs it.
    let s = JobSpec { placement: Placement::EdgeOnly, ..spec("minilm") };
    assert_eq!(edge(&r.route(&s, CLOUD).unwrap()), "a");
    // Nobody can: the reason names each cause.
    let err = r.route(&spec("other"), NO_CLOUD).unwrap_err().0;
    assert!(err.contains("1 model missing (a)") && err.contains("cloud tier disabled"), "{err}");
    let err = Router::new(RouterConfig::default()).route(&spec("minilm"), NO_CLOUD).unwrap_err().0;
    assert!(err.contains("no node is known"), "{err}");
    let busy = CloudView { saturated: true, ..CLOUD };
    let s = JobSpec { placement: Placement::CloudOnly, ..spec("minilm") };
    assert!(r.route(&s, busy).unwrap_err().0.contains("busy"));
    assert_eq!(r.route(&s, CLOUD).unwrap().target, Target::Cloud);
}

#[test]
fn status_changes_move_a_node_in_and_out() {
    let mut r = router(&[node("a")]);
    let mut off = node("a");
    off.state = NodeState::Offline as i32;
    r.observe(&off);
    assert!(r.route(&spec("minilm"), NO_CLOUD).is_err());
    r.observe(&node("a"));
    assert_eq!(edge(&r.route(&spec("minilm"), NO_CLOUD).unwrap()), "a");
    let mut fewer = node("a");
    fewer.models = vec!["severity".into()];
    r.observe(&fewer);
    assert!(r.route(&spec("minilm"), NO_CLOUD).is_err());
    assert_eq!(edge(&r.route(&spec("severity"), NO_CLOUD).unwrap()), "a");
}
