//! `dashboard-bench`: the dashboard's server side with `--nodes` nodes in the
//! live view (default 10,000), on a controller in this process (SQLite,
//! embedded broker, API tokens on, plain HTTP on loopback so that no TLS
//! handshake is counted).
//!
//! 1. The fleet page: `GET /api/fleet` for the first page (50 rows) sorted by
//!    id, and sorted by CPU descending with a label filter; the time of each
//!    request as the client sees it on loopback (a new connection each:
//!    median and p99 of `--requests`), and the bytes of the answer and of
//!    the page's files (HTML, CSS, JavaScript).
//! 2. Live updates: while a feeder changes `--changes-per-s` node statuses a
//!    second (10,000 nodes each sending its status every 10 s), `--dashboards`
//!    live streams watching a page of 50 nodes each; the process's CPU over
//!    `--seconds` without and with the streams open (the difference is what
//!    the dashboards cost; the streams' reading runs in this process too, so
//!    it is counted against them).
//!
//! `cargo run --release -p fleet-tests --bin dashboard-bench [-- --nodes 10000
//!  --requests 200 --dashboards 10 --changes-per-s 1000 --seconds 20]`

use std::time::{Duration, Instant};

use fleet_controller::Controller;
use fleet_proto::v1::{AgentCounters, NodeState, NodeStatus, NodeVitals, PowerProfile};
use fleet_tests::web::Web;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn status(i: u64, tick: u64) -> NodeStatus {
    let profiles = [PowerProfile::Performance, PowerProfile::Balanced, PowerProfile::Saver, PowerProfile::Critical];
    #[allow(clippy::cast_precision_loss)]
    let f = ((i * 7 + tick) % 100) as f64;
    NodeStatus {
        node_id: format!("pi-{i:05}"),
        boot_id: "b".into(),
        state: if i.is_multiple_of(10) { NodeState::Offline } else { NodeState::Online } as i32,
        power_profile: profiles[usize::try_from(i % 4).unwrap_or(0)] as i32,
        agent_version: "0.1.0".into(),
        labels: [("site".to_owned(), format!("site-{}", i % 20))].into(),
        vitals: Some(NodeVitals {
            cpu_usage_pct: Some(f),
            soc_temp_c: Some(40.0 + f / 4.0),
            battery_soc_pct: Some(100.0 - f),
            on_battery: Some(i.is_multiple_of(3)),
            ..Default::default()
        }),
        counters: Some(AgentCounters { spool_bytes: i * 100, ..Default::default() }),
        ..Default::default()
    }
}

/// Process CPU seconds (user + system) so far.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the ")"; 100 ticks a second.
    #[allow(clippy::cast_precision_loss)]
    let ticks = (f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)) as f64;
    ticks / 100.0
}

async fn fleet_page(web: &Web, cookie: &str, query: &str, n: u64) -> anyhow::Result<(f64, f64, usize)> {
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = web.get(&format!("/api/fleet?{query}"), &[("cookie", cookie)]).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(r.status == 200, "{}", r.body);
        bytes = r.body.len();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99), bytes))
}

/// Opens a live stream and counts its events until `stop`.
async fn stream(web: Web, cookie: String, watch: String, stop: CancellationToken) -> anyhow::Result<usize> {
    let mut s = tokio::net::TcpStream::connect(web.addr).await?;
    let req = format!("GET /api/live?watch={watch} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n", web.addr);
    s.write_all(req.as_bytes()).await?;
    let (mut events, mut buf) = (0, vec![0u8; 65536]);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(events),
            n = s.read(&mut buf) => {
                let n = n?;
                anyhow::ensure!(n > 0, "the stream ended");
                events += String::from_utf8_lossy(&buf[..n]).matches("event: fleet").count();
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (nodes, requests, dashboards) = (arg("--nodes", 10_000), arg("--requests", 200), arg("--dashboards", 10));
    let (per_s, seconds) = (arg("--changes-per-s", 1000), arg("--seconds", 20));
    let dir = tempfile::tempdir()?;
    let mut cfg = fleet_tests::controller_config(dir.path(), "", "");
    cfg.security.api_rate_per_s = 100_000;
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    for i in 0..nodes {
        c.registry.update_status(status(i, 0));
    }
    let web = Web { addr: c.http_addr, ca_pem: None };
    let token = std::fs::read_to_string(c.api.token_file.as_ref().expect("auth on"))?;
    let body = serde_json::json!({ "token": token.trim() }).to_string();
    let login = web.send("POST", "/api/login", &[], Some(&body)).await?;
    let cookie = login.header("set-cookie").and_then(|s| s.split(';').next()).unwrap_or_default().to_owned();
    let files = fleet_controller::dashboard::assets::total_bytes();
    println!("nodes={nodes} page_files_bytes={files}");
    for (name, q) in
        [("by_id", "per_page=50"), ("cpu_desc_label", "per_page=50&sort=cpu&desc=true&label=site%3Dsite-3")]
    {
        fleet_page(&web, &cookie, q, 10).await?;
        let (p50, p99, bytes) = fleet_page(&web, &cookie, q, requests).await?;
        println!(
            "fleet_page={name} p50_ms={p50:.2} p99_ms={p99:.2} answer_bytes={bytes} first_page_bytes={}",
            bytes + files
        );
    }

    let feeder_stop = CancellationToken::new();
    let registry = c.registry.clone();
    let fs = feeder_stop.clone();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let (mut next, mut round) = (0u64, 0u64);
        while !fs.is_cancelled() {
            tick.tick().await;
            for _ in 0..per_s / 10 {
                registry.update_status(status(next, round));
                next = (next + 1) % nodes;
                round += u64::from(next == 0);
            }
        }
    });
    let measure = |what: &'static str| async move {
        let (t0, c0) = (Instant::now(), cpu_s());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let pct = (cpu_s() - c0) / t0.elapsed().as_secs_f64() * 100.0;
        println!("cpu_pct_of_one_core={pct:.2} ({what})");
        pct
    };
    let base = measure("feeder only").await;
    let streams_stop = CancellationToken::new();
    let mut streams = Vec::new();
    for d in 0..dashboards {
        let watch: Vec<String> = (0..50).map(|k| format!("pi-{:05}", (d * 50 + k) % nodes)).collect();
        streams.push(tokio::spawn(stream(web.clone(), cookie.clone(), watch.join(","), streams_stop.clone())));
    }
    let with = measure("feeder and the live streams").await;
    streams_stop.cancel();
    let mut events = Vec::new();
    for s in streams {
        events.push(s.await??);
    }
    #[allow(clippy::cast_precision_loss)]
    let per_stream_hz = events.iter().sum::<usize>() as f64 / events.len().max(1) as f64 / seconds as f64;
    println!(
        "dashboards={dashboards} changes_per_s={per_s} events_per_stream_per_s={per_stream_hz:.2} dashboards_cpu_pct_of_one_core={:.2}",
        with - base
    );
    feeder_stop.cancel();
    feeder.abort();
    stop.cancel();
    c.wait().await;
    Ok(())
}
