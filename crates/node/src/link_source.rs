//! Rate-level simulated QKD links.
//!
//! This stands in for the quantum channel and the link's post-processing: both ends of a link
//! derive the identical block stream from the link's seed (in the topology every node reads) and
//! the block counter, without talking to each other. Block `n` appears at both ends at
//! `epoch + (n+1) · interval` (wall-clock), holding `rate · interval` bits, where `rate` is the secret
//! key rate the link model (decoy-state BB84, `kagi-quantum`) gives for the fibre length, times the
//! network's demo `rate_multiplier`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kagi_control::{LinkSpec, Topology};
use kagi_keymat::Key;
use kagi_quantum::{DecoyBb84, LinkModel};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Longest interval between link key blocks.
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
    seed: u64,
    epoch_unix: u64,
    /// Bytes per block (even, both halves).
    pub block_bytes: usize,
    /// Secret key rate in bit/s (after the multiplier).
    pub rate_bps: f64,
    /// Time between blocks.
    pub interval: Duration,
}

impl SimulatedLink {
    /// The link `spec` seen from `me`.
    pub fn new(topo: &Topology, me: &str, spec: &LinkSpec) -> Self {
        let peer = if spec.a == me {
            spec.b.clone()
        } else {
            spec.a.clone()
        };
        let rate_bps = DecoyBb84::default().secret_key_rate_bps(spec.length_km)
            * topo.rate_multiplier.max(0.0);
        let bits = rate_bps * MAX_BLOCK_INTERVAL.as_secs_f64();
        let block_bytes = ((bits / 8.0) as usize).min(MAX_BLOCK_BYTES) & !1;
        let interval = if block_bytes == 0 {
            MAX_BLOCK_INTERVAL
        } else {
            Duration::from_secs_f64((block_bytes * 8) as f64 / rate_bps).min(MAX_BLOCK_INTERVAL)
        };
        Self {
            peer,
            seed: topo.link_seed(spec),
            epoch_unix: topo.epoch_unix,
            block_bytes,
            rate_bps,
            interval,
        }
    }

    /// Bytes of block `n` (identical at both ends).
    pub fn block(&self, n: u64) -> Key {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&n.to_le_bytes());
        seed[16..].copy_from_slice(b"kagi-link-block!");
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut k = Key::zeroed(self.block_bytes);
        rng.fill_bytes(k.expose_mut());
        k
    }

    /// The newest block that exists at wall-clock time `now` (None before the epoch's first).
    pub fn current_block(&self, now: SystemTime) -> Option<u64> {
        let since = now
            .duration_since(UNIX_EPOCH)
            .ok()?
            .checked_sub(Duration::from_secs(self.epoch_unix))?;
        let n = since.as_nanos() / self.interval.as_nanos().max(1);
        n.checked_sub(1).map(|n| n as u64)
    }

    /// When block `n` appears.
    pub fn block_time(&self, n: u64) -> SystemTime {
        UNIX_EPOCH
            + Duration::from_secs(self.epoch_unix)
            + Duration::from_nanos(
                (self.interval.as_nanos() as u64).saturating_mul(n.saturating_add(1)),
            )
    }

    /// First block to ingest after a (re)start, given the highest block stored.
    pub fn first_block(&self, high_water: Option<u64>, now: SystemTime) -> u64 {
        let cur = self.current_block(now).unwrap_or(0);
        let backlog = (DEVICE_BACKLOG.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        let oldest_buffered = cur.saturating_sub(backlog);
        match high_water {
            Some(hw) => (hw + 1).max(oldest_buffered),
            // First start: what the device buffered since the network's epoch (both ends of a
            // link started close together then agree on where the link key begins).
            None => oldest_buffered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_control::builtin;

    #[test]
    fn both_ends_derive_identical_blocks_and_rates() {
        let t = builtin::tokyo();
        let l = &t.links[0];
        let a = SimulatedLink::new(&t, &l.a, l);
        let b = SimulatedLink::new(&t, &l.b, l);
        assert_eq!(a.peer, l.b);
        assert_eq!(a.block(7), b.block(7));
        assert_ne!(a.block(7), a.block(8));
        assert!(
            a.block_bytes > 0
                && a.block_bytes.is_multiple_of(2)
                && a.block_bytes <= MAX_BLOCK_BYTES
        );
        assert!(a.interval <= MAX_BLOCK_INTERVAL);
        // Rate is honoured: bytes per second match the model's rate within rounding.
        let bps = (a.block_bytes * 8) as f64 / a.interval.as_secs_f64();
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
            SimulatedLink::new(&t, &long.a, long).rate_bps
                < SimulatedLink::new(&t, &short.a, short).rate_bps
        );
    }

    #[test]
    fn restart_resumes_after_high_water_within_backlog() {
        let t = builtin::tokyo();
        let l = SimulatedLink::new(&t, &t.links[0].a, &t.links[0]);
        let now = l.block_time(1000);
        assert_eq!(l.current_block(now), Some(1000));
        assert_eq!(l.first_block(Some(995), now), 996);
        let backlog = (DEVICE_BACKLOG.as_nanos() / l.interval.as_nanos()) as u64;
        assert_eq!(l.first_block(Some(10), now), 1000 - backlog);
        assert_eq!(l.first_block(None, now), 1000 - backlog);
    }
}
