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
use std::time::Duration;

use kagi_control::{LinkSpec, Topology};
use kagi_keymat::Key;
use kagi_km::Input;
use kagi_postproc::cascade::CascadeParams;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::ldpc::LdpcParams;
use kagi_postproc::link_machine::{
    Action, ControlKey, LinkError, LinkMachine, LinkSettings, Note, Raw,
};
use kagi_postproc::protocol::{ProtocolConfig, Reconciliation};
use kagi_quantum::photon::{Intensity, PhotonParams};
use kagi_quantum::DecoyBb84Params;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, watch};

use crate::driver::DriverMsg;
use crate::link_secret::LinkSecret;
use crate::peer::Peers;
use ledger::{AuthLedger, LedgerError};

/// Pads one block reserves: room for 1024 authenticated messages (Cascade uses 300–550, LDPC
/// about 15). A block that fails hands back what it did not use
/// ([`kagi_postproc::link_machine::FAILED_BLOCK_SLACK_PADS`]).
pub const RESERVE_BYTES: u64 = 1024 * kagi_postproc::protocol::PAD_LEN as u64;
/// Pre-shared authentication key of a link (simulated: derived from the link secret).
pub const BOOTSTRAP_BYTES: usize = 16 + 128 * RESERVE_BYTES as usize;
/// How long Alice keeps a block in progress without hearing from Bob.
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// Bob's wait for the next message of a block, beyond four times his own simulation time of
/// the block (Alice simulates it too before her first answer). A message lost while a
/// connection was re-established thus costs one block, not the link.
pub const REPLY_GRACE: Duration = Duration::from_secs(20);
/// How often a restarted Alice repeats her `Hello` until Bob's next `Start` reaches her (the
/// first may be sent before the peer connection is up again).
pub const HELLO_EVERY: Duration = Duration::from_secs(2);
/// Bob's first wait (at least twice his simulation time of the block, doubled after each copy)
/// before he sends his last message of a block again: an answer lost while a restarted peer's
/// connection is re-established then costs a copy, not the block.
pub const RESEND_EVERY: Duration = Duration::from_secs(2);
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

    /// The state machine's settings; block numbers stay above `floor`.
    pub fn settings(&self, floor: u64) -> LinkSettings {
        LinkSettings {
            alice: self.alice,
            protocol: self.protocol,
            reserve_bytes: RESERVE_BYTES,
            min_block_time: self.min_block_time,
            block_timeout: BLOCK_TIMEOUT,
            reply_grace: REPLY_GRACE,
            hello_every: HELLO_EVERY,
            resend_every: RESEND_EVERY,
            floor,
        }
    }

    /// The key that authenticates the link's Start, Refuse and Hello frames, from the link
    /// secret that only the two ends hold.
    pub fn control_key(&self) -> ControlKey {
        ControlKey::new(self.secret.derive(b"photon-control-mac", 0))
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

/// A photon link end's simulation of its device for one block, off the async threads.
type SimTask = tokio::task::JoinHandle<Result<(u64, Raw), kagi_quantum::ModelError>>;

/// What woke a photon link's driver loop.
enum Wake {
    Stop,
    Frame(Option<Vec<u8>>),
    Records(Result<Result<(u64, Raw), kagi_quantum::ModelError>, tokio::task::JoinError>),
    Timer,
}

/// Everything a running photon link end needs: the state machine
/// ([`kagi_postproc::link_machine::LinkMachine`]) over this end's SQLite ledger, and the
/// channels it is driven from.
pub struct PhotonLink {
    cfg: PhotonLinkConfig,
    /// `None` only while a step runs on a blocking thread.
    machine: Option<LinkMachine<AuthLedger>>,
    peers: Peers,
    inbox: mpsc::UnboundedSender<DriverMsg>,
    frames: mpsc::Receiver<Vec<u8>>,
}

impl PhotonLink {
    /// Opens the link's ledger in `db` (shared by the node's photon links), sealed with
    /// `sealer`. Block numbers stay above `high_water` (what the key store already holds).
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
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let machine = LinkMachine::new(
            cfg.settings(high_water.unwrap_or(0)),
            ledger,
            cfg.control_key(),
            seed,
        );
        Ok(Self {
            cfg,
            machine: Some(machine),
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
            auth_pads = self.machine.as_ref().map_or(0, |m| m.ledger().available()),
            "photon QKD link"
        );
        if let Err(e) = self.drive(&mut stop).await {
            tracing::error!(peer = %self.cfg.peer, error = %e, "photon link stopped");
        }
    }

    fn broken(&self, why: impl std::fmt::Display) -> PhotonLinkError {
        PhotonLinkError::Settings(self.cfg.peer.clone(), why.to_string())
    }

    /// The driver loop: frames, simulated records and the machine's deadlines in; its actions
    /// out. Every step of the machine (which may run a block's error correction or privacy
    /// amplification) runs on a blocking thread.
    async fn drive(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), PhotonLinkError> {
        let origin = tokio::time::Instant::now();
        let now = move || origin.elapsed();
        let t = now();
        let no_machine = self.broken("no state machine");
        self.machine.as_mut().ok_or(no_machine)?.start(t);
        let mut sim: Option<SimTask> = None;
        loop {
            self.flush(&mut sim);
            let deadline = self
                .machine
                .as_ref()
                .and_then(|m| m.poll_timeout())
                .map(|d| origin + d);
            // What woke the loop, taken out of `select!` so that its futures (and the watch
            // guard) are gone before the step awaits.
            let wake = tokio::select! {
                _ = stop.wait_for(|v| *v) => Wake::Stop,
                f = self.frames.recv() => Wake::Frame(f),
                r = async { sim.as_mut().expect("guarded by the branch condition").await }, if sim.is_some() => Wake::Records(r),
                _ = tokio::time::sleep_until(deadline.unwrap_or(origin)), if deadline.is_some() => Wake::Timer,
            };
            match wake {
                Wake::Stop | Wake::Frame(None) => return Ok(()),
                Wake::Frame(Some(bytes)) => {
                    self.step(now(), move |m, t| m.handle_frame(t, &bytes))
                        .await?
                }
                Wake::Records(r) => {
                    sim = None;
                    let (block, raw) =
                        r.map_err(|e| self.broken(e))?.map_err(|e| self.broken(e))?;
                    self.step(now(), move |m, t| m.handle_records(t, block, raw))
                        .await?;
                }
                Wake::Timer => self.step(now(), |m, t| m.handle_timeout(t)).await?,
            }
        }
    }

    /// Runs `f` on the machine on a blocking thread.
    async fn step<F>(&mut self, now: Duration, f: F) -> Result<(), PhotonLinkError>
    where
        F: FnOnce(&mut LinkMachine<AuthLedger>, Duration) -> Result<(), LinkError<LedgerError>>
            + Send
            + 'static,
    {
        let Some(mut m) = self.machine.take() else {
            return Err(self.broken("no state machine"));
        };
        let (m, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut m, now);
            (m, r)
        })
        .await
        .map_err(|e| self.broken(e))?;
        self.machine = Some(m);
        match r {
            Ok(()) => Ok(()),
            Err(LinkError::Ledger(e)) => Err(e.into()),
            Err(e) => Err(self.broken(e)),
        }
    }

    /// Carries out the machine's actions.
    fn flush(&mut self, sim: &mut Option<SimTask>) {
        let Some(m) = self.machine.as_mut() else {
            return;
        };
        let peer = self.cfg.peer.clone();
        while let Some(a) = m.poll_action() {
            match a {
                Action::Send(bytes) => self.peers.send_link(&peer, bytes),
                Action::Simulate { block } => {
                    let (params, seed, pulses, alice) = (
                        self.cfg.params,
                        self.cfg.sim_seed(block),
                        self.cfg.pulses,
                        self.cfg.alice,
                    );
                    // A simulation of a block given up meanwhile still runs to its end; the
                    // machine ignores its records.
                    *sim = Some(tokio::task::spawn_blocking(move || {
                        Ok((
                            block,
                            if alice {
                                Raw::Alice(records::alice_block(params, seed, block, pulses)?)
                            } else {
                                Raw::Bob(records::bob_block(params, seed, block, pulses)?)
                            },
                        ))
                    }));
                }
                Action::Key { block, key } => {
                    let _ = self.inbox.send(DriverMsg::Input(Input::LinkKeys {
                        peer: peer.clone(),
                        block,
                        key,
                    }));
                }
                Action::Note(n) => log_note(&peer, n),
            }
        }
    }
}

/// Logs what the machine noted.
fn log_note(peer: &str, n: Note) {
    match n {
        Note::BlockKey {
            block,
            stats,
            key_bytes,
            took,
        } => tracing::info!(
            peer,
            block,
            sifted = stats.sifted_bits,
            qber = stats.qber_key.unwrap_or(stats.qber_test),
            f = stats.ec_efficiency.unwrap_or(f64::NAN),
            key_bytes,
            messages = stats.messages,
            auth_bytes = stats.auth_key_bits / 8,
            secs = took.as_secs_f64(),
            "photon link block"
        ),
        Note::BlockFailed {
            block,
            why,
            handed_back,
        } => {
            tracing::warn!(peer, block, reason = %why, handed_back, "photon link block gave no key")
        }
        Note::Refusing { block, refusal } => {
            tracing::info!(peer, block, %refusal, "refusing reservation")
        }
        Note::Exhausted => tracing::error!(
            peer,
            "photon link: authentication key exhausted; no more blocks"
        ),
        Note::Rejected(e) => tracing::warn!(peer, error = %e, "photon link frame dropped"),
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
