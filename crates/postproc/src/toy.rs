//! A small decoy-BB84 channel for tests and benchmarks of the post-processing alone.
//!
//! Not a physics model (that is `kagi_quantum::photon`): each pulse gets an intensity class,
//! basis and bit; it is detected with probability `1 − e^{−η μ_k} + y0`; a detection in the
//! matching basis is wrong with probability `e_d` (signal photons) or ½ (dark counts); Bob's
//! basis is random. An intercept-resend eavesdropper on a fraction of pulses measures in a
//! random basis and resends: when her basis differs from Alice's, Bob's same-basis bit is random.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bits::BitVec;
use crate::protocol::{AliceRaw, BobRaw};

/// Parameters of the toy channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToyChannel {
    /// Overall transmittance η (fibre and detector).
    pub eta: f64,
    /// Intensities μ1, μ2, μ3.
    pub mu: [f64; 3],
    /// Probabilities of the intensities.
    pub p_mu: [f64; 3],
    /// Probability of the key basis (for Alice and Bob each).
    pub p_key: f64,
    /// Intrinsic error probability of a detected photon.
    pub e_d: f64,
    /// Dark-count yield per pulse.
    pub y0: f64,
    /// Fraction of pulses intercepted and resent by an eavesdropper.
    pub eve: f64,
}

impl Default for ToyChannel {
    fn default() -> Self {
        Self {
            eta: 0.2,
            mu: [0.5, 0.15, 0.0],
            p_mu: [0.6, 0.25, 0.15],
            p_key: 0.5,
            e_d: 0.02,
            y0: 1e-5,
            eve: 0.0,
        }
    }
}

impl ToyChannel {
    /// Generates `pulses` pulses of records for both ends.
    pub fn generate(&self, pulses: usize, seed: u64) -> (AliceRaw, BobRaw) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut a = AliceRaw {
            intensity: Vec::with_capacity(pulses),
            basis: BitVec::zeros(pulses),
            bit: BitVec::zeros(pulses),
        };
        let mut b = BobRaw {
            pulses,
            ..Default::default()
        };
        let det: Vec<f64> = self
            .mu
            .iter()
            .map(|&m| 1.0 - (-self.eta * m).exp())
            .collect();
        for i in 0..pulses {
            let u: f64 = rng.gen();
            let k = if u < self.p_mu[0] {
                0
            } else if u < self.p_mu[0] + self.p_mu[1] {
                1
            } else {
                2
            };
            let ab = !rng.gen_bool(self.p_key);
            let bit: bool = rng.gen();
            a.intensity.push(k as u8);
            a.basis.set(i, ab);
            a.bit.set(i, bit);
            let photon = rng.gen_bool(det[k]);
            let dark = rng.gen_bool(self.y0);
            if !photon && !dark {
                continue;
            }
            let bb = !rng.gen_bool(self.p_key);
            let mut out = if photon && bb == ab {
                bit ^ rng.gen_bool(self.e_d)
            } else {
                rng.gen()
            };
            if photon && bb == ab && self.eve > 0.0 && rng.gen_bool(self.eve) && rng.gen::<bool>() {
                // Eve measured in the other basis: Bob's result is random.
                out = rng.gen();
            }
            b.detected.push(i as u32);
            b.basis.push(bb);
            b.bit.push(out);
        }
        (a, b)
    }
}
