//! The Grafana dashboards of `deploy/grafana` as a test reads them: every
//! query of every panel and template variable, checked against the
//! provisioned data sources, with Grafana's variables and SQL macros expanded
//! the way Grafana expands them (template variables first, then macros).
//! Anything else that starts with `$` is refused, so a dashboard cannot use
//! what this test does not run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// The data source uids the dashboards may name (provisioning/datasources).
pub const PROMETHEUS_UID: &str = "spark-fleet-prometheus";
pub const DB_UID: &str = "spark-fleet-db";

/// Which data source a query goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Prometheus,
    Sql,
}

/// One query of a dashboard.
#[derive(Debug, Clone)]
pub struct Query {
    /// `dashboard / panel (refId)`, or `dashboard / variable $name`.
    pub place: String,
    pub source: Source,
    pub text: String,
    /// A template variable's query (its first answer is the variable's value).
    pub variable: Option<String>,
}

/// What Grafana would put in for its own variables.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
    /// `$__interval`, seconds.
    pub interval_s: u64,
    /// `$__rate_interval`, seconds.
    pub rate_interval_s: u64,
}

/// `deploy/grafana` in this repository.
#[must_use]
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana")
}

/// Every dashboard file's name and JSON.
///
/// # Errors
/// Unreadable or malformed files.
pub fn dashboards() -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir().join("dashboards"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let doc: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
            out.push((path.file_stem().unwrap_or_default().to_string_lossy().into_owned(), doc));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn source_of(ds: &Value, place: &str) -> anyhow::Result<Source> {
    match (ds["type"].as_str(), ds["uid"].as_str()) {
        (Some("prometheus"), Some(PROMETHEUS_UID)) => Ok(Source::Prometheus),
        (Some("grafana-postgresql-datasource"), Some(DB_UID)) => Ok(Source::Sql),
        _ => bail!("{place}: data source {ds} is none of the provisioned ones ({PROMETHEUS_UID}, {DB_UID})"),
    }
}

/// Every query of `dashboards`, after checking what Grafana would refuse or
/// show wrongly: unique dashboard uids, unique panel ids, panels inside the
/// 24-column grid, data sources that the provisioning file defines.
///
/// # Errors
/// The first thing wrong, with where it is.
pub fn queries(dashboards: &[(String, Value)]) -> anyhow::Result<Vec<Query>> {
    let provisioned = std::fs::read_to_string(dir().join("provisioning/datasources/spark-fleet.yml"))?;
    for uid in [PROMETHEUS_UID, DB_UID] {
        if !provisioned.contains(&format!("uid: {uid}")) {
            bail!("provisioning/datasources/spark-fleet.yml does not define the data source {uid}");
        }
    }
    let mut uids = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (name, doc) in dashboards {
        let uid = doc["uid"].as_str().with_context(|| format!("dashboard {name} has no uid"))?;
        if !uids.insert(uid.to_owned()) {
            bail!("dashboard uid {uid} is used twice");
        }
        for var in doc["templating"]["list"].as_array().into_iter().flatten() {
            let var_name = var["name"].as_str().unwrap_or_default();
            let place = format!("{name} / variable ${var_name}");
            let text = var["query"].as_str().with_context(|| format!("{place}: no query"))?;
            out.push(Query {
                source: source_of(&var["datasource"], &place)?,
                place,
                text: text.to_owned(),
                variable: Some(var_name.to_owned()),
            });
        }
        let mut ids = std::collections::BTreeSet::new();
        let panels = doc["panels"].as_array().with_context(|| format!("dashboard {name} has no panels"))?;
        let nested = panels.iter().flat_map(|p| p["panels"].as_array().into_iter().flatten());
        for panel in panels.iter().chain(nested).filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().unwrap_or_default();
            let id = panel["id"].as_u64().with_context(|| format!("{name} / {title}: no id"))?;
            let g = &panel["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
            if !ids.insert(id) || x + w > 24 || g["h"].as_u64().is_none_or(|h| h == 0) {
                bail!("{name} / {title}: a repeated id or a place outside the 24-column grid ({g})");
            }
            let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
            for t in targets.with_context(|| format!("{name} / {title}: no queries"))? {
                let place = format!("{name} / {title} ({})", t["refId"].as_str().unwrap_or("?"));
                let source =
                    source_of(if t["datasource"].is_null() { &panel["datasource"] } else { &t["datasource"] }, &place)?;
                let key = if source == Source::Prometheus { "expr" } else { "rawSql" };
                let text = t[key].as_str().with_context(|| format!("{place}: no {key}"))?;
                out.push(Query { place, source, text: text.to_owned(), variable: None });
            }
        }
    }
    Ok(out)
}

/// `10s`, `1m`, `'5m'` in seconds.
fn seconds(interval: &str) -> anyhow::Result<u64> {
    let s = interval.trim().trim_matches('\'');
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().with_context(|| format!("interval {interval:?}"))?;
    Ok(n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("interval {interval:?}: use s, m, h or d"),
    })
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Replaces each `name(args)` macro of `text` with `f(args)`.
fn macro_calls(text: &str, name: &str, f: impl Fn(&[&str]) -> anyhow::Result<String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&format!("{name}(")) {
        out.push_str(&rest[..at]);
        let args_at = at + name.len() + 1;
        let close = rest[args_at..].find(')').with_context(|| format!("{name} without its closing parenthesis"))?;
        let args: Vec<&str> = rest[args_at..args_at + close].split(',').map(str::trim).collect();
        out.push_str(&f(&args)?);
        rest = &rest[args_at + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` with the template variables `vars`, Grafana's global variables and
/// the SQL macros `$__timeFilter` and `$__timeGroupAlias` put in.
///
/// # Errors
/// A `$` left over: a variable or macro this test does not know.
pub fn expand(text: &str, vars: &[(&str, &str)], r: Range) -> anyhow::Result<String> {
    let mut s = text.to_owned();
    for (name, value) in vars {
        s = s.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    let globals = [
        ("$__rate_interval", format!("{}s", r.rate_interval_s)),
        ("$__interval_ms", (r.interval_s * 1000).to_string()),
        ("$__interval", format!("{}s", r.interval_s)),
        ("$__range", format!("{}s", (r.to_ms - r.from_ms) / 1000)),
        ("$__from", r.from_ms.to_string()),
        ("$__to", r.to_ms.to_string()),
    ];
    // Macros take their arguments after the variables are in.
    s = macro_calls(&s, "$__timeFilter", |a| {
        Ok(format!("{} BETWEEN '{}' AND '{}'", a[0], rfc3339(r.from_ms), rfc3339(r.to_ms)))
    })?;
    for (name, value) in &globals {
        s = s.replace(name, value);
    }
    s = macro_calls(&s, "$__timeGroupAlias", |a| {
        let step = seconds(a.get(1).context("$__timeGroupAlias(column, interval)")?)?;
        Ok(format!("floor(extract(epoch from {})/{step})*{step} AS \"time\"", a[0]))
    })?;
    if let Some(at) = s.find('$') {
        bail!("unknown variable or macro at {:?}", &s[at..s.len().min(at + 30)]);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Range = Range { from_ms: 1_000_000, to_ms: 1_600_000, interval_s: 10, rate_interval_s: 40 };

    #[test]
    fn variables_then_macros_as_grafana_does() {
        let sql = "SELECT $__timeGroupAlias(ts, $__interval), v FROM t WHERE n = '$node' AND $__timeFilter(ts) \
                   AND b BETWEEN $__from AND $__to";
        let got = expand(sql, &[("node", "n1")], R).unwrap();
        assert_eq!(
            got,
            "SELECT floor(extract(epoch from ts)/10)*10 AS \"time\", v FROM t WHERE n = 'n1' AND \
             ts BETWEEN '1970-01-01T00:16:40Z' AND '1970-01-01T00:26:40Z' AND b BETWEEN 1000000 AND 1600000"
        );
        let promql = "rate(x[$__rate_interval]) * on (i) y{n=\"${node}\"} + increase(z[$__range])";
        assert_eq!(
            expand(promql, &[("node", "n1")], R).unwrap(),
            "rate(x[40s]) * on (i) y{n=\"n1\"} + increase(z[600s])"
        );
    }

    #[test]
    fn unknown_variables_and_macros_are_refused() {
        assert!(expand("SELECT $__timeGroup(ts, 1m)", &[], R).is_err());
        assert!(expand("x{n=\"$other\"}", &[("node", "n1")], R).is_err());
        assert!(expand("$__timeGroupAlias(ts, 5x)", &[], R).is_err());
        assert_eq!(seconds("'5m'").unwrap(), 300);
    }

    #[test]
    fn the_repository_dashboards_are_well_formed() {
        let d = dashboards().unwrap();
        let names: Vec<&str> = d.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fleet", "ingest", "jobs", "node"]);
        let q = queries(&d).unwrap();
        assert!(q.iter().any(|q| q.source == Source::Sql) && q.iter().any(|q| q.source == Source::Prometheus));
        assert_eq!(q.iter().filter(|q| q.variable.is_some()).count(), 1);
    }
}
