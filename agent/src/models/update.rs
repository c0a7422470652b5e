//! The node's side of a model rollout (docs/rollouts.md). The desired state
//! names a version per model; each one the node does not run is downloaded
//! (one at a time; on battery in a saving profile it waits for external
//! power when `[models] defer_on_battery` says so), kept, activated,
//! self-tested and watched for the health window: a version that fails any
//! of it is reverted by the node itself and reported FAILED with the reason,
//! and remembered so a restart does not fetch it again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fleet_inference::{ModelManifest, Runtime};
use fleet_proto::v1::ModelReport;
use fleet_proto::v1::ModelUpdateState as State;
use fleet_proto::v1::artifact_service_client::ArtifactServiceClient;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ModelStore;
use super::fetch::{FetchError, Source, fetch_version};
use crate::jobs::open_models;

/// `[models]`: model versions the controller sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Bytes the kept versions may take. Default 2 GiB.
    pub disk_budget: u64,
    /// On battery in the saver or critical profile, downloads wait. Default true.
    pub defer_on_battery: bool,
    /// Failed jobs of a new version within its health window that revert it. Default 3.
    pub max_job_failures: u32,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self { disk_budget: 2 << 30, defer_on_battery: true, max_job_failures: 3 }
    }
}

/// Where downloads come from: the controller's API, as enrollment saved it.
#[derive(Clone)]
pub struct Origin {
    pub node_id: String,
    pub key: SigningKey,
    pub url: String,
    pub ca_pem: Option<Vec<u8>>,
}

/// What an update task came to.
pub enum Done {
    /// Kept, activated and self-tested: the runtime to swap in.
    Activated { name: String, version: String, runtime: Runtime },
    /// Not taken; `runtime` is set when the models in force changed (a revert).
    Failed { name: String, version: String, reason: String, runtime: Option<Runtime> },
}

/// One model the desired state names.
struct Wanted {
    version: String,
    state: State,
    reason: String,
    changed_unix_ms: i64,
    /// While checking: the end of the health window, and the failed jobs so far.
    until: Option<Instant>,
    failures: u32,
}

/// The model updates of one node.
pub struct Updater {
    store: ModelStore,
    cfg: ModelsConfig,
    /// The config's model directory (models placed by hand), read before the store's.
    base_dir: Option<PathBuf>,
    origin: Option<Origin>,
    wanted: BTreeMap<String, Wanted>,
    window: Duration,
    /// The model a task works on, and the token that stops it.
    busy: Option<(String, CancellationToken)>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// The versions in force, read from the store when they change (the
    /// status is written every few seconds; the disk is read only then).
    in_force: HashMap<String, String>,
}

fn now_ms() -> i64 {
    fleet_proto::now_unix_ms()
}

impl Updater {
    #[must_use]
    pub fn new(store: ModelStore, cfg: ModelsConfig, base_dir: Option<PathBuf>, origin: Option<Origin>) -> Self {
        let (done_tx, done_rx) = mpsc::channel(4);
        let window = Duration::from_secs(60);
        let in_force = store.in_force().into_iter().collect();
        let wanted = BTreeMap::new();
        Self { store, cfg, base_dir, origin, wanted, window, busy: None, done_tx, done_rx, in_force }
    }

    /// The model directories the runtime reads, the store's last.
    #[must_use]
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.base_dir.iter().cloned().chain([self.store.active_dir()]).collect()
    }

    /// Takes the versions a desired state asks for, and its health window.
    pub fn want(&mut self, versions: &HashMap<String, String>, window: Duration) {
        self.window = window;
        self.wanted.retain(|name, w| versions.get(name) == Some(&w.version));
        if let Some((name, stop)) = &self.busy
            && !self.wanted.contains_key(name)
        {
            stop.cancel();
        }
        for (name, version) in versions {
            if self.wanted.contains_key(name) {
                continue;
            }
            let mut w = Wanted {
                version: version.clone(),
                state: State::ModelUpdatePending,
                reason: String::new(),
                changed_unix_ms: now_ms(),
                until: None,
                failures: 0,
            };
            if self.store.current(name).as_deref() == Some(version) {
                w.state = State::ModelUpdateActive;
            } else if let Some((v, why)) = self.store.failed(name).filter(|(v, _)| v == version) {
                (w.state, w.reason) = (State::ModelUpdateFailed, format!("{v} failed here before: {why}"));
            }
            self.wanted.insert(name.clone(), w);
        }
    }

    /// Ends health windows that passed, and starts the next download unless
    /// one runs (or defers it while `saving_on_battery`). True when a state changed.
    pub fn step(&mut self, saving_on_battery: bool) -> bool {
        let mut changed = false;
        let now = Instant::now();
        for w in self.wanted.values_mut() {
            if w.state == State::ModelUpdateChecking && w.until.is_some_and(|u| now >= u) {
                (w.state, w.until, w.changed_unix_ms) = (State::ModelUpdateActive, None, now_ms());
                changed = true;
            }
        }
        if self.busy.is_some() {
            return changed;
        }
        let defer = saving_on_battery && self.cfg.defer_on_battery;
        let next = self
            .wanted
            .iter_mut()
            .find(|(_, w)| matches!(w.state, State::ModelUpdatePending | State::ModelUpdateDeferred));
        let Some((name, w)) = next else { return changed };
        if defer {
            if w.state != State::ModelUpdateDeferred {
                (w.state, w.changed_unix_ms) = (State::ModelUpdateDeferred, now_ms());
                w.reason = "on battery in a saving profile: waiting for external power".into();
                return true;
            }
            return changed;
        }
        (w.state, w.reason, w.changed_unix_ms) = (State::ModelUpdateDownloading, String::new(), now_ms());
        let (name, version) = (name.clone(), w.version.clone());
        let stop = CancellationToken::new();
        self.busy = Some((name.clone(), stop.clone()));
        let task = Task {
            store: self.store.clone(),
            budget: self.cfg.disk_budget,
            dirs: self.dirs(),
            origin: self.origin.clone(),
            name,
            version,
            stop,
        };
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(task.run().await).await;
        });
        true
    }

    /// The next finished task (never, while none runs).
    pub async fn next(&mut self) -> Done {
        match self.done_rx.recv().await {
            Some(d) => d,
            None => std::future::pending().await,
        }
    }

    /// Records what a task came to; returns the runtime to swap in, if any.
    pub fn finished(&mut self, done: Done) -> Option<Runtime> {
        let (name, version, reason, runtime, ok) = match done {
            Done::Activated { name, version, runtime } => (name, version, String::new(), Some(runtime), true),
            Done::Failed { name, version, reason, runtime } => (name, version, reason, runtime, false),
        };
        if self.busy.as_ref().is_some_and(|(b, _)| *b == name) {
            self.busy = None;
        }
        self.in_force = self.store.in_force().into_iter().collect();
        let window = self.window;
        if let Some(w) = self.wanted.get_mut(&name).filter(|w| w.version == version) {
            w.changed_unix_ms = now_ms();
            if ok {
                tracing::info!(model = %name, %version, window = ?window, "Model version active; watching its jobs.");
                (w.state, w.until, w.failures) = (State::ModelUpdateChecking, Some(Instant::now() + window), 0);
            } else if reason == STOPPED {
                w.state = State::ModelUpdatePending;
            } else {
                tracing::warn!(model = %name, %version, %reason, "Model version not taken.");
                (w.state, w.reason) = (State::ModelUpdateFailed, reason);
            }
        }
        runtime
    }

    /// Counts a failed job of `model`; a version in its health window that
    /// reaches `max_job_failures` is reverted (its task reports back).
    pub fn job_failed(&mut self, model: &str, error: &str) {
        let Some(w) = self.wanted.get_mut(model).filter(|w| w.state == State::ModelUpdateChecking) else { return };
        w.failures += 1;
        if w.failures < self.cfg.max_job_failures || self.busy.is_some() {
            return;
        }
        let reason = format!("{} jobs failed within the health window (last: {error}); reverted", w.failures);
        // Still checking, without a window end: the revert task reports back.
        w.until = None;
        let stop = CancellationToken::new();
        self.busy = Some((model.to_owned(), stop.clone()));
        let version = w.version.clone();
        let (store, dirs, name) = (self.store.clone(), self.dirs(), model.to_owned());
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let done = tokio::task::spawn_blocking(move || revert(&store, &dirs, name, version, reason)).await;
            if let Ok(d) = done {
                let _ = tx.send(d).await;
            }
        });
    }

    /// Version in force of each model the controller sent.
    #[must_use]
    pub fn in_force(&self) -> &HashMap<String, String> {
        &self.in_force
    }

    /// True when no model is wanted that is not active or failed, and no task runs.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.busy.is_none()
            && self.wanted.values().all(|w| matches!(w.state, State::ModelUpdateActive | State::ModelUpdateFailed))
    }

    /// Some(true): every wanted version runs and passed its window;
    /// Some(false): one failed; None: still at work.
    #[must_use]
    pub fn settled(&self) -> Option<bool> {
        if self.wanted.values().any(|w| w.state == State::ModelUpdateFailed) {
            return Some(false);
        }
        self.wanted.values().all(|w| w.state == State::ModelUpdateActive).then_some(true)
    }

    /// What the node reports of each wanted model.
    #[must_use]
    pub fn reports(&self) -> Vec<ModelReport> {
        self.wanted
            .iter()
            .map(|(name, w)| ModelReport {
                name: name.clone(),
                version: self.store.current(name).unwrap_or_default(),
                wanted: w.version.clone(),
                state: w.state as i32,
                reason: w.reason.clone(),
                bytes_received: self.store.bytes_of(name, &w.version),
                changed_unix_ms: w.changed_unix_ms,
            })
            .collect()
    }
}

/// One download, activation and self-test.
struct Task {
    store: ModelStore,
    budget: u64,
    dirs: Vec<PathBuf>,
    origin: Option<Origin>,
    name: String,
    version: String,
    stop: CancellationToken,
}

/// Why a task that was stopped did not finish (the model is wanted again later).
const STOPPED: &str = "stopped on the node's request";

/// Waits between attempts of a download that broke off.
const RETRY: [u64; 5] = [1, 2, 5, 10, 30];

impl Task {
    async fn run(self) -> Done {
        if !self.store.holds(&self.name, &self.version)
            && let Err(reason) = self.download().await
        {
            if reason != STOPPED {
                let _ = self.store.mark_failed(&self.name, &self.version, &reason);
            }
            return Done::Failed { name: self.name, version: self.version, reason, runtime: None };
        }
        let Task { store, dirs, name, version, .. } = self;
        let (n, v) = (name.clone(), version.clone());
        let done = tokio::task::spawn_blocking(move || activate(&store, &dirs, name, version)).await;
        done.unwrap_or_else(|e| Done::Failed {
            name: n,
            version: v,
            reason: format!("the activation stopped: {e}"),
            runtime: None,
        })
    }

    async fn download(&self) -> Result<(), String> {
        let Some(o) = &self.origin else {
            return Err("this node has no controller to download from: enroll it (`fleet-agent enroll`)".into());
        };
        let mut attempt = 0;
        loop {
            match self.attempt(o).await {
                Ok(f) => {
                    let (model, version) = (&self.name, &self.version);
                    tracing::info!(%model, %version, bytes = f.received, "Model version downloaded.");
                    return self.store.keep(&self.name, &self.version).map_err(|e| e.to_string());
                }
                Err(FetchError::Cut(why)) if !self.stop.is_cancelled() => {
                    let wait = RETRY[attempt.min(RETRY.len() - 1)];
                    attempt += 1;
                    tracing::info!(model = %self.name, %why, wait_s = wait, "Model download broke off; resuming.");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(wait)) => {}
                        () = self.stop.cancelled() => return Err(STOPPED.into()),
                    }
                }
                Err(FetchError::Cut(_)) => return Err(STOPPED.into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// One connection and download attempt.
    async fn attempt(&self, o: &Origin) -> Result<super::fetch::Fetched, FetchError> {
        let channel = fleet_net::client::channel(&o.url, o.ca_pem.as_deref()).await.map_err(|e| match e {
            fleet_net::NetError::Unreachable { .. } => FetchError::Cut(e.to_string()),
            other => FetchError::Refused(other.to_string()),
        })?;
        let mut src = Source {
            node_id: o.node_id.clone(),
            key: o.key.clone(),
            client: ArtifactServiceClient::new(channel),
            stop: self.stop.clone(),
        };
        let used = self.store.used();
        fetch_version(&mut src, &self.name, &self.version, &self.store.staging(), (used, self.budget)).await
    }
}

/// Puts a kept version in force and runs its self-test (or loads it, when
/// its manifest has none); on failure goes back to the previous version.
fn activate(store: &ModelStore, dirs: &[PathBuf], name: String, version: String) -> Done {
    if let Err(e) = store.activate(&name, &version) {
        return Done::Failed { name, version, reason: e.to_string(), runtime: None };
    }
    let rt = open_models(dirs);
    let manifest = std::fs::read_to_string(store.active_dir().join(&name).join("model.toml"))
        .map_err(|e| e.to_string())
        .and_then(|t| ModelManifest::parse(&t));
    let checked = match manifest {
        Err(e) => Err(format!("its manifest: {e}")),
        Ok(_) if !rt.has(&name) => Err("its files do not match its manifest".into()),
        Ok(m) => match m.self_test {
            Some(t) => rt.self_test(&name, &t).map_err(|e| format!("self-test failed: {e}")),
            None => rt.prepare(&name).map_err(|e| e.to_string()),
        },
    };
    match checked {
        Ok(()) => Done::Activated { name, version, runtime: rt },
        Err(reason) => revert(store, dirs, name, version, reason),
    }
}

/// Goes back to the previous version of `name` and says why.
fn revert(store: &ModelStore, dirs: &[PathBuf], name: String, version: String, reason: String) -> Done {
    let back = store.revert(&name);
    let reason = match back {
        Ok(Some(v)) => format!("{reason}; version {v} runs again"),
        Ok(None) => format!("{reason}; no earlier version to run"),
        Err(e) => format!("{reason}; the revert failed: {e}"),
    };
    tracing::warn!(model = %name, %version, %reason, "Model version reverted.");
    let _ = store.mark_failed(&name, &version, &reason);
    Done::Failed { name, version, reason, runtime: Some(open_models(dirs)) }
}
