//! Demand-driven pools: how much end-to-end key to keep ready for each destination node, from
//! the demand this node's applications showed lately.
//!
//! Refilling every destination's pool to one fixed target relays key towards every node of the
//! network whether anyone asks for it or not. On a mesh of dozens of nodes that traffic alone is
//! more than the links produce, so hops wait for link key and relays are abandoned (measured in
//! `docs/PERFORMANCE.md`). A pool is therefore sized by recent demand: the key requested per
//! second over the last [`Policy::demand_window`] times [`Policy::pool_horizon`], plus the
//! largest recent request, between [`Policy::idle_floor_bytes`] (what a destination nobody asked
//! for lately keeps, so a first request is served at once) and [`Policy::pool_target_bytes`].

use crate::config::Policy;
use crate::msgs::NodeId;
use crate::time::Instant;

/// Requests towards one destination, decayed exponentially with the demand window.
#[derive(Debug, Clone, Copy)]
struct Recent {
    /// Bytes requested, each weighted by `exp(-age / window)`.
    bytes: f64,
    /// The largest request, decayed the same way.
    peak: f64,
    /// When `bytes` and `peak` were last brought up to date.
    at: Instant,
}

impl Recent {
    fn decayed(&self, now: Instant, window_s: f64) -> (f64, f64) {
        let age = now.saturating_since(self.at).as_secs_f64();
        let f = (-age / window_s).exp();
        (self.bytes * f, self.peak * f)
    }
}

/// Recent demand per destination node (bounded by the topology's node count: only nodes of
/// the topology are noted).
#[derive(Debug, Clone, Default)]
pub(crate) struct Demand {
    /// Noted on every request, never walked: hashed.
    per_dest: crate::fixed_hash::FixedMap<NodeId, Recent>,
    /// Bumped on every [`note`](Demand::note) (see `crate::quiet`).
    version: u64,
    /// Destinations noted since refill last looked (see `crate::quiet`).
    touched: crate::quiet::Touched,
}

impl Demand {
    /// An application asked for `bytes` of key to `dest` (served or not: a refused request is
    /// demand too).
    pub(crate) fn note(&mut self, dest: &NodeId, bytes: u64, now: Instant, p: &Policy) {
        self.version += 1;
        self.touched.dest(dest);
        let w = window_s(p);
        let e = self.per_dest.entry(dest.clone()).or_insert(Recent {
            bytes: 0.0,
            peak: 0.0,
            at: now,
        });
        let (b, peak) = e.decayed(now, w);
        *e = Recent {
            bytes: b + bytes as f64,
            peak: peak.max(bytes as f64),
            at: now,
        };
    }

    /// Whether applications asked for key to `dest` within about one demand window.
    pub(crate) fn is_active(&self, dest: &NodeId, now: Instant, p: &Policy) -> bool {
        self.per_dest
            .get(dest)
            .is_some_and(|r| now.saturating_since(r.at) < p.demand_window)
    }

    /// Changes whenever demand is noted.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The destinations noted since the last call.
    pub(crate) fn take_touched(&mut self) -> std::collections::BTreeSet<NodeId> {
        self.touched.take().unwrap_or_default()
    }

    /// A time, not after `now` when it is already so, by which [`target`](Self::target) for
    /// `dest` may have decayed to `have` bytes or less if no demand is noted meanwhile; never
    /// later than the first time it does. `None`: it never does (the floor is above `have`).
    pub(crate) fn may_fall_to(
        &self,
        dest: &NodeId,
        have: u64,
        now: Instant,
        p: &Policy,
    ) -> Option<Instant> {
        let floor = p.idle_floor_bytes.min(p.pool_target_bytes);
        if floor > have {
            return None;
        }
        if have >= p.pool_target_bytes || have == 0 {
            return Some(now);
        }
        let Some(r) = self.per_dest.get(dest) else {
            return Some(now); // the floor, at most `have`
        };
        let w = window_s(p);
        // target = ceil(A · exp(-age / w)) clamped, with A at age 0; it is at most `have` once
        // A · exp(-age / w) ≤ have. A millisecond early covers rounding.
        let a = r.bytes / w * p.pool_horizon.as_secs_f64() + r.peak;
        if !(a.is_finite() && a > have as f64) {
            return Some(now);
        }
        let age = w * (a / have as f64).ln() - 1e-3;
        if !(age.is_finite() && age > 0.0) {
            return Some(now);
        }
        let at = r.at + std::time::Duration::from_secs_f64(age);
        Some(if at > now { at } else { now })
    }

    /// Bytes of key to keep ready for `dest` now.
    pub(crate) fn target(&self, dest: &NodeId, now: Instant, p: &Policy) -> u64 {
        let floor = p.idle_floor_bytes.min(p.pool_target_bytes);
        let Some(r) = self.per_dest.get(dest) else {
            return floor;
        };
        let w = window_s(p);
        let (bytes, peak) = r.decayed(now, w);
        let want = bytes / w * p.pool_horizon.as_secs_f64() + peak;
        (want.ceil() as u64).clamp(floor, p.pool_target_bytes)
    }
}

fn window_s(p: &Policy) -> f64 {
    p.demand_window.as_secs_f64().max(1e-3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(s)
    }

    #[test]
    fn a_destination_nobody_asked_for_keeps_only_the_floor() {
        let p = Policy::default();
        let d = Demand::default();
        assert_eq!(d.target(&NodeId::from("x"), at(5), &p), p.idle_floor_bytes);
        assert!(!d.is_active(&NodeId::from("x"), at(5), &p));
    }

    #[test]
    fn steady_demand_grows_the_pool_up_to_the_target_and_fades_when_it_stops() {
        let p = Policy::default();
        let mut d = Demand::default();
        // 2 KiB/s for a minute: about 2 KiB/s × the horizon, more than the floor.
        for s in 0..60 {
            d.note(&NodeId::from("x"), 2048, at(s), &p);
        }
        let busy = d.target(&NodeId::from("x"), at(60), &p);
        assert!(busy > p.idle_floor_bytes * 4, "{busy}");
        assert!(busy <= p.pool_target_bytes);
        assert!(d.is_active(&NodeId::from("x"), at(60), &p));
        // A flood is capped at the policy's target.
        for s in 60..120 {
            d.note(&NodeId::from("x"), 1 << 20, at(s), &p);
        }
        assert_eq!(
            d.target(&NodeId::from("x"), at(120), &p),
            p.pool_target_bytes
        );
        // Ten windows later the demand has faded to the floor.
        let later = at(120) + p.demand_window * 10;
        assert_eq!(d.target(&NodeId::from("x"), later, &p), p.idle_floor_bytes);
        assert!(!d.is_active(&NodeId::from("x"), later, &p));
    }

    #[test]
    fn the_floor_never_exceeds_the_target() {
        let p = Policy {
            pool_target_bytes: 256,
            ..Policy::default()
        };
        assert_eq!(Demand::default().target(&NodeId::from("x"), at(0), &p), 256);
    }
}
