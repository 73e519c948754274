//! Origin authentication of link-state adverts: the origin signs each advert, every receiver
//! verifies the signature before it keeps or floods the advert on.
//!
//! The core has no keys and no cryptography of its own: the driver injects an [`AdvertAuth`]
//! through [`KmConfig::advert_auth`](crate::KmConfig::advert_auth). `kagi-node` gives it ML-DSA-65
//! keys (one per node, every node's public key in a file the operator distributes); the
//! simulator a cheap keyed hash with a secret per node. Without one (`None`), adverts go
//! unsigned and are accepted unsigned: a transit node can then forge or alter any origin's
//! advert, limited only by the pessimistic combination of a link's two ends' claims.
//!
//! The signed bytes ([`signed_bytes`]) are domain-separated and cover everything the advert
//! says: origin, run, seq and every link entry.

use crate::msgs::{LinkAdvert, NodeId};

/// Domain separation of advert signatures: no other kagi signature covers bytes that start so.
pub const ADVERT_DOMAIN: &str = "kagi link-state advert v1";

/// Signing an advert failed (the signer's fault, not a peer's).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot sign the link-state advert: {0}")]
pub struct AdvertSignError(pub String);

/// Signs this node's adverts and checks other origins' signatures. Given to the core at
/// construction ([`KmConfig::advert_auth`](crate::KmConfig::advert_auth)); called once per own
/// advert and at most once per received advert that is newer than the one held for its origin.
pub trait AdvertAuth: Send + Sync + std::fmt::Debug {
    /// A signature over `bytes` (from [`signed_bytes`]) by this node's key.
    fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, AdvertSignError>;

    /// Whether `sig` is `origin`'s signature over `bytes`. False for an origin whose key is not
    /// known (never an error: a peer's bad input only drops its advert).
    fn verify(&self, origin: &str, bytes: &[u8], sig: &[u8]) -> bool;
}

/// The bytes an advert's signature covers: the domain, then origin, run, seq and links in the
/// peer codec's encoding (length-prefixed, so no two adverts share them).
pub fn signed_bytes(origin: &NodeId, run: u64, seq: u64, links: &[LinkAdvert]) -> Vec<u8> {
    postcard::to_allocvec(&(ADVERT_DOMAIN, origin, run, seq, links)).expect("adverts always encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_bytes_cover_every_field() {
        let l = |peer: &str, up| LinkAdvert {
            peer: peer.into(),
            up,
            rate_bps: 1,
            tx_bytes: 2,
            rx_bytes: 3,
        };
        let o = "a".to_string();
        let base = signed_bytes(&NodeId::from(&o), 1, 2, &[l("b", true)]);
        assert!(base.starts_with(&postcard::to_allocvec(&ADVERT_DOMAIN).unwrap()));
        for other in [
            signed_bytes(&NodeId::from("b"), 1, 2, &[l("b", true)]),
            signed_bytes(&NodeId::from(&o), 2, 2, &[l("b", true)]),
            signed_bytes(&NodeId::from(&o), 1, 3, &[l("b", true)]),
            signed_bytes(&NodeId::from(&o), 1, 2, &[l("b", false)]),
            signed_bytes(&NodeId::from(&o), 1, 2, &[l("c", true)]),
            signed_bytes(&NodeId::from(&o), 1, 2, &[l("b", true), l("c", true)]),
            signed_bytes(&NodeId::from(&o), 1, 2, &[]),
        ] {
            assert_ne!(other, base);
        }
    }
}
