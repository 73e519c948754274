//! Satellite downlink QKD: LEO pass geometry, elevation-dependent loss, key per pass and per
//! day with weather outages.
//!
//! Geometry: circular orbit of altitude h over a spherical Earth (R = 6371 km), Earth rotation
//! neglected during a pass; a pass culminating at elevation θ_max has cross-track central angle
//! ψ_c, and at time t from culmination the central angle ψ satisfies cos ψ = cos(ω t) cos ψ_c
//! with ω = √(GM/(R+h)³). Slant range d = √(R² + r² − 2Rr cos ψ), elevation
//! sin θ = (r cos ψ − R)/d.
//!
//! Loss: diffraction/divergence-limited beam of full-angle divergence θ_div and transmit
//! aperture D_T caught by a receive aperture D_R (top-hat approximation,
//! η_geo = min(1, D_R² / (D_T² + (θ_div d)²))), atmospheric transmittance
//! T_zenith^(1/sin θ) (plane-parallel air-mass law), plus fixed pointing and receiver-optics
//! losses in dB. The key rate per pulse is that of the decoy-state BB84 model
//! ([`crate::DecoyBb84`], Ma et al. 2005) at this channel transmittance, as in the Micius
//! downlink (S.-K. Liao et al., "Satellite-to-ground quantum key distribution",
//! Nature 549, 43, 2017), whose parameters are the defaults: h = 500 km, 100 MHz,
//! μ = 0.8, ν = 0.1, θ_div = 10 µrad, D_R = 1 m (Xinglong).

use crate::error::{self, Result};
use crate::{DecoyBb84, DecoyBb84Params, DecoyMethod};

/// Mean Earth radius, km.
pub const EARTH_RADIUS_KM: f64 = 6371.0;
/// Earth's gravitational parameter GM, km³/s².
pub const GM_EARTH_KM3_S2: f64 = 398_600.441_8;

/// Parameters of a [`SatelliteLink`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SatelliteParams {
    /// Orbit altitude h, km (default 500).
    pub altitude_km: f64,
    /// Lowest elevation at which the ground station tracks, degrees (default 15).
    pub min_elevation_deg: f64,
    /// Elevation at culmination of the pass, degrees (default 90: overhead pass).
    pub max_elevation_deg: f64,
    /// Full-angle beam divergence, µrad (default 10).
    pub divergence_urad: f64,
    /// Transmit aperture diameter, m (default 0.3).
    pub tx_aperture_m: f64,
    /// Receive aperture diameter, m (default 1.0).
    pub rx_aperture_m: f64,
    /// Atmospheric transmittance at zenith (default 0.8, ≈ 1 dB; clear night, 850 nm).
    pub zenith_transmittance: f64,
    /// Pointing, polarisation and receiver-optics loss, dB (default 10, which puts the total
    /// channel loss at 1,200 km near 35 dB, the upper end of the Micius downlink budget).
    pub fixed_loss_db: f64,
    /// Usable passes per day over the ground station (default 4: night passes of a
    /// sun-synchronous orbit over two nights... planners set their own).
    pub passes_per_day: f64,
    /// Probability that a pass is lost to weather at this ground station (default 0.4).
    pub weather_outage: f64,
    /// Time step of the pass integration, s (default 1).
    pub time_step_s: f64,
    /// Source and detector: η_Bob (detector efficiency), Y0, e_d, f, q, μ, ν, repetition rate.
    /// Defaults: η_Bob = 0.5, Y0 = 1e-6 (night background), e_d = 1 %, f = 1.16, q = 1/2,
    /// μ = 0.8, ν = 0.1, 100 MHz. `alpha` is not used.
    pub link: DecoyBb84Params,
}

impl Default for SatelliteParams {
    fn default() -> Self {
        Self {
            altitude_km: 500.0,
            min_elevation_deg: 15.0,
            max_elevation_deg: 90.0,
            divergence_urad: 10.0,
            tx_aperture_m: 0.3,
            rx_aperture_m: 1.0,
            zenith_transmittance: 0.8,
            fixed_loss_db: 10.0,
            passes_per_day: 4.0,
            weather_outage: 0.4,
            time_step_s: 1.0,
            link: DecoyBb84Params {
                alpha_db_per_km: 0.0,
                eta_bob: 0.5,
                y0: 1e-6,
                e_d: 0.01,
                f: 1.16,
                q: 0.5,
                mu: 0.8,
                nu: 0.1,
                p_ap: 0.0,
                dead_time_s: 0.0,
                rep_rate_hz: 1e8,
            },
        }
    }
}

/// One instant of a pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassSample {
    /// Time from culmination, s.
    pub time_s: f64,
    /// Elevation, degrees.
    pub elevation_deg: f64,
    /// Slant range, km.
    pub range_km: f64,
    /// Total channel loss (geometric, atmospheric, fixed; detector excluded), dB.
    pub loss_db: f64,
    /// Secret key rate, bit/s.
    pub rate_bps: f64,
}

/// Summary of one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PassSummary {
    /// Time the satellite is above the minimum elevation, s.
    pub duration_s: f64,
    /// Secret key bits of the pass (clear sky).
    pub key_bits: f64,
    /// Smallest and largest channel loss during the tracked part, dB.
    pub loss_db_range: (f64, f64),
    /// Smallest and largest slant range, km.
    pub range_km_range: (f64, f64),
    /// Mean key bits of a pass over random pass geometry: culmination points spread
    /// uniformly across the visibility circle (cross-track angle uniform in [0, ψ_max]).
    pub mean_key_bits_per_pass: f64,
    /// Expected secret key bits per day: passes × (1 − outage) × mean key per pass.
    pub key_bits_per_day: f64,
    /// Samples of the pass (every `time_step_s`), culmination first then outwards.
    pub samples: Vec<PassSample>,
}

/// A LEO satellite-to-ground decoy-BB84 downlink.
#[derive(Debug, Clone, PartialEq)]
pub struct SatelliteLink {
    params: SatelliteParams,
    model: DecoyBb84,
}

impl Default for SatelliteLink {
    fn default() -> Self {
        Self::new(SatelliteParams::default()).expect("default satellite parameters are valid")
    }
}

/// Central angle (rad) between the sub-satellite point and a station that sees the satellite
/// at elevation `el` (rad), orbit radius `r`.
fn central_angle(el: f64, r: f64) -> f64 {
    (EARTH_RADIUS_KM * el.cos() / r).acos() - el
}

impl SatelliteLink {
    /// A validated link.
    ///
    /// # Errors
    /// [`crate::ModelError`] for parameters out of range.
    pub fn new(params: SatelliteParams) -> Result<Self> {
        error::positive("altitude", params.altitude_km)?;
        error::finite("min_elevation", params.min_elevation_deg)?;
        error::finite("max_elevation", params.max_elevation_deg)?;
        if !(0.0..90.0).contains(&params.min_elevation_deg)
            || params.max_elevation_deg <= params.min_elevation_deg
            || params.max_elevation_deg > 90.0
        {
            return Err(crate::ModelError::OutOfRange {
                name: "max_elevation",
                value: params.max_elevation_deg,
                reason: "need 0 <= min_elevation < max_elevation <= 90 degrees",
            });
        }
        error::positive("divergence", params.divergence_urad)?;
        error::non_negative("tx_aperture", params.tx_aperture_m)?;
        error::positive("rx_aperture", params.rx_aperture_m)?;
        error::probability("zenith_transmittance", params.zenith_transmittance)?;
        error::non_negative("fixed_loss", params.fixed_loss_db)?;
        error::non_negative("passes_per_day", params.passes_per_day)?;
        error::probability("weather_outage", params.weather_outage)?;
        error::positive("time_step", params.time_step_s)?;
        let model = DecoyBb84::new(params.link, DecoyMethod::VacuumWeak)?;
        Ok(Self { params, model })
    }

    /// The parameters.
    pub fn params(&self) -> &SatelliteParams {
        &self.params
    }

    /// Channel transmittance (geometric × atmospheric × fixed) at slant range `range_km` and
    /// elevation `elevation_deg`.
    pub fn channel_transmittance(&self, range_km: f64, elevation_deg: f64) -> f64 {
        let p = &self.params;
        let beam =
            (p.tx_aperture_m.powi(2) + (p.divergence_urad * 1e-6 * range_km * 1e3).powi(2)).sqrt();
        let geo = (p.rx_aperture_m / beam).powi(2).min(1.0);
        let air_mass = 1.0 / elevation_deg.to_radians().sin().max(1e-3);
        let atm = p.zenith_transmittance.powf(air_mass);
        geo * atm * 10f64.powf(-p.fixed_loss_db / 10.0)
    }

    /// Secret key rate (bit/s) at slant range `range_km` and elevation `elevation_deg`.
    pub fn rate_bps(&self, range_km: f64, elevation_deg: f64) -> f64 {
        self.model
            .rate_per_pulse_at_channel(self.channel_transmittance(range_km, elevation_deg))
            * self.params.link.rep_rate_hz
    }

    /// Simulates one pass.
    pub fn pass(&self) -> PassSummary {
        let mut s = self.pass_at(self.params.max_elevation_deg);
        // Mean over pass geometry: cross-track central angle uniform in [0, ψ_max).
        let r = EARTH_RADIUS_KM + self.params.altitude_km;
        let psi_max = central_angle(self.params.min_elevation_deg.to_radians(), r);
        const K: usize = 16;
        let mean = (0..K)
            .map(|i| {
                let psi = psi_max * (i as f64 + 0.5) / K as f64;
                let el = ((psi.cos() - EARTH_RADIUS_KM / r) / psi.sin()).atan();
                if el.to_degrees() <= self.params.min_elevation_deg {
                    0.0
                } else {
                    self.pass_at(el.to_degrees()).key_bits
                }
            })
            .sum::<f64>()
            / K as f64;
        s.mean_key_bits_per_pass = mean;
        s.key_bits_per_day = mean * self.params.passes_per_day * (1.0 - self.params.weather_outage);
        s
    }

    /// One pass culminating at `max_elevation_deg`.
    fn pass_at(&self, max_elevation_deg: f64) -> PassSummary {
        let p = &self.params;
        let r = EARTH_RADIUS_KM + p.altitude_km;
        let omega = (GM_EARTH_KM3_S2 / r.powi(3)).sqrt();
        let psi_c = central_angle(max_elevation_deg.to_radians(), r);
        let el_min = p.min_elevation_deg.to_radians();
        let mut samples = Vec::new();
        let mut key = 0.0;
        let mut t = 0.0;
        loop {
            let cos_psi = (omega * t).cos() * psi_c.cos();
            let d = (EARTH_RADIUS_KM.powi(2) + r * r - 2.0 * EARTH_RADIUS_KM * r * cos_psi).sqrt();
            let sin_el = (r * cos_psi - EARTH_RADIUS_KM) / d;
            let el = sin_el.clamp(-1.0, 1.0).asin();
            if el < el_min || omega * t > std::f64::consts::PI {
                break;
            }
            let el_deg = el.to_degrees();
            let tr = self.channel_transmittance(d, el_deg);
            let rate = self.rate_bps(d, el_deg);
            // Both halves of the pass, except the culmination sample.
            key += rate * p.time_step_s * if t == 0.0 { 1.0 } else { 2.0 };
            samples.push(PassSample {
                time_s: t,
                elevation_deg: el_deg,
                range_km: d,
                loss_db: -10.0 * tr.log10(),
                rate_bps: rate,
            });
            t += p.time_step_s;
        }
        let duration = if samples.is_empty() {
            0.0
        } else {
            (2 * samples.len() - 1) as f64 * p.time_step_s
        };
        let fold = |f: fn(&PassSample) -> f64| {
            samples
                .iter()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                    (a.min(x), b.max(x))
                })
        };
        let loss_db_range = fold(|s| s.loss_db);
        let range_km_range = fold(|s| s.range_km);
        PassSummary {
            duration_s: duration,
            key_bits: key,
            loss_db_range,
            range_km_range,
            mean_key_bits_per_pass: key,
            key_bits_per_day: key * p.passes_per_day * (1.0 - p.weather_outage),
            samples,
        }
    }
}

/// Average number of passes per day above `min_elevation_deg` of a circular polar
/// (or sun-synchronous) orbit of altitude `altitude_km`, seen from a station at
/// `latitude_deg` (|latitude| < 90°). Each orbit crosses the station's latitude twice and
/// Earth's rotation spreads the crossings evenly in longitude, so a crossing is visible when
/// it falls within the station's visibility circle of angular radius ψ:
/// passes/day ≈ 2 N_orbits ψ / (π cos φ), capped at 2 N_orbits. Half of them are at night on
/// a sun-synchronous dawn/dusk-free orbit. An approximation for planning, not an ephemeris.
pub fn polar_passes_per_day(altitude_km: f64, min_elevation_deg: f64, latitude_deg: f64) -> f64 {
    let r = EARTH_RADIUS_KM + altitude_km;
    let period = 2.0 * std::f64::consts::PI * (r.powi(3) / GM_EARTH_KM3_S2).sqrt();
    let orbits = 86_400.0 / period;
    let psi = central_angle(min_elevation_deg.to_radians(), r);
    let cos_lat = latitude_deg.to_radians().cos().max(1e-6);
    (2.0 * orbits * psi / (std::f64::consts::PI * cos_lat)).min(2.0 * orbits)
}

/// Expected key per day between two ground stations relayed by a trusted satellite that
/// passes over both: limited by the poorer station, min(A, B).
pub fn trusted_relay_key_per_day(a: &PassSummary, b: &PassSummary) -> f64 {
    a.key_bits_per_day.min(b.key_bits_per_day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_pass_geometry() {
        let s = SatelliteLink::default().pass();
        // Culmination at zenith: range equals the altitude.
        assert!((s.samples[0].range_km - 500.0).abs() < 1e-6);
        assert!((s.samples[0].elevation_deg - 90.0).abs() < 1e-6);
        // 500 km orbit: period ≈ 94.6 min; at 15° elevation the slant range is
        // √(r² − R² cos² 15°) − R sin 15° ≈ 1,407 km and an overhead pass
        // lasts 2ψ/ω with ψ = acos(R cos 15°/r) − 15° ≈ 0.1995 rad, ω = 2π/period: ≈ 360 s.
        let r = EARTH_RADIUS_KM + 500.0;
        let period = 2.0 * std::f64::consts::PI * (r.powi(3) / GM_EARTH_KM3_S2).sqrt();
        assert!((period / 60.0 - 94.6).abs() < 0.2);
        assert!(
            s.range_km_range.1 > 1390.0 && s.range_km_range.1 < 1408.0,
            "{:?}",
            s.range_km_range
        );
        assert!((s.duration_s - 360.0).abs() < 3.0, "{}", s.duration_s);
    }

    #[test]
    fn micius_kilohertz_key_rate_at_1200_km() {
        // Liao et al., Nature 549, 43 (2017): decoy-state BB84 from Micius (500 km orbit,
        // 100 MHz) gives a kilohertz secret key rate at slant ranges up to 1,200 km, with a
        // channel efficiency about 20 orders of magnitude above 1,200 km of fibre.
        let link = SatelliteLink::default();
        let el = {
            // Elevation at which the slant range is 1,200 km (overhead pass).
            let s = link.pass();
            s.samples
                .iter()
                .min_by(|a, b| {
                    (a.range_km - 1200.0)
                        .abs()
                        .total_cmp(&(b.range_km - 1200.0).abs())
                })
                .unwrap()
                .elevation_deg
        };
        let rate = link.rate_bps(1200.0, el);
        assert!((500.0..3000.0).contains(&rate), "rate {rate}");
        let loss = -10.0 * link.channel_transmittance(1200.0, el).log10();
        let fibre_loss = 0.2 * 1200.0;
        let orders = (fibre_loss - loss) / 10.0;
        assert!(
            (19.0..=22.0).contains(&orders),
            "orders {orders}, loss {loss}"
        );
        assert!((30.0..=37.0).contains(&loss), "loss {loss}");
    }

    #[test]
    fn low_passes_and_bad_weather_cost_key() {
        let high = SatelliteLink::default().pass();
        let low = SatelliteLink::new(SatelliteParams {
            max_elevation_deg: 30.0,
            ..Default::default()
        })
        .unwrap()
        .pass();
        assert!(low.key_bits < high.key_bits && low.duration_s < high.duration_s);
        // Random geometry: the mean pass is poorer than an overhead one, better than none.
        assert!(high.mean_key_bits_per_pass < high.key_bits);
        assert!(high.mean_key_bits_per_pass > 0.1 * high.key_bits);
        let cloudy = SatelliteLink::new(SatelliteParams {
            weather_outage: 0.8,
            ..Default::default()
        })
        .unwrap()
        .pass();
        assert!((cloudy.key_bits_per_day / high.key_bits_per_day - 0.2 / 0.6).abs() < 1e-9);
        assert_eq!(
            trusted_relay_key_per_day(&high, &cloudy),
            cloudy.key_bits_per_day
        );
    }

    #[test]
    fn passes_per_day_estimate() {
        // 500 km, 15° minimum elevation: 15.24 orbits a day (period 94.5 min), ψ = 0.1995 rad; at 40° latitude
        // 2·15.2·0.1995/(π·cos 40°) ≈ 2.5 passes a day; more towards the poles.
        let n40 = polar_passes_per_day(500.0, 15.0, 40.0);
        assert!((n40 - 2.52).abs() < 0.05, "{n40}");
        assert!(polar_passes_per_day(500.0, 15.0, 70.0) > n40);
        assert!(polar_passes_per_day(500.0, 15.0, 89.9) <= 2.0 * 15.25);
    }

    #[test]
    fn bad_parameters() {
        assert!(SatelliteLink::new(SatelliteParams {
            weather_outage: 1.5,
            ..Default::default()
        })
        .is_err());
        assert!(SatelliteLink::new(SatelliteParams {
            min_elevation_deg: 95.0,
            ..Default::default()
        })
        .is_err());
        assert!(SatelliteLink::new(SatelliteParams {
            altitude_km: -1.0,
            ..Default::default()
        })
        .is_err());
    }
}
