//! The HTTP listener: Prometheus `/metrics`, `/healthz` and the operator
//! dashboard at `/` (`crate::dashboard`), over TLS with the controller's
//! certificate when gRPC has one (`tls`), else plain HTTP, on which the
//! dashboard logs no one in unless the address is loopback.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use crate::dashboard::{self, Dashboard, Transport};
use crate::metrics::Metrics;
use crate::store::Store;

/// `[http]`: where `/metrics`, `/healthz` and the dashboard are served.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Socket address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// `auto`: HTTPS with the controller's certificate when `security.tls` is
    /// on (default); `off`: plain HTTP (the dashboard then only on loopback).
    pub tls: HttpTls,
}

/// Whether the HTTP listener serves TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTls {
    #[default]
    Auto,
    Off,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), tls: HttpTls::Auto }
    }
}

/// How the dashboard is reached on `addr`, with TLS or without.
#[must_use]
pub fn transport(addr: SocketAddr, tls: bool) -> Transport {
    if tls {
        Transport::Tls
    } else if addr.ip().is_loopback() {
        Transport::LoopbackPlain
    } else {
        Transport::Refused(format!(
            "the dashboard is served as plain HTTP on {addr}, which is not loopback: session cookies would cross \
             the network in the clear. Turn TLS on (security.tls, with http.tls = \"auto\") or listen on 127.0.0.1"
        ))
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
    tls: Option<Arc<ServerConfig>>,
    app: Router,
}

impl Http {
    /// Serves `metrics`, the store's health and `dashboard` on `listener`,
    /// over TLS with `tls`.
    #[must_use]
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        metrics: Arc<Metrics>,
        store: Store,
        dashboard: Arc<Dashboard>,
    ) -> Self {
        let app = router(metrics, store, dashboard, tls.is_some());
        Self { listener, tls, app }
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let stop = shutdown.clone().cancelled_owned();
        let r = match self.tls {
            Some(cfg) => match tls::TlsListener::start(self.listener, cfg, shutdown) {
                Ok(l) => axum::serve(l, self.app).with_graceful_shutdown(stop).await,
                Err(e) => Err(e),
            },
            None => axum::serve(self.listener, self.app).with_graceful_shutdown(stop).await,
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server stopped.");
        }
    }
}

/// The router of the HTTP listener.
fn router(metrics: Arc<Metrics>, store: Store, dashboard: Arc<Dashboard>, tls: bool) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(HttpState { metrics, store })
        .merge(dashboard::routes(dashboard))
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| harden(req, next, tls)))
}

async fn harden(req: Request, next: Next, tls: bool) -> Response {
    let mut resp = next.run(req).await;
    dashboard::harden(tls, resp.headers_mut());
    resp
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_serves_the_dashboard_on_loopback_only() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(transport(at("0.0.0.0:8080"), true), Transport::Tls);
        assert_eq!(transport(at("127.0.0.1:8080"), false), Transport::LoopbackPlain);
        assert_eq!(transport(at("[::1]:8080"), false), Transport::LoopbackPlain);
        let Transport::Refused(why) = transport(at("10.0.0.5:8080"), false) else { panic!("served") };
        assert!(why.contains("security.tls") && why.contains("127.0.0.1"), "{why}");
    }
}
