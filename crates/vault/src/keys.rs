//! Where one-time-pad and MAC key comes from: the party's own key manager node over ETSI GS QKD
//! 014. The master side of a transfer calls `enc_keys` for the peer's SAE; the slave side calls
//! `dec_keys` with the key IDs the master sent along. [`KeySupply`] is that pair of calls, so the
//! vault logic runs unchanged over the real network (the CLI implements it with the ETSI 014
//! client) and over [`MemoryKms`] in tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kagi_keymat::Key;
use rand_core::RngCore;
use uuid::Uuid;

use crate::error::{Result, VaultError};

/// Key material with the IDs the peer needs to fetch the same bytes.
#[derive(Debug)]
pub struct KeyBatch {
    /// Key IDs, in order.
    pub ids: Vec<Uuid>,
    /// The keys' bytes concatenated in ID order (may be longer than requested).
    pub key: Key,
}

/// One party's access to its key manager node.
pub trait KeySupply {
    /// This party's SAE ID.
    fn sae(&self) -> &str;
    /// New keys shared with `peer_sae`, at least `bytes` bytes in total (master side).
    fn enc_keys(&mut self, peer_sae: &str, bytes: usize) -> Result<KeyBatch>;
    /// The keys `master_sae` obtained for this SAE, by ID, concatenated (slave side).
    fn dec_keys(&mut self, master_sae: &str, ids: &[Uuid]) -> Result<Key>;
    /// Bytes of key this party has had made as the sender (`enc_keys`). Each transfer's key is
    /// counted once, at its sender, so summing over all parties gives the network's spend.
    fn key_bytes_used(&self) -> u64;
}

#[derive(Default)]
struct Pool {
    /// key ID → (master, slave, bytes)
    keys: HashMap<Uuid, (String, String, Vec<u8>)>,
    /// Bytes still available to hand out (None: unlimited).
    budget: Option<u64>,
}

/// An in-memory stand-in for the key management network, shared by all parties of a test: keys
/// are made on `enc_keys` and served once on `dec_keys`, like ETSI 014. An optional budget makes
/// it run dry, to test that callers fail cleanly when key runs short.
#[derive(Clone)]
pub struct MemoryKms {
    pool: Arc<Mutex<Pool>>,
    key_len: usize,
}

impl MemoryKms {
    /// A key network handing out keys of `key_len` bytes (at most `budget` bytes, if given).
    pub fn new(key_len: usize, budget: Option<u64>) -> Self {
        let pool = Pool {
            budget,
            ..Default::default()
        };
        Self {
            pool: Arc::new(Mutex::new(pool)),
            key_len: key_len.max(1),
        }
    }

    /// The handle of party `sae`.
    pub fn party(&self, sae: &str) -> MemoryKeySupply {
        MemoryKeySupply {
            kms: self.clone(),
            sae: sae.to_string(),
            used: 0,
        }
    }
}

/// One party's view of a [`MemoryKms`].
pub struct MemoryKeySupply {
    kms: MemoryKms,
    sae: String,
    used: u64,
}

impl KeySupply for MemoryKeySupply {
    fn sae(&self) -> &str {
        &self.sae
    }

    fn enc_keys(&mut self, peer_sae: &str, bytes: usize) -> Result<KeyBatch> {
        let n = bytes.div_ceil(self.kms.key_len);
        let total = (n * self.kms.key_len) as u64;
        let mut pool = self
            .kms
            .pool
            .lock()
            .map_err(|_| VaultError::Keys("poisoned".into()))?;
        if let Some(b) = pool.budget {
            if b < total {
                return Err(VaultError::KeyShortage {
                    needed: total,
                    available: b,
                });
            }
            pool.budget = Some(b - total);
        }
        let mut ids = Vec::with_capacity(n);
        let mut key = Key::zeroed(n * self.kms.key_len);
        rand_core::OsRng.fill_bytes(key.expose_mut());
        for (i, chunk) in key.expose().chunks(self.kms.key_len).enumerate() {
            let id = Uuid::new_v4();
            pool.keys
                .insert(id, (self.sae.clone(), peer_sae.to_string(), chunk.to_vec()));
            ids.push(id);
            let _ = i;
        }
        self.used += total;
        Ok(KeyBatch { ids, key })
    }

    fn dec_keys(&mut self, master_sae: &str, ids: &[Uuid]) -> Result<Key> {
        let mut pool = self
            .kms
            .pool
            .lock()
            .map_err(|_| VaultError::Keys("poisoned".into()))?;
        let mut out = Key::default();
        for id in ids {
            let ok =
                matches!(pool.keys.get(id), Some((m, s, _)) if m == master_sae && *s == self.sae);
            if !ok {
                return Err(VaultError::Keys(format!(
                    "key {id} is not available to {}",
                    self.sae
                )));
            }
        }
        for id in ids {
            if let Some((_, _, bytes)) = pool.keys.remove(id) {
                out.extend_from(&Key::from_vec(bytes));
            }
        }
        Ok(out)
    }

    fn key_bytes_used(&self) -> u64 {
        self.used
    }
}
