//! Finite-key decoy-state BB84 (Lim, Curty, Walenta, Xu, Zbinden 2014).

use crate::error::{self, ModelError, Result};
use crate::{binary_entropy, check_length, fibre_transmittance, plob_bound, LinkModel, RatePoint};

/// Parameters of [`FiniteDecoyBb84`]: three intensities μ1 > μ2 + μ3, μ2 > μ3 ≥ 0, key from
/// the X basis, phase errors estimated in the Z basis. Defaults follow the simulation of
/// Lim et al. 2014 (Fig. 1): α = 0.2 dB/km, η_Bob = 0.1, p_dc = 6e-7, p_ap = 0.04,
/// e_mis = 0.005, f_EC = 1.16, ε_sec = 1e-10, ε_cor = 1e-15, μ3 = 2e-4, with μ1, μ2, p_X and
/// p1, p2 optimised per distance; n_X = 1e9 and a 1 GHz repetition rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FiniteDecoyBb84Params {
    /// Fibre attenuation α, dB/km (default 0.2).
    pub alpha_db_per_km: f64,
    /// Bob's detection efficiency η_Bob (default 0.1).
    pub eta_bob: f64,
    /// Dark-count probability per detector per window p_dc (default 6e-7).
    pub p_dc: f64,
    /// Afterpulse probability p_ap (default 0.04).
    pub p_ap: f64,
    /// Misalignment error e_mis (default 0.005).
    pub e_mis: f64,
    /// Error-correction inefficiency f_EC ≥ 1 (default 1.16).
    pub f: f64,
    /// Intensities μ1 (signal), μ2 (decoy), μ3 (weak vacuum), mean photons
    /// (default 0.5, 0.1, 2e-4; μ1 and μ2 optimised when `optimize` is set).
    pub mu: [f64; 3],
    /// Probabilities p1, p2, p3 of the intensities (default 0.7, 0.2, 0.1; optimised when
    /// `optimize` is set, p3 = 1 − p1 − p2).
    pub p_mu: [f64; 3],
    /// Probability of the X (key) basis, for Alice and Bob each (default 0.9).
    pub p_x: f64,
    /// Post-processing block size n_X: detected X-basis events per key block (default 1e9).
    pub n_x: f64,
    /// Secrecy parameter ε_sec (default 1e-10).
    pub eps_sec: f64,
    /// Correctness parameter ε_cor (default 1e-15).
    pub eps_cor: f64,
    /// Secrecy per key bit κ: when set, ε_sec = κ·ℓ (solved self-consistently) instead of
    /// `eps_sec`, as in the evaluation of Lim et al. 2014 (κ = 1e-15). Default `None`.
    pub kappa: Option<f64>,
    /// Optimise μ1, μ2, p_X, p1, p2 per distance (default true).
    pub optimize: bool,
    /// Repetition rate, Hz (default 1e9).
    pub rep_rate_hz: f64,
}

impl Default for FiniteDecoyBb84Params {
    fn default() -> Self {
        Self {
            alpha_db_per_km: 0.2,
            eta_bob: 0.1,
            p_dc: 6e-7,
            p_ap: 0.04,
            e_mis: 0.005,
            f: 1.16,
            mu: [0.5, 0.1, 2e-4],
            p_mu: [0.7, 0.2, 0.1],
            p_x: 0.9,
            n_x: 1e9,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
            kappa: None,
            optimize: true,
            rep_rate_hz: 1e9,
        }
    }
}

impl FiniteDecoyBb84Params {
    /// Checks every parameter.
    ///
    /// # Errors
    /// [`ModelError`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<()> {
        error::non_negative("alpha", self.alpha_db_per_km)?;
        error::probability("eta_bob", self.eta_bob)?;
        error::probability("p_dc", self.p_dc)?;
        error::probability("p_ap", self.p_ap)?;
        error::probability("e_mis", self.e_mis)?;
        error::finite("f", self.f)?;
        if self.f < 1.0 {
            return Err(ModelError::OutOfRange {
                name: "f",
                value: self.f,
                reason: "error-correction inefficiency must be at least 1 (Shannon limit)",
            });
        }
        let [m1, m2, m3] = self.mu;
        error::positive("mu", m1)?;
        error::positive("nu", m2)?;
        error::non_negative("mu3", m3)?;
        if !(m2 > m3 && m1 > m2 + m3) {
            return Err(ModelError::IntensityOrder {
                rule: "mu1 > mu2 + mu3 and mu2 > mu3",
                detail: format!("mu1 = {m1}, mu2 = {m2}, mu3 = {m3}"),
            });
        }
        for (name, p) in [
            ("p1", self.p_mu[0]),
            ("p2", self.p_mu[1]),
            ("p3", self.p_mu[2]),
        ] {
            error::open_probability(name, p)?;
        }
        if (self.p_mu.iter().sum::<f64>() - 1.0).abs() > 1e-9 {
            return Err(ModelError::OutOfRange {
                name: "p3",
                value: self.p_mu[2],
                reason: "p1 + p2 + p3 must be 1",
            });
        }
        error::open_probability("p_x", self.p_x)?;
        error::positive("n_x", self.n_x)?;
        error::open_probability("eps_sec", self.eps_sec)?;
        error::open_probability("eps_cor", self.eps_cor)?;
        if let Some(k) = self.kappa {
            error::positive("kappa", k)?;
            if k >= 1e-3 {
                return Err(ModelError::OutOfRange {
                    name: "kappa",
                    value: k,
                    reason: "secrecy per key bit must be far below 1",
                });
            }
        }
        error::positive("rep_rate", self.rep_rate_hz)?;
        Ok(())
    }
}

/// Intermediates of one evaluation of [`FiniteDecoyBb84`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct FiniteTerms {
    pub eta: f64,
    pub n_pulses: f64,
    pub gain: f64,
    pub qber: f64,
    pub s_x0: f64,
    pub s_x1: f64,
    pub phi_x: f64,
    pub lambda_ec: f64,
    pub key_bits: f64,
    pub rate: f64,
    pub mu1: f64,
    pub mu2: f64,
    pub p_x: f64,
}

/// Finite-key decoy-state BB84 with one signal and two decoy intensities, secure against
/// general (coherent) attacks: C. C. W. Lim, M. Curty, N. Walenta, F. Xu, H. Zbinden,
/// "Concise security bounds for practical decoy-state quantum key distribution",
/// Phys. Rev. A 89, 022307 (2014).
///
/// The key length is Eq. (1), ℓ = s_X,0 + s_X,1 (1 − h(φ_X)) − λ_EC − 6 log2(21/ε_sec)
/// − log2(2/ε_cor), with the Hoeffding-corrected decoy bounds of Eqs. (2)–(5), the phase-error
/// bound with γ of Eq. (6), and λ_EC = f_EC n_X h(E_X). Expected counts follow the paper's
/// channel model (Appendix): D_k = 1 − (1 − 2p_dc) e^{−η μ_k}, R_k = D_k (1 + p_ap),
/// e_k = [p_dc + e_mis (1 − e^{−η μ_k}) + p_ap D_k / 2] / R_k. The rate per pulse is ℓ / N,
/// where N = n_X / (p_X² Σ p_k R_k) pulses fill one block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FiniteDecoyBb84 {
    params: FiniteDecoyBb84Params,
}

impl FiniteDecoyBb84 {
    /// A validated model.
    ///
    /// # Errors
    /// [`ModelError`] for parameters out of range (including μ1 ≤ μ2 + μ3).
    pub fn new(params: FiniteDecoyBb84Params) -> Result<Self> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &FiniteDecoyBb84Params {
        &self.params
    }

    /// Key terms at overall transmittance `eta` for intensities `mu`, probabilities `pk` and
    /// X-basis probability `p_x`.
    pub(crate) fn terms_fixed(
        &self,
        eta: f64,
        mu: [f64; 3],
        pk: [f64; 3],
        p_x: f64,
    ) -> FiniteTerms {
        match self.params.kappa {
            None => self.terms_eps(eta, mu, pk, p_x, self.params.eps_sec),
            Some(kappa) => {
                // ε_sec = κ ℓ: fixed-point iteration from a generous first guess.
                let mut eps = (kappa * self.params.n_x).min(0.1);
                let mut t = self.terms_eps(eta, mu, pk, p_x, eps);
                for _ in 0..8 {
                    let next = (kappa * t.key_bits.max(1.0)).min(0.1);
                    if (next / eps - 1.0).abs() < 1e-3 {
                        break;
                    }
                    eps = next;
                    t = self.terms_eps(eta, mu, pk, p_x, eps);
                }
                t
            }
        }
    }

    fn terms_eps(
        &self,
        eta: f64,
        mu: [f64; 3],
        pk: [f64; 3],
        p_x: f64,
        eps_sec: f64,
    ) -> FiniteTerms {
        let p = &self.params;
        let p_z = 1.0 - p_x;
        let mut r = [0.0; 3];
        let mut e = [0.0; 3];
        for k in 0..3 {
            let click = -(-eta * mu[k]).exp_m1();
            let d = 1.0 - (1.0 - 2.0 * p.p_dc) * (1.0 - click);
            r[k] = d * (1.0 + p.p_ap);
            e[k] = (p.p_dc + p.e_mis * click + p.p_ap * d / 2.0) / r[k];
        }
        let avg_r: f64 = (0..3).map(|k| pk[k] * r[k]).sum();
        let n_pulses = p.n_x / (p_x * p_x * avg_r);
        let nx: [f64; 3] = std::array::from_fn(|k| n_pulses * p_x * p_x * pk[k] * r[k]);
        let nz: [f64; 3] = std::array::from_fn(|k| n_pulses * p_z * p_z * pk[k] * r[k]);
        let mx: [f64; 3] = std::array::from_fn(|k| nx[k] * e[k]);
        let mz: [f64; 3] = std::array::from_fn(|k| nz[k] * e[k]);
        let n_x: f64 = nx.iter().sum();
        let n_z: f64 = nz.iter().sum();
        let m_x: f64 = mx.iter().sum();
        let m_z: f64 = mz.iter().sum();
        let ln21 = (21.0 / eps_sec).ln();
        let dev = |n: f64| (n / 2.0 * ln21).sqrt();
        let pm = |counts: &[f64; 3], total: f64, sign: f64| -> [f64; 3] {
            std::array::from_fn(|k| mu[k].exp() / pk[k] * (counts[k] + sign * dev(total)))
        };
        // τ_n = Σ_k p_k e^{−μ_k} μ_k^n / n! for n = 0, 1 (0! = 1! = 1).
        let tau = |n: i32| -> f64 { (0..3).map(|k| pk[k] * (-mu[k]).exp() * mu[k].powi(n)).sum() };
        let (tau0, tau1) = (tau(0), tau(1));
        let [m1, m2, m3] = mu;
        let bounds = |n_minus: [f64; 3], n_plus: [f64; 3]| -> (f64, f64) {
            let s0 = (tau0 / (m2 - m3) * (m2 * n_minus[2] - m3 * n_plus[1])).max(0.0);
            let s1 = tau1
                * m1
                * (n_minus[1]
                    - n_plus[2]
                    - (m2 * m2 - m3 * m3) / (m1 * m1) * (n_plus[0] - s0 / tau0))
                / (m1 * (m2 - m3) - m2 * m2 + m3 * m3);
            (s0, s1.max(0.0))
        };
        let (s_x0, s_x1) = bounds(pm(&nx, n_x, -1.0), pm(&nx, n_x, 1.0));
        let (_, s_z1) = bounds(pm(&nz, n_z, -1.0), pm(&nz, n_z, 1.0));
        let mz_plus = pm(&mz, m_z, 1.0);
        let mz_minus = pm(&mz, m_z, -1.0);
        let v_z1 = (tau1 * (mz_plus[1] - mz_minus[2]) / (m2 - m3)).max(0.0);
        let phi_x = if s_z1 > 0.0 && s_x1 > 0.0 {
            let b = (v_z1 / s_z1).min(0.5);
            (b + gamma(eps_sec, b, s_z1, s_x1)).min(0.5)
        } else {
            0.5
        };
        let qber = if n_x > 0.0 { m_x / n_x } else { 0.5 };
        let lambda_ec = p.f * n_x * binary_entropy(qber);
        let key_bits = s_x0 + s_x1 * (1.0 - binary_entropy(phi_x))
            - lambda_ec
            - 6.0 * (21.0 / eps_sec).log2()
            - (2.0 / p.eps_cor).log2();
        let rate = if key_bits > 0.0 && n_pulses.is_finite() {
            key_bits / n_pulses
        } else {
            0.0
        };
        FiniteTerms {
            eta,
            n_pulses,
            gain: avg_r,
            qber,
            s_x0,
            s_x1,
            phi_x,
            lambda_ec,
            key_bits: key_bits.max(0.0),
            rate,
            mu1: m1,
            mu2: m2,
            p_x,
        }
    }

    pub(crate) fn terms(&self, length_km: f64) -> FiniteTerms {
        let p = &self.params;
        let eta = p.eta_bob * fibre_transmittance(p.alpha_db_per_km, length_km);
        let mut best = self.terms_fixed(eta, p.mu, p.p_mu, p.p_x);
        if !p.optimize {
            return best;
        }
        // Pattern search over (μ1, μ2, p_X, p1, p2) in a transformed box.
        let clamp_valid = |x: [f64; 5]| -> Option<([f64; 3], [f64; 3], f64)> {
            let [m1, m2, px, p1, p2] = x;
            let m3 = p.mu[2];
            let ok = m2 > m3
                && m1 > m2 + m3
                && m1 < 2.0
                && px > 0.0
                && px < 1.0
                && p1 > 0.0
                && p2 > 0.0
                && p1 + p2 < 1.0;
            ok.then_some(([m1, m2, m3], [p1, p2, 1.0 - p1 - p2], px))
        };
        let eval = |x: [f64; 5]| -> Option<FiniteTerms> {
            clamp_valid(x).map(|(mu, pk, px)| self.terms_fixed(eta, mu, pk, px))
        };
        let mut x = [p.mu[0], p.mu[1], p.p_x, p.p_mu[0], p.p_mu[1]];
        // Coarse grid of starting points: small blocks need large decoy probabilities.
        for m1 in [0.3, 0.45, 0.6, 0.8] {
            for m2 in [0.05, 0.1, 0.2, 0.3] {
                for px in [0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 0.95] {
                    for p1 in [0.05, 0.15, 0.3, 0.5, 0.7, 0.85] {
                        for p2f in [0.2, 0.5, 0.8] {
                            let p2 = (1.0 - p1) * p2f;
                            let seed = [m1, m2, px, p1, p2];
                            if let Some(t) = eval(seed) {
                                if t.rate > best.rate {
                                    best = t;
                                    x = seed;
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut step = [0.1, 0.04, 0.05, 0.05, 0.05];
        for _ in 0..60 {
            let mut improved = false;
            for i in 0..5 {
                for dir in [1.0, -1.0] {
                    let mut y = x;
                    y[i] += dir * step[i];
                    if let Some(t) = eval(y) {
                        if t.rate > best.rate {
                            best = t;
                            x = y;
                            improved = true;
                        }
                    }
                }
            }
            if !improved {
                for s in &mut step {
                    *s *= 0.5;
                }
                if step[0] < 1e-4 {
                    break;
                }
            }
        }
        best
    }
}

/// γ(a, b, c, d) of Lim et al. 2014, Eq. (6): the deviation of the phase-error rate of the
/// X-basis single-photon events from the one observed in the Z basis.
fn gamma(a: f64, b: f64, c: f64, d: f64) -> f64 {
    if b <= 0.0 || b >= 1.0 {
        return 0.0;
    }
    let inner = (c + d) / (c * d * (1.0 - b) * b) * (21.0 * 21.0) / (a * a);
    let v = (c + d) * (1.0 - b) * b / (c * d * std::f64::consts::LN_2) * inner.log2();
    v.max(0.0).sqrt()
}

impl LinkModel for FiniteDecoyBb84 {
    fn name(&self) -> &'static str {
        "bb84-finite"
    }

    fn repetition_rate_hz(&self) -> f64 {
        self.params.rep_rate_hz
    }

    fn alpha_db_per_km(&self) -> f64 {
        self.params.alpha_db_per_km
    }

    fn evaluate(&self, length_km: f64) -> Result<RatePoint> {
        let l = check_length(length_km)?;
        let t = self.terms(l);
        Ok(RatePoint {
            distance_km: l,
            rate_per_pulse: t.rate,
            rate_bps: t.rate * self.params.rep_rate_hz,
            plob_per_use: plob_bound(fibre_transmittance(self.params.alpha_db_per_km, l)),
            intermediates: vec![
                ("eta", t.eta),
                ("gain", t.gain),
                ("qber", t.qber),
                ("s_x0_lower", t.s_x0),
                ("s_x1_lower", t.s_x1),
                ("phi_x_upper", t.phi_x),
                ("lambda_ec", t.lambda_ec),
                ("key_bits_per_block", t.key_bits),
                ("pulses_per_block", t.n_pulses),
                ("block_time_s", t.n_pulses / self.params.rep_rate_hz),
                ("mu1", t.mu1),
                ("mu2", t.mu2),
                ("p_x", t.p_x),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(n_x: f64, optimize: bool) -> FiniteDecoyBb84 {
        FiniteDecoyBb84::new(FiniteDecoyBb84Params {
            n_x,
            optimize,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn gamma_matches_eq_6_by_hand() {
        // γ(ε, b, c, d) = sqrt((c+d)(1−b)b / (c d ln 2) · log2((c+d)/(c d (1−b) b) · 21²/ε²)).
        let (a, b, c, d) = (1e-10f64, 0.03f64, 1e6f64, 2e7f64);
        let inner = ((c + d) / (c * d * (1.0 - b) * b) * 441.0 / (a * a)).log2();
        let want = ((c + d) * (1.0 - b) * b / (c * d * 2f64.ln()) * inner).sqrt();
        assert!((gamma(a, b, c, d) / want - 1.0).abs() < 1e-14);
        assert!(gamma(a, b, c, d) > 0.0 && gamma(a, b, c, d) < 0.01);
    }

    fn lim2014(n_x: f64) -> FiniteDecoyBb84 {
        // The evaluation of Lim et al. 2014, Sec. IV: ε_sec = κ ℓ with κ = 1e-15,
        // ε_cor = 1e-15, e_mis = 5e-3, f_EC = 1.16, η_Bob = 10 %, p_dc = 6e-7, p_ap = 4 %,
        // μ3 = 2e-4, 0.2 dB/km, {q_x, p_μ1, p_μ2, μ1, μ2} optimised.
        FiniteDecoyBb84::new(FiniteDecoyBb84Params {
            n_x,
            kappa: Some(1e-15),
            ..Default::default()
        })
        .unwrap()
    }

    fn reach(m: &FiniteDecoyBb84) -> f64 {
        let (mut lo, mut hi) = (0.0, 300.0);
        while hi - lo > 0.5 {
            let mid = 0.5 * (lo + hi);
            if m.secret_key_rate_per_pulse(mid) > 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    #[test]
    fn lim_2014_published_values() {
        // Lim et al. 2014, Sec. IV: "at a fiber length of 100 km, the secret key rate obtained
        // with n_X = 1e9 is about 1.75 times the one based on n_X = 1e7" (we get 1.79).
        let ratio = lim2014(1e9).secret_key_rate_per_pulse(100.0)
            / lim2014(1e7).secret_key_rate_per_pulse(100.0);
        assert!((ratio / 1.75 - 1.0).abs() < 0.05, "ratio {ratio}");
        // Abstract and Sec. IV: "even if we use a block size of 1e4, cryptographic keys can
        // still be distributed over a fiber length of 135 km" (we reach 128 km: our
        // optimiser or a modelling detail differs by ~5 % in reach at this block size).
        let d = reach(&lim2014(1e4));
        assert!((120.0..=140.0).contains(&d), "reach at n_X = 1e4: {d} km");
        // Fig. 1: curves for n_X = 1e4 … 1e9 lie left to right below the asymptotic curve,
        // which ends short of 200 km.
        let reaches: Vec<f64> = [1e4, 1e6, 1e9, 1e15]
            .iter()
            .map(|&n| reach(&lim2014(n)))
            .collect();
        assert!(reaches.windows(2).all(|w| w[0] < w[1]), "{reaches:?}");
        assert!(reaches[3] < 200.0, "{reaches:?}");
    }

    #[test]
    fn finite_key_rate_grows_with_block_size_and_converges() {
        // Lim et al. 2014, Fig. 1: the key rate and the maximal distance grow with the block
        // size n_X and approach the asymptotic rate; with n_X = 1e5 (tiny blocks) finite-size
        // penalties leave little or no key even at short distance.
        let r = |n: f64| with(n, true).secret_key_rate_per_pulse(50.0);
        let rates: Vec<f64> = [1e6, 1e7, 1e8, 1e9, 1e12].iter().map(|&n| r(n)).collect();
        assert!(rates.windows(2).all(|w| w[0] < w[1]), "{rates:?}");
        let fixed = |n: f64| with(n, false).secret_key_rate_per_pulse(50.0);
        assert!(
            fixed(1e15) / fixed(1e18) > 0.99,
            "{} {}",
            fixed(1e15),
            fixed(1e18)
        );
        assert!(r(1e5) < 0.2 * r(1e9));
    }

    #[test]
    fn never_above_the_infinite_decoy_asymptotic_rate() {
        // With X-basis sifting p_X² and the same channel, finite-key rates stay below the
        // asymptotic GLLP rate with exact Y1, e1 (infinite decoys, no statistical fluctuation).
        let m = with(1e10, true);
        for l in [0.0, 50.0, 100.0, 150.0] {
            let t = m.terms(l);
            let p = m.params();
            let eta = t.eta;
            let (mu, px) = (t.mu1, t.p_x);
            let y1 = (1.0 - (1.0 - 2.0 * p.p_dc) * (1.0 - eta)) * (1.0 + p.p_ap);
            let e1 = (p.p_dc + p.e_mis * eta + p.p_ap * y1 / (1.0 + p.p_ap) / 2.0) / y1;
            let q1 = y1 * mu * (-mu).exp();
            let asym =
                px * px * q1 * (1.0 - binary_entropy(e1)) + px * px * (-mu).exp() * 2.0 * p.p_dc;
            assert!(t.rate < asym, "{l} km: {} vs {asym}", t.rate);
        }
    }

    #[test]
    fn reaches_beyond_150_km_with_large_blocks() {
        let m = with(1e9, true);
        assert!(m.secret_key_rate_per_pulse(150.0) > 0.0);
        assert_eq!(m.secret_key_rate_per_pulse(250.0), 0.0);
        // Block time at 50 km and 1 GHz is minutes, not days.
        let p = m.evaluate(50.0).unwrap();
        let bt = p
            .intermediates
            .iter()
            .find(|(k, _)| *k == "block_time_s")
            .unwrap()
            .1;
        assert!(bt > 10.0 && bt < 3600.0, "block time {bt}");
    }

    #[test]
    fn bad_parameters() {
        let bad = |p: FiniteDecoyBb84Params| FiniteDecoyBb84::new(p).unwrap_err();
        let e = bad(FiniteDecoyBb84Params {
            mu: [0.2, 0.2, 0.0],
            ..Default::default()
        });
        assert!(matches!(e, ModelError::IntensityOrder { .. }));
        let e = bad(FiniteDecoyBb84Params {
            eps_sec: 0.0,
            ..Default::default()
        });
        assert!(matches!(
            e,
            ModelError::OutOfRange {
                name: "eps_sec",
                ..
            }
        ));
        let e = bad(FiniteDecoyBb84Params {
            p_mu: [0.5, 0.2, 0.2],
            ..Default::default()
        });
        assert!(matches!(e, ModelError::OutOfRange { name: "p3", .. }));
    }
}
