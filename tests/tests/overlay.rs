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
//! the plain underlay, printed as `wg_vs_veth_ratio=<x>`.
//!
//! Forged messages through rumqttd and Kafka are `signed.rs`'s (in process).
//! Needs root, iproute2, wireguard-go, wg, tcpdump and mosquitto_sub
//! (scripts/test installs them); skipped with the reason printed otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fleet_net::client::{FleetClient, fleet_client};
use fleet_proto::v1::{CreateApiTokenRequest, DesiredState, ListNodesRequest, SetDesiredStateRequest};
use fleet_tests::procs::{NetNs, Proc, bin};
use fleet_tests::{free_port, http_get, metric_value, wait_for};

const WG_PORT: u16 = 51820;
const GRPC_PORT: u16 = 50551;
const HTTP_PORT: u16 = 18551;
const MQTT_PORT: u16 = 18831;
const MQTT_UNDERLAY_PORT: u16 = 18832;
const CONTROLLER_UNDERLAY: &str = "10.232.9.1";
const CONTROLLER_HOST_SIDE: &str = "10.232.0.2";
const CONTROLLER_OVERLAY: &str = "10.77.0.1";
const T: Duration = Duration::from_secs(30);
/// Debug logs of our code (the secrets check reads them all), quieter libraries.
const LOG_LEVELS: &str = "debug,rumqttd=off,rumqttc=info,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,\
                          sqlx=info,tonic=info,librdkafka=info";

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = run(Command::new("ip").args(args))?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Three namespaces: the controller's (with a bridge for the agents' veths
/// and one veth to the test's namespace) and two agents'. Everything,
/// processes included, is removed on drop, also when the test fails.
struct Topology {
    tag: u32,
    c: String,
    a: String,
    b: String,
    host_if: String,
    procs: Vec<Proc>,
}

impl Topology {
    fn create() -> anyhow::Result<Self> {
        let tag = std::process::id() % 10_000;
        let t = Self {
            tag,
            c: format!("fo-c-{tag}"),
            a: format!("fo-a-{tag}"),
            b: format!("fo-b-{tag}"),
            host_if: format!("foh{tag}"),
            procs: Vec::new(),
        };
        for ns in [&t.c, &t.a, &t.b] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Test namespace <-> controller: the admin's way in.
        let c_host = format!("foc{tag}");
        ip(&["link", "add", &t.host_if, "type", "veth", "peer", "name", &c_host])?;
        ip(&["link", "set", &c_host, "netns", &t.c])?;
        ip(&["addr", "add", "10.232.0.1/30", "dev", &t.host_if])?;
        ip(&["link", "set", &t.host_if, "up"])?;
        ip(&["-n", &t.c, "addr", "add", &format!("{CONTROLLER_HOST_SIDE}/30"), "dev", &c_host])?;
        ip(&["-n", &t.c, "link", "set", &c_host, "up"])?;
        // The underlay: a bridge in the controller's namespace, one veth per agent.
        let br = format!("fobr{tag}");
        ip(&["-n", &t.c, "link", "add", &br, "type", "bridge"])?;
        ip(&["-n", &t.c, "addr", "add", &format!("{CONTROLLER_UNDERLAY}/24"), "dev", &br])?;
        ip(&["-n", &t.c, "link", "set", &br, "up"])?;
        for (ns, addr, side) in [(&t.a, "10.232.9.2", "a"), (&t.b, "10.232.9.3", "b")] {
            let (inner, outer) = (t.underlay_if(side), format!("fo{side}c{tag}"));
            ip(&["link", "add", &inner, "type", "veth", "peer", "name", &outer])?;
            ip(&["link", "set", &inner, "netns", ns])?;
            ip(&["link", "set", &outer, "netns", &t.c])?;
            ip(&["-n", &t.c, "link", "set", &outer, "master", &br])?;
            ip(&["-n", &t.c, "link", "set", &outer, "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
            ip(&["-n", ns, "link", "set", &inner, "up"])?;
        }
        Ok(t)
    }

    fn underlay_if(&self, side: &str) -> String {
        format!("fo{side}{}", self.tag)
    }

    fn wg_if(&self, side: &str) -> String {
        format!("fw{side}{}", self.tag)
    }

    fn cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program).env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
        c
    }

    fn spawn(&mut self, name: &str, cmd: Command, log: &Path) -> anyhow::Result<usize> {
        self.procs.push(Proc::spawn(name, cmd, log)?);
        Ok(self.procs.len() - 1)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.procs.clear(); // killed on drop
        // wireguard-go daemonizes: stop it, and its sockets.
        for side in ["c", "a", "b"] {
            let iface = self.wg_if(side);
            let _ = Command::new("pkill").args(["-f", &format!("wireguard-go {iface}")]).status();
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.name"));
        }
        let _ = ip(&["link", "del", &self.host_if]);
        for ns in [&self.c, &self.a, &self.b] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn missing_tools() -> Option<String> {
    if let Some(why) = NetNs::unavailable() {
        return Some(why);
    }
    for tool in ["wireguard-go", "wg", "tcpdump", "mosquitto_sub", "mosquitto_ctrl"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success())
        {
            return Some(format!("{tool} is not installed (scripts/test installs it)"));
        }
    }
    None
}

fn controller_toml(dir: &Path, admin_password: &str, tag: u32) -> anyhow::Result<PathBuf> {
    let path = dir.join("controller.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{data}\"\n\
             [mqtt]\nurl = \"mqtt://{CONTROLLER_OVERLAY}:{MQTT_PORT}\"\nusername = \"fleet-admin\"\n\
             password = \"{admin_password}\"\ndynsec = true\n\
             [grpc]\nlisten = \"0.0.0.0:{GRPC_PORT}\"\n[http]\nlisten = \"0.0.0.0:{HTTP_PORT}\"\n\
             [ingest]\nmax_write_delay = \"20ms\"\n\
             [security]\ntls_names = [\"{CONTROLLER_HOST_SIDE}\", \"{CONTROLLER_UNDERLAY}\"]\n\
             node_broker_url = \"mqtt://{CONTROLLER_OVERLAY}:{MQTT_PORT}\"\n\
             [wireguard]\nenabled = true\ninterface = \"fwc{tag}\"\nlisten_port = {WG_PORT}\n\
             endpoint = \"{CONTROLLER_UNDERLAY}:{WG_PORT}\"\n",
            data = dir.join("controller").display()
        ),
    )?;
    Ok(path)
}

fn mosquitto_conf(dir: &Path, underlay_too: bool) -> anyhow::Result<PathBuf> {
    let plugin = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"]
        .iter()
        .map(|d| Path::new(d).join("mosquitto_dynamic_security.so"))
        .find(|p| p.exists())
        .context("mosquitto_dynamic_security.so not found")?;
    let mut text = format!(
        "log_dest stderr\nuser root\nper_listener_settings false\nallow_anonymous false\npersistence false\nmax_queued_messages 100000\n\
         plugin {}\nplugin_opt_config_file {}\nlistener {MQTT_PORT} {CONTROLLER_OVERLAY}\n",
        plugin.display(),
        dir.join("dynsec.json").display()
    );
    if underlay_too {
        text.push_str(&format!("listener {MQTT_UNDERLAY_PORT} {CONTROLLER_UNDERLAY}\n"));
    }
    let path = dir.join(if underlay_too { "mosquitto-underlay.conf" } else { "mosquitto.conf" });
    std::fs::write(&path, text)?;
    Ok(path)
}

fn agent_toml(dir: &Path, node: &str, wg_if: &str, fast: bool) -> anyhow::Result<PathBuf> {
    let (interval, flush) = if fast { ("10ms", "50ms") } else { ("100ms", "100ms") };
    let path = dir.join(format!("{node}{}.toml", if fast { "-fast" } else { "" }));
    std::fs::write(
        &path,
        format!(
            "node_id = \"{node}\"\ndata_dir = \"{data}\"\n\
             [mqtt]\nkeep_alive = \"5s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
             [telemetry]\ninterval = \"{interval}\"\nflush_interval = \"{flush}\"\nstatus_interval = \"2s\"\n\
             max_batch_samples = 2048\n\
             [hardware]\nbackend = \"sim\"\n[inference]\nenabled = false\n\
             [overlay]\ninterface = \"{wg_if}\"\n",
            data = dir.join(node).display()
        ),
    )?;
    Ok(path)
}

/// The real `fleetctl` as the admin, from the test's namespace; its stdout.
fn fleetctl(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let data = dir.join("controller");
    let out = run(Command::new(bin("fleetctl")?)
        .args(["--server", &format!("https://{CONTROLLER_HOST_SIDE}:{GRPC_PORT}"), "--ca"])
        .arg(data.join("tls/ca.pem"))
        .arg("--token-file")
        .arg(data.join("admin.token"))
        .args(args))?;
    ensure!(out.status.success(), "fleetctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Bootstrap token from the real CLI, as an operator makes one.
fn token(dir: &Path, ttl: &str) -> anyhow::Result<String> {
    fleetctl(dir, &["tokens", "create", "--ttl", ttl])
}

/// Points the enrolled agents at another broker URL (the ingest-rate phases).
fn set_broker_url(dir: &Path, url: &str) -> anyhow::Result<()> {
    for node in ["ns-a", "ns-b"] {
        let f = dir.join(node).join(fleet_agent::enroll::ENROLLMENT_FILE);
        let text = std::fs::read_to_string(&f)?;
        let line = text.lines().find(|l| l.starts_with("broker_url")).context("broker_url")?.to_owned();
        std::fs::write(&f, text.replace(&line, &format!("broker_url = \"{url}\"")))?;
    }
    Ok(())
}

/// `fleet-agent enroll` inside the agent's namespace, over the underlay.
fn enroll(topo: &Topology, ns: &str, dir: &Path, config: &Path, token: &str) -> anyhow::Result<Output> {
    let mut cmd = topo.cmd(ns, bin("fleet-agent")?);
    cmd.arg("--config")
        .arg(config)
        .args(["enroll", "--controller", &format!("https://{CONTROLLER_UNDERLAY}:{GRPC_PORT}"), "--ca"])
        .arg(dir.join("controller/tls/ca.pem"))
        .env("FLEET_BOOTSTRAP_TOKEN", token);
    run(&mut cmd)
}

async fn admin(dir: &Path) -> anyhow::Result<FleetClient> {
    let ca = std::fs::read(dir.join("controller/tls/ca.pem"))?;
    let token = std::fs::read_to_string(dir.join("controller/admin.token"))?;
    fleet_client(&format!("https://{CONTROLLER_HOST_SIDE}:{GRPC_PORT}"), Some(&ca), Some(&token))
        .await
        .map_err(anyhow::Error::msg)
}

async fn stored(api: &mut FleetClient, node: &str) -> anyhow::Result<u64> {
    let nodes = api.list_nodes(ListNodesRequest::default()).await?.into_inner().nodes;
    Ok(nodes.iter().find(|n| n.node_id == node).map_or(0, |n| n.samples_stored))
}

async fn rows_written() -> anyhow::Result<f64> {
    let addr = format!("{CONTROLLER_HOST_SIDE}:{HTTP_PORT}").parse()?;
    Ok(metric_value(&http_get(addr, "/metrics").await?, "fleet_rows_written_total"))
}

/// Packets on `iface` in `ns` matching `filter` during `secs` seconds.
fn capture(topo: &Topology, ns: &str, iface: &str, filter: &str, secs: u32) -> anyhow::Result<usize> {
    let mut cmd = Command::new("timeout");
    cmd.args([&secs.to_string(), "ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-l", "-q", filter]);
    let out = run(&mut cmd)?;
    let _ = topo;
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" IP")).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_nodes_speak_only_through_the_tunnel() -> anyhow::Result<()> {
    if let Some(why) = missing_tools() {
        println!("SKIPPED overlay namespace test: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let mut topo = Topology::create()?;
    let tag = topo.tag;

    // Mosquitto's dynamic-security admin (the controller logs in as it).
    let admin_password = uuid::Uuid::new_v4().simple().to_string();
    let out = run(Command::new("mosquitto_ctrl")
        .args(["dynsec", "init"])
        .arg(dir.join("dynsec.json"))
        .args(["fleet-admin", &admin_password]))?;
    ensure!(out.status.success(), "mosquitto_ctrl: {}", String::from_utf8_lossy(&out.stderr));

    // The controller first (it makes the overlay interface), then the broker on the overlay address.
    let ctl_conf = controller_toml(dir, &admin_password, tag)?;
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
    let mut broker = topo.spawn("mosquitto", cmd, &dir.join("mosquitto.log"))?;
    let mut api = admin(dir).await?;

    // Enroll both agents over the underlay, then run them.
    let (a_conf, b_conf) =
        (agent_toml(dir, "ns-a", &topo.wg_if("a"), false)?, agent_toml(dir, "ns-b", &topo.wg_if("b"), false)?);
    let a_token = token(dir, "10m")?;
    let (ns_a, ns_b) = (topo.a.clone(), topo.b.clone());
    for (ns, conf, tok) in [(&ns_a, &a_conf, a_token.clone()), (&ns_b, &b_conf, token(dir, "10m")?)] {
        let out = enroll(&topo, ns, dir, conf, &tok)?;
        ensure!(
            out.status.success(),
            "enroll in {ns}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let start_agent = |topo: &mut Topology, ns: &str, node: &str, conf: &Path| -> anyhow::Result<usize> {
        let mut cmd = topo.cmd(ns, bin("fleet-agent")?);
        cmd.arg("--config").arg(conf).env("RUST_LOG", LOG_LEVELS);
        topo.spawn(node, cmd, &dir.join(format!("{node}.log")))
    };
    let mut a = start_agent(&mut topo, &ns_a, "ns-a", &a_conf)?;
    let mut b = start_agent(&mut topo, &ns_b, "ns-b", &b_conf)?;
    for node in ["ns-a", "ns-b"] {
        wait_for(T, &format!("rows of {node} through the tunnel"), || {
            let mut api = api.clone();
            async move { (stored(&mut api, node).await.ok()? > 20).then_some(()) }
        })
        .await
        .with_context(|| {
            format!(
                "agent:\n{}\nbroker:\n{}\ncontroller:\n{}",
                topo.procs[a].log_text(),
                topo.procs[broker].log_text(),
                topo.procs[ctl].log_text()
            )
        })?;
    }

    // The underlay carries WireGuard UDP and nothing else; the broker is not on it.
    let a_if = topo.underlay_if("a");
    let other = capture(&topo, &ns_a, &a_if, &format!("ip and not udp port {WG_PORT}"), 3)?;
    let wg = capture(&topo, &ns_a, &a_if, &format!("udp port {WG_PORT}"), 3)?;
    ensure!(other == 0 && wg > 0, "underlay of A: {wg} WireGuard packets, {other} others");
    println!("overlay: 3 s on A's underlay: {wg} WireGuard UDP packets, {other} other IP packets");
    let probe =
        run(topo.cmd(&ns_a, "bash").args(["-c", &format!("exec 3<>/dev/tcp/{CONTROLLER_UNDERLAY}/{MQTT_PORT}")]))?;
    ensure!(!probe.status.success(), "the broker answers on the underlay");

    // Mosquitto keeps A to its own topics.
    let a_id = fleet_agent::enroll::load(&dir.join("ns-a"))?.context("A enrolled")?;
    // mosquitto_sub / mosquitto_pub in A's namespace with A's broker login.
    let as_a = |tool: &str, id: &str, rest: &[&str]| -> anyhow::Result<Output> {
        let port = MQTT_PORT.to_string();
        let login = ["-h", CONTROLLER_OVERLAY, "-p", &port, "-u", "ns-a", "-P", &a_id.broker_password, "-i", id];
        run(topo.cmd(&ns_a, tool).args(login).args(rest))
    };
    let sub = as_a("mosquitto_sub", "acl-probe", &["-t", "fleet/v1/nodes/ns-b/telemetry", "-C", "1", "-W", "3"])?;
    let said = format!("{}{}", String::from_utf8_lossy(&sub.stdout), String::from_utf8_lossy(&sub.stderr));
    ensure!(said.contains("denied"), "A subscribed to B's telemetry: {said}");
    // ...nor publish there: a message from A on B's topic never reaches the controller, while the
    // same from A on its own topic does (it is counted there as unsigned).
    let unsigned = || async {
        let addr = format!("{CONTROLLER_HOST_SIDE}:{HTTP_PORT}").parse().ok()?;
        Some(metric_value(&http_get(addr, "/metrics").await.ok()?, "fleet_messages_dropped_total{reason=\"unsigned\"}"))
    };
    let before = unsigned().await.context("metrics")?;
    for node in ["ns-b", "ns-a"] {
        let topic = format!("fleet/v1/nodes/{node}/telemetry");
        let publish = as_a("mosquitto_pub", "acl-probe-pub", &["-q", "1", "-t", &topic, "-m", "not signed"])?;
        ensure!(publish.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&publish.stderr));
    }
    wait_for(T, "A's own unsigned message counted", || async { (unsigned().await? >= before + 1.0).then_some(()) })
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = unsigned().await.context("metrics")?;
    ensure!(after == before + 1.0, "A's message on B's topic reached the controller ({before} -> {after} unsigned)");

    // Tokens: a used one and an expired one are refused.
    let c_conf = agent_toml(dir, "ns-c", "fwx0", false)?;
    let reused = enroll(&topo, &ns_a, dir, &c_conf, &a_token)?;
    ensure!(!reused.status.success() && String::from_utf8_lossy(&reused.stderr).contains("already used"));
    let short = token(dir, "1s")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = enroll(&topo, &ns_a, dir, &c_conf, &short)?;
    ensure!(!expired.status.success() && String::from_utf8_lossy(&expired.stderr).contains("expired"));

    // A viewer may look but not change.
    let viewer =
        api.create_api_token(CreateApiTokenRequest { name: "ns-viewer".into(), role: "viewer".into() }).await?;
    let viewer_token = viewer.get_ref().token.clone();
    let ca = std::fs::read(dir.join("controller/tls/ca.pem"))?;
    let mut v = fleet_client(
        &format!("https://{CONTROLLER_HOST_SIDE}:{GRPC_PORT}"),
        Some(&ca),
        Some(&viewer.into_inner().token),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    v.list_nodes(ListNodesRequest::default()).await?;
    let e = v
        .set_desired_state(SetDesiredStateRequest {
            desired: Some(DesiredState { node_id: "ns-b".into(), telemetry_interval_ms: 500, ..Default::default() }),
            expected_version: 0,
        })
        .await
        .unwrap_err();
    ensure!(e.code() == tonic::Code::PermissionDenied, "viewer: {e:?}");

    // Ingest rate through the tunnel and over the plain underlay, same agents, same run.
    topo.procs[a].term(Duration::from_secs(30))?;
    topo.procs[b].term(Duration::from_secs(30))?;
    topo.procs[broker].kill9();
    let mut cmd = topo.cmd(&topo.c.clone(), "mosquitto");
    cmd.arg("-c").arg(mosquitto_conf(dir, true)?);
    broker = topo.spawn("mosquitto-2", cmd, &dir.join("mosquitto-2.log"))?;
    let mut rates = Vec::new();
    for (path, url) in [
        ("wireguard", format!("mqtt://{CONTROLLER_OVERLAY}:{MQTT_PORT}")),
        ("veth", format!("mqtt://{CONTROLLER_UNDERLAY}:{MQTT_UNDERLAY_PORT}")),
    ] {
        set_broker_url(dir, &url)?;
        let (fa, fb) =
            (agent_toml(dir, "ns-a", &topo.wg_if("a"), true)?, agent_toml(dir, "ns-b", &topo.wg_if("b"), true)?);
        a = start_agent(&mut topo, &ns_a, &format!("ns-a-{path}"), &fa)?;
        b = start_agent(&mut topo, &ns_b, &format!("ns-b-{path}"), &fb)?;
        let before = rows_written().await?;
        wait_for(T, &format!("rows over {path}"), || async move {
            (rows_written().await.ok()? > before + 1000.0).then_some(())
        })
        .await
        .with_context(|| format!("{}\n{}", topo.procs[a].log_text(), topo.procs[broker].log_text()))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (r0, t0) = (rows_written().await?, Instant::now());
        tokio::time::sleep(Duration::from_secs(8)).await;
        let rate = (rows_written().await? - r0) / t0.elapsed().as_secs_f64();
        println!("overlay: ingest over {path}: {rate:.0} rows/s (2 agents at 10 ms sampling)");
        rates.push(rate);
        topo.procs[a].term(Duration::from_secs(30))?;
        topo.procs[b].term(Duration::from_secs(30))?;
    }
    ensure!(rates[1] > 0.0, "nothing ingested over the veth");
    println!("wg_vs_veth_ratio={:.3}", rates[0] / rates[1]);

    // Back on the overlay; revoke A: within 5 s its rows stop, B's go on.
    set_broker_url(dir, &format!("mqtt://{CONTROLLER_OVERLAY}:{MQTT_PORT}"))?;
    let _a = start_agent(&mut topo, &ns_a, "ns-a-again", &a_conf)?;
    let _b = start_agent(&mut topo, &ns_b, "ns-b-again", &b_conf)?;
    let base = stored(&mut api, "ns-a").await?;
    wait_for(T, "A's rows again", || {
        let mut api = api.clone();
        async move { (stored(&mut api, "ns-a").await.ok()? > base + 10).then_some(()) }
    })
    .await?;
    fleetctl(dir, &["nodes", "revoke", "ns-a"])?;
    let revoked_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (a0, b0) = (stored(&mut api, "ns-a").await?, stored(&mut api, "ns-b").await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a1, b1) = (stored(&mut api, "ns-a").await?, stored(&mut api, "ns-b").await?);
    ensure!(a0 == a1, "A's rows still arrive {:?} after the revoke: {a0} -> {a1}", revoked_at.elapsed());
    ensure!(b1 > b0, "B's rows stopped: {b0} -> {b1}");
    let peers = run(topo.cmd(&topo.c.clone(), "wg").args(["show", &topo.wg_if("c"), "peers"]))?;
    let peers = String::from_utf8_lossy(&peers.stdout).to_string();
    let a_key = fleet_agent::identity::Identity::load(&dir.join("ns-a"))?.wg_public_base64();
    ensure!(!peers.contains(&a_key) && peers.lines().count() == 1, "controller's peers after the revoke: {peers}");
    println!("overlay: A revoked: its rows stopped within 5 s, its WireGuard peer is gone; B goes on ({b0} -> {b1})");

    // Rotate B's key while it sends: the old key works until B confirms the
    // new one; afterwards the controller has only the new peer, and every
    // sample of B's run is stored exactly once.
    let b_old = fleet_agent::identity::Identity::load(&dir.join("ns-b"))?.wg_public_base64();
    let b_old_private = std::fs::read_to_string(dir.join("ns-b/wg.key"))?.trim().to_owned();
    fleetctl(dir, &["nodes", "rotate-key", "ns-b"])?;
    let rotated_at = Instant::now();
    let c_ns = topo.c.clone();
    let c_wg = topo.wg_if("c");
    let b_dir = dir.join("ns-b");
    wait_for(T, "B's new key as the controller's only peer for B", || {
        let (c_ns, c_wg, b_dir, b_old) = (c_ns.clone(), c_wg.clone(), b_dir.clone(), b_old.clone());
        async move {
            let new = fleet_agent::identity::Identity::load(&b_dir).ok()?.wg_public_base64();
            let out = Command::new("ip").args(["netns", "exec", &c_ns, "wg", "show", &c_wg, "peers"]).output().ok()?;
            let peers = String::from_utf8_lossy(&out.stdout).to_string();
            (new != b_old && peers.contains(&new) && !peers.contains(&b_old)).then_some(())
        }
    })
    .await
    .with_context(|| format!("{}\n{}", topo.procs[_b].log_text(), topo.procs[ctl].log_text()))?;
    println!("overlay: B's WireGuard key rotated in {:.1} s", rotated_at.elapsed().as_secs_f64());
    let after = stored(&mut api, "ns-b").await?;
    wait_for(T, "B's rows after the rotation", || {
        let mut api = api.clone();
        async move { (stored(&mut api, "ns-b").await.ok()? > after + 20).then_some(()) }
    })
    .await?;
    let status = topo.procs[_b].term(Duration::from_secs(30))?;
    ensure!(status.success(), "B stopped badly:\n{}", topo.procs[_b].log_text());
    let report = fleet_tests::procs::agent_reports(&topo.procs[_b].log_text()).pop().context("B's report")?;
    ensure!(report.get("batches_kept") == 0, "B left batches unacknowledged: {report:?}");
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", dir.join("controller/fleet.db").display())).await?;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT seq) FROM telemetry WHERE node_id = 'ns-b' AND boot_id = $1")
            .bind(&report.boot_id)
            .fetch_one(&db)
            .await?;
    let taken = i64::try_from(report.get("samples_taken"))?;
    ensure!(
        rows == taken && distinct == taken,
        "B's run across the rotation: {taken} samples taken, {rows} rows ({distinct} distinct)"
    );
    println!("overlay: B's run across the key rotation: {taken} samples, each stored exactly once");
    let _ = (broker, free_port);

    // No secret in any log of the whole scenario (controller and agents at debug level).
    let mut secrets: Vec<(String, String)> = vec![
        ("broker admin password".into(), admin_password.clone()),
        ("first admin token".into(), std::fs::read_to_string(dir.join("controller/admin.token"))?.trim().to_owned()),
        ("bootstrap token".into(), a_token.clone()),
        ("expired bootstrap token".into(), short.clone()),
        ("viewer token".into(), viewer_token.clone()),
        ("controller WireGuard key".into(), std::fs::read_to_string(dir.join("controller/wg.key"))?.trim().to_owned()),
    ];
    for node in ["ns-a", "ns-b"] {
        let d = dir.join(node);
        let e = fleet_agent::enroll::load(&d)?.context("enrolled")?;
        secrets.push((format!("{node} broker password"), e.broker_password));
        secrets.push((format!("{node} WireGuard key"), std::fs::read_to_string(d.join("wg.key"))?.trim().to_owned()));
        secrets
            .push((format!("{node} signing key"), std::fs::read_to_string(d.join("signing.key"))?.trim().to_owned()));
    }
    secrets.push(("B's old WireGuard key".into(), b_old_private));
    let mut scanned = 0;
    for p in &topo.procs {
        let log = p.log_text();
        scanned += log.len();
        for (what, secret) in &secrets {
            ensure!(secret.len() >= 16, "{what} looks too short to be a secret");
            if log.contains(secret.as_str()) {
                bail!("the {what} is in {}'s log", p.name);
            }
        }
    }
    println!("overlay: {} secrets, none in {} bytes of logs of {} processes", secrets.len(), scanned, topo.procs.len());
    Ok(())
}
