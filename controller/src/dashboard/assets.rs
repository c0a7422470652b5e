//! The dashboard's page and its files, inside the binary (nothing comes from
//! the internet: fleets run air-gapped). Hand-written HTML, CSS and
//! JavaScript modules in `assets/`; the charts are SVG drawn by `chart.js`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_str!(concat!("assets/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the page loads.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("chart.js", JS),
    asset!("fleet.js", JS),
    asset!("node.js", JS),
    asset!("jobs.js", JS),
    asset!("security.js", JS),
];

/// The routes of the page and its files.
pub fn routes() -> Router {
    Router::new().route("/", get(index)).route("/assets/{file}", get(file))
}

fn serve(a: &Asset) -> Response {
    let mut r = a.body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    // Always asked again: a new controller version's files are seen at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn index() -> Response {
    ASSETS.iter().find(|a| a.name == "index.html").map_or_else(|| StatusCode::NOT_FOUND.into_response(), serve)
}

async fn file(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name && a.name != "index.html") {
        Some(a) => serve(a),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

/// Bytes of every file the page loads (the first page's weight, BENCHMARKS.md).
#[must_use]
pub fn total_bytes() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}
