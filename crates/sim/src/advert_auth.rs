//! Cheap advert "signatures" for the simulator: a keyed hash with a secret per node.
//!
//! The simulator drives the same core as `kagi-node`, so it needs an
//! [`AdvertAuth`](kagi_km::AdvertAuth) too, but ML-DSA would make 100-node runs slow. This
//! stand-in keeps what the core relies on: an honest node's adverts verify, and anything that
//! does not hold the origin's secret (the hostile node of the chaos test holds none of the
//! honest nodes') cannot make a tag that verifies, so a forged or altered advert is dropped
//! exactly where a real signature would drop it. It is not a signature (every verifier holds
//! every secret) and not for use outside the simulator. It draws nothing from the simulator's
//! RNGs, so runs keep their numbers.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;

use kagi_km::{AdvertAuth, AdvertSignError};

/// Every node's secret (derived from the run's seed and the node ID).
pub type Secrets = Arc<BTreeMap<String, u64>>;

/// The secrets of `nodes` for a run with `seed`.
pub fn secrets<'a>(seed: u64, nodes: impl IntoIterator<Item = &'a str>) -> Secrets {
    Arc::new(
        nodes
            .into_iter()
            .map(|n| {
                let mut h = DefaultHasher::new();
                h.write(b"kagi-sim advert secret");
                h.write_u64(seed);
                h.write(n.as_bytes());
                (n.to_string(), h.finish())
            })
            .collect(),
    )
}

/// One node's signer and verifier.
#[derive(Debug, Clone)]
pub struct SimAdvertAuth {
    me: String,
    secrets: Secrets,
}

impl SimAdvertAuth {
    /// Node `me` of a run whose secrets are `secrets`.
    pub fn new(me: &str, secrets: Secrets) -> Self {
        Self {
            me: me.to_string(),
            secrets,
        }
    }
}

/// A 16-byte tag over `bytes` under `secret` (SipHash, keyed by prefix, twice).
fn tag(secret: u64, bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_mut(8).enumerate() {
        let mut h = DefaultHasher::new();
        h.write_u64(secret);
        h.write_u8(i as u8);
        h.write(bytes);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl AdvertAuth for SimAdvertAuth {
    fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, AdvertSignError> {
        let s = self
            .secrets
            .get(&self.me)
            .ok_or_else(|| AdvertSignError(format!("no secret for {}", self.me)))?;
        Ok(tag(*s, bytes).to_vec())
    }

    fn verify(&self, origin: &str, bytes: &[u8], sig: &[u8]) -> bool {
        self.secrets
            .get(origin)
            .is_some_and(|s| tag(*s, bytes).as_slice() == sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_under_their_origins_secret() {
        let s = secrets(7, ["a", "b"]);
        let a = SimAdvertAuth::new("a", s.clone());
        let b = SimAdvertAuth::new("b", s);
        let sig = a.sign(b"advert").unwrap();
        assert!(b.verify("a", b"advert", &sig));
        assert!(!b.verify("b", b"advert", &sig));
        assert!(!b.verify("a", b"advers", &sig));
        assert!(!b.verify("x", b"advert", &sig));
        assert!(!b.verify("a", b"advert", &sig[..15]));
        // Another run, other secrets.
        let other = SimAdvertAuth::new("a", secrets(8, ["a"]));
        assert_ne!(other.sign(b"advert").unwrap(), sig);
    }
}
