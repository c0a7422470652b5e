//! Every input kept in `fuzz/corpus/<target>/` (seeds, and what fuzzing
//! found worth keeping, findings included) through its target's function:
//! the fuzzers' findings stay fixed without fuzzing in CI. Plus a few valid
//! messages of each kind, so each target's deep path runs here too.

use std::path::Path;

use fleet_fuzz::TARGETS;
use fleet_proto::v1::{Ack, DesiredState, Job, KeyRotation, NodeStatus, Sample, TelemetryBatch};
use prost::Message;

#[test]
fn every_kept_input_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut ran = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let path = e.expect("corpus entry").path();
            target(&std::fs::read(&path).expect("corpus file"));
            ran += 1;
        }
    }
    println!("{ran} kept inputs replayed");
}

#[test]
fn valid_messages_run_through_every_target() {
    let batch = TelemetryBatch {
        node_id: fleet_fuzz::NODE.into(),
        boot_id: "b".into(),
        samples: vec![Sample { metric: "cpu.usage_pct".into(), value: 1.0, time_unix_ms: 1_700_000_000_000 }],
        ..Default::default()
    };
    let inputs = [
        batch.encode_to_vec(),
        NodeStatus { node_id: fleet_fuzz::NODE.into(), ..Default::default() }.encode_to_vec(),
        Ack { boot_id: "b".into(), up_to_seq: 3, committed: vec![] }.encode_to_vec(),
        DesiredState { node_id: fleet_fuzz::NODE.into(), version: 2, ..Default::default() }.encode_to_vec(),
        Job { job_id: "j".into(), model: "severity".into(), ..Default::default() }.encode_to_vec(),
        KeyRotation { generation: 1, accepted_public_key: String::new() }.encode_to_vec(),
        vec![],
        vec![0xff; 64],
    ];
    for (_, target) in TARGETS {
        for input in &inputs {
            target(input);
        }
    }
}
