//! The whole security story in network namespaces, with the real binaries:
//! a controller namespace and two agent namespaces on an underlay (veth pairs
//! on a bridge). The agents enroll over the underlay (`fleetctl tokens
//! create`, `fleet-agent enroll`), bring up WireGuard (wireguard-go here: the
//! kernel has no module), and from then on telemetry reaches the controller
//! only through the tunnel: Mosquitto (dynamic security, driven by the
//! controller) listens on the overlay address only, and a capture on the
//! underlay sees nothing but WireGuard UDP. Then: A may not read B's topics; a
//! reused and an expired token are refused; a viewer cannot change desired
//! state; revoking A stops A's rows within 5 s (its peer and broker client are
//! gone) while B goes on. Last, the ingest rate through the tunnel against
//! the plain underlay with the controller the bottleneck (B drains a backlog
//! of twice `FLEET_OVERLAY_BACKLOG` samples, default 200,000; tunnel, veth,
//! veth, tunnel, `FLEET_OVERLAY_ROUNDS` times, default 1; each path's mean),
//! printed as `wg_vs_veth_ratio=<x>`.
//!
//! Forged messages through rumqttd and Kafka are `signed.rs`'s (in process).
//! Needs root, iproute2, wireguard-go, wg, tcpdump and mosquitto_sub
//! (scripts/test installs them); skipped with the reason printed otherwise.

#[path = "overlay/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fleet_net::client::{FleetClient, fleet_client};
use fleet_proto::v1::{CreateApiTokenRequest, DesiredState, ListNodesRequest, SetDesiredStateRequest};
use fleet_tests::procs::bin;
use fleet_tests::{http_get, metric_value, wait_for};
use support::*;

/// The scenario's state from one step to the next.
struct Scenario<'d> {
    dir: &'d Path,
    topo: Topology,
    api: FleetClient,
    /// Indexes of the processes in `topo.procs`.
    ctl: usize,
    broker: usize,
    a: usize,
    b: usize,
    ns_a: String,
    ns_b: String,
    a_conf: PathBuf,
    b_conf: PathBuf,
    /// A's bootstrap token (used once, then refused).
    a_token: String,
    /// Every secret made along the way, looked for in the logs at the end.
    secrets: Vec<(String, String)>,
}

impl<'d> Scenario<'d> {
    /// Mosquitto's dynamic-security admin, the controller (it makes the
    /// overlay interface), then the broker on the overlay address.
    async fn start(dir: &'d Path) -> anyhow::Result<Self> {
        let mut topo = Topology::create()?;
        let admin_password = uuid::Uuid::new_v4().simple().to_string();
        let out = run(Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(dir.join("dynsec.json"))
            .args(["fleet-admin", &admin_password]))?;
        ensure!(out.status.success(), "mosquitto_ctrl: {}", String::from_utf8_lossy(&out.stderr));
        let ctl_conf = controller_toml(dir, &admin_password, topo.tag)?;
        let mut cmd = topo.cmd(&topo.c.clone(), bin("fleet-controller")?);
        cmd.arg("--config").arg(&ctl_conf).env("RUST_LOG", LOG_LEVELS);
        let ctl = topo.spawn("fleet-controller", cmd, &dir.join("controller.log"))?;
        wait_for(T, "the controller started (overlay up)", || async {
            topo.procs[ctl].log_text().contains("Controller started.").then_some(())
        })
        .await
        .with_context(|| topo.procs[ctl].log_text())?;
        let mut cmd = topo.cmd(&topo.c.clone(), "mosquitto");
        cmd.arg("-c").arg(mosquitto_conf(dir, false)?);
        let broker = topo.spawn("mosquitto", cmd, &dir.join("mosquitto.log"))?;
        let api = first_answer(&mut topo, ctl, dir).await?;
        let (ns_a, ns_b) = (topo.a.clone(), topo.b.clone());
        let (a_conf, b_conf) =
            (agent_toml(dir, "ns-a", &topo.wg_if("a"), false)?, agent_toml(dir, "ns-b", &topo.wg_if("b"), false)?);
        Ok(Self {
            dir,
            topo,
            api,
            ctl,
            broker,
            a: 0,
            b: 0,
            ns_a,
            ns_b,
            a_conf,
            b_conf,
            a_token: token(dir, "10m")?,
            secrets: vec![("broker admin password".into(), admin_password)],
        })
    }

    fn start_agent(&mut self, ns: &str, node: &str, conf: &Path) -> anyhow::Result<usize> {
        let mut cmd = self.topo.cmd(ns, bin("fleet-agent")?);
        cmd.arg("--config").arg(conf).env("RUST_LOG", LOG_LEVELS);
        self.topo.spawn(node, cmd, &self.dir.join(format!("{node}.log")))
    }

    /// Both agents enroll over the underlay, then run; their rows arrive through the tunnel.
    async fn enroll_and_run(&mut self) -> anyhow::Result<()> {
        let b_token = token(self.dir, "10m")?;
        for (ns, conf, tok) in [(&self.ns_a, &self.a_conf, &self.a_token), (&self.ns_b, &self.b_conf, &b_token)] {
            let out = enroll(&self.topo, ns, self.dir, conf, tok)?;
            ensure!(
                out.status.success(),
                "enroll in {ns}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (ns_a, ns_b, a_conf, b_conf) =
            (self.ns_a.clone(), self.ns_b.clone(), self.a_conf.clone(), self.b_conf.clone());
        self.a = self.start_agent(&ns_a, "ns-a", &a_conf)?;
        self.b = self.start_agent(&ns_b, "ns-b", &b_conf)?;
        for node in ["ns-a", "ns-b"] {
            wait_for(T, &format!("rows of {node} through the tunnel"), || {
                let mut api = self.api.clone();
                async move { (stored(&mut api, node).await.ok()? > 20).then_some(()) }
            })
            .await
            .with_context(|| {
                let p = &self.topo.procs;
                let (a, broker, ctl) = (p[self.a].log_text(), p[self.broker].log_text(), p[self.ctl].log_text());
                format!("agent:\n{a}\nbroker:\n{broker}\ncontroller:\n{ctl}")
            })?;
        }
        Ok(())
    }

    /// The underlay carries WireGuard UDP and nothing else; the broker is not on it.
    fn underlay_carries_only_wireguard(&self) -> anyhow::Result<()> {
        let a_if = self.topo.underlay_if("a");
        let other = capture(&self.topo, &self.ns_a, &a_if, &format!("ip and not udp port {WG_PORT}"), 3)?;
        let wg = capture(&self.topo, &self.ns_a, &a_if, &format!("udp port {WG_PORT}"), 3)?;
        ensure!(other == 0 && wg > 0, "underlay of A: {wg} WireGuard packets, {other} others");
        println!("overlay: 3 s on A's underlay: {wg} WireGuard UDP packets, {other} other IP packets");
        let probe = run(self
            .topo
            .cmd(&self.ns_a, "bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{CONTROLLER_UNDERLAY}/{MQTT_PORT}")]))?;
        ensure!(!probe.status.success(), "the broker answers on the underlay");
        Ok(())
    }

    /// mosquitto_sub / mosquitto_pub in A's namespace with A's broker login.
    fn as_a(&self, tool: &str, id: &str, rest: &[&str]) -> anyhow::Result<Output> {
        let a_id = fleet_agent::enroll::load(&self.dir.join("ns-a"))?.context("A enrolled")?;
        let port = MQTT_PORT.to_string();
        let login = ["-h", CONTROLLER_OVERLAY, "-p", &port, "-u", "ns-a", "-P", &a_id.broker_password, "-i", id];
        run(self.topo.cmd(&self.ns_a, tool).args(login).args(rest))
    }

    /// Mosquitto keeps A to its own topics: it may not read B's, and a
    /// message from A on B's topic never reaches the controller, while the
    /// same from A on its own topic does (counted there as unsigned).
    async fn mosquitto_keeps_a_to_its_topics(&self) -> anyhow::Result<()> {
        let sub =
            self.as_a("mosquitto_sub", "acl-probe", &["-t", "fleet/v1/nodes/ns-b/telemetry", "-C", "1", "-W", "3"])?;
        let said = format!("{}{}", String::from_utf8_lossy(&sub.stdout), String::from_utf8_lossy(&sub.stderr));
        ensure!(said.contains("denied"), "A subscribed to B's telemetry: {said}");
        let unsigned = || async {
            let addr = format!("{CONTROLLER_HOST_SIDE}:{HTTP_PORT}").parse().ok()?;
            Some(metric_value(
                &http_get(addr, "/metrics").await.ok()?,
                "fleet_messages_dropped_total{reason=\"unsigned\"}",
            ))
        };
        let before = unsigned().await.context("metrics")?;
        for node in ["ns-b", "ns-a"] {
            let topic = format!("fleet/v1/nodes/{node}/telemetry");
            let publish =
                self.as_a("mosquitto_pub", "acl-probe-pub", &["-q", "1", "-t", &topic, "-m", "not signed"])?;
            ensure!(publish.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&publish.stderr));
        }
        wait_for(T, "A's own unsigned message counted", || async { (unsigned().await? >= before + 1.0).then_some(()) })
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = unsigned().await.context("metrics")?;
        ensure!(
            after == before + 1.0,
            "A's message on B's topic reached the controller ({before} -> {after} unsigned)"
        );
        Ok(())
    }

    /// A used token and an expired one are refused; a viewer may look but not change.
    async fn tokens_and_roles(&mut self) -> anyhow::Result<()> {
        let c_conf = agent_toml(self.dir, "ns-c", "fwx0", false)?;
        let reused = enroll(&self.topo, &self.ns_a, self.dir, &c_conf, &self.a_token)?;
        ensure!(!reused.status.success() && String::from_utf8_lossy(&reused.stderr).contains("already used"));
        let short = token(self.dir, "1s")?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let expired = enroll(&self.topo, &self.ns_a, self.dir, &c_conf, &short)?;
        ensure!(!expired.status.success() && String::from_utf8_lossy(&expired.stderr).contains("expired"));
        let req = CreateApiTokenRequest { name: "ns-viewer".into(), role: "viewer".into(), quota: None };
        let viewer_token = self.api.create_api_token(req).await?.into_inner().token;
        let ca = std::fs::read(self.dir.join("controller/tls/ca.pem"))?;
        let url = format!("https://{CONTROLLER_HOST_SIDE}:{GRPC_PORT}");
        let mut v = fleet_client(&url, Some(&ca), Some(&viewer_token)).await?;
        v.list_nodes(ListNodesRequest::default()).await?;
        let e = v
            .set_desired_state(SetDesiredStateRequest {
                desired: Some(DesiredState {
                    node_id: "ns-b".into(),
                    telemetry_interval_ms: 500,
                    ..Default::default()
                }),
                expected_version: 0,
            })
            .await
            .unwrap_err();
        ensure!(e.code() == tonic::Code::PermissionDenied, "viewer: {e:?}");
        self.secrets.push(("expired bootstrap token".into(), short));
        self.secrets.push(("viewer token".into(), viewer_token));
        Ok(())
    }

    /// Ingest rate through the tunnel and over the plain underlay, same agents, same run.
    async fn wireguard_against_veth(&mut self) -> anyhow::Result<()> {
        // A is revoked by now and B stopped: B alone drains.
        let _ = self.topo.procs[self.a].term(Duration::from_secs(30));
        self.topo.procs[self.broker].kill9();
        let mut cmd = self.topo.cmd(&self.topo.c.clone(), "mosquitto");
        cmd.arg("-c").arg(mosquitto_conf(self.dir, true)?);
        self.broker = self.topo.spawn("mosquitto-2", cmd, &self.dir.join("mosquitto-2.log"))?;
        // Tunnel, veth, veth, tunnel (`FLEET_OVERLAY_ROUNDS` times): the store
        // grows between runs, and this order gives both paths the same share of it.
        let (wg, veth) = (
            ("wireguard", format!("mqtt://{CONTROLLER_OVERLAY}:{MQTT_PORT}")),
            ("veth", format!("mqtt://{CONTROLLER_UNDERLAY}:{MQTT_UNDERLAY_PORT}")),
        );
        let rounds = overlay_rounds();
        let mut rates = [0.0f64; 2];
        for round in 1..=rounds {
            let mut this = [0.0f64; 2];
            for (i, (path, url)) in [&wg, &veth, &veth, &wg].into_iter().enumerate() {
                this[usize::from(i == 1 || i == 2)] += self.rate_over(path, url).await? / 2.0;
            }
            ensure!(this[1] > 0.0, "nothing ingested over the veth");
            println!("overlay: round {round}: wireguard {:.0} rows/s, veth {:.0} rows/s", this[0], this[1]);
            rates = [rates[0] + this[0] / f64::from(rounds), rates[1] + this[1] / f64::from(rounds)];
        }
        println!(
            "overlay: mean over {} drains each: wireguard {:.0} rows/s, veth {:.0} rows/s",
            2 * rounds,
            rates[0],
            rates[1]
        );
        println!("wg_vs_veth_ratio={:.3}", rates[0] / rates[1]);
        Ok(())
    }

    /// Rows per second the controller takes while B drains a backlog through
    /// `url` (twice `backlog_size()` samples, replayed as fast as they are taken):
    /// the link is only measured as far as it slows the controller.
    async fn rate_over(&mut self, path: &str, url: &str) -> anyhow::Result<f64> {
        set_broker_url(self.dir, url)?;
        let samples = 2 * backlog_size();
        backlog(&self.dir.join("ns-b"), "ns-b", samples)?;
        let conf = agent_toml(self.dir, "ns-b", &self.topo.wg_if("b"), true)?;
        let before = rows_written().await?;
        let ns_b = self.ns_b.clone();
        self.b = self.start_agent(&ns_b, &format!("ns-b-{path}"), &conf)?;
        wait_for(T, &format!("rows over {path}"), || async move {
            (rows_written().await.ok()? > before + 1000.0).then_some(())
        })
        .await
        .with_context(|| {
            format!("{}\n{}", self.topo.procs[self.b].log_text(), self.topo.procs[self.broker].log_text())
        })?;
        let (r0, t0) = (rows_written().await?, Instant::now());
        let all = before + samples as f64;
        wait_for(Duration::from_secs(600), &format!("the backlog drained over {path}"), || async move {
            (rows_written().await.ok()? >= all).then_some(())
        })
        .await?;
        let rate = (rows_written().await? - r0) / t0.elapsed().as_secs_f64();
        println!("overlay: ingest over {path}: {rate:.0} rows/s (B draining {samples} samples)");
        self.topo.procs[self.b].term(Duration::from_secs(30))?;
        Ok(rate)
    }

    /// Back on the overlay; revoke A: within 5 s its rows stop and its peer
    /// is gone, B's rows go on.
    async fn revoke_a(&mut self) -> anyhow::Result<()> {
        set_broker_url(self.dir, &format!("mqtt://{CONTROLLER_OVERLAY}:{MQTT_PORT}"))?;
        let (ns_a, ns_b, a_conf, b_conf) =
            (self.ns_a.clone(), self.ns_b.clone(), self.a_conf.clone(), self.b_conf.clone());
        self.a = self.start_agent(&ns_a, "ns-a-again", &a_conf)?;
        self.b = self.start_agent(&ns_b, "ns-b-again", &b_conf)?;
        let base = stored(&mut self.api, "ns-a").await?;
        wait_for(T, "A's rows again", || {
            let mut api = self.api.clone();
            async move { (stored(&mut api, "ns-a").await.ok()? > base + 10).then_some(()) }
        })
        .await?;
        fleetctl(self.dir, &["nodes", "revoke", "ns-a"])?;
        let revoked_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (a0, b0) = (stored(&mut self.api, "ns-a").await?, stored(&mut self.api, "ns-b").await?);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (a1, b1) = (stored(&mut self.api, "ns-a").await?, stored(&mut self.api, "ns-b").await?);
        ensure!(a0 == a1, "A's rows still arrive {:?} after the revoke: {a0} -> {a1}", revoked_at.elapsed());
        if b1 <= b0 {
            let addr = format!("{CONTROLLER_HOST_SIDE}:{HTTP_PORT}").parse()?;
            let metrics = http_get(addr, "/metrics").await.unwrap_or_default();
            let dropped: Vec<&str> = metrics.lines().filter(|l| l.contains("dropped") || l.contains("queue")).collect();
            bail!(
                "B's rows stopped: {b0} -> {b1}; controller: {dropped:#?}\nB's log:\n{}\ncontroller's log:\n{}",
                tail(&self.topo.procs[self.b].log_text()),
                tail(&self.topo.procs[self.ctl].log_text())
            );
        }
        let peers = run(self.topo.cmd(&self.topo.c.clone(), "wg").args(["show", &self.topo.wg_if("c"), "peers"]))?;
        let peers = String::from_utf8_lossy(&peers.stdout).to_string();
        let a_key = fleet_agent::identity::Identity::load(&self.dir.join("ns-a"))?.wg_public_base64();
        ensure!(!peers.contains(&a_key) && peers.lines().count() == 1, "controller's peers after the revoke: {peers}");
        println!(
            "overlay: A revoked: its rows stopped within 5 s, its WireGuard peer is gone; B goes on ({b0} -> {b1})"
        );
        Ok(())
    }

    /// Rotates B's key while it sends: the old key works until B confirms
    /// the new one; afterwards the controller has only the new peer.
    async fn rotate_b(&mut self) -> anyhow::Result<()> {
        let b_old = fleet_agent::identity::Identity::load(&self.dir.join("ns-b"))?.wg_public_base64();
        let b_old_private = std::fs::read_to_string(self.dir.join("ns-b/wg.key"))?.trim().to_owned();
        self.secrets.push(("B's old WireGuard key".into(), b_old_private));
        fleetctl(self.dir, &["nodes", "rotate-key", "ns-b"])?;
        let rotated_at = Instant::now();
        let (c_ns, c_wg, b_dir) = (self.topo.c.clone(), self.topo.wg_if("c"), self.dir.join("ns-b"));
        wait_for(T, "B's new key as the controller's only peer for B", || {
            let (c_ns, c_wg, b_dir, b_old) = (c_ns.clone(), c_wg.clone(), b_dir.clone(), b_old.clone());
            async move {
                let new = fleet_agent::identity::Identity::load(&b_dir).ok()?.wg_public_base64();
                let out =
                    Command::new("ip").args(["netns", "exec", &c_ns, "wg", "show", &c_wg, "peers"]).output().ok()?;
                let peers = String::from_utf8_lossy(&out.stdout).to_string();
                (new != b_old && peers.contains(&new) && !peers.contains(&b_old)).then_some(())
            }
        })
        .await
        .with_context(|| format!("{}\n{}", self.topo.procs[self.b].log_text(), self.topo.procs[self.ctl].log_text()))?;
        println!("overlay: B's WireGuard key rotated in {:.1} s", rotated_at.elapsed().as_secs_f64());
        let after = stored(&mut self.api, "ns-b").await?;
        wait_for(T, "B's rows after the rotation", || {
            let mut api = self.api.clone();
            async move { (stored(&mut api, "ns-b").await.ok()? > after + 20).then_some(()) }
        })
        .await?;
        Ok(())
    }

    /// Every sample of B's run across the rotation is stored exactly once.
    async fn b_stored_exactly_once(&mut self) -> anyhow::Result<()> {
        let status = self.topo.procs[self.b].term(Duration::from_secs(30))?;
        ensure!(status.success(), "B stopped badly:\n{}", self.topo.procs[self.b].log_text());
        let report =
            fleet_tests::procs::agent_reports(&self.topo.procs[self.b].log_text()).pop().context("B's report")?;
        ensure!(report.get("batches_kept") == 0, "B left batches unacknowledged: {report:?}");
        let url = format!("sqlite://{}?mode=ro", self.dir.join("controller/fleet.db").display());
        let db = sqlx::SqlitePool::connect(&url).await?;
        let (rows, distinct): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT seq) FROM telemetry WHERE node_id = 'ns-b' AND boot_id = $1",
        )
        .bind(&report.boot_id)
        .fetch_one(&db)
        .await?;
        let taken = i64::try_from(report.get("samples_taken"))?;
        ensure!(
            rows == taken && distinct == taken,
            "B's run across the rotation: {taken} samples taken, {rows} rows ({distinct} distinct)"
        );
        println!("overlay: B's run across the key rotation: {taken} samples, each stored exactly once");
        Ok(())
    }

    /// No secret in any log of the whole scenario (controller and agents at debug level).
    fn no_secret_in_any_log(&mut self) -> anyhow::Result<()> {
        let dir = self.dir;
        let read = |p: PathBuf| -> anyhow::Result<String> { Ok(std::fs::read_to_string(p)?.trim().to_owned()) };
        self.secrets.push(("first admin token".into(), read(dir.join("controller/admin.token"))?));
        self.secrets.push(("bootstrap token".into(), self.a_token.clone()));
        self.secrets.push(("controller WireGuard key".into(), read(dir.join("controller/wg.key"))?));
        for node in ["ns-a", "ns-b"] {
            let d = dir.join(node);
            let e = fleet_agent::enroll::load(&d)?.context("enrolled")?;
            self.secrets.push((format!("{node} broker password"), e.broker_password));
            self.secrets.push((format!("{node} WireGuard key"), read(d.join("wg.key"))?));
            self.secrets.push((format!("{node} signing key"), read(d.join("signing.key"))?));
        }
        let mut scanned = 0;
        for p in &self.topo.procs {
            let log = p.log_text();
            scanned += log.len();
            for (what, secret) in &self.secrets {
                ensure!(secret.len() >= 16, "{what} looks too short to be a secret");
                if log.contains(secret.as_str()) {
                    bail!("the {what} is in {}'s log", p.name);
                }
            }
        }
        println!(
            "overlay: {} secrets, none in {} bytes of logs of {} processes",
            self.secrets.len(),
            scanned,
            self.topo.procs.len()
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_nodes_speak_only_through_the_tunnel() -> anyhow::Result<()> {
    if let Some(why) = missing_tools() {
        return fleet_tests::need::missing(
            fleet_tests::need::Need::Root,
            "overlay::enrolled_nodes_speak_only_through_the_tunnel",
            &why,
        );
    }
    let dir = tempfile::tempdir()?;
    let mut s = Scenario::start(dir.path()).await?;
    s.enroll_and_run().await?;
    s.underlay_carries_only_wireguard()?;
    s.mosquitto_keeps_a_to_its_topics().await?;
    s.tokens_and_roles().await?;
    s.revoke_a().await?;
    s.rotate_b().await?;
    s.b_stored_exactly_once().await?;
    // Last: its load (the controller writing a million rows) must not bear on the checks above.
    s.wireguard_against_veth().await?;
    s.no_secret_in_any_log()
}

/// The admin's API client, once the controller answers over the host side
/// (retried: the veth may still be settling); the controller's log if it does not.
async fn first_answer(topo: &mut Topology, ctl: usize, dir: &Path) -> anyhow::Result<FleetClient> {
    let start = Instant::now();
    loop {
        let err = match admin(dir).await {
            Ok(api) => return Ok(api),
            Err(e) => e,
        };
        let alive = topo.procs[ctl].running();
        if !alive || start.elapsed() > T {
            let state = if alive { "running" } else { "exited" };
            bail!(
                "the controller ({state}) does not answer: {err:#}\ncontroller's log:\n{}",
                topo.procs[ctl].log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("spool::durability")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
