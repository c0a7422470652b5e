//! How a node scores for a job. Pure functions of what the node last said
//! about itself plus the controller's own count of jobs it has on the node;
//! docs/routing.md explains every term.
//!
//! A node is *excluded* when it is offline, lacks the model, saves power
//! (`saver`, `critical`), admits no job, has its queue full, is within
//! `hot_margin_c` of its thermal limit, reports throttling now, or its link
//! round trip is over `max_rtt_ms`. Otherwise it scores out of 1000:
//!
//! | term | penalty |
//! |---|---|
//! | queue | 400 x jobs in flight / jobs it admits |
//! | CPU load | 2 per % (up to 200) |
//! | power profile | balanced 100, performance 0 |
//! | on battery | 100, plus 3 per % of charge under 60 (up to 180) |
//! | thermal headroom | 10 per °C under 15 °C of headroom (up to 150) |
//! | link round trip | 1 per ms (up to 200) |

use fleet_proto::v1::{NodeState, NodeStatus, PowerProfile};

/// Highest score.
pub const MAX_SCORE: i32 = 1000;
/// Round trip assumed until a node has answered a job.
pub const DEFAULT_RTT_MS: f64 = 20.0;
/// Thermal limit assumed when a node reports none (the agent's default `hot_c`).
pub const DEFAULT_THERMAL_LIMIT_C: f64 = 75.0;
/// Throttle bits that mean "now" (under-voltage, frequency capped, throttled, soft temperature limit).
pub const THROTTLED_NOW_MASK: u32 = 0xF;

/// Knobs of the scoring (the `[router]` config section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreConfig {
    /// A node this close to its thermal limit is excluded.
    pub hot_margin_c: f64,
    /// A node whose round trip is over this is excluded.
    pub max_rtt_ms: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self { hot_margin_c: 2.0, max_rtt_ms: 1000.0 }
    }
}

/// Why a node cannot take a job; the reason an operator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Exclusion {
    Offline,
    ModelMissing,
    PowerSaving,
    AdmitsNone,
    QueueFull,
    Hot,
    Throttled,
    SlowLink,
    Labels,
    WrongVersion,
    NotPinned,
    AlreadyTried,
}

impl Exclusion {
    /// Short words for reasons and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::Offline => "offline",
            Exclusion::WrongVersion => "runs another version",
            Exclusion::ModelMissing => "model missing",
            Exclusion::PowerSaving => "saving power",
            Exclusion::AdmitsNone => "admits no jobs",
            Exclusion::QueueFull => "queue full",
            Exclusion::Hot => "too hot",
            Exclusion::Throttled => "throttled",
            Exclusion::SlowLink => "link too slow",
            Exclusion::Labels => "labels do not match",
            Exclusion::NotPinned => "not the requested node",
            Exclusion::AlreadyTried => "already tried",
        }
    }
}

/// What the router keeps of a node: the inputs of its score.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub online: bool,
    pub profile: PowerProfile,
    pub max_jobs: u32,
    pub cpu_pct: f64,
    pub on_battery: bool,
    pub battery_pct: Option<f64>,
    pub temp_c: Option<f64>,
    pub thermal_limit_c: f64,
    pub throttle_bits: u32,
    pub models: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Versions of the models the controller sent (name -> version).
    pub model_versions: std::collections::BTreeMap<String, String>,
}

impl NodeFacts {
    /// The facts in a status message.
    #[must_use]
    pub fn from_status(s: &NodeStatus) -> Self {
        let v = s.vitals.unwrap_or_default();
        let mut models = s.models.clone();
        models.sort();
        models.dedup();
        Self {
            online: s.state == NodeState::Online as i32,
            profile: PowerProfile::try_from(s.power_profile).unwrap_or(PowerProfile::Unspecified),
            max_jobs: s.max_jobs,
            cpu_pct: v.cpu_usage_pct.unwrap_or(0.0).clamp(0.0, 100.0),
            on_battery: v.on_battery.unwrap_or(false),
            battery_pct: v.battery_soc_pct,
            temp_c: v.soc_temp_c,
            thermal_limit_c: s.thermal_limit_c.unwrap_or(DEFAULT_THERMAL_LIMIT_C),
            throttle_bits: s.throttle_bits,
            models,
            labels: s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            model_versions: s.model_versions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// True when the node runs `version` of `model` (any version when empty).
    #[must_use]
    pub fn runs_version(&self, model: &str, version: &str) -> bool {
        version.is_empty() || self.model_versions.get(model).is_some_and(|v| v == version)
    }

    /// True when the node holds `model`.
    #[must_use]
    pub fn has_model(&self, model: &str) -> bool {
        self.models.binary_search_by(|m| m.as_str().cmp(model)).is_ok()
    }
}

/// The parts of a score, kept so a decision can say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Breakdown {
    pub queue: i32,
    pub cpu: i32,
    pub profile: i32,
    pub battery: i32,
    pub thermal: i32,
    pub rtt: i32,
}

impl Breakdown {
    /// The score: 1000 minus every penalty, never below 0.
    #[must_use]
    pub fn total(&self) -> i32 {
        (MAX_SCORE - self.queue - self.cpu - self.profile - self.battery - self.thermal - self.rtt).max(0)
    }
}

#[allow(clippy::cast_possible_truncation)] // every value is clamped to a few hundred first
fn pts(x: f64, max: f64) -> i32 {
    x.clamp(0.0, max).round() as i32
}

/// Whether a node with `inflight` of our jobs can take one more, with the
/// reason when it cannot, and its score when it can. Ignores model and labels
/// (the router's index checks those).
///
/// # Errors
/// The first exclusion that applies.
pub fn score(f: &NodeFacts, inflight: u32, rtt_ms: f64, cfg: &ScoreConfig) -> Result<Breakdown, Exclusion> {
    if !f.online {
        return Err(Exclusion::Offline);
    }
    if matches!(f.profile, PowerProfile::Saver | PowerProfile::Critical) {
        return Err(Exclusion::PowerSaving);
    }
    if f.max_jobs == 0 {
        return Err(Exclusion::AdmitsNone);
    }
    if inflight >= f.max_jobs {
        return Err(Exclusion::QueueFull);
    }
    if f.throttle_bits & THROTTLED_NOW_MASK != 0 {
        return Err(Exclusion::Throttled);
    }
    let headroom = f.temp_c.map(|t| f.thermal_limit_c - t);
    if headroom.is_some_and(|h| h < cfg.hot_margin_c) {
        return Err(Exclusion::Hot);
    }
    if rtt_ms > cfg.max_rtt_ms {
        return Err(Exclusion::SlowLink);
    }
    Ok(Breakdown {
        queue: pts(400.0 * f64::from(inflight) / f64::from(f.max_jobs), 400.0),
        cpu: pts(2.0 * f.cpu_pct, 200.0),
        profile: if f.profile == PowerProfile::Balanced { 100 } else { 0 },
        battery: if f.on_battery { 100 + pts(3.0 * (60.0 - f.battery_pct.unwrap_or(60.0)), 180.0) } else { 0 },
        thermal: headroom.map_or(0, |h| pts(10.0 * (15.0 - h), 150.0)),
        rtt: pts(rtt_ms, 200.0),
    })
}
