//! ML-DSA-65 signatures on link-state adverts (FIPS 204, aws-lc-rs): the node's
//! [`AdvertAuth`].
//!
//! Each node has its own advert signing key (a PKCS#8 PEM file, mode 0600, that `kagi pki
//! advert-keys` and `kagi up` issue as `pki/nodes/<node>-advert-key.pem`), separate from its TLS
//! and audit keys. Every node reads the same file of all nodes' public keys
//! (`pki/advert-keys.toml`, [`PublicKeys`]); `node.toml`'s `[link_state]` names both. An advert
//! verifies only under the key that file gives its origin, so a transit node cannot forge or
//! alter another node's advert. The file is trusted like the topology and the CA certificate:
//! whoever can replace it on a node can make that node accept their adverts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::{KeyPair, ParsedPublicKey, PqdsaKeyPair, ML_DSA_65, ML_DSA_65_SIGNING};
use base64::Engine;
use kagi_km::{AdvertAuth, AdvertSignError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The advert signature algorithm (named in the public key file).
pub const ALG: &str = "ML-DSA-65";

/// Why advert keys could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertKeyError {
    /// A key file is unreadable or malformed.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The keys do not fit the network (a node without a key, a key that is not this node's).
    #[error("link-state advert keys: {0}")]
    Mismatch(String),
    /// The library refused to make or use a key.
    #[error("link-state advert key: {0}")]
    Crypto(&'static str),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> AdvertKeyError {
    AdvertKeyError::File {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// The file of every node's advert public key: `algorithm = "ML-DSA-65"` and a `[keys]` table
/// of node ID → base64 of the raw FIPS 204 public key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeys {
    /// Signature algorithm; only [`ALG`].
    pub algorithm: String,
    /// Node ID → base64 public key.
    pub keys: BTreeMap<String, String>,
}

impl PublicKeys {
    /// The file for these raw public keys.
    pub fn new(keys: &BTreeMap<String, Vec<u8>>) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            algorithm: ALG.into(),
            keys: keys
                .iter()
                .map(|(n, k)| (n.clone(), b64.encode(k)))
                .collect(),
        }
    }

    /// Reads the file at `path`; the raw public key of each node.
    pub fn read(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, AdvertKeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        let f: PublicKeys = toml::from_str(&text).map_err(|e| file_err(path, e))?;
        if f.algorithm != ALG {
            return Err(file_err(
                path,
                format!("algorithm {:?}: only {ALG:?} is supported", f.algorithm),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        f.keys
            .into_iter()
            .map(|(n, k)| match b64.decode(k.trim()) {
                Ok(raw) => Ok((n, raw)),
                Err(_) => Err(file_err(path, format!("key of {n}: not base64"))),
            })
            .collect()
    }

    /// The file's text (TOML).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// A fresh advert signing key: its PKCS#8 PEM (secret) and raw public key.
pub fn generate() -> Result<(Zeroizing<String>, Vec<u8>), AdvertKeyError> {
    let pair = PqdsaKeyPair::generate(&ML_DSA_65_SIGNING)
        .map_err(|_| AdvertKeyError::Crypto("cannot generate an ML-DSA-65 key"))?;
    let doc = pair
        .to_pkcs8v1()
        .map_err(|_| AdvertKeyError::Crypto("cannot encode the ML-DSA-65 key"))?;
    let der = Zeroizing::new(doc.as_ref().to_vec());
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*der));
    let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, pair.public_key().as_ref().to_vec()))
}

/// Reads an advert signing key (PKCS#8 PEM) written by [`generate`].
pub fn read_signing_key(path: &Path) -> Result<PqdsaKeyPair, AdvertKeyError> {
    let pem = Zeroizing::new(std::fs::read(path).map_err(|e| file_err(path, e))?);
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|e| file_err(path, format!("not a PKCS#8 PEM private key: {e}")))?;
    PqdsaKeyPair::from_pkcs8(&ML_DSA_65_SIGNING, der.secret_pkcs8_der())
        .map_err(|e| file_err(path, format!("not an ML-DSA-65 key: {e}")))
}

/// The raw public key of a signing key read by [`read_signing_key`].
pub fn public_key(pair: &PqdsaKeyPair) -> Vec<u8> {
    pair.public_key().as_ref().to_vec()
}

/// Signs this node's adverts with its ML-DSA-65 key and verifies every other node's with the
/// key the public key file gives it.
pub struct MlDsaAdvertAuth {
    pair: PqdsaKeyPair,
    keys: BTreeMap<String, ParsedPublicKey>,
}

impl std::fmt::Debug for MlDsaAdvertAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlDsaAdvertAuth")
            .field("alg", &ALG)
            .field("nodes", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl MlDsaAdvertAuth {
    /// Node `me` signing with `pair`, verifying with `keys` (raw public keys). Every node of
    /// `nodes` must have a key, and `me`'s must be `pair`'s: a file that does not match the
    /// network is refused rather than leaving some node's adverts unverifiable.
    pub fn new<'a>(
        me: &str,
        pair: PqdsaKeyPair,
        keys: &BTreeMap<String, Vec<u8>>,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, AdvertKeyError> {
        let missing: Vec<&str> = nodes
            .into_iter()
            .filter(|n| !keys.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(AdvertKeyError::Mismatch(format!(
                "no public key for node(s) {} of the topology",
                missing.join(", ")
            )));
        }
        if keys.get(me).map(Vec::as_slice) != Some(pair.public_key().as_ref()) {
            return Err(AdvertKeyError::Mismatch(format!(
                "the public key file's key for {me} is not this node's signing key (the file or \
                 the key was replaced; reissue with `kagi pki advert-keys`)"
            )));
        }
        let mut parsed = BTreeMap::new();
        for (n, k) in keys {
            let p = ParsedPublicKey::new(&ML_DSA_65, k).map_err(|_| {
                AdvertKeyError::Mismatch(format!("the key of {n} is not an ML-DSA-65 public key"))
            })?;
            parsed.insert(n.clone(), p);
        }
        Ok(Self { pair, keys: parsed })
    }

    /// Loads `[link_state]`'s files for node `me` of a network of `nodes`.
    pub fn load<'a>(
        me: &str,
        signing_key: &Path,
        public_keys: &Path,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, AdvertKeyError> {
        let pair = read_signing_key(signing_key)?;
        let keys = PublicKeys::read(public_keys)?;
        Self::new(me, pair, &keys, nodes)
    }
}

impl AdvertAuth for MlDsaAdvertAuth {
    fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, AdvertSignError> {
        let mut sig = vec![0u8; ML_DSA_65_SIGNING.signature_len()];
        let n = self
            .pair
            .sign(bytes, &mut sig)
            .map_err(|_| AdvertSignError("ML-DSA-65 signing failed".into()))?;
        sig.truncate(n);
        Ok(sig)
    }

    fn verify(&self, origin: &str, bytes: &[u8], sig: &[u8]) -> bool {
        self.keys
            .get(origin)
            .is_some_and(|k| k.verify_sig(bytes, sig).is_ok())
    }
}

/// The node's advert signer and verifier from its config (`None` when `[link_state]` names no
/// keys: adverts then go unsigned, and the caller warns).
pub fn from_config(
    cfg: &crate::config::NodeConfig,
    topo: &kagi_control::Topology,
) -> Result<Option<Arc<dyn AdvertAuth>>, AdvertKeyError> {
    let ls = &cfg.link_state;
    let (Some(key), Some(keys)) = (&ls.signing_key, &ls.public_keys) else {
        return Ok(None);
    };
    let auth = MlDsaAdvertAuth::load(
        &cfg.node_id,
        key,
        keys,
        topo.nodes.iter().map(|n| n.id.as_str()),
    )?;
    Ok(Some(Arc::new(auth)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_km::advert_auth::signed_bytes;
    use kagi_km::{LinkAdvert, NodeId};

    fn pair_from(pem: &str) -> PqdsaKeyPair {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        PqdsaKeyPair::from_pkcs8(&ML_DSA_65_SIGNING, der.secret_pkcs8_der()).unwrap()
    }

    /// Two nodes with real ML-DSA-65 keys: each verifies the other's adverts; a signature under
    /// the wrong key, over altered bytes, truncated, or from an origin without a key is refused.
    #[test]
    fn ml_dsa_adverts_verify_only_under_their_origins_key() {
        let (pem_a, pub_a) = generate().unwrap();
        let (pem_b, pub_b) = generate().unwrap();
        let keys: BTreeMap<String, Vec<u8>> =
            [("a".to_string(), pub_a), ("b".to_string(), pub_b)].into();
        let a = MlDsaAdvertAuth::new("a", pair_from(&pem_a), &keys, ["a", "b"]).unwrap();
        let b = MlDsaAdvertAuth::new("b", pair_from(&pem_b), &keys, ["a", "b"]).unwrap();
        let links = vec![LinkAdvert {
            peer: "b".into(),
            up: true,
            rate_bps: 1000,
            tx_bytes: 4096,
            rx_bytes: 4096,
        }];
        let bytes = signed_bytes(&NodeId::from(&"a".to_string()), 3, 7, &links);
        let sig = a.sign(&bytes).unwrap();
        assert_eq!(sig.len(), 3309, "ML-DSA-65 signatures are 3309 bytes");
        assert!(b.verify("a", &bytes, &sig));
        assert!(a.verify("a", &bytes, &sig));
        // Signed by a, claimed as b's.
        assert!(!b.verify("b", &bytes, &sig));
        // b signs a's advert: not a's key.
        assert!(!b.verify("a", &bytes, &b.sign(&bytes).unwrap()));
        // Altered: a link claimed better, another seq.
        let mut rich = links.clone();
        rich[0].rx_bytes = 1 << 30;
        assert!(!b.verify(
            "a",
            &signed_bytes(&NodeId::from(&"a".to_string()), 3, 7, &rich),
            &sig
        ));
        assert!(!b.verify(
            "a",
            &signed_bytes(&NodeId::from(&"a".to_string()), 3, 8, &links),
            &sig
        ));
        let mut flipped = sig.clone();
        flipped[100] ^= 1;
        assert!(!b.verify("a", &bytes, &flipped));
        assert!(!b.verify("a", &bytes, &sig[..sig.len() - 1]));
        assert!(!b.verify("a", &bytes, &[]));
        assert!(!b.verify("x", &bytes, &sig));
    }

    /// What one advert costs to sign and to verify (a measurement, not a check): `cargo test
    /// --release -p kagi-node --lib advert_keys::tests::sign_and_verify_cost -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn sign_and_verify_cost() {
        let (pem, public) = generate().unwrap();
        let keys: BTreeMap<String, Vec<u8>> = [("a".to_string(), public)].into();
        let a = MlDsaAdvertAuth::new("a", pair_from(&pem), &keys, ["a"]).unwrap();
        // A node of degree 4, as most of japan24's.
        let links: Vec<LinkAdvert> = ["b", "c", "d", "e"]
            .iter()
            .map(|p| LinkAdvert {
                peer: NodeId::from(*p),
                up: true,
                rate_bps: 50_000,
                tx_bytes: 1 << 20,
                rx_bytes: 1 << 20,
            })
            .collect();
        let n = 2000;
        let t = std::time::Instant::now();
        let mut sigs = Vec::with_capacity(n);
        for seq in 0..n as u64 {
            let bytes = signed_bytes(&NodeId::from(&"a".to_string()), 1, seq, &links);
            sigs.push((bytes.clone(), a.sign(&bytes).unwrap()));
        }
        let sign = t.elapsed() / n as u32;
        let t = std::time::Instant::now();
        for (bytes, sig) in &sigs {
            assert!(a.verify("a", bytes, sig));
        }
        let verify = t.elapsed() / n as u32;
        eprintln!(
            "ML-DSA-65 advert ({} signed bytes): sign {sign:?}, verify {verify:?}, signature {} \
             bytes",
            sigs[0].0.len(),
            sigs[0].1.len()
        );
    }

    /// The key files: PEM and public key file round trip; a file missing a node, or whose key
    /// for this node is another key, is refused.
    #[test]
    fn key_files_round_trip_and_must_match_the_network() {
        let dir = crate::tls::tests::tempdir::Dir::new("advert-keys");
        let (pem_a, pub_a) = generate().unwrap();
        let (_, pub_b) = generate().unwrap();
        let key_path = dir.path().join("a-advert-key.pem");
        std::fs::write(&key_path, pem_a.as_bytes()).unwrap();
        let pair = read_signing_key(&key_path).unwrap();
        assert_eq!(public_key(&pair), pub_a);
        let keys: BTreeMap<String, Vec<u8>> = [
            ("a".to_string(), pub_a.clone()),
            ("b".to_string(), pub_b.clone()),
        ]
        .into();
        let file = dir.path().join("advert-keys.toml");
        std::fs::write(&file, PublicKeys::new(&keys).to_toml()).unwrap();
        assert_eq!(PublicKeys::read(&file).unwrap(), keys);
        MlDsaAdvertAuth::load("a", &key_path, &file, ["a", "b"]).unwrap();
        let e = MlDsaAdvertAuth::load("a", &key_path, &file, ["a", "b", "c"]).unwrap_err();
        assert!(e.to_string().contains("node(s) c"), "{e}");
        let e = MlDsaAdvertAuth::load("b", &key_path, &file, ["a", "b"]).unwrap_err();
        assert!(e.to_string().contains("not this node's"), "{e}");
        std::fs::write(&file, "algorithm = \"Ed25519\"\n[keys]\n").unwrap();
        assert!(PublicKeys::read(&file).is_err());
        std::fs::write(&key_path, "not a key").unwrap();
        assert!(read_signing_key(&key_path).is_err());
    }
}
