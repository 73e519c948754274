//! Key supply over time, and its cut into numbered blocks that both ends of a link derive
//! identically without talking to each other.
//!
//! A link's key is a deterministic stream; [`KeySupply`] says how many bits of it exist at each
//! moment, [`BlockSchedule`] numbers the stream in blocks of at most a few KiB and says when
//! each block appears. Block numbers increase with time but need not be contiguous (satellite
//! blocks are numbered `period << 32 | index`). Times are seconds after the network's epoch.

use crate::orbit::{pass_key, Orbit, Pass, Station};
use crate::satellite::SatelliteLink;

/// How key appears on a link.
#[derive(Debug, Clone)]
pub enum KeySupply {
    /// A constant rate, bit/s (0: no key).
    Constant {
        /// Secret key rate, bit/s.
        bps: f64,
    },
    /// Whole post-processing blocks: `bits` at the end of every `period_s`.
    Blocks {
        /// Key bits per block.
        bits: f64,
        /// Time to fill one block, s.
        period_s: f64,
    },
    /// Satellite passes.
    Passes(Box<PassSchedule>),
}

/// A satellite link's fixed description: the downlink model, the orbit and the ground
/// station(s) with their cloud probabilities. With one station the other end of the link is
/// the satellite itself (a trusted node of the topology); with two the satellite is an
/// implicit trusted node that holds the key of a pass over A until a pass over B (store and
/// forward), so the A–B key is min(key with A, key with B) within a holding period.
#[derive(Debug, Clone)]
pub struct SatelliteSetup {
    /// Downlink model (optics, source, detector).
    pub link: SatelliteLink,
    /// Orbit; its elements hold at the network's epoch.
    pub orbit: Orbit,
    /// Ground stations with their daily cloud probability.
    pub stations: Vec<(Station, f64)>,
    /// How long the satellite holds key before discarding it, s (a holding period).
    pub hold_s: f64,
    /// Demo clock: the orbit runs this many times faster than the wall clock.
    pub clock_speedup: f64,
}

impl SatelliteSetup {
    /// Clear-sky key bits of each station's passes over one day from `from_unix`.
    fn day_bits(&self, station: &Station, from_unix: f64) -> f64 {
        let min_el = self.link.params().min_elevation_deg;
        self.orbit
            .passes(station, min_el, from_unix, from_unix, from_unix + 86_400.0)
            .iter()
            .map(|p| {
                pass_key(&self.link, &self.orbit, station, from_unix, p)
                    .last()
                    .map_or(0.0, |l| l.1)
            })
            .sum()
    }

    /// Expected key rate (bit/s) averaged over three days of passes, with weather: the
    /// poorest station's clear-sky key × (1 − cloud probability), times the demo speed-up.
    pub fn mean_rate_bps(&self) -> f64 {
        let t0 = 1.8e9;
        let per_station = self.stations.iter().map(|(s, cloud)| {
            let bits: f64 = (0..3)
                .map(|d| self.day_bits(s, t0 + d as f64 * 86_400.0))
                .sum::<f64>()
                / 3.0;
            bits * (1.0 - cloud)
        });
        per_station.fold(f64::INFINITY, f64::min) / 86_400.0 * self.clock_speedup
    }
}

/// The next pass over a station.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NextPass {
    /// Index of the station (0: end a's, 1: end b's when both are given).
    pub station: usize,
    /// Wall-clock window (Unix seconds, demo speed-up applied).
    pub start_unix: f64,
    /// End of the window.
    pub end_unix: f64,
    /// Highest elevation, degrees.
    pub max_elevation_deg: f64,
    /// Whether the station's sky is clear that day (a cloudy day cancels the pass).
    pub clear: bool,
}

/// Satellite passes with seeded daily weather, as a function of time.
#[derive(Debug, Clone)]
pub struct PassSchedule {
    setup: SatelliteSetup,
    multiplier: f64,
    seed: u64,
    epoch_unix: f64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl PassSchedule {
    /// The schedule of `setup` with the rate scaled by `multiplier`, weather drawn from
    /// `seed`, orbit elements at `epoch_unix`.
    pub fn new(setup: SatelliteSetup, multiplier: f64, seed: u64, epoch_unix: f64) -> Self {
        Self {
            setup,
            multiplier,
            seed,
            epoch_unix,
        }
    }

    /// The setup.
    pub fn setup(&self) -> &SatelliteSetup {
        &self.setup
    }

    /// Orbit (Unix) time at `t` seconds after the epoch of the wall clock.
    fn orbit_time(&self, t: f64) -> f64 {
        self.epoch_unix + t * self.setup.clock_speedup
    }

    /// Seconds after the epoch (wall clock) at orbit time `tau`.
    fn wall(&self, tau: f64) -> f64 {
        (tau - self.epoch_unix) / self.setup.clock_speedup
    }

    /// Whether station `i` is clear on orbit day `day` (days since the epoch).
    pub fn clear(&self, i: usize, day: i64) -> bool {
        let cloud = self.setup.stations.get(i).map_or(1.0, |s| s.1);
        let h = splitmix(self.seed ^ splitmix((i as u64) << 48 ^ day as u64));
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        u >= cloud
    }

    fn day_of(&self, tau: f64) -> i64 {
        ((tau - self.epoch_unix) / 86_400.0).floor() as i64
    }

    /// Cumulative key curve of station `i` over orbit times [from, to): (orbit time, bits).
    fn curve(&self, i: usize, from: f64, to: f64) -> Vec<(f64, f64)> {
        let (station, _) = self.setup.stations[i];
        let min_el = self.setup.link.params().min_elevation_deg;
        let mut out = Vec::new();
        let mut total = 0.0;
        for p in self
            .setup
            .orbit
            .passes(&station, min_el, self.epoch_unix, from, to)
        {
            if !self.clear(i, self.day_of(p.start_unix)) {
                continue;
            }
            out.push((p.start_unix, total));
            for (t, c) in pass_key(
                &self.setup.link,
                &self.setup.orbit,
                &station,
                self.epoch_unix,
                &p,
            ) {
                out.push((t, total + c * self.multiplier));
            }
            total = out.last().map_or(total, |l| l.1);
        }
        out
    }

    /// Wall-clock times (s after the epoch) at which each successive `chunk_bits` of key
    /// become available in holding period `k`.
    pub fn chunk_times(&self, k: u64, chunk_bits: f64) -> Vec<f64> {
        let from = self.epoch_unix + k as f64 * self.setup.hold_s;
        let to = from + self.setup.hold_s;
        let curves: Vec<Vec<(f64, f64)>> = (0..self.setup.stations.len())
            .map(|i| self.curve(i, from, to))
            .collect();
        let total = curves
            .iter()
            .map(|c| c.last().map_or(0.0, |l| l.1))
            .fold(f64::INFINITY, f64::min);
        if !(total.is_finite() && chunk_bits > 0.0) {
            return Vec::new();
        }
        let n = (total / chunk_bits).floor() as usize;
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; curves.len()];
        for j in 0..n {
            let x = (j + 1) as f64 * chunk_bits;
            // The chunk exists once every station has that much key: the latest crossing.
            let mut t = f64::NEG_INFINITY;
            for (c, i) in curves.iter().zip(idx.iter_mut()) {
                while *i < c.len() && c[*i].1 < x {
                    *i += 1;
                }
                let cross = match c.get(*i) {
                    Some(&(t1, c1)) if *i > 0 => {
                        let (t0, c0) = c[*i - 1];
                        if c1 > c0 {
                            t0 + (t1 - t0) * (x - c0) / (c1 - c0)
                        } else {
                            t1
                        }
                    }
                    Some(&(t1, _)) => t1,
                    None => to,
                };
                t = t.max(cross);
            }
            out.push(self.wall(t));
        }
        out
    }

    /// The holding period that contains wall time `t` (s after the epoch).
    pub fn period_of(&self, t: f64) -> u64 {
        let tau = self.orbit_time(t.max(0.0)) - self.epoch_unix;
        (tau / self.setup.hold_s).floor().max(0.0) as u64
    }

    /// The next pass over any station that has not ended at wall time `t` (s after the
    /// epoch), looking up to two days of orbit time ahead.
    pub fn next_pass(&self, t: f64) -> Option<NextPass> {
        let tau = self.orbit_time(t);
        let min_el = self.setup.link.params().min_elevation_deg;
        let mut best: Option<(usize, Pass)> = None;
        for (i, (s, _)) in self.setup.stations.iter().enumerate() {
            let p = self
                .setup
                .orbit
                .passes(s, min_el, self.epoch_unix, tau, tau + 2.0 * 86_400.0)
                .into_iter()
                .next();
            if let Some(p) = p {
                if best.is_none_or(|(_, b)| p.start_unix < b.start_unix) {
                    best = Some((i, p));
                }
            }
        }
        best.map(|(i, p)| NextPass {
            station: i,
            start_unix: self.epoch_unix + self.wall(p.start_unix),
            end_unix: self.epoch_unix + self.wall(p.end_unix),
            max_elevation_deg: p.max_elevation_deg,
            clear: self.clear(i, self.day_of(p.start_unix)),
        })
    }
}

/// Bytes per satellite block (even).
pub const PASS_BLOCK_BYTES: usize = 1024;
const PERIOD_SHIFT: u32 = 32;
/// Periods without key searched before a satellite link is declared dark.
const MAX_DARK_PERIODS: u64 = 400;

#[derive(Debug, Clone)]
enum Kind {
    Never,
    Constant {
        interval_s: f64,
    },
    Blocks {
        per_block: u64,
        period_s: f64,
    },
    Passes {
        sched: Box<PassSchedule>,
        cache: Option<(u64, Vec<f64>)>,
    },
}

/// A link's key stream cut into numbered blocks (see the module documentation).
#[derive(Debug, Clone)]
pub struct BlockSchedule {
    kind: Kind,
    /// Bytes per block (even, both halves), 0 when the link yields no key.
    pub block_bytes: usize,
}

impl BlockSchedule {
    /// Cuts `supply` into blocks of at most `max_bytes` bytes, at most `max_interval_s` apart
    /// for a constant rate.
    pub fn new(supply: KeySupply, max_bytes: usize, max_interval_s: f64) -> Self {
        let max_bytes = max_bytes & !1;
        match supply {
            KeySupply::Constant { bps } if bps > 0.0 && bps.is_finite() => {
                let bytes = ((bps * max_interval_s / 8.0) as usize).min(max_bytes) & !1;
                if bytes == 0 {
                    // Slow link: blocks of 2 bytes, further apart.
                    return Self {
                        kind: Kind::Constant {
                            interval_s: 16.0 / bps,
                        },
                        block_bytes: 2,
                    };
                }
                Self {
                    kind: Kind::Constant {
                        interval_s: (bytes * 8) as f64 / bps,
                    },
                    block_bytes: bytes,
                }
            }
            KeySupply::Blocks { bits, period_s } if bits >= 16.0 && period_s > 0.0 => {
                let total = (bits / 8.0).floor() as usize;
                let per = total.div_ceil(max_bytes.max(2));
                let bytes = (total / per) & !1;
                Self {
                    kind: Kind::Blocks {
                        per_block: per as u64,
                        period_s,
                    },
                    block_bytes: bytes,
                }
            }
            KeySupply::Passes(sched) => Self {
                kind: Kind::Passes { sched, cache: None },
                block_bytes: PASS_BLOCK_BYTES.min(max_bytes),
            },
            _ => Self {
                kind: Kind::Never,
                block_bytes: 0,
            },
        }
    }

    /// Mean interval between blocks while key flows, s (for logs).
    pub fn nominal_interval_s(&self) -> f64 {
        match &self.kind {
            Kind::Never => f64::INFINITY,
            Kind::Constant { interval_s } => *interval_s,
            Kind::Blocks { period_s, .. } => *period_s,
            Kind::Passes { .. } => 1.0,
        }
    }

    fn period_times(&mut self, k: u64) -> &[f64] {
        let Kind::Passes { sched, cache } = &mut self.kind else {
            return &[];
        };
        if cache.as_ref().is_none_or(|(ck, _)| *ck != k) {
            let bits = (self.block_bytes * 8) as f64;
            *cache = Some((k, sched.chunk_times(k, bits)));
        }
        cache.as_ref().map_or(&[], |(_, v)| v.as_slice())
    }

    /// The first block numbered `from` or later, and when it appears (s after the epoch).
    /// `None` when the link yields no key (now or, for satellites, for a long time).
    pub fn next_block(&mut self, from: u64) -> Option<(u64, f64)> {
        match &self.kind {
            Kind::Never => None,
            Kind::Constant { interval_s } => Some((from, (from as f64 + 1.0) * interval_s)),
            Kind::Blocks {
                per_block,
                period_s,
            } => Some((from, ((from / per_block) as f64 + 1.0) * period_s)),
            Kind::Passes { .. } => {
                let first = from >> PERIOD_SHIFT;
                let mut j = (from & ((1 << PERIOD_SHIFT) - 1)) as usize;
                for k in first..first.saturating_add(MAX_DARK_PERIODS) {
                    let times = self.period_times(k);
                    if let Some(&t) = times.get(j) {
                        return Some(((k << PERIOD_SHIFT) | j as u64, t));
                    }
                    j = 0;
                }
                None
            }
        }
    }

    /// The lowest block number that has not appeared by time `t` (s after the epoch). A block
    /// due within a microsecond after `t` counts as appeared (wall clocks round to ns).
    pub fn first_pending(&mut self, t: f64) -> u64 {
        if t <= 0.0 {
            return 0;
        }
        let t = t + 1e-6;
        match &self.kind {
            Kind::Never => 0,
            Kind::Constant { interval_s } => (t / interval_s).floor() as u64,
            Kind::Blocks {
                per_block,
                period_s,
            } => (t / period_s).floor() as u64 * per_block,
            Kind::Passes { sched, .. } => {
                let k = sched.period_of(t);
                let times = self.period_times(k);
                let c = times.partition_point(|&x| x <= t);
                (k << PERIOD_SHIFT) | c as u64
            }
        }
    }

    /// The satellite schedule, if this is a satellite link.
    pub fn passes(&self) -> Option<&PassSchedule> {
        match &self.kind {
            Kind::Passes { sched, .. } => Some(sched),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::satellite::SatelliteParams;

    fn setup(stations: Vec<(Station, f64)>) -> SatelliteSetup {
        SatelliteSetup {
            link: SatelliteLink::new(SatelliteParams::default()).unwrap(),
            orbit: Orbit::default(),
            stations,
            hold_s: 86_400.0,
            clock_speedup: 1.0,
        }
    }
    const TOKYO: Station = Station {
        lat_deg: 35.7,
        lon_deg: 139.5,
    };
    const FUKUOKA: Station = Station {
        lat_deg: 33.6,
        lon_deg: 130.4,
    };

    #[test]
    fn constant_and_block_schedules() {
        let mut c = BlockSchedule::new(KeySupply::Constant { bps: 80_000.0 }, 8192, 0.1);
        assert_eq!(c.block_bytes, 1000);
        assert_eq!(c.next_block(4), Some((4, 0.5)));
        assert_eq!(c.first_pending(0.55), 5);
        assert_eq!(c.first_pending(0.5 - 1e-9), 5);
        assert_eq!(c.first_pending(0.4999), 4);
        // Finite key: 100,000 bits every 60 s = 12,500 bytes: two blocks of 6,250 at 60 s.
        let mut f = BlockSchedule::new(
            KeySupply::Blocks {
                bits: 100_000.0,
                period_s: 60.0,
            },
            8192,
            0.1,
        );
        assert_eq!(f.block_bytes, 6250);
        assert_eq!(f.next_block(0), Some((0, 60.0)));
        assert_eq!(f.next_block(1), Some((1, 60.0)));
        assert_eq!(f.next_block(2), Some((2, 120.0)));
        assert_eq!(f.first_pending(59.9), 0);
        assert_eq!(f.first_pending(60.0), 2);
        let mut never = BlockSchedule::new(KeySupply::Constant { bps: 0.0 }, 8192, 0.1);
        assert_eq!(never.next_block(0), None);
    }

    #[test]
    fn satellite_key_arrives_only_in_passes_and_clouds_cancel_them() {
        let epoch = 1.8e9;
        let s = PassSchedule::new(setup(vec![(TOKYO, 0.0)]), 1.0, 7, epoch);
        let mut b = BlockSchedule::new(KeySupply::Passes(Box::new(s.clone())), 8192, 0.1);
        let passes = Orbit::default().passes(&TOKYO, 15.0, epoch, epoch, epoch + 86_400.0);
        assert!(!passes.is_empty());
        let mut n = 0;
        let mut next = 0;
        while let Some((id, t)) = b.next_block(next) {
            if id >> 32 > 0 {
                break;
            }
            let tau = epoch + t;
            assert!(
                passes
                    .iter()
                    .any(|p| tau >= p.start_unix - 1e-6 && tau <= p.end_unix + 1e-6),
                "block at {t} is outside every pass"
            );
            n += 1;
            next = id + 1;
        }
        assert!(n > 10, "{n} blocks in a day");
        // first_pending agrees with next_block.
        let (id, t) = b.next_block(5).unwrap();
        assert_eq!(b.first_pending(t - 1e-3), id);
        assert_eq!(b.first_pending(t), id + 1);
        // Always cloudy: no key at all.
        let dark = PassSchedule::new(setup(vec![(TOKYO, 1.0)]), 1.0, 7, epoch);
        assert!(dark.chunk_times(0, 8192.0).is_empty());
        // 50 % clouds: some days clear, some cloudy, reproducibly per seed.
        let half = PassSchedule::new(setup(vec![(TOKYO, 0.5)]), 1.0, 7, epoch);
        let days: Vec<bool> = (0..40).map(|d| half.clear(0, d)).collect();
        let clear = days.iter().filter(|c| **c).count();
        assert!((10..=30).contains(&clear), "{clear}");
        let again: Vec<bool> = (0..40).map(|d| half.clear(0, d)).collect();
        assert_eq!(days, again);
        // The next pass is announced, with its weather.
        let np = s.next_pass(0.0).unwrap();
        assert!((np.start_unix - passes[0].start_unix).abs() < 1e-6);
        assert!(np.clear);
    }

    #[test]
    fn store_and_forward_between_two_stations_is_the_poorer_one() {
        let epoch = 1.8e9;
        let one = PassSchedule::new(setup(vec![(TOKYO, 0.0)]), 1.0, 3, epoch);
        let two = PassSchedule::new(setup(vec![(TOKYO, 0.0), (FUKUOKA, 0.0)]), 1.0, 3, epoch);
        let fk = PassSchedule::new(setup(vec![(FUKUOKA, 0.0)]), 1.0, 3, epoch);
        let a = one.chunk_times(0, 8192.0);
        let b = fk.chunk_times(0, 8192.0);
        let ab = two.chunk_times(0, 8192.0);
        assert_eq!(ab.len(), a.len().min(b.len()));
        // Each relayed chunk exists only once both stations have it.
        for (j, t) in ab.iter().enumerate() {
            assert!((t - a[j].max(b[j])).abs() < 1e-6);
        }
        let m = two.setup().mean_rate_bps();
        assert!(m > 0.0 && m <= one.setup().mean_rate_bps() + 1e-9);
    }
}
