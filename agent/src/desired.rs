//! Desired state on the agent (ARCHITECTURE.md flow 3): validate what the
//! controller sends, keep it on disk so a restart without the controller
//! runs from it (offline autonomy), say what runs (`Applier`); the agent
//! applies what it accepts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::v1::{DesiredState, ModelReport, ReportedState};
use prost::Message;

use crate::AgentError;
use crate::overlay::KeysReport;
use crate::power::PowerPolicy;

/// File in `data_dir` holding the last desired state applied.
pub const DESIRED_FILE: &str = "desired.pb";
/// File in `data_dir` naming the version the node reverted, and why.
pub const REVERTED_FILE: &str = "desired.reverted";

/// A desired state that passed validation, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub version: u64,
    pub policy: PowerPolicy,
    pub telemetry_interval: Option<Duration>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub models: Vec<String>,
    /// Model versions from the controller (name -> version).
    pub model_versions: std::collections::HashMap<String, String>,
    /// The health window this state asks for (None: the agent's).
    pub health_window: Option<Duration>,
}

/// Model versions one desired state may name at most.
const MAX_MODEL_VERSIONS: usize = 32;

/// Checks a desired state for this node; `base` is the policy used when it carries none.
///
/// # Errors
/// The reason, reported back to the controller.
pub fn validate(d: &DesiredState, node_id: &str, base: &PowerPolicy) -> Result<Accepted, AgentError> {
    if d.node_id != node_id {
        return Err(AgentError::Invalid(format!("desired state is for node {:?}, this is {node_id:?}", d.node_id)));
    }
    let policy = if d.power_policy_toml.trim().is_empty() {
        base.clone()
    } else {
        PowerPolicy::from_toml(&d.power_policy_toml).map_err(|e| AgentError::Invalid(format!("power policy: {e}")))?
    };
    let telemetry_interval = match d.telemetry_interval_ms {
        0 => None,
        ms if ms < 100 => return Err(AgentError::Invalid(format!("telemetry_interval_ms {ms} is below 100"))),
        ms => Some(Duration::from_millis(ms)),
    };
    if d.model_versions.len() > MAX_MODEL_VERSIONS {
        return Err(AgentError::Invalid(format!("model_versions: at most {MAX_MODEL_VERSIONS} models")));
    }
    for (name, version) in &d.model_versions {
        fleet_inference::registry::check_model_ref(name, version)
            .map_err(|e| AgentError::Invalid(format!("model_versions: {e}")))?;
    }
    Ok(Accepted {
        version: d.version,
        policy,
        telemetry_interval,
        labels: d.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        models: d.models.clone(),
        model_versions: d.model_versions.clone(),
        health_window: (d.health_window_ms > 0).then(|| Duration::from_millis(d.health_window_ms)),
    })
}

/// The desired state kept on disk, if any (a damaged file is logged and ignored).
#[must_use]
pub fn load(data_dir: &Path) -> Option<DesiredState> {
    let path = data_dir.join(DESIRED_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match DesiredState::decode(bytes.as_slice()) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "Stored desired state is damaged; running from the config.");
            None
        }
    }
}

/// Keeps a desired state on disk, durably (`durable::replace`).
///
/// # Errors
/// Disk errors.
pub fn store(data_dir: &Path, d: &DesiredState) -> std::io::Result<()> {
    fleet_durable::replace(&data_dir.join(DESIRED_FILE), &d.encode_to_vec(), 0o644)
}

/// What taking a desired state came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Valid: apply it now (kept on disk when it came from the controller).
    Apply(Box<Accepted>),
    /// This version or a newer one runs already (a retained copy after a reconnect).
    Already,
    /// Refused; the previous one stays in force and the reason is reported.
    Refused,
}

/// The node's side of the device twin: which version runs, which was
/// refused and why, and the models it asks for.
pub struct Applier {
    /// The config's policy, used when a desired state carries none.
    base_policy: PowerPolicy,
    data_dir: PathBuf,
    version: u64,
    rejected: Option<(u64, String)>,
    /// Models the desired state asks for (empty: every loaded model).
    models: Vec<String>,
    /// The state in force as the controller sent it (None: the config's).
    current: Option<DesiredState>,
    /// The newest version that passed its health window.
    confirmed: u64,
    /// A version the node reverted: not applied again when the broker
    /// delivers it again (the controller sends a newer one).
    reverted: u64,
}

impl Applier {
    /// Nothing applied yet; `base_policy` is the config's; states are kept in `data_dir`.
    #[must_use]
    pub fn new(base_policy: PowerPolicy, data_dir: PathBuf) -> Self {
        let (reverted, why) = std::fs::read_to_string(data_dir.join(REVERTED_FILE))
            .ok()
            .and_then(|t| t.split_once('\n').and_then(|(v, why)| Some((v.parse().ok()?, why.to_owned()))))
            .unwrap_or((0, String::new()));
        let rejected = (reverted > 0).then_some((reverted, why));
        Self { base_policy, data_dir, version: 0, rejected, models: Vec::new(), current: None, confirmed: 0, reverted }
    }

    /// The state in force as the controller sent it (None: the config's).
    #[must_use]
    pub fn current(&self) -> Option<&DesiredState> {
        self.current.as_ref()
    }

    /// `version` passed its health window.
    pub fn confirm(&mut self, version: u64) {
        self.confirmed = self.confirmed.max(version);
    }

    /// Goes back from `failed` to `previous` (None: the config's) because
    /// of `reason`, remembered on disk so the failed version is not applied
    /// again. Returns what to apply.
    pub fn revert(&mut self, failed: u64, reason: &str, previous: Option<DesiredState>, node_id: &str) -> Accepted {
        tracing::warn!(version = failed, %reason, "Desired state reverted by the node.");
        self.rejected = Some((failed, format!("reverted: {reason}")));
        self.reverted = failed;
        let keep = fleet_durable::replace(
            &self.data_dir.join(REVERTED_FILE),
            format!("{failed}\nreverted: {reason}").as_bytes(),
            0o644,
        );
        let back = previous.unwrap_or_else(|| DesiredState { node_id: node_id.to_owned(), ..Default::default() });
        let kept = if back.version == 0 {
            std::fs::remove_file(self.data_dir.join(DESIRED_FILE))
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        } else {
            store(&self.data_dir, &back)
        };
        if let Err(e) = keep.and(kept) {
            tracing::error!(error = %e, "Cannot keep the revert on disk; a restart may apply the failed state again.");
        }
        // The previous state passed validation when it was taken.
        let a = validate(&back, node_id, &self.base_policy).unwrap_or_else(|_| Accepted {
            version: 0,
            policy: self.base_policy.clone(),
            telemetry_interval: None,
            labels: std::collections::BTreeMap::new(),
            models: Vec::new(),
            model_versions: std::collections::HashMap::new(),
            health_window: None,
        });
        self.version = back.version;
        self.models.clone_from(&a.models);
        self.current = (back.version > 0).then_some(back);
        a
    }

    /// The version in force (0: none).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The models asked for (empty: every loaded model).
    #[must_use]
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Validates a desired state for `node_id`; keeps it on disk when it
    /// came from the controller (`fresh`) and is valid.
    pub fn take(&mut self, d: &DesiredState, fresh: bool, node_id: &str) -> Outcome {
        if fresh && (d.version <= self.version || d.version == self.reverted) {
            return Outcome::Already;
        }
        match validate(d, node_id, &self.base_policy) {
            Ok(a) => {
                if fresh && let Err(e) = store(&self.data_dir, d) {
                    tracing::error!(error = %e, "Cannot keep the desired state on disk; it applies until restart.");
                }
                self.models.clone_from(&a.models);
                self.version = a.version;
                self.current = Some(d.clone());
                tracing::info!(version = a.version, fresh, "Desired state applied.");
                Outcome::Apply(Box::new(a))
            }
            Err(reason) => {
                tracing::warn!(version = d.version, %reason, "Desired state refused; the previous one stays in force.");
                self.rejected = Some((d.version, reason.to_string()));
                Outcome::Refused
            }
        }
    }

    /// What runs, as the node reports it (with its WireGuard keys).
    #[must_use]
    pub fn report(&self, node_id: &str, keys: KeysReport, models: Vec<ModelReport>) -> ReportedState {
        let (rejected_version, rejected_reason) = self.rejected.clone().unwrap_or_default();
        ReportedState {
            node_id: node_id.to_owned(),
            applied_version: self.version,
            rejected_version,
            rejected_reason,
            time_unix_ms: fleet_proto::now_unix_ms(),
            wg_public_key: keys.current,
            wg_next_public_key: keys.next,
            wg_generation: keys.generation,
            confirmed_version: self.confirmed,
            models,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(toml: &str) -> DesiredState {
        DesiredState { node_id: "n".into(), version: 3, power_policy_toml: toml.into(), ..Default::default() }
    }

    #[test]
    fn accepts_a_good_policy_and_refuses_bad_ones_with_the_reason() {
        let base = PowerPolicy::default();
        let a = validate(&desired("hot_c = 60.0\n"), "n", &base).unwrap();
        assert_eq!((a.version, a.policy.hot_c), (3, 60.0));
        assert_eq!(validate(&desired(""), "n", &base).unwrap().policy, base);
        let e = validate(&desired("fan_curve = [[70, 0.2], [60, 0.9]]\n"), "n", &base).unwrap_err().to_string();
        assert!(e.contains("fan_curve"), "{e}");
        let e = validate(&desired("colour = \"red\"\n"), "n", &base).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        assert!(validate(&desired(""), "other", &base).unwrap_err().to_string().contains("other"));
        let mut d = desired("");
        d.telemetry_interval_ms = 50;
        assert!(validate(&d, "n", &base).unwrap_err().to_string().contains("telemetry_interval_ms"));
    }

    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        store(dir.path(), &desired("hot_c = 60.0\n")).unwrap();
        assert_eq!(load(dir.path()).unwrap().version, 3);
        std::fs::write(dir.path().join(DESIRED_FILE), b"\xff\xff\xff").unwrap();
        assert!(load(dir.path()).is_none());
    }
}
