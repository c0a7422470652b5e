//! Compiles proto/fleet/v1/*.proto with protox (pure Rust, no system protoc)
//! and writes the descriptor set that gRPC reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "fleet/v1/telemetry.proto",
        "fleet/v1/node.proto",
        "fleet/v1/jobs.proto",
        "fleet/v1/security.proto",
        "fleet/v1/models.proto",
        "fleet/v1/rollouts.proto",
        "fleet/v1/fleet.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fleet_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
