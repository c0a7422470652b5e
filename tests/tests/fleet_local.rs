//! The README's first command and TLS from an operator's own files:
//! `fleet-local` starts (controller, embedded broker, SQLite, simulated
//! agents, all enrolled), N nodes come online as `fleetctl` run from the same
//! directory sees them, no SQL statement is logged even at sqlx's most
//! verbose level, and SIGINT stops it cleanly; a controller with
//! `tls = "files"` serves the operator's certificate, which `fleetctl` trusts
//! through the operator's CA and refuses without it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_tests::cluster::output;
use fleet_tests::procs::{Proc, bin};
use fleet_tests::{free_port, wait_for};

const AGENTS: usize = 3;

/// `fleetctl nodes list -o json` run in `dir`, finding the server's CA and token there.
fn nodes_from(dir: &Path, grpc: u16) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut cmd = Command::new(bin("fleetctl")?);
    cmd.args(["--server", &format!("https://127.0.0.1:{grpc}"), "nodes", "list", "-o", "json"]).current_dir(dir);
    cmd.env_remove("FLEET_TOKEN").env_remove("FLEET_CA").env_remove("FLEET_TOKEN_FILE").env("HOME", dir);
    Ok(serde_json::from_str(&output(cmd, "fleetctl nodes list")?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_local_starts_brings_its_nodes_online_and_stops_on_sigint() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let grpc = free_port();
    let mut cmd = Command::new(bin("fleet-local")?);
    cmd.args(["--agents", &AGENTS.to_string(), "--interval", "200ms"])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        // sqlx would log every statement at debug: the store turns that off.
        .env("RUST_LOG", "warn,rumqttd=off,fleet_local=info,sqlx=trace")
        .env_remove("FLEET_MODEL_DIR");
    let mut local = Proc::spawn("fleet-local", cmd, &dir.path().join("fleet-local.log"))?;
    let nodes = wait_for(Duration::from_secs(60), "every simulated node online", || async {
        let nodes = nodes_from(dir.path(), grpc).ok()?;
        let online = nodes.iter().filter(|n| n["state"] == "online" && n["samples_stored"].as_u64() > Some(0)).count();
        (online == AGENTS).then_some(nodes)
    })
    .await
    .with_context(|| local.log_text())?;
    ensure!(nodes.iter().all(|n| n["node_id"].as_str().is_some_and(|id| id.starts_with("sim-"))), "{nodes:?}");
    let log = local.log_text();
    ensure!(log.contains("Spark Fleet on this machine") && log.contains("Ctrl-C stops everything"), "{log}");
    Command::new("kill").args(["-INT", &local.pid().to_string()]).status()?;
    let status = local.wait(Duration::from_secs(60))?;
    let log = local.log_text();
    ensure!(status.success(), "fleet-local exited with {status} after SIGINT:\n{log}");
    ensure!(log.contains("Stopping agents...") && log.contains("rows_written="), "a clean stop says so:\n{log}");
    ensure!(!log.contains("sqlx::query") && !log.contains("INSERT INTO"), "no SQL statement is ever logged:\n{log}");
    Ok(())
}

/// A CA and a server certificate for 127.0.0.1 made with openssl, as an operator would.
fn operator_certificates(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let o = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
        ensure!(o.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
        Ok(())
    };
    let quiet = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &quiet,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=Operator CA"],
    ]
    .concat())?;
    run(&[&["req"][..], &quiet, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=controller"]].concat())?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "30",
        "-extfile",
        "san.ext",
    ])?;
    // Another CA, which must not be trusted for it.
    run(&[
        &["req", "-x509"][..],
        &quiet,
        &["-keyout", "other.key", "-out", "other.pem", "-days", "30", "-subj", "/CN=Other"],
    ]
    .concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_the_operators_certificate_files() -> anyhow::Result<()> {
    if Command::new("openssl").arg("version").output().is_err() {
        return fleet_tests::need::missing(
            fleet_tests::need::Need::Root,
            "fleet_local::tls_from_the_operators_certificate_files",
            "openssl is not installed (apt-get install openssl)",
        );
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    operator_certificates(d)?;
    let grpc = free_port();
    let conf = d.join("controller.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n\
             [mqtt]\nembedded_listen = \"127.0.0.1:{}\"\n\
             [security]\ntls = \"files\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            d.join("data").display(),
            free_port(),
            free_port(),
            d.join("server.pem").display(),
            d.join("server.key").display()
        ),
    )?;
    let mut cmd = Command::new(bin("fleet-controller")?);
    cmd.arg("--config").arg(&conf).env("NO_COLOR", "1");
    let mut ctl = Proc::spawn("fleet-controller", cmd, &d.join("controller.log"))?;
    let fleetctl = |ca: &str| -> anyhow::Result<std::process::Output> {
        let mut c = Command::new(bin("fleetctl")?);
        c.args(["--server", &format!("https://127.0.0.1:{grpc}"), "--ca"]).arg(d.join(ca));
        c.arg("--token-file").arg(d.join("data/admin.token")).args(["nodes", "list"]);
        Ok(c.output()?)
    };
    let ok = wait_for(Duration::from_secs(30), "fleetctl through the operator's CA", || async {
        fleetctl("ca.pem").ok().filter(|o| o.status.success())
    })
    .await
    .with_context(|| ctl.log_text())?;
    ensure!(String::from_utf8_lossy(&ok.stdout).starts_with("NODE"), "{ok:?}");
    ensure!(!d.join("data/tls/ca.pem").exists(), "with tls = \"files\" the controller makes no CA of its own");
    let other = fleetctl("other.pem")?;
    let err = String::from_utf8_lossy(&other.stderr);
    ensure!(!other.status.success() && err.contains("give its CA"), "an untrusted CA is refused, saying why: {err}");
    ctl.kill9();
    Ok(())
}
