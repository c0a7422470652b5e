//! What a spool record holds: a small fixed prefix with the facts the spool
//! needs to track a batch (run, first seq, sample count), then the batch as
//! it goes on the wire. Replay never decodes samples: it copies the wire
//! bytes and appends the low-water field (protobuf keeps the last value of a
//! repeated scalar field, so appending `low_water_seq` sets it).
//!
//! Layout (version 1): `[1u8][first_seq u64 LE][samples u32 LE][boot_len u8][boot_id][TelemetryBatch]`.

use fleet_proto::v1::TelemetryBatch;
use prost::Message;

const VERSION: u8 = 1;
const FIXED: usize = 1 + 8 + 4 + 1;

/// The facts a record's prefix carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta<'a> {
    pub boot_id: &'a str,
    pub first_seq: u64,
    pub samples: u32,
    /// The wire bytes of the batch.
    pub wire: &'a [u8],
}

impl Meta<'_> {
    /// One past the batch's last seq.
    #[must_use]
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.samples)
    }
}

/// Encodes a batch as a record payload; `None` if its boot id is over 255 bytes.
#[must_use]
pub fn encode(batch: &TelemetryBatch) -> Option<Vec<u8>> {
    let boot = batch.boot_id.as_bytes();
    let boot_len = u8::try_from(boot.len()).ok()?;
    let samples = u32::try_from(batch.samples.len()).ok()?;
    let mut v = Vec::with_capacity(FIXED + boot.len() + batch.encoded_len());
    v.push(VERSION);
    v.extend_from_slice(&batch.first_seq.to_le_bytes());
    v.extend_from_slice(&samples.to_le_bytes());
    v.push(boot_len);
    v.extend_from_slice(boot);
    batch.encode(&mut v).ok()?;
    Some(v)
}

/// Reads a record payload's prefix; `None` if it is not a record of ours.
#[must_use]
pub fn meta(payload: &[u8]) -> Option<Meta<'_>> {
    if payload.len() < FIXED || payload[0] != VERSION {
        return None;
    }
    let first_seq = u64::from_le_bytes(payload[1..9].try_into().ok()?);
    let samples = u32::from_le_bytes(payload[9..13].try_into().ok()?);
    let boot_len = payload[13] as usize;
    let boot = payload.get(FIXED..FIXED + boot_len)?;
    let boot_id = std::str::from_utf8(boot).ok()?;
    first_seq.checked_add(u64::from(samples))?;
    Some(Meta { boot_id, first_seq, samples, wire: &payload[FIXED + boot_len..] })
}

/// The wire bytes with `low_water_seq` set.
#[must_use]
pub fn wire_with_low_water(wire: &[u8], low_water_seq: u64) -> Vec<u8> {
    let suffix = TelemetryBatch { low_water_seq, ..Default::default() };
    let mut v = Vec::with_capacity(wire.len() + suffix.encoded_len());
    v.extend_from_slice(wire);
    suffix.encode(&mut v).ok();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::Sample;

    #[test]
    fn round_trip_and_low_water_suffix() {
        let b = TelemetryBatch {
            node_id: "n".into(),
            boot_id: "run-1".into(),
            first_seq: 40,
            samples: vec![Sample { metric: "m".into(), value: 1.5, time_unix_ms: 9 }; 3],
            low_water_seq: 0,
        };
        let rec = encode(&b).unwrap();
        let m = meta(&rec).unwrap();
        assert_eq!((m.boot_id, m.first_seq, m.samples, m.end_seq()), ("run-1", 40, 3, 43));
        let wire = wire_with_low_water(m.wire, 17);
        let back = TelemetryBatch::decode(wire.as_slice()).unwrap();
        assert_eq!(back, TelemetryBatch { low_water_seq: 17, ..b });
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert_eq!(meta(b""), None);
        assert_eq!(meta(&[2u8; 40]), None);
        let mut bad = vec![1u8];
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        bad.extend_from_slice(&5u32.to_le_bytes());
        bad.push(0);
        assert_eq!(meta(&bad), None, "seq range overflows");
        let mut short = vec![1u8; 13];
        short.push(200);
        assert_eq!(meta(&short), None, "boot id runs past the end");
    }
}
