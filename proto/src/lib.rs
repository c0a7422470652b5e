//! The Spark Fleet wire contract: the protobuf messages agents and the
//! controller exchange, the gRPC `FleetService`, and the one place where MQTT
//! topic and Kafka topic names are spelled, and the signed envelope. No I/O
//! lives here: the gRPC channel and the WireGuard interface are `fleet-net`'s.
#![forbid(unsafe_code)]

pub mod error;
pub mod fetch;
pub mod metrics;
pub mod signing;
pub mod topics;

/// Generated messages and gRPC stubs for package `fleet.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fleet.v1");
}

/// Encoded `FileDescriptorSet` of every `fleet.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fleet_descriptor.bin"));

pub use error::ProtoError;

/// Node ids are used in topic names, file names and SQL; keep them tame.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id is empty")]
    Empty,
    #[error("node id is {0} bytes long; at most {MAX_NODE_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("node id {0:?} has a character other than A-Z, a-z, 0-9, '-', '_' and '.'")]
    BadChar(String),
}

/// Checks that `id` is a usable node id: 1 to 64 characters from
/// `[A-Za-z0-9._-]`, so it can never widen an MQTT topic filter (`+`, `#`, `/`).
///
/// # Errors
/// Returns which rule `id` breaks.
pub fn validate_node_id(id: &str) -> Result<(), NodeIdError> {
    if id.is_empty() {
        return Err(NodeIdError::Empty);
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Err(NodeIdError::TooLong(id.len()));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(NodeIdError::BadChar(id.to_owned()));
    }
    Ok(())
}

/// Current wall-clock time in ms since the Unix epoch (0 if the clock is
/// before 1970, as on a Pi without RTC before NTP, rather than a panic).
#[must_use]
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Splits `mqtt://host:port` (or `tcp://`) into host and port (default 1883).
///
/// # Errors
/// A sentence saying what is wrong with the URL.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), ProtoError> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| ProtoError::NotMqttUrl(url.to_owned()))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse::<u16>().map_err(|_| ProtoError::BadPort { url: url.to_owned(), port: p.to_owned() })?;
            (h, port)
        }
        None => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ProtoError::NoHost(url.to_owned()));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::v1::*;
    use super::*;
    use prost::Message;

    #[test]
    fn telemetry_batch_round_trips() {
        let batch = TelemetryBatch {
            node_id: "pi-01".into(),
            boot_id: "b".into(),
            first_seq: 42,
            low_water_seq: 40,
            samples: vec![
                Sample { metric: "cpu.usage_pct".into(), value: 12.5, time_unix_ms: 1_700_000_000_000 },
                Sample { metric: "soc.temp_c".into(), value: -3.0, time_unix_ms: 1_700_000_000_001 },
            ],
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(TelemetryBatch::decode(bytes.as_slice()).unwrap(), batch);
    }

    #[test]
    fn node_status_round_trips_with_optional_vitals() {
        let status = NodeStatus {
            node_id: "pi-01".into(),
            state: NodeState::Online as i32,
            counters: Some(AgentCounters { samples_taken: 7, ..Default::default() }),
            vitals: Some(NodeVitals { soc_temp_c: Some(51.0), battery_soc_pct: None, ..Default::default() }),
            labels: [("site".to_owned(), "barn".to_owned())].into(),
            ..Default::default()
        };
        let decoded = NodeStatus::decode(status.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, status);
        assert_eq!(decoded.vitals.unwrap().battery_soc_pct, None);
    }

    #[test]
    fn other_messages_round_trip() {
        let desired =
            DesiredState { node_id: "n".into(), version: 3, models: vec!["minilm".into()], ..Default::default() };
        assert_eq!(DesiredState::decode(desired.encode_to_vec().as_slice()).unwrap(), desired);
        let job = Job { job_id: "j".into(), input: Some(job::Input::Text("hi".into())), ..Default::default() };
        assert_eq!(Job::decode(job.encode_to_vec().as_slice()).unwrap(), job);
        let ack = Ack { boot_id: "b".into(), up_to_seq: 9, committed: vec![SeqRange { start: 20, end: 30 }] };
        assert_eq!(Ack::decode(ack.encode_to_vec().as_slice()).unwrap(), ack);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(TelemetryBatch::decode(&[0xff, 0xff, 0xff, 0xff][..]).is_err());
    }

    #[test]
    fn node_ids_are_checked() {
        assert!(validate_node_id("pi-01.barn_2").is_ok());
        assert_eq!(validate_node_id(""), Err(NodeIdError::Empty));
        assert!(matches!(validate_node_id("a/b"), Err(NodeIdError::BadChar(_))));
        assert!(matches!(validate_node_id("+"), Err(NodeIdError::BadChar(_))));
        assert!(matches!(validate_node_id(&"x".repeat(65)), Err(NodeIdError::TooLong(65))));
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:1884"), Ok(("127.0.0.1".into(), 1884)));
        assert_eq!(parse_mqtt_url("tcp://broker"), Ok(("broker".into(), 1883)));
        assert_eq!(parse_mqtt_url("mqtt://[::1]:9/"), Ok(("::1".into(), 9)));
        assert!(parse_mqtt_url("http://x").is_err());
        assert!(parse_mqtt_url("mqtt://x:notaport").is_err());
        assert!(parse_mqtt_url("mqtt://:1").is_err());
    }

    #[test]
    fn descriptor_set_names_the_service() {
        let fds = prost_types_free_check(FILE_DESCRIPTOR_SET);
        assert!(fds, "descriptor set should mention fleet.v1.FleetService");
    }

    fn prost_types_free_check(bytes: &[u8]) -> bool {
        bytes.windows(b"FleetService".len()).any(|w| w == b"FleetService")
    }
}
