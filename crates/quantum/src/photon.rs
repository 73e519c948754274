//! Photon-level simulation of a decoy-state BB84 link.
//!
//! Every pulse gets Alice's intensity class (signal μ, weak decoy ν, vacuum), basis and bit,
//! and Bob's outcome: passive basis choice, two threshold detectors with dark counts,
//! misalignment, double clicks squashed to a random bit, afterpulsing and dead time.
//! The physics is the channel model of Ma, Qi, Zhao, Lo (PRA 72, 012326, 2005), applied
//! photon by photon: a coherent pulse of intensity μ_k through transmittance η gives Poisson
//! photon numbers η μ_k (1 − e_d) at the detector Alice's bit points to and η μ_k e_d at the
//! other one (η μ_k / 2 each when the bases differ); each detector also fires with dark-count
//! probability p_d = 1 − √(1 − Y0). The expected gains and QBER are then exactly those of
//! [`crate::DecoyBb84Params::gain_and_error_gain`] up to terms of order (η μ)² e_d.
//!
//! Output is compact (one byte per pulse for the intensity class, one bit per pulse for the
//! rest) so that 10^9 pulses fit in 1.8 GB. Runs are seeded and reproducible: the same seed
//! and the same sequence of `run` lengths give the same records, whatever the thread count.
//!
//! ```
//! use kagi_quantum::photon::{PhotonParams, PhotonSim};
//! let mut sim = PhotonSim::new(PhotonParams { length_km: 25.0, ..Default::default() }, 7).unwrap();
//! let d = sim.run(1 << 16);
//! let sifted = (0..d.pulses)
//!     .filter(|&i| d.bob_detected.get(i) && d.alice_basis.get(i) == d.bob_basis.get(i))
//!     .count();
//! assert!(sifted > 0);
//! ```

use crate::error::{self, ModelError, Result};
use crate::DecoyBb84Params;

/// Intensity class of a pulse, as stored in [`Detections::intensity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Intensity {
    /// Signal intensity μ (code 0).
    Signal = 0,
    /// Weak decoy intensity ν (code 1).
    Decoy = 1,
    /// Vacuum decoy (code 2).
    Vacuum = 2,
}

impl Intensity {
    /// The class of a stored code; `None` for codes other than 0, 1, 2.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Signal),
            1 => Some(Self::Decoy),
            2 => Some(Self::Vacuum),
            _ => None,
        }
    }
}

/// A packed bit vector (bit `i` is bit `i % 64` of word `i / 64`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BitVec {
    words: Vec<u64>,
    len: usize,
}

impl BitVec {
    /// `len` zero bits.
    pub fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i`. Panics if `i >= len()`.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit index {i} out of range {}", self.len);
        (self.words[i / 64] >> (i % 64)) & 1 == 1
    }

    /// Sets bit `i` to `v`. Panics if `i >= len()`.
    #[inline]
    pub fn set(&mut self, i: usize, v: bool) {
        assert!(i < self.len, "bit index {i} out of range {}", self.len);
        let m = 1u64 << (i % 64);
        if v {
            self.words[i / 64] |= m;
        } else {
            self.words[i / 64] &= !m;
        }
    }

    /// The packed words; bits past `len()` in the last word are zero.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Indices of the set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }

    fn clear_tail(&mut self) {
        let r = self.len % 64;
        if r != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << r) - 1;
            }
        }
    }
}

/// Parameters of the photon-level simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhotonParams {
    /// Link physics: α, η_Bob, Y0, e_d, μ, ν, p_ap, dead time, repetition rate (f and q are
    /// not used here). Defaults as [`DecoyBb84Params::default`].
    pub link: DecoyBb84Params,
    /// Fibre length, km (default 50).
    pub length_km: f64,
    /// Probability that a pulse is a signal (μ) pulse (default 0.8).
    pub p_signal: f64,
    /// Probability that a pulse is a weak decoy (ν) pulse (default 0.1); the rest are vacuum.
    pub p_decoy: f64,
    /// Probability that Alice (and, independently, Bob) chooses the Z basis (default 0.5).
    pub p_z: f64,
    /// Worker threads; 0 uses all available cores (default 0). Does not change the output.
    pub threads: usize,
}

impl Default for PhotonParams {
    fn default() -> Self {
        Self {
            link: DecoyBb84Params::default(),
            length_km: 50.0,
            p_signal: 0.8,
            p_decoy: 0.1,
            p_z: 0.5,
            threads: 0,
        }
    }
}

impl PhotonParams {
    /// Checks every parameter.
    ///
    /// # Errors
    /// [`ModelError`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<()> {
        self.link.validate()?;
        error::non_negative("distance_km", self.length_km)?;
        error::probability("p_signal", self.p_signal)?;
        error::probability("p_decoy", self.p_decoy)?;
        error::probability("p_z", self.p_z)?;
        if self.p_signal + self.p_decoy > 1.0 + 1e-12 {
            return Err(ModelError::OutOfRange {
                name: "p_decoy",
                value: self.p_decoy,
                reason: "p_signal + p_decoy must not exceed 1",
            });
        }
        Ok(())
    }

    /// Intensity (mean photons) of a class.
    pub fn intensity(&self, class: Intensity) -> f64 {
        match class {
            Intensity::Signal => self.link.mu,
            Intensity::Decoy => self.link.nu,
            Intensity::Vacuum => 0.0,
        }
    }

    /// Analytic expectation (Ma et al. 2005, Eqs. 6–9, with afterpulsing, without dead time)
    /// of the gain Q_k and error rate E_k of sifted same-basis pulses of a class.
    ///
    /// With `p_ap > 0` this is the usual approximation (as in Lim et al. 2014) that charges an
    /// afterpulse to the class of the pulse that caused it; the simulator places it, more
    /// physically, in the next live gate whatever that pulse's class, so the two agree
    /// exactly only for `p_ap = 0`.
    pub fn expected_gain_qber(&self, class: Intensity) -> (f64, f64) {
        let eta = self.link.eta_bob
            * crate::fibre_transmittance(self.link.alpha_db_per_km, self.length_km);
        let (q, eq) = self.link.gain_and_error_gain(self.intensity(class), eta);
        (q, if q > 0.0 { eq / q } else { 0.0 })
    }
}

/// Alice's and Bob's per-pulse records of one run.
///
/// Index `i` is the `i`-th pulse of the run. Bob's basis and bit are meaningful only where
/// `bob_detected` is set (they are 0 elsewhere, except `bob_basis`, which is Bob's passive
/// basis choice for every pulse).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Detections {
    /// Number of pulses.
    pub pulses: usize,
    /// Alice's intensity class per pulse: 0 signal, 1 decoy, 2 vacuum (see [`Intensity`]).
    pub intensity: Vec<u8>,
    /// Alice's basis per pulse: 0 = Z, 1 = X.
    pub alice_basis: BitVec,
    /// Alice's bit per pulse.
    pub alice_bit: BitVec,
    /// Whether Bob registered a detection (after dead time; afterpulses included).
    pub bob_detected: BitVec,
    /// Bob's basis per pulse: 0 = Z, 1 = X.
    pub bob_basis: BitVec,
    /// Bob's bit where detected (double clicks squashed to a random bit).
    pub bob_bit: BitVec,
    /// Detections where both detectors fired (bit chosen at random).
    pub double_clicks: u64,
    /// Detections caused by afterpulses.
    pub afterpulses: u64,
    /// Clicks lost because the detectors were dead.
    pub dead_time_losses: u64,
}

impl Detections {
    /// Alice's intensity class of pulse `i`. Panics if `i >= pulses`.
    pub fn intensity_class(&self, i: usize) -> Intensity {
        Intensity::from_code(self.intensity[i]).expect("the simulator writes codes 0..=2")
    }

    /// Indices of the detected pulses where Alice's and Bob's bases agree.
    pub fn sifted(&self) -> impl Iterator<Item = usize> + '_ {
        self.bob_detected
            .ones()
            .filter(|&i| self.alice_basis.get(i) == self.bob_basis.get(i))
    }
}

/// xoshiro256++ (Blackman, Vigna), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub(crate) struct Xoshiro256pp {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Xoshiro256pp {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xd134_2543_de82_ef95);
        let mut s = [0; 4];
        for v in &mut s {
            *v = splitmix64(&mut x);
        }
        Self { s }
    }

    #[inline(always)]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let r = (self.s[0].wrapping_add(self.s[3]))
            .rotate_left(23)
            .wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1) with 53 bits.
    #[inline]
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Pulses per independent random stream; a multiple of 64.
const CHUNK: usize = 1 << 16;

/// Probability `p` as a threshold on a uniform u32 (P(u < t) = t / 2^32).
fn threshold(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64
}

/// Per-class click probabilities, conditional on the bases agreeing or not.
#[derive(Debug, Clone, Copy)]
struct ClassPhysics {
    /// P(any click) as a u32 threshold (independent of the bases).
    any: u64,
    /// P(any click) as a float.
    p_any: f64,
    /// Bases agree: P(correct detector fires), P(wrong detector fires).
    same: (f64, f64),
    /// Bases differ: each detector fires with this probability.
    diff: f64,
}

#[derive(Debug, Clone, Copy)]
struct Physics {
    class: [ClassPhysics; 3],
    /// u32 thresholds: u < t_signal → signal; u < t_decoy → decoy; else vacuum.
    t_signal: u64,
    t_decoy: u64,
    /// Z basis threshold for basis choices (u32); exactly 1/2 uses raw bits.
    t_z: u64,
}

/// A raw click found by the parallel pass: pulse index within the run and which detectors.
#[derive(Debug, Clone, Copy)]
struct Click {
    index: usize,
    /// 1: only the detector of Alice's bit; 2: only the other one; 3: both.
    pattern: u8,
}

/// The photon-level decoy-BB84 link simulator.
#[derive(Debug, Clone)]
pub struct PhotonSim {
    params: PhotonParams,
    physics: Physics,
    seed: u64,
    /// Next chunk number (stream index) to use.
    next_chunk: u64,
    /// Stream for the sequential pass (double clicks, afterpulses).
    seq_rng: Xoshiro256pp,
    /// Dead-time gates still to wait at the start of the next run.
    dead_left: u64,
    /// An afterpulse pending for the first gate after the dead time.
    afterpulse_pending: bool,
    dead_gates: u64,
}

impl PhotonSim {
    /// A simulator with the given parameters and seed.
    ///
    /// # Errors
    /// [`ModelError`] for parameters out of range.
    pub fn new(params: PhotonParams, seed: u64) -> Result<Self> {
        params.validate()?;
        let l = &params.link;
        let eta = l.eta_bob * crate::fibre_transmittance(l.alpha_db_per_km, params.length_km);
        // Per-detector dark-count probability so that two detectors give Y0 in total.
        let pd = 1.0 - (1.0 - l.y0).sqrt();
        let fire = |mean: f64| 1.0 - (1.0 - pd) * (-mean).exp();
        let class = [l.mu, l.nu, 0.0].map(|k| {
            let m = eta * k;
            let p_any = 1.0 - (1.0 - pd) * (1.0 - pd) * (-m).exp();
            ClassPhysics {
                any: threshold(p_any),
                p_any,
                same: (fire(m * (1.0 - l.e_d)), fire(m * l.e_d)),
                diff: fire(m / 2.0),
            }
        });
        let physics = Physics {
            class,
            t_signal: threshold(params.p_signal),
            t_decoy: threshold(params.p_signal + params.p_decoy),
            t_z: threshold(params.p_z),
        };
        let dead_gates = (l.dead_time_s * l.rep_rate_hz).ceil() as u64;
        Ok(Self {
            params,
            physics,
            seed,
            next_chunk: 0,
            seq_rng: Xoshiro256pp::new(seed, u64::MAX),
            dead_left: 0,
            afterpulse_pending: false,
            dead_gates,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &PhotonParams {
        &self.params
    }

    /// Simulates the next `pulses` pulses. Successive calls continue the same link (the
    /// detector's dead time and pending afterpulses carry over).
    pub fn run(&mut self, pulses: usize) -> Detections {
        let mut d = Detections::default();
        self.run_into(pulses, &mut d);
        d
    }

    /// As [`PhotonSim::run`], but overwrites `out`, reusing its allocations (for pipelines
    /// that process block after block). The records are identical to those of `run`.
    pub fn run_into(&mut self, pulses: usize, out: &mut Detections) {
        fn reset(b: &mut BitVec, len: usize) {
            b.words.clear();
            b.words.resize(len.div_ceil(64), 0);
            b.len = len;
        }
        out.pulses = pulses;
        out.intensity.clear();
        out.intensity.resize(pulses, 0);
        for b in [
            &mut out.alice_basis,
            &mut out.alice_bit,
            &mut out.bob_detected,
            &mut out.bob_basis,
            &mut out.bob_bit,
        ] {
            reset(b, pulses);
        }
        out.double_clicks = 0;
        out.afterpulses = 0;
        out.dead_time_losses = 0;
        let d = out;
        let chunks = pulses.div_ceil(CHUNK);
        let first_chunk = self.next_chunk;
        self.next_chunk += chunks as u64;
        let threads = match self.params.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .clamp(1, chunks.max(1));
        let phys = self.physics;
        let seed = self.seed;
        const W: usize = CHUNK / 64;
        // Chunks are dealt to threads in contiguous runs; each chunk has its own stream.
        let per_thread = chunks.div_ceil(threads).max(1);
        let mut clicks: Vec<Vec<Click>> = Vec::new();
        std::thread::scope(|s| {
            let handles: Vec<_> = d
                .intensity
                .chunks_mut(CHUNK * per_thread)
                .zip(d.alice_basis.words.chunks_mut(W * per_thread))
                .zip(d.alice_bit.words.chunks_mut(W * per_thread))
                .zip(d.bob_basis.words.chunks_mut(W * per_thread))
                .enumerate()
                .map(|(t, (((inten, ab), abit), bb))| {
                    s.spawn(move || {
                        let mut out = Vec::new();
                        let base = t * per_thread;
                        for (c, (((inten, ab), abit), bb)) in inten
                            .chunks_mut(CHUNK)
                            .zip(ab.chunks_mut(W))
                            .zip(abit.chunks_mut(W))
                            .zip(bb.chunks_mut(W))
                            .enumerate()
                        {
                            let chunk = base + c;
                            let mut rng = Xoshiro256pp::new(seed, first_chunk + chunk as u64);
                            simulate_chunk(
                                &phys,
                                &mut rng,
                                chunk * CHUNK,
                                inten,
                                ab,
                                abit,
                                bb,
                                &mut out,
                            );
                        }
                        out
                    })
                })
                .collect();
            clicks = handles
                .into_iter()
                .map(|h| h.join().expect("photon simulation worker panicked"))
                .collect();
        });
        d.alice_basis.clear_tail();
        d.alice_bit.clear_tail();
        d.bob_basis.clear_tail();
        self.sequential_pass(d, clicks.into_iter().flatten());
    }

    /// Applies dead time, afterpulses and double-click squashing in time order.
    fn sequential_pass(&mut self, d: &mut Detections, clicks: impl Iterator<Item = Click>) {
        let p_ap = self.params.link.p_ap;
        let dead = self.dead_gates;
        // `free_at`: first pulse index (relative to this run, may be negative via offset) at
        // which the detectors are live again.
        let mut free_at: u64 = self.dead_left;
        let mut pending = self.afterpulse_pending;
        let n = d.pulses as u64;
        let rng = &mut self.seq_rng;
        let mut register = |d: &mut Detections, i: u64, bit: bool, pending: &mut bool| {
            d.bob_detected.set(i as usize, true);
            d.bob_bit.set(i as usize, bit);
            *pending = p_ap > 0.0 && rng.next_f64() < p_ap;
        };
        let mut rng_bits = Xoshiro256pp::new(self.seed ^ 0x5eed, self.next_chunk);
        for c in clicks {
            let i = c.index as u64;
            // A pending afterpulse fires at the first live gate, if that comes before this click.
            while pending && free_at < i && free_at < n {
                let at = free_at;
                d.afterpulses += 1;
                let bit = rng_bits.next_u64() & 1 == 1;
                register(d, at, bit, &mut pending);
                free_at = at + 1 + dead;
            }
            if i < free_at {
                d.dead_time_losses += 1;
                continue;
            }
            pending = false;
            let a = d.alice_bit.get(c.index);
            let bit = match c.pattern {
                1 => a,
                2 => !a,
                _ => {
                    d.double_clicks += 1;
                    rng_bits.next_u64() & 1 == 1
                }
            };
            register(d, i, bit, &mut pending);
            free_at = i + 1 + dead;
        }
        while pending && free_at < n {
            let at = free_at;
            d.afterpulses += 1;
            let bit = rng_bits.next_u64() & 1 == 1;
            register(d, at, bit, &mut pending);
            free_at = at + 1 + dead;
        }
        self.afterpulse_pending = pending;
        self.dead_left = free_at.saturating_sub(n);
    }
}

/// Fills one chunk of Alice's records and Bob's bases, and collects raw clicks.
#[allow(clippy::too_many_arguments)]
fn simulate_chunk(
    phys: &Physics,
    rng: &mut Xoshiro256pp,
    offset: usize,
    intensity: &mut [u8],
    alice_basis: &mut [u64],
    alice_bit: &mut [u64],
    bob_basis: &mut [u64],
    clicks: &mut Vec<Click>,
) {
    let any = [phys.class[0].any, phys.class[1].any, phys.class[2].any];
    for (w, block) in intensity.chunks_mut(64).enumerate() {
        alice_bit[w] = rng.next_u64();
        if phys.t_z == 1 << 31 {
            alice_basis[w] = rng.next_u64();
            bob_basis[w] = rng.next_u64();
        } else {
            alice_basis[w] = biased_word(rng, phys.t_z);
            bob_basis[w] = biased_word(rng, phys.t_z);
        }
        let mut click_word = 0u64;
        for (j, slot) in block.iter_mut().enumerate() {
            let r = rng.next_u64();
            let u_class = r >> 32;
            let u_click = r & 0xffff_ffff;
            let k = (u_class >= phys.t_signal) as usize + (u_class >= phys.t_decoy) as usize;
            *slot = k as u8;
            click_word |= ((u_click < any[k]) as u64) << j;
        }
        while click_word != 0 {
            let j = click_word.trailing_zeros() as usize;
            click_word &= click_word - 1;
            let k = block[j] as usize;
            let same = ((alice_basis[w] ^ bob_basis[w]) >> j) & 1 == 0;
            let cp = &phys.class[k];
            let (a, b) = if same { cp.same } else { (cp.diff, cp.diff) };
            // Conditional on at least one click: only a, only b, or both.
            let u = rng.next_f64() * cp.p_any;
            let only_a = a * (1.0 - b);
            let only_b = (1.0 - a) * b;
            let pattern = if u < only_a {
                1
            } else if u < only_a + only_b {
                2
            } else {
                3
            };
            clicks.push(Click {
                index: offset + w * 64 + j,
                pattern,
            });
        }
    }
}

/// 64 independent bits, each 0 (Z) with probability t/2^32.
fn biased_word(rng: &mut Xoshiro256pp, t: u64) -> u64 {
    let mut w = 0u64;
    for j in 0..32 {
        let r = rng.next_u64();
        w |= (((r >> 32) >= t) as u64) << (2 * j);
        w |= (((r & 0xffff_ffff) >= t) as u64) << (2 * j + 1);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(d: &Detections, class: u8) -> (f64, f64, f64, f64) {
        // (gain, gain sigma, qber, qber sigma) over same-basis pulses of a class.
        let mut n = 0u64;
        let mut det = 0u64;
        let mut err = 0u64;
        for i in 0..d.pulses {
            if d.intensity[i] != class || d.alice_basis.get(i) != d.bob_basis.get(i) {
                continue;
            }
            n += 1;
            if d.bob_detected.get(i) {
                det += 1;
                err += (d.bob_bit.get(i) != d.alice_bit.get(i)) as u64;
            }
        }
        let q = det as f64 / n as f64;
        let e = err as f64 / det.max(1) as f64;
        (
            q,
            (q * (1.0 - q) / n as f64).sqrt(),
            e,
            (e * (1.0 - e) / det.max(1) as f64).sqrt(),
        )
    }

    #[test]
    fn gains_and_qber_match_analytic_model_within_3_sigma() {
        let p = PhotonParams {
            length_km: 10.0,
            p_signal: 0.5,
            p_decoy: 0.3,
            ..Default::default()
        };
        let mut sim = PhotonSim::new(p, 42).unwrap();
        let d = sim.run(4_000_000);
        for (class, ci) in [
            (Intensity::Signal, 0u8),
            (Intensity::Decoy, 1),
            (Intensity::Vacuum, 2),
        ] {
            let (q, sq, e, se) = stats(&d, ci);
            let (q0, e0) = p.expected_gain_qber(class);
            assert!(
                (q - q0).abs() < 3.0 * sq,
                "{class:?}: gain {q} vs {q0} (σ {sq})"
            );
            if class != Intensity::Vacuum {
                assert!(
                    (e - e0).abs() < 3.0 * se,
                    "{class:?}: qber {e} vs {e0} (σ {se})"
                );
            }
        }
        // Class frequencies.
        let sig = d.intensity.iter().filter(|&&c| c == 0).count() as f64 / d.pulses as f64;
        assert!((sig - 0.5).abs() < 3.0 * (0.25f64 / d.pulses as f64).sqrt());
    }

    #[test]
    fn dark_counts_and_errors_match_analytic_model_at_high_background() {
        // Y0 = 2e-3 makes the vacuum class carry thousands of dark counts, so the dark-count
        // model (p_d per detector, random bit) is tested, not just the signal path.
        let link = DecoyBb84Params {
            y0: 2e-3,
            e_d: 0.05,
            ..Default::default()
        };
        let p = PhotonParams {
            link,
            length_km: 30.0,
            p_signal: 0.4,
            p_decoy: 0.3,
            ..Default::default()
        };
        let d = PhotonSim::new(p, 7).unwrap().run(3_000_000);
        for (class, ci) in [
            (Intensity::Signal, 0u8),
            (Intensity::Decoy, 1),
            (Intensity::Vacuum, 2),
        ] {
            let (q, sq, e, se) = stats(&d, ci);
            let (q0, e0) = p.expected_gain_qber(class);
            assert!(
                (q - q0).abs() < 3.0 * sq,
                "{class:?}: gain {q} vs {q0} (σ {sq})"
            );
            assert!(
                (e - e0).abs() < 3.0 * se,
                "{class:?}: qber {e} vs {e0} (σ {se})"
            );
        }
        let (_, _, e_vac, _) = stats(&d, 2);
        assert!((e_vac - 0.5).abs() < 0.05, "vacuum QBER {e_vac}");
        assert_eq!(d.intensity_class(0) as u8, d.intensity[0]);
    }

    #[test]
    fn reproducible_and_independent_of_threads() {
        let p = PhotonParams {
            length_km: 5.0,
            ..Default::default()
        };
        let a = PhotonSim::new(PhotonParams { threads: 1, ..p }, 9)
            .unwrap()
            .run(300_001);
        let b = PhotonSim::new(PhotonParams { threads: 3, ..p }, 9)
            .unwrap()
            .run(300_001);
        assert_eq!(a, b);
        let c = PhotonSim::new(p, 10).unwrap().run(300_001);
        assert_ne!(a.alice_bit, c.alice_bit);
        // Successive runs continue the stream rather than repeating it.
        let mut s = PhotonSim::new(p, 9).unwrap();
        let r1 = s.run(1000);
        let r2 = s.run(1000);
        assert_ne!(r1.alice_bit, r2.alice_bit);
    }

    #[test]
    fn dead_time_and_afterpulses_are_applied() {
        let link = DecoyBb84Params {
            dead_time_s: 10e-9, // 10 gates at 1 GHz
            p_ap: 0.1,
            ..Default::default()
        };
        let p = PhotonParams {
            link,
            length_km: 0.0,
            ..Default::default()
        };
        let d = PhotonSim::new(p, 1).unwrap().run(1_000_000);
        assert!(d.dead_time_losses > 0 && d.afterpulses > 0);
        let det: Vec<usize> = d.bob_detected.ones().collect();
        assert!(
            det.windows(2).all(|w| w[1] - w[0] > 10),
            "clicks inside the dead time"
        );
        // Afterpulses carry random bits: their error rate is about 1/2.
        assert!(d.double_clicks > 0);
    }

    #[test]
    fn dead_time_holds_across_runs_and_run_into_matches_run() {
        let link = DecoyBb84Params {
            dead_time_s: 20e-9,
            p_ap: 0.2,
            eta_bob: 1.0,
            mu: 0.9,
            ..Default::default()
        };
        let p = PhotonParams {
            link,
            length_km: 0.0,
            ..Default::default()
        };
        let mut s = PhotonSim::new(p, 5).unwrap();
        let mut prev_last: Option<usize> = None;
        let mut offset = 0usize;
        let mut buf = Detections::default();
        for len in [1000usize, 777, 4096, 1] {
            s.run_into(len, &mut buf);
            for i in buf.bob_detected.ones() {
                if let Some(j) = prev_last {
                    assert!(
                        offset + i - j > 20,
                        "click {} after {} inside the dead time",
                        offset + i,
                        j
                    );
                }
                prev_last = Some(offset + i);
            }
            offset += len;
        }
        // run_into gives the same records as run.
        let a = PhotonSim::new(p, 11).unwrap().run(100_000);
        let mut b = Detections::default();
        let mut s2 = PhotonSim::new(p, 11).unwrap();
        s2.run_into(5, &mut b); // dirty the buffer with a different size first
        let mut s3 = PhotonSim::new(p, 11).unwrap();
        s3.run_into(100_000, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn biased_basis_and_bad_params() {
        let p = PhotonParams {
            p_z: 0.9,
            length_km: 0.0,
            ..Default::default()
        };
        let d = PhotonSim::new(p, 3).unwrap().run(100_000);
        let x = d.alice_basis.count_ones() as f64 / 1e5;
        assert!((x - 0.1).abs() < 0.005, "X fraction {x}");
        let bad = PhotonParams {
            p_signal: 0.9,
            p_decoy: 0.2,
            ..Default::default()
        };
        assert!(PhotonSim::new(bad, 0).is_err());
        let bad = PhotonParams {
            length_km: -1.0,
            ..Default::default()
        };
        assert!(matches!(
            PhotonSim::new(bad, 0),
            Err(ModelError::Negative { .. })
        ));
    }

    #[test]
    fn bitvec_ones_roundtrip() {
        let mut b = BitVec::zeros(200);
        for i in [0, 63, 64, 130, 199] {
            b.set(i, true);
        }
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 63, 64, 130, 199]);
        assert_eq!(b.count_ones(), 5);
        let empty = PhotonSim::new(PhotonParams::default(), 1).unwrap().run(0);
        assert_eq!(empty.pulses, 0);
        assert!(empty.bob_detected.is_empty() && empty.intensity.is_empty());
    }
}
