//! The signed request a node downloads a model file with (docs/security.md):
//! the node signs the request with its enrolled Ed25519 key, the controller
//! checks the signature and that it was signed within a window of its own
//! clock. A fetch changes nothing, so a replay within the window only sends
//! the same public-to-the-node bytes again; the window bounds that.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;

use crate::v1::FetchModelFileRequest;

/// Domain separation from every other signature of the fleet.
const DOMAIN: &[u8] = b"fleet.v1.fetch";

/// How far a request's signing time may be from the controller's clock.
pub const FETCH_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Why a fetch request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchRefused {
    #[error("the signature does not verify with the node's key")]
    BadSignature,
    #[error("signed {0} s away from the controller's clock (at most 600 s): set the node's clock (NTP)")]
    Stale(i64),
}

fn covered(req: &FetchModelFileRequest) -> Vec<u8> {
    let unsigned = FetchModelFileRequest { signature: Vec::new(), ..req.clone() };
    let mut b = DOMAIN.to_vec();
    unsigned.encode(&mut b).unwrap_or_default();
    b
}

/// Signs `req` (its `signed_at_unix_ms` set by the caller) in place.
pub fn sign_fetch(key: &SigningKey, req: &mut FetchModelFileRequest) {
    req.signature = key.sign(&covered(req)).to_bytes().to_vec();
}

/// Checks `req`'s signature with the node's key and its age against `now_ms`.
///
/// # Errors
/// A signature that does not verify, or one made outside the window.
pub fn verify_fetch(key: &VerifyingKey, req: &FetchModelFileRequest, now_ms: i64) -> Result<(), FetchRefused> {
    let sig: [u8; 64] = req.signature.as_slice().try_into().map_err(|_| FetchRefused::BadSignature)?;
    key.verify(&covered(req), &Signature::from_bytes(&sig)).map_err(|_| FetchRefused::BadSignature)?;
    let skew = now_ms.saturating_sub(req.signed_at_unix_ms);
    if skew.abs() > FETCH_WINDOW_MS {
        return Err(FetchRefused::Stale(skew / 1000));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_fresh_requests_pass_and_nothing_else() {
        let key = crate::signing::signing_key(&[7; 32]);
        let mut req = FetchModelFileRequest {
            node_id: "n1".into(),
            name: "m".into(),
            version: "1".into(),
            path: "w.bin".into(),
            offset: 10,
            signed_at_unix_ms: 1_000_000,
            signature: vec![],
        };
        sign_fetch(&key, &mut req);
        let public = key.verifying_key();
        assert_eq!(verify_fetch(&public, &req, 1_000_500), Ok(()));
        assert_eq!(verify_fetch(&public, &req, 1_000_000 + FETCH_WINDOW_MS + 1000), Err(FetchRefused::Stale(601)));
        let mut moved = req.clone();
        moved.offset = 0;
        assert_eq!(verify_fetch(&public, &moved, 1_000_000), Err(FetchRefused::BadSignature));
        let other = crate::signing::signing_key(&[8; 32]).verifying_key();
        assert_eq!(verify_fetch(&other, &req, 1_000_000), Err(FetchRefused::BadSignature));
        req.signature.pop();
        assert_eq!(verify_fetch(&public, &req, 1_000_000), Err(FetchRefused::BadSignature));
    }
}
