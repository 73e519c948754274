//! Alice's and Bob's protocol records from the photon-level simulator's detections
//! (`kagi_quantum::photon`): the one piece of code `kagi link-sim` and the node's photon links
//! use to turn simulated pulses into [`AliceRaw`] and [`BobRaw`].
//!
//! Only detected pulses are kept and the block is renumbered over its detections: Alice's
//! records of pulses Bob did not detect cannot influence the protocol (Bob's sifting message
//! names detected pulses only), and a block of 10^9–10^10 pulses would not fit in memory
//! otherwise. Pulse counts for reports come from the simulator.

use kagi_quantum::photon::Detections;

use crate::protocol::{AliceRaw, BobRaw};

/// Which end's records to keep (a node simulates its own device only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The transmitter's records (intensity, basis, bit).
    Alice,
    /// The detector's records (detections, basis, bit).
    Bob,
    /// Both (one process runs both ends, as `kagi link-sim` does).
    Both,
}

/// An intercept-resend eavesdropper on a fraction of the pulses (simulation only).
#[derive(Debug, Clone)]
pub struct InterceptResend {
    fraction: f64,
    state: u64,
}

impl InterceptResend {
    /// Eve measures and resends `fraction` of the pulses; her choices come from `seed`.
    pub fn new(fraction: f64, seed: u64) -> Self {
        Self {
            fraction,
            state: seed,
        }
    }

    /// SplitMix64 uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Bob's bit after Eve, for a pulse Bob measured in the same basis as Alice sent.
    fn bob_bit(&mut self, bit: bool) -> bool {
        if self.fraction > 0.0 && self.uniform() < self.fraction && self.uniform() < 0.5 {
            // Eve measured in the other basis and resent: Bob's same-basis result is random.
            self.uniform() < 0.5
        } else {
            bit
        }
    }
}

/// Accumulates one block's records from simulator chunks.
#[derive(Debug, Clone)]
pub struct RecordBuilder {
    side: Side,
    alice: AliceRaw,
    bob: BobRaw,
    eve: Option<InterceptResend>,
    detections: usize,
    sifted: u64,
    errors: u64,
}

impl RecordBuilder {
    /// An empty block keeping `side`'s records.
    pub fn new(side: Side) -> Self {
        Self {
            side,
            alice: AliceRaw::default(),
            bob: BobRaw::default(),
            eve: None,
            detections: 0,
            sifted: 0,
            errors: 0,
        }
    }

    /// Puts an intercept-resend eavesdropper on the channel for the pulses pushed from now on.
    pub fn with_eve(mut self, eve: InterceptResend) -> Self {
        self.eve = Some(eve);
        self
    }

    /// Appends the detected pulses of one simulator chunk.
    pub fn push(&mut self, d: &Detections) {
        let (alice, bob) = match self.side {
            Side::Alice => (true, false),
            Side::Bob => (false, true),
            Side::Both => (true, true),
        };
        for i in d.bob_detected.ones() {
            let ab = d.alice_basis.get(i);
            let bb = d.bob_basis.get(i);
            let a_bit = d.alice_bit.get(i);
            let mut bit = d.bob_bit.get(i);
            if ab == bb {
                if let Some(eve) = self.eve.as_mut() {
                    bit = eve.bob_bit(bit);
                }
            }
            if !ab && !bb {
                self.sifted += 1;
                self.errors += u64::from(bit != a_bit);
            }
            if alice {
                self.alice.intensity.push(d.intensity[i]);
                self.alice.basis.push(ab);
                self.alice.bit.push(a_bit);
            }
            if bob {
                self.bob.detected.push(self.detections as u32);
                self.bob.basis.push(bb);
                self.bob.bit.push(bit);
                self.bob.pulses = self.detections + 1;
            }
            self.detections += 1;
        }
    }

    /// Detections so far.
    pub fn detections(&self) -> usize {
        self.detections
    }

    /// Key-basis sifted bits so far (ground truth from the simulator, for reports).
    pub fn sifted_bits(&self) -> u64 {
        self.sifted
    }

    /// Key-basis errors so far (ground truth, for reports).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Ends the block: Alice's and Bob's records (empty for a side not kept) and the
    /// eavesdropper, to carry into the next block.
    pub fn finish(self) -> (AliceRaw, BobRaw, Option<InterceptResend>) {
        (self.alice, self.bob, self.eve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_quantum::photon::{PhotonParams, PhotonSim};

    fn run(side: Side, eve: Option<f64>) -> (AliceRaw, BobRaw, u64, u64) {
        let p = PhotonParams {
            length_km: 1.0,
            threads: 1,
            ..PhotonParams::default()
        };
        let mut sim = PhotonSim::new(p, 7).unwrap();
        let mut b = RecordBuilder::new(side);
        if let Some(f) = eve {
            b = b.with_eve(InterceptResend::new(f, 9));
        }
        for _ in 0..3 {
            b.push(&sim.run(100_000));
        }
        let (s, e) = (b.sifted_bits(), b.errors());
        let (a, bb, _) = b.finish();
        (a, bb, s, e)
    }

    #[test]
    fn one_side_equals_that_side_of_both() {
        let (a_both, b_both, s, _) = run(Side::Both, None);
        let (a, b_empty, s1, _) = run(Side::Alice, None);
        let (a_empty, b, _, _) = run(Side::Bob, None);
        assert!(b_both.pulses > 100);
        assert_eq!(a_both.intensity.len(), b_both.pulses);
        assert_eq!(
            (a.intensity, a.basis, a.bit),
            (a_both.intensity, a_both.basis, a_both.bit)
        );
        assert_eq!(
            (b.detected, b.basis, b.bit, b.pulses),
            (b_both.detected, b_both.basis, b_both.bit, b_both.pulses)
        );
        assert!(b_empty.detected.is_empty() && a_empty.intensity.is_empty());
        assert_eq!(s, s1);
    }

    #[test]
    fn records_agree_where_bases_agree_and_eve_raises_the_error_rate() {
        let (_, _, s, e) = run(Side::Both, None);
        let clean = e as f64 / s as f64;
        assert!(clean < 0.06, "{clean}");
        let (_, _, s, e) = run(Side::Both, Some(1.0));
        let eve = e as f64 / s as f64;
        // Intercept-resend on every pulse: about 25 % errors on top of e_d.
        assert!(eve > 0.2, "{eve}");
    }
}
