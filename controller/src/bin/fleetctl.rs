//! `fleetctl`: the operator's command line for the controller's gRPC API.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fleet_proto::v1::fleet_service_client::FleetServiceClient;
use fleet_proto::v1::{
    DesiredState, GetDesiredStateRequest, GetNodeRequest, ListNodesRequest, Node, NodeState, QueryTelemetryRequest,
    SetDesiredStateRequest, WatchNodesRequest,
};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "fleetctl", version, about = "Operate a Spark Fleet through its controller")]
struct Cli {
    /// Controller gRPC endpoint.
    #[arg(long, global = true, env = "FLEET_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Nodes of the fleet.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// A node's desired state (power policy, telemetry interval, labels, models).
    Desired {
        #[command(subcommand)]
        command: DesiredCommand,
    },
    /// Telemetry of one node.
    Telemetry {
        /// Node id.
        node: String,
        /// Metric name, e.g. cpu.usage_pct (`cpu` is short for it).
        #[arg(long, default_value = "cpu.usage_pct")]
        metric: String,
        /// How far back, e.g. 5m, 2h, 1d.
        #[arg(long, default_value = "5m")]
        since: humantime::Duration,
        /// Bucket width, e.g. 1m; default raw samples.
        #[arg(long)]
        bucket: Option<humantime::Duration>,
        /// Points at most.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum DesiredCommand {
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
        /// Fail unless the current version is this one (optimistic concurrency).
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    /// The latest desired state and what the node reported.
    Get { node: String },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not k=v"))
}

#[derive(Subcommand)]
enum NodesCommand {
    /// Every node with its state and latest vitals.
    List,
    /// One node in full.
    Get { node: String },
    /// Print every status change as it happens (Ctrl-C to stop).
    Watch,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn metric_alias(m: &str) -> String {
    use fleet_proto::metrics as metric;
    match m {
        "cpu" => metric::CPU_USAGE_PCT.into(),
        "mem" | "memory" => metric::MEM_USED_PCT.into(),
        "disk" => metric::DISK_USED_PCT.into(),
        "temp" | "temperature" => metric::SOC_TEMP_C.into(),
        "battery" => metric::BATTERY_SOC_PCT.into(),
        other => other.into(),
    }
}

async fn connect(server: &str) -> anyhow::Result<FleetServiceClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .map_err(|e| anyhow::anyhow!("--server {server:?} is not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the controller at {server}: {e} (is fleet-controller running? set --server)")
    })?;
    Ok(FleetServiceClient::new(channel))
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code(), e.message())
}

fn state_name(n: &Node) -> &'static str {
    match n.status.as_ref().map(|s| NodeState::try_from(s.state).unwrap_or_default()) {
        Some(NodeState::Online) => "online",
        Some(NodeState::Offline) => "offline",
        _ => "unknown",
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}{unit}"))
}

fn ago(ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let d = (fleet_proto::now_unix_ms() - ms).max(0) / 1000;
    format!("{d}s ago")
}

fn node_json(n: &Node) -> serde_json::Value {
    let s = n.status.clone().unwrap_or_default();
    let v = s.vitals.unwrap_or_default();
    let c = s.counters.unwrap_or_default();
    serde_json::json!({
        "node_id": n.node_id,
        "state": state_name(n),
        "boot_id": s.boot_id,
        "hostname": s.hostname,
        "agent_version": s.agent_version,
        "last_seen_unix_ms": n.last_seen_unix_ms,
        "samples_stored": n.samples_stored,
        "labels": s.labels,
        "vitals": {
            "cpu_usage_pct": v.cpu_usage_pct, "mem_used_pct": v.mem_used_pct, "soc_temp_c": v.soc_temp_c,
            "battery_soc_pct": v.battery_soc_pct, "on_battery": v.on_battery, "input_power_w": v.input_power_w,
        },
        "counters": {
            "samples_taken": c.samples_taken, "batches_published": c.batches_published,
            "publish_failures": c.publish_failures, "batches_dropped": c.batches_dropped,
            "batches_unacked": c.batches_unacked, "samples_acked": c.samples_acked,
        },
    })
}

fn print_table(nodes: &[Node]) {
    println!(
        "{:<24} {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10}",
        "NODE", "STATE", "CPU", "MEM", "TEMP", "BATTERY", "SAMPLES", "SEEN"
    );
    for n in nodes {
        let v = n.status.as_ref().and_then(|s| s.vitals).unwrap_or_default();
        println!(
            "{:<24} {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10}",
            n.node_id,
            state_name(n),
            opt(v.cpu_usage_pct, "%"),
            opt(v.mem_used_pct, "%"),
            opt(v.soc_temp_c, "C"),
            opt(v.battery_soc_pct, "%"),
            n.samples_stored,
            ago(n.last_seen_unix_ms)
        );
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli.server).await?;
    match cli.command {
        Command::Nodes { command: NodesCommand::List } => {
            let nodes = client.list_nodes(ListNodesRequest::default()).await.map_err(status_error)?.into_inner().nodes;
            if cli.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&nodes.iter().map(node_json).collect::<Vec<_>>())?);
            } else {
                print_table(&nodes);
            }
        }
        Command::Nodes { command: NodesCommand::Get { node } } => {
            let n = client.get_node(GetNodeRequest { node_id: node }).await.map_err(status_error)?.into_inner();
            println!("{}", serde_json::to_string_pretty(&node_json(&n))?);
        }
        Command::Nodes { command: NodesCommand::Watch } => {
            let mut stream = client.watch_nodes(WatchNodesRequest {}).await.map_err(status_error)?.into_inner();
            while let Some(n) = stream.message().await.map_err(status_error)? {
                if cli.output == Output::Json {
                    println!("{}", serde_json::to_string(&node_json(&n))?);
                } else {
                    println!("{} {:<24} {}", fleet_proto::now_unix_ms(), n.node_id, state_name(&n));
                }
            }
        }
        Command::Desired {
            command: DesiredCommand::Set { node, power_policy, telemetry_interval, labels, models, expected_version },
        } => {
            let power_policy_toml = match power_policy {
                Some(p) => {
                    std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?
                }
                None => String::new(),
            };
            let desired = DesiredState {
                node_id: node,
                version: 0,
                telemetry_interval_ms: telemetry_interval
                    .map_or(0, |d| u64::try_from(Duration::from(d).as_millis()).unwrap_or(u64::MAX)),
                labels: labels.into_iter().collect(),
                models,
                power_policy_toml,
            };
            let stored = client
                .set_desired_state(SetDesiredStateRequest { desired: Some(desired), expected_version })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("desired state of {} is now version {}", stored.node_id, stored.version);
        }
        Command::Desired { command: DesiredCommand::Get { node } } => {
            let v = client
                .get_desired_state(GetDesiredStateRequest { node_id: node })
                .await
                .map_err(status_error)?
                .into_inner();
            let d = v.desired.unwrap_or_default();
            let r = v.reported.unwrap_or_default();
            let out = serde_json::json!({
                "node_id": d.node_id,
                "version": d.version,
                "telemetry_interval_ms": d.telemetry_interval_ms,
                "labels": d.labels,
                "models": d.models,
                "power_policy_toml": d.power_policy_toml,
                "reported": {
                    "applied_version": r.applied_version,
                    "rejected_version": r.rejected_version,
                    "rejected_reason": r.rejected_reason,
                    "time_unix_ms": r.time_unix_ms,
                },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Telemetry { node, metric, since, bucket, limit } => {
            let now = fleet_proto::now_unix_ms();
            let since_ms = i64::try_from(Duration::from(since).as_millis()).unwrap_or(i64::MAX);
            let bucket_s = bucket.map_or(0, |b| u32::try_from(Duration::from(b).as_secs()).unwrap_or(u32::MAX));
            let r = client
                .query_telemetry(QueryTelemetryRequest {
                    node_id: node,
                    metric: metric_alias(&metric),
                    start_unix_ms: (now - since_ms).max(0),
                    end_unix_ms: now + 1,
                    bucket_s,
                    limit,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if cli.output == Output::Json {
                let pts: Vec<_> = r
                    .points
                    .iter()
                    .map(|p| serde_json::json!({"time_unix_ms": p.time_unix_ms, "avg": p.avg, "min": p.min, "max": p.max, "last": p.last, "count": p.count}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"node_id": r.node_id, "metric": r.metric, "bucket_s": r.bucket_s, "truncated": r.truncated, "points": pts})
                    )?
                );
            } else {
                println!("{:<15} {:>12} {:>12} {:>12} {:>8}", "TIME_MS", "AVG", "MIN", "MAX", "COUNT");
                for p in &r.points {
                    println!("{:<15} {:>12.3} {:>12.3} {:>12.3} {:>8}", p.time_unix_ms, p.avg, p.min, p.max, p.count);
                }
                if r.truncated {
                    eprintln!("(truncated at {limit} points; raise --limit or use --bucket)");
                }
            }
        }
    }
    Ok(())
}
