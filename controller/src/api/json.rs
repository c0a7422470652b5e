//! The JSON form of the API's answers, in one place: `fleetctl -o json`
//! prints it and the dashboard serves it. Times are Unix milliseconds beside
//! RFC 3339 text where a person reads them.

use std::time::Duration;

use fleet_proto::v1::{
    AuditRecord, BootstrapTokenInfo, DesiredStateView, Event, EventSeverity, GetUsageResponse, JobTimings, JobView,
    ModelReport, ModelUpdateState, Node, QueryTelemetryResponse, Site, UsagePeriod,
};
use serde_json::{Value, json};

use crate::registry::{profile_word, state_word};
use crate::store::jobs::status_word as job_status;

/// An RFC 3339 time (seconds), or "-" for none.
#[must_use]
pub fn when(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        .to_string()
}

/// An RFC 3339 time with milliseconds (a sample's time), UTC.
#[must_use]
pub fn when_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        .to_string()
}

/// One node as JSON.
#[must_use]
pub fn node_json(n: &Node) -> Value {
    let s = n.status.clone().unwrap_or_default();
    let v = s.vitals.unwrap_or_default();
    let c = s.counters.unwrap_or_default();
    json!({
        "node_id": n.node_id,
        "state": state_word(n),
        "power_profile": profile_word(n),
        "boot_id": s.boot_id,
        "hostname": s.hostname,
        "agent_version": s.agent_version,
        "last_seen_unix_ms": n.last_seen_unix_ms,
        "samples_stored": n.samples_stored,
        "labels": s.labels,
        "vitals": {
            "cpu_usage_pct": v.cpu_usage_pct, "mem_used_pct": v.mem_used_pct, "soc_temp_c": v.soc_temp_c,
            "battery_soc_pct": v.battery_soc_pct, "on_battery": v.on_battery, "input_power_w": v.input_power_w,
        },
        "counters": {
            "samples_taken": c.samples_taken, "batches_published": c.batches_published,
            "publish_failures": c.publish_failures, "batches_dropped": c.batches_dropped,
            "batches_unacked": c.batches_unacked, "samples_acked": c.samples_acked,
            "controller_messages_refused": c.controller_messages_refused,
            "controller_messages_refused_by_reason": c.controller_messages_refused_by_reason,
        },
    })
}

/// The audit log as JSON.
#[must_use]
pub fn audit_json(records: &[AuditRecord]) -> Value {
    records
        .iter()
        .map(|r| json!({"at_unix_ms": r.at_unix_ms, "actor": r.actor, "action": r.action, "target": r.target, "result": r.result}))
        .collect()
}

/// A telemetry answer as JSON.
#[must_use]
pub fn telemetry_json(r: &QueryTelemetryResponse) -> Value {
    let pts: Vec<_> = r
        .points
        .iter()
        .map(|p| json!({"time": when_ms(p.time_unix_ms), "time_unix_ms": p.time_unix_ms, "avg": p.avg, "min": p.min, "max": p.max, "last": p.last, "count": p.count}))
        .collect();
    json!({"node_id": r.node_id, "metric": r.metric, "bucket_s": r.bucket_s, "truncated": r.truncated, "points": pts})
}

/// A node's desired state beside what it reported, as JSON.
#[must_use]
pub fn desired_json(v: &DesiredStateView) -> Value {
    let d = v.desired.clone().unwrap_or_default();
    let r = v.reported.clone().unwrap_or_default();
    json!({
        "node_id": d.node_id,
        "version": d.version,
        "telemetry_interval_ms": d.telemetry_interval_ms,
        "labels": d.labels,
        "models": d.models,
        "power_policy_toml": d.power_policy_toml,
        "model_versions": d.model_versions.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "health_window_ms": d.health_window_ms,
        "reported": {
            "applied_version": r.applied_version,
            "confirmed_version": r.confirmed_version,
            "rejected_version": r.rejected_version,
            "rejected_reason": r.rejected_reason,
            "time_unix_ms": r.time_unix_ms,
            "models": r.models.iter().map(model_report_json).collect::<Vec<_>>(),
        },
    })
}

/// A node's report on one model update.
#[must_use]
pub fn model_report_json(m: &ModelReport) -> Value {
    let state = ModelUpdateState::try_from(m.state).unwrap_or_default().as_str_name();
    json!({
        "name": m.name, "version": m.version, "wanted": m.wanted,
        "state": state.trim_start_matches("MODEL_UPDATE_").to_lowercase(), "reason": m.reason,
        "bytes_received": m.bytes_received, "changed_unix_ms": m.changed_unix_ms,
    })
}

pub fn site_of(site: i32, node: &str) -> String {
    match Site::try_from(site).unwrap_or_default() {
        Site::Edge => format!("edge node {node}"),
        Site::Cloud => "cloud tier".into(),
        Site::Unspecified => "-".into(),
    }
}

fn timings_json(t: &JobTimings) -> Value {
    json!({
        "route_us": t.route_us, "queued_us": t.queued_us, "tokenize_us": t.tokenize_us,
        "inference_us": t.inference_us, "node_total_us": t.total_us, "transport_us": t.transport_us,
        "end_to_end_us": t.end_to_end_us,
    })
}

/// A job with every attempt, as JSON.
#[must_use]
pub fn job_json(j: &JobView) -> Value {
    let attempts: Vec<_> = j
        .attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.attempt, "site": site_of(a.site, &a.node_id), "node_id": a.node_id,
                "status": job_status(a.status), "error": a.error, "reason": a.reason, "label": a.label,
                "confidence": a.confidence, "timings": timings_json(&a.timings.unwrap_or_default()),
            })
        })
        .collect();
    json!({
        "job_id": j.job_id, "model": j.model, "status": job_status(j.status), "error": j.error,
        "site": site_of(j.site, &j.node_id), "node_id": j.node_id, "reason": j.reason,
        "label": j.label, "confidence": j.confidence, "embedding": j.embedding,
        "submitted_unix_ms": j.submitted_unix_ms, "finished_unix_ms": j.finished_unix_ms, "submitted_by": j.submitted_by,
        "timings": timings_json(&j.timings.unwrap_or_default()), "attempts": attempts,
    })
}

fn period_json(p: &UsagePeriod) -> Value {
    json!({
        "start": when(p.start_unix_ms), "start_unix_ms": p.start_unix_ms, "jobs": p.jobs,
        "node_inference_us": p.node_inference_us, "cloud_inference_us": p.cloud_inference_us,
        "queries": p.queries, "rows": p.rows,
    })
}

/// What each API token used, as JSON (a limit of 0 is unlimited).
#[must_use]
pub fn usage_json(u: &GetUsageResponse) -> Value {
    let tokens: Vec<Value> = u
        .tokens
        .iter()
        .map(|t| {
            let quotas: Vec<Value> = t
                .quotas
                .iter()
                .map(|q| {
                    json!({
                        "quota": q.quota, "limit": q.limit, "unlimited": q.limit == 0, "used": q.used,
                        "remaining": q.remaining, "resets": when(q.resets_unix_ms), "resets_unix_ms": q.resets_unix_ms,
                    })
                })
                .collect();
            json!({
                "token": t.token, "role": t.role, "revoked": t.revoked, "quotas": quotas,
                "days": t.days.iter().map(period_json).collect::<Vec<_>>(),
                "hours": t.hours.iter().map(period_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"now": when(u.now_unix_ms), "now_unix_ms": u.now_unix_ms, "tokens": tokens})
}

/// A node's event as JSON.
#[must_use]
pub fn event_json(e: &Event) -> Value {
    let severity = match EventSeverity::try_from(e.severity).unwrap_or_default() {
        EventSeverity::Critical => "critical",
        EventSeverity::Warning => "warning",
        _ => "info",
    };
    json!({
        "time": when_ms(e.time_unix_ms), "time_unix_ms": e.time_unix_ms, "kind": e.kind, "severity": severity,
        "message": e.message, "attributes": e.attributes,
    })
}

/// Bootstrap tokens as JSON, with their state at `now_ms` (no secrets: only their ids).
#[must_use]
pub fn bootstrap_tokens_json(tokens: &[BootstrapTokenInfo], now_ms: i64) -> Value {
    tokens
        .iter()
        .map(|t| {
            json!({
                "token_id": t.token_id, "state": bootstrap_state(t, now_ms), "expires": when(t.expires_unix_ms),
                "used_by": t.used_by, "labels": t.labels,
            })
        })
        .collect()
}

/// `valid`, `used`, `expired` or `revoked`.
#[must_use]
pub fn bootstrap_state(t: &BootstrapTokenInfo, now_ms: i64) -> &'static str {
    if t.revoked_unix_ms != 0 {
        "revoked"
    } else if t.used_unix_ms != 0 {
        "used"
    } else if t.expires_unix_ms <= now_ms {
        "expired"
    } else {
        "valid"
    }
}
