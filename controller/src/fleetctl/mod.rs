//! `fleetctl`, the operator's command line for the controller's gRPC API:
//! one module per noun (`nodes`, `telemetry`, `desired`, `jobs`, `models`,
//! `tokens`, `audit`, `usage`), every table and JSON shape in `output`, where the controller
//! and the token are found in `settings`. The binary only parses and runs.

pub mod args;
pub mod audit;
pub mod controller_key;
pub mod desired;
pub mod error;
pub mod jobs;
pub mod models;
pub mod nodes;
pub mod output;
pub mod settings;
pub mod telemetry;
pub mod tokens;
pub mod usage;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use args::Output;
use error::CtlError;
use settings::{Given, Settings};

#[derive(Parser)]
#[command(name = "fleetctl", version, about = "Operate a Spark Fleet through its controller")]
pub struct Cli {
    /// Controller gRPC endpoint [default: from the config file, else https://127.0.0.1:50051].
    #[arg(long, global = true, env = "FLEET_SERVER")]
    server: Option<String>,
    /// File holding the API token [default: from the config file, else the
    /// controller's admin.token in ./fleet-data/controller, ./fleet-data or /var/lib/fleet-controller].
    /// The token itself may come in FLEET_TOKEN instead (never as a flag: flags show in `ps`).
    #[arg(long, global = true, env = "FLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The controller's CA (PEM) for https:// [default: from the config file,
    /// else tls/ca.pem in ./fleet-data/controller, ./fleet-data or /var/lib/fleet-controller].
    #[arg(long, global = true, env = "FLEET_CA")]
    ca: Option<PathBuf>,
    /// Config file with `server`, `token_file` and `ca` [default: ~/.config/fleet/fleetctl.toml when present].
    #[arg(long, global = true, env = "FLEETCTL_CONFIG")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Nodes of the fleet.
    Nodes {
        #[command(subcommand)]
        command: nodes::NodesCommand,
    },
    /// A node's desired state (power policy, telemetry interval, labels, models).
    Desired {
        #[command(subcommand)]
        command: desired::DesiredCommand,
    },
    /// Inference jobs: submit one and see where it ran and why, or list recent ones.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Model versions the controller keeps and serves to nodes.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// One-time bootstrap tokens that enroll nodes (`fleet-agent enroll --token`).
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// API tokens for fleetctl and other clients (admin).
    ApiTokens {
        #[command(subcommand)]
        command: tokens::ApiTokensCommand,
    },
    /// The audit log: every change made through the API, newest first.
    Audit(audit::AuditArgs),
    /// Telemetry of one node.
    Telemetry(telemetry::TelemetryArgs),
    /// The controller's own signing key and its rotation (admin).
    ControllerKey {
        #[command(subcommand)]
        command: controller_key::ControllerKeyCommand,
    },
    /// What each API token used, per day and per hour, and its quotas (admin).
    Usage(usage::UsageArgs),
}

/// Runs the command `cli` names against the controller.
///
/// # Errors
/// Settings that cannot be read, the controller unreachable or refusing,
/// or a job that did not succeed; each message says what to do.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let given = Given { server: cli.server, token_file: cli.token_file, ca: cli.ca, config: cli.config };
    let mut client = Settings::resolve(&given)?.connect().await?;
    let out = cli.output;
    match cli.command {
        Command::Nodes { command } => nodes::run(&mut client, command, out).await,
        Command::Desired { command } => desired::run(&mut client, command).await,
        Command::Jobs { command } => jobs::run(&mut client, command, out).await,
        Command::Models { command } => models::run(&mut client, command, out).await,
        Command::Tokens { command } => tokens::run(&mut client, command, out).await,
        Command::ApiTokens { command } => tokens::run_api(&mut client, command).await,
        Command::Audit(a) => audit::run(&mut client, a, out).await,
        Command::Telemetry(t) => telemetry::run(&mut client, t, out).await,
        Command::ControllerKey { command } => controller_key::run(&mut client, command, out).await,
        Command::Usage(u) => usage::run(&mut client, u, out).await,
    }
}
