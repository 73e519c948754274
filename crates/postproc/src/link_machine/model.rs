//! A photon link's model, as both its drivers use it: the node (`kagi up`, over its peer channel)
//! and the planning simulator (`kagi sim`, under virtual time). From a topology link's settings
//! it derives the photon simulator's parameters, the protocol's settings, the pulses per block
//! and the block time; [`block_records`] simulates one end's records of a block. One piece of
//! code, so that what the simulator runs is what the node runs.

use std::time::Duration;

use kagi_quantum::photon::{Detections, Intensity, PhotonParams, PhotonSim};
use kagi_quantum::DecoyBb84Params;

use super::LinkSettings;
use crate::cascade::CascadeParams;
use crate::finite_key::DecoySettings;
use crate::ldpc::LdpcParams;
use crate::photon_records::{RecordBuilder, Side};
use crate::protocol::{AliceRaw, BobRaw, ProtocolConfig, Reconciliation, PAD_LEN};

/// Pads one block reserves: room for 1024 authenticated messages (Cascade uses 300–550, LDPC
/// about 15). A block that fails hands back what it did not use
/// ([`super::FAILED_BLOCK_SLACK_PADS`]).
pub const RESERVE_BYTES: u64 = 1024 * PAD_LEN as u64;
/// Pre-shared authentication key of a link: the 16-byte hash key and 128 reservations of pads.
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
/// Pulses simulated per call of the photon simulator (bounded memory).
const CHUNK: usize = 1 << 22;

/// A topology link's photon settings (`[links.photon]`), every field optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelInput<'a> {
    /// Fibre length, km.
    pub length_km: f64,
    /// Sifted key bits per block (default [`DEFAULT_BLOCK_BITS`]).
    pub block_bits: Option<f64>,
    /// Optical misalignment error.
    pub e_d: Option<f64>,
    /// Bob's detection efficiency.
    pub eta_bob: Option<f64>,
    /// Probability of the key basis at both ends (default 0.7).
    pub p_key_basis: Option<f64>,
    /// `"cascade"` (default) or `"ldpc"`.
    pub reconciliation: Option<&'a str>,
    /// The topology's rate multiplier (a demo clock: blocks come that much faster).
    pub rate_multiplier: f64,
}

/// What both ends of a photon link derive from its settings.
#[derive(Debug, Clone, Copy)]
pub struct PhotonModel {
    /// Simulator parameters.
    pub params: PhotonParams,
    /// Protocol settings.
    pub protocol: ProtocolConfig,
    /// Pulses per block.
    pub pulses: usize,
    /// Shortest time per block (the source's repetition rate).
    pub min_block_time: Duration,
}

impl PhotonModel {
    /// The model of a topology link from its `[links.photon]` settings (defaults when absent)
    /// and the topology's rate multiplier: what the node and `kagi sim` both run.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn for_link(link: &kagi_control::LinkSpec, rate_multiplier: f64) -> Result<Self, String> {
        let ps = link.photon.clone().unwrap_or_default();
        Self::new(&ModelInput {
            length_km: link.length_km,
            block_bits: ps.block_bits,
            e_d: ps.e_d,
            eta_bob: ps.eta_bob,
            p_key_basis: ps.p_key_basis,
            reconciliation: ps.reconciliation.as_deref(),
            rate_multiplier,
        })
    }

    /// The model of a link with settings `m`.
    ///
    /// # Errors
    /// Settings the simulator or the protocol reject, or a block too large for the link, with
    /// the reason.
    pub fn new(m: &ModelInput<'_>) -> Result<Self, String> {
        let mut link = DecoyBb84Params::default();
        if let Some(e) = m.e_d {
            link.e_d = e;
        }
        if let Some(e) = m.eta_bob {
            link.eta_bob = e;
        }
        let p_z = m.p_key_basis.unwrap_or(0.7);
        let (p_signal, p_decoy) = (0.6, 0.25);
        let params = PhotonParams {
            link,
            length_km: m.length_km,
            p_signal,
            p_decoy,
            p_z,
            threads: 1,
        };
        params.validate().map_err(|e| e.to_string())?;
        let reconciliation = match m.reconciliation {
            None | Some("cascade") => Reconciliation::Cascade(CascadeParams::default()),
            Some("ldpc") => Reconciliation::Ldpc(LdpcParams::default()),
            Some(other) => return Err(format!("reconciliation {other:?} is not available")),
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
        protocol.decoy.validate().map_err(|e| e.to_string())?;
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
        let block_bits = m.block_bits.unwrap_or(DEFAULT_BLOCK_BITS);
        let pulses = block_bits / per_pulse.max(1e-300);
        if !(pulses.is_finite() && pulses <= 1e11) {
            return Err(format!(
                "{block_bits} sifted bits need {pulses:.3e} pulses per block at {} km; shorten the \
                 link or the block",
                m.length_km
            ));
        }
        let pulses = (pulses.ceil() as usize).div_ceil(64) * 64;
        let rate = link.rep_rate_hz * m.rate_multiplier.max(1e-9);
        Ok(Self {
            params,
            protocol,
            pulses,
            min_block_time: Duration::from_secs_f64((pulses as f64 / rate).min(3600.0)),
        })
    }

    /// The state machine's settings at one end; block numbers stay above `floor`.
    pub fn settings(&self, alice: bool, floor: u64) -> LinkSettings {
        LinkSettings {
            alice,
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
}

/// The records of block `block` (the photon simulator seeded from the link seed and the block
/// number), kept for `side`: both ends run the same simulation and keep their own device's
/// records; `Side::Both` gives both from one run (what one process simulating both ends does).
///
/// Only detected pulses are kept: Alice learns which those are from Bob's first message in any
/// case, and a block of 10^9 pulses would not fit in memory otherwise.
///
/// # Errors
/// Simulator parameters out of range.
pub fn block_records(
    params: PhotonParams,
    link_seed: u64,
    block: u64,
    pulses: usize,
    side: Side,
) -> Result<(AliceRaw, BobRaw), kagi_quantum::ModelError> {
    let seed = link_seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut sim = PhotonSim::new(params, seed)?;
    let mut det = Detections::default();
    let mut b = RecordBuilder::new(side);
    let mut done = 0;
    while done < pulses {
        let n = CHUNK.min(pulses - done);
        sim.run_into(n, &mut det);
        b.push(&det);
        done += n;
    }
    let (alice, bob, _) = b.finish();
    Ok((alice, bob))
}
