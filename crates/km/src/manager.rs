//! The key manager state machine.

use std::collections::BTreeSet;
use std::sync::Arc;

use kagi_keymat::Key;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use uuid::Uuid;

use crate::app::{AppCall, Refusal};
use crate::config::KmConfig;
use crate::links::Links;
use crate::msgs::{NodeId, PeerMsg};
use crate::outbox::{After, Outbox};
use crate::pools::Pools;
use crate::reconcile::Reconcile;
use crate::record::{Counter, Record, Snapshot};
use crate::relay::Relays;
use crate::routing::Routing;
use crate::supply::Supply;
use crate::time::Instant;

pub use crate::outbox::{Action, ReqId, WriteId};

/// Input to the key manager.
#[derive(Debug)]
pub enum Input {
    /// A block of link key arrived from the QKD link to `peer`; both ends receive the same block
    /// with the same id.
    LinkKeys {
        /// The neighbour at the other end.
        peer: NodeId,
        /// Block id (increasing per link).
        block: u64,
        /// The block's key bytes (both halves).
        key: Key,
    },
    /// A message from another key manager, whose identity the transport authenticated.
    Peer {
        /// Sender.
        from: NodeId,
        /// Message.
        msg: PeerMsg,
    },
    /// An application call.
    App {
        /// Request id; the answer carries it.
        req: ReqId,
        /// The call.
        call: AppCall,
    },
    /// The channel to a peer is up.
    PeerUp {
        /// Which peer.
        peer: NodeId,
    },
    /// The channel to a peer is down: route around it.
    PeerDown {
        /// Which peer.
        peer: NodeId,
    },
    /// A store batch finished. Batches must be acknowledged in the order they were emitted.
    Stored {
        /// Which batch.
        write: WriteId,
        /// Whether it is durable. A failure fences the node until it is restarted from the store.
        ok: bool,
    },
}

/// Inputs that change what refill reads only through the counters of its fingerprint (pools,
/// relays in flight, demand, congestion windows, route generation): the frequent ones,
/// applications' requests and the assignments that serve them included (a request with a route
/// constraint makes refill run every tick while the constraint is held). Link key grants and
/// reservations change only link key, which refill reads when it starts a relay, and a tick that
/// tries to start one is never quiet. Every other input may change which peers reconciled
/// (`Hello`, `Seen`, a peer up or down) and lets the next refill tick run (see `crate::quiet`).
fn keeps_refill_quiet(input: &Input) -> bool {
    matches!(
        input,
        Input::LinkKeys { .. }
            | Input::Stored { .. }
            | Input::App { .. }
            | Input::Peer {
                msg: PeerMsg::Heartbeat
                    | PeerMsg::LinkState { .. }
                    | PeerMsg::RelayHop { .. }
                    | PeerMsg::ShareHop { .. }
                    | PeerMsg::RelayAck { .. }
                    | PeerMsg::Assign { .. }
                    | PeerMsg::AssignAck { .. }
                    | PeerMsg::LinkKeyWanted { .. }
                    | PeerMsg::LinkKeyGranted { .. }
                    | PeerMsg::LinkReserve { .. }
                    | PeerMsg::LinkReserved { .. },
                ..
            }
    )
}

/// Counters for metrics and benchmarks (no key bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Link key bytes received from QKD links.
    pub link_key_in: u64,
    /// Link key blocks dropped because the link's buffer was full.
    pub link_blocks_dropped: u64,
    /// Link key bytes spent on relay hops (pads and MAC keys).
    pub link_key_spent: u64,
    /// Link key bytes of this node's half it granted to neighbours (adaptive direction split).
    pub link_key_granted_out: u64,
    /// Link key bytes of neighbours' halves they granted to this node.
    pub link_key_granted_in: u64,
    /// Relays started here.
    pub relays_started: u64,
    /// Relays acknowledged by their destination.
    pub relays_acked: u64,
    /// Relays abandoned: timed out, or aborted by a node on their path.
    pub relays_abandoned: u64,
    /// Relays abandoned at once because a node on their path reported it could not carry them.
    pub relays_aborted: u64,
    /// Link key this node spent on relays it later abandoned (bytes).
    pub abandoned_key_bytes: u64,
    /// Relays started here over several node-disjoint paths (key split into shares).
    pub multipath_relays_started: u64,
    /// Shares of multi-path relays from here reported lost on their path (the relay survived
    /// while enough shares remained).
    pub shares_lost: u64,
    /// Hops that waited here too long for link key and were failed back to their origin.
    pub hops_expired: u64,
    /// Multi-path relays to here whose rebuilt key failed its manipulation check at least once
    /// (a share was altered on its way); rebuilt from other shares or aborted.
    pub shares_manipulated: u64,
    /// Multi-path relays to here aborted because no set of shares passed the manipulation check.
    pub manipulation_aborts: u64,
    /// Shares that arrived here after their key was rebuilt and disagreed with it.
    pub late_shares_inconsistent: u64,
    /// Link key bytes this node spent on the manipulation-check overhead of the shares it sent
    /// (the AMD codeword's point and check value, on every hop).
    pub amd_key_bytes: u64,
    /// Relay hops forwarded for others.
    pub hops_forwarded: u64,
    /// Relayed keys received as destination.
    pub relays_received: u64,
    /// Relay hops refused as replays (link key already spent).
    pub replays_rejected: u64,
    /// Relay hops or assignments refused for a bad tag.
    pub bad_tags: u64,
    /// Keys served to masters here.
    pub keys_served_master: u64,
    /// Keys served to slaves here (first deliveries).
    pub keys_served_slave: u64,
    /// Keys served again to a slave that had fetched them, within its grace (its earlier reply
    /// was lost, or it asked twice).
    pub slave_refetches: u64,
    /// Keys erased when the grace of the last slave that fetched them ended.
    pub graces_ended: u64,
    /// Keys held for slaves that some slave never fetched within their lifetime (orphans):
    /// erased for those slaves.
    pub slave_keys_expired: u64,
    /// Keys held here for slaves that their origin revoked (its master was never answered).
    pub slave_keys_revoked: u64,
    /// Revokes sent again because a slave node had not acknowledged the first.
    pub revokes_resent: u64,
    /// Revocations given up unacknowledged because too many were waiting (the slave key's
    /// lifetime still ends those orphans).
    pub revokes_given_up: u64,
    /// Requests refused for lack of key.
    pub refused_no_key: u64,
    /// `dec_keys` refused because the keys were restored at start and this run has not yet
    /// reconciled with every other node (a copy's keys may have been fetched already).
    pub refused_unreconciled: u64,
    /// Requests refused because their priority may not take a low pool below its reserve
    /// (`[quotas.reserve]`).
    pub refused_for_priority: u64,
    /// End-to-end key bytes ready in out-pools now.
    pub pool_bytes: u64,
    /// Link key bytes held now (both halves).
    pub link_bytes: u64,
    /// Peers seen to come back with another store (database lost or replaced); the pools shared
    /// with them were discarded.
    pub peer_stores_replaced: u64,
    /// Times this node found its own store older than what a peer had seen (restored from a
    /// copy) and discarded what it could not prove unused.
    pub rollbacks_detected: u64,
    /// Keys held for slaves discarded because the store was found rolled back (they may have
    /// been fetched before).
    pub slave_keys_discarded: u64,
    /// Unspent link key bytes discarded in reconciliation (lost or rolled-back stores).
    pub link_key_discarded: u64,
    /// Relays or assignments dropped because they came from an earlier run of their origin.
    pub stale_dropped: u64,
    /// Pool chunks an assignment named that this node no longer held (reported back to the
    /// origin with `PoolMissing`).
    pub pool_chunks_missing: u64,
    /// Out-pool key bytes dropped because the slave's node reported it no longer held them.
    pub pool_key_discarded: u64,
    /// Link-state adverts dropped as invalid: from a node outside the topology, or naming a
    /// link their origin does not have.
    pub link_adverts_rejected: u64,
    /// Link-state adverts dropped because their origin's signature was missing or wrong (a
    /// transit node forged or altered them), when this node verifies adverts.
    pub link_adverts_unauthenticated: u64,
    /// Signed link-state adverts dropped as older than the newest accepted from their origin
    /// while that one is stale: a transit node replaying old adverts of a silent origin, or an
    /// origin whose clock was set back before it started again (SECURITY.md AVL.1).
    pub link_adverts_replayed: u64,
}

/// The key manager of one trusted node, as a deterministic state machine without I/O.
///
/// The driver's contract, in the manner of quinn-proto's `Connection`:
/// * (A) getters on `&self`: [`stats`](Self::stats), [`node_id`](Self::node_id), [`is_fenced`](Self::is_fenced).
/// * (B) input: [`handle`](Self::handle) for link keys, peer messages, peer up/down and store
///   acknowledgements; [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) has passed (a spurious call does nothing).
/// * (C) application commands also come through [`handle`](Self::handle) as [`Input::App`].
/// * (D) output: after every (B) or (C) call, drain [`poll_action`](Self::poll_action) until it
///   returns `None`, then read [`poll_timeout`](Self::poll_timeout) once and sleep until then or
///   the next input. `now` must never go backwards.
///
/// Persist, then speak: a `Send` or `Answer` that depends on a write is only emitted after the
/// driver reports that write durable with [`Input::Stored`]. Store batches must be acknowledged in
/// the order emitted; a failed write fences the node (every request gets 503) until the driver
/// restarts it with [`KeyManager::restore`] from what the store acknowledged.
///
/// `Clone` copies the whole state, key material included (fuzzing and the simulator start many
/// runs from one prepared state).
#[derive(Clone)]
pub struct KeyManager {
    pub(crate) cfg: KmConfig,
    /// Where each SAE of `cfg.topology` is attached (the topology never changes in a core).
    pub(crate) sae_index: Arc<kagi_control::SaeIndex>,
    /// Topology, peer liveness, links in service, and the routes that follow.
    pub(crate) routing: Routing,
    /// Link key buffers per neighbour.
    pub(crate) links: Links,
    /// End-to-end key pools.
    pub(crate) pools: Pools,
    /// Relays in flight from here and hops waiting here.
    pub(crate) relays: Relays,
    /// Assignments and keys held for slaves.
    pub(crate) supply: Supply,
    /// Output queue and actions held until their write is durable.
    pub(crate) out: Outbox,
    /// Key rate limits and usage per master SAE.
    pub(crate) quotas: crate::quota::Quotas,
    pub(crate) fenced: bool,
    pub(crate) key_rng: ChaCha20Rng,
    pub(crate) sched_rng: ChaCha20Rng,
    /// The next tick of the refill grid not yet run or slept through (see `refill_due`).
    pub(crate) next_refill: Instant,
    pub(crate) refilling: BTreeSet<NodeId>,
    /// Recent demand per destination: how much key each pool holds.
    pub(crate) demand: crate::demand::Demand,
    /// Congestion windows per destination: how many relays may be in flight.
    pub(crate) pace: crate::pace::Pace,
    /// Heartbeats and when each other node was last heard from.
    pub(crate) liveness: crate::liveness::Liveness,
    /// Link-state adverts: this node's and the newest of every other node.
    pub(crate) linkstate: crate::linkstate::LinkState,
    pub(crate) stats: NodeStats,
    /// Store identity, epoch and what peers saw (see [`crate::reconcile`]).
    pub(crate) reconcile: Reconcile,
    /// Graces of slaves that fetched keys here (see [`crate::delivery`]).
    pub(crate) delivery: crate::delivery::Delivery,
    /// Asks for link key grants (see [`crate::grants`]).
    pub(crate) grants: crate::grants::Grants,
    pub(crate) reserves: crate::reserve::Reserves,
    /// Revocations waiting for acknowledgement, and assignments revoked here (see
    /// [`crate::revoke`]).
    pub(crate) revokes: crate::revoke::Revokes,
    /// The latest `now` passed in (for work started where no `now` is at hand).
    pub(crate) now: Instant,
    /// `poll_timeout`'s deadlines, kept while only echoes come (see [`crate::echo`]).
    pub(crate) deadline_memo: crate::echo::DeadlineMemo,
}

impl KeyManager {
    /// Builds a key manager from what the store acknowledged. `seed` seeds the key-material and
    /// scheduling RNGs (the driver takes it from the OS or a QRNG; the simulator derives it).
    pub fn restore(cfg: KmConfig, snap: Snapshot, seed: [u8; 32], now: Instant) -> Self {
        let mut sched_seed = seed;
        sched_seed[0] ^= 0x5a;
        let routing = Routing::new(&cfg.node_id, cfg.topology.clone());
        let links = Links::new(cfg.topology.neighbours(&cfg.node_id).map(|(n, _)| n));
        let mut km = KeyManager {
            sae_index: Arc::new(cfg.topology.sae_index()),
            routing,
            links,
            pools: Pools::default(),
            relays: Relays::default(),
            supply: Supply::default(),
            out: Outbox::default(),
            quotas: crate::quota::Quotas::new(cfg.policy.quotas.clone()),
            fenced: false,
            key_rng: ChaCha20Rng::from_seed(seed),
            sched_rng: ChaCha20Rng::from_seed(sched_seed),
            next_refill: now,
            refilling: BTreeSet::new(),
            demand: Default::default(),
            pace: Default::default(),
            liveness: crate::liveness::Liveness::new(
                cfg.topology
                    .nodes
                    .iter()
                    .filter(|n| cfg.node_id != n.id)
                    .filter(|n| {
                        cfg.policy.peers == crate::config::PeerScope::All
                            || cfg.topology.link(&cfg.node_id, &n.id).is_some()
                    })
                    .map(|n| NodeId::from(&n.id)),
                now,
            ),
            linkstate: crate::linkstate::LinkState::new(now),
            stats: NodeStats::default(),
            reconcile: Reconcile::new(0, 0, Default::default(), now),
            delivery: Default::default(),
            grants: Default::default(),
            reserves: Default::default(),
            revokes: Default::default(),
            now,
            deadline_memo: Default::default(),
            cfg,
        };
        let mut stale_relays = Vec::new();
        let mut store = None;
        let mut marks = std::collections::BTreeMap::new();
        let mut forks = std::collections::BTreeMap::new();
        let mut reserved = std::collections::BTreeMap::new();
        let mut run_epochs = Vec::new();
        let mut next_run = 1;
        for r in snap.records {
            match r {
                Record::LinkBlock {
                    peer,
                    half,
                    block,
                    buf,
                } => km.links.restore_block(peer, half, block, buf.into()),
                Record::LinkHighWater { peer, block } => km.links.restore_high_water(peer, block),
                // A chunk from a store that did not record paths: "paths unknown".
                Record::Chunk { pool, chunk, buf } => {
                    km.pools.restore_chunk(pool, chunk, buf.into())
                }
                Record::RoutedChunk {
                    pool,
                    chunk,
                    buf,
                    route,
                } => {
                    km.pools.restore_route(&pool, chunk, route);
                    km.pools.restore_chunk(pool, chunk, buf.into())
                }
                Record::PendingRelay { seq, .. } => {
                    // A relay of an earlier run: its destination keeps only relays of this
                    // node's current run and an acknowledgement must name this run's epoch,
                    // so it can never complete. Forget it now rather than hold one of the
                    // destination's in-flight slots until it times out.
                    stale_relays.push(Record::PendingRelayGone { seq });
                }
                Record::SlaveKey { id, key } => km.supply.restore_slave_key(id, key, now),
                Record::TaggedSlaveKey { id, mut key, run } => {
                    key.run = run;
                    km.supply.restore_slave_key(id, key, now)
                }
                Record::GracedSlaveKey {
                    id,
                    mut key,
                    run,
                    graced,
                } => {
                    key.run = run;
                    key.graced = graced;
                    km.supply.restore_slave_key(id, key, now)
                }
                Record::Counter {
                    name: Counter::Run,
                    next,
                } => next_run = next,
                Record::Counter {
                    name: Counter::Relay,
                    next,
                } => km.relays.restore_counter(next),
                Record::Counter {
                    name: Counter::Assign,
                    next,
                } => km.supply.restore_counter(next),
                Record::Identity { store: s } => store = Some(s),
                Record::PeerSeen { peer, seen } => {
                    marks.insert(peer, seen);
                }
                Record::PeerFork {
                    peer,
                    store,
                    marks_epoch,
                    fork_run,
                } => {
                    forks.insert(
                        peer,
                        crate::reconcile::Fork {
                            store,
                            marks_epoch,
                            marks_run: 0,
                            fork_run,
                        },
                    );
                }
                Record::PeerForkRun {
                    peer,
                    store,
                    marks_epoch,
                    marks_run,
                    fork_run,
                } => {
                    forks.insert(
                        peer,
                        crate::reconcile::Fork {
                            store,
                            marks_epoch,
                            marks_run,
                            fork_run,
                        },
                    );
                }
                Record::OpenAssign { seq, nodes } => km.restore_open_assign(now, seq, nodes),
                Record::PeerLinkReserved { peer, block } => {
                    reserved.insert(peer, block);
                }
                Record::RunEpochs { runs } => run_epochs = runs,
                Record::LinkBlockGone { .. }
                | Record::ChunkGone { .. }
                | Record::PendingRelayGone { .. }
                | Record::SlaveKeyGone { .. }
                | Record::OpenAssignGone { .. } => {}
            }
        }
        km.pools.recount();
        km.restart_windows(now);
        if !stale_relays.is_empty() {
            km.stats.relays_abandoned += stale_relays.len() as u64;
            km.out.store(stale_relays, vec![]);
        }
        km.reconcile = Reconcile::new(0, 0, marks, now);
        km.reconcile.restore_forks(forks);
        km.reconcile.restore_reserved(reserved);
        km.reconcile.restore_run_epochs(run_epochs);
        km.start_reconcile(store, next_run, now);
        // Built step by step above: nothing kept from before the last step.
        km.deadline_memo.forget();
        km
    }

    /// This run's epoch (announced to peers; relays and assignments from here carry it).
    pub fn epoch(&self) -> u64 {
        self.reconcile.epoch
    }

    /// This store's identity (drawn when the database was created).
    pub fn store_id(&self) -> u64 {
        self.reconcile.store
    }

    /// Whether `peer` answered this run's `Hello` (relays and `enc_keys` towards it may go).
    pub fn is_reconciled(&self, peer: &str) -> bool {
        self.reconcile.is_reconciled(&NodeId::from(peer))
    }

    /// This node's ID.
    pub fn node_id(&self) -> &NodeId {
        &self.cfg.node_id
    }

    /// True after a failed write: the node refuses everything until restarted from the store.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Counters (no key bytes).
    pub fn stats(&self) -> NodeStats {
        let mut s = self.stats.clone();
        s.pool_bytes = self.pools.total_out();
        s.link_bytes = self.links.total_bytes();
        s
    }

    /// Skips refill ticks that cannot change anything (`true`, the default) or runs every one
    /// (`false`): the same behaviour, more CPU; for tests that check the skip event for event.
    #[doc(hidden)]
    pub fn skip_quiet_refills(&mut self, on: bool) {
        self.deadline_memo.forget();
        self.relays.skip_quiet_refills(on);
    }

    /// Looks SAEs up in `index` instead of this core's own copy. `index` must be built from
    /// this core's topology (`cfg.topology.sae_index()`): a simulator running a hundred cores
    /// of one topology then keeps one index of every SAE in cache instead of a hundred (a
    /// lookup per request side was a cache miss).
    pub fn share_sae_index(&mut self, index: Arc<kagi_control::SaeIndex>) {
        self.sae_index = index;
    }

    /// Keeps `poll_timeout`'s deadlines across echoes (`true`, the default) or handles every
    /// echo in full (`false`): the same behaviour, more CPU; for tests that compare.
    #[doc(hidden)]
    pub fn keep_echo_deadlines(&mut self, on: bool) {
        self.deadline_memo.enable(on);
    }

    /// Echoes (heartbeats, copies of held adverts) handled without recomputing deadlines.
    #[doc(hidden)]
    pub fn echoes_handled(&self) -> u64 {
        self.deadline_memo.echoes()
    }

    /// Refill ticks skipped so far because they could not change anything.
    #[doc(hidden)]
    pub fn quiet_refills_skipped(&self) -> u64 {
        self.relays.quiet_refills_skipped()
    }

    /// Of those, ticks skipped after a look at the destinations whose pool or demand moved.
    #[doc(hidden)]
    pub fn quiet_refills_looked(&self) -> u64 {
        self.relays.quiet_refills_looked()
    }

    /// Bytes of end-to-end key ready for masters here with slaves at `dest`.
    pub fn pool_free(&self, dest: &str) -> u64 {
        self.pools.out_free(&NodeId::from(dest))
    }

    /// Free bytes this node holds towards `peer` (its half and what the neighbour granted it),
    /// whether the neighbour has reserved them for spending yet or not.
    pub fn link_tx_free(&self, peer: &str) -> u64 {
        self.links.tx_held(&NodeId::from(peer))
    }

    /// Feeds one input. Drain [`poll_action`](Self::poll_action) afterwards.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.handle_echo(now, &input) {
            return;
        }
        self.deadline_memo.forget();
        self.begin_input(now, None);
        if !keeps_refill_quiet(&input) {
            self.relays.wake_refill();
        }
        match input {
            Input::Stored { write, ok } => self.on_stored(write, ok),
            _ if self.fenced => {
                if let Input::App { req, .. } = input {
                    self.out.answer(
                        req,
                        Err(Refusal::Unavailable(
                            "key manager is recovering from a storage fault; retry".into(),
                        )),
                    );
                }
            }
            Input::LinkKeys { peer, block, key } => self.on_link_keys(now, peer, block, key),
            Input::Peer { from, msg } => {
                self.note_heard(&from, now);
                self.on_peer(now, from, msg)
            }
            Input::App { req, call } => self.on_app(now, req, call),
            Input::PeerUp { peer } => {
                self.note_heard(&peer, now);
                self.on_peer_up(peer)
            }
            Input::PeerDown { peer } => {
                self.routing.set_up(&peer, false);
                self.abandon_relays_via(&peer, true);
            }
        }
    }

    /// What every input does first, an echo's short path (`crate::echo`) included: refill ticks
    /// slept through are no longer owed, time moves on, and waiting hops retry at the next
    /// tick. `sleeps`: `refill_sleeps_until`'s answer, when it is at hand. Returns whether that
    /// made a hop retry due.
    pub(crate) fn begin_input(
        &mut self,
        now: Instant,
        sleeps: Option<Option<Option<Instant>>>,
    ) -> bool {
        match sleeps {
            Some(sleeps) => self.skip_slept_refills_given(now, true, sleeps),
            None => self.skip_slept_refills(now, true),
        }
        self.now = self.now.max(now);
        self.relays.note_input()
    }

    /// Handles timers whose deadline has passed. A spurious call does nothing harmful.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.fenced {
            return;
        }
        self.deadline_memo.forget();
        self.now = self.now.max(now);
        self.skip_slept_refills(now, false);
        self.check_liveness(now);
        self.tick_link_state(now);
        self.expire_relays(now);
        self.expire_assigns(now);
        self.expire_hops(now);
        self.end_graces(now);
        self.expire_slave_keys(now);
        self.retry_hellos(now);
        self.retry_revokes(now);
        self.refill_tick(now);
    }

    /// The next action, if any. Call until `None` after every `handle*`.
    pub fn poll_action(&mut self) -> Option<Action> {
        let Some(act) = self.out.pop() else {
            // Drained: the state stands until the next input (see `crate::echo`).
            self.remember_deadlines();
            return None;
        };
        // What leaves for a watched peer tells it this node is alive (see `crate::liveness`).
        if let (Action::Send { to, .. }, Some(_)) = (&act, self.cfg.policy.liveness) {
            self.liveness.sent(to, self.now);
        }
        Some(act)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next. Changes after any
    /// `handle*` call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.fenced {
            return None;
        }
        let d = self.deadlines();
        let mut t = self.refill_due_given(d.sleeps).unwrap_or(Instant(u64::MAX));
        if let Some(o) = d.others {
            t = t.min(o);
        }
        if let Some(lp) = self.cfg.policy.liveness {
            t = t.min(self.liveness.next_deadline(lp.silent_after));
        }
        (t != Instant(u64::MAX)).then_some(t)
    }

    fn on_stored(&mut self, write: WriteId, ok: bool) {
        let Ok(after) = self.out.acknowledge(write) else {
            // Out-of-order or unknown acknowledgement: driver misuse. Fence rather than guess.
            tracing::error!(write, "store acknowledgement out of order; fencing");
            self.fence();
            return;
        };
        if !ok {
            self.fence();
            return;
        }
        for a in after {
            match a {
                After::Act(act) => self.out.push(act),
                After::AssignDurable(seq) => self.supply.assign_durable(seq),
                After::SlaveAssignDurable(origin, seq) => {
                    self.supply.slave_assign_durable(origin, seq)
                }
                After::Hellos => self.hello_all(),
            }
        }
    }

    fn fence(&mut self) {
        self.fenced = true;
        self.out.fence();
        // Answer every request still waiting so no client hangs.
        for req in self.supply.drop_assigns() {
            self.out.answer(
                req,
                Err(Refusal::Unavailable(
                    "key manager storage fault; retry".into(),
                )),
            );
        }
    }

    pub(crate) fn new_uuid(&mut self) -> Uuid {
        let mut b = [0u8; 16];
        self.sched_rng.fill_bytes(&mut b);
        uuid::Builder::from_random_bytes(b).into_uuid()
    }

    pub(crate) fn fresh_key(&mut self, len: usize) -> Key {
        let mut k = Key::zeroed(len);
        self.key_rng.fill_bytes(k.expose_mut());
        k
    }

    pub(crate) fn me(&self) -> &NodeId {
        &self.cfg.node_id
    }

    pub(crate) fn topology(&self) -> Arc<kagi_control::Topology> {
        self.cfg.topology.clone()
    }
}
