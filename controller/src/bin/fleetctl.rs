//! `fleetctl`: the operator's command line for the controller's gRPC API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fleet_controller::store::jobs::status_word as job_status;
use fleet_net::client::FleetClient;
use fleet_proto::v1::{
    CreateApiTokenRequest, CreateBootstrapTokenRequest, DesiredState, GetDesiredStateRequest, GetJobRequest,
    GetNodeRequest, JobConstraints, JobStatus, JobTimings, JobView, ListAuditLogRequest, ListBootstrapTokensRequest,
    ListJobsRequest, ListNodesRequest, Node, NodeState, Placement, QueryTelemetryRequest, RevokeApiTokenRequest,
    RevokeBootstrapTokenRequest, RevokeNodeRequest, RotateNodeKeyRequest, SetDesiredStateRequest, Site,
    SubmitJobRequest, WatchNodesRequest,
};

#[derive(Parser)]
#[command(name = "fleetctl", version, about = "Operate a Spark Fleet through its controller")]
struct Cli {
    /// Controller gRPC endpoint [default: from the config file, else https://127.0.0.1:50051].
    #[arg(long, global = true, env = "FLEET_SERVER")]
    server: Option<String>,
    /// File holding the API token [default: from the config file, else the
    /// controller's admin.token in ./fleet-data/controller or ./fleet-data].
    /// The token itself may come in FLEET_TOKEN instead (never as a flag: flags show in `ps`).
    #[arg(long, global = true, env = "FLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The controller's CA (PEM) for https:// [default: from the config file,
    /// else tls/ca.pem in ./fleet-data/controller or ./fleet-data].
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
    /// Inference jobs: submit one and see where it ran and why, or list recent ones.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// One-time bootstrap tokens that enroll nodes (`fleet-agent enroll --token`).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// API tokens for fleetctl and other clients (admin).
    ApiTokens {
        #[command(subcommand)]
        command: ApiTokensCommand,
    },
    /// The audit log: every change made through the API, newest first.
    Audit {
        /// How far back, e.g. 1h, 7d (default: everything).
        #[arg(long)]
        since: Option<humantime::Duration>,
        /// Records at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
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
enum TokensCommand {
    /// Make a token; it is printed once (only its hash is kept).
    Create {
        /// Lifetime, e.g. 1h, 2d [default: the controller's security.bootstrap_ttl].
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Labels the enrolled node gets: k=v, repeatable or comma-separated (--labels site=barn,rack=3).
        #[arg(long = "label", alias = "labels", value_parser = parse_label, value_delimiter = ',')]
        labels: Vec<(String, String)>,
    },
    /// Every token with its state.
    List,
    /// Revoke an unused token by id.
    Revoke { token_id: String },
}

#[derive(Subcommand)]
enum ApiTokensCommand {
    /// Make a token with a role; it is printed once.
    Create {
        name: String,
        /// viewer (reads), operator (desired state, jobs, bootstrap tokens), admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Revoke a token by name.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Route a job, wait for its result, print it with where it ran and how long each step took.
    Submit {
        /// Model: minilm (sentence embedding) or severity (built-in classifier).
        #[arg(long)]
        model: String,
        /// Input text.
        #[arg(long)]
        text: String,
        /// Time the job gets, e.g. 10s.
        #[arg(long, default_value = "10s")]
        timeout: humantime::Duration,
        /// Re-run an edge answer under this confidence on the cloud tier (0: never).
        #[arg(long, default_value_t = 0.0)]
        min_confidence: f32,
        /// The node must carry label k=v (repeatable; keeps the job at the edge).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Where it may run.
        #[arg(long, value_enum, default_value_t = Where::Any)]
        placement: Where,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Return at once with the job id instead of waiting.
        #[arg(long)]
        detach: bool,
    },
    /// One job with every attempt.
    Get { job: String },
    /// Recent jobs, newest first.
    List {
        /// Only jobs that ran on this node.
        #[arg(long)]
        node: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Where {
    Any,
    Edge,
    Cloud,
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
    /// Revoke a node: its broker access and tunnel end, its jobs go elsewhere (admin).
    Revoke { node: String },
    /// Rotate a node's WireGuard key; the old key works until the node confirms the new one (admin).
    RotateKey { node: String },
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

/// `~/.config/fleet/fleetctl.toml` (or --config).
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

/// Where the controller's files are when it runs from this directory
/// (`fleet-local`, then `fleet-controller` on its defaults).
const LOCAL_DATA_DIRS: [&str; 2] = ["./fleet-data/controller", "./fleet-data"];

fn local_file(name: &str) -> Option<PathBuf> {
    LOCAL_DATA_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Server, CA and token from flags, environment, the config file and the
/// local controller's files, in that order.
fn settings(cli: &Cli) -> anyhow::Result<(String, Option<Vec<u8>>, Option<String>)> {
    let default_cfg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("fleet/fleetctl.toml"));
    let file = match (&cli.config, default_cfg) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) if p.is_file() => Some(p),
        _ => None,
    };
    let fc: FileConfig = match &file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message()))?
        }
        None => FileConfig::default(),
    };
    let server = cli.server.clone().or(fc.server).unwrap_or_else(|| "https://127.0.0.1:50051".into());
    let ca_path =
        cli.ca.clone().or(fc.ca).or_else(|| server.starts_with("https://").then(|| local_file("tls/ca.pem")).flatten());
    let ca = match ca_path {
        Some(p) => Some(std::fs::read(&p).map_err(|e| anyhow::anyhow!("cannot read the CA {}: {e}", p.display()))?),
        None => None,
    };
    let token = match std::env::var("FLEET_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        Some(t) => Some(t),
        None => match cli.token_file.clone().or(fc.token_file).or_else(|| local_file("admin.token")) {
            Some(p) => {
                check_private(&p)?;
                Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", p.display()))?,
                )
            }
            None => None,
        },
    };
    Ok((server, ca, token))
}

/// Refuses a token file others can read.
fn check_private(p: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(p) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "the token file {} is readable by others (mode {mode:o}): run `chmod 600 {}`",
                    p.display(),
                    p.display()
                );
            }
        }
    }
    Ok(())
}

async fn connect(cli: &Cli) -> anyhow::Result<FleetClient> {
    let (server, ca, token) = settings(cli)?;
    fleet_net::client::fleet_client(&server, ca.as_deref(), token.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is fleet-controller running? set --server)"))
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    if e.code() == tonic::Code::Unknown && e.message().contains("transport error") {
        return anyhow::anyhow!(
            "the connection failed ({}): if the controller uses TLS (its default), use an https:// --server",
            e.message()
        );
    }
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

fn when(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        .to_string()
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
    let mut client = connect(&cli).await?;
    match cli.command {
        Command::Nodes { command: NodesCommand::Revoke { node } } => {
            client.revoke_node(RevokeNodeRequest { node_id: node.clone() }).await.map_err(status_error)?;
            println!("node {node} revoked: it must enroll again with a new token to come back");
        }
        Command::Nodes { command: NodesCommand::RotateKey { node } } => {
            let r = client
                .rotate_node_key(RotateNodeKeyRequest { node_id: node.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "key rotation {} of {node} started: the node makes a new key; its old one works until it confirms",
                r.generation
            );
        }
        Command::Tokens { command: TokensCommand::Create { ttl, labels } } => {
            let ttl_s = ttl.map_or(0, |d| u32::try_from(Duration::from(d).as_secs().max(1)).unwrap_or(u32::MAX));
            let t = client
                .create_bootstrap_token(CreateBootstrapTokenRequest { ttl_s, labels: labels.into_iter().collect() })
                .await
                .map_err(status_error)?
                .into_inner();
            if cli.output == Output::Json {
                let v =
                    serde_json::json!({"token_id": t.token_id, "token": t.token, "expires_unix_ms": t.expires_unix_ms});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", t.token);
                eprintln!(
                    "token {} expires {}; shown once. On the node: fleet-agent enroll --controller URL --token <token>",
                    t.token_id,
                    when(t.expires_unix_ms)
                );
            }
        }
        Command::Tokens { command: TokensCommand::List } => {
            let tokens = client
                .list_bootstrap_tokens(ListBootstrapTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .tokens;
            println!("{:<14} {:<10} {:<22} {:<24} LABELS", "ID", "STATE", "EXPIRES", "USED BY");
            let now = fleet_proto::now_unix_ms();
            for t in tokens {
                let state = if t.revoked_unix_ms != 0 {
                    "revoked"
                } else if t.used_unix_ms != 0 {
                    "used"
                } else if t.expires_unix_ms <= now {
                    "expired"
                } else {
                    "valid"
                };
                let mut labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                println!(
                    "{:<14} {:<10} {:<22} {:<24} {}",
                    t.token_id,
                    state,
                    when(t.expires_unix_ms),
                    t.used_by,
                    labels.join(",")
                );
            }
        }
        Command::Tokens { command: TokensCommand::Revoke { token_id } } => {
            client
                .revoke_bootstrap_token(RevokeBootstrapTokenRequest { token_id: token_id.clone() })
                .await
                .map_err(status_error)?;
            println!("bootstrap token {token_id} revoked");
        }
        Command::ApiTokens { command: ApiTokensCommand::Create { name, role } } => {
            let t =
                client.create_api_token(CreateApiTokenRequest { name, role }).await.map_err(status_error)?.into_inner();
            println!("{}", t.token);
            eprintln!(
                "API token {} ({}); shown once. Keep it in a file with mode 0600 and use --token-file.",
                t.name, t.role
            );
        }
        Command::ApiTokens { command: ApiTokensCommand::Revoke { name } } => {
            client.revoke_api_token(RevokeApiTokenRequest { name: name.clone() }).await.map_err(status_error)?;
            println!("API token {name} revoked");
        }
        Command::Audit { since, limit } => {
            let since_unix_ms = since.map_or(0, |d| {
                fleet_proto::now_unix_ms() - i64::try_from(Duration::from(d).as_millis()).unwrap_or(i64::MAX / 2)
            });
            let records = client
                .list_audit_log(ListAuditLogRequest { since_unix_ms: since_unix_ms.max(0), limit })
                .await
                .map_err(status_error)?
                .into_inner()
                .records;
            if cli.output == Output::Json {
                let v: Vec<_> = records
                    .iter()
                    .map(|r| serde_json::json!({"at_unix_ms": r.at_unix_ms, "actor": r.actor, "action": r.action, "target": r.target, "result": r.result}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<22} {:<20} {:<22} {:<24} RESULT", "AT", "ACTOR", "ACTION", "TARGET");
                for r in records {
                    println!(
                        "{:<22} {:<20} {:<22} {:<24} {}",
                        when(r.at_unix_ms),
                        r.actor,
                        r.action,
                        r.target,
                        r.result
                    );
                }
            }
        }
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
        Command::Jobs { command } => jobs(&mut client, command, cli.output).await?,
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

fn site_of(site: i32, node: &str) -> String {
    match Site::try_from(site).unwrap_or_default() {
        Site::Edge => format!("edge node {node}"),
        Site::Cloud => "cloud tier".into(),
        Site::Unspecified => "-".into(),
    }
}

fn ms(us: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display
    let v = us as f64 / 1000.0;
    format!("{v:.3} ms")
}

fn timings_json(t: &JobTimings) -> serde_json::Value {
    serde_json::json!({
        "route_us": t.route_us, "queued_us": t.queued_us, "tokenize_us": t.tokenize_us,
        "inference_us": t.inference_us, "node_total_us": t.total_us, "transport_us": t.transport_us,
        "end_to_end_us": t.end_to_end_us,
    })
}

fn job_json(j: &JobView) -> serde_json::Value {
    let attempts: Vec<_> = j
        .attempts
        .iter()
        .map(|a| {
            serde_json::json!({
                "attempt": a.attempt, "site": site_of(a.site, &a.node_id), "node_id": a.node_id,
                "status": job_status(a.status), "error": a.error, "reason": a.reason, "label": a.label,
                "confidence": a.confidence, "timings": timings_json(&a.timings.unwrap_or_default()),
            })
        })
        .collect();
    serde_json::json!({
        "job_id": j.job_id, "model": j.model, "status": job_status(j.status), "error": j.error,
        "site": site_of(j.site, &j.node_id), "node_id": j.node_id, "reason": j.reason,
        "label": j.label, "confidence": j.confidence, "embedding": j.embedding,
        "submitted_unix_ms": j.submitted_unix_ms, "finished_unix_ms": j.finished_unix_ms,
        "timings": timings_json(&j.timings.unwrap_or_default()), "attempts": attempts,
    })
}

fn print_job(j: &JobView) {
    let t = j.timings.unwrap_or_default();
    println!("job {} ({}): {}", j.job_id, j.model, job_status(j.status));
    if !j.error.is_empty() {
        println!("  error:     {}", j.error);
    }
    if j.status == JobStatus::Succeeded as i32 {
        if j.embedding.is_empty() {
            println!("  answer:    {} (confidence {:.3})", j.label, j.confidence);
        } else {
            let head: Vec<String> = j.embedding.iter().take(4).map(|x| format!("{x:.4}")).collect();
            println!("  answer:    embedding of {} dims [{}, ...]", j.embedding.len(), head.join(", "));
        }
        println!("  ran on:    {}", site_of(j.site, &j.node_id));
        println!("  why:       {}", j.reason);
        println!(
            "  steps:     route {}, queued {}, tokenize {}, inference {}, transport {} (node total {}); end to end {}",
            ms(t.route_us),
            ms(t.queued_us),
            ms(t.tokenize_us),
            ms(t.inference_us),
            ms(t.transport_us),
            ms(t.total_us),
            ms(t.end_to_end_us)
        );
    }
    if j.attempts.len() > 1 || j.status != JobStatus::Succeeded as i32 {
        println!("  attempts:");
        for a in &j.attempts {
            let what = if a.error.is_empty() { a.label.clone() } else { a.error.clone() };
            println!("    {} {} {}: {what}", a.attempt, site_of(a.site, &a.node_id), job_status(a.status));
            println!("      why: {}", a.reason);
        }
    }
}

async fn jobs(client: &mut FleetClient, command: JobsCommand, out: Output) -> anyhow::Result<()> {
    let show = |j: &JobView| -> anyhow::Result<()> {
        if out == Output::Json {
            println!("{}", serde_json::to_string_pretty(&job_json(j))?);
        } else {
            print_job(j);
        }
        Ok(())
    };
    match command {
        JobsCommand::Submit { model, text, timeout, min_confidence, labels, placement, node, detach } => {
            let placement = match placement {
                Where::Any => Placement::Any,
                Where::Edge => Placement::EdgeOnly,
                Where::Cloud => Placement::CloudOnly,
            };
            let req = SubmitJobRequest {
                model,
                text,
                timeout_ms: u32::try_from(Duration::from(timeout).as_millis()).unwrap_or(u32::MAX),
                min_confidence,
                constraints: Some(JobConstraints {
                    required_labels: labels.into_iter().collect(),
                    placement: placement as i32,
                    node_id: node.unwrap_or_default(),
                }),
                detach,
            };
            let j = client.submit_job(req).await.map_err(status_error)?.into_inner();
            show(&j)?;
            if j.status != JobStatus::Succeeded as i32 && !detach {
                anyhow::bail!("the job did not succeed");
            }
        }
        JobsCommand::Get { job } => {
            let j = client.get_job(GetJobRequest { job_id: job }).await.map_err(status_error)?.into_inner();
            show(&j)?;
        }
        JobsCommand::List { node, limit } => {
            let r = client
                .list_jobs(ListJobsRequest { node_id: node.unwrap_or_default(), status: 0, limit })
                .await
                .map_err(status_error)?
                .into_inner();
            if out == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r.jobs.iter().map(job_json).collect::<Vec<_>>())?);
            } else {
                println!("{:<36} {:<9} {:<10} {:<22} {:>12}", "JOB", "MODEL", "STATUS", "SITE", "END TO END");
                for j in &r.jobs {
                    let t = j.timings.unwrap_or_default();
                    println!(
                        "{:<36} {:<9} {:<10} {:<22} {:>12}",
                        j.job_id,
                        j.model,
                        job_status(j.status),
                        site_of(j.site, &j.node_id),
                        ms(t.end_to_end_us)
                    );
                }
            }
        }
    }
    Ok(())
}
