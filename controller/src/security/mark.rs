//! Keeps the clock's high-water mark in the store (`crate::clock`): every
//! `PERSIST_EVERY` and at shutdown, so a restart with the wall clock set back
//! starts from (nearly) where this run left off.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, PERSIST_EVERY};
use crate::store::Store;

/// Runs until `shutdown`.
pub async fn keep(clock: Arc<Clock>, store: Store, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PERSIST_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        if let Err(e) = store.raise_clock_high_water(clock.high_water_ms()).await {
            tracing::warn!(error = %e, "Cannot store the clock's high-water mark; retrying.");
        }
    }
    let _ = store.raise_clock_high_water(clock.high_water_ms()).await;
}
