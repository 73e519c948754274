//! CV-QKD: Gaussian-modulated coherent states (GG02), reverse reconciliation.

use crate::error::{self, ModelError, Result};
use crate::{check_length, fibre_transmittance, plob_bound, LinkModel, RatePoint};

/// Bob's measurement in [`CvGg02`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// One quadrature at random (the original GG02 protocol).
    Homodyne,
    /// Both quadratures (the "no-switching" protocol of Weedbrook et al., PRL 93, 170504, 2004).
    Heterodyne,
}

/// Parameters of [`CvGg02`]. All variances are in shot-noise units (SNU).
///
/// Defaults: the detector of the all-fibre system of Lodewyck et al., PRA 76, 042305 (2007)
/// (η = 0.606, v_el = 0.041), a modern reconciliation efficiency β = 0.95 (multidimensional
/// reconciliation, Jouguet et al., Nat. Photon. 7, 378, 2013) with the matching modulation
/// V_A = 4, excess noise ξ = 0.01, α = 0.2 dB/km and a symbol rate of 100 MHz.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CvGg02Params {
    /// Fibre attenuation α, dB/km (default 0.2).
    pub alpha_db_per_km: f64,
    /// Alice's modulation variance V_A, SNU (default 4).
    pub v_a: f64,
    /// Excess noise ξ referred to the channel input, SNU (default 0.01).
    pub xi: f64,
    /// Bob's detector efficiency η (trusted; default 0.606).
    pub eta_det: f64,
    /// Electronic noise of Bob's detector v_el, SNU (trusted; default 0.041).
    pub v_el: f64,
    /// Reconciliation efficiency β in [0, 1] (default 0.95).
    pub beta: f64,
    /// Homodyne or heterodyne detection (default homodyne).
    pub detection: Detection,
    /// Symbol (pulse) rate, Hz (default 1e8).
    pub rep_rate_hz: f64,
}

impl Default for CvGg02Params {
    fn default() -> Self {
        Self {
            alpha_db_per_km: 0.2,
            v_a: 4.0,
            xi: 0.01,
            eta_det: 0.606,
            v_el: 0.041,
            beta: 0.95,
            detection: Detection::Homodyne,
            rep_rate_hz: 1e8,
        }
    }
}

impl CvGg02Params {
    /// Checks every parameter.
    ///
    /// # Errors
    /// [`ModelError`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<()> {
        error::non_negative("alpha", self.alpha_db_per_km)?;
        error::positive("va", self.v_a)?;
        error::non_negative("xi", self.xi)?;
        error::probability("eta_det", self.eta_det)?;
        if self.eta_det == 0.0 {
            return Err(ModelError::NotPositive {
                name: "eta_det",
                value: 0.0,
            });
        }
        error::non_negative("v_el", self.v_el)?;
        error::probability("beta", self.beta)?;
        error::positive("rep_rate", self.rep_rate_hz)?;
        Ok(())
    }
}

/// Continuous-variable QKD with Gaussian-modulated coherent states (F. Grosshans,
/// P. Grangier, PRL 88, 057902, 2002) and reverse reconciliation, asymptotic key rate against
/// collective (Gaussian) attacks, K = β I_AB − χ_BE per symbol, with Bob's detector
/// inefficiency and electronic noise trusted.
///
/// Formulas: the entanglement-based covariance-matrix method of Lodewyck et al.,
/// PRA 76, 042305 (2007), Eqs. (C1)–(C13) (homodyne), and of Fossier, Diamanti, Debuisschert,
/// Tualle-Brouri, Grangier, J. Phys. B 42, 114014 (2009) for heterodyne; the same as
/// Laudenbach et al., Adv. Quantum Technol. 1, 1800011 (2018), Sec. 4.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CvGg02 {
    params: CvGg02Params,
}

/// g(ν) = ((ν+1)/2) log2((ν+1)/2) − ((ν−1)/2) log2((ν−1)/2): the von Neumann entropy of a
/// thermal mode with symplectic eigenvalue ν ≥ 1.
pub(crate) fn g_sym(nu: f64) -> f64 {
    let a = (nu + 1.0) / 2.0;
    let b = (nu - 1.0) / 2.0;
    let ta = a * a.log2();
    let tb = if b > 1e-300 { b * b.log2() } else { 0.0 };
    ta - tb
}

/// Intermediates of one evaluation of [`CvGg02`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CvTerms {
    pub t: f64,
    pub snr: f64,
    pub i_ab: f64,
    pub chi_be: f64,
    pub rate: f64,
}

impl CvGg02 {
    /// A validated model.
    ///
    /// # Errors
    /// [`ModelError`] for parameters out of range.
    pub fn new(params: CvGg02Params) -> Result<Self> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &CvGg02Params {
        &self.params
    }

    /// Key rate terms at channel transmittance `t` (fibre only).
    pub(crate) fn terms_at(&self, t: f64) -> CvTerms {
        let p = &self.params;
        let v = p.v_a + 1.0;
        let eta = p.eta_det;
        let het = p.detection == Detection::Heterodyne;
        if t <= 0.0 {
            return CvTerms {
                t,
                snr: 0.0,
                i_ab: 0.0,
                chi_be: 0.0,
                rate: 0.0,
            };
        }
        let chi_line = 1.0 / t - 1.0 + p.xi;
        let chi_det = if het {
            (1.0 + (1.0 - eta) + 2.0 * p.v_el) / eta
        } else {
            ((1.0 - eta) + p.v_el) / eta
        };
        let chi_tot = chi_line + chi_det / t;
        let snr = p.v_a / (1.0 + chi_tot);
        let i_ab = if het {
            ((v + chi_tot) / (1.0 + chi_tot)).log2()
        } else {
            0.5 * ((v + chi_tot) / (1.0 + chi_tot)).log2()
        };
        // Symplectic eigenvalues of Alice–Bob's state before Bob's detector.
        let a = v * v * (1.0 - 2.0 * t) + 2.0 * t + t * t * (v + chi_line).powi(2);
        let b = (t * (v * chi_line + 1.0)).powi(2);
        let disc = (a * a - 4.0 * b).max(0.0).sqrt();
        let l1 = (0.5 * (a + disc)).sqrt();
        let l2 = (0.5 * (a - disc)).max(1.0).sqrt();
        let sb = b.sqrt();
        // Eigenvalues of the state conditioned on Bob's measurement.
        let (c, d) = if het {
            let den = (t * (v + chi_tot)).powi(2);
            let c = (a * chi_det * chi_det
                + b
                + 1.0
                + 2.0 * chi_det * (v * sb + t * (v + chi_line))
                + 2.0 * t * (v * v - 1.0))
                / den;
            let d = ((v + sb * chi_det) / (t * (v + chi_tot))).powi(2);
            (c, d)
        } else {
            let den = t * (v + chi_tot);
            let c = (v * sb + t * (v + chi_line) + a * chi_det) / den;
            let d = sb * (v + sb * chi_det) / den;
            (c, d)
        };
        let disc2 = (c * c - 4.0 * d).max(0.0).sqrt();
        let l3 = (0.5 * (c + disc2)).max(1.0).sqrt();
        let l4 = (0.5 * (c - disc2)).max(1.0).sqrt();
        let g = [g_sym(l1), g_sym(l2), g_sym(l3), g_sym(l4)];
        let chi_be = g[0] + g[1] - g[2] - g[3];
        let rate = p.beta * i_ab - chi_be;
        // χ_BE is a difference of O(1) entropies: below ~1e-13 of their sum the result is
        // rounding noise (beyond ≈ 130 dB of loss), so report no key there.
        let noise_floor = 1e-13 * g.iter().sum::<f64>().max(1.0);
        let rate = if rate > noise_floor { rate } else { 0.0 };
        CvTerms {
            t,
            snr,
            i_ab,
            chi_be,
            rate,
        }
    }
}

impl LinkModel for CvGg02 {
    fn name(&self) -> &'static str {
        "cv-gg02"
    }

    fn repetition_rate_hz(&self) -> f64 {
        self.params.rep_rate_hz
    }

    fn alpha_db_per_km(&self) -> f64 {
        self.params.alpha_db_per_km
    }

    fn evaluate(&self, length_km: f64) -> Result<RatePoint> {
        let l = check_length(length_km)?;
        let t = fibre_transmittance(self.params.alpha_db_per_km, l);
        let k = self.terms_at(t);
        Ok(RatePoint {
            distance_km: l,
            rate_per_pulse: k.rate,
            rate_bps: k.rate * self.params.rep_rate_hz,
            plob_per_use: plob_bound(t),
            intermediates: vec![
                ("transmittance", k.t),
                ("snr", k.snr),
                ("i_ab", k.i_ab),
                ("chi_be", k.chi_be),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ideal(detection: Detection, v_a: f64) -> CvGg02 {
        CvGg02::new(CvGg02Params {
            v_a,
            xi: 0.0,
            eta_det: 1.0,
            v_el: 0.0,
            beta: 1.0,
            detection,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn homodyne_rr_pure_loss_reaches_half_plob_at_high_modulation() {
        // Published limit: for a pure-loss channel, ideal detection and β = 1, the GG02
        // homodyne reverse-reconciliation rate tends to ½ log2[1/(1−η)], half the PLOB bound,
        // as V_A → ∞ (Pirandola et al., Nat. Commun. 8, 15043 (2017), discussion of Fig. 1;
        // Pirandola et al., Adv. Opt. Photon. 12, 1012 (2020), Sec. 8 (CV-QKD rates)).
        for t in [0.9, 0.5, 0.1, 0.01] {
            let k = ideal(Detection::Homodyne, 1e6).terms_at(t).rate;
            let half = 0.5 * plob_bound(t);
            assert!((k / half - 1.0).abs() < 1e-5, "T={t}: {k} vs {half}");
        }
        // At T = 1/2 (15 km at 0.2 dB/km) the limit is exactly 1/2 bit per use.
        let k = ideal(Detection::Homodyne, 1e6).terms_at(0.5).rate;
        assert!((k - 0.5).abs() < 1e-5);
    }

    #[test]
    fn heterodyne_beats_homodyne_when_ideal_and_both_stay_below_plob() {
        for t in [0.9, 0.5, 0.1, 0.01, 1e-4] {
            let hom = ideal(Detection::Homodyne, 1e4).terms_at(t).rate;
            let het = ideal(Detection::Heterodyne, 1e4).terms_at(t).rate;
            assert!(het >= hom * 0.999, "T={t}: het {het} < hom {hom}");
            assert!(het < plob_bound(t) && hom < plob_bound(t));
            assert!(hom > 0.0);
        }
    }

    #[test]
    fn trusted_noise_and_excess_noise_cost_key() {
        let base = CvGg02::default().secret_key_rate_per_pulse(10.0);
        let noisy = CvGg02::new(CvGg02Params {
            xi: 0.05,
            ..Default::default()
        })
        .unwrap();
        let lossy = CvGg02::new(CvGg02Params {
            eta_det: 0.3,
            ..Default::default()
        })
        .unwrap();
        assert!(base > 0.0);
        assert!(noisy.secret_key_rate_per_pulse(10.0) < base);
        assert!(lossy.secret_key_rate_per_pulse(10.0) < base);
        // Excess noise limits the range: ξ = 0.05 ends the key before 200 km, ξ = 0.1
        // before 100 km, while ξ = 0.01 still has a key at 200 km.
        let at = |xi: f64, l: f64| {
            CvGg02::new(CvGg02Params {
                xi,
                ..Default::default()
            })
            .unwrap()
            .secret_key_rate_per_pulse(l)
        };
        assert!(at(0.01, 200.0) > 0.0);
        assert_eq!(at(0.05, 200.0), 0.0);
        assert_eq!(at(0.1, 100.0), 0.0);
        assert!(at(0.05, 100.0) > 0.0);
        // Past ≈ 130 dB the entropy difference is rounding noise: reported as no key.
        assert_eq!(CvGg02::default().secret_key_rate_per_pulse(1000.0), 0.0);
        // Reverse reconciliation has no 3 dB limit: an ideal system keeps a key at 30 dB.
        assert!(ideal(Detection::Homodyne, 20.0).terms_at(1e-3).rate > 0.0);
    }

    #[test]
    fn trusted_detector_sits_between_ideal_and_untrusted() {
        // Trusting Bob's inefficiency η gives Eve less than handing her the loss (channel
        // T·η, ideal detector) and more than an ideal detector at T.
        for t in [0.5, 0.1, 0.01] {
            for det in [Detection::Homodyne, Detection::Heterodyne] {
                let p = CvGg02Params {
                    v_a: 10.0,
                    xi: 0.0,
                    v_el: 0.0,
                    beta: 1.0,
                    eta_det: 0.6,
                    detection: det,
                    ..Default::default()
                };
                let trusted = CvGg02::new(p).unwrap().terms_at(t).rate;
                let ideal_det = CvGg02::new(CvGg02Params { eta_det: 1.0, ..p }).unwrap();
                let untrusted = ideal_det.terms_at(t * 0.6).rate;
                let perfect = ideal_det.terms_at(t).rate;
                assert!(
                    untrusted < trusted && trusted < perfect,
                    "{det:?} T={t}: {untrusted} {trusted} {perfect}"
                );
            }
        }
    }

    #[test]
    fn bad_parameters() {
        let e = CvGg02::new(CvGg02Params {
            beta: 1.2,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ModelError::NotProbability { name: "beta", .. }));
        let e = CvGg02::new(CvGg02Params {
            xi: -0.1,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ModelError::Negative { name: "xi", .. }));
        let e = CvGg02::new(CvGg02Params {
            alpha_db_per_km: -1.0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ModelError::Negative { name: "alpha", .. }));
    }
}
