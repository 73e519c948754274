//! Simulated devices of a photon link: each end runs the same seeded photon-level simulation of
//! a block and keeps only its own device's records — the transmitter's (intensity, basis, bit)
//! at Alice, the detector's (which pulses clicked, basis, bit) at Bob. Everything after this is
//! the real post-processing protocol between the two nodes.
//!
//! The simulation itself is [`kagi_postproc::link_machine::model::block_records`], which
//! `kagi sim` runs too.

use kagi_postproc::link_machine::model::block_records;
use kagi_postproc::photon_records::Side;
use kagi_postproc::protocol::{AliceRaw, BobRaw};
use kagi_quantum::photon::PhotonParams;

/// Alice's (transmitter's) records of block `block`.
///
/// # Errors
/// Simulator parameters out of range.
pub fn alice_block(
    params: PhotonParams,
    link_seed: u64,
    block: u64,
    pulses: usize,
) -> Result<AliceRaw, kagi_quantum::ModelError> {
    block_records(params, link_seed, block, pulses, Side::Alice).map(|(a, _)| a)
}

/// Bob's (detector's) records of block `block`.
///
/// # Errors
/// Simulator parameters out of range.
pub fn bob_block(
    params: PhotonParams,
    link_seed: u64,
    block: u64,
    pulses: usize,
) -> Result<BobRaw, kagi_quantum::ModelError> {
    block_records(params, link_seed, block, pulses, Side::Bob).map(|(_, b)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_see_the_same_detections_and_blocks_differ() {
        let p = PhotonParams {
            length_km: 1.0,
            threads: 1,
            ..PhotonParams::default()
        };
        let a = alice_block(p, 42, 1, 300_000).unwrap();
        let b = bob_block(p, 42, 1, 300_000).unwrap();
        assert!(b.pulses > 100);
        assert_eq!(a.intensity.len(), b.pulses);
        assert_eq!(a.basis.len(), b.basis.len());
        // Same basis → mostly the same bit (QBER a few %).
        let (mut same, mut agree) = (0, 0);
        for i in 0..b.pulses {
            if a.basis.get(i) == b.basis.get(i) {
                same += 1;
                agree += usize::from(a.bit.get(i) == b.bit.get(i));
            }
        }
        assert!(agree as f64 > 0.9 * same as f64, "{agree}/{same}");
        let next = bob_block(p, 42, 2, 300_000).unwrap();
        assert_ne!(next.bit, b.bit);
    }
}
