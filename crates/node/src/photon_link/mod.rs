//! Photon-level QKD links (`source = "photon"` in the topology): the post-processing protocol of
//! `kagi-postproc` runs between the two nodes' processes, its classical messages over the
//! node-to-node channel (mutual TLS, beside the key manager's messages), and each block's secret
//! key enters the key store exactly as a rate-level link's block does
//! ([`kagi_km::Input::LinkKeys`]).
//!
//! Roles: the node with the smaller ID is Alice (transmitter), the other Bob (receiver), who
//! starts every block. The quantum layer is simulated ([`records`]); the authentication key is
//! kept per link in a [`ledger::AuthLedger`]: each block reserves a range of pads, named in its
//! first message, and the pads left when a block ends with key (the protocol replenishes what it
//! spent) become a new segment for later blocks.

pub mod ledger;
pub mod records;

use std::path::Path;
use std::time::{Duration, Instant};

use kagi_control::{LinkSpec, Topology};
use kagi_keymat::Key;
use kagi_km::Input;
use kagi_postproc::cascade::CascadeParams;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::ldpc::LdpcParams;
use kagi_postproc::protocol::{Alice, AuthKeyPool, Bob, Outcome, ProtocolConfig, Reconciliation};
use kagi_quantum::photon::{Intensity, PhotonParams};
use kagi_quantum::DecoyBb84Params;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::driver::DriverMsg;
use crate::link_secret::LinkSecret;
use crate::peer::Peers;
use ledger::{AuthLedger, Refusal, Reservation};

/// Pads one block reserves: room for 1024 authenticated messages (Cascade uses 300–550, LDPC
/// about 15). A block that fails burns its whole reservation, so this is kept tight.
pub const RESERVE_BYTES: u64 = 1024 * kagi_postproc::protocol::PAD_LEN as u64;
/// Pre-shared authentication key of a link (simulated: derived from the link secret).
pub const BOOTSTRAP_BYTES: usize = 16 + 128 * RESERVE_BYTES as usize;
/// How long Alice keeps a block in progress without hearing from Bob.
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// Bob's wait for the next message of a block, beyond four times his own simulation time of
/// the block (Alice simulates it too before her first answer). A message lost while a
/// connection was re-established thus costs one block, not the link.
pub const REPLY_GRACE: Duration = Duration::from_secs(20);
/// Default sifted key bits per block.
pub const DEFAULT_BLOCK_BITS: f64 = 4e6;

/// A photon link's settings, identical at both ends (both read the same topology).
#[derive(Debug, Clone)]
pub struct PhotonLinkConfig {
    /// The node at the other end.
    pub peer: String,
    /// Whether this end is Alice (the smaller node ID).
    pub alice: bool,
    /// Simulator parameters.
    pub params: PhotonParams,
    /// The link's secret (both ends only): seeds the simulated channel and the authentication
    /// bootstrap.
    pub secret: LinkSecret,
    /// Pulses per block.
    pub pulses: usize,
    /// Shortest time per block (the source's repetition rate).
    pub min_block_time: Duration,
    /// Protocol settings.
    pub protocol: ProtocolConfig,
}

/// Why a photon link cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum PhotonLinkError {
    /// The link's settings are unusable.
    #[error("photon link {0}: {1}")]
    Settings(String, String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
}

impl PhotonLinkConfig {
    /// The link `spec` seen from `me`.
    ///
    /// # Errors
    /// Settings the simulator or the protocol reject.
    pub fn new(
        topo: &Topology,
        me: &str,
        spec: &LinkSpec,
        secret: LinkSecret,
    ) -> Result<Self, PhotonLinkError> {
        let peer = if spec.a == me { &spec.b } else { &spec.a }.clone();
        let name = format!("{}-{}", spec.a, spec.b);
        let bad = |why: String| PhotonLinkError::Settings(name.clone(), why);
        let ps = spec.photon.clone().unwrap_or_default();
        let mut link = DecoyBb84Params::default();
        if let Some(e) = ps.e_d {
            link.e_d = e;
        }
        if let Some(e) = ps.eta_bob {
            link.eta_bob = e;
        }
        let p_z = ps.p_key_basis.unwrap_or(0.7);
        let (p_signal, p_decoy) = (0.6, 0.25);
        let params = PhotonParams {
            link,
            length_km: spec.length_km,
            p_signal,
            p_decoy,
            p_z,
            threads: 1,
        };
        params.validate().map_err(|e| bad(e.to_string()))?;
        let reconciliation = match ps.reconciliation.as_deref() {
            None | Some("cascade") => Reconciliation::Cascade(CascadeParams::default()),
            Some("ldpc") => Reconciliation::Ldpc(LdpcParams::default()),
            Some(other) => {
                return Err(bad(format!("reconciliation {other:?} is not available")));
            }
        };
        let protocol = ProtocolConfig {
            decoy: DecoySettings {
                mu: [link.mu, link.nu, 0.0],
                p: [p_signal, p_decoy, 1.0 - p_signal - p_decoy],
                eps_sec: 1e-10,
                eps_cor: 1e-15,
            },
            reconciliation,
            threads: 1,
        };
        protocol.decoy.validate().map_err(|e| bad(e.to_string()))?;
        // Pulses for the wanted sifted key-basis bits, from the expected detection rates.
        let per_pulse: f64 = [
            (Intensity::Signal, p_signal),
            (Intensity::Decoy, p_decoy),
            (Intensity::Vacuum, 1.0 - p_signal - p_decoy),
        ]
        .iter()
        .map(|&(c, p)| p * params.expected_gain_qber(c).0)
        .sum::<f64>()
            * p_z
            * p_z;
        let block_bits = ps.block_bits.unwrap_or(DEFAULT_BLOCK_BITS);
        let pulses = block_bits / per_pulse.max(1e-300);
        if !(pulses.is_finite() && pulses <= 1e11) {
            return Err(bad(format!(
                "{block_bits} sifted bits need {pulses:.3e} pulses per block at {} km; shorten the \
                 link or the block",
                spec.length_km
            )));
        }
        let pulses = (pulses.ceil() as usize).div_ceil(64) * 64;
        let rate = link.rep_rate_hz * topo.rate_multiplier.max(1e-9);
        Ok(Self {
            alice: me < peer.as_str(),
            peer,
            params,
            secret,
            pulses,
            min_block_time: Duration::from_secs_f64((pulses as f64 / rate).min(3600.0)),
            protocol,
        })
    }

    /// The link's pre-shared authentication key, derived from the link secret that only the
    /// two ends hold (a real deployment installs this key in both nodes out of band).
    pub fn bootstrap_key(&self) -> Key {
        let mut k = Key::zeroed(BOOTSTRAP_BYTES);
        ChaCha20Rng::from_seed(*self.secret.derive(b"photon-auth-bootstrap", 0))
            .fill_bytes(k.expose_mut());
        k
    }

    /// Seed of the photon simulator for block `block`, from the link secret. The simulator takes
    /// 64 bits; a fresh value per block means recovering one block's seed by search (2^64
    /// simulations of the whole block) gives no other block.
    pub fn sim_seed(&self, block: u64) -> u64 {
        let d = self.secret.derive(b"photon-records", block);
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_le_bytes(b)
    }
}

/// What the two ends of a photon link say to each other (around the protocol's own frames,
/// which carry their authentication).
#[derive(Debug, Serialize, Deserialize)]
enum LinkFrame {
    /// Bob starts a block with these pads; `frame` is the protocol's first message.
    Start { res: Reservation, frame: Vec<u8> },
    /// A protocol message of block `block`.
    Proto { block: u64, frame: Vec<u8> },
    /// Alice refuses Bob's reservation.
    Refuse { block: u64, refusal: Refusal },
}

impl LinkFrame {
    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("link frames serialize")
    }
}

/// Everything a running photon link end needs.
pub struct PhotonLink {
    cfg: PhotonLinkConfig,
    ledger: AuthLedger,
    peers: Peers,
    inbox: mpsc::UnboundedSender<DriverMsg>,
    frames: mpsc::Receiver<Vec<u8>>,
    /// Block numbers must stay above what the key store already holds for this link.
    floor: u64,
}

impl PhotonLink {
    /// Opens the link's ledger in `db` (shared by the node's photon links), sealed with
    /// `sealer`.
    ///
    /// # Errors
    /// Ledger storage failures.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        cfg: PhotonLinkConfig,
        db: &Path,
        sealer: std::sync::Arc<crate::seal::Sealer>,
        high_water: Option<u64>,
        peers: Peers,
        inbox: mpsc::UnboundedSender<DriverMsg>,
        frames: mpsc::Receiver<Vec<u8>>,
    ) -> Result<Self, PhotonLinkError> {
        let ledger = AuthLedger::open(db, sealer, &cfg.peer, || cfg.bootstrap_key())?;
        Ok(Self {
            floor: high_water.unwrap_or(0),
            cfg,
            ledger,
            peers,
            inbox,
            frames,
        })
    }

    /// Runs blocks until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(
            peer = %self.cfg.peer,
            role = if self.cfg.alice { "alice" } else { "bob" },
            pulses_per_block = self.cfg.pulses,
            auth_pads = self.ledger.available(),
            "photon QKD link"
        );
        let res = if self.cfg.alice {
            self.run_alice(&mut stop).await
        } else {
            self.run_bob(&mut stop).await
        };
        if let Err(e) = res {
            tracing::error!(peer = %self.cfg.peer, error = %e, "photon link stopped");
        }
    }

    fn send(&self, f: &LinkFrame) {
        self.peers.send_link(&self.cfg.peer, f.encode());
    }

    async fn run_bob(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), PhotonLinkError> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let t0 = Instant::now();
            let Some(res) = self.ledger.propose(RESERVE_BYTES, self.floor) else {
                tracing::error!(peer = %self.cfg.peer, "photon link: authentication key exhausted; no more blocks");
                let _ = stop.wait_for(|v| *v).await;
                return Ok(());
            };
            let pads = match self.ledger.reserve(res)? {
                Ok(p) => p,
                Err(r) => {
                    tracing::warn!(peer = %self.cfg.peer, refusal = %r, "own reservation refused");
                    continue;
                }
            };
            let (params, seed, pulses, block) = (
                self.cfg.params,
                self.cfg.sim_seed(res.block),
                self.cfg.pulses,
                res.block,
            );
            let t_sim = Instant::now();
            let raw = tokio::task::spawn_blocking(move || {
                records::bob_block(params, seed, block, pulses)
            })
            .await
            .map_err(|e| PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string()))?
            .map_err(|e| PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string()))?;
            let mut pool = AuthKeyPool::new(pads)
                .map_err(|e| PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string()))?;
            let mut bob = match Bob::new(self.cfg.protocol, block, raw) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(peer = %self.cfg.peer, block, error = %e, "block not started");
                    continue;
                }
            };
            let reply_timeout = REPLY_GRACE + t_sim.elapsed() * 4;
            let first = bob.start(&mut pool);
            if let Some(frame) = first {
                self.send(&LinkFrame::Start { res, frame });
            }
            let mut refused = None;
            while bob.outcome().is_none() {
                let frame = tokio::select! {
                    _ = stop.wait_for(|v| *v) => return Ok(()),
                    f = tokio::time::timeout(reply_timeout, self.frames.recv()) => f,
                };
                let bytes = match frame {
                    Ok(Some(b)) => b,
                    Ok(None) => return Ok(()),
                    Err(_) => break, // timed out
                };
                match postcard::from_bytes::<LinkFrame>(&bytes) {
                    Ok(LinkFrame::Proto { block: b, frame }) if b == block => {
                        let (b2, p2, reply) = tokio::task::spawn_blocking(move || {
                            let reply = bob.handle(&mut pool, &frame);
                            (bob, pool, reply)
                        })
                        .await
                        .map_err(|e| {
                            PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string())
                        })?;
                        (bob, pool) = (b2, p2);
                        if let Some(r) = reply {
                            self.send(&LinkFrame::Proto { block, frame: r });
                        }
                    }
                    Ok(LinkFrame::Refuse { block: b, refusal }) if b == block => {
                        self.ledger.learn(&refusal)?;
                        refused = Some(refusal);
                        break;
                    }
                    Ok(_) => {} // a stale block's message
                    Err(e) => {
                        tracing::warn!(peer = %self.cfg.peer, error = %e, "malformed photon link frame")
                    }
                }
            }
            match (bob.take_outcome(), refused) {
                (_, Some(r)) => {
                    tracing::info!(peer = %self.cfg.peer, block, refusal = %r, "reservation refused; catching up");
                    continue; // retry at once with what was learnt
                }
                (Some(o), None) => self.finish(res, pool, o, t0)?,
                (None, None) => {
                    tracing::warn!(peer = %self.cfg.peer, block, "block timed out");
                }
            }
            let pause = self.cfg.min_block_time.saturating_sub(t0.elapsed());
            tokio::select! {
                _ = stop.wait_for(|v| *v) => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn run_alice(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), PhotonLinkError> {
        let mut current: Option<(Reservation, Alice, AuthKeyPool, Instant)> = None;
        loop {
            let bytes = tokio::select! {
                _ = stop.wait_for(|v| *v) => return Ok(()),
                f = self.frames.recv() => match f { Some(b) => b, None => return Ok(()) },
            };
            if current
                .as_ref()
                .is_some_and(|(_, _, _, at)| at.elapsed() > BLOCK_TIMEOUT)
            {
                current = None;
            }
            let (res, frame, t0) = match postcard::from_bytes::<LinkFrame>(&bytes) {
                Ok(LinkFrame::Start { res, frame }) => {
                    // A new block supersedes one in progress (Bob gave it up).
                    current = None;
                    let pads = match self.ledger.reserve(res)? {
                        Ok(p) => p,
                        Err(refusal) => {
                            tracing::info!(peer = %self.cfg.peer, block = res.block, %refusal, "refusing reservation");
                            self.send(&LinkFrame::Refuse {
                                block: res.block,
                                refusal,
                            });
                            continue;
                        }
                    };
                    let t0 = Instant::now();
                    let (params, seed, pulses, block) = (
                        self.cfg.params,
                        self.cfg.sim_seed(res.block),
                        self.cfg.pulses,
                        res.block,
                    );
                    let raw = tokio::task::spawn_blocking(move || {
                        records::alice_block(params, seed, block, pulses)
                    })
                    .await
                    .map_err(|e| PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string()))?
                    .map_err(|e| PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string()))?;
                    let pool = AuthKeyPool::new(pads).map_err(|e| {
                        PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string())
                    })?;
                    let mut rs = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut rs);
                    match Alice::new(self.cfg.protocol, block, raw, rs) {
                        Ok(a) => current = Some((res, a, pool, t0)),
                        Err(e) => {
                            tracing::warn!(peer = %self.cfg.peer, block, error = %e, "block not started");
                            continue;
                        }
                    }
                    (res, frame, t0)
                }
                Ok(LinkFrame::Proto { block, frame }) => match &current {
                    Some((res, _, _, t0)) if res.block == block => (*res, frame, *t0),
                    _ => continue, // stale
                },
                Ok(LinkFrame::Refuse { .. }) => continue,
                Err(e) => {
                    tracing::warn!(peer = %self.cfg.peer, error = %e, "malformed photon link frame");
                    continue;
                }
            };
            let Some((_, mut alice, mut pool, _)) = current.take() else {
                continue;
            };
            let (a2, p2, reply) = tokio::task::spawn_blocking(move || {
                let reply = alice.handle(&mut pool, &frame);
                (alice, pool, reply)
            })
            .await
            .map_err(|e| PhotonLinkError::Settings(self.cfg.peer.clone(), e.to_string()))?;
            (alice, pool) = (a2, p2);
            if let Some(r) = reply {
                self.send(&LinkFrame::Proto {
                    block: res.block,
                    frame: r,
                });
            }
            match alice.take_outcome() {
                Some(o) => self.finish(res, pool, o, t0)?,
                None => current = Some((res, alice, pool, t0)),
            }
        }
    }

    /// A block ended at this end: keep the pads for later blocks and hand the key to the core.
    fn finish(
        &mut self,
        res: Reservation,
        pool: AuthKeyPool,
        outcome: Outcome,
        t0: Instant,
    ) -> Result<(), PhotonLinkError> {
        match outcome {
            Outcome::Key { mut key, stats } => {
                let mut segment = pool.into_pads();
                // While the pre-shared key is being used, also set aside fresh key, so later
                // blocks (and failed ones) never run the link dry.
                if res.segment == 0 {
                    let extra = (RESERVE_BYTES as usize).min(key.len() / 4);
                    segment.extend_from(&key.take_front(extra));
                }
                self.ledger.settle(res, res.len, segment)?;
                tracing::info!(
                    peer = %self.cfg.peer,
                    block = res.block,
                    sifted = stats.sifted_bits,
                    qber = stats.qber_key.unwrap_or(stats.qber_test),
                    f = stats.ec_efficiency.unwrap_or(f64::NAN),
                    key_bytes = key.len(),
                    messages = stats.messages,
                    auth_bytes = stats.auth_key_bits / 8,
                    secs = t0.elapsed().as_secs_f64(),
                    "photon link block"
                );
                if !key.is_empty() {
                    let _ = self.inbox.send(DriverMsg::Input(Input::LinkKeys {
                        peer: self.cfg.peer.clone(),
                        block: res.block,
                        key,
                    }));
                }
            }
            Outcome::Aborted(e) => {
                tracing::warn!(peer = %self.cfg.peer, block = res.block, error = %e, "photon link block gave no key");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_control::PhotonLinkSpec;

    #[test]
    fn both_ends_derive_the_same_settings_with_opposite_roles() {
        let mut t = Topology::line("p", &["x", "y"], 10.0, |_| vec![]);
        t.links[0].source = Some("photon".into());
        t.links[0].photon = Some(PhotonLinkSpec {
            reconciliation: Some("ldpc".into()),
            ..PhotonLinkSpec::default()
        });
        let l = t.links[0].clone();
        let s = LinkSecret::generate();
        let x = PhotonLinkConfig::new(&t, "x", &l, s.clone()).unwrap();
        let y = PhotonLinkConfig::new(&t, "y", &l, s.clone()).unwrap();
        assert!(x.alice && !y.alice);
        assert_eq!((x.peer.as_str(), y.peer.as_str()), ("y", "x"));
        assert_eq!((x.pulses, x.sim_seed(3)), (y.pulses, y.sim_seed(3)));
        assert_ne!(x.sim_seed(3), x.sim_seed(4));
        assert_eq!(x.bootstrap_key(), y.bootstrap_key());
        // Someone with the topology only (the demo derivation) has neither the channel nor the
        // authentication key.
        let outsider =
            PhotonLinkConfig::new(&t, "x", &l, LinkSecret::insecure_demo(&t, &l)).unwrap();
        assert_ne!(outsider.bootstrap_key(), x.bootstrap_key());
        assert_ne!(outsider.sim_seed(3), x.sim_seed(3));
        assert!(matches!(x.protocol.reconciliation, Reconciliation::Ldpc(_)));
        // Longer fibre: fewer detections per pulse, so more pulses per block.
        let mut far = l.clone();
        far.length_km = 50.0;
        assert!(
            PhotonLinkConfig::new(&t, "x", &far, s.clone())
                .unwrap()
                .pulses
                > x.pulses
        );
        // A link too long for the block size is refused, not left to run for days.
        far.length_km = 400.0;
        assert!(PhotonLinkConfig::new(&t, "x", &far, s).is_err());
    }

    #[test]
    fn the_example_topology_has_a_usable_photon_link() {
        let t = Topology::from_toml(include_str!("../../../../docs/examples/tokyo-photon.toml"))
            .unwrap();
        let l = t.link("hakusan", "ueno").unwrap();
        assert_eq!(l.key_source(), Ok(kagi_control::KeySource::Photon));
        let c = PhotonLinkConfig::new(&t, "ueno", l, LinkSecret::generate()).unwrap();
        assert!(!c.alice && c.pulses > 1_000_000_000);
    }
}
