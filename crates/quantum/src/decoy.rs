//! Decoy-state BB84 with weak coherent pulses, asymptotic key rate.

use crate::error::{self, ModelError, Result};
use crate::{binary_entropy, check_length, fibre_transmittance, plob_bound, LinkModel, RatePoint};

/// How the single-photon yield and error rate are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoyMethod {
    /// Vacuum + one weak decoy of intensity ν (Ma, Qi, Zhao, Lo 2005, Eqs. 34 and 37).
    VacuumWeak,
    /// The infinite-decoy limit: Y1 and e1 known exactly (Ma et al. 2005, Sec. III;
    /// Lo, Ma, Chen, PRL 94, 230504, 2005).
    Infinite,
}

/// Parameters of [`DecoyBb84`]. Defaults are the GYS experiment (Gobby, Yuan, Shields,
/// APL 84, 3762, 2004) as used by Ma et al. 2005, Table I, with a 1 GHz repetition rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoyBb84Params {
    /// Fibre attenuation α, dB/km (default 0.21).
    pub alpha_db_per_km: f64,
    /// Bob's side efficiency η_Bob: internal transmittance × detector efficiency (default 0.045).
    pub eta_bob: f64,
    /// Background (dark-count) yield Y0 per pulse, both detectors together (default 1.7e-6).
    pub y0: f64,
    /// Misalignment error probability e_d (default 0.033).
    pub e_d: f64,
    /// Error-correction inefficiency f ≥ 1 (default 1.22).
    pub f: f64,
    /// Sifting factor q (default 1/2 for BB84; close to 1 for efficient BB84).
    pub q: f64,
    /// Signal intensity μ, mean photons per pulse (default 0.48, optimal for GYS).
    pub mu: f64,
    /// Weak-decoy intensity ν < μ (default 0.05).
    pub nu: f64,
    /// Afterpulse probability per detection, p_ap (default 0). Afterpulses add
    /// p_ap × gain to every gain, with a random bit (error 1/2).
    pub p_ap: f64,
    /// Detector dead time, seconds (default 0). Non-paralysable: the detection probability is
    /// scaled by 1/(1 + Q_μ × rep_rate × dead_time).
    pub dead_time_s: f64,
    /// Repetition rate, Hz (default 1e9; GYS ran at 2 MHz).
    pub rep_rate_hz: f64,
}

impl Default for DecoyBb84Params {
    fn default() -> Self {
        Self {
            alpha_db_per_km: 0.21,
            eta_bob: 0.045,
            y0: 1.7e-6,
            e_d: 0.033,
            f: 1.22,
            q: 0.5,
            mu: 0.48,
            nu: 0.05,
            p_ap: 0.0,
            dead_time_s: 0.0,
            rep_rate_hz: 1e9,
        }
    }
}

impl DecoyBb84Params {
    /// Background yield Y0 of `detectors` detectors with dark-count rate `dark_count_hz` each,
    /// gated by a detection window of `window_s` seconds: 1 − (1 − dcr·window)^detectors.
    pub fn y0_from_dark_counts(dark_count_hz: f64, window_s: f64, detectors: u32) -> f64 {
        let p = (dark_count_hz * window_s).clamp(0.0, 1.0);
        1.0 - (1.0 - p).powi(detectors as i32)
    }

    /// Checks every parameter.
    ///
    /// # Errors
    /// [`ModelError`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<()> {
        error::non_negative("alpha", self.alpha_db_per_km)?;
        error::probability("eta_bob", self.eta_bob)?;
        error::probability("y0", self.y0)?;
        error::probability("e_d", self.e_d)?;
        error::finite("f", self.f)?;
        if self.f < 1.0 {
            return Err(ModelError::OutOfRange {
                name: "f",
                value: self.f,
                reason: "error-correction inefficiency must be at least 1 (Shannon limit)",
            });
        }
        error::probability("q", self.q)?;
        error::positive("mu", self.mu)?;
        error::non_negative("nu", self.nu)?;
        error::probability("p_ap", self.p_ap)?;
        error::non_negative("dead_time", self.dead_time_s)?;
        error::positive("rep_rate", self.rep_rate_hz)?;
        if self.mu <= self.nu {
            return Err(ModelError::IntensityOrder {
                rule: "mu > nu",
                detail: format!("mu = {}, nu = {}", self.mu, self.nu),
            });
        }
        Ok(())
    }

    /// Expected gain Q_k and error gain E_k·Q_k for intensity `k` at overall transmittance
    /// `eta` (fibre × η_Bob), with afterpulsing (Ma et al. 2005, Eqs. 6–9 plus p_ap).
    pub fn gain_and_error_gain(&self, k: f64, eta: f64) -> (f64, f64) {
        let click = -(-eta * k).exp_m1(); // 1 − e^{−ηk}
        let q = self.y0 + click - self.y0 * click;
        let eq = 0.5 * self.y0 * (1.0 - click) + self.e_d * click;
        (q * (1.0 + self.p_ap), eq + 0.5 * self.p_ap * q)
    }

    /// Overall transmittance η = η_Bob · 10^(−αL/10) · dead-time factor at `length_km`.
    pub fn overall_transmittance(&self, length_km: f64) -> f64 {
        self.overall_from_channel(fibre_transmittance(self.alpha_db_per_km, length_km))
    }

    /// Overall transmittance η = η_Bob · `channel` · dead-time factor for a channel (fibre or
    /// free-space) transmittance `channel`.
    pub fn overall_from_channel(&self, channel: f64) -> f64 {
        let eta = self.eta_bob * channel;
        if self.dead_time_s > 0.0 {
            let (q, _) = self.gain_and_error_gain(self.mu, eta);
            eta / (1.0 + q * self.rep_rate_hz * self.dead_time_s)
        } else {
            eta
        }
    }
}

/// Decoy-state BB84 with phase-randomised weak coherent pulses, asymptotic key rate
/// R = q·{−Q_μ f h(E_μ) + Q1 [1 − h(e1)]} (GLLP).
///
/// Follows X. Ma, B. Qi, Y. Zhao, H.-K. Lo, "Practical decoy state for quantum key
/// distribution", Phys. Rev. A 72, 012326 (2005): the channel model of Eqs. 6–9, the
/// vacuum + weak decoy bounds of Eqs. 34 (Y1 lower bound) and 37 (e1 upper bound), and the
/// infinite-decoy limit Y1 = Y0 + η − Y0·η, e1 = (Y0/2 + e_d η)/Y1 of Sec. III.
///
/// `DecoyBb84::default()` is the vacuum + weak decoy protocol with the GYS parameters of
/// Ma et al. (η_Bob = 4.5 %, Y0 = 1.7e-6, e_d = 3.3 %, f = 1.22, α = 0.21 dB/km), μ = 0.48,
/// ν = 0.05, at a 1 GHz repetition rate.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoyBb84 {
    params: DecoyBb84Params,
    method: DecoyMethod,
}

impl Default for DecoyBb84 {
    fn default() -> Self {
        Self {
            params: DecoyBb84Params::default(),
            method: DecoyMethod::VacuumWeak,
        }
    }
}

/// Intermediates of one evaluation of [`DecoyBb84`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DecoyTerms {
    pub eta: f64,
    pub gain: f64,
    pub qber: f64,
    pub gain_nu: f64,
    pub y1: f64,
    pub q1: f64,
    pub e1: f64,
    pub rate: f64,
}

impl DecoyBb84 {
    /// A validated model.
    ///
    /// # Errors
    /// [`ModelError`] for parameters out of range (negative loss, probabilities outside
    /// [0, 1], μ ≤ ν, …).
    pub fn new(params: DecoyBb84Params, method: DecoyMethod) -> Result<Self> {
        params.validate()?;
        Ok(Self { params, method })
    }

    /// The infinite-decoy limit with the given parameters (ν is ignored but still checked).
    ///
    /// # Errors
    /// As [`DecoyBb84::new`].
    pub fn infinite(params: DecoyBb84Params) -> Result<Self> {
        Self::new(params, DecoyMethod::Infinite)
    }

    /// The parameters.
    pub fn params(&self) -> &DecoyBb84Params {
        &self.params
    }

    /// The decoy method.
    pub fn method(&self) -> DecoyMethod {
        self.method
    }

    pub(crate) fn terms(&self, length_km: f64) -> DecoyTerms {
        self.terms_channel(fibre_transmittance(self.params.alpha_db_per_km, length_km))
    }

    /// Secret key bits per pulse for a channel of transmittance `channel` in [0, 1] (fibre or
    /// free space; Bob's efficiency η_Bob is applied on top). Used by the satellite model.
    pub fn rate_per_pulse_at_channel(&self, channel: f64) -> f64 {
        self.terms_channel(channel.clamp(0.0, 1.0)).rate
    }

    pub(crate) fn terms_channel(&self, channel: f64) -> DecoyTerms {
        let p = &self.params;
        let eta = p.overall_from_channel(channel);
        let (q_mu, eq_mu) = p.gain_and_error_gain(p.mu, eta);
        let e_mu = if q_mu > 0.0 { eq_mu / q_mu } else { 0.5 };
        let (q_nu, eq_nu) = p.gain_and_error_gain(p.nu, eta);
        let (y1, e1) = match self.method {
            DecoyMethod::Infinite => {
                let (y1, ey1) = p.gain_and_error_gain_single_photon(eta);
                (y1, if y1 > 0.0 { ey1 / y1 } else { 0.5 })
            }
            DecoyMethod::VacuumWeak => {
                let (mu, nu) = (p.mu, p.nu);
                // Observed vacuum gain: the background (with afterpulses) Y0'.
                let (y0, ey0) = p.gain_and_error_gain(0.0, eta);
                // Ma et al. 2005, Eq. 34.
                let y1 = mu / (mu * nu - nu * nu)
                    * (q_nu * nu.exp()
                        - q_mu * mu.exp() * nu * nu / (mu * mu)
                        - (mu * mu - nu * nu) / (mu * mu) * y0);
                let y1 = y1.max(0.0);
                // Ma et al. 2005, Eq. 37 (e0·Y0 is the observed vacuum error gain).
                let e1 = if y1 > 0.0 && nu > 0.0 {
                    ((eq_nu * nu.exp() - ey0) / (y1 * nu)).clamp(0.0, 0.5)
                } else {
                    0.5
                };
                (y1, e1)
            }
        };
        let q1 = y1 * p.mu * (-p.mu).exp();
        let rate = p.q * (-q_mu * p.f * binary_entropy(e_mu) + q1 * (1.0 - binary_entropy(e1)));
        DecoyTerms {
            eta,
            gain: q_mu,
            qber: e_mu,
            gain_nu: q_nu,
            y1,
            q1,
            e1,
            rate: rate.max(0.0),
        }
    }
}

impl DecoyBb84Params {
    fn gain_and_error_gain_single_photon(&self, eta: f64) -> (f64, f64) {
        let y1 = self.y0 + eta - self.y0 * eta;
        let ey1 = 0.5 * self.y0 * (1.0 - eta) + self.e_d * eta;
        (y1 * (1.0 + self.p_ap), ey1 + 0.5 * self.p_ap * y1)
    }
}

impl LinkModel for DecoyBb84 {
    fn name(&self) -> &'static str {
        match self.method {
            DecoyMethod::VacuumWeak => "bb84-decoy",
            DecoyMethod::Infinite => "bb84-decoy-inf",
        }
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
        let plob = plob_bound(fibre_transmittance(self.params.alpha_db_per_km, l));
        let (y1_name, e1_name) = match self.method {
            DecoyMethod::VacuumWeak => ("y1_lower", "e1_upper"),
            DecoyMethod::Infinite => ("y1", "e1"),
        };
        Ok(RatePoint {
            distance_km: l,
            rate_per_pulse: t.rate,
            rate_bps: t.rate * self.params.rep_rate_hz,
            plob_per_use: plob,
            intermediates: vec![
                ("eta", t.eta),
                ("gain", t.gain),
                ("qber", t.qber),
                ("gain_nu", t.gain_nu),
                (y1_name, t.y1),
                ("q1", t.q1),
                (e1_name, t.e1),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inf() -> DecoyBb84 {
        DecoyBb84::infinite(DecoyBb84Params::default()).unwrap()
    }

    /// Largest length (km, 0.01 km resolution) with a positive key.
    fn max_distance(m: &DecoyBb84) -> f64 {
        let (mut lo, mut hi) = (0.0, 400.0);
        while hi - lo > 1e-3 {
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
    fn default_is_vacuum_weak_gys() {
        let m = DecoyBb84::default();
        assert_eq!(m.method(), DecoyMethod::VacuumWeak);
        assert_eq!(m.params().y0, 1.7e-6);
        assert_eq!(m.name(), "bb84-decoy");
        assert!(m.secret_key_rate_bps(50.0) > 0.0);
    }

    #[test]
    fn gain_and_qber_follow_ma_eqs_6_to_9() {
        // Hand computation at 50 km: η = 0.045 × 10^(−1.05).
        let p = DecoyBb84Params::default();
        let eta = 0.045 * 10f64.powf(-1.05);
        let (q, eq) = p.gain_and_error_gain(0.48, eta);
        let click = 1.0 - (-0.48 * eta).exp();
        assert!((q - (1.7e-6 + click - 1.7e-6 * click)).abs() < 1e-15);
        assert!((eq / q - (0.5 * 1.7e-6 * (1.0 - click) + 0.033 * click) / q).abs() < 1e-12);
    }

    #[test]
    fn ma_2005_gys_optimal_mu_and_max_distance() {
        // Ma, Qi, Zhao, Lo 2005, Sec. III (Fig. 1, GYS): in the infinite-decoy limit the
        // optimal signal intensity is μ ≈ 0.48 and the maximal secure distance ≈ 142 km.
        let d = max_distance(&inf());
        assert!((d - 142.0).abs() < 1.0, "max distance {d}");
        let rate_at = |mu: f64| {
            let p = DecoyBb84Params {
                mu,
                ..Default::default()
            };
            DecoyBb84::infinite(p)
                .unwrap()
                .secret_key_rate_per_pulse(100.0)
        };
        let best = (20..=80)
            .map(|i| i as f64 / 100.0)
            .max_by(|a, b| rate_at(*a).total_cmp(&rate_at(*b)))
            .unwrap();
        assert!((best - 0.48).abs() <= 0.03, "optimal mu {best}");
    }

    #[test]
    fn vacuum_weak_approaches_infinite_decoy_as_nu_shrinks() {
        // Ma et al. 2005, Sec. IV: vacuum + weak decoy approaches the infinite-decoy limit as
        // ν → 0, and is a lower bound for any ν.
        let rate = |nu: f64| {
            let p = DecoyBb84Params {
                nu,
                ..Default::default()
            };
            DecoyBb84::new(p, DecoyMethod::VacuumWeak)
                .unwrap()
                .secret_key_rate_per_pulse(80.0)
        };
        let r_inf = inf().secret_key_rate_per_pulse(80.0);
        assert!(rate(0.2) < rate(0.1) && rate(0.1) < rate(0.01));
        assert!(rate(0.01) <= r_inf);
        assert!(rate(0.001) / r_inf > 0.97);
        let d = max_distance(
            &DecoyBb84::new(
                DecoyBb84Params {
                    nu: 0.001,
                    ..Default::default()
                },
                DecoyMethod::VacuumWeak,
            )
            .unwrap(),
        );
        assert!(
            d > 138.0 && d <= max_distance(&inf()),
            "vacuum+weak max distance {d}"
        );
    }

    #[test]
    fn bad_parameters_give_clear_errors() {
        let bad = |p: DecoyBb84Params| DecoyBb84::new(p, DecoyMethod::VacuumWeak).unwrap_err();
        let e = bad(DecoyBb84Params {
            alpha_db_per_km: -0.2,
            ..Default::default()
        });
        assert!(matches!(e, ModelError::Negative { name: "alpha", .. }));
        let e = bad(DecoyBb84Params {
            e_d: 1.5,
            ..Default::default()
        });
        assert!(matches!(e, ModelError::NotProbability { name: "e_d", .. }));
        let e = bad(DecoyBb84Params {
            eta_bob: -0.1,
            ..Default::default()
        });
        assert!(matches!(
            e,
            ModelError::NotProbability {
                name: "eta_bob",
                ..
            }
        ));
        let e = bad(DecoyBb84Params {
            mu: 0.1,
            nu: 0.1,
            ..Default::default()
        });
        assert!(matches!(e, ModelError::IntensityOrder { .. }));
        assert!(e.to_string().contains("mu > nu"));
        let e = bad(DecoyBb84Params {
            y0: f64::NAN,
            ..Default::default()
        });
        assert!(matches!(e, ModelError::NotFinite { name: "y0", .. }));
        assert!(DecoyBb84::default().evaluate(-1.0).is_err());
        assert_eq!(DecoyBb84::default().secret_key_rate_bps(-1.0), 0.0);
    }

    #[test]
    fn dark_count_helper() {
        let y0 = DecoyBb84Params::y0_from_dark_counts(100.0, 1e-9, 2);
        assert!((y0 - 2e-7).abs() < 1e-12);
    }

    #[test]
    fn afterpulsing_and_dead_time_cost_key() {
        let base = DecoyBb84::default().secret_key_rate_bps(25.0);
        let ap = DecoyBb84::new(
            DecoyBb84Params {
                p_ap: 0.05,
                ..Default::default()
            },
            DecoyMethod::VacuumWeak,
        )
        .unwrap();
        let dt = DecoyBb84::new(
            DecoyBb84Params {
                dead_time_s: 1e-6,
                ..Default::default()
            },
            DecoyMethod::VacuumWeak,
        )
        .unwrap();
        assert!(ap.secret_key_rate_bps(25.0) < base);
        assert!(dt.secret_key_rate_bps(25.0) < 0.5 * base);
    }
}
