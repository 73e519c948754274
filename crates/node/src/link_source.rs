//! Rate-level simulated QKD links.
//!
//! This stands in for the quantum channel and the link's post-processing: both ends of a link
//! derive the identical block stream from the link's secret (which only those two nodes hold,
//! see [`crate::link_secret`]) and the block number, without talking to each other. When each block appears (wall-clock,
//! `epoch + t`) follows the link's technology (`protocol` in the topology, through
//! [`kagi_quantum::supply::BlockSchedule`]): a constant secret key rate for decoy BB84, CV-QKD,
//! twin-field and repeater links; whole finite-key blocks when each block's detections have
//! accumulated; satellite key only during clear passes. The network's demo `rate_multiplier`
//! scales every rate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kagi_control::{LinkSpec, Topology};
use kagi_keymat::Key;
use kagi_quantum::supply::{BlockSchedule, NextPass};
use kagi_quantum::tech::TechError;

use crate::link_secret::LinkSecret;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Longest interval between link key blocks of a constant-rate link.
pub const MAX_BLOCK_INTERVAL: Duration = Duration::from_millis(100);
/// Largest block (both halves): fast links deliver more blocks, not bigger ones, so spending a
/// few bytes never rewrites a large record.
pub const MAX_BLOCK_BYTES: usize = 8192;
/// How long a QKD device buffers key while its key manager is down.
pub const DEVICE_BACKLOG: Duration = Duration::from_secs(10);

/// One simulated link as seen from one end.
#[derive(Debug, Clone)]
pub struct SimulatedLink {
    /// The node at the other end.
    pub peer: String,
    /// The link's protocol name.
    pub protocol: String,
    secret: LinkSecret,
    epoch_unix: u64,
    /// Bytes per block (even, both halves).
    pub block_bytes: usize,
    /// Long-run mean secret key rate in bit/s (after the multiplier).
    pub rate_bps: f64,
    schedule: BlockSchedule,
}

impl SimulatedLink {
    /// The link `spec` seen from `me`, keyed by the link's `secret`. The schedule (when blocks
    /// appear) follows the public topology; the bytes follow the secret only.
    ///
    /// # Errors
    /// The link's technology is not valid (a validated topology has none).
    pub fn new(
        topo: &Topology,
        me: &str,
        spec: &LinkSpec,
        secret: LinkSecret,
    ) -> Result<Self, TechError> {
        let peer = if spec.a == me {
            spec.b.clone()
        } else {
            spec.a.clone()
        };
        let schedule =
            topo.link_schedule(spec, MAX_BLOCK_BYTES, MAX_BLOCK_INTERVAL.as_secs_f64())?;
        Ok(Self {
            peer,
            protocol: spec.protocol_name().to_string(),
            secret,
            epoch_unix: topo.epoch_unix,
            block_bytes: schedule.block_bytes,
            rate_bps: topo.link_mean_rate_bps(spec) * topo.rate_multiplier.max(0.0),
            schedule,
        })
    }

    /// Bytes of block `n` (identical at both ends).
    pub fn block(&self, n: u64) -> Key {
        let mut rng = ChaCha20Rng::from_seed(*self.secret.derive(b"rate-block", n));
        let mut k = Key::zeroed(self.block_bytes);
        rng.fill_bytes(k.expose_mut());
        k
    }

    fn since_epoch(&self, t: SystemTime) -> f64 {
        let epoch = UNIX_EPOCH + Duration::from_secs(self.epoch_unix);
        match t.duration_since(epoch) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    fn at(&self, secs: f64) -> SystemTime {
        UNIX_EPOCH
            + Duration::from_secs(self.epoch_unix)
            + Duration::from_secs_f64(secs.clamp(0.0, 1e12))
    }

    /// The first block numbered `from` or later and when it appears; `None` when the link
    /// yields no key.
    pub fn next_block(&mut self, from: u64) -> Option<(u64, SystemTime)> {
        let (n, t) = self.schedule.next_block(from)?;
        Some((n, self.at(t)))
    }

    /// When block `n` appears (or the next existing block after it).
    pub fn block_time(&mut self, n: u64) -> Option<SystemTime> {
        self.next_block(n).map(|(_, t)| t)
    }

    /// The lowest block number not yet appeared at wall-clock time `now`.
    pub fn first_pending(&mut self, now: SystemTime) -> u64 {
        let t = self.since_epoch(now);
        self.schedule.first_pending(t)
    }

    /// First block to ingest after a (re)start, given the highest block stored: what the
    /// device buffered over the last [`DEVICE_BACKLOG`], but nothing stored already.
    pub fn first_block(&mut self, high_water: Option<u64>, now: SystemTime) -> u64 {
        let oldest_buffered = self.first_pending(
            now - DEVICE_BACKLOG.min(now.duration_since(UNIX_EPOCH).unwrap_or_default()),
        );
        match high_water {
            Some(hw) => (hw + 1).max(oldest_buffered),
            // First start: what the device buffered since the network's epoch (both ends of a
            // link started close together then agree on where the link key begins).
            None => oldest_buffered,
        }
    }

    /// For a satellite link, the next pass that has not ended at `now`.
    pub fn next_pass(&self, now: SystemTime) -> Option<NextPass> {
        self.schedule.passes()?.next_pass(self.since_epoch(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_control::builtin;

    fn demo(t: &Topology, l: &LinkSpec) -> LinkSecret {
        LinkSecret::insecure_demo(t, l)
    }

    #[test]
    fn the_public_topology_does_not_give_the_key_stream() {
        // Someone holding only the topology file builds the link the only way it allows (the
        // demo derivation from the public seed) and gets other bytes than the two ends.
        let t = builtin::tokyo();
        let l = &t.links[0];
        let secret = LinkSecret::generate();
        let real = SimulatedLink::new(&t, &l.a, l, secret.clone()).unwrap();
        let other_end = SimulatedLink::new(&t, &l.b, l, secret).unwrap();
        let outsider = SimulatedLink::new(&t, &l.a, l, demo(&t, l)).unwrap();
        let guess = SimulatedLink::new(&t, &l.a, l, LinkSecret::generate()).unwrap();
        for n in 0..8 {
            assert_eq!(real.block(n), other_end.block(n));
            assert_ne!(real.block(n), outsider.block(n));
            assert_ne!(real.block(n), guess.block(n));
        }
    }

    #[test]
    fn both_ends_derive_identical_blocks_and_rates() {
        let t = builtin::tokyo();
        let l = &t.links[0];
        let s = LinkSecret::generate();
        let mut a = SimulatedLink::new(&t, &l.a, l, s.clone()).unwrap();
        let b = SimulatedLink::new(&t, &l.b, l, s.clone()).unwrap();
        assert_eq!(a.peer, l.b);
        assert_eq!(a.block(7), b.block(7));
        assert_ne!(a.block(7), a.block(8));
        assert!(
            a.block_bytes > 0
                && a.block_bytes.is_multiple_of(2)
                && a.block_bytes <= MAX_BLOCK_BYTES
        );
        let interval = a
            .block_time(1)
            .unwrap()
            .duration_since(a.block_time(0).unwrap())
            .unwrap();
        assert!(interval <= MAX_BLOCK_INTERVAL);
        // Rate is honoured: bytes per second match the model's rate within rounding.
        let bps = (a.block_bytes * 8) as f64 / interval.as_secs_f64();
        assert!(
            (bps - a.rate_bps).abs() / a.rate_bps < 0.01,
            "{bps} vs {}",
            a.rate_bps
        );
        // A longer link yields less key.
        let long = t
            .links
            .iter()
            .max_by(|x, y| x.length_km.total_cmp(&y.length_km))
            .unwrap();
        let short = t
            .links
            .iter()
            .min_by(|x, y| x.length_km.total_cmp(&y.length_km))
            .unwrap();
        assert!(
            SimulatedLink::new(&t, &long.a, long, demo(&t, long))
                .unwrap()
                .rate_bps
                < SimulatedLink::new(&t, &short.a, short, demo(&t, short))
                    .unwrap()
                    .rate_bps
        );
    }

    #[test]
    fn restart_resumes_after_high_water_within_backlog() {
        let t = builtin::tokyo();
        let mut l =
            SimulatedLink::new(&t, &t.links[0].a, &t.links[0], demo(&t, &t.links[0])).unwrap();
        let now = l.block_time(1000).unwrap();
        assert_eq!(l.first_pending(now), 1001);
        assert_eq!(l.first_block(Some(995), now), 996);
        let interval = l
            .block_time(1)
            .unwrap()
            .duration_since(l.block_time(0).unwrap())
            .unwrap();
        let backlog = (DEVICE_BACKLOG.as_secs_f64() / interval.as_secs_f64()).round() as u64;
        let oldest = l.first_block(Some(10), now);
        assert!(
            oldest.abs_diff(1001 - backlog) <= 1,
            "{oldest} vs {}",
            1001 - backlog
        );
        assert_eq!(l.first_block(None, now), oldest);
    }

    #[test]
    fn technologies_shape_the_block_stream() {
        let mut t = builtin::tokyo();
        t.epoch_unix = 1_800_000_000;
        let spec = |proto: &str, params: &[(&str, f64)]| {
            let mut s = t.links[0].clone();
            s.protocol = Some(proto.into());
            s.params = params
                .iter()
                .map(|(k, v)| (k.to_string(), kagi_quantum::tech::ParamValue::Num(*v)))
                .collect();
            s
        };
        // Finite key: blocks come in bursts at the block completion times.
        let fin = spec("bb84-finite", &[("n-x", 1e8)]);
        let mut f = SimulatedLink::new(&t, &fin.a, &fin, demo(&t, &fin)).unwrap();
        let (t0, t1) = (f.block_time(0).unwrap(), f.block_time(1).unwrap());
        assert_eq!(t0, t1, "a finite-key block arrives whole");
        let mut n = 1;
        while f.block_time(n).unwrap() == t0 {
            n += 1;
        }
        let bits = (n as usize * f.block_bytes * 8) as f64;
        let gap = f
            .block_time(n)
            .unwrap()
            .duration_since(t0)
            .unwrap()
            .as_secs_f64();
        assert!(
            (bits / gap / f.rate_bps - 1.0).abs() < 0.01,
            "{bits} bits per {gap} s"
        );
        // CV-QKD at the same length has its own rate.
        let cv = spec("cv-gg02", &[]);
        let c = SimulatedLink::new(&t, &cv.a, &cv, demo(&t, &cv)).unwrap();
        assert!(c.rate_bps > 0.0 && (c.rate_bps - f.rate_bps).abs() > 1.0);
        // Satellite: key only in passes; the next pass is known.
        let sat = spec("satellite", &[("lat-a", 35.7), ("lon-a", 139.5)]);
        let mut s = SimulatedLink::new(&t, &sat.a, &sat, demo(&t, &sat)).unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(t.epoch_unix);
        let pass = s.next_pass(start).unwrap();
        let (_, first) = s.next_block(0).unwrap();
        let first = first.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(first >= pass.start_unix - 1e-3 && first <= pass.end_unix + 1e-3);
    }
}
