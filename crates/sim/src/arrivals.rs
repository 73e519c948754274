//! When the simulated applications ask for key: a Poisson stream (independent users) or a fixed
//! period per SAE pair (encryptors and VPN gateways that rekey on a timer), either one optionally
//! following a diurnal profile.

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

/// How each SAE pair's requests are spread in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Independent requests at the mean rate (a pair expecting E requests gets E ± √E).
    #[default]
    Poisson,
    /// One request every `3600 / requests_per_hour` seconds per pair, each pair at its own
    /// random phase (as a device that rekeys on a timer); under a diurnal profile the period
    /// stretches and shrinks with the demand.
    Periodic,
}

/// The times (seconds from the start) of a Poisson stream at `rate` per second, thinned by the
/// profile, up to `span` seconds, drawn from `rng` as they are asked for: a day of a large
/// network is millions of requests, and a study reads them in order.
#[derive(Debug, Clone)]
pub struct PoissonTimes {
    /// Where the draws come from (after the last time given: the stream's state).
    pub rng: ChaCha20Rng,
    t: f64,
    /// Peak rate: the stream is drawn at this rate and thinned to the profile.
    rate: f64,
    peak: f64,
    span: f64,
    diurnal: bool,
}

impl PoissonTimes {
    /// The stream of `rate_per_s` requests per second on average over `span` seconds.
    pub fn new(rng: ChaCha20Rng, rate_per_s: f64, diurnal: bool, span: f64) -> Self {
        let peak = if diurnal { 1.5 } else { 1.0 };
        Self {
            rng,
            t: 0.0,
            rate: rate_per_s * peak,
            peak,
            span,
            diurnal,
        }
    }
}

impl Iterator for PoissonTimes {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        if self.rate <= 0.0 {
            return None;
        }
        loop {
            self.t += exp(&mut self.rng, self.rate);
            if self.t >= self.span {
                // Past the end for good (every later call would only draw again).
                self.rate = 0.0;
                return None;
            }
            if self.rng.gen::<f64>() * self.peak <= profile(self.diurnal, self.t) {
                return Some(self.t);
            }
        }
    }
}

/// Demand relative to the mean at `t` seconds from the start (a day starting at midnight):
/// 0.5× at 04:00, 1.5× at 16:00, mean 1× over a day.
pub fn profile(diurnal: bool, t: f64) -> f64 {
    if !diurnal {
        return 1.0;
    }
    let hour = (t / 3600.0) % 24.0;
    1.0 + 0.5 * phase(hour).sin()
}

/// The profile's angle at `hour`: the sine peaks at 16:00 and is lowest at 04:00.
fn phase(hour: f64) -> f64 {
    (hour - 10.0) / 24.0 * std::f64::consts::TAU
}

/// Demand accumulated from the start to `t` seconds, in seconds at the mean rate (the integral
/// of [`profile`]).
fn cumulative(diurnal: bool, t: f64) -> f64 {
    if !diurnal {
        return t;
    }
    let day_s = 24.0 * 3600.0;
    // ∫ 0.5·sin(phase(s/3600)) ds = −0.5·(day / 2π)·cos(phase(s/3600)).
    let k = 0.5 * day_s / std::f64::consts::TAU;
    t + k * (phase(0.0).cos() - phase(t / 3600.0).cos())
}

/// The time at which the accumulated demand reaches `y` (the inverse of [`cumulative`]; the
/// profile never drops below 0.5, so Newton's method converges in a few steps).
fn time_at(diurnal: bool, y: f64) -> f64 {
    let mut t = y;
    if diurnal {
        for _ in 0..50 {
            let step = (cumulative(true, t) - y) / profile(true, t);
            t -= step;
            if step.abs() < 1e-9 {
                break;
            }
        }
    }
    t
}

/// One exponentially distributed wait at `rate` per second.
pub fn exp(rng: &mut ChaCha20Rng, rate: f64) -> f64 {
    -(1.0 - rng.gen::<f64>()).ln() / rate
}

/// Periodic requests of `pairs` SAE pairs over `span_s` seconds, each at `per_hour` per hour
/// (at the mean of the profile): `(seconds from the start, pair index)`, in no particular order.
/// Each pair's phase is drawn from `rng`.
pub fn periodic(
    rng: &mut ChaCha20Rng,
    pairs: usize,
    per_hour: f64,
    span_s: f64,
    diurnal: bool,
) -> Vec<(f64, usize)> {
    let mut out = Vec::new();
    if per_hour <= 0.0 {
        return out;
    }
    let period = 3600.0 / per_hour;
    let end = cumulative(diurnal, span_s);
    for pair in 0..pairs {
        let mut y = rng.gen::<f64>() * period;
        while y < end {
            let t = time_at(diurnal, y);
            if t < span_s {
                out.push((t, pair));
            }
            y += period;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn diurnal_profile_has_mean_one_and_its_extremes_at_4_and_16() {
        let day: Vec<f64> = (0..24 * 60)
            .map(|m| profile(true, f64::from(m) * 60.0))
            .collect();
        let mean = day.iter().sum::<f64>() / day.len() as f64;
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        assert!((profile(true, 4.0 * 3600.0) - 0.5).abs() < 1e-9);
        assert!((profile(true, 16.0 * 3600.0) - 1.5).abs() < 1e-9);
        assert_eq!(profile(false, 4.0 * 3600.0), 1.0);
    }

    #[test]
    fn the_cumulative_demand_is_the_profile_integrated_and_inverts() {
        let mut sum = 0.0;
        let dt = 1.0;
        for s in 0..30 * 3600 {
            let t = f64::from(s) * dt;
            sum += profile(true, t + dt / 2.0) * dt;
            if s % 3600 == 0 {
                let c = cumulative(true, t + dt);
                assert!((c - sum).abs() < 1e-3, "{t}: {c} against {sum}");
                assert!((time_at(true, c) - (t + dt)).abs() < 1e-6);
            }
        }
        // A whole day accumulates exactly a day at the mean rate.
        assert!((cumulative(true, 86_400.0) - 86_400.0).abs() < 1e-6);
    }

    #[test]
    fn each_pair_asks_once_per_period_at_its_own_phase() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let got = periodic(&mut rng, 3, 60.0, 600.0, false);
        for pair in 0..3 {
            let mut t: Vec<f64> = got.iter().filter(|a| a.1 == pair).map(|a| a.0).collect();
            t.sort_by(f64::total_cmp);
            assert_eq!(t.len(), 10, "pair {pair}: {t:?}");
            assert!(t[0] < 60.0);
            for w in t.windows(2) {
                assert!((w[1] - w[0] - 60.0).abs() < 1e-9);
            }
        }
        let phases: Vec<f64> = (0..3)
            .map(|p| got.iter().find(|a| a.1 == p).unwrap().0)
            .collect();
        assert!(phases[0] != phases[1] && phases[1] != phases[2]);
    }

    #[test]
    fn under_the_diurnal_profile_periodic_requests_crowd_the_afternoon() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let got = periodic(&mut rng, 50, 60.0, 86_400.0, true);
        let in_hour = |h: f64| {
            got.iter()
                .filter(|a| a.0 >= h * 3600.0 && a.0 < (h + 1.0) * 3600.0)
                .count() as f64
        };
        // 50 pairs × 60 per hour = 3000 at the mean; the profile gives about 0.5× and 1.5×.
        assert!((in_hour(3.5) - 1500.0).abs() < 60.0, "{}", in_hour(3.5));
        assert!((in_hour(15.5) - 4500.0).abs() < 60.0, "{}", in_hour(15.5));
        assert!((got.len() as f64 - 72_000.0).abs() <= 50.0, "{}", got.len());
    }
}
