//! What a person at the Pi sees with `fleet-agent status`: the running agent
//! answers on a Unix socket in its data directory (`agent.sock`, mode 0600)
//! with one `key=value` line per fact (enrollment, broker connection, last
//! ack, spool backlog); `status` formats them. Without a running agent,
//! `status` says so and shows what the disk tells (enrollment, spool size).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The socket's file name in `data_dir`.
pub const SOCKET: &str = "agent.sock";

/// The broker connection as the uplink last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Link {
    #[default]
    Connecting,
    Connected,
    /// The broker refused the login (not enrolled, or wrong credentials).
    Refused,
    /// The broker cannot be reached.
    Unreachable,
}

impl Link {
    fn word(self) -> &'static str {
        match self {
            Link::Connecting => "connecting",
            Link::Connected => "connected",
            Link::Refused => "refused",
            Link::Unreachable => "unreachable",
        }
    }
}

/// What changes while the agent runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    pub link: Link,
    /// When the controller last acknowledged a batch (0: never in this run).
    pub last_ack_unix_ms: i64,
    pub backlog_batches: u64,
    pub spool_bytes: u64,
    pub samples_taken: u64,
    pub samples_acked: u64,
}

/// What is fixed for the run.
#[derive(Debug, Clone, Default)]
pub struct Fixed {
    pub node_id: String,
    pub boot_id: String,
    pub enrolled: bool,
    pub uplink: String,
    pub broker: String,
    pub started_unix_ms: i64,
}

/// Serves the status on `data_dir/agent.sock` until the agent stops; the
/// agent keeps the returned sender up to date.
///
/// # Errors
/// When the socket cannot be made (the agent runs on without it).
pub fn serve(data_dir: &Path, fixed: Fixed) -> std::io::Result<watch::Sender<Live>> {
    let path = data_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (tx, rx) = watch::channel(Live::default());
    tokio::spawn(async move {
        // Ends when the agent drops the sender.
        let mut closed = rx.clone();
        loop {
            tokio::select! {
                changed = closed.changed() => if changed.is_err() { break },
                conn = listener.accept() => {
                    let Ok((mut stream, _)) = conn else { continue };
                    let text = render(&fixed, &rx.borrow());
                    // A reader that does not read in time gets nothing; the agent never waits on it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(text.as_bytes())).await;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(tx)
}

fn render(f: &Fixed, l: &Live) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "node_id={}\nboot_id={}\nenrolled={}\nuplink={}\nbroker={}\nstarted_unix_ms={}\nlink={}\nlast_ack_unix_ms={}\n\
         backlog_batches={}\nspool_bytes={}\nsamples_taken={}\nsamples_acked={}\n",
        f.node_id,
        f.boot_id,
        f.enrolled,
        f.uplink,
        f.broker,
        f.started_unix_ms,
        l.link.word(),
        l.last_ack_unix_ms,
        l.backlog_batches,
        l.spool_bytes,
        l.samples_taken,
        l.samples_acked
    );
    s
}

/// What the running agent in `data_dir` answers, as `key=value` lines.
///
/// # Errors
/// When no agent answers (not running, or not readable by this user).
pub async fn query(data_dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut stream = tokio::net::UnixStream::connect(data_dir.join(SOCKET)).await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the agent did not answer in 5 s"))??;
    Ok(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

/// What `fleet-agent status` prints for the agent whose data is in
/// `data_dir`, and whether that agent runs.
pub async fn status_text(data_dir: &Path) -> (String, bool) {
    let now = fleet_proto::now_unix_ms();
    let mut out = String::new();
    let enrollment = match crate::enroll::load(data_dir) {
        Ok(Some(e)) => {
            format!("enrolled as {} (overlay address {}/{})", e.node_id, e.overlay_address, e.overlay_prefix_len)
        }
        Ok(None) => "NOT enrolled: run `fleet-agent enroll --controller https://CONTROLLER:50051 --token-file FILE` \
                     (a token from `fleetctl tokens create`)"
            .into(),
        Err(e) => format!("unreadable: {e}"),
    };
    let _ = writeln!(out, "{:<11} {enrollment}", "enrollment");
    let facts = match query(data_dir).await {
        Ok(f) => f,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "cannot read its status socket: run as the agent's user or root"
                }
                _ => "not running (no answer on its status socket)",
            };
            let _ = writeln!(out, "{:<11} {why}; data_dir {}", "agent", data_dir.display());
            let _ = writeln!(out, "{:<11} {} bytes on disk", "spool", spool_bytes_on_disk(data_dir));
            return (out, false);
        }
    };
    let get = |k: &str| facts.iter().find(|(a, _)| a == k).map_or("", |(_, v)| v.as_str());
    let num = |k: &str| get(k).parse::<i64>().unwrap_or(0);
    let _ = writeln!(
        out,
        "{:<11} running as {}, boot {}, since {}",
        "agent",
        get("node_id"),
        get("boot_id"),
        ago(num("started_unix_ms"), now)
    );
    let link = match get("link") {
        "refused" => "REFUSED: the broker refused this node's login (not enrolled, or wrong credentials)",
        "unreachable" => "UNREACHABLE: check mqtt.url, the network and the WireGuard tunnel",
        other => other,
    };
    let _ = writeln!(out, "{:<11} {} {} ({link})", "broker", get("uplink"), get("broker"));
    let _ = writeln!(out, "{:<11} {}", "last ack", ago(num("last_ack_unix_ms"), now));
    let _ = writeln!(
        out,
        "{:<11} {} batches unacknowledged, {} bytes on disk",
        "spool",
        get("backlog_batches"),
        get("spool_bytes")
    );
    let _ = writeln!(
        out,
        "{:<11} {} taken, {} acknowledged in this run",
        "samples",
        get("samples_taken"),
        get("samples_acked")
    );
    (out, true)
}

/// Bytes of the spool's segments on disk (read without opening the spool).
#[must_use]
pub fn spool_bytes_on_disk(data_dir: &Path) -> u64 {
    let dir: PathBuf = data_dir.join("spool/segments");
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// An RFC 3339 time and how long ago, or "never".
#[must_use]
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs()));
    let secs = (now_ms - ms).max(0) / 1000;
    format!("{at} ({} ago)", humantime::format_duration(Duration::from_secs(secs.unsigned_abs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_answers_what_the_agent_last_set() {
        let dir = tempfile::tempdir().unwrap();
        let fixed =
            Fixed { node_id: "pi-1".into(), enrolled: true, broker: "mqtt://c:1883".into(), ..Fixed::default() };
        let tx = serve(dir.path(), fixed).unwrap();
        tx.send_replace(Live { link: Link::Refused, backlog_batches: 7, ..Live::default() });
        let got = query(dir.path()).await.unwrap();
        let get = |k: &str| got.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("node_id"), Some("pi-1"));
        assert_eq!(get("link"), Some("refused"));
        assert_eq!(get("backlog_batches"), Some("7"));
        drop(tx);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(query(dir.path()).await.is_err(), "gone with the agent");
    }

    #[test]
    fn ago_is_rfc3339_and_relative() {
        assert_eq!(ago(0, 5), "never");
        assert_eq!(ago(1_700_000_000_000, 1_700_000_065_000), "2023-11-14T22:13:20Z (1m 5s ago)");
    }
}
