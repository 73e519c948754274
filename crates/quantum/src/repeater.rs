//! Memory-based quantum repeater segment: heralded entanglement between two quantum memories.
//!
//! Two memories at the ends of a segment of length L each emit a photon (entangled with the
//! memory) into fibre towards a midpoint station, which heralds entanglement by a Bell-state
//! measurement and sends the result back. One attempt therefore takes at least L/c_f
//! (the photon travels L/2, the herald L/2 back), so attempts per second are
//! min(r_max, c_f/L) × modes, with c_f = 2×10⁵ km/s in fibre and `modes` temporally or
//! spectrally multiplexed memory modes (Sangouard, Simon, de Riedmatten, Gisin,
//! Rev. Mod. Phys. 83, 33, 2011, Sec. II and Eq. 9).
//!
//! Success probability per attempt, with per-arm efficiency
//! η = η_emit η_det 10^(−α (L/2)/10):
//! * two-photon (Barrett–Kok) scheme: p = η²/2 (S. D. Barrett, P. Kok, PRA 71, 060310, 2005),
//!   initial fidelity F0 = 1 (limited only by the memories);
//! * single-photon (Cabrillo) scheme with bright-state population α_b: p ≈ 2 α_b η, initial
//!   fidelity F0 = 1 − α_b (C. Cabrillo et al., PRA 59, 1025, 1999; Humphreys et al.,
//!   Nature 558, 268, 2018).
//!
//! Memory decoherence during the herald delay t_h = L/c_f (and the mean wait for it):
//! F = 1/4 + (F0 − 1/4) e^(−t_h/T_coh) (depolarising memory with coherence time T_coh).

use crate::error::{self, ModelError, Result};

/// Speed of light in fibre, km/s.
pub const C_FIBRE_KM_S: f64 = 2.0e5;

/// How the midpoint station heralds entanglement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeraldScheme {
    /// Two-photon interference (Barrett–Kok): p = η²/2, F0 = 1.
    TwoPhoton,
    /// Single-photon interference with bright-state population α_b in (0, 1/2]:
    /// p = 2 α_b η, F0 = 1 − α_b.
    SinglePhoton {
        /// Bright-state population α_b.
        alpha_b: f64,
    },
}

/// Parameters of a [`RepeaterSegment`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepeaterParams {
    /// Fibre attenuation α at the photons' wavelength, dB/km (default 0.2: telecom photons,
    /// after frequency conversion if needed).
    pub alpha_db_per_km: f64,
    /// Probability that a memory emits a photon into the fibre (emission, collection,
    /// conversion), per attempt (default 0.5).
    pub eta_emit: f64,
    /// Detector efficiency at the midpoint station (default 0.8).
    pub eta_det: f64,
    /// Local limit on attempts per second per mode (memory reset and photon generation),
    /// Hz (default 1e6).
    pub max_attempt_rate_hz: f64,
    /// Multiplexed memory modes attempted in parallel (default 1).
    pub modes: u32,
    /// Memory coherence time T_coh, s (default 0.1).
    pub coherence_time_s: f64,
    /// Heralding scheme (default two-photon).
    pub scheme: HeraldScheme,
}

impl Default for RepeaterParams {
    fn default() -> Self {
        Self {
            alpha_db_per_km: 0.2,
            eta_emit: 0.5,
            eta_det: 0.8,
            max_attempt_rate_hz: 1e6,
            modes: 1,
            coherence_time_s: 0.1,
            scheme: HeraldScheme::TwoPhoton,
        }
    }
}

/// The performance of a segment at one length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentPoint {
    /// Segment length (memory to memory), km.
    pub length_km: f64,
    /// Attempts per second (all modes).
    pub attempt_rate_hz: f64,
    /// Per-arm photon efficiency η.
    pub eta_arm: f64,
    /// Success probability per attempt.
    pub success_probability: f64,
    /// Heralded entanglement events per second.
    pub events_per_s: f64,
    /// Herald delay L/c_f, s.
    pub herald_delay_s: f64,
    /// Fidelity of the heralded pair when the herald arrives.
    pub fidelity: f64,
}

/// A memory-based repeater segment (see the module documentation for the model).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RepeaterSegment {
    params: RepeaterParams,
}

impl RepeaterSegment {
    /// A validated segment model.
    ///
    /// # Errors
    /// [`ModelError`] for parameters out of range.
    pub fn new(params: RepeaterParams) -> Result<Self> {
        error::non_negative("alpha", params.alpha_db_per_km)?;
        error::probability("eta_emit", params.eta_emit)?;
        error::probability("eta_det", params.eta_det)?;
        error::positive("max_attempt_rate", params.max_attempt_rate_hz)?;
        if params.modes == 0 {
            return Err(ModelError::NotPositive {
                name: "modes",
                value: 0.0,
            });
        }
        error::positive("coherence_time", params.coherence_time_s)?;
        if let HeraldScheme::SinglePhoton { alpha_b } = params.scheme {
            error::probability("alpha_b", alpha_b)?;
            if alpha_b == 0.0 || alpha_b > 0.5 {
                return Err(ModelError::OutOfRange {
                    name: "alpha_b",
                    value: alpha_b,
                    reason: "bright-state population must lie in (0, 0.5]",
                });
            }
        }
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &RepeaterParams {
        &self.params
    }

    /// Performance at segment length `length_km`.
    ///
    /// # Errors
    /// [`ModelError`] if the length is negative or not finite.
    pub fn evaluate(&self, length_km: f64) -> Result<SegmentPoint> {
        let l = crate::check_length(length_km)?;
        let p = &self.params;
        let herald = l / C_FIBRE_KM_S;
        let per_mode = if herald > 0.0 {
            p.max_attempt_rate_hz.min(1.0 / herald)
        } else {
            p.max_attempt_rate_hz
        };
        let attempts = per_mode * p.modes as f64;
        let eta = p.eta_emit * p.eta_det * crate::fibre_transmittance(p.alpha_db_per_km, l / 2.0);
        let (prob, f0) = match p.scheme {
            HeraldScheme::TwoPhoton => (eta * eta / 2.0, 1.0),
            HeraldScheme::SinglePhoton { alpha_b } => {
                ((2.0 * alpha_b * eta).min(1.0), 1.0 - alpha_b)
            }
        };
        let fidelity = 0.25 + (f0 - 0.25) * (-herald / p.coherence_time_s).exp();
        Ok(SegmentPoint {
            length_km: l,
            attempt_rate_hz: attempts,
            eta_arm: eta,
            success_probability: prob,
            events_per_s: attempts * prob,
            herald_delay_s: herald,
            fidelity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_rate_is_limited_by_the_herald_round_trip() {
        // 10 km: the herald takes 10 km / 2e5 km/s = 50 µs, so at most 20 kHz per mode.
        let s = RepeaterSegment::default().evaluate(10.0).unwrap();
        assert!((s.herald_delay_s - 50e-6).abs() < 1e-12);
        assert!((s.attempt_rate_hz - 2e4).abs() < 1e-6);
        // Short links are limited by the local rate instead.
        let s = RepeaterSegment::default().evaluate(0.1).unwrap();
        assert_eq!(s.attempt_rate_hz, 1e6);
    }

    #[test]
    fn barrett_kok_and_single_photon_probabilities() {
        // Barrett & Kok 2005: p = η²/2. η per arm at 10 km: 0.5 × 0.8 × 10^(−0.1).
        let s = RepeaterSegment::default().evaluate(10.0).unwrap();
        let eta = 0.4 * 10f64.powf(-0.1);
        assert!((s.success_probability - eta * eta / 2.0).abs() < 1e-15);
        assert!((s.events_per_s - 2e4 * eta * eta / 2.0).abs() < 1e-9);
        // The target: ≥ 10 entanglement events per second over ≥ 10 km.
        assert!(s.events_per_s >= 10.0, "{}", s.events_per_s);
        let sp = RepeaterSegment::new(RepeaterParams {
            scheme: HeraldScheme::SinglePhoton { alpha_b: 0.1 },
            ..Default::default()
        })
        .unwrap()
        .evaluate(10.0)
        .unwrap();
        assert!((sp.success_probability - 0.2 * eta).abs() < 1e-15);
        assert!((sp.fidelity - (0.25 + 0.65 * (-50e-6f64 / 0.1).exp())).abs() < 1e-12);
        // Single-photon heralding scales as η, two-photon as η²: better at long distance.
        assert!(sp.events_per_s > s.events_per_s);
    }

    #[test]
    fn decoherence_and_multiplexing() {
        let short = RepeaterSegment::new(RepeaterParams {
            coherence_time_s: 1e-4,
            ..Default::default()
        })
        .unwrap()
        .evaluate(50.0)
        .unwrap();
        assert!(short.fidelity < 0.25 + 0.75 * (-2.0f64).exp() + 1e-12);
        let mux = RepeaterSegment::new(RepeaterParams {
            modes: 100,
            ..Default::default()
        })
        .unwrap();
        let one = RepeaterSegment::default();
        let r = mux.evaluate(20.0).unwrap().events_per_s / one.evaluate(20.0).unwrap().events_per_s;
        assert!((r - 100.0).abs() < 1e-9);
        assert!(RepeaterSegment::new(RepeaterParams {
            modes: 0,
            ..Default::default()
        })
        .is_err());
        assert!(RepeaterSegment::new(RepeaterParams {
            scheme: HeraldScheme::SinglePhoton { alpha_b: 0.7 },
            ..Default::default()
        })
        .is_err());
    }
}
