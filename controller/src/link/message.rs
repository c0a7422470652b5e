//! What the link hands on: each message a node sent, verified and typed, and
//! the owner that takes it. The link knows no owner by name: the
//! controller's wiring (`crate::inbound`) implements [`Deliver`].

use std::future::Future;

use fleet_proto::v1::{Event, JobResult, NodeStatus, ReportedState, TelemetryBatch};
use tokio::sync::oneshot;

/// A verified message from a node (or from the broker's own control plane).
#[derive(Debug)]
pub enum Inbound {
    /// A telemetry batch for ingest. `done` (Kafka) hears whether its rows
    /// were committed, so the consumer commits its offsets only after them;
    /// `span` lives until they are (docs/tracing.md).
    Telemetry { batch: TelemetryBatch, done: Option<oneshot::Sender<bool>>, span: tracing::Span },
    /// A node's status for the live view.
    Status(Box<NodeStatus>),
    /// What a node runs of its desired state, and its WireGuard keys.
    Reported(ReportedState),
    /// A node's answer to a job, in its span (a child of the node's run).
    Result(JobResult, tracing::Span),
    /// Something that happened on a node (a power profile change, ...), for the dashboard.
    Event(Event),
    /// An answer of Mosquitto's dynamic-security plugin (JSON).
    DynsecAnswer(Vec<u8>),
}

/// The owner that took a message is gone (the controller is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the owner of inbound messages stopped")]
pub struct Closed;

/// Where the link hands what it verified.
pub trait Deliver: Send + Sync + 'static {
    /// Hands one message to its owner, waiting while that owner is full:
    /// the wait is the backpressure on the broker or the Kafka consumer.
    ///
    /// # Errors
    /// [`Closed`] when the owner stopped; the link stops reading then.
    fn deliver(&self, msg: Inbound) -> impl Future<Output = Result<(), Closed>> + Send;

    /// A new MQTT session is up; called before the link subscribes, so
    /// rights on the broker (dynamic security) can be set first.
    fn connected(&self);
}
