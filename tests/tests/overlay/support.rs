//! The namespaces, processes and tools of the overlay scenario (`overlay.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_net::client::{FleetClient, fleet_client};
use fleet_proto::v1::ListNodesRequest;
use fleet_tests::procs::{NetNs, Proc, bin, clear_stale_namespaces};
use fleet_tests::{http_get, metric_value};

pub const WG_PORT: u16 = 51820;
pub const GRPC_PORT: u16 = 50551;
pub const HTTP_PORT: u16 = 18551;
pub const MQTT_PORT: u16 = 18831;
pub const MQTT_UNDERLAY_PORT: u16 = 18832;
pub const CONTROLLER_UNDERLAY: &str = "10.232.9.1";
pub const CONTROLLER_HOST_SIDE: &str = "10.232.0.2";
pub const CONTROLLER_OVERLAY: &str = "10.77.0.1";
pub const T: Duration = Duration::from_secs(30);
/// Debug logs of our code (the secrets check reads them all), quieter libraries.
pub const LOG_LEVELS: &str = "debug,fleet_agent::spool::durability=info,rumqttd=off,rumqttc=info,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,\
                          sqlx=info,tonic=info,librdkafka=info";

pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = run(Command::new("ip").args(args))?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Three namespaces: the controller's (with a bridge for the agents' veths
/// and one veth to the test's namespace) and two agents'. Everything,
/// processes included, is removed on drop, also when the test fails.
pub struct Topology {
    pub tag: u32,
    pub c: String,
    pub a: String,
    pub b: String,
    pub host_if: String,
    pub procs: Vec<Proc>,
}

impl Topology {
    pub fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let tag = pid % 10_000;
        clear_stale_namespaces("fo-");
        let t = Self {
            tag,
            c: format!("fo-c-{pid}"),
            a: format!("fo-a-{pid}"),
            b: format!("fo-b-{pid}"),
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

    pub fn underlay_if(&self, side: &str) -> String {
        format!("fo{side}{}", self.tag)
    }

    pub fn wg_if(&self, side: &str) -> String {
        format!("fw{side}{}", self.tag)
    }

    pub fn cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program).env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
        c
    }

    pub fn spawn(&mut self, name: &str, cmd: Command, log: &Path) -> anyhow::Result<usize> {
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

pub fn missing_tools() -> Option<String> {
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

pub fn controller_toml(dir: &Path, admin_password: &str, tag: u32) -> anyhow::Result<PathBuf> {
    let path = dir.join("controller.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{data}\"\n\
             [mqtt]\nurl = \"mqtt://{CONTROLLER_OVERLAY}:{MQTT_PORT}\"\nusername = \"fleet-admin\"\n\
             password = \"{admin_password}\"\ndynsec = true\n\
             [grpc]\nlisten = \"0.0.0.0:{GRPC_PORT}\"\n[http]\nlisten = \"0.0.0.0:{HTTP_PORT}\"\ntls = \"off\"\n\
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

pub fn mosquitto_conf(dir: &Path, underlay_too: bool) -> anyhow::Result<PathBuf> {
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

/// An agent's config; `drain`: for the rate phase, replaying its backlog as
/// fast as the link and the controller take it.
pub fn agent_toml(dir: &Path, node: &str, wg_if: &str, drain: bool) -> anyhow::Result<PathBuf> {
    let (interval, flush) = ("100ms", "100ms");
    let spool = if drain { "[spool]\nreplay_batches_per_s = 100000\nmax_bytes = 1073741824\n" } else { "" };
    let path = dir.join(format!("{node}{}.toml", if drain { "-drain" } else { "" }));
    std::fs::write(
        &path,
        format!(
            "node_id = \"{node}\"\ndata_dir = \"{data}\"\n\
             [mqtt]\nkeep_alive = \"5s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
             [telemetry]\ninterval = \"{interval}\"\nflush_interval = \"{flush}\"\nstatus_interval = \"2s\"\n\
             max_batch_samples = 2048\n\
             [hardware]\nbackend = \"sim\"\n[inference]\nenabled = false\n\
             [overlay]\ninterface = \"{wg_if}\"\n{spool}",
            data = dir.join(node).display()
        ),
    )?;
    Ok(path)
}

/// The real `fleetctl` as the admin, from the test's namespace; its stdout.
pub fn fleetctl(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
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
pub fn token(dir: &Path, ttl: &str) -> anyhow::Result<String> {
    fleetctl(dir, &["tokens", "create", "--ttl", ttl])
}

/// Points the enrolled agents at another broker URL (the ingest-rate phases).
pub fn set_broker_url(dir: &Path, url: &str) -> anyhow::Result<()> {
    for node in ["ns-a", "ns-b"] {
        let f = dir.join(node).join(fleet_agent::enroll::ENROLLMENT_FILE);
        let text = std::fs::read_to_string(&f)?;
        let line = text.lines().find(|l| l.starts_with("broker_url")).context("broker_url")?.to_owned();
        std::fs::write(&f, text.replace(&line, &format!("broker_url = \"{url}\"")))?;
    }
    Ok(())
}

/// `fleet-agent enroll` inside the agent's namespace, over the underlay.
pub fn enroll(topo: &Topology, ns: &str, dir: &Path, config: &Path, token: &str) -> anyhow::Result<Output> {
    let mut cmd = topo.cmd(ns, bin("fleet-agent")?);
    cmd.arg("--config")
        .arg(config)
        .args(["enroll", "--controller", &format!("https://{CONTROLLER_UNDERLAY}:{GRPC_PORT}"), "--ca"])
        .arg(dir.join("controller/tls/ca.pem"))
        .env("FLEET_BOOTSTRAP_TOKEN", token);
    run(&mut cmd)
}

pub async fn admin(dir: &Path) -> anyhow::Result<FleetClient> {
    let ca = std::fs::read(dir.join("controller/tls/ca.pem"))?;
    let token = std::fs::read_to_string(dir.join("controller/admin.token"))?;
    fleet_client(&format!("https://{CONTROLLER_HOST_SIDE}:{GRPC_PORT}"), Some(&ca), Some(&token))
        .await
        .map_err(anyhow::Error::msg)
}

pub async fn stored(api: &mut FleetClient, node: &str) -> anyhow::Result<u64> {
    let nodes = api.list_nodes(ListNodesRequest::default()).await?.into_inner().nodes;
    Ok(nodes.iter().find(|n| n.node_id == node).map_or(0, |n| n.samples_stored))
}

pub async fn rows_written() -> anyhow::Result<f64> {
    let addr = format!("{CONTROLLER_HOST_SIDE}:{HTTP_PORT}").parse()?;
    Ok(metric_value(&http_get(addr, "/metrics").await?, "fleet_rows_written_total"))
}

/// Packets on `iface` in `ns` matching `filter` during `secs` seconds.
pub fn capture(topo: &Topology, ns: &str, iface: &str, filter: &str, secs: u32) -> anyhow::Result<usize> {
    let mut cmd = Command::new("timeout");
    cmd.args([&secs.to_string(), "ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-l", "-q", filter]);
    let out = run(&mut cmd)?;
    let _ = topo;
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" IP")).count())
}

/// Samples each agent drains in the rate phase: `FLEET_OVERLAY_BACKLOG`, default 200,000.
#[must_use]
pub fn backlog_size() -> u64 {
    std::env::var("FLEET_OVERLAY_BACKLOG").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000)
}

/// Rounds of tunnel, veth, veth, tunnel in the rate phase.
pub fn overlay_rounds() -> u32 {
    std::env::var("FLEET_OVERLAY_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|&r| r > 0).unwrap_or(1)
}

/// Samples per batch of a backlog (a batch an agent that was offline cuts).
const BACKLOG_BATCH: u64 = 1000;

/// Puts `samples` samples of a new run into the spool of the (stopped) agent
/// whose data is in `data_dir`, as an agent that was offline for a while
/// holds them; returns the run's boot id.
pub fn backlog(data_dir: &Path, node: &str, samples: u64) -> anyhow::Result<String> {
    use fleet_agent::spool::{Spool, SpoolConfig};
    use fleet_proto::v1::{Sample, TelemetryBatch};
    let cfg = SpoolConfig { max_bytes: 1 << 30, ..SpoolConfig::default() };
    let mut spool = Spool::open(&data_dir.join("spool"), cfg)?;
    let boot_id = uuid::Uuid::new_v4().to_string();
    let start_ms = fleet_proto::now_unix_ms() - 3_600_000;
    for first in (0..samples).step_by(BACKLOG_BATCH as usize) {
        let n = BACKLOG_BATCH.min(samples - first);
        let batch = TelemetryBatch {
            node_id: node.to_owned(),
            boot_id: boot_id.clone(),
            first_seq: first,
            samples: (first..first + n)
                .map(|i| Sample {
                    metric: fleet_proto::metrics::TICK[(i % 11) as usize].into(),
                    value: (i % 100) as f64,
                    time_unix_ms: start_ms + i64::try_from(i / 11).unwrap_or(0) * 10,
                })
                .collect(),
            low_water_seq: 0,
        };
        spool.append(&batch)?;
    }
    spool.close()?;
    Ok(boot_id)
}
