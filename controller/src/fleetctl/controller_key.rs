//! `fleetctl controller-key`: the controller's own signing key, and its
//! rotation with an overlap (docs/security.md, "Rotating the controller's key").

use clap::Subcommand;
use fleet_net::client::FleetClient;
use fleet_proto::v1::{ControllerKeyStatus, GetControllerKeyRequest, RotateControllerKeyRequest};
use serde_json::json;

use super::args::Output;
use super::error::CtlError;
use super::output::pretty;

#[derive(Subcommand)]
pub enum ControllerKeyCommand {
    /// The generation that signs, an open rotation and the nodes it waits for.
    Status,
    /// Opens a rotation: every node gets the new key, signed with the old;
    /// the new key signs once every enrolled node holds it.
    Rotate,
    /// Finishes the open rotation now, before every node holds the new key
    /// (nodes away get it when they come back).
    Finish {
        /// Required: nodes that do not hold the new key yet (see `status`)
        /// refuse the controller's messages until they report again.
        #[arg(long, required = true)]
        force: bool,
    },
}

/// Runs a `controller-key` command.
///
/// # Errors
/// The controller's error, or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, command: ControllerKeyCommand, out: Output) -> Result<(), CtlError> {
    let status = match command {
        ControllerKeyCommand::Status => client.get_controller_key(GetControllerKeyRequest {}).await?,
        ControllerKeyCommand::Rotate => {
            client.rotate_controller_key(RotateControllerKeyRequest { finish_now: false }).await?
        }
        ControllerKeyCommand::Finish { force: _ } => {
            client.rotate_controller_key(RotateControllerKeyRequest { finish_now: true }).await?
        }
    }
    .into_inner();
    if out == Output::Json {
        println!("{}", pretty(&status_json(&status))?);
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

fn status_json(s: &ControllerKeyStatus) -> serde_json::Value {
    json!({
        "signing_generation": s.signing_generation,
        "newest_generation": s.newest_generation,
        "rotation_open": s.newest_generation > s.signing_generation,
        "waiting": s.waiting.iter().map(|w| json!({"node_id": w.node_id, "generation": w.generation})).collect::<Vec<_>>(),
    })
}

fn status_text(s: &ControllerKeyStatus) -> String {
    let mut t = format!("signing generation: {}\n", s.signing_generation);
    if s.newest_generation > s.signing_generation {
        t += &format!("rotation open to generation {}: waiting for {} node(s)\n", s.newest_generation, s.waiting.len());
    }
    for w in &s.waiting {
        let held = if w.generation == 0 {
            "no status since the controller started".to_owned()
        } else {
            format!("holds {}", w.generation)
        };
        t += &format!("  {:<24} {held}\n", w.node_id);
    }
    t
}
