//! Where external key material lives. The proxy only ever rebuilds material and asks for
//! health; `kagi xks key` creates and destroys it. [`crate::vault_backend::VaultBackend`] keeps
//! it as (k, n) shares at kagi vault sites; [`MemoryBackend`] keeps it in this process, for tests
//! of the HTTP layer only.

use std::collections::HashMap;
use std::sync::Mutex;

use kagi_keymat::Key;

use crate::wire::FleetMember;

/// Why material could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The material no longer exists (revoked: shares destroyed).
    #[error("key material not found: {0}")]
    NotFound(String),
    /// Sites or the node did not answer, or key ran short.
    #[error("key manager unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What a created key cost and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The object holding the material.
    pub object: String,
    /// Shares needed to rebuild.
    pub k: u8,
    /// Shares stored.
    pub n: u8,
    /// Sites holding the shares.
    pub sites: Vec<String>,
    /// QKD key spent.
    pub qkd_key_bytes: u64,
}

/// A store of 256-bit keys. Methods block: the proxy calls them from `spawn_blocking`.
pub trait Backend: Send + Sync + 'static {
    /// Makes a new key for external key `id`.
    fn create(&self, id: &str) -> Result<Created, BackendError>;
    /// Rebuilds the material of `object` in memory.
    fn rebuild(&self, object: &str) -> Result<Key, BackendError>;
    /// Destroys `object` everywhere it can; returns the places it was destroyed.
    fn destroy(&self, object: &str) -> Result<Vec<String>, BackendError>;
    /// Deep health check of each member of the key manager (at most ten).
    fn health(&self) -> Vec<FleetMember>;
}

/// Keys in this process's memory (tests of the HTTP layer; never used by `kagi xks`).
#[derive(Default)]
pub struct MemoryBackend {
    keys: Mutex<HashMap<String, Key>>,
    /// Rebuild calls served (to test caching).
    pub rebuilds: std::sync::atomic::AtomicU64,
    /// When set, every call fails as unavailable.
    pub down: std::sync::atomic::AtomicBool,
}

impl Backend for MemoryBackend {
    fn create(&self, id: &str) -> Result<Created, BackendError> {
        let mut k = Key::zeroed(32);
        aws_lc_rs::rand::fill(k.expose_mut()).map_err(|_| BackendError::Other("rng".into()))?;
        let object = format!("mem-{id}");
        self.keys
            .lock()
            .map_err(|_| BackendError::Other("poisoned".into()))?
            .insert(object.clone(), k);
        Ok(Created {
            object,
            k: 1,
            n: 1,
            sites: vec!["memory".into()],
            qkd_key_bytes: 0,
        })
    }

    fn rebuild(&self, object: &str) -> Result<Key, BackendError> {
        use std::sync::atomic::Ordering;
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable(
                "memory backend marked down".into(),
            ));
        }
        self.rebuilds.fetch_add(1, Ordering::SeqCst);
        self.keys
            .lock()
            .map_err(|_| BackendError::Other("poisoned".into()))?
            .get(object)
            .map(|k| Key::from_slice(k.expose()))
            .ok_or_else(|| BackendError::NotFound(object.to_string()))
    }

    fn destroy(&self, object: &str) -> Result<Vec<String>, BackendError> {
        let gone = self
            .keys
            .lock()
            .map_err(|_| BackendError::Other("poisoned".into()))?
            .remove(object);
        Ok(gone.map(|_| vec!["memory".to_string()]).unwrap_or_default())
    }

    fn health(&self) -> Vec<FleetMember> {
        let down = self.down.load(std::sync::atomic::Ordering::SeqCst);
        vec![FleetMember {
            id: "memory".into(),
            model: "in-process test store".into(),
            health_status: if down { "UNAVAILABLE" } else { "ACTIVE" }.into(),
        }]
    }
}
