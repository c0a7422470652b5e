//! `fleet-controller`: parses flags, builds the config and runs the
//! controller until SIGINT or SIGTERM; or backs its store up, or restores one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_controller::config::{ControllerConfig, DEFAULT_CONFIG_TOML};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleet-controller", version, about = "Spark Fleet controller")]
struct Cli {
    /// Config file (TOML). Without it the documented defaults apply.
    #[arg(long, short, env = "FLEET_CONTROLLER_CONFIG")]
    config: Option<PathBuf>,
    /// External MQTT broker (mqtt://host:port); default: start the embedded one.
    #[arg(long, env = "FLEET_MQTT_URL")]
    mqtt_url: Option<String>,
    /// Address of the embedded broker.
    #[arg(long, env = "FLEET_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// Overrides `kafka.brokers`, e.g. kafka-1:9092,kafka-2:9092.
    #[arg(long, env = "FLEET_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Overrides `mqtt.username` (from a secret store: Kubernetes Secrets, systemd credentials).
    #[arg(long, env = "FLEET_MQTT_USERNAME", hide_env_values = true)]
    mqtt_username: Option<String>,
    /// Overrides `mqtt.password`; give it in FLEET_MQTT_PASSWORD (flags show in `ps`).
    #[arg(long, env = "FLEET_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<String>,
    /// PostgreSQL URL; default: SQLite in --data-dir.
    #[arg(long, env = "FLEET_DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of the SQLite store.
    #[arg(long, env = "FLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "FLEET_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// HTTP (/metrics, /healthz) listen address.
    #[arg(long, env = "FLEET_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the documented default configuration.
    GenerateConfig,
    /// Copy the store (consistent, while the controller runs) and the data
    /// directory's security files into a new directory.
    Backup {
        /// A new or empty directory.
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup into an empty store (the --database-url database, or
    /// SQLite in --data-dir) and a data directory without security files.
    Restore {
        /// A directory `backup` wrote.
        #[arg(long)]
        from: PathBuf,
    },
}

/// The flags and their environment variables, over the config file.
fn overrides(cli: &mut Cli, cfg: &mut ControllerConfig) {
    if let Some(v) = cli.mqtt_url.take() {
        cfg.mqtt.url = v;
    }
    if let Some(v) = cli.mqtt_listen.take() {
        cfg.mqtt.embedded_listen = v;
    }
    if let Some(v) = cli.kafka_brokers.take() {
        cfg.kafka.brokers = v;
    }
    if let Some(v) = cli.mqtt_username.take() {
        cfg.mqtt.username = v;
    }
    if let Some(v) = cli.mqtt_password.take() {
        cfg.mqtt.password = v;
    }
    if let Some(v) = cli.database_url.take() {
        cfg.database_url = v;
    }
    if let Some(v) = cli.data_dir.take() {
        cfg.data_dir = v;
    }
    if let Some(v) = cli.grpc_listen.take() {
        cfg.grpc.listen = v;
    }
    if let Some(v) = cli.http_listen.take() {
        cfg.http.listen = v;
    }
}

/// mimalloc: model inference allocates and frees megabytes per layer; glibc
/// hands such blocks back to the kernel and faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(Command::GenerateConfig) = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let mut cfg = match cli.config.as_deref().map(ControllerConfig::load).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("fleet-controller: {e}");
            return ExitCode::from(2);
        }
    };
    overrides(&mut cli, &mut cfg);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only for the running controller, not for backup and restore.
    let otel = if cli.command.is_none() { cfg.otel.clone() } else { fleet_net::otel::OtelConfig::default() };
    let logs = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn,sqlx=warn".into());
    let traces = {
        let _in = rt.enter();
        match fleet_net::otel::init(logs, &otel, "fleet-controller") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("fleet-controller: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match cli.command {
        Some(Command::Backup { to }) => {
            return report("backup", &to, rt.block_on(fleet_controller::backup::backup(&cfg, &to)));
        }
        Some(Command::Restore { from }) => {
            return report("restore", &from, rt.block_on(fleet_controller::backup::restore(&cfg, &from)));
        }
        _ => {}
    }
    let shutdown = CancellationToken::new();
    let result = rt.block_on(async {
        let signals = fleet_net::signals::Signals::install();
        let s = shutdown.clone();
        tokio::spawn(async move {
            signals.wait().await;
            s.cancel();
        });
        fleet_controller::run(cfg, shutdown).await
    });
    if let Some(t) = traces {
        let _ = rt.block_on(async move { tokio::task::spawn_blocking(move || t.shutdown()).await });
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-controller: {e}");
            ExitCode::from(2)
        }
    }
}

fn report(
    what: &str,
    dir: &std::path::Path,
    r: Result<fleet_controller::backup::Report, fleet_controller::ControllerError>,
) -> ExitCode {
    match r {
        Ok(r) => {
            println!("fleet-controller {what} {}: {r}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-controller {what}: {e}");
            ExitCode::from(2)
        }
    }
}
