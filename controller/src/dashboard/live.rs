//! Live updates without reload: `GET /api/live?watch=id,id` is a stream of
//! server-sent events fed by the live view's changes. At most once a second,
//! and only when something changed, it sends the fleet's counts and the rows
//! of the watched nodes that changed (the page's rows, or one node's).
//! Streams are bounded in number, end with the controller, and end when
//! their API token is revoked.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::Dashboard;
use super::fleet::{Counts, row};
use super::reply::ApiError;

/// Live streams open at once at most; one more is refused (503).
pub const MAX_STREAMS: usize = 1000;
/// Nodes one stream watches at most (a page of the table holds at most 500).
const MAX_WATCH: usize = 500;
/// How often a stream may send.
const TICK: Duration = Duration::from_secs(1);
/// How often a stream checks its API token is still valid.
const RECHECK: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Node ids, comma-separated.
    #[serde(default)]
    watch: String,
}

/// Frees a stream's place when it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Stream = Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

/// `GET /api/live?watch=`.
pub async fn stream(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Result<Stream, ApiError> {
    d.reader(&headers, "WatchNodes").await?;
    if d.streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        d.streams.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} live streams are open, the most this controller serves: close some dashboards"),
        ));
    }
    let slot = Slot(d.streams.clone());
    let watch: HashSet<String> =
        q.watch.split(',').map(str::trim).filter(|s| !s.is_empty()).take(MAX_WATCH).map(str::to_owned).collect();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(feed(d, headers, watch, tx, slot));
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

async fn feed(
    d: Arc<Dashboard>,
    headers: HeaderMap,
    watch: HashSet<String>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    _slot: Slot,
) {
    let registry = d.api.registry.clone();
    let mut changes = registry.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    let (mut any, mut changed) = (true, HashSet::new());
    loop {
        tokio::select! {
            () = d.api.shutdown.cancelled() => return,
            () = tx.closed() => return,
            r = changes.recv() => match r {
                Ok(n) => {
                    any = true;
                    if watch.contains(&n.node_id) {
                        changed.insert(n.node_id);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    any = true;
                    changed.extend(watch.iter().cloned());
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = recheck.tick() => {
                if d.reader(&headers, "WatchNodes").await.is_err() {
                    return;
                }
            }
            _ = tick.tick(), if any => {
                any = false;
                let (counts, rows) = registry.read(|nodes| {
                    let rows: Vec<_> = changed.iter().filter_map(|id: &String| nodes.get(id)).map(row).collect();
                    (Counts::of(nodes.values()), rows)
                });
                changed.clear();
                let data = json!({"counts": counts, "rows": rows}).to_string();
                if tx.send(Ok(Event::default().event("fleet").data(data))).await.is_err() {
                    return;
                }
            }
        }
    }
}
