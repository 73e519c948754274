//! The key manager state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use kagi_control::Routes;
use kagi_keymat::Key;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use uuid::Uuid;

use crate::app::{AppCall, AppReply, DeliveredKey, Refusal};
use crate::config::KmConfig;
use crate::keybuf::KeyBuf;
use crate::msgs::{NodeId, PeerMsg, RelayId};
use crate::record::{Counter, Half, Pool, Record, SlaveKey, Snapshot};
use crate::time::Instant;

/// Identifies an application request (chosen by the driver).
pub type ReqId = u64;
/// Identifies a store batch (chosen by the core, increasing).
pub type WriteId = u64;

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

/// Output of the key manager, drained with [`KeyManager::poll_action`].
#[must_use]
#[derive(Debug)]
pub enum Action {
    /// Send a message to a peer.
    Send {
        /// Destination node.
        to: NodeId,
        /// Message.
        msg: PeerMsg,
    },
    /// Persist these records atomically, then report [`Input::Stored`].
    Store {
        /// Batch id.
        write: WriteId,
        /// Records, applied in order.
        batch: Vec<Record>,
    },
    /// Answer an application request.
    Answer {
        /// Which request.
        req: ReqId,
        /// The answer.
        reply: Result<AppReply, Refusal>,
    },
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
    /// Relays started here.
    pub relays_started: u64,
    /// Relays acknowledged by their destination.
    pub relays_acked: u64,
    /// Relays abandoned after the timeout.
    pub relays_abandoned: u64,
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
    /// Keys served to slaves here.
    pub keys_served_slave: u64,
    /// Requests refused for lack of key.
    pub refused_no_key: u64,
    /// End-to-end key bytes ready in out-pools now.
    pub pool_bytes: u64,
    /// Link key bytes held now (both halves).
    pub link_bytes: u64,
}

/// What to do once a store batch is durable.
#[derive(Debug)]
pub(crate) enum After {
    Act(Action),
    AssignDurable(u64),
    SlaveAssignDurable(NodeId, u64),
}

#[derive(Debug, Default)]
pub(crate) struct Link {
    pub(crate) tx: BTreeMap<u64, KeyBuf>,
    pub(crate) rx: BTreeMap<u64, KeyBuf>,
    pub(crate) high_water: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct PendingRelay {
    pub(crate) dest: NodeId,
    pub(crate) key: Key,
    pub(crate) deadline: Instant,
    /// The nodes after this one on the relay's path: the only ones that may report it failed.
    /// Empty for a relay restored from the store (it then ends by its timeout).
    pub(crate) path: Vec<NodeId>,
}

#[derive(Debug)]
pub(crate) struct MasterAssign {
    pub(crate) req: ReqId,
    pub(crate) keys: Vec<DeliveredKey>,
    pub(crate) nodes: Vec<NodeId>,
    pub(crate) waiting: BTreeSet<NodeId>,
    pub(crate) msgs: BTreeMap<NodeId, PeerMsg>,
    pub(crate) durable: bool,
    pub(crate) deadline: Instant,
    pub(crate) next_retry: Instant,
}

#[derive(Debug)]
pub(crate) struct WaitingHop {
    pub(crate) deadline: Instant,
    pub(crate) from: NodeId,
    pub(crate) msg: PeerMsg,
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
pub struct KeyManager {
    pub(crate) cfg: KmConfig,
    pub(crate) routes: Routes,
    pub(crate) down: BTreeSet<NodeId>,
    /// Neighbours whose link an operator took out of service (see `status.rs`).
    pub(crate) out_of_service: BTreeSet<NodeId>,
    pub(crate) links: BTreeMap<NodeId, Link>,
    /// Every link of the topology, both ways round (relay path checks).
    pub(crate) adjacent: BTreeSet<(NodeId, NodeId)>,
    pub(crate) out_pools: BTreeMap<NodeId, BTreeMap<u64, KeyBuf>>,
    /// Unspent bytes of each out-pool (kept in step with `out_pools`; pools hold thousands of
    /// chunks and this is read on every request and refill tick).
    pub(crate) out_free: BTreeMap<NodeId, u64>,
    pub(crate) in_pools: BTreeMap<NodeId, BTreeMap<u64, KeyBuf>>,
    pub(crate) pending_relays: BTreeMap<u64, PendingRelay>,
    pub(crate) slave_keys: BTreeMap<Uuid, SlaveKey>,
    pub(crate) assigns: BTreeMap<u64, MasterAssign>,
    /// Assignments applied here as a slave node; `Some(write)` while not yet durable.
    pub(crate) applied_assigns: BTreeMap<(NodeId, u64), Option<WriteId>>,
    pub(crate) waiting_hops: Vec<WaitingHop>,
    pub(crate) next_relay: u64,
    pub(crate) next_assign: u64,
    next_write: WriteId,
    actions: VecDeque<Action>,
    held: BTreeMap<WriteId, Vec<After>>,
    unacked: VecDeque<WriteId>,
    fenced: bool,
    pub(crate) key_rng: ChaCha20Rng,
    pub(crate) sched_rng: ChaCha20Rng,
    pub(crate) next_refill: Instant,
    pub(crate) refilling: BTreeSet<NodeId>,
    /// Pool chunks cut since the last store batch (see `flush_touched`).
    pub(crate) touched: BTreeSet<(Pool, u64)>,
    pub(crate) stats: NodeStats,
}

impl KeyManager {
    /// Builds a key manager from what the store acknowledged. `seed` seeds the key-material and
    /// scheduling RNGs (the driver takes it from the OS or a QRNG; the simulator derives it).
    pub fn restore(cfg: KmConfig, snap: Snapshot, seed: [u8; 32], now: Instant) -> Self {
        let routes = Routes::compute(&cfg.topology, &cfg.node_id, &[]);
        let mut sched_seed = seed;
        sched_seed[0] ^= 0x5a;
        let mut km = KeyManager {
            routes,
            down: BTreeSet::new(),
            out_of_service: BTreeSet::new(),
            links: BTreeMap::new(),
            adjacent: cfg
                .topology
                .links
                .iter()
                .flat_map(|l| [(l.a.clone(), l.b.clone()), (l.b.clone(), l.a.clone())])
                .collect(),
            out_pools: BTreeMap::new(),
            out_free: BTreeMap::new(),
            in_pools: BTreeMap::new(),
            pending_relays: BTreeMap::new(),
            slave_keys: BTreeMap::new(),
            assigns: BTreeMap::new(),
            applied_assigns: BTreeMap::new(),
            waiting_hops: Vec::new(),
            next_relay: 1,
            next_assign: 1,
            next_write: 1,
            actions: VecDeque::new(),
            held: BTreeMap::new(),
            unacked: VecDeque::new(),
            fenced: false,
            key_rng: ChaCha20Rng::from_seed(seed),
            sched_rng: ChaCha20Rng::from_seed(sched_seed),
            next_refill: now,
            refilling: BTreeSet::new(),
            touched: BTreeSet::new(),
            stats: NodeStats::default(),
            cfg,
        };
        let neighbours: Vec<String> = km
            .cfg
            .topology
            .neighbours(&km.cfg.node_id)
            .map(|(n, _)| n.to_string())
            .collect();
        for n in neighbours {
            km.links.entry(n).or_default();
        }
        for r in snap.records {
            match r {
                Record::LinkBlock {
                    peer,
                    half,
                    block,
                    buf,
                } => {
                    let link = km.links.entry(peer).or_default();
                    let m = match half {
                        Half::Tx => &mut link.tx,
                        Half::Rx => &mut link.rx,
                    };
                    m.insert(block, buf.into());
                }
                Record::LinkHighWater { peer, block } => {
                    km.links.entry(peer).or_default().high_water = Some(block);
                }
                Record::Chunk { pool, chunk, buf } => {
                    let m = match pool {
                        Pool::Out(d) => km.out_pools.entry(d).or_default(),
                        Pool::In(o) => km.in_pools.entry(o).or_default(),
                    };
                    m.insert(chunk, buf.into());
                }
                Record::PendingRelay { seq, dest, key } => {
                    let deadline = now + km.cfg.policy.relay_timeout;
                    km.pending_relays.insert(
                        seq,
                        PendingRelay {
                            dest,
                            key,
                            deadline,
                            path: Vec::new(),
                        },
                    );
                }
                Record::SlaveKey { id, key } => {
                    km.applied_assigns
                        .insert((key.origin.clone(), key.assign_seq), None);
                    km.slave_keys.insert(id, key);
                }
                Record::Counter {
                    name: Counter::Relay,
                    next,
                } => km.next_relay = km.next_relay.max(next),
                Record::Counter {
                    name: Counter::Assign,
                    next,
                } => km.next_assign = km.next_assign.max(next),
                Record::LinkBlockGone { .. }
                | Record::ChunkGone { .. }
                | Record::PendingRelayGone { .. }
                | Record::SlaveKeyGone { .. } => {}
            }
        }
        km.out_free = km
            .out_pools
            .iter()
            .map(|(d, p)| {
                (
                    d.clone(),
                    p.values().map(|b| u64::from(b.tail_free())).sum(),
                )
            })
            .collect();
        km
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// True after a failed write: the node refuses everything until restarted from the store.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Counters (no key bytes).
    pub fn stats(&self) -> NodeStats {
        let mut s = self.stats.clone();
        s.pool_bytes = self
            .out_pools
            .values()
            .flat_map(|p| p.values())
            .map(|b| u64::from(b.free()))
            .sum();
        s.link_bytes = self
            .links
            .values()
            .flat_map(|l| l.tx.values().chain(l.rx.values()))
            .map(|b| u64::from(b.free()))
            .sum();
        s
    }

    /// Bytes of end-to-end key ready for masters here with slaves at `dest`.
    pub fn pool_free(&self, dest: &str) -> u64 {
        self.out_free.get(dest).copied().unwrap_or(0)
    }

    /// Feeds one input. Drain [`poll_action`](Self::poll_action) afterwards.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Stored { write, ok } => self.on_stored(write, ok),
            _ if self.fenced => {
                if let Input::App { req, .. } = input {
                    self.answer(
                        req,
                        Err(Refusal::Unavailable(
                            "key manager is recovering from a storage fault; retry".into(),
                        )),
                    );
                }
            }
            Input::LinkKeys { peer, block, key } => self.on_link_keys(now, peer, block, key),
            Input::Peer { from, msg } => self.on_peer(now, from, msg),
            Input::App { req, call } => self.on_app(now, req, call),
            Input::PeerUp { peer } => {
                if self.down.remove(&peer) {
                    self.recompute_routes();
                }
            }
            Input::PeerDown { peer } => {
                if self.down.insert(peer) {
                    self.recompute_routes();
                }
            }
        }
    }

    /// Handles timers whose deadline has passed. A spurious call does nothing harmful.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.fenced {
            return;
        }
        self.expire_relays(now);
        self.expire_assigns(now);
        self.expire_hops(now);
        if now >= self.next_refill {
            self.next_refill = now + self.cfg.policy.refill_interval;
            self.refill(now);
        }
    }

    /// The next action, if any. Call until `None` after every `handle*`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next. Changes after any
    /// `handle*` call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.fenced {
            return None;
        }
        let mut t = self.next_refill;
        for r in self.pending_relays.values() {
            t = t.min(r.deadline);
        }
        for a in self.assigns.values() {
            t = t.min(a.deadline);
            if a.durable {
                t = t.min(a.next_retry);
            }
        }
        for h in &self.waiting_hops {
            t = t.min(h.deadline);
        }
        Some(t)
    }

    pub(crate) fn recompute_routes(&mut self) {
        let down: Vec<String> = self.down.iter().cloned().collect();
        self.routes = self.routes_in_service(&down);
    }

    /// Emits a store batch; `after` runs once it is durable.
    pub(crate) fn store(&mut self, batch: Vec<Record>, after: Vec<After>) -> WriteId {
        let write = self.next_write;
        self.next_write += 1;
        self.actions.push_back(Action::Store { write, batch });
        self.unacked.push_back(write);
        self.held.insert(write, after);
        write
    }

    pub(crate) fn actions_push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    /// Adds work to run when write `w` is durable (at once if it already is).
    pub(crate) fn hold_after(&mut self, w: WriteId, a: After) {
        match self.held.get_mut(&w) {
            Some(v) => v.push(a),
            None => {
                if let After::Act(act) = a {
                    self.actions.push_back(act);
                }
            }
        }
    }

    /// The id the next store batch will get.
    pub(crate) fn peek_write(&self) -> WriteId {
        self.next_write
    }

    pub(crate) fn send(&mut self, to: NodeId, msg: PeerMsg) {
        self.actions.push_back(Action::Send { to, msg });
    }

    pub(crate) fn answer(&mut self, req: ReqId, reply: Result<AppReply, Refusal>) {
        self.actions.push_back(Action::Answer { req, reply });
    }

    fn on_stored(&mut self, write: WriteId, ok: bool) {
        if self.unacked.front() != Some(&write) {
            // Out-of-order or unknown acknowledgement: driver misuse. Fence rather than guess.
            tracing::error!(write, "store acknowledgement out of order; fencing");
            self.fence();
            return;
        }
        self.unacked.pop_front();
        let after = self.held.remove(&write).unwrap_or_default();
        if !ok {
            self.fence();
            return;
        }
        for a in after {
            match a {
                After::Act(act) => self.actions.push_back(act),
                After::AssignDurable(seq) => {
                    if let Some(a) = self.assigns.get_mut(&seq) {
                        a.durable = true;
                    }
                }
                After::SlaveAssignDurable(origin, seq) => {
                    if let Some(w) = self.applied_assigns.get_mut(&(origin, seq)) {
                        *w = None;
                    }
                }
            }
        }
    }

    fn fence(&mut self) {
        self.fenced = true;
        self.held.clear();
        // Answer every request still waiting so no client hangs.
        let reqs: Vec<ReqId> = self.assigns.values().map(|a| a.req).collect();
        self.assigns.clear();
        self.actions.retain(|a| matches!(a, Action::Answer { .. }));
        for req in reqs {
            self.answer(
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

    pub(crate) fn relay_id(&self, seq: u64) -> RelayId {
        RelayId {
            origin: self.cfg.node_id.clone(),
            seq,
        }
    }

    pub(crate) fn me(&self) -> &str {
        &self.cfg.node_id
    }

    pub(crate) fn topology(&self) -> Arc<kagi_control::Topology> {
        self.cfg.topology.clone()
    }
}
