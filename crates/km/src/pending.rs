//! The relays a node started and has not yet seen acknowledged, with a per-destination count
//! kept beside them: refill asks "how many to `dest`?" for every destination on every tick,
//! and counting by scanning every relay in flight made that quadratic on large networks.

use std::collections::BTreeMap;

use crate::msgs::NodeId;
use crate::relay::PendingRelay;

/// Relays in flight by counter, and how many go to each destination.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingRelays {
    by_seq: BTreeMap<u64, PendingRelay>,
    /// Invariant: for every destination, the number of `by_seq` entries to it (never zero).
    per_dest: BTreeMap<NodeId, u64>,
    /// Bumped on every insert and removal (see `crate::quiet`).
    version: u64,
}

impl PendingRelays {
    /// Adds relay `seq` (replacing one with the same counter, which never happens in practice).
    pub(crate) fn insert(&mut self, seq: u64, relay: PendingRelay) {
        self.version += 1;
        *self.per_dest.entry(relay.dest.clone()).or_default() += 1;
        if let Some(old) = self.by_seq.insert(seq, relay) {
            self.uncount(&old.dest);
        }
    }

    /// Removes relay `seq`.
    pub(crate) fn remove(&mut self, seq: &u64) -> Option<PendingRelay> {
        let p = self.by_seq.remove(seq)?;
        self.version += 1;
        self.uncount(&p.dest);
        Some(p)
    }

    fn uncount(&mut self, dest: &str) {
        if let Some(n) = self.per_dest.get_mut(dest) {
            *n -= 1;
            if *n == 0 {
                self.per_dest.remove(dest);
            }
        }
    }

    /// Changes when a relay is added or removed.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Relay `seq`.
    pub(crate) fn get(&self, seq: &u64) -> Option<&PendingRelay> {
        self.by_seq.get(seq)
    }

    /// Relay `seq`, to mark shares lost. Callers must not change its `dest`.
    pub(crate) fn get_mut(&mut self, seq: &u64) -> Option<&mut PendingRelay> {
        self.by_seq.get_mut(seq)
    }

    /// Every relay in flight, by counter.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &PendingRelay)> {
        self.by_seq.iter()
    }

    /// Every relay in flight, to mark shares lost. Callers must not change a `dest`.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut PendingRelay)> {
        self.by_seq.iter_mut()
    }

    /// Every relay in flight.
    pub(crate) fn values(&self) -> impl Iterator<Item = &PendingRelay> {
        self.by_seq.values()
    }

    /// Relays in flight to `dest`.
    pub(crate) fn to_dest(&self, dest: &str) -> u64 {
        self.per_dest.get(dest).copied().unwrap_or(0)
    }

    /// Each destination with relays in flight, and how many.
    pub(crate) fn per_dest(&self) -> impl Iterator<Item = (&str, u64)> {
        self.per_dest.iter().map(|(d, n)| (d.as_str(), *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Instant;
    use kagi_keymat::Key;

    fn relay(dest: &str) -> PendingRelay {
        PendingRelay {
            dest: dest.into(),
            key: Key::from_vec(vec![0; 32]),
            deadline: Instant::ZERO,
            paths: vec![],
            threshold: 1,
            lost: Default::default(),
            sent: 1,
        }
    }

    fn scanned(p: &PendingRelays, dest: &str) -> u64 {
        p.values().filter(|r| r.dest == dest).count() as u64
    }

    #[test]
    fn counts_follow_inserts_and_removes() {
        let mut p = PendingRelays::default();
        p.insert(1, relay("b"));
        p.insert(2, relay("b"));
        p.insert(3, relay("c"));
        assert_eq!((p.to_dest("b"), p.to_dest("c"), p.to_dest("d")), (2, 1, 0));
        // The same counter again replaces the relay, and its count moves with it.
        p.insert(2, relay("c"));
        assert_eq!((p.to_dest("b"), p.to_dest("c")), (1, 2));
        assert!(p.remove(&1).is_some());
        assert!(p.remove(&1).is_none());
        assert_eq!(p.to_dest("b"), 0);
        assert_eq!(p.per_dest().collect::<Vec<_>>(), vec![("c", 2)]);
        for d in ["b", "c", "d"] {
            assert_eq!(p.to_dest(d), scanned(&p, d));
        }
    }
}
