//! Pass windows of a LEO satellite over ground stations, from the orbit.
//!
//! Circular orbit of radius r = R + h, inclination i, right ascension of the ascending node Ω
//! and argument of latitude u0 at the reference time, over a spherical Earth (R = 6371 km)
//! rotating at the sidereal rate; the Greenwich angle comes from the Earth rotation angle
//! (IERS 2010, ERA = 2π(0.7790572732640 + 1.00273781191135448 (JD − 2451545))). Satellite
//! position in the Earth-centred inertial frame:
//! x = r (cos Ω cos u − sin Ω sin u cos i), y = r (sin Ω cos u + cos Ω sin u cos i),
//! z = r sin u sin i, with u = u0 + n t and n = √(GM/r³). Elevation at a station with unit
//! up-vector ê: sin θ = (s − g)·ê / |s − g|. Nodal precession (J2) and drag are neglected:
//! a planning model good to a few minutes over a day, not an ephemeris.
//!
//! Pass windows are found by stepping the elevation every [`SCAN_STEP_S`] seconds and refining
//! the rise and set times by bisection; the key of a pass is the rate of
//! [`crate::satellite::SatelliteLink`] at each second's slant range and elevation.

use crate::error::{self, ModelError, Result};
use crate::satellite::{SatelliteLink, EARTH_RADIUS_KM, GM_EARTH_KM3_S2};

/// Step of the pass search, s (a pass above 15° at 500 km lasts up to ~6 minutes).
pub const SCAN_STEP_S: f64 = 10.0;

/// A circular orbit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orbit {
    /// Altitude h, km.
    pub altitude_km: f64,
    /// Inclination i, degrees (97.4: sun-synchronous at 500 km).
    pub inclination_deg: f64,
    /// Right ascension of the ascending node Ω at the reference time, degrees.
    pub raan_deg: f64,
    /// Argument of latitude u0 at the reference time, degrees.
    pub phase_deg: f64,
}

impl Default for Orbit {
    fn default() -> Self {
        Self {
            altitude_km: 500.0,
            inclination_deg: 97.4,
            raan_deg: 0.0,
            phase_deg: 0.0,
        }
    }
}

/// A ground station.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Station {
    /// Geodetic latitude (spherical Earth), degrees north.
    pub lat_deg: f64,
    /// Longitude, degrees east.
    pub lon_deg: f64,
}

/// Satellite position seen from a station at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LookAngle {
    /// Elevation above the horizon, degrees.
    pub elevation_deg: f64,
    /// Slant range, km.
    pub range_km: f64,
}

/// One pass window over a station.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pass {
    /// Rise above the minimum elevation, Unix seconds.
    pub start_unix: f64,
    /// Set below the minimum elevation, Unix seconds.
    pub end_unix: f64,
    /// Highest elevation of the pass, degrees.
    pub max_elevation_deg: f64,
}

impl Orbit {
    /// Checks the orbit.
    ///
    /// # Errors
    /// [`ModelError`] naming the parameter out of range.
    pub fn validate(&self) -> Result<()> {
        error::positive("altitude", self.altitude_km)?;
        if self.altitude_km > 40_000.0 {
            return Err(ModelError::OutOfRange {
                name: "altitude",
                value: self.altitude_km,
                reason: "a LEO/MEO orbit below 40,000 km",
            });
        }
        error::finite("inclination", self.inclination_deg)?;
        if !(0.0..=180.0).contains(&self.inclination_deg) {
            return Err(ModelError::OutOfRange {
                name: "inclination",
                value: self.inclination_deg,
                reason: "inclination lies in [0, 180] degrees",
            });
        }
        error::finite("raan", self.raan_deg)?;
        error::finite("phase", self.phase_deg)?;
        Ok(())
    }

    /// Orbit radius, km.
    pub fn radius_km(&self) -> f64 {
        EARTH_RADIUS_KM + self.altitude_km
    }

    /// Orbital period, s.
    pub fn period_s(&self) -> f64 {
        2.0 * std::f64::consts::PI * (self.radius_km().powi(3) / GM_EARTH_KM3_S2).sqrt()
    }

    /// Inertial position (km) `dt` seconds after the reference time.
    fn position(&self, dt: f64) -> [f64; 3] {
        let r = self.radius_km();
        let n = (GM_EARTH_KM3_S2 / r.powi(3)).sqrt();
        let u = self.phase_deg.to_radians() + n * dt;
        let (su, cu) = u.sin_cos();
        let (so, co) = self.raan_deg.to_radians().sin_cos();
        let (si, ci) = self.inclination_deg.to_radians().sin_cos();
        [
            r * (co * cu - so * su * ci),
            r * (so * cu + co * su * ci),
            r * su * si,
        ]
    }

    /// Look angle from `station` at Unix time `t_unix`, for an orbit whose elements hold at
    /// Unix time `ref_unix`.
    pub fn look(&self, station: &Station, ref_unix: f64, t_unix: f64) -> LookAngle {
        let s = self.position(t_unix - ref_unix);
        let theta = earth_rotation_angle(t_unix) + station.lon_deg.to_radians();
        let (sl, cl) = station.lat_deg.to_radians().sin_cos();
        let up = [cl * theta.cos(), cl * theta.sin(), sl];
        let d = [
            s[0] - EARTH_RADIUS_KM * up[0],
            s[1] - EARTH_RADIUS_KM * up[1],
            s[2] - EARTH_RADIUS_KM * up[2],
        ];
        let range = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        let sin_el = (d[0] * up[0] + d[1] * up[1] + d[2] * up[2]) / range;
        LookAngle {
            elevation_deg: sin_el.clamp(-1.0, 1.0).asin().to_degrees(),
            range_km: range,
        }
    }

    /// Pass windows over `station` above `min_elevation_deg` that overlap
    /// [`from_unix`, `to_unix`), clipped to it.
    pub fn passes(
        &self,
        station: &Station,
        min_elevation_deg: f64,
        ref_unix: f64,
        from_unix: f64,
        to_unix: f64,
    ) -> Vec<Pass> {
        let el = |t: f64| self.look(station, ref_unix, t).elevation_deg;
        let above = |t: f64| el(t) >= min_elevation_deg;
        // Bisection between a time below and a time above (either order), to 0.05 s.
        let edge = |mut lo: f64, mut hi: f64| {
            let lo_above = above(lo);
            while hi - lo > 0.05 {
                let mid = 0.5 * (lo + hi);
                if above(mid) == lo_above {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            0.5 * (lo + hi)
        };
        let mut out = Vec::new();
        let mut t = from_unix;
        let mut prev = above(t);
        let mut start = if prev { Some(from_unix) } else { None };
        let mut best = if prev { el(t) } else { f64::NEG_INFINITY };
        while t < to_unix {
            let next = (t + SCAN_STEP_S).min(to_unix);
            let e = el(next);
            let now = e >= min_elevation_deg;
            if now && !prev {
                start = Some(edge(t, next));
                best = e;
            } else if now {
                best = best.max(e);
            } else if prev {
                if let Some(s) = start.take() {
                    out.push(Pass {
                        start_unix: s,
                        end_unix: edge(t, next),
                        max_elevation_deg: best,
                    });
                }
            }
            prev = now;
            t = next;
        }
        if let (true, Some(s)) = (prev, start) {
            out.push(Pass {
                start_unix: s,
                end_unix: to_unix,
                max_elevation_deg: best,
            });
        }
        out
    }
}

/// Earth rotation angle (rad, in [0, 2π)) at Unix time `t_unix` (UT1 ≈ UTC).
pub fn earth_rotation_angle(t_unix: f64) -> f64 {
    let d = t_unix / 86_400.0 + 2_440_587.5 - 2_451_545.0;
    let turns = 0.779_057_273_264_0 + 1.002_737_811_911_354_5 * d;
    turns.rem_euclid(1.0) * 2.0 * std::f64::consts::PI
}

/// Key (bits) collected during `pass` by `link`, integrating its rate at one-second steps.
/// Also returns the cumulative key at the end of each second, for schedules.
pub fn pass_key(
    link: &SatelliteLink,
    orbit: &Orbit,
    station: &Station,
    ref_unix: f64,
    pass: &Pass,
) -> Vec<(f64, f64)> {
    let mut cum = 0.0;
    let mut out = Vec::new();
    let mut t = pass.start_unix;
    while t < pass.end_unix {
        let dt = (pass.end_unix - t).min(1.0);
        let mid = t + 0.5 * dt;
        let look = orbit.look(station, ref_unix, mid);
        let rate = if look.elevation_deg > 0.0 {
            link.rate_bps(look.range_km, look.elevation_deg)
        } else {
            0.0
        };
        cum += rate * dt;
        t += dt;
        out.push((t, cum));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKYO: Station = Station {
        lat_deg: 35.7,
        lon_deg: 139.5,
    };

    #[test]
    fn period_and_overhead_geometry() {
        let o = Orbit::default();
        assert!((o.period_s() / 60.0 - 94.6).abs() < 0.2);
        // A station under the satellite at the reference time sees it at zenith, range h.
        let t0 = 1.7e9;
        let sub = Station {
            lat_deg: 0.0,
            lon_deg: (0.0 - earth_rotation_angle(t0)).to_degrees(),
        };
        let l = o.look(&sub, t0, t0);
        assert!((l.elevation_deg - 90.0).abs() < 1e-6, "{l:?}");
        assert!((l.range_km - 500.0).abs() < 1e-6);
    }

    #[test]
    fn earth_rotation_angle_at_j2000() {
        // J2000.0 = 2000-01-01 12:00 TT ≈ Unix 946728000: ERA = 2π·0.7790572732640 rad.
        let era = earth_rotation_angle(946_728_000.0);
        assert!((era - 0.779_057_273_264 * std::f64::consts::TAU).abs() < 1e-9);
    }

    #[test]
    fn passes_per_day_match_the_polar_estimate() {
        // A sun-synchronous 500 km orbit over a mid-latitude station: a few passes above 15°
        // per day (the half-night estimate of `polar_passes_per_day` doubled), each a few
        // minutes long.
        let o = Orbit::default();
        let t0 = 1.8e9;
        let mut n = 0;
        for day in 0..10 {
            let from = t0 + day as f64 * 86_400.0;
            let ps = o.passes(&TOKYO, 15.0, t0, from, from + 86_400.0);
            for p in &ps {
                let d = p.end_unix - p.start_unix;
                assert!(d > 0.0 && d < 400.0, "{p:?}");
                assert!(p.max_elevation_deg >= 15.0 && p.max_elevation_deg <= 90.0);
                let mid = o.look(&TOKYO, t0, 0.5 * (p.start_unix + p.end_unix));
                assert!(mid.elevation_deg >= 15.0 - 1e-6);
                // The edges are at the minimum elevation.
                let rise = o.look(&TOKYO, t0, p.start_unix).elevation_deg;
                assert!((rise - 15.0).abs() < 0.1, "{rise}");
            }
            n += ps.len();
        }
        let est = crate::satellite::polar_passes_per_day(500.0, 15.0, 35.7);
        let per_day = n as f64 / 10.0;
        assert!(
            (per_day - est).abs() / est < 0.35,
            "{per_day} passes/day vs estimate {est}"
        );
    }

    #[test]
    fn equatorial_orbit_never_reaches_high_latitudes() {
        let o = Orbit {
            inclination_deg: 0.0,
            ..Default::default()
        };
        let far_north = Station {
            lat_deg: 60.0,
            lon_deg: 10.0,
        };
        assert!(o
            .passes(&far_north, 10.0, 0.0, 0.0, 2.0 * 86_400.0)
            .is_empty());
        assert!(Orbit {
            inclination_deg: 200.0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
