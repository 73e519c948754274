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
use kagi_postproc::link_machine::model::PhotonModel;
use kagi_postproc::link_machine::{
    Action, ControlKey, LinkError, LinkMachine, LinkSettings, Note, Raw,
};
use kagi_postproc::protocol::ProtocolConfig;
use kagi_quantum::photon::PhotonParams;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, watch};

use crate::driver::DriverMsg;
use crate::link_secret::LinkSecret;
use crate::peer::Peers;
use kagi_km::NodeId;
use ledger::{AuthLedger, LedgerError};

pub use kagi_postproc::link_machine::model::{
    BLOCK_TIMEOUT, BOOTSTRAP_BYTES, DEFAULT_BLOCK_BITS, HELLO_EVERY, REPLY_GRACE, RESEND_EVERY,
    RESERVE_BYTES,
};

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
        // The model both drivers share (`kagi sim` runs the same), so that what the simulator
        // runs is what the node runs.
        let model = PhotonModel::for_link(spec, topo.rate_multiplier).map_err(bad)?;
        Ok(Self {
            alice: me < peer.as_str(),
            peer,
            params: model.params,
            secret,
            pulses: model.pulses,
            min_block_time: model.min_block_time,
            protocol: model.protocol,
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
        PhotonModel {
            params: self.params,
            protocol: self.protocol,
            pulses: self.pulses,
            min_block_time: self.min_block_time,
        }
        .settings(self.alice, floor)
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
                        peer: NodeId::from(&peer),
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
    use kagi_postproc::protocol::Reconciliation;

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
