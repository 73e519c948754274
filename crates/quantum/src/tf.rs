//! Twin-field QKD, sending-or-not-sending (SNS) protocol, asymptotic key rate.

use crate::error::{self, ModelError, Result};
use crate::{binary_entropy, check_length, fibre_transmittance, plob_bound, LinkModel, RatePoint};

/// Parameters of [`TfSns`]. Defaults follow the numerical simulations of the SNS papers
/// (Wang, Yu, Hu 2018; Yu et al., Sci. Rep. 9, 3080, 2019): α = 0.2 dB/km, detector efficiency
/// η_d = 30 %, dark counts p_d = 1e-10 per window, misalignment e_d = 3 %, f = 1.1, with
/// μ and ε optimised per distance, and a 1 GHz repetition rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TfSnsParams {
    /// Fibre attenuation α, dB/km (default 0.2; ultra-low-loss fibre ≈ 0.16).
    pub alpha_db_per_km: f64,
    /// Detector efficiency η_d at Charlie (default 0.3).
    pub eta_d: f64,
    /// Dark-count probability p_d per detector per window (default 1e-10).
    pub p_d: f64,
    /// Misalignment (phase) error e_d of the X windows (default 0.03).
    pub e_d: f64,
    /// Error-correction inefficiency f ≥ 1 (default 1.1).
    pub f: f64,
    /// Signal intensity μ of a sending Z window, mean photons (default 0.3; ignored when
    /// `optimize` is set).
    pub mu: f64,
    /// Sending probability ε in a Z window (default 0.2; ignored when `optimize` is set).
    pub eps: f64,
    /// Optimise μ and ε at each distance for the largest rate (default true).
    pub optimize: bool,
    /// Repetition rate, Hz (default 1e9).
    pub rep_rate_hz: f64,
}

impl Default for TfSnsParams {
    fn default() -> Self {
        Self {
            alpha_db_per_km: 0.2,
            eta_d: 0.3,
            p_d: 1e-10,
            e_d: 0.03,
            f: 1.1,
            mu: 0.3,
            eps: 0.2,
            optimize: true,
            rep_rate_hz: 1e9,
        }
    }
}

impl TfSnsParams {
    /// Checks every parameter.
    ///
    /// # Errors
    /// [`ModelError`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<()> {
        error::non_negative("alpha", self.alpha_db_per_km)?;
        error::probability("eta_d", self.eta_d)?;
        error::probability("p_d", self.p_d)?;
        error::probability("e_d", self.e_d)?;
        error::finite("f", self.f)?;
        if self.f < 1.0 {
            return Err(ModelError::OutOfRange {
                name: "f",
                value: self.f,
                reason: "error-correction inefficiency must be at least 1 (Shannon limit)",
            });
        }
        error::positive("mu", self.mu)?;
        error::open_probability("eps", self.eps)?;
        error::positive("rep_rate", self.rep_rate_hz)?;
        Ok(())
    }
}

/// e^{−x} I0(x), the exponentially scaled modified Bessel function of order 0, for x ≥ 0
/// (power series below 700, Hankel asymptotic expansion above; relative error < 1e-12).
pub(crate) fn bessel_i0_scaled(x: f64) -> f64 {
    if x < 700.0 {
        let q = x * x / 4.0;
        let (mut term, mut sum, mut k) = (1.0f64, 1.0f64, 1.0f64);
        while term > sum * 1e-17 {
            term *= q / (k * k);
            sum += term;
            k += 1.0;
        }
        sum * (-x).exp()
    } else {
        let r = 1.0 / (8.0 * x);
        let s = 1.0 + r + 9.0 / 2.0 * r * r + 225.0 / 6.0 * r * r * r + 11025.0 / 24.0 * r.powi(4);
        s / (2.0 * std::f64::consts::PI * x).sqrt()
    }
}

/// Intermediates of one evaluation of [`TfSns`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TfTerms {
    pub eta_arm: f64,
    pub mu: f64,
    pub eps: f64,
    pub s_z: f64,
    pub e_z: f64,
    pub s1: f64,
    pub e1_ph: f64,
    pub n1: f64,
    pub rate: f64,
}

/// Twin-field QKD, sending-or-not-sending protocol (X.-B. Wang, Z.-W. Yu, X.-L. Hu,
/// "Twin-field quantum key distribution with large misalignment error", PRA 98, 062323, 2018),
/// asymptotic key rate with infinitely many decoys:
/// R = 2ε(1−ε) μ e^{−μ} s1 [1 − h(e1^ph)] − f S_Z h(E_Z) per pulse pair, where the length is
/// Alice–Bob with Charlie in the middle (each arm L/2).
///
/// Z-window observables follow the SNS simulation model (Yu, Hu, Jiang, Xu, Wang,
/// Sci. Rep. 9, 3080, 2019, Eqs. 9–12): S_00 = 2p_d(1−p_d),
/// S_0μ = 2(1−p_d)e^{−ημ/2}[1 − (1−p_d)e^{−ημ/2}],
/// S_μμ = 2(1−p_d)e^{−ημ}[I0(ημ) − (1−p_d)e^{−ημ}] (phase-randomised), E_Z from the
/// both-or-neither windows; single photons: s1 = (1−p_d)[η + 2(1−η)p_d],
/// e1^ph = (1−p_d)[e_d η + (1−η)p_d]/s1.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TfSns {
    params: TfSnsParams,
}

impl TfSns {
    /// A validated model.
    ///
    /// # Errors
    /// [`ModelError`] for parameters out of range.
    pub fn new(params: TfSnsParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &TfSnsParams {
        &self.params
    }

    pub(crate) fn terms_fixed(&self, eta: f64, mu: f64, eps: f64) -> TfTerms {
        let p = &self.params;
        let pd = p.p_d;
        let s00 = 2.0 * pd * (1.0 - pd);
        let h = (-eta * mu / 2.0).exp();
        let s0m = 2.0 * (1.0 - pd) * h * (1.0 - (1.0 - pd) * h);
        let e = (-eta * mu).exp();
        let smm = 2.0 * (1.0 - pd) * (bessel_i0_scaled(eta * mu) - (1.0 - pd) * e * e);
        let both_or_neither = (1.0 - eps) * (1.0 - eps) * s00 + eps * eps * smm;
        let s_z = both_or_neither + 2.0 * eps * (1.0 - eps) * s0m;
        let e_z = if s_z > 0.0 {
            both_or_neither / s_z
        } else {
            0.5
        };
        let s1 = (1.0 - pd) * (eta + 2.0 * (1.0 - eta) * pd);
        let e1 = if s1 > 0.0 {
            (1.0 - pd) * (p.e_d * eta + (1.0 - eta) * pd) / s1
        } else {
            0.5
        };
        let n1 = 2.0 * eps * (1.0 - eps) * mu * (-mu).exp() * s1;
        let rate = n1 * (1.0 - binary_entropy(e1)) - p.f * s_z * binary_entropy(e_z);
        TfTerms {
            eta_arm: eta,
            mu,
            eps,
            s_z,
            e_z,
            s1,
            e1_ph: e1,
            n1,
            rate,
        }
    }

    pub(crate) fn terms(&self, length_km: f64) -> TfTerms {
        let p = &self.params;
        let eta = p.eta_d * fibre_transmittance(p.alpha_db_per_km, length_km / 2.0);
        let mut best = self.terms_fixed(eta, p.mu, p.eps);
        if p.optimize {
            // Coarse log-grid in μ and ε, then two rounds of local refinement.
            let (mut mu, mut eps) = (p.mu, p.eps);
            let mut span = (1.0f64, 1.0f64);
            for round in 0..4 {
                let steps = if round == 0 { 24 } else { 8 };
                let (mu0, eps0) = (mu, eps);
                for i in 0..=steps {
                    for j in 0..=steps {
                        let (m, e) = if round == 0 {
                            (
                                10f64.powf(-3.0 + 3.3 * i as f64 / steps as f64),
                                10f64.powf(-3.0 + 2.9 * j as f64 / steps as f64),
                            )
                        } else {
                            (
                                mu0 * 10f64.powf(span.0 * (i as f64 / steps as f64 - 0.5)),
                                eps0 * 10f64.powf(span.1 * (j as f64 / steps as f64 - 0.5)),
                            )
                        };
                        if !(m > 0.0 && e > 0.0 && e < 1.0) {
                            continue;
                        }
                        let t = self.terms_fixed(eta, m, e);
                        if t.rate > best.rate {
                            best = t;
                            mu = m;
                            eps = e;
                        }
                    }
                }
                span = if round == 0 {
                    (3.3 / 12.0, 2.9 / 12.0)
                } else {
                    (span.0 / 3.0, span.1 / 3.0)
                };
            }
        }
        best.rate = best.rate.max(0.0);
        best
    }
}

impl LinkModel for TfSns {
    fn name(&self) -> &'static str {
        "tf-sns"
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
                ("eta_arm", t.eta_arm),
                ("mu", t.mu),
                ("eps", t.eps),
                ("gain", t.s_z),
                ("qber", t.e_z),
                ("s1", t.s1),
                ("e1_ph", t.e1_ph),
                ("n1", t.n1),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bessel_values() {
        // I0(1) = 1.2660658777520082, I0(25) = 5.7745606064663e9 (A&S Table 9.8,
        // checked with a 50-digit power series).
        assert!((bessel_i0_scaled(1.0) * 1f64.exp() - 1.2660658777520082).abs() < 1e-13);
        let v = bessel_i0_scaled(25.0) * 25f64.exp();
        assert!((v / 5.7745606064663e9 - 1.0).abs() < 1e-12, "{v}");
        assert!((bessel_i0_scaled(0.0) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn sns_overtakes_plob_at_long_distance() {
        // Wang, Yu, Hu 2018, Fig. 2 and Sec. IV: with η_d = 30 %, p_d = 1e-10, e_d = 3 %,
        // f = 1.1, α = 0.2 dB/km the SNS key rate lies below the PLOB bound at short distance,
        // exceeds it beyond ≈ 250 km, and stays positive beyond 500 km.
        let m = TfSns::default();
        for l in [50.0, 100.0, 200.0] {
            assert!(m.secret_key_rate_per_pulse(l) < m.plob_per_use(l), "{l} km");
        }
        for l in [300.0, 400.0, 500.0] {
            assert!(m.secret_key_rate_per_pulse(l) > m.plob_per_use(l), "{l} km");
        }
        assert!(m.secret_key_rate_per_pulse(600.0) > 0.0);
        assert_eq!(m.secret_key_rate_per_pulse(800.0), 0.0);
    }

    #[test]
    fn wang_yu_hu_2018_fig1_reach_with_large_misalignment() {
        // Wang, Yu, Hu 2018, Fig. 1 (p_d = 1e-11, η_d = 80 %, f = 1.1, 0.2 dB/km): SNS keeps
        // a key to ≈ 700 km with misalignment e_d = 15 % and to ≈ 500 km with e_d = 35 %,
        // its headline tolerance of large misalignment (values as read off the figure).
        let reach = |e_d: f64| {
            let m = TfSns::new(TfSnsParams {
                p_d: 1e-11,
                eta_d: 0.8,
                f: 1.1,
                e_d,
                ..Default::default()
            })
            .unwrap();
            let (mut lo, mut hi) = (0.0, 1000.0);
            while hi - lo > 1.0 {
                let mid = 0.5 * (lo + hi);
                if m.secret_key_rate_per_pulse(mid) > 0.0 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let (r15, r35) = (reach(0.15), reach(0.35));
        assert!(
            (680.0..=750.0).contains(&r15),
            "reach at e_d = 15 %: {r15} km"
        );
        assert!(
            (490.0..=560.0).contains(&r35),
            "reach at e_d = 35 %: {r35} km"
        );
    }

    #[test]
    fn rate_scales_with_square_root_of_transmittance() {
        // Lucamarini et al., Nature 557, 400 (2018): TF rates scale as √η. 100 km at
        // 0.2 dB/km is 20 dB, so the rate drops by 10 dB (a factor ≈ 10) where PLOB drops 100×.
        let m = TfSns::default();
        let ratio = m.secret_key_rate_per_pulse(300.0) / m.secret_key_rate_per_pulse(400.0);
        assert!((ratio / 10.0 - 1.0).abs() < 0.05, "ratio {ratio}");
    }

    #[test]
    fn hand_computed_point_with_fixed_mu_eps() {
        // Fixed μ = 0.4, ε = 0.05, arm transmittance η = 0.003: evaluate the formulas by hand.
        let m = TfSns::new(TfSnsParams {
            optimize: false,
            ..Default::default()
        })
        .unwrap();
        let t = m.terms_fixed(0.003, 0.4, 0.05);
        let (eta, mu, eps, pd, ed) = (0.003f64, 0.4f64, 0.05f64, 1e-10f64, 0.03f64);
        let s0m = 2.0
            * (1.0 - pd)
            * (-eta * mu / 2.0).exp()
            * (1.0 - (1.0 - pd) * (-eta * mu / 2.0).exp());
        let smm = 2.0
            * (1.0 - pd)
            * (-eta * mu).exp()
            * (1.0 + (eta * mu).powi(2) / 4.0 + (eta * mu).powi(4) / 64.0
                - (1.0 - pd) * (-eta * mu).exp());
        let s00 = 2.0 * pd * (1.0 - pd);
        let sz = 0.95 * 0.95 * s00 + 2.0 * eps * 0.95 * s0m + eps * eps * smm;
        assert!((t.s_z / sz - 1.0).abs() < 1e-9);
        let s1 = (1.0 - pd) * (eta + 2.0 * (1.0 - eta) * pd);
        assert!((t.e1_ph - (1.0 - pd) * (ed * eta + (1.0 - eta) * pd) / s1).abs() < 1e-15);
        assert!((t.n1 - 2.0 * eps * (1.0 - eps) * mu * (-mu).exp() * s1).abs() < 1e-18);
    }

    #[test]
    fn bad_parameters() {
        let e = TfSns::new(TfSnsParams {
            eps: 1.0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ModelError::OutOfRange { name: "eps", .. }));
        let e = TfSns::new(TfSnsParams {
            p_d: 2.0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ModelError::NotProbability { name: "p_d", .. }));
    }
}
