//! Rotating the controller's own signing key with an overlap
//! (docs/security.md, "Rotating the controller's key"), with enrolled
//! agents as processes on the embedded broker: the new key reaches every
//! node (signed with the old) before it signs, so no node refuses anything;
//! a node that was away through the rotation recovers when it returns.

use fleet_tests::cluster::Broker;
use fleet_tests::enrolled::{EnrolledFleet, T};
use fleet_tests::{free_port, wait_for};

fn status(f: &EnrolledFleet) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&f.fleetctl(&["controller-key", "status", "-o", "json"])?)?)
}

fn waiting(s: &serde_json::Value) -> Vec<String> {
    s["waiting"].as_array().into_iter().flatten().filter_map(|w| w["node_id"].as_str().map(str::to_owned)).collect()
}

async fn wait_signing(f: &EnrolledFleet, generation: u64) -> anyhow::Result<serde_json::Value> {
    wait_for(T, &format!("generation {generation} signs"), || async move {
        status(f).ok().filter(|s| s["signing_generation"] == generation)
    })
    .await
}

/// The generation a node keeps in its enrollment: (the one that signs, the newest).
fn kept(f: &EnrolledFleet, node: &str) -> anyhow::Result<(u64, u64)> {
    let e = fleet_agent::enroll::load(&f.data_dir(node))?.ok_or_else(|| anyhow::anyhow!("{node} not enrolled"))?;
    Ok((e.controller_key_generation, e.controller_next_key_generation))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_key_rotation_reaches_every_node_before_the_new_key_signs() -> anyhow::Result<()> {
    let f = EnrolledFleet::start(Broker::Embedded(free_port()), &["ka", "kb"]).await?;
    f.wait_heard(&["ka", "kb"]).await?;
    let s = status(&f)?;
    assert_eq!((s["signing_generation"].as_u64(), s["rotation_open"].as_bool()), (Some(1), Some(false)), "{s}");
    let opened: serde_json::Value = serde_json::from_str(&f.fleetctl(&["controller-key", "rotate", "-o", "json"])?)?;
    assert_eq!((opened["signing_generation"].as_u64(), opened["newest_generation"].as_u64()), (Some(1), Some(2)));
    // Both nodes take the new key and report it; then it signs, by itself.
    let done = wait_signing(&f, 2).await?;
    assert!(waiting(&done).is_empty(), "{done}");
    // The controller's messages, now signed with the new key, still work;
    // each node then drops the old key.
    f.set_desired("ka", "2s", 1).await?;
    f.set_desired("kb", "2s", 1).await?;
    let fr = &f;
    for node in ["ka", "kb"] {
        wait_for(T, &format!("{node} keeps only generation 2"), || async move {
            (kept(fr, node).ok()? == (2, 0)).then_some(())
        })
        .await?;
        assert_eq!(f.refused(node), 0, "{node} refused none of the controller's messages through the rotation");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_through_a_controller_key_rotation_recovers_when_it_returns() -> anyhow::Result<()> {
    let mut f = EnrolledFleet::start(Broker::Embedded(free_port()), &["oa", "ob"]).await?;
    f.wait_heard(&["oa", "ob"]).await?;
    f.set_desired("ob", "2s", 1).await?;
    f.stop_node("ob")?;
    f.fleetctl(&["controller-key", "rotate"])?;
    let fr = &f;
    // oa takes the key; the rotation waits for ob, which is away.
    let s = wait_for(T, "only ob is waited for", || async move { status(fr).ok().filter(|s| waiting(s) == ["ob"]) })
        .await?;
    assert_eq!(s["signing_generation"], 1, "the old key signs while a node lacks the new one: {s}");
    let again = f.fleetctl(&["controller-key", "rotate"]).expect_err("a second rotation while one is open");
    assert!(format!("{again:#}").contains("is open"), "{again:#}");
    assert!(f.fleetctl(&["controller-key", "finish"]).is_err(), "finish needs --force");
    f.fleetctl(&["controller-key", "finish", "--force"])?;
    wait_signing(&f, 2).await?;
    f.set_desired("oa", "3s", 1).await?;
    // ob returns: the keys wait for it, signed with the generation it holds.
    f.start_node("ob")?;
    f.set_desired("ob", "3s", 2).await?;
    let fr = &f;
    wait_for(T, "ob keeps generation 2", || async move { (kept(fr, "ob").ok()? == (2, 0)).then_some(()) }).await?;
    let s = status(&f)?;
    assert!(waiting(&s).is_empty(), "{s}");
    println!("ob refused {} message(s) signed with the new key before it had it", f.refused("ob"));
    Ok(())
}
