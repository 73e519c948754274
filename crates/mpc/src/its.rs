//! Information-theoretically secure channels: every message is one-time-padded with fresh QKD
//! key and carries a Wegman–Carter tag ([`kagi_keymat::its_mac`]), around any [`Transport`].
//!
//! The sender draws `32 + 8·len` bytes of key shared with the receiver from its own node
//! ([`PadSupply::enc`], ETSI GS QKD 014 `enc_keys` in a deployment): 32 bytes key the one-time
//! MAC, the rest is the pad. The frame carries the key IDs in the clear; the receiver fetches the
//! same bytes from its node by ID ([`PadSupply::dec`], `dec_keys`), checks the tag over header
//! and ciphertext, and only then decrypts. Every byte on the wire costs a byte of key, and the
//! transport counts it per neighbour ([`crate::LinkStats::key_bytes`]).
//!
//! Frame (64-bit words): `n_ids, len, id_0 (2 words) … id_{n−1}, ciphertext (len words),
//! tag (2 words)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kagi_keymat::its_mac::{Mac, MacKey, Tag, MAC_KEY_LEN};
use kagi_keymat::Key;
use zerocopy::IntoBytes;

use crate::error::{MpcError, Result};
use crate::transport::{LinkStats, Peer, Transport};

/// Opaque ID of a key (an ETSI 014 key UUID's 16 bytes).
pub type KeyId = [u8; 16];

/// Largest number of key IDs one frame may name (bounds what a peer can make us fetch).
pub const MAX_IDS: u64 = 1 << 20;

/// Where a party's one-time-pad key comes from: its own node, by ETSI 014.
pub trait PadSupply: Send {
    /// New key shared with neighbour `to`, at least `bytes` long, with the IDs the neighbour
    /// needs (master side).
    fn enc(&mut self, to: Peer, bytes: usize) -> Result<(Vec<KeyId>, Key)>;
    /// The key `from` obtained for us under `ids`, concatenated (slave side; each key is served
    /// once).
    fn dec(&mut self, from: Peer, ids: &[KeyId]) -> Result<Key>;
}

/// A transport whose messages are one-time-padded and tagged (see the module docs).
pub struct ItsTransport<T, P> {
    inner: T,
    pads: P,
    key_bytes: [u64; 2],
}

impl<T: Transport, P: PadSupply> ItsTransport<T, P> {
    /// Wraps `inner`, drawing key from `pads`.
    pub fn new(inner: T, pads: P) -> Self {
        Self {
            inner,
            pads,
            key_bytes: [0; 2],
        }
    }
}

impl<T: Transport, P: PadSupply> Transport for ItsTransport<T, P> {
    fn send(&mut self, to: Peer, msg: Vec<u64>) -> Result<()> {
        let need = MAC_KEY_LEN + msg.len() * 8;
        let (ids, mut key) = self.pads.enc(to, need)?;
        if key.len() < need {
            return Err(MpcError::Keys("key supply returned too little key".into()));
        }
        self.key_bytes[LinkStats::slot(to)] += key.len() as u64;
        let mac_key = key.take_front(MAC_KEY_LEN);
        let mut frame = Vec::with_capacity(2 + 2 * ids.len() + msg.len() + 2);
        frame.push(ids.len() as u64);
        frame.push(msg.len() as u64);
        for id in &ids {
            frame.push(u64::from_le_bytes(id[..8].try_into().unwrap_or([0; 8])));
            frame.push(u64::from_le_bytes(id[8..].try_into().unwrap_or([0; 8])));
        }
        let pad = &key.expose()[..msg.len() * 8];
        for (m, p) in msg.iter().zip(pad.chunks_exact(8)) {
            frame.push(m ^ u64::from_le_bytes(p.try_into().unwrap_or([0; 8])));
        }
        let mk = MacKey::from_key(&mac_key).map_err(|e| MpcError::Keys(e.to_string()))?;
        let mut mac = Mac::new(mk);
        mac.update(frame.as_bytes());
        let tag = mac.finalize();
        frame.push(u64::from_le_bytes(tag.0[..8].try_into().unwrap_or([0; 8])));
        frame.push(u64::from_le_bytes(tag.0[8..].try_into().unwrap_or([0; 8])));
        let mut msg = msg;
        msg.iter_mut().for_each(|w| *w = 0);
        self.inner.send(to, frame)
    }

    fn recv(&mut self, from: Peer) -> Result<Vec<u64>> {
        let frame = self.inner.recv(from)?;
        let bad = |r: &str| MpcError::Malformed {
            peer: from.name().into(),
            reason: r.into(),
        };
        if frame.len() < 4 {
            return Err(bad("short frame"));
        }
        let (n_ids, len) = (frame[0], frame[1]);
        if n_ids > MAX_IDS {
            return Err(bad("too many key IDs"));
        }
        let body_at = 2 + 2 * n_ids as usize;
        if (frame.len() as u64) != body_at as u64 + len + 2 {
            return Err(bad("frame length"));
        }
        let ids: Vec<KeyId> = (0..n_ids as usize)
            .map(|k| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&frame[2 + 2 * k].to_le_bytes());
                id[8..].copy_from_slice(&frame[3 + 2 * k].to_le_bytes());
                id
            })
            .collect();
        let mut key = self.pads.dec(from, &ids)?;
        let len = len as usize;
        if key.len() < MAC_KEY_LEN + 8 * len {
            return Err(MpcError::BadTag(from.name().into()));
        }
        let mac_key = key.take_front(MAC_KEY_LEN);
        let mk = MacKey::from_key(&mac_key).map_err(|e| MpcError::Keys(e.to_string()))?;
        let mut mac = Mac::new(mk);
        let tag_at = frame.len() - 2;
        mac.update(frame[..tag_at].as_bytes());
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&frame[tag_at].to_le_bytes());
        t[8..].copy_from_slice(&frame[tag_at + 1].to_le_bytes());
        if !mac.finalize().ct_eq(&Tag(t)) {
            return Err(MpcError::BadTag(from.name().into()));
        }
        let pad = &key.expose()[..8 * len];
        Ok(frame[body_at..tag_at]
            .iter()
            .zip(pad.chunks_exact(8))
            .map(|(c, p)| c ^ u64::from_le_bytes(p.try_into().unwrap_or([0; 8])))
            .collect())
    }

    fn stats(&self) -> LinkStats {
        let mut s = self.inner.stats();
        s.key_bytes = self.key_bytes;
        s
    }
}

#[derive(Default)]
struct Pool {
    next_id: u64,
    /// id → (from party, to party, bytes)
    keys: HashMap<KeyId, (usize, usize, Vec<u8>)>,
    budget: Option<u64>,
}

/// An in-memory stand-in for the three parties' nodes (tests, benchmarks): keys are made on
/// `enc`, served once on `dec`, optionally up to a budget.
#[derive(Clone, Default)]
pub struct MemoryPads {
    pool: Arc<Mutex<Pool>>,
}

impl MemoryPads {
    /// A key network with at most `budget` bytes in total (`None`: unlimited).
    pub fn new(budget: Option<u64>) -> Self {
        let pool = Pool {
            budget,
            ..Default::default()
        };
        Self {
            pool: Arc::new(Mutex::new(pool)),
        }
    }

    /// Party `me`'s handle.
    pub fn party(&self, me: usize) -> MemoryPadsParty {
        MemoryPadsParty {
            pool: self.pool.clone(),
            me,
        }
    }
}

/// One party's view of a [`MemoryPads`].
pub struct MemoryPadsParty {
    pool: Arc<Mutex<Pool>>,
    me: usize,
}

impl PadSupply for MemoryPadsParty {
    fn enc(&mut self, to: Peer, bytes: usize) -> Result<(Vec<KeyId>, Key)> {
        let mut pool = self
            .pool
            .lock()
            .map_err(|_| MpcError::Keys("poisoned".into()))?;
        if let Some(b) = pool.budget {
            if b < bytes as u64 {
                return Err(MpcError::Keys(format!(
                    "not enough QKD key: need {bytes} bytes, {b} available"
                )));
            }
            pool.budget = Some(b - bytes as u64);
        }
        let mut key = Key::zeroed(bytes);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, key.expose_mut());
        pool.next_id += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&pool.next_id.to_le_bytes());
        id[8] = self.me as u8;
        let t = to.index(self.me);
        pool.keys.insert(id, (self.me, t, key.expose().to_vec()));
        Ok((vec![id], key))
    }

    fn dec(&mut self, from: Peer, ids: &[KeyId]) -> Result<Key> {
        let mut pool = self
            .pool
            .lock()
            .map_err(|_| MpcError::Keys("poisoned".into()))?;
        let f = from.index(self.me);
        let mut out = Key::default();
        for id in ids {
            match pool.keys.remove(id) {
                Some((a, b, bytes)) if a == f && b == self.me => {
                    out.extend_from(&Key::from_vec(bytes));
                }
                _ => return Err(MpcError::Keys("key not available to this party".into())),
            }
        }
        Ok(out)
    }
}
