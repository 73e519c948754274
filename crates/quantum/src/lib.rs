//! kagi-quantum: the quantum layer of kagi, as pure libraries with no I/O.
//!
//! * [`LinkModel`]: the secret key rate of a QKD link against fibre length. Implementations:
//!   [`DecoyBb84`] (vacuum + weak decoy after Ma, Qi, Zhao, Lo 2005, and the infinite-decoy
//!   limit), [`FiniteDecoyBb84`] (Lim, Curty, Walenta, Xu, Zbinden 2014),
//!   [`CvGg02`] (Gaussian-modulated coherent states with reverse reconciliation),
//!   [`TfSns`] (sending-or-not-sending twin-field QKD).
//! * [`satellite`]: LEO downlink passes, key per pass and per day with weather outages.
//! * [`repeater`]: a memory-based quantum repeater segment (entanglement events per second).
//! * [`orbit`]: pass windows of a circular orbit over ground stations.
//! * [`tech`]: a link technology named by protocol and parameters (as in a topology), and
//!   [`supply`]: when its key appears, cut into numbered blocks both ends derive alike.
//! * [`photon`]: a seeded photon-level decoy-BB84 simulator whose per-pulse records feed the
//!   post-processing pipeline.
//! * [`plob_bound`]: the repeaterless PLOB bound −log2(1−η).
//!
//! All rates are per channel use (per pulse) unless the name says `bps` (bits per second).
//! Lengths are in km, attenuations in dB/km, intensities in mean photons per pulse.
//! `docs/LINK-MODELS.md` lists every parameter, default, unit and the paper each model follows.

mod cv;
mod decoy;
mod error;
mod finite;
pub mod orbit;
pub mod photon;
pub mod repeater;
pub mod satellite;
pub mod supply;
pub mod tech;
mod tf;

pub use cv::{CvGg02, CvGg02Params, Detection};
pub use decoy::{DecoyBb84, DecoyBb84Params, DecoyMethod};
pub use error::{ModelError, Result};
pub use finite::{FiniteDecoyBb84, FiniteDecoyBb84Params};
pub use tf::{TfSns, TfSnsParams};

/// The rate of a link model at one length, with the model's intermediate quantities.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePoint {
    /// Fibre length between the two users, km.
    pub distance_km: f64,
    /// Secret key bits per pulse (per channel use); 0 when no key can be made.
    pub rate_per_pulse: f64,
    /// Secret key bits per second (`rate_per_pulse` × repetition rate).
    pub rate_bps: f64,
    /// PLOB bound −log2(1−η) per channel use for the fibre transmittance η at this length.
    pub plob_per_use: f64,
    /// Model intermediates by their literature names (e.g. `gain`, `qber`, `y1_lower`,
    /// `e1_upper`), in a fixed order.
    pub intermediates: Vec<(&'static str, f64)>,
}

/// A QKD link model: secret key rate against fibre length.
///
/// Implementations are immutable and validated at construction, so the methods here cannot
/// fail except for a bad length. Evaluation costs about 0.1–0.3 µs for `bb84-decoy` and
/// `cv-gg02`, 0.15 ms for `tf-sns` and 1 ms for `bb84-finite` (both optimise their free
/// parameters per distance); callers on a hot path should cache the rate per link.
pub trait LinkModel: Send + Sync + std::fmt::Debug {
    /// Short protocol name, as used by `kagi link-rate --protocol`.
    fn name(&self) -> &'static str;

    /// Pulses (channel uses) per second, Hz.
    fn repetition_rate_hz(&self) -> f64;

    /// Fibre attenuation, dB/km.
    fn alpha_db_per_km(&self) -> f64;

    /// Evaluates the model at one fibre length (km) with its intermediates.
    ///
    /// # Errors
    /// [`ModelError`] if `length_km` is negative or not finite.
    fn evaluate(&self, length_km: f64) -> Result<RatePoint>;

    /// Secret key bits per pulse at `length_km`; 0 when no key can be made or the length is
    /// invalid (negative or not finite).
    fn secret_key_rate_per_pulse(&self, length_km: f64) -> f64 {
        self.evaluate(length_km).map_or(0.0, |p| p.rate_per_pulse)
    }

    /// Secret key bits per second at `length_km`; 0 when no key can be made or the length is
    /// invalid (negative or not finite).
    fn secret_key_rate_bps(&self, length_km: f64) -> f64 {
        self.secret_key_rate_per_pulse(length_km) * self.repetition_rate_hz()
    }

    /// The PLOB bound per channel use for this model's fibre at `length_km`.
    fn plob_per_use(&self, length_km: f64) -> f64 {
        plob_bound(fibre_transmittance(self.alpha_db_per_km(), length_km))
    }
}

/// Names of the fibre protocols that [`default_model`] knows, as used by
/// `kagi link-rate --protocol`.
pub const PROTOCOLS: [&str; 5] = [
    "bb84-decoy",
    "bb84-decoy-inf",
    "bb84-finite",
    "cv-gg02",
    "tf-sns",
];

/// The fibre link model of a protocol with its documented default parameters and fibre
/// attenuation `alpha_db_per_km` (None keeps the model's default), for topologies that name
/// a link technology. `None` for an unknown name; see [`PROTOCOLS`].
///
/// # Errors
/// [`ModelError`] if `alpha_db_per_km` is negative or not finite.
pub fn default_model(
    name: &str,
    alpha_db_per_km: Option<f64>,
) -> Result<Option<Box<dyn LinkModel>>> {
    if let Some(a) = alpha_db_per_km {
        error::non_negative("alpha", a)?;
    }
    Ok(Some(match name {
        "bb84-decoy" | "bb84-decoy-inf" => {
            let mut p = DecoyBb84Params::default();
            if let Some(a) = alpha_db_per_km {
                p.alpha_db_per_km = a;
            }
            let method = if name == "bb84-decoy" {
                DecoyMethod::VacuumWeak
            } else {
                DecoyMethod::Infinite
            };
            Box::new(DecoyBb84::new(p, method)?)
        }
        "bb84-finite" => {
            let mut p = FiniteDecoyBb84Params::default();
            if let Some(a) = alpha_db_per_km {
                p.alpha_db_per_km = a;
            }
            Box::new(FiniteDecoyBb84::new(p)?)
        }
        "cv-gg02" => {
            let mut p = CvGg02Params::default();
            if let Some(a) = alpha_db_per_km {
                p.alpha_db_per_km = a;
            }
            Box::new(CvGg02::new(p)?)
        }
        "tf-sns" => {
            let mut p = TfSnsParams::default();
            if let Some(a) = alpha_db_per_km {
                p.alpha_db_per_km = a;
            }
            Box::new(TfSns::new(p)?)
        }
        _ => return Ok(None),
    }))
}

/// Fibre transmittance 10^(−α·L/10) for attenuation `alpha_db_per_km` and length `length_km`.
pub fn fibre_transmittance(alpha_db_per_km: f64, length_km: f64) -> f64 {
    10f64.powf(-alpha_db_per_km * length_km / 10.0)
}

/// The PLOB bound (Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043, 2017):
/// the secret key capacity of a pure-loss channel of transmittance `eta`,
/// −log2(1−η) bits per channel use, computed with `ln_1p` so that it stays accurate
/// (≈ 1.44 η) at long distance. Infinite at η = 1; NaN for η outside [0, 1].
pub fn plob_bound(eta: f64) -> f64 {
    if !(0.0..=1.0).contains(&eta) {
        return f64::NAN;
    }
    -(-eta).ln_1p() / std::f64::consts::LN_2
}

/// Binary entropy h(x) = −x log2 x − (1−x) log2(1−x); 0 at the ends, clamped to [0, 1].
pub fn binary_entropy(x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    -x * x.log2() - (1.0 - x) * (1.0 - x).log2()
}

pub(crate) fn check_length(length_km: f64) -> Result<f64> {
    error::non_negative("distance_km", length_km)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plob_matches_closed_form_and_small_eta_limit() {
        assert!((plob_bound(0.5) - 1.0).abs() < 1e-15);
        assert!((plob_bound(0.75) - 2.0).abs() < 1e-15);
        // 500 km at 0.2 dB/km: 100 dB, eta = 1e-10; −log2(1−η) ≈ η/ln 2 to 1e-10 relative.
        let eta = fibre_transmittance(0.2, 500.0);
        assert!((eta - 1e-10).abs() < 1e-22);
        let p = plob_bound(eta);
        assert!((p / (eta / std::f64::consts::LN_2) - 1.0).abs() < 1e-9);
        assert!(plob_bound(1.0).is_infinite());
        assert!(plob_bound(-0.1).is_nan());
    }

    #[test]
    fn default_models_by_name() {
        for name in PROTOCOLS {
            let m = default_model(name, None).unwrap().unwrap();
            assert_eq!(m.name(), name);
            assert!(m.secret_key_rate_bps(20.0) > 0.0, "{name}");
        }
        let ull = default_model("tf-sns", Some(0.16)).unwrap().unwrap();
        assert_eq!(ull.alpha_db_per_km(), 0.16);
        assert!(default_model("bb84", None).unwrap().is_none());
        assert!(default_model("cv-gg02", Some(-0.2)).is_err());
    }

    #[test]
    fn entropy_values() {
        assert_eq!(binary_entropy(0.0), 0.0);
        assert!((binary_entropy(0.5) - 1.0).abs() < 1e-15);
        assert!((binary_entropy(0.11) - 0.4999).abs() < 1e-3);
    }
}
