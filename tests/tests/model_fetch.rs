//! A node downloads a model version from a real controller (TLS, enrollment
//! on) through the signed `ArtifactService` (docs/rollouts.md): a download
//! cut half-way resumes without the first half being sent again, a version
//! larger than the disk budget is refused with the reason before a byte is
//! sent, a request not signed by an enrolled node is refused.

use std::path::Path;
use std::time::Duration;

use fleet_agent::models::ModelStore;
use fleet_agent::models::fetch::{FetchError, Source, fetch_version};
use fleet_proto::v1::ModelChunk;
use fleet_proto::v1::artifact_service_client::ArtifactServiceClient;
use fleet_tests::{agent_config, channel, controller_config, enroll_agent, grpc};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const SIZE: usize = 24 * 1024 * 1024;

fn weights() -> Vec<u8> {
    (0..SIZE).map(|i| u8::try_from((i * 7 + i / 4096) % 251).unwrap_or(0)).collect()
}

fn manifest(data: &[u8]) -> String {
    let digest: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "name = \"big\"\nkind = \"text-classifier\"\nversion = \"1\"\n[[files]]\npath = \"w.bin\"\nsha256 = \"{digest}\"\nsize = {}\n",
        data.len()
    )
}

async fn push(c: &fleet_controller::Controller, data: &[u8]) -> anyhow::Result<()> {
    let mut chunks = vec![ModelChunk { path: "model.toml".into(), offset: 0, data: manifest(data).into_bytes() }];
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        chunks.push(ModelChunk { path: "w.bin".into(), offset: (i << 20) as u64, data: piece.to_vec() });
    }
    grpc(c).await?.push_model(tokio_stream::iter(chunks)).await?;
    Ok(())
}

fn part_len(staging: &Path) -> u64 {
    std::fs::metadata(staging.join("big/1/w.bin.part")).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_from_its_last_byte_and_the_budget_is_kept() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = controller_config(&dir.path().join("controller"), "", "");
    cfg.security.require_enrollment = true;
    let shutdown = CancellationToken::new();
    let c = fleet_controller::Controller::start(cfg, shutdown.clone()).await?;
    let node = agent_config("dl-1", &c.mqtt_url, dir.path());
    let enrollment = enroll_agent(&c, &node).await?;
    let identity = fleet_agent::identity::Identity::load(&node.data_dir)?;
    let data = weights();
    push(&c, &data).await?;

    let store = ModelStore::open(&node.data_dir)?;
    let client = ArtifactServiceClient::new(channel(&c).await?);
    let stop = CancellationToken::new();
    let mut src = Source { node_id: enrollment.node_id.clone(), key: identity.signing_key().clone(), client, stop };

    // Too little budget: refused with the reason, nothing of the file asked for.
    let served = || c.metrics.model_bytes_served.get();
    let e = fetch_version(&mut src, "big", "1", &store.staging(), (0, SIZE as u64 - 1)).await.unwrap_err();
    assert!(matches!(e, FetchError::Budget { need, .. } if need == SIZE as u64), "{e}");
    assert!(e.to_string().contains("disk_budget"), "{e}");
    let manifest_bytes = served();
    assert!(manifest_bytes < 1024, "only the manifest was sent: {manifest_bytes}");

    // Cut half-way: the node stops the download once half the file is on disk.
    let staging = store.staging();
    let watcher = {
        let (staging, stop) = (staging.clone(), src.stop.clone());
        tokio::spawn(async move {
            while part_len(&staging) < SIZE as u64 / 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stop.cancel();
        })
    };
    let e = fetch_version(&mut src, "big", "1", &staging, (0, 1 << 30)).await.unwrap_err();
    watcher.await?;
    assert!(matches!(e, FetchError::Cut(_)), "{e}");
    let first = part_len(&staging);
    assert!(first >= SIZE as u64 / 2 && first < SIZE as u64, "cut half-way: {first} of {SIZE}");

    // The controller had read a few chunks ahead for the cut stream; they are counted once it has ended.
    let mut before = served();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if served() == before {
            break;
        }
        before = served();
    }
    // Resumed: only the second half is asked for and sent.
    src.stop = CancellationToken::new();
    let done = fetch_version(&mut src, "big", "1", &staging, (0, 1 << 30)).await?;
    let sent = served() - before;
    let (second, manifest_len) = (SIZE as u64 - first, manifest(&data).len() as u64);
    assert_eq!(done.received, second + manifest_len, "the resumed call received the rest only");
    assert_eq!(sent, second + manifest_len, "the controller sent the rest only (and the manifest)");
    println!("FIGURE resume: {SIZE} bytes, cut at {first}, sent after the cut {sent} (second half {second})");
    assert_eq!(std::fs::read(done.dir.join("w.bin"))?, data);
    store.keep("big", "1")?;
    store.activate("big", "1")?;
    assert!(store.active_dir().join("big/model.toml").is_file());

    // A request signed by a key the controller does not know is refused.
    let stranger = fleet_proto::signing::signing_key(&[9; 32]);
    src.key = stranger;
    let e = fetch_version(&mut src, "big", "1", &dir.path().join("elsewhere"), (0, 1 << 30)).await.unwrap_err();
    assert!(matches!(&e, FetchError::Refused(why) if why.contains("signature")), "{e}");
    shutdown.cancel();
    c.wait().await;
    Ok(())
}
