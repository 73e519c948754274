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
    /// Invariant: for every destination, the number of `by_seq` entries to it (never zero)
    /// and the bytes of key they carry.
    per_dest: BTreeMap<NodeId, (u64, u64)>,
    /// Bumped on every insert and removal (see `crate::quiet`).
    version: u64,
}

impl PendingRelays {
    /// Adds relay `seq` (replacing one with the same counter, which never happens in practice).
    pub(crate) fn insert(&mut self, seq: u64, relay: PendingRelay) {
        self.version += 1;
        let e = self.per_dest.entry(relay.dest.clone()).or_default();
        e.0 += 1;
        e.1 += relay.key.len() as u64;
        if let Some(old) = self.by_seq.insert(seq, relay) {
            self.uncount(&old);
        }
    }

    /// Removes relay `seq`.
    pub(crate) fn remove(&mut self, seq: &u64) -> Option<PendingRelay> {
        let p = self.by_seq.remove(seq)?;
        self.version += 1;
        self.uncount(&p);
        Some(p)
    }

    fn uncount(&mut self, p: &PendingRelay) {
        if let Some(e) = self.per_dest.get_mut(&p.dest) {
            e.0 -= 1;
            e.1 -= p.key.len() as u64;
            if e.0 == 0 {
                self.per_dest.remove(&p.dest);
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
    pub(crate) fn to_dest(&self, dest: &NodeId) -> u64 {
        self.per_dest.get(dest).map_or(0, |e| e.0)
    }

    /// Bytes of key the relays in flight to `dest` carry (relays to one destination need not
    /// all be of one size: each is sized by its path when it starts).
    pub(crate) fn bytes_to(&self, dest: &NodeId) -> u64 {
        self.per_dest.get(dest).map_or(0, |e| e.1)
    }

    /// Each destination with relays in flight, and how many.
    pub(crate) fn per_dest(&self) -> impl Iterator<Item = (&NodeId, u64)> {
        self.per_dest.iter().map(|(d, e)| (d, e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Instant;
    use kagi_keymat::Key;

    fn relay(dest: &NodeId) -> PendingRelay {
        sized(dest, 32)
    }

    fn sized(dest: &NodeId, len: usize) -> PendingRelay {
        PendingRelay {
            dest: dest.into(),
            key: Key::from_vec(vec![0; len]),
            deadline: Instant::ZERO,
            paths: vec![],
            threshold: 1,
            lost: Default::default(),
            sent: 1,
        }
    }

    fn scanned(p: &PendingRelays, dest: &NodeId) -> u64 {
        p.values().filter(|r| r.dest == *dest).count() as u64
    }

    #[test]
    fn counts_follow_inserts_and_removes() {
        let mut p = PendingRelays::default();
        p.insert(1, relay(&NodeId::from("b")));
        p.insert(2, relay(&NodeId::from("b")));
        p.insert(3, relay(&NodeId::from("c")));
        assert_eq!(
            (
                p.to_dest(&NodeId::from("b")),
                p.to_dest(&NodeId::from("c")),
                p.to_dest(&NodeId::from("d"))
            ),
            (2, 1, 0)
        );
        // The same counter again replaces the relay, and its count moves with it.
        p.insert(2, relay(&NodeId::from("c")));
        assert_eq!(
            (p.to_dest(&NodeId::from("b")), p.to_dest(&NodeId::from("c"))),
            (1, 2)
        );
        assert!(p.remove(&1).is_some());
        assert!(p.remove(&1).is_none());
        assert_eq!(p.to_dest(&NodeId::from("b")), 0);
        assert_eq!(
            p.per_dest().collect::<Vec<_>>(),
            vec![(&NodeId::from("c"), 2)]
        );
        for d in ["b", "c", "d"] {
            assert_eq!(p.to_dest(&NodeId::from(d)), scanned(&p, &NodeId::from(d)));
        }
    }

    #[test]
    fn bytes_in_flight_follow_each_relays_own_size() {
        let mut p = PendingRelays::default();
        p.insert(1, sized(&NodeId::from("b"), 4096));
        p.insert(2, sized(&NodeId::from("b"), 256));
        p.insert(3, sized(&NodeId::from("c"), 448));
        assert_eq!(
            (
                p.bytes_to(&NodeId::from("b")),
                p.bytes_to(&NodeId::from("c")),
                p.bytes_to(&NodeId::from("d"))
            ),
            (4352, 448, 0)
        );
        p.insert(3, sized(&NodeId::from("b"), 512));
        assert_eq!(
            (
                p.bytes_to(&NodeId::from("b")),
                p.bytes_to(&NodeId::from("c"))
            ),
            (4864, 0)
        );
        p.remove(&1);
        assert_eq!(p.bytes_to(&NodeId::from("b")), 768);
        p.remove(&2);
        p.remove(&3);
        assert_eq!(p.bytes_to(&NodeId::from("b")), 0);
    }
}
