//! Every `fleetctl` command, run as the binary against a real controller
//! process (TLS, API tokens, enrollment on) with a real enrolled agent: table
//! and JSON output, exit codes (0 done, 1 refused or failed, 2 usage), and
//! errors that say what to do; the token and CA from flags, environment and
//! config file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_tests::cluster::{self, ControllerProc, ControllerSetup, enroll};
use fleet_tests::procs::{Proc, bin};
use fleet_tests::{free_port, wait_for};
use sha2::Digest;

const NODE: &str = "cli-pi";

/// What a fleetctl run printed and how it ended.
#[derive(Debug)]
struct Ran {
    code: i32,
    out: String,
    err: String,
}

impl Ran {
    fn ok(self, what: &str) -> anyhow::Result<String> {
        ensure!(self.code == 0, "fleetctl {what} exited {}: {}{}", self.code, self.out, self.err);
        Ok(self.out)
    }

    fn json(self, what: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.ok(what)?;
        serde_json::from_str(&out).with_context(|| format!("fleetctl {what} -o json printed no JSON:\n{out}"))
    }

    fn refused(self, what: &str, says: &str) -> anyhow::Result<()> {
        ensure!(self.code == 1, "fleetctl {what} should exit 1, exited {}: {}{}", self.code, self.out, self.err);
        ensure!(self.err.contains(says), "fleetctl {what}: `{says}` missing in its error: {}", self.err);
        Ok(())
    }
}

struct Fleet {
    dir: tempfile::TempDir,
    ctl: ControllerProc,
    agent: Proc,
}

impl Fleet {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let port = free_port();
        let setup = ControllerSetup::embedded(d, port);
        let ctl = ControllerProc::start(d, &setup).await?;
        let cfg = cluster::agent_config(NODE, d, &d.join(NODE), &format!("mqtt://127.0.0.1:{port}"), "1s", 1 << 20);
        enroll(&ctl, &cfg)?;
        let agent = cluster::start_agent(NODE, d, &cfg, None, "warn")?;
        Ok(Self { dir, ctl, agent })
    }

    /// fleetctl with `args`, the admin token and CA given as flags.
    fn admin(&self, args: &[&str]) -> anyhow::Result<Ran> {
        let mut cmd = self.ctl.fleetctl()?;
        cmd.args(args);
        ran(cmd)
    }

    /// fleetctl with nothing but `args` and `env` (and the server).
    fn bare(&self, args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<Ran> {
        let mut cmd = Command::new(bin("fleetctl")?);
        cmd.args(["--server", &self.ctl.server()]).args(args).current_dir(self.dir.path());
        cmd.env_remove("FLEET_TOKEN").env_remove("FLEET_CA").env_remove("FLEET_TOKEN_FILE");
        cmd.env("HOME", self.dir.path()).env_remove("XDG_CONFIG_HOME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        ran(cmd)
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> anyhow::Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(p)
    }
}

fn ran(mut cmd: Command) -> anyhow::Result<Ran> {
    let o = cmd.output().context("running fleetctl")?;
    Ok(Ran {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

async fn node_online(f: &Fleet) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(30), "the node online with telemetry stored", || async {
        let v = f.admin(&["nodes", "list", "-o", "json"]).ok()?.json("nodes list").ok()?;
        let n = v.as_array()?.iter().find(|n| n["node_id"] == NODE)?.clone();
        (n["state"] == "online" && n["samples_stored"].as_u64()? > 0).then_some(())
    })
    .await
}

async fn nodes_and_telemetry(f: &Fleet) -> anyhow::Result<()> {
    let table = f.admin(&["nodes", "list"])?.ok("nodes list")?;
    ensure!(table.starts_with("NODE") && table.contains(NODE) && table.contains("online"), "{table}");
    let one = f.admin(&["nodes", "get", NODE])?.json("nodes get")?;
    ensure!(one["node_id"] == NODE && one["counters"]["samples_taken"].as_u64() > Some(0), "{one}");
    f.admin(&["nodes", "get", "nobody"])?.refused("nodes get nobody", "NotFound")?;
    let t = f.admin(&["telemetry", NODE, "--metric", "cpu.usage_pct", "--since", "5m"])?.ok("telemetry")?;
    let first = t.lines().nth(1).context("telemetry printed no point")?;
    ensure!(t.starts_with("TIME") && first.starts_with("20") && first.contains('T') && first.contains('Z'), "{t}");
    let j = f.admin(&["telemetry", NODE, "--metric", "cpu.usage_pct", "--since", "5m", "-o", "json"])?.json("t")?;
    ensure!(j["points"][0]["time"].as_str().is_some_and(|s| s.ends_with('Z')), "{j}");
    // watch streams a line per change until stopped.
    let mut watch = f.ctl.fleetctl()?;
    watch.args(["nodes", "watch"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = watch.spawn()?;
    let stdout = child.stdout.take().context("watch stdout")?;
    let line = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next()).await?;
    let _ = child.kill();
    let _ = child.wait();
    let line = line.context("nodes watch printed nothing")??;
    ensure!(line.contains(NODE), "nodes watch: {line}");
    Ok(())
}

async fn desired_and_jobs(f: &Fleet) -> anyhow::Result<()> {
    let set =
        f.admin(&["desired", "set", NODE, "--label", "site=lab", "--telemetry-interval", "2s"])?.ok("desired set")?;
    ensure!(set.contains("version"), "desired set: {set}");
    wait_for(Duration::from_secs(30), "the node reporting the desired state", || async {
        let v = f.admin(&["desired", "get", NODE, "-o", "json"]).ok()?.json("desired get").ok()?;
        (v["version"].as_u64()? > 0 && v["reported"]["applied_version"] == v["version"]).then_some(())
    })
    .await?;
    let done =
        f.admin(&["jobs", "submit", "--model", "severity", "--text", "disk failure on /dev/sda", "-o", "json"])?;
    let job = done.json("jobs submit")?;
    ensure!(job["node_id"] == NODE, "the job ran on the node: {job}");
    let id = job["job_id"].as_str().context("job_id")?.to_owned();
    let got = f.admin(&["jobs", "get", &id])?.ok("jobs get")?;
    ensure!(got.contains(&id) && got.contains(NODE), "jobs get: {got}");
    let list = f.admin(&["jobs", "list", "-o", "json"])?.json("jobs list")?;
    ensure!(list.as_array().is_some_and(|a| a.iter().any(|j| j["job_id"] == id.as_str())), "{list}");
    f.admin(&["jobs", "submit", "--model", "nope", "--text", "x"])?.refused("jobs submit --model nope", "model")?;
    Ok(())
}

async fn tokens_and_audit(f: &Fleet) -> anyhow::Result<()> {
    let t = f.admin(&["tokens", "create", "--ttl", "10m"])?;
    ensure!(t.out.trim().starts_with("fbt_") && t.err.contains("fleet-agent enroll"), "tokens create: {t:?}");
    let list = f.admin(&["tokens", "list"])?.ok("tokens list")?;
    let id = list.lines().nth(1).and_then(|l| l.split_whitespace().next()).context("a token listed")?.to_owned();
    f.admin(&["tokens", "revoke", &id])?.ok("tokens revoke")?;
    f.admin(&["tokens", "revoke", &id])?.refused("tokens revoke twice", "")?;
    let viewer = f.admin(&["api-tokens", "create", "ci", "--role", "viewer"])?.ok("api-tokens create")?;
    let viewer = f.file("viewer.token", viewer.trim(), 0o600)?;
    let ca = f.ctl.data.join("tls/ca.pem");
    let as_viewer = |args: &[&str]| {
        let mut a = vec!["--ca", ca.to_str().unwrap_or_default(), "--token-file", viewer.to_str().unwrap_or_default()];
        a.extend_from_slice(args);
        f.bare(&a, &[])
    };
    as_viewer(&["nodes", "list"])?.ok("nodes list as viewer")?;
    as_viewer(&["tokens", "create"])?.refused("tokens create as viewer", "PermissionDenied")?;
    f.admin(&["api-tokens", "revoke", "ci"])?.ok("api-tokens revoke")?;
    as_viewer(&["nodes", "list"])?.refused("a revoked token", "fleetctl api-tokens create")?;
    let audit = f.admin(&["audit", "-o", "json"])?.json("audit")?;
    let actions: Vec<&str> = audit.as_array().context("audit")?.iter().filter_map(|e| e["action"].as_str()).collect();
    for want in ["CreateBootstrapToken", "RevokeBootstrapToken", "CreateApiToken", "RevokeApiToken", "SetDesiredState"]
    {
        ensure!(actions.contains(&want), "{want} missing in the audit log: {actions:?}");
    }
    Ok(())
}

async fn settings_and_errors(f: &Fleet) -> anyhow::Result<()> {
    let (ca, admin) = (f.ctl.data.join("tls/ca.pem"), f.ctl.data.join("admin.token"));
    // The token in FLEET_TOKEN, the CA in FLEET_CA.
    let mut cmd = Command::new(bin("fleetctl")?);
    cmd.args(["--server", &f.ctl.server(), "nodes", "list"]).env("FLEET_CA", &ca);
    cmd.env("FLEET_TOKEN", std::fs::read_to_string(&admin)?.trim()).current_dir(f.dir.path());
    ran(cmd)?.ok("nodes list with FLEET_TOKEN and FLEET_CA")?;
    // Everything from a config file, given or at ~/.config/fleet/fleetctl.toml.
    let text =
        format!("server = \"{}\"\nca = \"{}\"\ntoken_file = \"{}\"\n", f.ctl.server(), ca.display(), admin.display());
    let conf = f.file("fleetctl.toml", &text, 0o644)?;
    let mut cmd = Command::new(bin("fleetctl")?);
    cmd.arg("--config").arg(&conf).args(["nodes", "list"]).current_dir(f.dir.path());
    ran(cmd)?.ok("nodes list --config")?;
    // Errors that say what to do.
    let open = f.file("open.token", "x", 0o644)?;
    f.bare(
        &["--ca", ca.to_str().unwrap_or_default(), "--token-file", open.to_str().unwrap_or_default(), "nodes", "list"],
        &[],
    )?
    .refused("a token file others can read", "chmod 600")?;
    f.bare(&["--ca", ca.to_str().unwrap_or_default(), "nodes", "list"], &[])?.refused("no token", "token")?;
    let mut cmd = Command::new(bin("fleetctl")?);
    cmd.args(["--server", "https://127.0.0.1:1", "--token-file"]).arg(&admin).args(["nodes", "list"]);
    ran(cmd)?.refused("no controller", "is fleet-controller running?")?;
    let plain = f.ctl.server().replace("https://", "http://");
    let mut cmd = Command::new(bin("fleetctl")?);
    cmd.args(["--server", &plain, "--token-file"]).arg(&admin).args(["nodes", "list"]);
    ran(cmd)?.refused("http:// against TLS", "https://")?;
    let usage = f.admin(&["nodes", "frobnicate"])?;
    ensure!(usage.code == 2 && usage.err.contains("Usage"), "a usage error exits 2 with the usage: {usage:?}");
    // Last: the config file at its default place (from here on every bare run finds it).
    std::fs::create_dir_all(f.dir.path().join(".config/fleet"))?;
    std::fs::copy(&conf, f.dir.path().join(".config/fleet/fleetctl.toml"))?;
    let mut cmd = Command::new(bin("fleetctl")?);
    cmd.args(["nodes", "list"]).env("HOME", f.dir.path()).env_remove("XDG_CONFIG_HOME").current_dir("/");
    ran(cmd)?.ok("nodes list with ~/.config/fleet/fleetctl.toml")?;
    Ok(())
}

/// A model folder whose manifest gives `version` and the digest of `weights`.
fn model_folder(f: &Fleet, version: &str, weights: &[u8], digest_of: &[u8]) -> anyhow::Result<PathBuf> {
    let dir = f.dir.path().join(format!("model-{version}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("w.bin"), weights)?;
    let digest: String = sha2::Sha256::digest(digest_of).iter().map(|b| format!("{b:02x}")).collect();
    let size = digest_of.len();
    std::fs::write(
        dir.join("model.toml"),
        format!(
            "name = \"sev\"\nkind = \"text-classifier\"\nversion = \"{version}\"\n[[files]]\npath = \"w.bin\"\nsha256 = \"{digest}\"\nsize = {size}\n"
        ),
    )?;
    Ok(dir)
}

async fn models(f: &Fleet) -> anyhow::Result<()> {
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let good = model_folder(f, "1.0", &weights, &weights)?;
    let out = f.admin(&["models", "push", good.to_str().context("path")?])?.ok("models push")?;
    ensure!(out.contains("pushed model sev version 1.0 (3000000 bytes in 1 files)"), "models push: {out}");
    let table = f.admin(&["models", "list"])?.ok("models list")?;
    ensure!(table.starts_with("MODEL") && table.contains("sev") && table.contains("3000000"), "{table}");
    let j = f.admin(&["models", "list", "sev", "-o", "json"])?.json("models list")?;
    ensure!(j[0]["version"] == "1.0" && j[0]["files"][0]["size"] == 3_000_000, "{j}");
    ensure!(j[0]["pushed_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{j}");
    let again = f.admin(&["models", "push", good.to_str().context("path")?])?;
    again.refused("models push twice", "versions never change")?;
    let damaged = model_folder(f, "2.0", b"not the weights", &weights)?;
    f.admin(&["models", "push", damaged.to_str().context("path")?])?
        .refused("models push damaged", "before pushing")?;
    let audit = f.admin(&["audit", "-o", "json"])?.json("audit")?;
    let pushes = audit.as_array().map_or(0, |a| a.iter().filter(|r| r["action"] == "PushModel").count());
    ensure!(pushes == 2, "both pushes that reached the controller are audited: {audit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fleetctl_command_against_a_real_controller() -> anyhow::Result<()> {
    let mut f = Fleet::start().await?;
    node_online(&f).await?;
    nodes_and_telemetry(&f).await?;
    desired_and_jobs(&f).await?;
    tokens_and_audit(&f).await?;
    models(&f).await?;
    settings_and_errors(&f).await?;
    // Admin actions on the node last: a rotation is accepted, a revocation ends it.
    let r = f.admin(&["nodes", "rotate-key", NODE])?;
    ensure!(r.code == 0 || r.err.contains("WireGuard"), "nodes rotate-key: {r:?}");
    f.admin(&["nodes", "revoke", NODE])?.ok("nodes revoke")?;
    let after = f.admin(&["nodes", "revoke", NODE])?;
    ensure!(after.code == 1, "revoking twice is refused: {after:?}");
    f.agent.kill9();
    f.ctl.kill9();
    Ok(())
}
