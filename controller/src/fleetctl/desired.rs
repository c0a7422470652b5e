//! `fleetctl desired`: a node's desired state (power policy, telemetry
//! interval, labels, models) and what the node reported.

use std::time::Duration;

use clap::Subcommand;
use fleet_net::client::FleetClient;
use fleet_proto::v1::{DesiredState, GetDesiredStateRequest, SetDesiredStateRequest};

use super::args::parse_label;
use super::error::CtlError;
use super::output::{desired_json, pretty};

#[derive(Subcommand)]
pub enum DesiredCommand {
    /// Store and publish a new version; the node applies it and reports back.
    Set {
        node: String,
        /// Power policy file (TOML, the agent's [power] keys without the header).
        #[arg(long)]
        power_policy: Option<std::path::PathBuf>,
        /// Telemetry interval, e.g. 5s (0s: the agent's own).
        #[arg(long)]
        telemetry_interval: Option<humantime::Duration>,
        /// Label k=v (repeatable); replaces the node's labels.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Model the node should hold (repeatable).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Model version NAME=VERSION from `fleetctl models list` (repeatable):
        /// the node downloads, checks and activates it, reverting by itself on failure.
        #[arg(long = "model-version", value_parser = parse_label)]
        model_versions: Vec<(String, String)>,
        /// How long the node watches itself after this change before it
        /// confirms it (e.g. 2m; default: the agent's `[health] window`).
        #[arg(long)]
        health_window: Option<humantime::Duration>,
        /// Fail unless the current version is this one (optimistic concurrency).
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    /// The latest desired state and what the node reported.
    Get { node: String },
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one `desired` command.
///
/// # Errors
/// The policy file unreadable, the controller's error, or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, command: DesiredCommand) -> Result<(), CtlError> {
    match command {
        DesiredCommand::Set {
            node,
            power_policy,
            telemetry_interval,
            labels,
            models,
            model_versions,
            health_window,
            expected_version,
        } => {
            let power_policy_toml = match power_policy {
                Some(p) => std::fs::read_to_string(&p)
                    .map_err(|e| CtlError::Settings(format!("cannot read {}: {e}", p.display())))?,
                None => String::new(),
            };
            let desired = DesiredState {
                node_id: node,
                version: 0,
                telemetry_interval_ms: telemetry_interval.map_or(0, |d| ms(d.into())),
                labels: labels.into_iter().collect(),
                models,
                power_policy_toml,
                model_versions: model_versions.into_iter().collect(),
                health_window_ms: health_window.map_or(0, |d| ms(d.into())),
            };
            let req = SetDesiredStateRequest { desired: Some(desired), expected_version };
            let stored = client.set_desired_state(req).await?.into_inner();
            println!("desired state of {} is now version {}", stored.node_id, stored.version);
        }
        DesiredCommand::Get { node } => {
            let v = client.get_desired_state(GetDesiredStateRequest { node_id: node }).await?.into_inner();
            println!("{}", pretty(&desired_json(&v))?);
        }
    }
    Ok(())
}
