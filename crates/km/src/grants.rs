//! Adaptive direction split of link key: an end with idle key gives part of its half to the
//! other end, so one-way demand can use nearly the whole link instead of half of it.
//!
//! Each end owns the half of every block that the fixed split gives it (`crate::links`). An end
//! whose spendable key towards a neighbour falls below the reserve
//! ([`LinkGrantPolicy::reserve_bytes`](crate::LinkGrantPolicy)) after spending on that link asks
//! it with [`PeerMsg::LinkKeyWanted`] (at most once per `ask_every`). The neighbour, once it has
//! reconciled with the asker, gives the unspent rest of its *oldest* blocks beyond its own
//! reserve with [`PeerMsg::LinkKeyGranted`]:
//!
//! 1. the grantor removes those bytes from its half in a store batch, and sends the grant only
//!    once that batch is durable (it can never spend them again, even after a crash);
//! 2. the grantee takes the spans only from its copy of the *grantor's* half (a grant can give
//!    away nothing else), only if every byte of a span is unspent there, and only from the
//!    grantor's current run; it marks them spent there and raises its `Seen` mark of the
//!    grantor's half to the highest block granted, in one store batch that is durable before
//!    any hop spending them is sent (batches are acknowledged in order);
//! 3. spans in granted bytes carry [`GRANTED`](crate::msgs::GRANTED), so the grantor checks them
//!    against what it granted and nothing else.
//!
//! Granted bytes live in memory only at both ends: a restart of either end discards them, so no
//! store, however old the copy it was restored from, can spend them. A grantor restored from a
//! copy taken before a grant gets the grantee's raised mark in `Seen` before it may spend on
//! that link again, and drops its half up to the granted blocks (they were its oldest). Lost
//! grants waste key; duplicated or replayed ones find their bytes spent and change nothing.

use std::collections::BTreeSet;

use crate::fixed_hash::FixedMap;

use crate::manager::KeyManager;
use crate::msgs::{NodeId, PeerMsg, Span};
use crate::outbox::{Action, After};
use crate::time::Instant;

/// Per-neighbour state of asking for grants (bounded by the neighbours).
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants {
    /// When each neighbour was last asked.
    asked: FixedMap<NodeId, Instant>,
    /// Neighbours this node spent link key towards since it last asked them.
    spent: BTreeSet<NodeId>,
}

impl Grants {
    /// This node spent link key towards `peer`.
    pub(crate) fn spent_towards(&mut self, peer: &NodeId) {
        if !self.spent.contains(peer) {
            self.spent.insert(peer.clone());
        }
    }
}

impl KeyManager {
    /// Asks every neighbour this node spends towards and holds less than the reserve for (its
    /// own half and grants together) for a grant.
    pub(crate) fn ask_link_key(&mut self, now: Instant) {
        let Some(g) = self.cfg.policy.link_grants else {
            return;
        };
        // Twice the reserve per ask: enough to keep a busy end going between asks, while the
        // rest stays with the grantor for its own demand (granted bytes cannot go back).
        let want = g.reserve_bytes.saturating_mul(2);
        // This runs every refill tick and seldom asks: look first, copy names only to ask.
        let peers: Vec<NodeId> = self
            .grants
            .spent
            .iter()
            .filter(|p| self.grant_ask_due(p, &g).is_some_and(|t| now >= t))
            .cloned()
            .collect();
        for peer in peers {
            self.grants.asked.insert(peer.clone(), now);
            self.grants.spent.remove(&peer);
            self.out.send(peer, PeerMsg::LinkKeyWanted { bytes: want });
        }
    }

    /// From when `peer`, spent towards since the last ask, is to be asked for a grant (`None`:
    /// not before an input changes what this reads).
    fn grant_ask_due(&self, peer: &NodeId, g: &crate::LinkGrantPolicy) -> Option<Instant> {
        // Held, reserved or not: a reservation on its way is no reason to ask for a grant.
        // (The most selective test first: this runs whenever the node says when to wake it.)
        let short = self.links.tx_held(peer) < g.reserve_bytes
            && self.is_reconciled(peer)
            && !self.routing.is_down(peer);
        short.then(|| {
            self.grants
                .asked
                .get(peer)
                .map_or(Instant::ZERO, |t| *t + g.ask_every)
        })
    }

    /// The first time [`ask_link_key`](Self::ask_link_key) would ask a neighbour for a grant,
    /// unless an input comes first (`None`: never before one).
    pub(crate) fn next_grant_ask(&self) -> Option<Instant> {
        let g = self.cfg.policy.link_grants?;
        self.grants
            .spent
            .iter()
            .filter_map(|p| self.grant_ask_due(p, &g))
            .min()
    }

    /// A neighbour is short of link key towards us: give it the rest of our oldest blocks
    /// beyond our reserve, durably before the grant goes.
    pub(crate) fn on_link_key_wanted(&mut self, from: NodeId, bytes: u64) {
        let Some(g) = self.cfg.policy.link_grants else {
            return;
        };
        // Before our `Hello` is answered, our half may hold bytes an earlier run spent (a
        // restored store): `Seen` drops them first.
        if !self.links.contains(&from) || !self.is_reconciled(&from) {
            return;
        }
        let want = bytes.min(self.cfg.policy.link_buffer_cap_bytes);
        let mut batch = Vec::new();
        let spans = self.links.grant(&from, want, g.reserve_bytes, &mut batch);
        if spans.is_empty() {
            return;
        }
        self.stats.link_key_granted_out += spans.iter().map(|s| u64::from(s.len)).sum::<u64>();
        let msg = PeerMsg::LinkKeyGranted {
            epoch: self.reconcile.epoch,
            spans,
        };
        self.out
            .store(batch, vec![After::Act(Action::Send { to: from, msg })]);
    }

    /// A neighbour gave us spans of its half: take those that are wholly unspent here.
    pub(crate) fn on_link_key_granted(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: u64,
        spans: &[Span],
    ) {
        if self.cfg.policy.link_grants.is_none() || !self.links.contains(&from) {
            return;
        }
        // A grant from an earlier run of the grantor: that run's store may have been restored
        // from a copy that still holds these spans, and its `Seen` marks were answered already.
        if !self.reconcile.is_current(&from, epoch) {
            return;
        }
        let mut batch = Vec::new();
        let Some((top, bytes)) = self.links.accept_grant(&from, spans, &mut batch) else {
            return;
        };
        // The grantor's half is given up to `top` (its oldest blocks): a copy of its store from
        // before the grant drops them when it gets our `Seen`.
        self.saw_link_spend(&from, top, &mut batch);
        self.stats.link_key_granted_in += bytes;
        self.out.store(batch, vec![]);
        self.retry_waiting_hops(now);
    }
}
