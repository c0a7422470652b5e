//! What an agent's spool holds, read from its files by a reader of its own,
//! written from the documented format (docs/spool.md), not with the agent's
//! spool code: the tests' expectations must not come from the code under test.
//!
//! A segment is a run of records `[len u32 LE][CRC32C(payload) u32 LE][payload]`;
//! a payload is `[1u8][first_seq u64 LE][samples u32 LE][boot_len u8][boot_id]`
//! followed by the `TelemetryBatch` as it goes on the wire. A segment is read up
//! to its first record that is cut short or fails its CRC: what a crash or bit
//! rot leaves readable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use fleet_proto::v1::TelemetryBatch;
use prost::Message;

/// Seqs per run (boot id) that the intact records of `spool_dir/segments` hold.
///
/// # Errors
/// When the directory cannot be read.
pub fn readable_seqs(spool_dir: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<u64>>> {
    let mut names: Vec<_> = std::fs::read_dir(spool_dir.join("segments"))
        .with_context(|| format!("reading {}", spool_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    names.sort();
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for path in names {
        let bytes = std::fs::read(&path)?;
        for batch in intact_batches(&bytes) {
            let seqs = batch.first_seq..batch.first_seq + batch.samples.len() as u64;
            out.entry(batch.boot_id).or_default().extend(seqs);
        }
    }
    Ok(out)
}

/// The batches of one segment's bytes, up to the first damaged record.
#[must_use]
pub fn intact_batches(mut bytes: &[u8]) -> Vec<TelemetryBatch> {
    let mut out = Vec::new();
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let Some(payload) = bytes.get(8..8 + len) else { break };
        if len == 0 || crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(batch) = batch_of(payload) else { break };
        out.push(batch);
        bytes = &bytes[8 + len..];
    }
    out
}

fn batch_of(payload: &[u8]) -> Option<TelemetryBatch> {
    const FIXED: usize = 1 + 8 + 4 + 1;
    if payload.len() < FIXED || payload[0] != 1 {
        return None;
    }
    let boot_len = payload[13] as usize;
    let wire = payload.get(FIXED + boot_len..)?;
    TelemetryBatch::decode(wire).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(batch: &TelemetryBatch) -> Vec<u8> {
        let mut payload = vec![1u8];
        payload.extend_from_slice(&batch.first_seq.to_le_bytes());
        payload.extend_from_slice(&u32::try_from(batch.samples.len()).unwrap().to_le_bytes());
        payload.push(u8::try_from(batch.boot_id.len()).unwrap());
        payload.extend_from_slice(batch.boot_id.as_bytes());
        payload.extend_from_slice(&batch.encode_to_vec());
        let mut r = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        r.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        r.extend_from_slice(&payload);
        r
    }

    #[test]
    fn reads_up_to_the_first_damaged_record() {
        let batch = |seq| TelemetryBatch {
            boot_id: "b".into(),
            first_seq: seq,
            samples: vec![Default::default(); 2],
            ..Default::default()
        };
        let mut bytes = [record(&batch(0)), record(&batch(2)), record(&batch(4))].concat();
        assert_eq!(intact_batches(&bytes).len(), 3);
        let second = record(&batch(0)).len() + 12;
        bytes[second] ^= 1;
        assert_eq!(intact_batches(&bytes).len(), 1, "a flipped byte ends the segment");
        assert_eq!(intact_batches(&bytes[..bytes.len() - 3]).len(), 1);
    }
}
