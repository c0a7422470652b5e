//! Telemetry from batch to controller: every batch is appended to the spool
//! first, published at once while connected (live data ahead of any
//! backlog), replayed from disk after a reconnect at its paced rate, sent
//! again when unacknowledged past the ack timeout, and forgotten only when
//! the controller (MQTT) or the Kafka log has it.

use std::time::{Duration, Instant};

use fleet_proto::v1::{AgentCounters, TelemetryBatch};

use crate::outbox::Outbox;
use crate::spool::{Outgoing, Spool, SpoolError};
use crate::uplink::UplinkEvent;

/// How often the spool's acknowledged position is written to disk at most.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// The spool and what delivering from it counted.
pub struct Delivery {
    spool: Spool,
    ack_timeout: Duration,
    /// Batches replayed or resent per delivery tick at most.
    per_tick: usize,
    /// Spool errors so far; the first of a streak is logged at ERROR.
    errors: u64,
    /// When the spool's cursor was last written (at most every `CURSOR_EVERY`, to spare SD cards).
    cursor_saved: Instant,
    batches_dropped: u64,
    samples_dropped: u64,
    samples_acked: u64,
    /// When the last ack or delivery report came (0: not in this run).
    pub last_ack_unix_ms: i64,
}

impl Delivery {
    /// Delivery from `spool`: unacknowledged batches are resent after
    /// `ack_timeout`; replay sends at most `per_tick` batches a tick.
    #[must_use]
    pub fn new(spool: Spool, ack_timeout: Duration, per_tick: usize) -> Self {
        Self {
            spool,
            ack_timeout,
            per_tick: per_tick.max(1),
            errors: 0,
            cursor_saved: Instant::now(),
            batches_dropped: 0,
            samples_dropped: 0,
            samples_acked: 0,
            last_ack_unix_ms: 0,
        }
    }

    fn error(&mut self, e: &SpoolError) {
        self.errors += 1;
        if self.errors == 1 || self.errors.is_power_of_two() {
            tracing::error!(error = %e, errors = self.errors, "Spool error; telemetry may be lost.");
        }
    }

    /// Batches not yet acknowledged.
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.spool.pending()
    }

    /// Appends fresh batches to the spool and, while connected, publishes them
    /// at once (ahead of any backlog, so a replay never starves live data).
    pub fn append_and_send(&mut self, batches: Vec<TelemetryBatch>, out: &mut Outbox) {
        let now = tokio::time::Instant::now().into_std();
        for b in batches {
            let samples = b.samples.len() as u64;
            match self.spool.append(&b) {
                Ok(appended) if out.connected() => match self.spool.take_live(appended, now) {
                    Ok(Some(o)) => {
                        self.send(o, out);
                    }
                    Ok(None) => {}
                    Err(e) => self.error(&e),
                },
                Ok(_) => {}
                Err(e) => {
                    self.batches_dropped += 1;
                    self.samples_dropped += samples;
                    self.error(&e);
                }
            }
        }
    }

    /// The delivery tick: group commit by time, resends of batches
    /// unacknowledged past the ack timeout, backlog replay at its rate,
    /// cursor persistence.
    pub fn tick(&mut self, out: &mut Outbox) {
        let now = tokio::time::Instant::now().into_std();
        if let Err(e) = self.spool.maybe_sync(now) {
            self.error(&e);
        }
        if out.connected() {
            let mut due = match self.spool.resends(now, self.ack_timeout, self.per_tick) {
                Ok(v) => v,
                Err(e) => {
                    self.error(&e);
                    Vec::new()
                }
            };
            match self.spool.replay(now, self.per_tick) {
                Ok(v) => due.extend(v),
                Err(e) => self.error(&e),
            }
            for o in due {
                if !self.send(o, out) {
                    break;
                }
            }
        }
        if now.duration_since(self.cursor_saved) >= CURSOR_EVERY {
            self.cursor_saved = now;
            if let Err(e) = self.spool.persist_cursor() {
                self.error(&e);
            }
        }
    }

    /// Hands one batch to the uplink; a refusal leaves it to be sent again.
    fn send(&mut self, o: Outgoing, out: &mut Outbox) -> bool {
        match out.telemetry(o) {
            Ok(()) => true,
            Err(pos) => {
                self.spool.send_failed(pos);
                tracing::debug!("Uplink queue full; the batch waits in the spool.");
                false
            }
        }
    }

    /// Applies what the uplink reports about telemetry: a (re)connect
    /// replays everything unacknowledged (from the next tick), a disconnect
    /// makes batches wait on disk, acks and delivery reports release them, a
    /// failed send is retried. Other events are not telemetry's.
    pub fn on_event(&mut self, ev: &UplinkEvent) {
        let acked = match ev {
            UplinkEvent::Connected => {
                self.spool.on_connect();
                return;
            }
            UplinkEvent::Disconnected => {
                self.spool.on_disconnect();
                return;
            }
            UplinkEvent::Failed(pos) => {
                self.spool.send_failed(*pos);
                return;
            }
            UplinkEvent::Ack(ack) => self.spool.ack(ack),
            UplinkEvent::Delivered(pos) => self.spool.ack_position(*pos),
            _ => return,
        };
        self.last_ack_unix_ms = fleet_proto::now_unix_ms();
        match acked {
            Ok(n) => self.samples_acked += n,
            Err(e) => self.error(&e),
        }
    }

    /// Kafka has no connection to wait for: the backlog replays from the start.
    pub fn start_replay(&mut self) {
        self.spool.on_connect();
    }

    /// Makes everything appended durable now (before the power goes, or at shutdown).
    pub fn make_durable(&mut self) {
        if let Err(e) = self.spool.sync().and_then(|()| self.spool.persist_cursor()) {
            self.error(&e);
        }
    }

    /// Adds what delivery counted to `c`.
    pub fn count_into(&self, c: &mut AgentCounters) {
        let st = self.spool.stats();
        c.batches_unacked = self.spool.pending();
        c.batches_dropped += self.batches_dropped + st.dropped_batches;
        c.samples_dropped += self.samples_dropped + st.dropped_samples;
        c.samples_acked += self.samples_acked;
        c.spool_bytes = self.spool.bytes();
        c.spool_quarantined_segments = st.quarantined_segments;
        c.spool_torn_tails = st.torn_tails_truncated;
    }

    /// Syncs the spool and closes it; returns the batches it keeps for the next start.
    ///
    /// # Errors
    /// Disk errors.
    pub fn close(self) -> Result<u64, SpoolError> {
        self.spool.close()
    }
}
