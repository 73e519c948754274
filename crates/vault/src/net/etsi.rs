//! [`KeySupply`] over ETSI GS QKD 014: a party's calls to its own node with its SAE certificate.
//!
//! When the node has too little key for a transfer (it answers 503), [`EtsiKeys::enc_keys`]
//! keeps asking for up to its `wait`, reporting progress, then fails with
//! [`VaultError::KeyShortage`]. Keys already obtained for that peer are kept (zeroized on drop)
//! and used first by the next transfer to the same peer, so waiting in several rounds — a site
//! answers 503 to its owner and the owner asks again — loses no key. It never substitutes
//! anything for missing key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kagi_keymat::Key;
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::etsi014::wire;
use tokio::runtime::Handle;
use uuid::Uuid;

use crate::error::{Result, VaultError};
use crate::keys::{KeyBatch, KeySupply};

/// Called with a line of progress while waiting for key.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Largest request for key (bytes): a node keeps a bounded end-to-end pool per peer and
/// refuses requests larger than what is ready; modest ones drain it as it refills.
const REQUEST_BYTES: usize = 16 * 1024;

/// One SAE's ETSI 014 access to its node. Its methods block on `handle`: call them from outside
/// the runtime's async context (a plain thread, or `spawn_blocking`) of a multi-thread runtime.
pub struct EtsiKeys {
    sae: String,
    client: Etsi014Client,
    handle: Handle,
    used: u64,
    wait: Duration,
    progress: Option<Progress>,
    /// Per peer: (min key bits, max key bits, max keys per request), from ETSI 014 status.
    limits: BTreeMap<String, (u64, u64, u64)>,
    /// Per peer: keys obtained for a transfer that then ran out of time; used first next time.
    stash: BTreeMap<String, (Vec<Uuid>, Key)>,
}

impl std::fmt::Debug for EtsiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtsiKeys")
            .field("sae", &self.sae)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl EtsiKeys {
    /// SAE `sae` at the node `etsi014_url`, with the network CA and its certificate and key.
    pub fn new(
        sae: &str,
        etsi014_url: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
        handle: Handle,
        wait: Duration,
    ) -> Result<Self> {
        let client = Etsi014Client::from_files(etsi014_url, ca, cert, key)
            .map_err(|e| VaultError::Keys(e.to_string()))?;
        Ok(Self {
            sae: sae.to_string(),
            client,
            handle,
            used: 0,
            wait,
            progress: None,
            limits: BTreeMap::new(),
            stash: BTreeMap::new(),
        })
    }

    /// Reports progress lines to `p` while waiting for key (every 5 s at most).
    pub fn with_progress(mut self, p: Progress) -> Self {
        self.progress = Some(p);
        self
    }

    /// Changes how long one transfer may wait for key.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    fn refused(e: ClientError) -> VaultError {
        VaultError::Keys(e.to_string())
    }

    fn limits(&mut self, peer: &str) -> Result<(u64, u64, u64)> {
        if let Some(l) = self.limits.get(peer) {
            return Ok(*l);
        }
        let st = self
            .handle
            .block_on(self.client.status(peer))
            .map_err(Self::refused)?;
        let l = (st.min_key_size, st.max_key_size, st.max_key_per_request);
        self.limits.insert(peer.to_string(), l);
        Ok(l)
    }
}

impl KeySupply for EtsiKeys {
    fn sae(&self) -> &str {
        &self.sae
    }

    fn enc_keys(&mut self, peer: &str, bytes: usize) -> Result<KeyBatch> {
        let (min_size, max_size, max_per_request) = self.limits(peer)?;
        let (mut ids, mut key) = self.stash.remove(peer).unwrap_or_default();
        let deadline = Instant::now() + self.wait;
        let started = Instant::now();
        let mut last_note = Instant::now();
        while key.len() < bytes {
            let missing = bytes - key.len();
            // Keys sized to what is missing (whole bytes, within the node's limits), so that
            // small transfers do not waste a large key.
            let max_bits = (max_size.min(8192) / 8 * 8).max(8);
            let min_bits = min_size.div_ceil(8) * 8;
            let size_bits = (missing as u64 * 8).clamp(min_bits.min(max_bits), max_bits);
            let key_len = (size_bits / 8).max(1) as usize;
            let number = missing
                .div_ceil(key_len)
                .min(max_per_request.max(1) as usize)
                .min((REQUEST_BYTES / key_len).max(1)) as u64;
            let req = wire::KeyRequest {
                number: Some(number),
                size: Some(size_bits),
                ..Default::default()
            };
            match self.handle.block_on(self.client.enc_keys(peer, &req)) {
                Ok(keys) => {
                    for k in keys {
                        ids.push(k.id);
                        key.extend_from(&k.key);
                    }
                }
                Err(ClientError::Refused { status: 503, .. }) => {
                    if Instant::now() >= deadline {
                        let available = key.len() as u64;
                        self.stash.insert(peer.to_string(), (ids, key));
                        return Err(VaultError::KeyShortage {
                            needed: bytes as u64,
                            available,
                        });
                    }
                    if last_note.elapsed() >= Duration::from_secs(5) {
                        if let Some(p) = &self.progress {
                            p(&format!(
                                "waiting for QKD key {} -> {peer}: {} of {} bytes after {:.0} s \
                                 (the node's pool is refilling)",
                                self.sae,
                                key.len(),
                                bytes,
                                started.elapsed().as_secs_f64()
                            ));
                        }
                        last_note = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    self.stash.insert(peer.to_string(), (ids, key));
                    return Err(Self::refused(e));
                }
            }
        }
        self.used += key.len() as u64;
        Ok(KeyBatch { ids, key })
    }

    fn dec_keys(&mut self, master: &str, ids: &[Uuid]) -> Result<Key> {
        let mut out = Key::default();
        for chunk in ids.chunks(256) {
            let keys = self
                .handle
                .block_on(self.client.dec_keys(master, chunk))
                .map_err(Self::refused)?;
            for id in chunk {
                let k = keys
                    .iter()
                    .find(|k| k.id == *id)
                    .ok_or_else(|| VaultError::Keys(format!("node did not return key {id}")))?;
                out.extend_from(&k.key);
            }
        }
        Ok(out)
    }

    fn key_bytes_used(&self) -> u64 {
        self.used
    }
}
