//! Desired state on the agent (ARCHITECTURE.md flow 3): validate what the
//! controller sends, keep it on disk so a restart without the controller
//! runs from it (offline autonomy), say what runs (`Applier`); the agent
//! applies what it accepts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::v1::{DesiredState, ReportedState};
use prost::Message;

use crate::AgentError;
use crate::overlay::KeysReport;
use crate::power::PowerPolicy;

/// File in `data_dir` holding the last desired state applied.
pub const DESIRED_FILE: &str = "desired.pb";

/// A desired state that passed validation, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub version: u64,
    pub policy: PowerPolicy,
    pub telemetry_interval: Option<Duration>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub models: Vec<String>,
}

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
    Ok(Accepted {
        version: d.version,
        policy,
        telemetry_interval,
        labels: d.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        models: d.models.clone(),
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
}

impl Applier {
    /// Nothing applied yet; `base_policy` is the config's; states are kept in `data_dir`.
    #[must_use]
    pub fn new(base_policy: PowerPolicy, data_dir: PathBuf) -> Self {
        Self { base_policy, data_dir, version: 0, rejected: None, models: Vec::new() }
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
        if fresh && d.version <= self.version {
            return Outcome::Already;
        }
        match validate(d, node_id, &self.base_policy) {
            Ok(a) => {
                if fresh && let Err(e) = store(&self.data_dir, d) {
                    tracing::error!(error = %e, "Cannot keep the desired state on disk; it applies until restart.");
                }
                self.models.clone_from(&a.models);
                self.version = a.version;
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
    pub fn report(&self, node_id: &str, keys: KeysReport) -> ReportedState {
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
