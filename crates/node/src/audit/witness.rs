//! Neighbours witness each other's checkpoints.
//!
//! After a checkpoint is durable the node sends the checkpoint line and its public key to each
//! neighbour over the peer channel (mutual TLS, so the sender is authenticated). The neighbour
//! checks that the line is the sender's, that the key matches the fingerprint in the line and that
//! the ML-DSA-65 signature verifies, then records an `audit.witness` entry in its own trail
//! (`seq=… hash=… key=…`), which its own next checkpoint signs: a countersignature. `kagi audit
//! verify` over a data directory compares every node's trail with what its neighbours witnessed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{line_hash, signer, AuditTrail, Entry, Event};

/// The event a witnessed checkpoint is recorded as.
pub const EVENT: &str = "audit.witness";
/// Largest witness frame accepted (a line with a 3,309-byte signature, and a 1,952-byte key,
/// both base64).
pub const MAX_FRAME: usize = 16 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    line: String,
    public_key: String,
}

/// The frame that carries checkpoint `line` signed by `public` to a neighbour.
pub fn frame(line: &str, public: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&Frame {
        line: line.to_owned(),
        public_key: base64::engine::general_purpose::STANDARD.encode(public),
    })
    .unwrap_or_default()
}

/// Receives neighbours' checkpoints into this node's trail.
pub struct Witness {
    trail: Arc<AuditTrail>,
    /// Key fingerprint first seen per neighbour in this process.
    pins: Mutex<BTreeMap<String, String>>,
}

impl Witness {
    /// A witness writing into `trail`.
    pub fn new(trail: Arc<AuditTrail>) -> Self {
        Self {
            trail,
            pins: Mutex::new(BTreeMap::new()),
        }
    }

    /// Checks and records a checkpoint frame sent by `from` (an authenticated peer). Returns
    /// whether it was accepted; a refused frame is recorded as refused.
    pub fn receive(&self, from: &str, payload: &[u8]) -> bool {
        match self.check(from, payload) {
            Ok((seq, hash, key)) => {
                let detail = format!("seq={seq} hash={hash} key={key}");
                self.trail
                    .record_quiet(Event {
                        event: EVENT,
                        actor: from,
                        target: from,
                        outcome: "ok",
                        detail: &detail,
                    })
                    .is_ok()
            }
            Err(why) => {
                tracing::warn!(%from, %why, "refused a neighbour's audit checkpoint");
                let _ = self.trail.record(Event {
                    event: EVENT,
                    actor: from,
                    target: from,
                    outcome: "refused",
                    detail: &why,
                });
                false
            }
        }
    }

    fn check(&self, from: &str, payload: &[u8]) -> Result<(u64, String, String), String> {
        if payload.len() > MAX_FRAME {
            return Err("frame too large".into());
        }
        let f: Frame = serde_json::from_slice(payload).map_err(|e| format!("bad frame: {e}"))?;
        let public = base64::engine::general_purpose::STANDARD
            .decode(&f.public_key)
            .map_err(|_| "public key is not base64".to_string())?;
        let e: Entry = serde_json::from_str(&f.line).map_err(|e| format!("bad line: {e}"))?;
        if e.node != from {
            return Err(format!("checkpoint of {:?} sent by {from}", e.node));
        }
        super::verify::checkpoint_signature_ok(&e, &public)?;
        let key = signer::fingerprint(&public);
        if let Ok(mut pins) = self.pins.lock() {
            let pinned = pins.entry(from.to_owned()).or_insert_with(|| key.clone());
            if *pinned != key {
                return Err(format!(
                    "signing key changed from {pinned} to {key} without a restart"
                ));
            }
        }
        Ok((e.seq, line_hash(&f.line), key))
    }
}
