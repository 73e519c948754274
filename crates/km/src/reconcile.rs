//! Reconciliation with every other node after a start: a node whose database was lost, replaced
//! or restored from an older copy must never reuse a relay or assignment counter its peers have
//! seen, never spend link key twice, and never hand a key out again.
//!
//! * Each store has an identity (drawn when the database is created) and each start of the key
//!   manager an epoch. A node announces both in [`PeerMsg::Hello`] to every node, at start, when a
//!   channel comes up, and every [`HELLO_RETRY`] until the peer answers.
//! * The peer answers [`PeerMsg::Seen`]: the highest relay and assignment counters of the sender
//!   it holds, and the highest block of the sender's link key it saw spent. The sender moves its
//!   counters past them and drops its link key up to that block.
//! * Seen counters at or above the node's own are proof that its database is older than what it
//!   already said: it was rolled back. It then discards everything it restored that it cannot
//!   prove unused: link key, keys held for slaves (they may have been fetched already) and its
//!   out-pools (each counted in [`NodeStats`](crate::NodeStats)).
//! * Every start adds one to a persisted run counter (`Counter::Run`) before the node greets
//!   anyone, and keys held for slaves carry the run that applied them. A peer that gets the first
//!   `Hello` of a run whose counters it already saw from an earlier run of the same store records
//!   that run as the store's fork, durably before answering, and reports it in every `Seen`. A
//!   restored node that restarts before its own detection is durable (a failed write fences it)
//!   therefore still discards only keys of runs before the fork: those it applied after the
//!   restore were never fetched anywhere else, and their masters hold them.
//! * A peer whose store identity changed lost its database: pools with it are useless and go.
//! * Until a node has the `Seen` of a peer for its current epoch, it relays nothing to it and
//!   refuses `enc_keys` for slaves there (503). Relays and assignments carry the origin's epoch;
//!   a destination keeps only those of the origin's current run.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

use crate::manager::KeyManager;
use crate::msgs::{NodeId, PeerMsg};
use crate::outbox::{Action, After};
use crate::record::{Counter, PeerMarks, Record, RUN_EPOCHS_KEPT};
use crate::time::Instant;

/// A set of node names asked on every refill tick for every destination: hashed (one string
/// compare per look) rather than ordered (a compare per tree level). Never iterated, so its
/// order cannot leak into behaviour; the hasher has fixed keys (no OS entropy in the core), and
/// the set holds topology names only.
type NodeSet = crate::fixed_hash::FixedSet<NodeId>;

/// Per-peer state: looked up on every relay and assignment, never iterated (order cannot
/// reach behaviour), so hashed.
type PerPeer<V> = crate::fixed_hash::FixedMap<NodeId, V>;

/// The fields of a [`PeerMsg::Seen`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) epoch: u64,
    pub(crate) relay_hw: u64,
    pub(crate) assign_hw: u64,
    pub(crate) relay_floor: u64,
    pub(crate) assign_floor: u64,
    pub(crate) link_rx_hw: Option<u64>,
    pub(crate) fork_run: u64,
    pub(crate) link_reserved: Option<u64>,
    pub(crate) marks_run: u64,
    pub(crate) marks_epoch: u64,
}

/// The fields of a [`PeerMsg::Hello`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hello {
    pub(crate) store: u64,
    pub(crate) epoch: u64,
    pub(crate) link_low: Option<u64>,
    pub(crate) run: u64,
    pub(crate) next_relay: u64,
    pub(crate) next_assign: u64,
    pub(crate) tx_low: Option<(u64, bool)>,
}

/// What this node judged of a peer's store from its `Hello`s (persisted as
/// [`Record::PeerFork`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fork {
    /// The peer's store these fields are about.
    pub(crate) store: u64,
    /// The peer's run (epoch) whose relays or assignments last raised our marks of it.
    pub(crate) marks_epoch: u64,
    /// That run's number on the peer's store (0: unknown, from an older record). A copy behind
    /// our marks was taken during that run or before, so the fork is at most one run later.
    pub(crate) marks_run: u64,
    /// First run of that store judged rolled back (0: none).
    pub(crate) fork_run: u64,
}

/// How often `Hello` is re-sent to a peer that has not answered.
pub const HELLO_RETRY: Duration = Duration::from_millis(500);

/// What was restored at start, to discard if the store turns out to be an old copy.
#[derive(Debug, Clone, Default)]
struct Restored {
    /// Each restored slave key with the run that applied it.
    slave_keys: BTreeMap<Uuid, u64>,
    link_hw: BTreeMap<NodeId, u64>,
    out_chunks: Vec<(NodeId, u64)>,
}

/// Reconciliation state of one run of the key manager.
#[derive(Debug, Clone)]
pub(crate) struct Reconcile {
    /// This store's identity.
    pub(crate) store: u64,
    /// This run's epoch.
    pub(crate) epoch: u64,
    /// This run's number on its store (`Counter::Run`).
    pub(crate) run: u64,
    /// The epochs of this store's latest runs, this one included (persisted as
    /// [`Record::RunEpochs`]).
    run_epochs: BTreeMap<u64, u64>,
    /// What this node saw of each peer (persisted).
    marks: PerPeer<PeerMarks>,
    /// What this node judged of each peer's store (persisted).
    forks: PerPeer<Fork>,
    /// Highest block of each neighbour's half it reserved here, i.e. may have spent
    /// (persisted, only raised, kept across the neighbour's stores: dropping is always safe).
    reserved: PerPeer<u64>,
    /// Each peer's current epoch, from its latest `Hello`.
    epochs: PerPeer<u64>,
    /// Each peer's current run number, from the same `Hello`.
    runs: PerPeer<u64>,
    /// Peers that answered this run's `Hello`.
    reconciled: NodeSet,
    next_hello: Instant,
    restored: Restored,
    rolled_back: bool,
}

impl Reconcile {
    /// State for a run with this store identity and epoch; `marks` as restored.
    pub(crate) fn new(
        store: u64,
        epoch: u64,
        marks: BTreeMap<NodeId, PeerMarks>,
        now: Instant,
    ) -> Self {
        Self {
            store,
            epoch,
            run: 0,
            run_epochs: BTreeMap::new(),
            marks: marks.into_iter().collect(),
            forks: PerPeer::default(),
            reserved: PerPeer::default(),
            epochs: PerPeer::default(),
            runs: PerPeer::default(),
            reconciled: NodeSet::default(),
            next_hello: now + HELLO_RETRY,
            restored: Restored::default(),
            rolled_back: false,
        }
    }

    /// Restores what this node judged of its peers' stores.
    pub(crate) fn restore_forks(&mut self, forks: BTreeMap<NodeId, Fork>) {
        self.forks = forks.into_iter().collect();
    }

    /// Restores the epochs of this store's latest runs.
    pub(crate) fn restore_run_epochs(&mut self, runs: Vec<(u64, u64)>) {
        self.run_epochs = runs.into_iter().collect();
    }

    /// Sets this run's epoch in the runs kept; returns the record that persists them.
    fn record_run_epoch(&mut self) -> Record {
        self.run_epochs.insert(self.run, self.epoch);
        while self.run_epochs.len() > RUN_EPOCHS_KEPT {
            self.run_epochs.pop_first();
        }
        Record::RunEpochs {
            runs: self.run_epochs.iter().map(|(r, e)| (*r, *e)).collect(),
        }
    }

    /// The fork to discard before, given a rolled-back store's own bound `fork` and the run
    /// (and its epoch) that last raised the peer's marks: when this store's run of that number
    /// had another epoch, the copy was taken before that run began (a restored run reused the
    /// number), so keys of that run were applied after the restore and stay (chaos seed 1230:
    /// the bound `marks_run + 1` discarded them). A run whose epoch is no longer kept proves
    /// nothing.
    fn fork_before_marks(&self, fork: u64, marks_run: u64, marks_epoch: u64) -> u64 {
        match self.run_epochs.get(&marks_run) {
            Some(&e) if marks_run > 0 && marks_run < fork && e != marks_epoch => marks_run,
            _ => fork,
        }
    }

    /// Restores the reservations neighbours made of their halves here.
    pub(crate) fn restore_reserved(&mut self, reserved: BTreeMap<NodeId, u64>) {
        self.reserved = reserved.into_iter().collect();
    }

    /// Raises `peer`'s reservation of its half to `upto`; returns the reservation now held and
    /// the record to persist if it moved.
    pub(crate) fn reserve(&mut self, peer: &NodeId, upto: u64) -> (u64, Option<Record>) {
        if let Some(&held) = self.reserved.get(peer).filter(|r| **r >= upto) {
            return (held, None);
        }
        self.reserved.insert(peer.clone(), upto);
        let rec = Record::PeerLinkReserved {
            peer: peer.clone(),
            block: upto,
        };
        (upto, Some(rec))
    }

    /// `peer`'s store identity as this node last heard it (0: never).
    pub(crate) fn peer_store(&self, peer: &NodeId) -> u64 {
        self.marks.get(peer).map_or(0, |m| m.store)
    }

    /// Whether `peer` answered this run's `Hello` (relays and assignments to it may go).
    pub(crate) fn is_reconciled(&self, peer: &NodeId) -> bool {
        self.reconciled.contains(peer)
    }

    /// Marks `peer` reconciled without the exchange (unit tests of what follows it).
    #[cfg(test)]
    pub(crate) fn mark_reconciled(&mut self, peer: &NodeId) {
        self.reconciled.insert(peer.clone());
    }

    /// Whether slave key `id` was restored from the store at start and may not be served yet:
    /// until every other node (`peers` of them) has answered this run's `Hello`, none has yet
    /// had the chance to prove the store an old copy, and a copy's key may have been fetched
    /// after the copy was taken. Fetching leaves no trace at any peer, so any of them may be
    /// the one whose counters prove it.
    pub(crate) fn is_unproven(&self, id: &Uuid, peers: usize) -> bool {
        !self.rolled_back
            && self.reconciled.len() < peers
            && self.restored.slave_keys.contains_key(id)
    }

    /// Whether `epoch` is `peer`'s current run as announced to this run.
    pub(crate) fn is_current(&self, peer: &NodeId, epoch: u64) -> bool {
        self.epochs.get(peer) == Some(&epoch)
    }

    /// The next `Hello` retry, while some peer has not answered.
    pub(crate) fn next_deadline(&self, peers: usize) -> Option<Instant> {
        (self.reconciled.len() < peers).then_some(self.next_hello)
    }

    /// Raises one mark of `peer`; returns the record to persist if it moved.
    fn raise(&mut self, peer: &NodeId, f: impl FnOnce(&mut PeerMarks)) -> Option<Record> {
        let m = self.marks.entry(peer.clone()).or_default();
        let before = *m;
        f(m);
        (*m != before).then(|| Record::PeerSeen {
            peer: peer.clone(),
            seen: *m,
        })
    }

    /// `peer`'s current run raised our relay or assignment marks of it: remember which run, so
    /// that a `Hello` of that same run (late, or repeated after we restarted) is never judged
    /// rolled back against marks it raised itself.
    fn marks_raised(&mut self, peer: &NodeId) -> Option<Record> {
        let epoch = *self.epochs.get(peer)?;
        let store = self.marks.get(peer).map_or(0, |m| m.store);
        let f = self.forks.entry(peer.clone()).or_default();
        if f.store != store {
            *f = Fork {
                store,
                ..Fork::default()
            };
        }
        let run = self.runs.get(peer).copied().unwrap_or(0);
        (f.marks_epoch != epoch || f.marks_run != run).then(|| {
            f.marks_epoch = epoch;
            f.marks_run = run;
            fork_record(peer, f)
        })
    }

    /// What this node judged of `peer`'s current store (default if nothing).
    fn fork_of(&self, peer: &NodeId) -> Fork {
        let store = self.marks.get(peer).map_or(0, |m| m.store);
        self.forks
            .get(peer)
            .filter(|f| f.store == store && store != 0)
            .copied()
            .unwrap_or_default()
    }
}

fn fork_record(peer: &NodeId, f: &Fork) -> Record {
    Record::PeerForkRun {
        peer: peer.clone(),
        store: f.store,
        marks_epoch: f.marks_epoch,
        marks_run: f.marks_run,
        fork_run: f.fork_run,
    }
}

impl KeyManager {
    /// Draws the store identity (or keeps the restored one) and this run's epoch, takes the
    /// next run number, remembers what was restored, and greets every node once the identity
    /// and run number are durable.
    pub(crate) fn start_reconcile(&mut self, restored_store: Option<u64>, run: u64, now: Instant) {
        let epoch = self.nonzero_u64();
        let (store, fresh) = match restored_store {
            Some(s) => (s, false),
            None => (self.nonzero_u64(), true),
        };
        self.reconcile.store = store;
        self.reconcile.epoch = epoch;
        self.reconcile.run = run;
        self.reconcile.next_hello = now + HELLO_RETRY;
        let r = &mut self.reconcile.restored;
        r.slave_keys = self
            .supply
            .slave_keys
            .iter()
            .map(|(id, k)| (*id, k.run))
            .collect();
        r.link_hw = self
            .links
            .held()
            .filter_map(|(p, h)| h.high_water.map(|hw| (p.clone(), hw)))
            .collect();
        r.out_chunks = self.pools.out_chunks();
        // The run number is durable before any peer hears of it and before any key is applied
        // under it (batches commit in order).
        let mut batch = vec![
            Record::Counter {
                name: Counter::Run,
                next: run.saturating_add(1),
            },
            self.reconcile.record_run_epoch(),
        ];
        if fresh {
            // A new database: nothing restored can be stale, and the identity is durable
            // before any peer hears of it.
            self.reconcile.rolled_back = true;
            batch.push(Record::Identity { store });
        }
        self.out.store(batch, vec![After::Hellos]);
    }

    /// Greets every other node.
    pub(crate) fn hello_all(&mut self) {
        for to in self.other_nodes() {
            let hello = self.hello_to(to);
            self.out.push(hello);
        }
    }

    fn nonzero_u64(&mut self) -> u64 {
        use rand_chacha::rand_core::RngCore;
        loop {
            let v = self.sched_rng.next_u64();
            if v != 0 {
                return v;
            }
        }
    }

    pub(crate) fn other_nodes(&self) -> Vec<NodeId> {
        self.cfg
            .topology
            .nodes
            .iter()
            .map(|n| NodeId::from(&n.id))
            .filter(|n| n != self.me())
            .collect()
    }

    fn hello_to(&self, to: NodeId) -> Action {
        let link_low = self.links.lowest_block(&to);
        let tx_low = self.links.tx_low(&to);
        Action::Send {
            to,
            msg: PeerMsg::Hello {
                store: self.reconcile.store,
                epoch: self.reconcile.epoch,
                link_low,
                run: self.reconcile.run,
                next_relay: self.relays.next_seq,
                next_assign: self.supply.next_assign,
                tx_low,
            },
        }
    }

    /// The first block of the link to `peer` this store ever received: tell the neighbour, so
    /// it drops the older blocks this store will never hold (after a lost database).
    pub(crate) fn first_link_block(&mut self, peer: NodeId) {
        let hello = self.hello_to(peer);
        self.out.push(hello);
    }

    /// A peer's channel came up: greet it (again).
    pub(crate) fn on_peer_up(&mut self, peer: NodeId) {
        self.routing.set_up(&peer, true);
        let hello = self.hello_to(peer);
        self.out.push(hello);
    }

    /// Re-sends `Hello` to every reachable peer that has not answered this run's.
    pub(crate) fn retry_hellos(&mut self, now: Instant) {
        if now < self.reconcile.next_hello {
            return;
        }
        self.reconcile.next_hello = now + HELLO_RETRY;
        // Every other node answered (the usual case): nothing to retry, and no list to build.
        if self
            .reconcile
            .next_deadline(self.cfg.topology.nodes.len().saturating_sub(1))
            .is_none()
        {
            return;
        }
        for to in self.other_nodes() {
            if !self.reconcile.is_reconciled(&to) && !self.routing.is_down(&to) {
                let hello = self.hello_to(to);
                self.out.push(hello);
            }
        }
    }

    /// The next `Hello` retry, if one is due.
    pub(crate) fn hello_deadline(&self) -> Option<Instant> {
        self.reconcile
            .next_deadline(self.cfg.topology.nodes.len().saturating_sub(1))
    }

    pub(crate) fn on_hello(&mut self, from: NodeId, hello: Hello) {
        let Hello {
            store,
            epoch,
            link_low,
            ..
        } = hello;
        let mut batch = Vec::new();
        let known = self.reconcile.epochs.insert(from.clone(), epoch);
        self.reconcile.runs.insert(from.clone(), hello.run);
        let before = self.reconcile.marks.get(&from).map_or(0, |m| m.store);
        if before == store && known != Some(epoch) {
            batch.extend(self.judge_fork(&from, &hello));
        }
        if before != store {
            if before != 0 {
                tracing::warn!(peer = %from, "peer's store changed (database lost or replaced): discarding the key shared with it");
                self.stats.peer_stores_replaced += 1;
                self.forget_peer(&from, &mut batch);
                // Our reservations were recorded by its lost store.
                self.links.clear_reserved(&from);
                if link_low.is_none() {
                    // Its new store never received a block: it holds nothing of what we hold,
                    // and none of its reservations covers what earlier runs of ours (or of a
                    // copy of our store) spent of our half under the lost store's. A copy
                    // restored here would spend those pad bytes again once the new store
                    // reserved them (chaos seeds 8592 and 9247).
                    self.stats.link_key_discarded += self.links.drop_all(&from, &mut batch);
                }
            }
            // Marks of the old store only set floors for the new one: they prove nothing
            // about it.
            batch.extend(self.reconcile.raise(&from, |m| {
                *m = PeerMarks {
                    store,
                    relay_floor: m.relay_floor.max(m.relay_hw),
                    assign_floor: m.assign_floor.max(m.assign_hw),
                    ..PeerMarks::default()
                }
            }));
        }
        if let Some(low) = link_low.filter(|_| self.links.contains(&from)) {
            // The neighbour holds nothing of our link below `low`, and never will.
            self.stats.link_key_discarded += self.links.drop_below(&from, low, &mut batch);
        }
        let mut after = vec![After::Act(Action::Send {
            to: from.clone(),
            msg: self.seen_msg(&from, epoch),
        })];
        if known != Some(epoch) {
            // What that node held of our relays in flight may be gone with its previous run,
            // and so are the link key grants either way (it keeps them in memory only).
            self.abandon_relays_via(&from, false);
            self.links.drop_grants(&from);
            // A new run of the peer does not know ours either, and until it answers our Hello
            // it drops our relays and assignments as not current: greet it, and keep greeting
            // (`retry_hellos`) until it answers, since this first Hello may be lost while our
            // channel to it comes back.
            self.reconcile.reconciled.remove(&from);
            after.push(After::Act(self.hello_to(from)));
        }
        if batch.is_empty() {
            for a in after {
                if let After::Act(a) = a {
                    self.out.push(a);
                }
            }
        } else {
            self.out.store(batch, after);
        }
    }

    /// The first `Hello` of a run of `peer`'s store, which this node knows: if we already saw
    /// its counters (or higher ones) from an earlier run, the store was restored from an older
    /// copy at or before this run. Returns the record of the fork run if it moved; it is
    /// durable before the `Seen` that reports it goes.
    fn judge_fork(&mut self, peer: &NodeId, hello: &Hello) -> Option<Record> {
        let m = self.reconcile.marks.get(peer).copied().unwrap_or_default();
        // The same tests as `on_seen` makes with our marks (`Links::tx_behind` for link key).
        let link_behind = match (m.link_rx_hw, hello.tx_low) {
            (Some(seen), Some((low, untouched))) => low < seen || (low == seen && untouched),
            _ => false,
        };
        let behind = hello.store != 0
            && (m.relay_hw >= hello.next_relay || m.assign_hw >= hello.next_assign || link_behind);
        let f = self.reconcile.forks.entry(peer.clone()).or_default();
        if f.store != hello.store {
            *f = Fork {
                store: hello.store,
                ..Fork::default()
            };
        }
        // Marks raised by this very run (its `Hello` arrived late, or again after we
        // restarted and forgot its epoch) prove nothing against it.
        if !behind || f.marks_epoch == hello.epoch || hello.run == 0 {
            return None;
        }
        // The store was copied during the run that raised our marks or before: every later
        // run may have applied keys after the restore, even runs that never greeted this node
        // (chaos seed 6951: the first run after the restore met this node down, and the
        // second one's fork alone discarded the keys the first had applied).
        let mut fork = hello.run;
        if f.marks_run > 0 {
            fork = fork.min(f.marks_run + 1);
        }
        if f.fork_run > 0 {
            fork = fork.min(f.fork_run);
        }
        (fork != f.fork_run).then(|| {
            tracing::warn!(%peer, run = hello.run, "peer's store is older than what it already said (restored from a copy?)");
            f.fork_run = fork;
            fork_record(peer, f)
        })
    }

    /// The `Seen` answering `peer`'s run `epoch`: what this node saw of its store.
    fn seen_msg(&self, peer: &NodeId, epoch: u64) -> PeerMsg {
        let m = self.reconcile.marks.get(peer).copied().unwrap_or_default();
        let f = self.reconcile.fork_of(peer);
        PeerMsg::Seen {
            epoch,
            relay_hw: m.relay_hw,
            assign_hw: m.assign_hw,
            relay_floor: m.relay_floor,
            assign_floor: m.assign_floor,
            link_rx_hw: m.link_rx_hw,
            fork_run: f.fork_run,
            link_reserved: self.reconcile.reserved.get(peer).copied(),
            marks_run: f.marks_run,
            marks_epoch: f.marks_epoch,
        }
    }

    /// A relay or assignment from `origin` was dropped as not of its current run: tell it
    /// which run this node takes for current (a `Seen` for that epoch). If that is not its
    /// current run (a `Hello` of an earlier one arrived late, or ours was lost), the origin
    /// greets again; otherwise this only repeats what it knows.
    pub(crate) fn stale_from(&mut self, origin: &NodeId) {
        self.stats.stale_dropped += 1;
        if let Some(&epoch) = self.reconcile.epochs.get(origin) {
            let seen = self.seen_msg(origin, epoch);
            self.out.send(origin.clone(), seen);
        }
    }

    /// `peer` lost its database: key shared with it through pools cannot be used any more, and
    /// assignments that name it will never be confirmed, or were confirmed by the lost store
    /// (the keys are gone there): both fail rather than answer the master with keys a slave
    /// cannot fetch.
    fn forget_peer(&mut self, peer: &NodeId, batch: &mut Vec<Record>) {
        self.pools.drop_pools_with(peer, batch);
        for seq in self.relays.drop_pending_to(peer) {
            self.stats.relays_abandoned += 1;
            batch.push(Record::PendingRelayGone { seq });
        }
        let waiting: Vec<u64> = self
            .supply
            .assigns
            .iter()
            .filter(|(_, a)| a.nodes.iter().any(|n| n == peer))
            .map(|(s, _)| *s)
            .collect();
        for seq in waiting {
            self.fail_assign(seq, format!("KME {peer} lost its database; retry"));
        }
    }

    pub(crate) fn on_seen(&mut self, from: NodeId, seen: Seen) {
        let Seen {
            epoch,
            relay_hw,
            assign_hw,
            relay_floor,
            assign_floor,
            link_rx_hw,
            fork_run,
            link_reserved,
            marks_run,
            marks_epoch,
        } = seen;
        if epoch != self.reconcile.epoch {
            // An answer to an earlier run, or to a `Hello` of ours that arrived late (messages
            // can be reordered): the peer now takes that run for our current one and would
            // drop everything we send as stale. If we took it for reconciled, greet it again;
            // What it dropped of our relays will never be acknowledged.
            if self.reconcile.is_reconciled(&from) {
                self.abandon_relays_via(&from, false);
                let hello = self.hello_to(from);
                self.out.push(hello);
            }
            return;
        }
        let mut batch = Vec::new();
        let behind = relay_hw >= self.relays.next_seq
            || assign_hw >= self.supply.next_assign
            || link_rx_hw.is_some_and(|b| self.links.tx_behind(&from, b));
        let renewed = behind && !self.reconcile.rolled_back;
        if renewed {
            tracing::error!(peer = %from, relay_hw, assign_hw, fork_run, "this node's store is older than what a peer saw (restored from a copy?): discarding what cannot be proven unused and taking a new store identity");
            self.reconcile.rolled_back = true;
            self.stats.rollbacks_detected += 1;
            // Keys of runs from the fork on were applied after the restore; without a fork
            // run (detected from link key alone) everything restored goes.
            let fork = match fork_run {
                0 => self.reconcile.run,
                r => r.min(self.reconcile.run),
            };
            let fork = self
                .reconcile
                .fork_before_marks(fork, marks_run, marks_epoch);
            let (keys, link) = (
                self.stats.slave_keys_discarded,
                self.stats.link_key_discarded,
            );
            self.discard_restored(fork, &mut batch);
            self.renew_identity(&mut batch);
            tracing::error!(
                slave_keys = self.stats.slave_keys_discarded - keys,
                link_key_bytes = self.stats.link_key_discarded - link,
                kept_from_run = fork,
                "discarded what the restored store held from before the copy: keys held for slaves (their slaves get 'not found'), link key and pools"
            );
        }
        let next = relay_hw.max(relay_floor).saturating_add(1);
        if next > self.relays.next_seq {
            self.relays.next_seq = next;
            batch.push(Record::Counter {
                name: Counter::Relay,
                next,
            });
        }
        let next = assign_hw.max(assign_floor).saturating_add(1);
        if next > self.supply.next_assign {
            self.supply.next_assign = next;
            batch.push(Record::Counter {
                name: Counter::Assign,
                next,
            });
        }
        if let Some(b) = link_rx_hw {
            // The neighbour saw this block of our half spent: whatever is left of it (or of an
            // older one) might have been spent before a rollback; never use it again.
            self.stats.link_key_discarded += self.links.drop_tx_upto(&from, b, &mut batch);
        }
        // Every block of our half up to the reservation may have been spent by an earlier
        // run, on hops the neighbour never received too: a store restored from a copy taken
        // before those spends holds them as unspent, and no counter the neighbour saw proves
        // the copy older. Never use them again (a store that is not a copy loses only what it
        // had reserved and not yet spent).
        self.stats.link_key_discarded += self.links.sync_reserved(&from, link_reserved, &mut batch);
        if renewed {
            // Every node learns the new identity once it is durable (with `link_low` for the
            // link key discarded here), and answers it before anything goes to it again.
            self.out.store(batch, vec![After::Hellos]);
            return;
        }
        if !batch.is_empty() {
            self.out.store(batch, vec![]);
        }
        self.reconcile.reconciled.insert(from.clone());
        self.revokes_on_reconciled(&from);
        self.reserve_ahead(&from);
    }

    /// After a rollback is detected: the store takes a new identity and the run a new epoch,
    /// so that every peer treats this node as one that lost its database (it drops the pools
    /// it shares with it, fails assignments naming it, and keeps only floors of what it saw).
    /// Without it, a peer's out-pool would keep chunks relayed after the copy was taken, which
    /// this store lacks (every assignment from them refused), and a second restart before every
    /// peer answered would find the peers' marks ahead again and discard keys applied since.
    /// Pools with every peer go here too, as do relays and assignments of the old epoch.
    fn renew_identity(&mut self, batch: &mut Vec<Record>) {
        let store = self.nonzero_u64();
        self.reconcile.store = store;
        self.reconcile.epoch = self.nonzero_u64();
        self.reconcile.reconciled.clear();
        batch.push(Record::Identity { store });
        batch.push(self.reconcile.record_run_epoch());
        for peer in self.other_nodes() {
            self.pools.drop_pools_with(&peer, batch);
            for seq in self.relays.drop_pending_to(&peer) {
                self.stats.relays_abandoned += 1;
                batch.push(Record::PendingRelayGone { seq });
            }
        }
        let assigns: Vec<u64> = self.supply.assigns.keys().copied().collect();
        for seq in assigns {
            self.fail_assign(
                seq,
                "this KME found its database restored from an older copy; retry".into(),
            );
        }
    }

    /// This store is an old copy that forked at run `fork`: drop what it restored that may
    /// already have been used (slave keys of runs before the fork).
    fn discard_restored(&mut self, fork: u64, batch: &mut Vec<Record>) {
        let r = std::mem::take(&mut self.reconcile.restored);
        for (id, run) in r.slave_keys {
            if run >= fork {
                continue;
            }
            if self.supply.slave_keys.remove(&id).is_some() {
                self.stats.slave_keys_discarded += 1;
                batch.push(Record::SlaveKeyGone { id });
            }
        }
        for (peer, hw) in r.link_hw {
            self.stats.link_key_discarded += self.links.drop_upto(&peer, hw, batch);
        }
        self.pools.drop_out_chunks(&r.out_chunks, batch);
    }

    /// A relay from `origin` was stored here: remember its counter.
    pub(crate) fn saw_relay(&mut self, origin: &NodeId, seq: u64, batch: &mut Vec<Record>) {
        batch.extend(
            self.reconcile
                .raise(origin, |m| m.relay_hw = m.relay_hw.max(seq)),
        );
        batch.extend(self.reconcile.marks_raised(origin));
    }

    /// An assignment from `origin` was applied here: remember its counter.
    pub(crate) fn saw_assign(&mut self, origin: &NodeId, seq: u64, batch: &mut Vec<Record>) {
        batch.extend(
            self.reconcile
                .raise(origin, |m| m.assign_hw = m.assign_hw.max(seq)),
        );
        batch.extend(self.reconcile.marks_raised(origin));
    }

    /// `peer` spent its half of our link up to `block`: remember it.
    pub(crate) fn saw_link_spend(&mut self, peer: &NodeId, block: u64, batch: &mut Vec<Record>) {
        batch.extend(self.reconcile.raise(peer, |m| {
            m.link_rx_hw = Some(m.link_rx_hw.map_or(block, |b| b.max(block)))
        }));
        batch.extend(self.reconcile.marks_raised(peer));
    }
}
