//! The controller under test, in a process of its own so its RSS is its own:
//! the bench runs itself with `--controller-child CONFIG`. Its config is the
//! production default (enrollment required, broker logins checked, TLS and
//! API tokens on) but for ports, data directory and database.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_controller::{Controller, ControllerConfig};
use tokio_util::sync::CancellationToken;

/// A controller child process.
pub struct ChildController {
    child: Child,
    pub mqtt_url: String,
    http: String,
    /// Its gRPC URL (https://) and data directory (CA, admin token).
    pub grpc_url: String,
    pub data: PathBuf,
    pub dir: tempfile::TempDir,
}

impl ChildController {
    /// `schema`: `storage.postgres_schema` (`postgres` or `timescaledb`).
    pub async fn start(
        database_url: &str,
        kafka: Option<&str>,
        mqtt: Option<&str>,
        schema: &str,
        otel: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let broker = match mqtt {
            Some(url) => format!("url = \"{url}\""),
            None => format!("embedded_listen = \"127.0.0.1:{}\"", free_port()?),
        };
        let mut cfg = format!(
            "database_url = \"{database_url}\"\ndata_dir = \"{}\"\n[mqtt]\n{broker}\n\
             [grpc]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:0\"\ntls = \"off\"\n[storage]\njob_interval = \"1h\"\npostgres_schema = \"{schema}\"\n",
            dir.path().join("data").display(),
            free_port()?,
        );
        if let Some(b) = kafka {
            cfg.push_str(&format!("[kafka]\nbrokers = \"{b}\"\nbridge = false\n"));
        }
        if let Some(endpoint) = otel {
            cfg.push_str(&format!("[otel]\nendpoint = \"{endpoint}\"\n"));
        }
        let path = dir.path().join("controller.toml");
        std::fs::write(&path, cfg)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--controller-child")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
        let mut parts = line.split_whitespace().skip(1);
        let (Some(mqtt_url), Some(http), Some(grpc_url)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("the controller child did not start: {line:?}");
        };
        let data = dir.path().join("data");
        Ok(Self {
            mqtt_url: mqtt_url.to_owned(),
            http: http.to_owned(),
            grpc_url: grpc_url.to_owned(),
            data,
            child,
            dir,
        })
    }

    /// Runs `publish`, waits until `n` rows are written; returns rows/s from
    /// the first publish to the last row, and the controller's peak RSS (kB).
    pub async fn measure<F, Fut>(&self, n: u64, publish: F) -> anyhow::Result<(f64, u64)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (pid, p2, s2) = (self.child.id(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s2.is_cancelled() {
                p2.fetch_max(status_kb(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let t = Instant::now();
        let sender = tokio::spawn(publish());
        let (mut last, mut moved) = (0, Instant::now());
        loop {
            let written = match rows_written(&self.http).await {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("metrics: {e}");
                    0
                }
            };
            if written >= n {
                break;
            }
            if written > last {
                (last, moved) = (written, Instant::now());
            }
            anyhow::ensure!(
                moved.elapsed() < Duration::from_secs(30),
                "rows written stopped at {written} of {n}: the broker or the controller dropped messages (the \
                 bench's publishers do not resend like agents do; on Mosquitto set max_queued_messages 0; a \
                 refused login or signature is in the controller's metrics)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = t.elapsed().as_secs_f64();
        sender.await??;
        stop.cancel();
        let rss = peak.load(Ordering::Relaxed).max(status_kb(self.child.id(), "VmHWM:"));
        Ok((n as f64 / s, rss))
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        self.child.wait()?;
        Ok(())
    }
}

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `fleet_rows_written_total` from the controller's /metrics.
async fn rows_written(http: &str) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let v = out
        .lines()
        .find(|l| l.starts_with("fleet_rows_written_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(v as u64)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Child mode: runs a controller from `config` until stdin closes.
pub async fn controller_child(config: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let cfg = ControllerConfig::from_toml(&text, &config.display().to_string())?;
    // As the controller's binary logs (to stderr here: stdout is the ready line), and traces with [otel].
    let traces = subscriber(&cfg.otel)?;
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    println!("ready {} {} {}", c.mqtt_url, c.http_addr, c.api.url);
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    stop.cancel();
    c.wait().await;
    if let Some(t) = traces {
        tokio::task::spawn_blocking(move || t.shutdown()).await?;
    }
    Ok(())
}

/// The child's subscriber, composed as `fleet_net::otel::init` composes the
/// binary's (log lines at its default levels, here on stderr: stdout is the
/// ready line), with spans to OTLP when `otel.endpoint` is set.
fn subscriber(otel: &fleet_net::otel::OtelConfig) -> anyhow::Result<Option<fleet_net::otel::Traces>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = tracing_subscriber::EnvFilter::new("info,rumqttd=off,rumqttc=warn,sqlx=warn");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    Ok(match fleet_net::otel::layer(otel, "fleet-controller")? {
        Some((layer, traces)) => {
            tracing_subscriber::registry().with(fmt.with_filter(logs)).with(layer).init();
            Some(traces)
        }
        None => {
            tracing_subscriber::registry().with(fmt).with(logs).init();
            None
        }
    })
}
