//! The HTTP listener: Prometheus `/metrics` and `/healthz` (later the dashboard).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// `[http]`: where `/metrics` and `/healthz` are served.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Socket address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    store: Store,
}

/// The HTTP server on its bound listener.
pub struct Http {
    listener: TcpListener,
    app: Router,
}

impl Http {
    /// Serves `metrics` and the store's health on `listener`.
    #[must_use]
    pub fn new(listener: TcpListener, metrics: Arc<Metrics>, store: Store) -> Self {
        Self { listener, app: router(metrics, store) }
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let r = axum::serve(self.listener, self.app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server stopped.");
        }
    }
}

/// The router of the HTTP listener.
fn router(metrics: Arc<Metrics>, store: Store) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(HttpState { metrics, store })
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_owned()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database: no answer within 2s\n".to_owned()),
    }
}
