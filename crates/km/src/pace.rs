//! Congestion control for relays: how many relays to one destination may be in flight.
//!
//! A relay hop that finds no link key towards its next node waits there ([`crate::Policy::hop_wait`])
//! and is then failed back to its origin, so every relay started beyond what the path's weakest
//! link can carry is key spent for nothing. Two limits keep relays that start able to finish:
//! - a static one from the plan's bottleneck: the key its weakest link produces for one
//!   direction in half a hop wait, in relays (at least one);
//! - an additive-increase, multiplicative-decrease window per destination, as in TCP, that
//!   starts at the static limit: each relay abandoned for lack of key (or timed out) halves it
//!   and holds new relays back for a while that doubles with every abandonment in a row; each
//!   acknowledged relay opens it again (by one relay per acknowledgement up to half the window
//!   before the loss, then by one per window). Other nodes' relays share the links, which only
//!   the window sees.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::msgs::NodeId;
use crate::time::Instant;

/// Shortest hold after an abandonment; it doubles with every abandonment in a row.
const HOLD_BASE: Duration = Duration::from_millis(250);
/// Longest hold.
const HOLD_MAX: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy)]
struct Window {
    /// Relays that may be in flight (at least 1; infinite until the first loss: the static
    /// limit applies).
    cwnd: f64,
    /// Above this the window grows by one per window, below it by one per acknowledgement.
    ssthresh: f64,
    /// Abandonments in a row.
    strikes: u32,
    /// No new relay before this.
    hold_until: Instant,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            cwnd: f64::INFINITY,
            ssthresh: f64::INFINITY,
            strikes: 0,
            hold_until: Instant::ZERO,
        }
    }
}

/// Congestion windows per destination node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pace {
    per_dest: BTreeMap<NodeId, Window>,
    /// Bumped on every acknowledgement and loss (see `crate::quiet`).
    version: u64,
}

impl Pace {
    /// Relays to `dest` that may be in flight now, at most `cap` (0 while held back).
    pub(crate) fn allowed(&self, dest: &NodeId, now: Instant, cap: u32) -> u32 {
        let w = self.per_dest.get(dest).copied().unwrap_or_default();
        if now < w.hold_until {
            return 0;
        }
        (w.cwnd.min(f64::from(cap)).floor() as u32).clamp(1, cap.max(1))
    }

    /// Changes on every acknowledgement and loss.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The first end of a hold after `now`, if any destination is held back: the only way
    /// [`allowed`](Self::allowed) changes with time alone.
    pub(crate) fn next_release(&self, now: Instant) -> Option<Instant> {
        self.per_dest
            .values()
            .map(|w| w.hold_until)
            .filter(|t| *t > now)
            .min()
    }

    /// A relay to `dest` was acknowledged: open the window (never beyond `cap`).
    pub(crate) fn on_ack(&mut self, dest: &NodeId, cap: u32) {
        self.version += 1;
        let w = self.per_dest.entry(dest.clone()).or_default();
        w.strikes = 0;
        w.cwnd += if w.cwnd < w.ssthresh {
            1.0
        } else {
            1.0 / w.cwnd
        };
        w.cwnd = w.cwnd.min(f64::from(cap.max(1)));
    }

    /// A relay to `dest` was abandoned for lack of key on its path (or timed out): halve the
    /// window (of at most `cap`) and hold new relays back.
    pub(crate) fn on_loss(&mut self, dest: &NodeId, now: Instant, cap: u32) {
        self.version += 1;
        let w = self.per_dest.entry(dest.clone()).or_default();
        w.cwnd = (w.cwnd.min(f64::from(cap.max(1))) / 2.0).max(1.0);
        w.ssthresh = w.cwnd;
        w.strikes = w.strikes.saturating_add(1);
        let hold = HOLD_BASE
            .saturating_mul(1 << (w.strikes - 1).min(8))
            .min(HOLD_MAX);
        w.hold_until = now + hold;
    }
}

/// The static limit: relays of `share_bytes` (per path) that the path's weakest link, producing
/// `bottleneck_bps` for both directions, fills for one direction in `within`; at least 1, at
/// most `max`. Without a known rate, `max`.
pub(crate) fn bottleneck_cap(
    bottleneck_bps: Option<u64>,
    share_bytes: usize,
    within: Duration,
    max: u32,
) -> u32 {
    let Some(bps) = bottleneck_bps.filter(|b| *b > 0) else {
        return max.max(1);
    };
    let bytes = bps as f64 / 16.0 * within.as_secs_f64();
    let n = (bytes / share_bytes.max(1) as f64).floor();
    (n.min(f64::from(max)) as u32).clamp(1, max.max(1))
}

/// Smallest relay chunk sized by [`relay_bytes`] (when the policy's chunk is larger): below it
/// the per-hop authentication key (32 bytes a hop) would cost more than an eighth of the key
/// relayed.
pub(crate) const MIN_RELAY_BYTES: u32 = 256;

/// Bytes of key one relay carries over a path whose weakest link produces `bottleneck_bps` for
/// both directions: what that link makes for one direction in `within`, in whole 32-byte keys,
/// between [`MIN_RELAY_BYTES`] and `max` (the policy's chunk; `max` without a known rate).
///
/// Why: a hop that finds no link key waits at most a hop wait and is then failed back to its
/// origin, and the key it already spent on earlier hops is lost. A fixed chunk larger than a
/// slow link makes in a hop wait fails at every link that runs dry, and those failures keep it
/// dry: on a 50-node mesh of 5–50 kb/s links, 97 % of 4 KiB relays were abandoned at 43 % load.
pub(crate) fn relay_bytes(bottleneck_bps: Option<u64>, within: Duration, max: u32) -> u32 {
    let Some(bps) = bottleneck_bps.filter(|b| *b > 0) else {
        return max;
    };
    let bytes = bps as f64 / 16.0 * within.as_secs_f64();
    let keys = (bytes / 32.0).floor().min(f64::from(u32::MAX / 64)) as u32;
    (keys * 32).clamp(MIN_RELAY_BYTES.min(max), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_carries_what_the_weakest_link_makes_in_the_wait_within_bounds() {
        let w = Duration::from_millis(750);
        // 100 kb/s: 6,250 B/s one way, 4,687 in 0.75 s: capped at the policy's 4096.
        assert_eq!(relay_bytes(Some(100_000), w, 4096), 4096);
        // 10 kb/s: 625 B/s one way, 468 in 0.75 s: 448 (14 keys of 32 bytes).
        assert_eq!(relay_bytes(Some(10_000), w, 4096), 448);
        // 1 kb/s: 46 bytes would be mostly authentication key: the floor.
        assert_eq!(relay_bytes(Some(1_000), w, 4096), MIN_RELAY_BYTES);
        // A policy chunk below the floor is kept; an unknown rate gets the policy's chunk.
        assert_eq!(relay_bytes(Some(1_000), w, 128), 128);
        assert_eq!(relay_bytes(None, w, 4096), 4096);
        assert_eq!(relay_bytes(Some(0), w, 4096), 4096);
    }

    #[test]
    fn the_window_opens_on_acks_and_halves_on_loss_with_a_growing_hold() {
        let mut p = Pace::default();
        let t0 = Instant::ZERO;
        // Until a loss, the static limit.
        assert_eq!(p.allowed(&NodeId::from("x"), t0, 4), 4);
        p.on_ack(&NodeId::from("x"), 4);
        assert_eq!(p.allowed(&NodeId::from("x"), t0, 4), 4);
        p.on_loss(&NodeId::from("x"), t0, 4);
        assert_eq!(
            p.allowed(&NodeId::from("x"), t0, 8),
            0,
            "held back right after a loss"
        );
        assert_eq!(p.allowed(&NodeId::from("x"), t0 + HOLD_BASE, 8), 2);
        // Congestion avoidance: one more relay per window of acknowledgements.
        p.on_ack(&NodeId::from("x"), 8);
        assert_eq!(p.allowed(&NodeId::from("x"), t0 + HOLD_BASE, 8), 2);
        p.on_ack(&NodeId::from("x"), 8);
        p.on_ack(&NodeId::from("x"), 8);
        assert_eq!(p.allowed(&NodeId::from("x"), t0 + HOLD_BASE, 8), 3);
        // Losses in a row double the hold, up to its cap.
        let t1 = t0 + Duration::from_secs(1);
        p.on_loss(&NodeId::from("x"), t1, 8);
        p.on_loss(&NodeId::from("x"), t1, 8);
        assert_eq!(p.allowed(&NodeId::from("x"), t1 + HOLD_BASE, 8), 0);
        assert_eq!(p.allowed(&NodeId::from("x"), t1 + HOLD_BASE * 2, 8), 1);
        for _ in 0..20 {
            p.on_loss(&NodeId::from("x"), t1, 8);
        }
        assert_eq!(p.allowed(&NodeId::from("x"), t1 + HOLD_MAX, 8), 1);
        // Other destinations are not affected, and the cap holds.
        for _ in 0..20 {
            p.on_ack(&NodeId::from("y"), 3);
        }
        assert_eq!(p.allowed(&NodeId::from("y"), t0, 3), 3);
    }

    #[test]
    fn the_static_cap_follows_the_weakest_link() {
        let half_s = Duration::from_millis(1500);
        // 110 kbit/s link: 6.9 kB/s per direction, 10.3 kB in 1.5 s: two 4 KiB relays.
        assert_eq!(bottleneck_cap(Some(110_000), 4128, half_s, 8), 2);
        assert_eq!(bottleneck_cap(Some(10_000), 4128, half_s, 8), 1);
        assert_eq!(bottleneck_cap(Some(1_000_000_000), 4128, half_s, 8), 8);
        assert_eq!(bottleneck_cap(None, 4128, half_s, 4), 4);
        assert_eq!(bottleneck_cap(Some(0), 4128, half_s, 4), 4);
    }
}
