//! Reservations of link key: a node spends no byte of its own half of a link beyond a block
//! the neighbour has durably recorded as reserved.
//!
//! Why: pad bytes spent on a hop the neighbour never received (the channel broke, the message
//! was lost) show in no mark the neighbour holds, so a store restored from a copy taken before
//! that spend held them as unspent and sent with them again: a one-time pad used twice, under
//! a ciphertext that may have been seen (chaos seed 2 with link grants). A mark local to the
//! node cannot help, since the copy holds an older mark too; the neighbour's store is what
//! survives the restore.
//!
//! * Before spending past its reservation, a node asks its neighbour for the next one
//!   ([`PeerMsg::LinkReserve`]), ahead of need by about [`RESERVE_AHEAD_BYTES`], so hops
//!   rarely wait for the round trip.
//! * The neighbour records the block durably (`Record::PeerLinkReserved`, only ever raised)
//!   before it answers ([`PeerMsg::LinkReserved`]).
//! * Every `Seen` carries the reservation; the node drops its half up to that block before it
//!   spends anything in its new run. Every block an earlier run (of this store or of any copy
//!   of it) spent was reserved before, so it is dropped too.
//!
//! The cost: a restart loses what was reserved and not yet spent, at most about
//! [`RESERVE_AHEAD_BYTES`] per link.

use crate::fixed_hash::FixedMap;

use crate::manager::KeyManager;
use crate::msgs::{NodeId, PeerMsg};
use crate::outbox::{Action, After};
use crate::reconcile::HELLO_RETRY;
use crate::time::Instant;

/// How far ahead of its spending a node reserves its half of a link (bytes). It asks again
/// when less than half of this is left reserved.
pub(crate) const RESERVE_AHEAD_BYTES: u64 = 64 * 1024;

/// Reservation requests not yet answered, by neighbour: when each was last sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reserves {
    sent: FixedMap<NodeId, Instant>,
}

impl KeyManager {
    /// Asks `peer` to reserve more of our half when the reserved rest runs low. Only once the
    /// neighbour answered this run's `Hello` (its `Seen` drops what earlier runs reserved).
    pub(crate) fn reserve_ahead(&mut self, peer: &NodeId) {
        if !self.is_reconciled(peer) {
            return;
        }
        if let Some(upto) = self.links.reserve_wanted(peer, RESERVE_AHEAD_BYTES) {
            self.links.asking(peer, upto);
            self.reserves.sent.insert(peer.clone(), self.now);
            self.out.send(peer.clone(), PeerMsg::LinkReserve { upto });
        }
    }

    /// Re-sends reservation requests left unanswered for [`HELLO_RETRY`] (lost, or answered
    /// by a store we no longer take for the neighbour's), and asks where more is due.
    pub(crate) fn retry_reserves(&mut self, now: Instant) {
        // This runs every refill tick and seldom sends: look first, copy names only to act.
        // Each neighbour's step reads and writes only that neighbour's state.
        let neighbours: Vec<NodeId> = self
            .reserve_dues()
            .filter(|(_, t)| now >= *t)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in neighbours {
            match (self.links.asked(&peer), self.reserves.sent.get(&peer)) {
                (Some(upto), Some(at)) if now >= *at + HELLO_RETRY => {
                    self.reserves.sent.insert(peer.clone(), now);
                    self.out.send(peer, PeerMsg::LinkReserve { upto });
                }
                (Some(_), _) => {}
                (None, _) => self.reserve_ahead(&peer),
            }
        }
    }

    /// The neighbours for which [`retry_reserves`](Self::retry_reserves) acts from some time
    /// on, with that time: a reservation request left unanswered is re-sent, or one is due.
    /// The others wait for an input that changes what this reads.
    fn reserve_dues(&self) -> impl Iterator<Item = (&NodeId, Instant)> {
        self.links
            .reserve_states(RESERVE_AHEAD_BYTES)
            .filter_map(|(peer, asked, wanted)| {
                let due = match asked {
                    Some(_) => self.reserves.sent.get(peer).map(|at| *at + HELLO_RETRY),
                    None => wanted.then_some(Instant::ZERO),
                };
                due.filter(|_| self.is_reconciled(peer)).map(|t| (peer, t))
            })
    }

    /// The first time [`retry_reserves`](Self::retry_reserves) would act, unless an input
    /// comes first (`None`: never before one).
    pub(crate) fn next_reserve_retry(&self) -> Option<Instant> {
        self.reserve_dues().map(|(_, t)| t).min()
    }

    /// A neighbour will spend its half up to block `upto`: record it durably, then answer.
    pub(crate) fn on_link_reserve(&mut self, from: NodeId, upto: u64) {
        if !self.links.contains(&from) {
            return;
        }
        let (held, record) = self.reconcile.reserve(&from, upto);
        let msg = PeerMsg::LinkReserved {
            store: self.reconcile.store,
            upto: held,
        };
        let answer = After::Act(Action::Send { to: from, msg });
        match record {
            Some(r) => {
                self.out.store(vec![r], vec![answer]);
            }
            // Already held (a repeated request): answer once the write that raised it, or any
            // write still in flight, is durable.
            None => self.out.hold_after(self.out.peek_write() - 1, answer),
        }
    }

    /// The neighbour recorded our half reserved up to `upto`: spend up to there, and go on
    /// with hops that waited for it.
    pub(crate) fn on_link_reserved(&mut self, now: Instant, from: NodeId, store: u64, upto: u64) {
        if !self.links.contains(&from) || store != self.reconcile.peer_store(&from) {
            return;
        }
        self.links.reserved(&from, upto);
        if self.links.asked(&from).is_none() {
            self.reserves.sent.remove(&from);
        }
        self.retry_waiting_hops(now);
    }
}
