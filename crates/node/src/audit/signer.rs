//! The node's ML-DSA-65 audit signing key (FIPS 204, aws-lc-rs).
//!
//! The private key lives only inside the sealed key store (`seal_meta`, sealed with the store's
//! data key, so it needs the KEK to read); the public key is written next to the trail as
//! `<node>-audit.pub` (base64 of the raw FIPS 204 encoding) for offline verification. Whoever
//! holds the disk without the KEK can read the trail but cannot sign a checkpoint.

use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{
    KeyPair, PqdsaKeyPair, UnparsedPublicKey, ML_DSA_65, ML_DSA_65_SIGNING,
};
use base64::Engine;
use rusqlite::Connection;
use zeroize::Zeroizing;

use super::AuditError;
use crate::seal::{meta_get, meta_put, Sealer};

/// Name of the signature algorithm written into checkpoints.
pub const ALG: &str = "ML-DSA-65";
/// Domain separation of checkpoint signatures.
const DOMAIN: &[u8] = b"kagi-audit-checkpoint-v1\0";
const META_NAME: &str = "audit_signing_key";

/// Where a node's audit public key is written.
pub fn public_key_path(data_dir: &Path, node_id: &str) -> PathBuf {
    data_dir.join(format!("{node_id}-audit.pub"))
}

/// The SHA-256 of a public key, hex: how checkpoints name the key that signed them.
pub fn fingerprint(public: &[u8]) -> String {
    super::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public).as_ref())
}

/// The node's audit signing key.
pub struct Signer {
    pair: PqdsaKeyPair,
    public: Vec<u8>,
    fpr: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key", &self.fpr).finish()
    }
}

impl Signer {
    /// A fresh key (tests and first start).
    pub fn generate() -> Result<Self, AuditError> {
        let pair = PqdsaKeyPair::generate(&ML_DSA_65_SIGNING)
            .map_err(|_| AuditError::Key("cannot generate an ML-DSA-65 key".into()))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: PqdsaKeyPair) -> Self {
        let public = pair.public_key().as_ref().to_vec();
        let fpr = fingerprint(&public);
        Self { pair, public, fpr }
    }

    /// Loads the key from the sealed store at `conn`, creating it on first use, and writes (or
    /// checks) the public key file at `pub_path`.
    pub fn load_or_create(
        conn: &Connection,
        sealer: &Sealer,
        pub_path: &Path,
    ) -> Result<Self, AuditError> {
        let me = match meta_get(conn, META_NAME).map_err(|e| AuditError::Key(e.to_string()))? {
            Some(sealed) => {
                let pkcs8 = sealer
                    .open("audit", "signing_key", &sealed)
                    .map_err(|e| AuditError::Key(e.to_string()))?;
                let pair = PqdsaKeyPair::from_pkcs8(&ML_DSA_65_SIGNING, &pkcs8)
                    .map_err(|e| AuditError::Key(format!("stored signing key: {e}")))?;
                Self::from_pair(pair)
            }
            None => {
                let me = Self::generate()?;
                let doc = me
                    .pair
                    .to_pkcs8v1()
                    .map_err(|_| AuditError::Key("cannot encode the signing key".into()))?;
                let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
                meta_put(
                    conn,
                    META_NAME,
                    &sealer.seal("audit", "signing_key", &pkcs8),
                )
                .map_err(|e| AuditError::Key(e.to_string()))?;
                me
            }
        };
        let text = base64::engine::general_purpose::STANDARD.encode(&me.public);
        match std::fs::read_to_string(pub_path) {
            Ok(old) if old.trim() == text => {}
            Ok(_) => {
                return Err(AuditError::Key(format!(
                    "{} does not hold this node's audit public key (it was replaced or the \
                     store's signing key changed); refusing to start",
                    pub_path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(pub_path, format!("{text}\n")).map_err(|e| AuditError::Io {
                    path: pub_path.display().to_string(),
                    err: e,
                })?
            }
            Err(e) => {
                return Err(AuditError::Io {
                    path: pub_path.display().to_string(),
                    err: e,
                })
            }
        }
        Ok(me)
    }

    /// The raw public key.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The public key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fpr
    }

    /// Signs a checkpoint body.
    pub fn sign(&self, body: &[u8]) -> Result<Vec<u8>, AuditError> {
        let mut sig = vec![0u8; ML_DSA_65_SIGNING.signature_len()];
        let mut msg = Vec::with_capacity(DOMAIN.len() + body.len());
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(body);
        let n = self
            .pair
            .sign(&msg, &mut sig)
            .map_err(|_| AuditError::Key("ML-DSA-65 signing failed".into()))?;
        sig.truncate(n);
        Ok(sig)
    }
}

/// Checks an ML-DSA-65 checkpoint signature by `public` over `body`.
pub fn verify(public: &[u8], body: &[u8], sig: &[u8]) -> bool {
    let mut msg = Vec::with_capacity(DOMAIN.len() + body.len());
    msg.extend_from_slice(DOMAIN);
    msg.extend_from_slice(body);
    UnparsedPublicKey::new(&ML_DSA_65, public)
        .verify(&msg, sig)
        .is_ok()
}

/// Reads a public key file written by [`Signer::load_or_create`].
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuditError::Io {
        path: path.display().to_string(),
        err: e,
    })?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| AuditError::Key(format!("{}: not base64", path.display())))
}
