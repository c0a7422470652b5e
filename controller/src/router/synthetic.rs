//! A seeded synthetic fleet for the router's benchmarks and tests: nodes
//! with a spread of loads, temperatures, power states, models and sites,
//! caught a third of the way through a rollout of `minilm` version 2 (the
//! other nodes run version 1; every node runs `severity` version 1).

use fleet_proto::v1::{NodeState, NodeStatus, NodeVitals, PowerProfile};

/// `n` node statuses, the same for the same `seed`.
#[must_use]
pub fn fleet(n: usize, seed: u64) -> Vec<NodeStatus> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|i| {
            let profile = match rng.u8(0..10) {
                0 => PowerProfile::Saver,
                1..=3 => PowerProfile::Balanced,
                _ => PowerProfile::Performance,
            };
            let on_battery = rng.u8(0..4) == 0;
            let mut models = vec!["severity".to_owned()];
            if rng.u8(0..10) < 8 {
                models.push("minilm".to_owned());
            }
            NodeStatus {
                node_id: format!("pi-{i:05}"),
                boot_id: "synthetic".into(),
                state: if rng.u8(0..50) == 0 { NodeState::Offline } else { NodeState::Online } as i32,
                power_profile: profile as i32,
                max_jobs: if profile == PowerProfile::Balanced { 2 } else { 4 },
                models,
                labels: [("site".to_owned(), format!("site-{}", i % 20))].into(),
                vitals: Some(NodeVitals {
                    cpu_usage_pct: Some(rng.f64() * 100.0),
                    soc_temp_c: Some(35.0 + rng.f64() * 45.0),
                    on_battery: Some(on_battery),
                    battery_soc_pct: on_battery.then(|| 20.0 + rng.f64() * 80.0),
                    ..Default::default()
                }),
                thermal_limit_c: Some(75.0),
                model_versions: [
                    ("severity".to_owned(), "1".to_owned()),
                    ("minilm".to_owned(), if i % 3 == 0 { "2" } else { "1" }.to_owned()),
                ]
                .into(),
                ..Default::default()
            }
        })
        .collect()
}
