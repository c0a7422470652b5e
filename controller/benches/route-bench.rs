//! Router throughput and latency with 10,000 nodes in the live view.
//!
//! `cargo run --release --bin route-bench [-- --nodes N --decisions N --model-version]`
//!
//! One decision = `route` (pick the best site for a job and write its reason)
//! plus `dispatched` (count the job on the node, re-keying it); a job finishes
//! 64 decisions later (`finished`, untimed), so queues stay realistic.
//! Labels: every 10th job must stay at one site. With `--model-version`
//! every job also asks for a model version (as during a rollout): `minilm`
//! version 2, which a third of the synthetic fleet runs, and `severity`
//! version 1. Prints as its last line
//! `router_decisions_per_s=<x> p99_us=<y>`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fleet_controller::router::{CloudView, JobSpec, Router, RouterConfig, Target, synthetic};
use fleet_proto::v1::Placement;

#[derive(Parser)]
struct Opts {
    /// Nodes in the live view.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Decisions timed (after 10,000 untimed warm-up ones).
    #[arg(long, default_value_t = 1_000_000)]
    decisions: usize,
    /// Every job asks for a model version.
    #[arg(long)]
    model_version: bool,
}

fn main() -> anyhow::Result<()> {
    let o = Opts::parse();
    let mut r = Router::new(RouterConfig::default());
    for s in synthetic::fleet(o.nodes, 7) {
        r.observe(&s);
    }
    let cloud = CloudView { enabled: true, has_model: true, saturated: false };
    let site: BTreeMap<String, String> = [("site".to_owned(), "site-3".to_owned())].into();
    let none = BTreeMap::new();
    let mut open: VecDeque<Arc<str>> = VecDeque::new();
    let mut lat = Vec::with_capacity(o.decisions);
    let (mut edge, mut to_cloud, mut refused) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for i in 0..(o.decisions + 10_000) {
        let model = if i % 3 == 0 { "severity" } else { "minilm" };
        let version = match (o.model_version, model) {
            (false, _) => "",
            (true, "minilm") => "2",
            (true, _) => "1",
        };
        let spec = JobSpec {
            model,
            version,
            labels: if i % 10 == 0 { &site } else { &none },
            placement: Placement::Any,
            node: "",
            tried: &[],
        };
        let t = Instant::now();
        let d = r.route(&spec, cloud);
        if let Ok(d) = &d
            && let Target::Edge(id) = &d.target
        {
            r.dispatched(id);
        }
        let ns = t.elapsed().as_nanos();
        match d {
            Ok(d) => match d.target {
                Target::Edge(id) => {
                    edge += 1;
                    open.push_back(id);
                }
                Target::Cloud => to_cloud += 1,
            },
            Err(_) => refused += 1,
        }
        if open.len() > 64
            && let Some(done) = open.pop_front()
        {
            r.finished(&done);
        }
        if i >= 10_000 {
            lat.push(u64::try_from(ns).context("latency")?);
        }
    }
    let _ = started;
    let total_ns: u64 = lat.iter().sum();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    let per_s = lat.len() as f64 / (total_ns as f64 / 1e9);
    println!("nodes={} decisions={} edge={edge} cloud={to_cloud} unavailable={refused}", o.nodes, lat.len());
    println!("p50_us={:.2} p90_us={:.2} p99_us={:.2} max_us={:.2}", pct(0.5), pct(0.9), pct(0.99), pct(1.0));
    println!("router_decisions_per_s={per_s:.0} p99_us={:.2}", pct(0.99));
    Ok(())
}
