//! Every way `fleetctl` shows what the controller answered: tables and JSON,
//! in one place. Each function returns the text, so tests can read it.

use std::fmt::Write as _;

use fleet_proto::v1::{
    AuditRecord, BootstrapTokenInfo, GetUsageResponse, JobStatus, JobView, ModelVersion, Node, QueryTelemetryResponse,
};
use serde_json::Value;

pub use crate::api::json::{audit_json, desired_json, job_json, node_json, telemetry_json, usage_json, when, when_ms};
use crate::api::json::{bootstrap_state, site_of};
use crate::registry::state_word;
use crate::store::jobs::status_word as job_status;

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}{unit}"))
}

fn ago(ms: i64, now_ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let d = (now_ms - ms).max(0) / 1000;
    format!("{d}s ago")
}

/// The node table of `nodes list`, "seen" counted back from `now_ms`.
#[must_use]
pub fn node_table(nodes: &[Node], now_ms: i64) -> String {
    let mut out = format!(
        "{:<24} {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10}\n",
        "NODE", "STATE", "CPU", "MEM", "TEMP", "BATTERY", "SAMPLES", "SEEN"
    );
    for n in nodes {
        let v = n.status.as_ref().and_then(|s| s.vitals).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10}",
            n.node_id,
            state_word(n),
            opt(v.cpu_usage_pct, "%"),
            opt(v.mem_used_pct, "%"),
            opt(v.soc_temp_c, "C"),
            opt(v.battery_soc_pct, "%"),
            n.samples_stored,
            ago(n.last_seen_unix_ms, now_ms)
        );
    }
    out
}

/// One line of `nodes watch`: when, which node, its state.
#[must_use]
pub fn watch_line(n: &Node, now_ms: i64) -> String {
    format!("{} {:<24} {}", now_ms, n.node_id, state_word(n))
}

/// Bootstrap tokens with their state at `now_ms`.
#[must_use]
pub fn token_table(tokens: &[BootstrapTokenInfo], now_ms: i64) -> String {
    let mut out = format!("{:<14} {:<10} {:<22} {:<24} LABELS\n", "ID", "STATE", "EXPIRES", "USED BY");
    for t in tokens {
        let state = bootstrap_state(t, now_ms);
        let mut labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:<22} {:<24} {}",
            t.token_id,
            state,
            when(t.expires_unix_ms),
            t.used_by,
            labels.join(",")
        );
    }
    out
}

/// The audit log as a table.
#[must_use]
pub fn audit_table(records: &[AuditRecord]) -> String {
    let mut out = format!("{:<22} {:<20} {:<22} {:<24} RESULT\n", "AT", "ACTOR", "ACTION", "TARGET");
    for r in records {
        let _ =
            writeln!(out, "{:<22} {:<20} {:<22} {:<24} {}", when(r.at_unix_ms), r.actor, r.action, r.target, r.result);
    }
    out
}

/// A telemetry answer as a table.
#[must_use]
pub fn telemetry_table(r: &QueryTelemetryResponse) -> String {
    let mut out = format!("{:<24} {:>12} {:>12} {:>12} {:>8}\n", "TIME", "AVG", "MIN", "MAX", "COUNT");
    for p in &r.points {
        let _ = writeln!(
            out,
            "{:<24} {:>12.3} {:>12.3} {:>12.3} {:>8}",
            when_ms(p.time_unix_ms),
            p.avg,
            p.min,
            p.max,
            p.count
        );
    }
    out
}

fn ms(us: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display
    let v = us as f64 / 1000.0;
    format!("{v:.3} ms")
}

/// A job as text: its answer, where it ran and why, each step's time, and
/// its attempts when there were several or it failed.
#[must_use]
pub fn job_text(j: &JobView) -> String {
    let t = j.timings.unwrap_or_default();
    let mut out = format!("job {} ({}): {}\n", j.job_id, j.model, job_status(j.status));
    if !j.error.is_empty() {
        let _ = writeln!(out, "  error:     {}", j.error);
    }
    if j.status == JobStatus::Succeeded as i32 {
        if j.embedding.is_empty() {
            let _ = writeln!(out, "  answer:    {} (confidence {:.3})", j.label, j.confidence);
        } else {
            let head: Vec<String> = j.embedding.iter().take(4).map(|x| format!("{x:.4}")).collect();
            let _ = writeln!(out, "  answer:    embedding of {} dims [{}, ...]", j.embedding.len(), head.join(", "));
        }
        let _ = writeln!(out, "  ran on:    {}", site_of(j.site, &j.node_id));
        let _ = writeln!(out, "  why:       {}", j.reason);
        let _ = writeln!(
            out,
            "  steps:     route {}, queued {}, tokenize {}, inference {}, transport {} (node total {}); end to end {}",
            ms(t.route_us),
            ms(t.queued_us),
            ms(t.tokenize_us),
            ms(t.inference_us),
            ms(t.transport_us),
            ms(t.total_us),
            ms(t.end_to_end_us)
        );
    }
    if j.attempts.len() > 1 || j.status != JobStatus::Succeeded as i32 {
        out.push_str("  attempts:\n");
        for a in &j.attempts {
            let what = if a.error.is_empty() { a.label.clone() } else { a.error.clone() };
            let _ = writeln!(out, "    {} {} {}: {what}", a.attempt, site_of(a.site, &a.node_id), job_status(a.status));
            let _ = writeln!(out, "      why: {}", a.reason);
        }
    }
    out
}

/// Recent jobs as a table.
#[must_use]
pub fn job_table(jobs: &[JobView]) -> String {
    let mut out = format!("{:<36} {:<9} {:<10} {:<22} {:>12}\n", "JOB", "MODEL", "STATUS", "SITE", "END TO END");
    for j in jobs {
        let t = j.timings.unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<36} {:<9} {:<10} {:<22} {:>12}",
            j.job_id,
            j.model,
            job_status(j.status),
            site_of(j.site, &j.node_id),
            ms(t.end_to_end_us)
        );
    }
    out
}

/// Model versions as a table (`models list`).
#[must_use]
pub fn model_table(versions: &[ModelVersion]) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:<18} {:>12} {:>5} {:>9}  {}\n",
        "MODEL", "VERSION", "KIND", "BYTES", "FILES", "SELF-TEST", "PUSHED"
    );
    for v in versions {
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<18} {:>12} {:>5} {:>9}  {}",
            v.name,
            v.version,
            v.kind,
            v.total_bytes,
            v.files.len(),
            v.self_test_cases,
            v.pushed_at
        );
    }
    out
}

/// Model versions as JSON (`models list -o json`).
#[must_use]
pub fn models_json(versions: &[ModelVersion]) -> Value {
    let files = |v: &ModelVersion| -> Vec<Value> {
        v.files.iter().map(|f| serde_json::json!({"path": f.path, "sha256": f.sha256, "size": f.size})).collect()
    };
    Value::Array(
        versions
            .iter()
            .map(|v| {
                serde_json::json!({"name": v.name, "version": v.version, "kind": v.kind, "total_bytes": v.total_bytes,
                    "files": files(v), "self_test_cases": v.self_test_cases, "pushed_at": v.pushed_at})
            })
            .collect(),
    )
}

fn secs(us: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display
    let v = us as f64 / 1e6;
    format!("{v:.6} s")
}

/// What each API token used (`fleetctl usage`): its quotas, then its daily and hourly rows.
#[must_use]
pub fn usage_table(u: &GetUsageResponse) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:<26} {:>8} {:>10} {:>10}  RESETS\n",
        "TOKEN", "ROLE", "QUOTA", "LIMIT", "USED", "REMAINING"
    );
    for t in &u.tokens {
        let role = if t.revoked { "revoked" } else { t.role.as_str() };
        for (i, q) in t.quotas.iter().enumerate() {
            let (name, role) = if i == 0 { (t.token.as_str(), role) } else { ("", "") };
            let (limit, left) =
                if q.limit == 0 { ("-".into(), "-".into()) } else { (q.limit.to_string(), format!("{}", q.remaining)) };
            let _ = writeln!(
                out,
                "{name:<20} {role:<9} {:<26} {limit:>8} {:>10} {left:>10}  {}",
                q.quota,
                format!("{}", q.used),
                when(q.resets_unix_ms)
            );
        }
    }
    let _ = write!(
        out,
        "\n{:<20} {:<6} {:<22} {:>6} {:>15} {:>15} {:>8} {:>10}\n",
        "TOKEN", "PERIOD", "START", "JOBS", "NODE INFERENCE", "CLOUD INFERENCE", "QUERIES", "ROWS"
    );
    for t in &u.tokens {
        let rows = t.days.iter().map(|p| ("day", p)).chain(t.hours.iter().map(|p| ("hour", p)));
        for (kind, p) in rows {
            let _ = writeln!(
                out,
                "{:<20} {kind:<6} {:<22} {:>6} {:>15} {:>15} {:>8} {:>10}",
                t.token,
                when(p.start_unix_ms),
                p.jobs,
                secs(p.node_inference_us),
                secs(p.cloud_inference_us),
                p.queries,
                p.rows
            );
        }
    }
    out
}

/// JSON as `fleetctl` prints it.
///
/// # Errors
/// When the value cannot be written (it always can).
pub fn pretty(v: &Value) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::{JobAttempt, NodeState, NodeStatus, NodeVitals, Site};

    #[test]
    fn node_table_shows_state_vitals_and_age() {
        let n = Node {
            node_id: "pi-1".into(),
            status: Some(NodeStatus {
                state: NodeState::Online as i32,
                vitals: Some(NodeVitals { cpu_usage_pct: Some(12.34), soc_temp_c: Some(51.0), ..Default::default() }),
                ..Default::default()
            }),
            last_seen_unix_ms: 10_000,
            samples_stored: 42,
            ..Default::default()
        };
        let t = node_table(&[n, Node { node_id: "pi-2".into(), ..Default::default() }], 15_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("NODE") && lines[0].contains("BATTERY"), "{t}");
        for want in ["pi-1", "online", "12.3%", "51.0C", "42", "5s ago"] {
            assert!(lines[1].contains(want), "{want} missing in {:?}", lines[1]);
        }
        assert!(lines[2].contains("unknown") && lines[2].contains("never"), "{t}");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(when(0), "-");
        assert_eq!(when(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn telemetry_points_have_rfc3339_times() {
        use fleet_proto::v1::TelemetryPoint;
        let r = QueryTelemetryResponse {
            node_id: "pi-1".into(),
            metric: "cpu.usage_pct".into(),
            points: vec![TelemetryPoint { time_unix_ms: 1_700_000_000_250, avg: 1.0, count: 2, ..Default::default() }],
            ..Default::default()
        };
        let t = telemetry_table(&r);
        assert!(t.lines().nth(1).is_some_and(|l| l.starts_with("2023-11-14T22:13:20.250Z")), "{t}");
        let j = telemetry_json(&r);
        assert_eq!(j["points"][0]["time"], "2023-11-14T22:13:20.250Z");
        assert_eq!(j["points"][0]["time_unix_ms"], 1_700_000_000_250_i64);
    }

    #[test]
    fn a_failed_job_lists_its_attempts_and_why() {
        let j = JobView {
            job_id: "j1".into(),
            model: "severity".into(),
            status: JobStatus::Failed as i32,
            error: "no site".into(),
            attempts: vec![JobAttempt {
                attempt: 1,
                site: Site::Edge as i32,
                node_id: "pi-1".into(),
                status: JobStatus::Refused as i32,
                error: "saver profile".into(),
                reason: "best score".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = job_text(&j);
        assert!(t.starts_with("job j1 (severity): failed"), "{t}");
        assert!(t.contains("error:     no site") && t.contains("1 edge node pi-1 refused: saver profile"), "{t}");
        assert!(t.contains("why: best score"), "{t}");
        assert_eq!(job_json(&j)["attempts"][0]["status"], "refused");
    }
}
