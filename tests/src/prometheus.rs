//! Debian's Prometheus as a child process, run on the repository's own
//! `deploy/prometheus/prometheus.yml` and alert rules with a test fleet's
//! addresses put in where the file has its examples, scraping every second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::need::{Need, missing};
use crate::procs::Proc;
use crate::{free_port, http_get, wait_for};

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    proc: Proc,
}

/// `deploy/prometheus` in this repository.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// The `prometheus` binary, or `None` (the skip said and counted) where it is
/// missing and scripts/test did not ask for it.
///
/// # Errors
/// Missing where `FLEET_REQUIRE_PROMETHEUS=1`.
pub fn find(test: &str) -> anyhow::Result<Option<PathBuf>> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(p) = std::env::split_paths(&path).map(|d| d.join("prometheus")).find(|p| p.is_file()) {
        return Ok(Some(p));
    }
    missing(Need::Prometheus, test, "no `prometheus` on PATH (Debian: apt-get install prometheus)")?;
    Ok(None)
}

/// `text` with `from` replaced by `to`; an error when `from` is gone, so the
/// test notices that the file it checks changed shape.
fn put(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    if !text.contains(from) {
        bail!("deploy/prometheus/prometheus.yml no longer has {from:?}; update tests/src/prometheus.rs with it");
    }
    Ok(text.replace(from, to))
}

impl Prometheus {
    /// Starts `bin` in `dir` on prometheus.yml and the rules, scraping the
    /// controller's HTTPS `/metrics` at `controller` (trusting `ca`) and the
    /// agents' endpoints at `agents` every second; returns when it is ready.
    ///
    /// # Errors
    /// When it does not start or does not become ready.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        controller: SocketAddr,
        ca: &Path,
        agents: &[SocketAddr],
    ) -> anyhow::Result<Self> {
        let config = std::fs::read_to_string(deploy_dir().join("prometheus.yml"))?;
        let config = put(&config, "scrape_interval: 15s", "scrape_interval: 1s")?;
        let config = put(&config, "evaluation_interval: 15s", "evaluation_interval: 1s")?;
        let config = put(&config, "controller.example:8080", &controller.to_string())?;
        let config = put(&config, "/etc/prometheus/spark-fleet-ca.pem", &ca.display().to_string())?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let targets: Vec<String> = agents.iter().map(ToString::to_string).collect();
        std::fs::write(dir.join("agents.json"), serde_json::json!([{ "targets": targets }]).to_string())?;
        std::fs::create_dir_all(dir.join("rules"))?;
        for entry in std::fs::read_dir(deploy_dir().join("rules"))? {
            let path = entry?.path();
            std::fs::copy(&path, dir.join("rules").join(path.file_name().context("a rules file without a name")?))?;
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut cmd = Command::new(bin);
        cmd.current_dir(dir).args([
            "--config.file=prometheus.yml".to_owned(),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_owned(),
        ]);
        let proc = Proc::spawn("prometheus", cmd, &dir.join("prometheus.log"))?;
        let p = Self { addr, proc };
        wait_for(Duration::from_secs(30), "Prometheus ready", || async {
            http_get(p.addr, "/-/ready").await.ok().filter(|r| r.contains(" 200 ")).map(|_| ())
        })
        .await
        .with_context(|| format!("Prometheus did not start: {}", p.proc.log_text()))?;
        Ok(p)
    }

    /// `GET path` of the HTTP API; the JSON `data`.
    ///
    /// # Errors
    /// Transport errors, or an answer that is not `status: success`.
    pub async fn api(&self, path: &str) -> anyhow::Result<Value> {
        let reply = http_get(self.addr, path).await?;
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: Value = serde_json::from_str(body).with_context(|| format!("{path}: {reply}"))?;
        if v["status"] != "success" {
            bail!("{path}: {}", v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector (or matrix).
    ///
    /// # Errors
    /// A query Prometheus refuses, with its reason.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let q: String = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC).collect();
        let data = self.api(&format!("/api/v1/query?query={q}")).await.with_context(|| format!("query {promql}"))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Each active target's scrape job, address and health (`up`, `down`,
    /// `unknown`) with its last error.
    ///
    /// # Errors
    /// API errors.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/targets?state=active").await?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let health = t["health"].as_str().unwrap_or_default();
                let error = t["lastError"].as_str().unwrap_or_default();
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                    t["labels"]["instance"].as_str().unwrap_or_default().to_owned(),
                    if error.is_empty() { health.to_owned() } else { format!("{health}: {error}") },
                )
            })
            .collect())
    }

    /// The log so far, for failure messages.
    #[must_use]
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}
