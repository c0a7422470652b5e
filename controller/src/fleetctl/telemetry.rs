//! `fleetctl telemetry`: one metric of one node, raw or in buckets.

use std::time::Duration;

use clap::Args;
use fleet_net::client::FleetClient;
use fleet_proto::metrics as metric;
use fleet_proto::v1::QueryTelemetryRequest;

use super::args::Output;
use super::error::CtlError;
use super::output::{pretty, telemetry_json, telemetry_table};

#[derive(Args)]
pub struct TelemetryArgs {
    /// Node id.
    node: String,
    /// Metric name, e.g. cpu.usage_pct (`cpu` is short for it).
    #[arg(long, default_value = "cpu.usage_pct")]
    metric: String,
    /// How far back, e.g. 5m, 2h, 1d.
    #[arg(long, default_value = "5m")]
    since: humantime::Duration,
    /// Bucket width, e.g. 1m; default raw samples.
    #[arg(long)]
    bucket: Option<humantime::Duration>,
    /// Points at most.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

/// The full name of a metric's short name (`cpu`, `mem`, `disk`, `temp`, `battery`).
#[must_use]
pub fn metric_alias(m: &str) -> String {
    match m {
        "cpu" => metric::CPU_USAGE_PCT.into(),
        "mem" | "memory" => metric::MEM_USED_PCT.into(),
        "disk" => metric::DISK_USED_PCT.into(),
        "temp" | "temperature" => metric::SOC_TEMP_C.into(),
        "battery" => metric::BATTERY_SOC_PCT.into(),
        other => other.into(),
    }
}

/// Prints the points.
///
/// # Errors
/// The controller's error, or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, a: TelemetryArgs, out: Output) -> Result<(), CtlError> {
    let now = fleet_proto::now_unix_ms();
    let since_ms = i64::try_from(Duration::from(a.since).as_millis()).unwrap_or(i64::MAX);
    let bucket_s = a.bucket.map_or(0, |b| u32::try_from(Duration::from(b).as_secs()).unwrap_or(u32::MAX));
    let req = QueryTelemetryRequest {
        node_id: a.node,
        metric: metric_alias(&a.metric),
        start_unix_ms: (now - since_ms).max(0),
        end_unix_ms: now + 1,
        bucket_s,
        limit: a.limit,
    };
    let r = client.query_telemetry(req).await?.into_inner();
    if out == Output::Json {
        println!("{}", pretty(&telemetry_json(&r))?);
    } else {
        print!("{}", telemetry_table(&r));
        if r.truncated {
            eprintln!("(truncated at {} points; raise --limit or use --bucket)", a.limit);
        }
    }
    Ok(())
}
