//! The per-link secret of a simulated link: what stands in for the randomness a real QKD device
//! pair shares through its quantum channel (and, for photon links, the pre-shared authentication
//! key installed out of band).
//!
//! `kagi up` draws 32 random bytes per link and seals them into the stores of the link's two
//! nodes only ([`crate::seal::links`]); nothing in the shared topology file lets anyone else
//! compute a link's key stream. Every value a simulated link needs (block bytes, the photon
//! simulator's seed, the authentication bootstrap) is HMAC-SHA256 of the secret and a label, so
//! knowing one derived value reveals neither the secret nor another value.
//!
//! A topology may instead say `insecure_demo_links = true`: links without a provisioned secret
//! then derive one from the topology's public seed ([`LinkSecret::insecure_demo`]), and the node
//! warns at start.

use aws_lc_rs::hmac;
use kagi_control::{LinkSpec, Topology};
use kagi_keymat::Key;
use rand::RngCore;
use zeroize::Zeroizing;

/// Bytes of a link secret.
pub const LEN: usize = 32;

/// A link's secret, shared by its two ends only. Zeroized on drop, redacted in Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkSecret(Key);

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(<redacted>)")
    }
}

impl LinkSecret {
    /// A fresh random secret from the OS.
    pub fn generate() -> Self {
        let mut k = Key::zeroed(LEN);
        rand::rngs::OsRng.fill_bytes(k.expose_mut());
        Self(k)
    }

    /// The secret from its bytes (a sealed store's record).
    ///
    /// # Errors
    /// `bytes` is not [`LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BadLength> {
        if bytes.len() != LEN {
            return Err(BadLength(bytes.len()));
        }
        Ok(Self(Key::from_slice(bytes)))
    }

    /// The secret's bytes, to seal them into a store.
    pub fn expose(&self) -> &[u8] {
        self.0.expose()
    }

    /// INSECURE: a secret computed from the topology's public link seed, so that anyone who
    /// holds the topology file computes the same one. Only for topologies that say
    /// `insecure_demo_links = true`.
    pub fn insecure_demo(topo: &Topology, spec: &LinkSpec) -> Self {
        let mut k = Key::zeroed(LEN);
        let s = k.expose_mut();
        s[..8].copy_from_slice(&topo.link_seed(spec).to_le_bytes());
        s[8..].copy_from_slice(b"kagi-insecure-demo-link!");
        Self(k)
    }

    /// HMAC-SHA256(secret, label ‖ n): the 32-byte value `label` number `n` of this link.
    pub fn derive(&self, label: &[u8], n: u64) -> Zeroizing<[u8; 32]> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.0.expose());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(b"kagi-link-secret-v1\0");
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(&n.to_le_bytes());
        let tag = ctx.sign();
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// A link secret of the wrong length.
#[derive(Debug, thiserror::Error)]
#[error("a link secret is {LEN} bytes, not {0}")]
pub struct BadLength(pub usize);

/// Why a node cannot key one of its simulated links.
#[derive(Debug, thiserror::Error)]
#[error(
    "link {a}-{b}: this node's sealed store holds no per-link secret for it, and simulated links \
     do not derive key from the public topology; provision one with `kagi up` (it gives each \
     link's secret to its two nodes only), or, for a throw-away demo, set \
     `insecure_demo_links = true` in the topology (then anyone holding the topology file can \
     compute every link key)"
)]
pub struct MissingSecret {
    /// One end of the link.
    pub a: String,
    /// The other end.
    pub b: String,
}

/// The secret for `spec`: the provisioned one, or, only where the topology allows insecure demo
/// links, one derived from the public seed.
///
/// # Errors
/// No provisioned secret and the topology does not allow demo links.
pub fn for_link(
    topo: &Topology,
    spec: &LinkSpec,
    provisioned: Option<LinkSecret>,
) -> Result<LinkSecret, MissingSecret> {
    match provisioned {
        Some(s) => Ok(s),
        None if topo.insecure_demo_links => Ok(LinkSecret::insecure_demo(topo, spec)),
        None => Err(MissingSecret {
            a: spec.a.clone(),
            b: spec.b.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_keyed_labelled_and_numbered() {
        let s = LinkSecret::generate();
        assert_eq!(*s.derive(b"block", 1), *s.clone().derive(b"block", 1));
        assert_ne!(*s.derive(b"block", 1), *s.derive(b"block", 2));
        assert_ne!(*s.derive(b"block", 1), *s.derive(b"other", 1));
        assert_ne!(
            *s.derive(b"block", 1),
            *LinkSecret::generate().derive(b"block", 1)
        );
        assert_eq!(format!("{s:?}"), "LinkSecret(<redacted>)");
        assert!(LinkSecret::from_bytes(&[0; 31]).is_err());
    }

    #[test]
    fn without_a_secret_only_a_demo_topology_keys_a_link() {
        let mut t = kagi_control::builtin::tokyo();
        let l = t.links[0].clone();
        let e = for_link(&t, &l, None).unwrap_err().to_string();
        assert!(
            e.contains(&format!("link {}-{}", l.a, l.b))
                && e.contains("insecure_demo_links = true")
                && e.contains("kagi up"),
            "{e}"
        );
        t.insecure_demo_links = true;
        assert_eq!(
            for_link(&t, &l, None).unwrap(),
            LinkSecret::insecure_demo(&t, &l)
        );
        let s = LinkSecret::generate();
        assert_eq!(for_link(&t, &l, Some(s.clone())).unwrap(), s);
    }
}
