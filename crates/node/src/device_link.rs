//! Device-sourced QKD links (`source = "etsi014"` in the topology): each end's key manager
//! takes the link's key from its own QKD device over ETSI GS QKD 014 (mutual TLS, the node's
//! certificate as the client certificate), as commercial devices deliver it.
//!
//! Roles: the node with the smaller ID is the master. It asks its device for keys
//! (`status`, then `enc_keys` with the peer node as slave SAE) and offers their IDs to the slave
//! node over the peer channel; the slave fetches the same IDs from its own device (`dec_keys`).
//!
//! **Nothing is used before both ends prove they hold the same bytes.** The first
//! [`MAC_KEY_LEN`] bytes of every batch are sacrificed as a one-time Wegman–Carter key: the slave
//! tags the batch (block number, key IDs and the remaining bytes) with its bytes and sends the
//! tag; the master checks it against its own bytes (constant time). Only a match enters the
//! master's store, and only the master's `Confirm` enters the slave's. The tag is one-time
//! padded, so it reveals nothing of the key; a device whose two ends return different bytes
//! (or other key IDs, or no answer) only changes the link's state ([`crate::mgmt::Ops`],
//! management `/api/v1/links` `source_state`, and a log line), never a stored key.

use std::sync::Arc;
use std::time::Duration;

use kagi_control::{DeviceLinkSpec, LinkSpec};
use kagi_keymat::its_mac::{self, MacKey, Tag, MAC_KEY_LEN, TAG_LEN};
use kagi_keymat::Key;
use kagi_km::Input;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::client::{ClientError, Etsi014Client};
use crate::driver::DriverMsg;
use crate::peer::Peers;
use kagi_km::NodeId;

/// Time allowed for one call to the device.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the master waits for the slave's tag or refusal.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failure before trying again.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// Pause while the device holds too little key.
pub const POLL: Duration = Duration::from_millis(100);
/// Longest wait for a full batch before taking what the device has.
pub const BATCH_WAIT: Duration = Duration::from_millis(500);
/// Longest refusal reason carried in a frame.
const MAX_REASON: usize = 200;
/// Domain label of the batch tag.
const LABEL: &[u8] = b"kagi device link tag v1";

/// A frame of the device link protocol on the peer channel (no key bytes in any of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceFrame {
    /// Master → slave: block `block` is made of these device key IDs, in this order.
    Offer {
        /// Block number.
        block: u64,
        /// Device key IDs.
        ids: Vec<[u8; 16]>,
    },
    /// Slave → master: the tag of the slave's bytes of `block`.
    Tag {
        /// Block number.
        block: u64,
        /// One-time-padded Wegman–Carter tag.
        tag: [u8; TAG_LEN],
    },
    /// Slave → master: no tag for `block` (its device failed, or the block is stale).
    Refuse {
        /// Block number.
        block: u64,
        /// The slave's highest stored block, so that the master skips past it.
        high_water: Option<u64>,
        /// Why.
        reason: String,
    },
    /// Master → slave: the tags matched; both ends store `block`.
    Confirm {
        /// Block number.
        block: u64,
    },
    /// Master → slave: the tags differed; both ends drop `block`.
    Mismatch {
        /// Block number.
        block: u64,
    },
}

/// Most key IDs one offer may carry.
pub const MAX_IDS: usize = 128;

impl DeviceFrame {
    /// Encodes for the peer channel.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a frame from the peer; `None` for anything malformed or out of bounds.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let f: Self = postcard::from_bytes(bytes).ok()?;
        match &f {
            Self::Offer { ids, .. } if ids.len() < 2 || ids.len() > MAX_IDS => None,
            Self::Refuse { reason, .. } if reason.len() > MAX_REASON => None,
            _ => Some(f),
        }
    }
}

/// A batch of device keys split into the sacrificed MAC key and the link key.
pub struct Batch {
    mac_key: Key,
    /// The bytes that become link key once both ends agree.
    pub key: Key,
}

impl Batch {
    /// Concatenates the device keys (in offer order) and splits off the MAC key; `None` when
    /// the batch is too short to leave any link key.
    pub fn split(keys: &[Key]) -> Option<Self> {
        let total: usize = keys.iter().map(Key::len).sum();
        if total <= MAC_KEY_LEN + 1 {
            return None;
        }
        let mut all = Key::zeroed(total);
        let mut at = 0;
        for k in keys {
            all.expose_mut()[at..at + k.len()].copy_from_slice(k.expose());
            at += k.len();
        }
        let mut mac_key = Key::zeroed(MAC_KEY_LEN);
        mac_key
            .expose_mut()
            .copy_from_slice(&all.expose()[..MAC_KEY_LEN]);
        // Link blocks are split in two halves (one per direction): keep the length even.
        let usable = (total - MAC_KEY_LEN) & !1;
        let mut key = Key::zeroed(usable);
        key.expose_mut()
            .copy_from_slice(&all.expose()[MAC_KEY_LEN..MAC_KEY_LEN + usable]);
        Some(Self { mac_key, key })
    }

    /// The tag of this batch as block `block` of the link `master`–`slave` with these IDs.
    /// Consumes the batch's one-time MAC key.
    pub fn tag(&self, master: &str, slave: &str, block: u64, ids: &[[u8; 16]]) -> Tag {
        let Ok(mk) = MacKey::from_key(&self.mac_key) else {
            return Tag([0; TAG_LEN]);
        };
        let mut m = its_mac::Mac::new(mk);
        m.update(LABEL);
        for s in [master, slave] {
            m.update(&(s.len() as u64).to_be_bytes());
            m.update(s.as_bytes());
        }
        m.update(&block.to_be_bytes());
        m.update(&(ids.len() as u64).to_be_bytes());
        for id in ids {
            m.update(id);
        }
        m.update(self.key.expose());
        m.finalize()
    }
}

/// A device link's settings as seen from one end.
#[derive(Debug, Clone)]
pub struct DeviceLinkConfig {
    /// The node at the other end.
    pub peer: String,
    /// This node.
    pub me: String,
    /// Whether this end is the master (the smaller node ID).
    pub master: bool,
    /// This end's device URL.
    pub url: String,
    /// Bits per device key.
    pub key_bits: u64,
    /// Most keys per `enc_keys` call.
    pub max_keys: u64,
}

impl DeviceLinkConfig {
    /// The link `spec` seen from `me`.
    ///
    /// # Errors
    /// The link has no device URLs (a topology written by `kagi up` always has them).
    pub fn new(me: &str, spec: &LinkSpec) -> Result<Self, String> {
        let d = spec.device.clone().unwrap_or_default();
        let (peer, url) = if spec.a == me {
            (spec.b.clone(), d.url_a.clone())
        } else {
            (spec.a.clone(), d.url_b.clone())
        };
        let url = url.ok_or_else(|| {
            format!(
                "link {}-{}: field device.url_{}: missing (where this node's QKD device \
                 answers ETSI 014; `kagi up` fills it in and starts a simulated device)",
                spec.a,
                spec.b,
                if spec.a == me { "a" } else { "b" }
            )
        })?;
        Ok(Self {
            master: me < peer.as_str(),
            me: me.to_owned(),
            peer,
            url,
            key_bits: d.key_bits(),
            max_keys: d.keys_per_call(),
        })
    }
}

/// One end of a device link, running until stopped.
pub struct DeviceLink {
    cfg: DeviceLinkConfig,
    device: Etsi014Client,
    peers: Peers,
    inbox: mpsc::UnboundedSender<DriverMsg>,
    frames: mpsc::Receiver<Vec<u8>>,
    ops: Arc<crate::mgmt::Ops>,
    high_water: Option<u64>,
}

/// The state names a device link reports.
fn state_of(e: &ClientError) -> &'static str {
    match e {
        ClientError::Connect { .. } | ClientError::Handshake { .. } | ClientError::Http(_) => {
            "device_down"
        }
        ClientError::Timeout(_) => "device_slow",
        ClientError::Refused { status: 503, .. } => "device_unavailable",
        _ => "device_error",
    }
}

impl DeviceLink {
    /// Sets up one end: `tls` is the client configuration for the device (the node's own
    /// certificate, the device CA), `high_water` the highest block already stored.
    ///
    /// # Errors
    /// The device URL does not parse.
    #[allow(clippy::too_many_arguments)] // the link's wiring: settings, device, peers, store, state
    pub fn new(
        cfg: DeviceLinkConfig,
        tls: Arc<rustls::ClientConfig>,
        high_water: Option<u64>,
        peers: Peers,
        inbox: mpsc::UnboundedSender<DriverMsg>,
        frames: mpsc::Receiver<Vec<u8>>,
        ops: Arc<crate::mgmt::Ops>,
    ) -> Result<Self, ClientError> {
        let device = Etsi014Client::new(&cfg.url, tls)?.with_timeout(DEVICE_TIMEOUT);
        Ok(Self {
            cfg,
            device,
            peers,
            inbox,
            frames,
            ops,
            high_water,
        })
    }

    fn state(&self, state: &str, why: &str) {
        if self.ops.set_link_source_state(&self.cfg.peer, state) {
            if state == "up" {
                tracing::info!(peer = %self.cfg.peer, %state, "device link state changed: key flows");
            } else {
                tracing::warn!(peer = %self.cfg.peer, %state, %why, "device link state changed; no key taken from the device while it lasts");
            }
        }
    }

    fn send(&self, f: &DeviceFrame) {
        self.peers.send_link(&self.cfg.peer, f.encode());
    }

    fn store(&mut self, block: u64, key: Key) -> bool {
        self.high_water = Some(block);
        self.inbox
            .send(DriverMsg::Input(Input::LinkKeys {
                peer: NodeId::from(&self.cfg.peer),
                block,
                key,
            }))
            .is_ok()
    }

    /// Runs the link until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.state("starting", "");
        tracing::info!(peer = %self.cfg.peer, device = %self.cfg.url, master = self.cfg.master, "QKD device link (ETSI 014)");
        tokio::select! {
            _ = stop.changed() => {}
            _ = async { if self.cfg.master { self.run_master().await } else { self.run_slave().await } } => {}
        }
    }

    async fn pause(d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Keys of one batch from the device as master: `None` after a failure (state set).
    async fn take_keys(&self, last_take: &mut std::time::Instant) -> Option<Vec<(Uuid, Key)>> {
        let status = match self.device.status(&self.cfg.peer).await {
            Ok(s) => s,
            Err(e) => {
                self.state(state_of(&e), &e.to_string());
                Self::pause(BACKOFF).await;
                return None;
            }
        };
        let per_key = status.key_size.max(1);
        let available = status.stored_key_count.saturating_mul(per_key) / self.cfg.key_bits;
        let number = available
            .min(self.cfg.max_keys)
            .min(status.max_key_per_request);
        // Whole batches where the device keeps up (fewer blocks, fewer tags); what there is
        // after a while where it does not.
        if number < 2 || (number < self.cfg.max_keys && last_take.elapsed() < BATCH_WAIT) {
            Self::pause(POLL).await;
            return None;
        }
        *last_take = std::time::Instant::now();
        let req = crate::etsi014::wire::KeyRequest {
            number: Some(number),
            size: Some(self.cfg.key_bits),
            ..Default::default()
        };
        let keys = match self.device.enc_keys(&self.cfg.peer, &req).await {
            Ok(k) => k,
            Err(ClientError::Refused { status: 503, .. }) => {
                // Another caller took the key between status and enc_keys: wait for more.
                Self::pause(POLL).await;
                return None;
            }
            Err(e) => {
                self.state(state_of(&e), &e.to_string());
                Self::pause(BACKOFF).await;
                return None;
            }
        };
        let size = (self.cfg.key_bits / 8) as usize;
        let mut seen = std::collections::BTreeSet::new();
        let ok = keys.len() as u64 == number
            && keys
                .iter()
                .all(|k| k.key.len() == size && seen.insert(k.id));
        if !ok {
            self.state(
                "device_bad_answer",
                "enc_keys gave another number or size of keys, or repeated IDs",
            );
            Self::pause(BACKOFF).await;
            return None;
        }
        Some(keys.into_iter().map(|k| (k.id, k.key)).collect())
    }

    async fn run_master(&mut self) {
        let mut next = self.high_water.map_or(0, |h| h + 1);
        let mut last_take = std::time::Instant::now();
        loop {
            let Some(keys) = self.take_keys(&mut last_take).await else {
                continue;
            };
            let ids: Vec<[u8; 16]> = keys.iter().map(|(id, _)| *id.as_bytes()).collect();
            let Some(batch) = Batch::split(&keys.into_iter().map(|(_, k)| k).collect::<Vec<_>>())
            else {
                continue;
            };
            let block = next;
            next += 1;
            self.send(&DeviceFrame::Offer {
                block,
                ids: ids.clone(),
            });
            let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
                loop {
                    let bytes = self.frames.recv().await?;
                    match DeviceFrame::decode(&bytes) {
                        Some(
                            f @ (DeviceFrame::Tag { block: b, .. }
                            | DeviceFrame::Refuse { block: b, .. }),
                        ) if b == block => return Some(f),
                        _ => continue, // late answers to earlier blocks, or junk
                    }
                }
            })
            .await;
            match reply {
                Ok(Some(DeviceFrame::Tag { tag, .. })) => {
                    let mine = batch.tag(&self.cfg.me, &self.cfg.peer, block, &ids);
                    if mine.ct_eq(&Tag(tag)) {
                        if !self.store(block, batch.key) {
                            return;
                        }
                        self.send(&DeviceFrame::Confirm { block });
                        self.state("up", "");
                    } else {
                        self.send(&DeviceFrame::Mismatch { block });
                        self.state(
                            "keys_differ",
                            "the two devices returned different bytes for the same key IDs \
                             (verification tag mismatch); batch discarded",
                        );
                        Self::pause(BACKOFF).await;
                    }
                }
                Ok(Some(DeviceFrame::Refuse {
                    high_water, reason, ..
                })) => {
                    if let Some(h) = high_water {
                        next = next.max(h + 1);
                    }
                    let state = if reason.starts_with("device returned other key IDs") {
                        "wrong_key_ids"
                    } else if reason.starts_with("stale") {
                        "resync"
                    } else {
                        "peer_device_error"
                    };
                    self.state(state, &reason);
                    Self::pause(if state == "resync" { POLL } else { BACKOFF }).await;
                }
                Ok(_) => return, // the peer channel's inbox closed: the node stops
                Err(_) => {
                    self.state("peer_silent", "no answer from the peer node to a key offer");
                }
            }
        }
    }

    async fn run_slave(&mut self) {
        // The batch tagged last, waiting for the master's verdict.
        let mut pending: Option<(u64, Key)> = None;
        while let Some(bytes) = self.frames.recv().await {
            let Some(frame) = DeviceFrame::decode(&bytes) else {
                tracing::warn!(peer = %self.cfg.peer, "malformed device link frame; dropped");
                continue;
            };
            match frame {
                DeviceFrame::Offer { block, ids } => {
                    pending = None;
                    if self.high_water.is_some_and(|h| block <= h) {
                        self.send(&DeviceFrame::Refuse {
                            block,
                            high_water: self.high_water,
                            reason: "stale block number".into(),
                        });
                        continue;
                    }
                    match self.fetch(&ids).await {
                        Ok(batch) => {
                            let tag = batch.tag(&self.cfg.peer, &self.cfg.me, block, &ids);
                            self.send(&DeviceFrame::Tag { block, tag: tag.0 });
                            pending = Some((block, batch.key));
                        }
                        Err((state, reason)) => {
                            self.state(state, &reason);
                            let mut reason = reason;
                            reason.truncate(MAX_REASON);
                            self.send(&DeviceFrame::Refuse {
                                block,
                                high_water: self.high_water,
                                reason,
                            });
                        }
                    }
                }
                DeviceFrame::Confirm { block } => match pending.take() {
                    Some((b, key)) if b == block => {
                        if !self.store(block, key) {
                            return;
                        }
                        self.state("up", "");
                    }
                    other => pending = other,
                },
                DeviceFrame::Mismatch { block } => {
                    if pending.as_ref().is_some_and(|(b, _)| *b == block) {
                        pending = None;
                    }
                    self.state(
                        "keys_differ",
                        "the two devices returned different bytes for the same key IDs \
                         (verification tag mismatch); batch discarded",
                    );
                }
                DeviceFrame::Tag { .. } | DeviceFrame::Refuse { .. } => {}
            }
        }
    }

    /// The slave's bytes of an offered batch, or the state and reason of the failure.
    async fn fetch(&self, ids: &[[u8; 16]]) -> Result<Batch, (&'static str, String)> {
        let want: Vec<Uuid> = ids.iter().map(|b| Uuid::from_bytes(*b)).collect();
        let keys = self
            .device
            .dec_keys(&self.cfg.peer, &want)
            .await
            .map_err(|e| (state_of(&e), format!("device: {e}")))?;
        let got: Vec<Uuid> = keys.iter().map(|k| k.id).collect();
        if got != want {
            return Err((
                "wrong_key_ids",
                "device returned other key IDs than were asked".into(),
            ));
        }
        let size = (self.cfg.key_bits / 8) as usize;
        if keys.iter().any(|k| k.key.len() != size) {
            return Err((
                "device_bad_answer",
                "device returned keys of another size".into(),
            ));
        }
        Batch::split(&keys.into_iter().map(|k| k.key).collect::<Vec<_>>())
            .ok_or(("device_bad_answer", "batch too short".into()))
    }
}

/// The client TLS configuration for a node's device: the device CA from the topology
/// (`[links.device] ca`) or the node's own CA, and the node's certificate.
///
/// # Errors
/// The files do not load.
pub fn device_tls(
    d: Option<&DeviceLinkSpec>,
    tls: &crate::config::TlsConfig,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = d
        .and_then(|d| d.ca.as_ref())
        .map_or_else(|| tls.ca.clone(), std::path::PathBuf::from);
    crate::tls::etsi_client_config(&ca, &tls.cert, &tls.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8, n: usize) -> Vec<Key> {
        (0..n)
            .map(|i| Key::from_vec(vec![seed.wrapping_add(i as u8); 32]))
            .collect()
    }

    #[test]
    fn equal_batches_tag_equal_and_any_difference_is_caught() {
        let ids = vec![[1u8; 16], [2u8; 16], [3u8; 16]];
        let a = Batch::split(&keys(7, 3)).unwrap();
        let b = Batch::split(&keys(7, 3)).unwrap();
        assert_eq!(a.key.len(), 64);
        assert!(a.tag("m", "s", 5, &ids).ct_eq(&b.tag("m", "s", 5, &ids)));
        // One flipped bit anywhere (MAC key or link key part) changes the tag.
        for (k, byte) in [(0usize, 0usize), (1, 5), (2, 31)] {
            let mut ks = keys(7, 3);
            ks[k].expose_mut()[byte] ^= 1;
            let c = Batch::split(&ks).unwrap();
            assert!(!a.tag("m", "s", 5, &ids).ct_eq(&c.tag("m", "s", 5, &ids)));
        }
        // So do another block number or other IDs.
        assert!(!a.tag("m", "s", 5, &ids).ct_eq(&b.tag("m", "s", 6, &ids)));
        assert!(!a
            .tag("m", "s", 5, &ids)
            .ct_eq(&b.tag("m", "s", 5, &ids[..2])));
        // The link key never includes the sacrificed MAC key.
        assert_eq!(&a.key.expose()[..32], keys(7, 3)[1].expose());
    }

    #[test]
    fn frames_round_trip_and_bounds_hold() {
        let f = DeviceFrame::Offer {
            block: 9,
            ids: vec![[4; 16]; 3],
        };
        assert_eq!(DeviceFrame::decode(&f.encode()), Some(f));
        let one = DeviceFrame::Offer {
            block: 9,
            ids: vec![[4; 16]],
        };
        assert_eq!(DeviceFrame::decode(&one.encode()), None);
        let many = DeviceFrame::Offer {
            block: 9,
            ids: vec![[4; 16]; MAX_IDS + 1],
        };
        assert_eq!(DeviceFrame::decode(&many.encode()), None);
        let long = DeviceFrame::Refuse {
            block: 1,
            high_water: None,
            reason: "x".repeat(MAX_REASON + 1),
        };
        assert_eq!(DeviceFrame::decode(&long.encode()), None);
        assert_eq!(DeviceFrame::decode(b"\xff\xff"), None);
        assert!(Batch::split(&[Key::from_vec(vec![1; 33])]).is_none());
    }

    #[test]
    fn roles_and_urls_follow_the_topology() {
        let spec = LinkSpec {
            a: "b-node".into(),
            b: "a-node".into(),
            source: Some("etsi014".into()),
            device: Some(DeviceLinkSpec {
                url_a: Some("https://127.0.0.1:1".into()),
                url_b: Some("https://127.0.0.1:2".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let x = DeviceLinkConfig::new("a-node", &spec).unwrap();
        let y = DeviceLinkConfig::new("b-node", &spec).unwrap();
        assert!(x.master && !y.master);
        assert_eq!(x.url, "https://127.0.0.1:2");
        assert_eq!(y.url, "https://127.0.0.1:1");
        let mut none = spec.clone();
        none.device = None;
        let err = DeviceLinkConfig::new("a-node", &none).unwrap_err();
        assert!(
            err.contains("link b-node-a-node: field device.url_b"),
            "{err}"
        );
    }
}
