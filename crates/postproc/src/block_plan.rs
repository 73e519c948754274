//! Choosing the post-processing block size from the finite-key model.
//!
//! A block of `n` sifted key bits yields ℓ(n) secret bits by the same finite-key formula the
//! protocol applies ([`crate::finite_key`], Lim et al. 2014), evaluated here on the counts a
//! channel is *expected* to give, minus the authentication key the block's messages spend.
//! Below some size the Hoeffding and γ terms eat everything and a block yields no key; the
//! fraction ℓ(n)/n then rises towards its asymptote. [`BlockModel::choose`] picks the smallest
//! block on a 1.26× ladder that reaches a set share of the best fraction any allowed block
//! reaches (the knee of the curve): larger blocks buy little more key for more memory and
//! latency.

use crate::finite_key::{h2, BlockCounts, DecoySettings};
use crate::protocol::VERIFY_BITS;
use kagi_quantum::photon::{Intensity, PhotonParams};

/// Smallest block the ladder considers, sifted bits.
pub const MIN_BLOCK_BITS: u64 = 100_000;
/// Default share of the best secret fraction (over blocks up to the cap) the chosen block must
/// reach: half. The fraction climbs steeply from the first block with key to about half its
/// asymptote and slowly after that (at 45 km, 3.4 % QBER, `kagi link-sim`'s defaults: 0.011 at
/// 10^6 sifted bits, 0.13 at 3.2·10^6, 0.24 at 10^8), so this is the smallest block that is not
/// mostly finite-size loss.
pub const KNEE_SHARE: f64 = 0.5;

/// What a channel is expected to give, per pulse of each intensity class, and how the block
/// will be reconciled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockModel {
    /// Decoy settings of the protocol (intensities, their probabilities, ε).
    pub decoy: DecoySettings,
    /// Probability that each end picks the key basis.
    pub p_key: f64,
    /// Expected gain Q_k (detection probability of a pulse of class k).
    pub gain: [f64; 3],
    /// Expected error rate E_k of sifted detections of class k.
    pub qber: [f64; 3],
    /// Reconciliation efficiency f expected (leak = f·n·h(QBER) + the verification hash).
    pub f_ec: f64,
    /// Authentication key one block's messages spend, bits.
    pub auth_bits: u64,
}

/// The expected outcome of one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockEstimate {
    /// Sifted key-basis bits of the block.
    pub sifted_bits: u64,
    /// Pulses needed to collect them.
    pub pulses: f64,
    /// Expected secret bits after authentication key is paid back (0 if none).
    pub secret_bits: u64,
    /// `secret_bits / sifted_bits`.
    pub fraction: f64,
    /// Expected key-basis error rate.
    pub qber: f64,
}

impl BlockModel {
    /// The model of a photon-simulator link (`kagi_quantum::photon`): gains and error rates
    /// per intensity class from its analytic expectation (dead time not included).
    pub fn for_photon_link(
        params: &PhotonParams,
        decoy: DecoySettings,
        f_ec: f64,
        auth_bits: u64,
    ) -> Self {
        let mut gain = [0.0; 3];
        let mut qber = [0.0; 3];
        for (k, class) in [Intensity::Signal, Intensity::Decoy, Intensity::Vacuum]
            .into_iter()
            .enumerate()
        {
            (gain[k], qber[k]) = params.expected_gain_qber(class);
        }
        Self {
            decoy,
            p_key: params.p_z,
            gain,
            qber,
            f_ec,
            auth_bits,
        }
    }

    /// Expected sifted key-basis bits per pulse.
    pub fn sifted_per_pulse(&self) -> f64 {
        let pk = self.p_key * self.p_key;
        (0..3).map(|k| self.decoy.p[k] * self.gain[k] * pk).sum()
    }

    /// Expected key-basis error rate.
    pub fn qber(&self) -> f64 {
        let (mut n, mut e) = (0.0, 0.0);
        for k in 0..3 {
            let x = self.decoy.p[k] * self.gain[k];
            n += x;
            e += x * self.qber[k];
        }
        if n > 0.0 {
            e / n
        } else {
            0.5
        }
    }

    /// Counts a block of `pulses` pulses is expected to give.
    pub fn expected_counts(&self, pulses: f64) -> BlockCounts {
        let (pk, pt) = (
            self.p_key * self.p_key,
            (1.0 - self.p_key) * (1.0 - self.p_key),
        );
        let mut c = BlockCounts::default();
        for k in 0..3 {
            let det = pulses * self.decoy.p[k] * self.gain[k];
            c.n_key[k] = (det * pk) as u64;
            c.n_test[k] = (det * pt) as u64;
            c.m_test[k] = (det * pt * self.qber[k]) as u64;
        }
        c
    }

    /// Expected outcome of a block of `sifted_bits` sifted key bits.
    pub fn estimate(&self, sifted_bits: u64) -> BlockEstimate {
        let spp = self.sifted_per_pulse();
        let pulses = if spp > 0.0 {
            sifted_bits as f64 / spp
        } else {
            f64::INFINITY
        };
        let q = self.qber();
        let secret = if pulses.is_finite() && q < 0.5 {
            let c = self.expected_counts(pulses);
            let n: u64 = c.n_key.iter().sum();
            let leak = (self.f_ec * n as f64 * h2(q)).ceil() as u64 + VERIFY_BITS;
            self.decoy
                .key_length(&c, leak)
                .map_or(0.0, |k| k.raw - self.auth_bits as f64)
        } else {
            0.0
        };
        let secret_bits = if secret.is_finite() && secret > 0.0 {
            secret as u64
        } else {
            0
        };
        BlockEstimate {
            sifted_bits,
            pulses,
            secret_bits,
            fraction: secret_bits as f64 / sifted_bits.max(1) as f64,
            qber: q,
        }
    }

    /// Block sizes considered: [`MIN_BLOCK_BITS`] · 10^(i/10) up to `max_bits`.
    fn ladder(max_bits: u64) -> impl Iterator<Item = u64> {
        (0..)
            .map(|i| (MIN_BLOCK_BITS as f64 * 10f64.powf(i as f64 / 10.0)).round() as u64)
            .take_while(move |&b| b <= max_bits.max(MIN_BLOCK_BITS))
    }

    /// The smallest block on the ladder (up to `max_bits`) expected to yield any key.
    pub fn smallest_with_key(&self, max_bits: u64) -> Option<BlockEstimate> {
        Self::ladder(max_bits)
            .map(|b| self.estimate(b))
            .find(|e| e.secret_bits > 0)
    }

    /// The smallest block on the ladder (up to `max_bits`) whose expected secret fraction is at
    /// least `share` of the best fraction on the ladder; `None` when no block up to `max_bits`
    /// yields key.
    pub fn choose(&self, max_bits: u64, share: f64) -> Option<BlockEstimate> {
        let all: Vec<BlockEstimate> = Self::ladder(max_bits).map(|b| self.estimate(b)).collect();
        let best = all.iter().map(|e| e.fraction).fold(0.0, f64::max);
        if best <= 0.0 {
            return None;
        }
        all.into_iter().find(|e| e.fraction >= share * best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GYS-like link at transmittance `eta`: Q = Y0 + 1 − e^{−ημ}, E = (Y0/2 + e_d(1 − e^{−ημ}))/Q.
    fn model(eta: f64, e_d: f64) -> BlockModel {
        let decoy = DecoySettings {
            mu: [0.48, 0.05, 0.0],
            p: [0.6, 0.25, 0.15],
            eps_sec: 1e-10,
            eps_cor: 1e-15,
        };
        let mut gain = [0.0; 3];
        let mut qber = [0.0; 3];
        for k in 0..3 {
            let click = 1.0 - (-eta * decoy.mu[k]).exp();
            gain[k] = 1.7e-6 + click;
            qber[k] = (0.85e-6 + e_d * click) / gain[k];
        }
        BlockModel {
            decoy,
            p_key: 0.7,
            gain,
            qber,
            f_ec: 1.07,
            auth_bits: 500 * 128,
        }
    }

    #[test]
    fn fraction_rises_with_the_block_and_small_blocks_yield_nothing() {
        let m = model(0.005, 0.033);
        let small = m.estimate(200_000);
        let large = m.estimate(50_000_000);
        assert_eq!(small.secret_bits, 0, "{small:?}");
        assert!(large.fraction > 0.05, "{large:?}");
        assert!(m.estimate(20_000_000).fraction < large.fraction);
        // Expected QBER ≈ e_d for a clean channel.
        assert!((large.qber - 0.033).abs() < 0.003, "{large:?}");
    }

    #[test]
    fn chosen_block_is_the_knee_and_yields_key() {
        let m = model(0.005, 0.033);
        let c = m.choose(100_000_000, KNEE_SHARE).expect("key at 1e8");
        let first = m.smallest_with_key(100_000_000).unwrap();
        assert!(c.secret_bits > 0);
        assert!(c.sifted_bits >= first.sifted_bits);
        let best = m.estimate(100_000_000).fraction;
        assert!(c.fraction >= KNEE_SHARE * best * 0.99, "{c:?} best {best}");
        // The ladder step below the choice is under the knee.
        let below = m.estimate((c.sifted_bits as f64 / 10f64.powf(0.1)) as u64);
        assert!(below.fraction < KNEE_SHARE * best, "{below:?}");
    }

    #[test]
    fn photon_link_at_45_km_gets_a_block_with_key() {
        // `kagi link-sim --distance 45` defaults: GYS link, p_signal 0.5, p_decoy 0.3, p_x 0.5.
        let p = PhotonParams {
            length_km: 45.0,
            p_signal: 0.5,
            p_decoy: 0.3,
            p_z: 0.5,
            ..PhotonParams::default()
        };
        let decoy = DecoySettings {
            mu: [p.link.mu, p.link.nu, 0.0],
            p: [0.5, 0.3, 0.2],
            eps_sec: 1e-10,
            eps_cor: 1e-15,
        };
        let m = BlockModel::for_photon_link(&p, decoy, 1.07, 500 * 128);
        // Blocks of a few 10^5 sifted bits yield nothing here.
        assert_eq!(m.estimate(500_000).secret_bits, 0);
        let c = m.choose(100_000_000, KNEE_SHARE).unwrap();
        assert!(c.secret_bits > 100_000, "{c:?}");
        assert!(c.sifted_bits < 10_000_000, "{c:?}");
    }

    #[test]
    fn hopeless_channels_have_no_block() {
        let m = model(0.005, 0.12);
        assert!(m.choose(100_000_000, KNEE_SHARE).is_none());
        assert!(m.smallest_with_key(100_000_000).is_none());
    }
}
