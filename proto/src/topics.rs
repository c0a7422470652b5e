//! MQTT and Kafka topic names: the only place they are spelled.
//!
//! MQTT: `fleet/v1/nodes/{node_id}/{channel}`, see ARCHITECTURE.md "Wire contract".

/// Prefix of every per-node MQTT topic.
pub const NODES_PREFIX: &str = "fleet/v1/nodes";

/// Kafka topic of telemetry batches (key: node id).
pub const KAFKA_TELEMETRY: &str = "fleet.telemetry";
/// Kafka topic of node status (compacted, key: node id).
pub const KAFKA_STATUS: &str = "fleet.status";
/// Kafka topic of node events.
pub const KAFKA_EVENTS: &str = "fleet.events";
/// Kafka topic of jobs.
pub const KAFKA_JOBS: &str = "fleet.jobs";
/// Kafka topic of job results.
pub const KAFKA_RESULTS: &str = "fleet.results";

/// The per-node MQTT channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// agent -> controller, QoS 1, `TelemetryBatch`.
    Telemetry,
    /// agent -> controller, QoS 1 retained, `NodeStatus` (last will: offline).
    Status,
    /// agent -> controller, QoS 1 retained, `ReportedState`.
    Reported,
    /// agent -> controller, QoS 1, `Event`.
    Events,
    /// controller -> agent, QoS 1 retained, `Ack`.
    Ack,
    /// controller -> agent, QoS 1 retained, `DesiredState`.
    Desired,
    /// controller -> agent, QoS 1, `Job`.
    Jobs,
    /// agent -> controller, QoS 1, `JobResult`.
    Results,
    /// controller -> agent, QoS 1 retained, `KeyRotation`.
    Key,
    /// controller -> agent, QoS 1 retained, `ControllerKeys`.
    ControllerKeys,
}

impl Channel {
    /// Every channel, in wire-contract order.
    pub const ALL: [Channel; 10] = [
        Channel::Telemetry,
        Channel::Status,
        Channel::Reported,
        Channel::Events,
        Channel::Ack,
        Channel::Desired,
        Channel::Jobs,
        Channel::Results,
        Channel::Key,
        Channel::ControllerKeys,
    ];

    /// The last topic level of this channel.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Telemetry => "telemetry",
            Channel::Status => "status",
            Channel::Reported => "reported",
            Channel::Events => "events",
            Channel::Ack => "ack",
            Channel::Desired => "desired",
            Channel::Jobs => "jobs",
            Channel::Results => "results",
            Channel::Key => "key",
            Channel::ControllerKeys => "controller-keys",
        }
    }

    /// True for channels an agent publishes on (the controller subscribes).
    #[must_use]
    pub const fn is_uplink(self) -> bool {
        matches!(self, Channel::Telemetry | Channel::Status | Channel::Reported | Channel::Events | Channel::Results)
    }

    fn from_level(level: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == level)
    }
}

/// The topic of `channel` for `node_id`.
#[must_use]
pub fn node_topic(node_id: &str, channel: Channel) -> String {
    format!("{NODES_PREFIX}/{node_id}/{}", channel.as_str())
}

/// The filter matching `channel` of every node (`fleet/v1/nodes/+/{channel}`).
#[must_use]
pub fn all_nodes_filter(channel: Channel) -> String {
    format!("{NODES_PREFIX}/+/{}", channel.as_str())
}

/// Splits a per-node topic into node id and channel; `None` for any other topic.
#[must_use]
pub fn parse_node_topic(topic: &str) -> Option<(&str, Channel)> {
    let rest = topic.strip_prefix(NODES_PREFIX)?.strip_prefix('/')?;
    let (node_id, level) = rest.split_once('/')?;
    if node_id.is_empty() {
        return None;
    }
    Some((node_id, Channel::from_level(level)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for c in Channel::ALL {
            let t = node_topic("pi-7", c);
            assert_eq!(parse_node_topic(&t), Some(("pi-7", c)));
        }
        assert_eq!(node_topic("pi-7", Channel::Telemetry), "fleet/v1/nodes/pi-7/telemetry");
        assert_eq!(all_nodes_filter(Channel::Status), "fleet/v1/nodes/+/status");
    }

    #[test]
    fn foreign_topics_are_not_parsed() {
        assert_eq!(parse_node_topic("fleet/v1/nodes//telemetry"), None);
        assert_eq!(parse_node_topic("fleet/v1/nodes/a/b/telemetry"), None);
        assert_eq!(parse_node_topic("fleet/v2/nodes/a/telemetry"), None);
        assert_eq!(parse_node_topic("fleet/v1/nodes/a/unknown"), None);
    }
}
