//! Criterion benchmark of one routing decision (route + dispatch + finish)
//! with 10,000 nodes in the live view: `cargo bench -p fleet-controller --bench router`.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_controller::router::{CloudView, JobSpec, Router, RouterConfig, Target, synthetic};
use fleet_proto::v1::Placement;

fn decide(c: &mut Criterion) {
    let mut r = Router::new(RouterConfig::default());
    for s in synthetic::fleet(10_000, 7) {
        r.observe(&s);
    }
    let cloud = CloudView { enabled: true, has_model: true, saturated: false };
    let none = BTreeMap::new();
    let spec = JobSpec { model: "minilm", labels: &none, placement: Placement::Any, node: "", version: "", tried: &[] };
    c.bench_function("route_dispatch_finish_10k_nodes", |b| {
        b.iter(|| {
            if let Ok(d) = r.route(&spec, cloud)
                && let Target::Edge(id) = d.target
            {
                r.dispatched(&id);
                r.finished(&id);
            }
        });
    });
}

criterion_group!(benches, decide);
criterion_main!(benches);
