//! A bounded pool for running models off the async runtime: at most
//! `workers` inferences at once on tokio's blocking threads, at most `queue`
//! more waiting for one. A caller reserves a place first ([`Pool::reserve`]),
//! so a full pool is known at once and the job can be refused or sent
//! elsewhere instead of piling up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::{Answer, InferenceError, Runtime};

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    runtime: Arc<Runtime>,
    /// Permits to run: one per inference thread.
    workers: Arc<Semaphore>,
    /// Permits to be in the pool at all (running or waiting): bounds the queue.
    places: Arc<Semaphore>,
    capacity: usize,
    /// Each run holds its thread this many times as long (1: as fast as it is).
    slowdown: f64,
}

/// A place in the pool, held from reservation to the end of the run.
pub struct Place {
    pool: Pool,
    /// Released when the run ends, making room for the next job.
    _place: OwnedSemaphorePermit,
    reserved: Instant,
}

/// A finished run.
#[derive(Debug)]
pub struct Ran {
    pub answer: Answer,
    /// Waiting for a worker.
    pub queued: Duration,
    /// Reservation to answer.
    pub total: Duration,
}

/// Why a run gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the deadline passed before a worker was free")]
    Expired,
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("the inference thread stopped: {0}")]
    Panicked(String),
}

impl Pool {
    /// A pool over `runtime` with `workers` threads (at least 1) and `queue` waiting places.
    #[must_use]
    pub fn new(runtime: Arc<Runtime>, workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let capacity = workers + queue;
        Self {
            runtime,
            workers: Arc::new(Semaphore::new(workers)),
            places: Arc::new(Semaphore::new(capacity)),
            capacity,
            slowdown: 1.0,
        }
    }

    /// Makes every run hold its thread `factor` times as long as it takes, so a
    /// simulated node on a fast machine behaves like a Pi (factor >= 1).
    #[must_use]
    pub fn with_slowdown(mut self, factor: f64) -> Self {
        self.slowdown = if factor.is_finite() { factor.clamp(1.0, 1000.0) } else { 1.0 };
        self
    }

    /// The same pool (its threads and places) over other models: runs
    /// already reserved finish on the models they started with.
    #[must_use]
    pub fn with_runtime(&self, runtime: Arc<Runtime>) -> Self {
        Self { runtime, ..self.clone() }
    }

    /// The models it runs.
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Jobs running or waiting.
    #[must_use]
    pub fn active(&self) -> usize {
        self.capacity - self.places.available_permits()
    }

    /// True when no place is free.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.places.available_permits() == 0
    }

    /// A place for one job, or `None` when the pool is full.
    #[must_use]
    pub fn reserve(&self) -> Option<Place> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        Some(Place { pool: self.clone(), _place: place, reserved: Instant::now() })
    }
}

impl Place {
    /// Waits for a worker (until `deadline`), runs `model` on `text` on a
    /// blocking thread, and gives the place back.
    ///
    /// # Errors
    /// The deadline passed while waiting, the model failed, or its thread panicked.
    pub async fn run(self, model: String, text: String, deadline: Instant) -> Result<Ran, RunError> {
        let worker = tokio::select! {
            p = self.pool.workers.clone().acquire_owned() => p.map_err(|e| RunError::Panicked(e.to_string()))?,
            () = tokio::time::sleep_until(deadline) => return Err(RunError::Expired),
        };
        let queued = self.reserved.elapsed();
        let rt = self.pool.runtime.clone();
        let slowdown = self.pool.slowdown;
        let answer = tokio::task::spawn_blocking(move || {
            // Held by the thread, so a cancelled caller cannot start a second run on it.
            let _worker = worker;
            // A model's first job loads it; the slowdown applies to the run alone.
            rt.prepare(&model)?;
            let started = std::time::Instant::now();
            let r = rt.run(&model, &text);
            if slowdown > 1.0 {
                std::thread::sleep(started.elapsed().mul_f64(slowdown - 1.0));
            }
            r
        })
        .await
        .map_err(|e| RunError::Panicked(e.to_string()))??;
        Ok(Ran { answer, queued, total: self.reserved.elapsed() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_places_and_deadlines() {
        let (rt, _) = Runtime::load(None, &[]);
        let pool = Pool::new(Arc::new(rt), 1, 1);
        let a = pool.reserve().unwrap();
        let b = pool.reserve().unwrap();
        assert!(pool.reserve().is_none() && pool.is_full());
        assert_eq!(pool.active(), 2);
        let far = Instant::now() + Duration::from_secs(5);
        let ran = a.run("severity".into(), "disk full".into(), far).await.unwrap();
        assert!(ran.total >= ran.queued);
        assert!(matches!(b.run("nope".into(), "x".into(), far).await, Err(RunError::Inference(_))));
        assert_eq!(pool.active(), 0);
        // A worker held elsewhere: the deadline ends the wait.
        let _busy = pool.workers.clone().acquire_owned().await.unwrap();
        let late = pool.reserve().unwrap().run("severity".into(), "x".into(), Instant::now()).await;
        assert!(matches!(late, Err(RunError::Expired)));
    }
}
