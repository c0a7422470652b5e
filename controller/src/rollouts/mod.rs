//! Staged rollouts (docs/rollouts.md): a model version or a desired-state
//! change applied to a target in batches, moving on while batches succeed
//! and stopping at a failure threshold. Operators' calls are here; the
//! engine that moves rollouts on is `engine.rs`. Every rollout lives in the
//! store, so a restarted controller (or another replica) resumes it.

mod engine;
mod plan;

use std::sync::Arc;

use fleet_proto::v1::{
    CreateRolloutRequest, Rollout, RolloutNode, RolloutNodeState as NodeState, RolloutSpec, RolloutState as State,
};
use tonic::Status;

use crate::artifacts::Artifacts;
use crate::desired::DesiredStates;
use crate::registry::Registry;
use crate::store::{Store, Which};

pub use plan::{batches_of, summarize};

/// The rollouts component. Cheap to clone.
#[derive(Clone)]
pub struct Rollouts {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: Registry,
    desired: DesiredStates,
    artifacts: Artifacts,
}

fn db(e: crate::ControllerError) -> Status {
    Status::from(e)
}

impl Rollouts {
    #[must_use]
    pub fn new(store: Store, registry: Registry, desired: DesiredStates, artifacts: Artifacts) -> Self {
        Self { inner: Arc::new(Inner { store, registry, desired, artifacts }) }
    }

    /// Checks a spec, picks its nodes, cuts them into batches and stores
    /// the rollout, running; the engine starts its first batch.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the field, NOT_FOUND for a model version the
    /// controller does not hold, UNAVAILABLE when the store cannot take it.
    pub async fn create(&self, req: CreateRolloutRequest, actor: &str) -> Result<Rollout, Status> {
        let spec = req.spec.ok_or_else(|| Status::invalid_argument("spec: give the rollout's spec"))?;
        plan::check(&spec)?;
        let change = spec.change.clone().unwrap_or_default();
        if !change.model.is_empty() {
            self.inner.artifacts.get(&change.model, &change.model_version).await.map_err(|e| {
                let s = Status::from(e);
                Status::new(s.code(), format!("spec.change: {}", s.message()))
            })?;
        }
        let nodes = plan::targets(&spec, &self.inner.registry.list())?;
        let sizes = batches_of(&spec, nodes.len());
        let mut batch_of = sizes.iter().enumerate().flat_map(|(b, n)| std::iter::repeat_n(b, *n as usize));
        let now = fleet_proto::now_unix_ms();
        let mut r = Rollout {
            rollout_id: uuid::Uuid::new_v4().to_string(),
            spec: Some(spec),
            state: State::RolloutRunning as i32,
            created_by: actor.to_owned(),
            created_unix_ms: now,
            updated_unix_ms: now,
            ..Default::default()
        };
        for node_id in nodes {
            let batch = u32::try_from(batch_of.next().unwrap_or(0)).unwrap_or(0);
            r.nodes.push(RolloutNode {
                node_id,
                batch,
                state: NodeState::RolloutNodeWaiting as i32,
                ..Default::default()
            });
        }
        self.inner.store.insert_rollout(&r).await.map_err(db)?;
        tracing::info!(rollout = %r.rollout_id, nodes = r.nodes.len(), batches = sizes.len(), "Rollout created.");
        Ok(summarize(r))
    }

    /// One rollout with its nodes and per-batch progress.
    ///
    /// # Errors
    /// NOT_FOUND, or the store's error.
    pub async fn get(&self, id: &str) -> Result<Rollout, Status> {
        let mut v = self.inner.store.rollouts(Which::One(id)).await.map_err(db)?;
        v.pop().map(summarize).ok_or_else(|| Status::not_found(format!("no rollout {id:?} (fleetctl rollout list)")))
    }

    /// Every rollout, newest first, with per-batch progress and without the node rows.
    ///
    /// # Errors
    /// The store's error.
    pub async fn list(&self) -> Result<Vec<Rollout>, Status> {
        let all = self.inner.store.rollouts(Which::All).await.map_err(db)?;
        Ok(all
            .into_iter()
            .map(|r| {
                let mut r = summarize(r);
                r.nodes.clear();
                r
            })
            .collect())
    }

    /// Pauses a running rollout: nodes updating finish, none starts.
    ///
    /// # Errors
    /// NOT_FOUND, or FAILED_PRECONDITION when it is not running.
    pub async fn pause(&self, id: &str, actor: &str) -> Result<Rollout, Status> {
        let r = self.get(id).await?;
        if r.state != State::RolloutRunning as i32 {
            return Err(Status::failed_precondition(format!("rollout {id} is {}, not running", state_word(r.state))));
        }
        let why = format!("paused by {actor}");
        self.inner.store.set_rollout_state(id, State::RolloutPaused as i32, &why).await.map_err(db)?;
        self.get(id).await
    }

    /// Resumes a paused rollout: failures so far and batches done so far no
    /// longer count against its thresholds.
    ///
    /// # Errors
    /// NOT_FOUND, or FAILED_PRECONDITION when it is not paused.
    pub async fn resume(&self, id: &str, actor: &str) -> Result<Rollout, Status> {
        let r = self.get(id).await?;
        if r.state != State::RolloutPaused as i32 {
            return Err(Status::failed_precondition(format!("rollout {id} is {}, not paused", state_word(r.state))));
        }
        let (forgiven, cleared) = plan::forgive(&r);
        let why = format!("resumed by {actor}");
        let store = &self.inner.store;
        store.resume_rollout(id, forgiven, cleared, &why).await.map_err(db)?;
        self.get(id).await
    }

    /// Aborts a rollout: no node starts any more (those waiting are
    /// skipped); nodes that took the change keep it.
    ///
    /// # Errors
    /// NOT_FOUND, or FAILED_PRECONDITION when it already ended.
    pub async fn abort(&self, id: &str, actor: &str) -> Result<Rollout, Status> {
        let r = self.get(id).await?;
        if !matches!(State::try_from(r.state), Ok(State::RolloutRunning | State::RolloutPaused)) {
            return Err(Status::failed_precondition(format!("rollout {id} already ended ({})", state_word(r.state))));
        }
        engine::stop(&self.inner.store, &r, State::RolloutAborted, &format!("aborted by {actor}")).await.map_err(db)?;
        self.get(id).await
    }

    /// Moves every rollout on, once a second, until `shutdown`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        engine::run(self.inner.clone(), shutdown).await;
    }
}

/// Lower-case name of a rollout state.
#[must_use]
pub fn state_word(state: i32) -> &'static str {
    match State::try_from(state).unwrap_or_default() {
        State::RolloutRunning => "running",
        State::RolloutPaused => "paused",
        State::RolloutAborted => "aborted",
        State::RolloutSucceeded => "succeeded",
        State::RolloutFailed => "failed",
        State::Unspecified => "unknown",
    }
}

/// The spec of a rollout (a default one when absent).
#[must_use]
pub fn spec_of(r: &Rollout) -> RolloutSpec {
    r.spec.clone().unwrap_or_default()
}
