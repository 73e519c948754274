//! The virtual network: one real [`KeyManager`] per node, a discrete-event queue keyed by
//! `(time, seq)`, and every fault the node runtime meets in the field, injected from a seed.
//!
//! * Messages: seeded loss, duplication and latency (reordering falls out of random latency);
//!   partitions that cut node pairs, with `PeerDown`/`PeerUp` at both ends as the node's peer
//!   connections would report them.
//! * Store: a virtual store per node that keeps only what was written. Writes complete in order;
//!   a write may fail (`Stored { ok: false }`), which fences the core; nothing after a failed
//!   write is written (as `kagi_node::store::writer_loop`), and the node restarts from what the
//!   store holds after [`Faults::restart_delay`] (as the node's driver, which also drops the old
//!   writer's acknowledgements).
//! * Crashes: [`Sim::crash`] (each in-flight batch may or may not have reached the disk, as a
//!   prefix), [`Sim::power_loss`] (no in-flight batch survives; acknowledged ones do, under
//!   `synchronous = FULL`), and [`Sim::crash_after_actions`] (a crash at any action boundary, for
//!   instance between a commit and the reply that depended on it).
//! * A hostile neighbour: a node that runs no core; [`Sim::inject`] sends anything in its name
//!   and [`Sim::take_hostile_inbox`] shows what the honest nodes sent it (see [`crate::hostile`]).
//!
//! Every answer is checked by the [`Oracle`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use kagi_km::fixed_hash::FixedMap;
use kagi_km::record::Snapshot;
use kagi_km::{
    Action, AppCall, AppReply, Input, Instant, KeyManager, KmConfig, Limits, NodeId, PeerMsg,
    Policy, Record, Refusal,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::oracle::{Asked, Oracle};

mod link_key;
mod photon;
pub use photon::PhotonLinkStats;

/// Network and storage fault model.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Probability that a message is lost.
    pub p_loss: f64,
    /// Probability that a message is delivered twice.
    pub p_dup: f64,
    /// Latency range (uniform).
    pub latency: (Duration, Duration),
    /// Latency range of store writes (uniform).
    pub store_latency: (Duration, Duration),
    /// Probability that a store write fails (disk full, I/O error).
    pub p_store_fail: f64,
    /// How long a fenced node waits before it restarts from its store (the driver waits 200 ms).
    pub restart_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            p_loss: 0.0,
            p_dup: 0.0,
            latency: (Duration::from_micros(200), Duration::from_millis(2)),
            store_latency: (Duration::from_micros(50), Duration::from_micros(500)),
            p_store_fail: 0.0,
            restart_delay: Duration::from_millis(200),
        }
    }
}

/// Link key production of the simulated QKD links.
#[derive(Debug, Clone)]
pub struct LinkSupply {
    /// Interval between blocks.
    pub interval: Duration,
    /// Bytes per block (both halves).
    pub block_bytes: usize,
}

impl Default for LinkSupply {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(10),
            block_bytes: 4 * 8192,
        }
    }
}

/// How many faults a run injected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Crashes (including those at an action boundary).
    pub crashes: u64,
    /// Power losses.
    pub power_losses: u64,
    /// Failed store writes.
    pub store_failures: u64,
    /// Restarts after a failed write.
    pub fence_restarts: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Messages sent by a hostile node.
    pub hostile_msgs: u64,
    /// Application replies lost with their node.
    pub lost_replies: u64,
    /// Databases wiped.
    pub wipes: u64,
    /// Databases replaced by an earlier copy.
    pub rollbacks: u64,
    /// Nodes frozen (as by SIGSTOP).
    pub freezes: u64,
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: NodeId,
        from: NodeId,
        msg: PeerMsg,
    },
    StoreDone {
        node: NodeId,
        incarnation: u64,
        write: u64,
    },
    Timer {
        node: NodeId,
        incarnation: u64,
    },
    LinkBlock {
        link: usize,
        block: u64,
    },
    Restart {
        node: NodeId,
        incarnation: u64,
    },
    /// A photon link's frame, records or deadline.
    Photon(photon::PhotonEvent),
}

struct SimNode {
    km: Option<KeyManager>,
    hostile: bool,
    incarnation: u64,
    durable: Durable,
    in_flight: BTreeMap<u64, Vec<Record>>,
    /// A write of this incarnation failed: the writer writes nothing more for it.
    write_failed: bool,
    timer_at: Option<Instant>,
    /// When its core last said it wants [`KeyManager::handle_timeout`] (its `poll_timeout`):
    /// a timer event finding it later than now is stale and calls nothing.
    due_at: Option<Instant>,
    /// Its place in the topology: timers due at the same instant run in this order, before
    /// every other event of that instant, so when a node is woken does not depend on when its
    /// timer was set.
    order: u64,
    last_store_at: Instant,
    /// Crash after this many more actions.
    crash_after: Option<u32>,
    /// The next write holding a record that matches fails (a targeted store fault).
    fail_when: Option<fn(&Record) -> bool>,
    /// Application requests waiting for an answer here.
    waiting: BTreeSet<u64>,
    /// Frozen (as by SIGSTOP): its core runs nothing, messages and link key to it are lost,
    /// requests to it are refused, and its peers are told nothing.
    frozen: bool,
}

/// A copy of one node's store, from [`Sim::backup`].
#[derive(Clone)]
pub struct StoreCopy(Durable);

/// A node's virtual store: the latest record of each entity. Hashed, since every batch of every
/// node is applied to one (an ordered map spent most of its time comparing entity keys); a
/// restart reads it sorted by key ([`sorted_records`]), so runs do not depend on the hasher.
type Durable = kagi_km::fixed_hash::FixedMap<kagi_km::record::EntityKey, Record>;

/// Where events other than timers sort among those of one instant: after the timers (whose
/// `seq` is their node's place), in the order they were queued. A node's timer at an instant
/// thus runs before anything else reaches it then, as it would in a run that ticks always.
const EVENT_SEQ: u64 = 1 << 62;

/// One FNV-1a step: the trace hash and the key digest fold values in with it.
fn fnv_step(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0100_0000_01b3)
}

/// Folds a message's wire encoding into hash `h`, eight bytes at a time (a message's length
/// is folded in last, so trailing zeros count), without building the bytes; returns the hash
/// and the length.
fn hash_encoding(h: u64, msg: &PeerMsg) -> (u64, u64) {
    postcard::serialize_with_flavor(msg, HashFlavor { h, len: 0, word: 0 })
        .expect("peer messages always encode")
}

/// A postcard output that hashes the bytes it is given, a little-endian word at a time, and
/// counts them.
struct HashFlavor {
    h: u64,
    len: u64,
    /// The bytes since the last whole word.
    word: u64,
}

impl postcard::ser_flavors::Flavor for HashFlavor {
    type Output = (u64, u64);

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.word |= u64::from(b) << (8 * (self.len % 8));
        self.len += 1;
        if self.len.is_multiple_of(8) {
            self.h = fnv_step(self.h, self.word);
            self.word = 0;
        }
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        let mut rest = bytes;
        while !self.len.is_multiple_of(8) {
            let Some((b, r)) = rest.split_first() else {
                return Ok(());
            };
            self.try_push(*b)?;
            rest = r;
        }
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            let w: [u8; 8] = w.try_into().expect("chunks of eight");
            self.h = fnv_step(self.h, u64::from_le_bytes(w));
        }
        self.len += (rest.len() - words.remainder().len()) as u64;
        for b in words.remainder() {
            self.try_push(*b)?;
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<(u64, u64)> {
        Ok((fnv_step(fnv_step(self.h, self.word), self.len), self.len))
    }
}

/// The records of a store in entity-key order, as an ordered map would give them.
fn sorted_records(d: &Durable) -> Vec<Record> {
    let mut entries: Vec<_> = d.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries.into_iter().map(|(_, r)| r.clone()).collect()
}

/// An answer an application got.
#[derive(Debug)]
pub struct Answered {
    /// Node that answered.
    pub node: String,
    /// The answer.
    pub reply: Result<AppReply, Refusal>,
}

/// Picks messages by `(from, to, msg)` (see [`Sim::drop_messages`]).
pub type MsgFilter = fn(&str, &str, &PeerMsg) -> bool;

/// The simulated network.
pub struct Sim {
    topo: Arc<Topology>,
    /// Each topology link's two ends, as IDs (a link block reaches both, millions of times a
    /// simulated day).
    link_ends: Vec<(NodeId, NodeId)>,
    /// Where each SAE of `topo` is attached (`topo` never changes in a run), shared with every
    /// core: one table in cache, not one per node.
    sae_index: Arc<kagi_control::SaeIndex>,
    /// The current virtual time.
    pub now: Instant,
    /// `(at, seq, serial, slot)`: events run by time, then `seq`, then in the order queued.
    queue: BinaryHeap<Reverse<(Instant, u64, u64, usize)>>,
    /// Queued events by slot (the queue orders the slots); a slot is reused once its event ran.
    events: Vec<Option<Event>>,
    free_slots: Vec<usize>,
    /// A node's actions being handled (kept to reuse its allocation).
    drained: Vec<Action>,
    next_ev: u64,
    seq: u64,
    /// Hashed: looked up for every event. Never iterated where order matters: `ids` is.
    nodes: FixedMap<NodeId, SimNode>,
    /// The node IDs, sorted: the order every walk over the nodes takes, so that a run does not
    /// depend on the hasher.
    ids: Vec<NodeId>,
    rng: ChaCha20Rng,
    /// Loss, duplication and latency of heartbeats: their own stream, so that a run with
    /// heartbeats gives every other message the fate it has in the same run without them.
    beat_rng: ChaCha20Rng,
    seed: u64,
    /// Fault model (may be changed between steps).
    pub faults: Faults,
    supply: LinkSupply,
    /// Interval between blocks of each link (the supply's interval unless set per link).
    link_intervals: Vec<Duration>,
    policy: Policy,
    next_req: u64,
    answers: BTreeMap<u64, Answered>,
    asked: BTreeMap<u64, (String, Asked)>,
    /// When each request in `asked` was made.
    asked_at: BTreeMap<u64, Instant>,
    /// Requests whose reply the application never reads (see [`Sim::call_losing_reply`]).
    drop_replies: BTreeSet<u64>,
    /// Messages to lose on purpose, and how many more (see [`Sim::drop_messages`]).
    drop_msgs: Option<(MsgFilter, u32)>,
    /// `enc_keys` requests in progress when a slave's node lost its database: the keys they
    /// are answered with may be gone at that node (it may have confirmed them before).
    lost_slaves: BTreeMap<u64, BTreeSet<String>>,
    oracle: Oracle,
    /// Node pairs that cannot reach each other (both orders).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Messages honest nodes sent to hostile ones: `(hostile, from, msg)`.
    hostile_inbox: Vec<(String, String, PeerMsg)>,
    /// Newest block produced on each link.
    last_block: Vec<Option<u64>>,
    /// Faults injected so far.
    pub counts: FaultCounts,
    /// A hash of everything the nodes did (every action: each message with its bytes, store
    /// write and answer) and when, for the determinism check. Events that made no node act
    /// (a timer with nothing due, a message a node ignored) leave it alone, so a node that
    /// sleeps through ticks that would do nothing leaves the same trace.
    pub trace_hash: u64,
    /// The simulated time last folded into [`trace_hash`](Self::trace_hash).
    hashed_at: Option<Instant>,
    /// Whether [`trace_hash`](Self::trace_hash) is kept (see [`Sim::keep_trace`]).
    tracing: bool,
    /// Times a node's timer woke its core (`handle_timeout`), all nodes together.
    pub timer_wakeups: u64,
    /// Link pad bytes honest nodes sent hops with (`None`: not checked; see
    /// [`Sim::check_pads`]).
    pads: Option<crate::pads::PadLedger>,
    /// Whether the nodes skip refill ticks that cannot change anything (see
    /// [`Sim::skip_quiet_refills`]).
    skip_quiet_refills: bool,
    /// Whether the nodes keep their deadlines across echoes (see
    /// [`Sim::keep_echo_deadlines`]).
    keep_echo_deadlines: bool,
    /// Whether link blocks are delivered as lazy keys (see [`Sim::lazy_link_key`]).
    lazy_link_key: bool,
    /// A hash of the bytes of every key answered to an SAE (see [`Sim::key_digest`]).
    key_digest: u64,
    /// Link key bytes produced (see [`Sim::link_key_produced`]).
    link_key_produced: Arc<std::sync::atomic::AtomicU64>,
    /// Every node's advert secret: honest nodes sign their link-state adverts and verify
    /// everyone's (see [`crate::advert_auth`]).
    advert_secrets: crate::advert_auth::Secrets,
    /// Link-state advert messages honest nodes sent, and their encoded bytes.
    pub advert_msgs: u64,
    /// Whether the safety oracle sees every answer ([`check_keys`](Self::check_keys)).
    check_keys: bool,
    /// Whether acknowledged writes are applied to the nodes' virtual stores
    /// ([`keep_stores`](Self::keep_stores)).
    keep_stores: bool,
    /// Encoded bytes of the link-state adverts honest nodes sent.
    pub advert_bytes: u64,
    /// Links run at photon level (see [`Sim::run_photon_links`]).
    photon: photon::PhotonLinks,
}

impl Sim {
    /// A simulation of `topo` with the given seed, faults, link supply and pool policy.
    pub fn new(
        topo: Topology,
        seed: u64,
        faults: Faults,
        supply: LinkSupply,
        policy: Policy,
    ) -> Self {
        Self::with_hostile(topo, &[], seed, faults, supply, policy)
    }

    /// Like [`new`](Self::new), with the nodes in `hostile` running no core: they only send
    /// what [`inject`](Self::inject) makes them send.
    pub fn with_hostile(
        topo: Topology,
        hostile: &[&str],
        seed: u64,
        faults: Faults,
        supply: LinkSupply,
        policy: Policy,
    ) -> Self {
        let topo = Arc::new(topo);
        let grace = policy.slave_grace;
        let mut sim = Sim {
            sae_index: Arc::new(topo.sae_index()),
            link_ends: topo
                .links
                .iter()
                .map(|l| (NodeId::from(&l.a), NodeId::from(&l.b)))
                .collect(),
            topo: topo.clone(),
            now: Instant(1_000_000),
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_slots: Vec::new(),
            drained: Vec::new(),
            next_ev: 0,
            seq: 0,
            nodes: FixedMap::default(),
            ids: Vec::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            beat_rng: ChaCha20Rng::seed_from_u64(seed ^ 0x6865_6172_7462_6561),
            seed,
            faults,
            link_intervals: vec![supply.interval; topo.links.len()],
            supply,
            policy,
            next_req: 1,
            answers: BTreeMap::new(),
            asked: BTreeMap::new(),
            asked_at: BTreeMap::new(),
            drop_replies: BTreeSet::new(),
            drop_msgs: None,
            lost_slaves: BTreeMap::new(),
            oracle: Oracle::new(seed).with_grace(grace),
            cut: BTreeSet::new(),
            hostile_inbox: Vec::new(),
            last_block: vec![None; topo.links.len()],
            counts: FaultCounts::default(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            tracing: true,
            hashed_at: None,
            timer_wakeups: 0,
            pads: None,
            skip_quiet_refills: true,
            keep_echo_deadlines: true,
            lazy_link_key: true,
            key_digest: 0xcbf2_9ce4_8422_2325,
            link_key_produced: Arc::default(),
            advert_secrets: crate::advert_auth::secrets(
                seed,
                topo.nodes.iter().map(|n| n.id.as_str()),
            ),
            advert_msgs: 0,
            keep_stores: true,
            check_keys: true,
            advert_bytes: 0,
            photon: photon::PhotonLinks::new(seed),
        };
        for (order, n) in topo.nodes.iter().enumerate() {
            // Nodes join one by one (each starts seeing those before it), in `ids` sorted.
            let id = NodeId::from(&n.id);
            let at = sim.ids.partition_point(|x| *x < id);
            sim.ids.insert(at, id.clone());
            sim.nodes.insert(
                id,
                SimNode {
                    km: None,
                    hostile: hostile.contains(&n.id.as_str()),
                    incarnation: 0,
                    durable: Durable::default(),
                    in_flight: BTreeMap::new(),
                    write_failed: false,
                    fail_when: None,
                    timer_at: None,
                    due_at: None,
                    order: order as u64,
                    last_store_at: Instant::ZERO,
                    crash_after: None,
                    waiting: BTreeSet::new(),
                    frozen: false,
                },
            );
            if !hostile.contains(&n.id.as_str()) {
                sim.start_node(&n.id);
            }
        }
        for i in 0..topo.links.len() {
            let at = sim.now + sim.supply.interval;
            sim.push(at, Event::LinkBlock { link: i, block: 0 });
        }
        sim
    }

    fn km_config(&self, node: &str) -> KmConfig {
        KmConfig {
            node_id: NodeId::from(node),
            topology: self.topo.clone(),
            limits: Limits::default(),
            policy: self.policy.clone(),
            advert_auth: Some(Arc::new(crate::advert_auth::SimAdvertAuth::new(
                node,
                self.advert_secrets.clone(),
            ))),
            // Grows with every start, also from an older or empty store (as the node's
            // wall clock does).
            advert_run_base: self.now.0,
        }
    }

    fn start_node(&mut self, id: &str) {
        let cfg = self.km_config(id);
        let n = self.nodes.get_mut(id).expect("node");
        n.incarnation += 1;
        n.write_failed = false;
        n.crash_after = None;
        n.in_flight.clear();
        let snap = Snapshot {
            records: sorted_records(&n.durable),
        };
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        for (i, b) in id.bytes().enumerate() {
            seed[8 + i % 16] ^= b;
        }
        seed[24..].copy_from_slice(&n.incarnation.to_le_bytes());
        let mut km = KeyManager::restore(cfg, snap, seed, self.now);
        // Built from `self.topo`, which every core's configuration carries.
        km.share_sae_index(self.sae_index.clone());
        km.skip_quiet_refills(self.skip_quiet_refills);
        km.keep_echo_deadlines(self.keep_echo_deadlines);
        // The node's peer connections come up only to the nodes it can reach.
        let unreachable: Vec<NodeId> = self
            .ids
            .iter()
            .filter(|p| p.as_str() != id && !self.reachable(id, p))
            .cloned()
            .collect();
        for peer in unreachable {
            km.handle(self.now, Input::PeerDown { peer });
        }
        let n = self.nodes.get_mut(id).expect("node");
        n.km = Some(km);
        n.timer_at = None;
        self.drain(&NodeId::from(id));
        self.tell_peers(id, true);
        self.photon_node_up(id);
    }

    /// Whether `to` is running and not cut off from `from`.
    fn reachable(&self, from: &str, to: &str) -> bool {
        let n = &self.nodes[to];
        (n.km.is_some() || n.hostile) && !self.cut.contains(&(NodeId::from(from), NodeId::from(to)))
    }

    /// Reports `node` up or down to every running node that can reach it.
    fn tell_peers(&mut self, node: &str, up: bool) {
        let others: Vec<NodeId> = self
            .ids
            .iter()
            .filter(|id| id.as_str() != node && self.nodes[id.as_str()].km.is_some())
            .filter(|id| !self.cut.contains(&((*id).clone(), NodeId::from(node))))
            .cloned()
            .collect();
        for o in others {
            self.peer_event(&o, node, up);
        }
    }

    fn peer_event(&mut self, at: &str, peer: &str, up: bool) {
        let now = self.now;
        let Some(km) = self.nodes.get_mut(at).and_then(|n| n.km.as_mut()) else {
            return;
        };
        let peer = NodeId::from(peer);
        km.handle(
            now,
            if up {
                Input::PeerUp { peer }
            } else {
                Input::PeerDown { peer }
            },
        );
        self.drain(&NodeId::from(at));
    }

    fn push(&mut self, at: Instant, ev: Event) {
        self.seq += 1;
        let seq = EVENT_SEQ + self.seq;
        self.push_ordered(at, seq, ev);
    }

    /// Events at one instant run in `seq` order.
    fn push_ordered(&mut self, at: Instant, seq: u64, ev: Event) {
        let serial = self.next_ev;
        self.next_ev += 1;
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.events[slot] = Some(ev);
                slot
            }
            None => {
                self.events.push(Some(ev));
                self.events.len() - 1
            }
        };
        self.queue.push(Reverse((at, seq, serial, slot)));
    }

    fn latency(&mut self, range: (Duration, Duration)) -> Duration {
        draw_latency(&mut self.rng, range)
    }

    fn mix(&mut self, x: u64) {
        if !self.tracing {
            return;
        }
        // Each time at which something happened, once.
        if self.hashed_at != Some(self.now) {
            self.hashed_at = Some(self.now);
            self.trace_hash = fnv_step(self.trace_hash, self.now.0);
        }
        self.trace_hash = fnv_step(self.trace_hash, x);
    }

    fn mix_bytes(&mut self, b: &[u8]) {
        for x in b {
            self.mix(u64::from(*x));
        }
    }

    /// Drains a node's actions and re-arms its timer.
    fn drain(&mut self, key: &NodeId) {
        // Looked up by ID, not by `&str`: hashed and compared inline, once per drain.
        let id: &str = key;
        // Every action the core has now, taken at once: handling one never reaches back into
        // the core, so this is the order and the outcome of taking them one by one.
        let mut acts = std::mem::take(&mut self.drained);
        let crash_at = {
            let n = self.nodes.get_mut(key).expect("node");
            let Some(km) = n.km.as_mut() else { return };
            while let Some(act) = km.poll_action() {
                acts.push(act);
            }
            // Heartbeats and link-state adverts do not count as action boundaries, so that a
            // seeded crash point falls where it falls in the same run without them.
            n.crash_after.as_mut().and_then(|c| {
                acts.iter().position(|act| {
                    let beat = matches!(
                        act,
                        Action::Send {
                            msg: PeerMsg::Heartbeat | PeerMsg::LinkState { .. },
                            ..
                        }
                    );
                    if beat {
                        return false;
                    }
                    if *c == 0 {
                        return true;
                    }
                    *c -= 1;
                    false
                })
            })
        };
        // A crash at that action boundary: that action and the ones after it never happen.
        let taken = crash_at.unwrap_or(acts.len());
        for act in acts.drain(..).take(taken) {
            match act {
                Action::Send { to, msg } => {
                    self.mix(1);
                    let advert = matches!(msg, PeerMsg::LinkState { .. });
                    if self.tracing || advert {
                        let (hash, len) = hash_encoding(self.trace_hash, &msg);
                        if self.tracing {
                            self.trace_hash = hash;
                        }
                        if advert {
                            self.advert_msgs += 1;
                            self.advert_bytes += len;
                        }
                    }
                    // Links to a hostile node: it holds the whole link key anyway (and sends no
                    // honest `Seen` to protect a restored neighbour's half), so nothing is checked.
                    if let (
                        Some(p),
                        PeerMsg::RelayHop { pad, .. } | PeerMsg::ShareHop { pad, .. },
                    ) = (self.pads.as_mut(), &msg)
                    {
                        if self.nodes.get(&to).is_some_and(|n| !n.hostile) {
                            if let Err(e) = p.spend(id, &to, pad) {
                                panic!("seed {}: {e}", self.seed);
                            }
                        }
                    }
                    if let Some((f, left)) = self.drop_msgs.as_mut() {
                        if *left > 0 && f(id, &to, &msg) {
                            *left -= 1;
                            continue;
                        }
                    }
                    let beat = matches!(msg, PeerMsg::Heartbeat | PeerMsg::LinkState { .. });
                    let rng = if beat {
                        &mut self.beat_rng
                    } else {
                        &mut self.rng
                    };
                    if rng.gen_bool(self.faults.p_loss) {
                        continue;
                    }
                    let copies = if rng.gen_bool(self.faults.p_dup) {
                        2
                    } else {
                        1
                    };
                    let mut parcel = Some((to, msg));
                    for copy in 1..=copies {
                        let lat = if beat {
                            draw_latency(&mut self.beat_rng, self.faults.latency)
                        } else {
                            self.latency(self.faults.latency)
                        };
                        let at = self.now + lat;
                        // The last copy takes the message itself.
                        let (to, msg) = if copy == copies {
                            parcel.take()
                        } else {
                            parcel.clone()
                        }
                        .expect("one message per copy");
                        self.push(
                            at,
                            Event::Deliver {
                                to,
                                from: key.clone(),
                                msg,
                            },
                        );
                    }
                }
                Action::Store { write, batch } => {
                    self.mix(2 ^ write);
                    self.mix(batch.len() as u64);
                    let lat = self.latency(self.faults.store_latency);
                    let n = self.nodes.get_mut(key).expect("node");
                    let inc = n.incarnation;
                    n.in_flight.insert(write, batch);
                    // Writes complete in order: never before the previous one.
                    let at = (self.now + lat).max(n.last_store_at);
                    n.last_store_at = at;
                    self.push(
                        at,
                        Event::StoreDone {
                            node: key.clone(),
                            incarnation: inc,
                            write,
                        },
                    );
                }
                Action::Answer { req, reply } => {
                    self.mix(3 ^ req);
                    if let Ok(AppReply::Keys(k)) = &reply {
                        for k in k {
                            self.mix_bytes(k.id.as_bytes());
                            for b in k.key.expose() {
                                self.key_digest = fnv_step(self.key_digest, u64::from(*b));
                            }
                        }
                    }
                    self.nodes.get_mut(key).expect("node").waiting.remove(&req);
                    if let Some((_, asked)) = self.asked.get(&req).filter(|_| self.check_keys) {
                        if self.drop_replies.remove(&req) {
                            let at = self.asked_at.get(&req).copied().unwrap_or(self.now);
                            self.oracle.lost(asked, at);
                        } else {
                            self.oracle.answered(id, asked, &reply);
                        }
                    }
                    if let (Some(nodes), Ok(AppReply::Keys(keys)), true) =
                        (self.lost_slaves.remove(&req), &reply, self.check_keys)
                    {
                        let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
                        for n in nodes {
                            self.oracle.lost_with(&ids, &n);
                        }
                    }
                    self.answers.insert(
                        req,
                        Answered {
                            node: id.to_string(),
                            reply,
                        },
                    );
                }
            }
        }
        self.drained = acts;
        if crash_at.is_some() {
            self.crash(id);
            return;
        }
        let n = self.nodes.get_mut(key).expect("node");
        n.due_at = n.km.as_ref().and_then(|k| k.poll_timeout());
        self.arm_timer_at(key.clone());
    }

    /// Queues a timer event for when `id`'s core is next due, unless one at or before then
    /// is queued already.
    fn arm_timer_at(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node");
        if let Some(t) = n.due_at {
            if n.timer_at.is_none_or(|old| t < old || old <= self.now) {
                n.timer_at = Some(t);
                let (inc, order) = (n.incarnation, n.order);
                self.push_ordered(
                    t.max(self.now),
                    order,
                    Event::Timer {
                        node: id,
                        incarnation: inc,
                    },
                );
            }
        }
    }

    /// Submits an application call at `node`; returns the request id.
    pub fn call(&mut self, node: &str, call: AppCall) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        let asked = match &call {
            AppCall::EncKeys {
                master,
                slave,
                additional_slaves,
                ..
            } => Asked::Enc {
                master: master.clone(),
                slaves: std::iter::once(slave)
                    .chain(additional_slaves)
                    .map(|s| {
                        let n = self.sae_index.node_id(s).cloned();
                        (s.clone(), n.unwrap_or_default())
                    })
                    .collect(),
            },
            AppCall::DecKeys { slave, key_ids, .. } => Asked::Dec {
                slave: slave.clone(),
                ids: key_ids.clone(),
            },
            AppCall::Status { .. } => Asked::Other,
        };
        self.asked.insert(req, (node.to_string(), asked));
        self.asked_at.insert(req, self.now);
        let now = self.now;
        match self.nodes.get_mut(node) {
            Some(n) if n.km.is_some() && !n.frozen => {
                n.waiting.insert(req);
                n.km.as_mut()
                    .expect("running")
                    .handle(now, Input::App { req, call });
                self.drain(&NodeId::from(node));
            }
            _ => {
                self.drop_replies.remove(&req);
                self.answers.insert(
                    req,
                    Answered {
                        node: node.to_string(),
                        reply: Err(Refusal::Unavailable("connection refused: node down".into())),
                    },
                );
            }
        }
        req
    }

    /// Whether some answer waits to be read with [`answer`](Self::answer).
    pub fn has_answers(&self) -> bool {
        !self.answers.is_empty()
    }

    /// The requests whose answers wait to be read, in the order they were made.
    pub fn answered_requests(&self) -> Vec<u64> {
        self.answers.keys().copied().collect()
    }

    /// The answer to a request, once given.
    pub fn answer(&mut self, req: u64) -> Option<Answered> {
        let a = self.answers.remove(&req);
        if a.is_some() {
            self.asked.remove(&req);
            self.asked_at.remove(&req);
        }
        a
    }

    /// Like [`call`](Self::call), but the application never reads the reply (its client gave
    /// up, or the connection broke after the node answered): the oracle counts keys in it as
    /// not received. The answer can still be read with [`answer`](Self::answer) (to compare
    /// bytes in a test).
    pub fn call_losing_reply(&mut self, node: &str, call: AppCall) -> u64 {
        self.drop_replies.insert(self.next_req);
        self.call(node, call)
    }

    /// Runs one event. Returns false when nothing is queued.
    pub fn step(&mut self) -> bool {
        let Some(Reverse((at, _, _, slot))) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        let ev = self.events[slot].take().expect("event");
        self.free_slots.push(slot);
        let now = self.now;
        match ev {
            Event::Deliver { to, from, msg } => {
                // (Partitions are rare: no pair of names is built for every message.)
                if !self.cut.is_empty() && self.cut.contains(&(from.clone(), to.clone())) {
                    return true;
                }
                let n = self.nodes.get_mut(&to).expect("node");
                if n.hostile {
                    if self.hostile_inbox.len() < 4096 {
                        self.hostile_inbox
                            .push((to.to_string(), from.to_string(), msg));
                    }
                } else if n.frozen {
                    // What a frozen process does not read is lost to it (modelled as loss:
                    // its connections' buffers are not replayed when it thaws).
                } else if let Some(km) = n.km.as_mut() {
                    km.handle(now, Input::Peer { from, msg });
                    self.drain(&to);
                }
            }
            Event::StoreDone {
                node,
                incarnation,
                write,
            } => self.store_done(&node, incarnation, write),
            Event::Timer { node, incarnation } => {
                let n = self.nodes.get_mut(&node).expect("node");
                if n.incarnation != incarnation || n.km.is_none() || n.frozen {
                    return true;
                }
                if n.timer_at.is_some_and(|t| t <= now) {
                    n.timer_at = None;
                }
                // Only when something is due: a core is never woken for nothing, however
                // often its timer was set and moved.
                if n.due_at.is_some_and(|t| t <= now) {
                    n.km.as_mut().expect("running").handle_timeout(now);
                    self.timer_wakeups += 1;
                    self.drain(&node);
                } else {
                    // Not woken, the core is as it was when it last said when it is due
                    // (`poll_timeout` reads only its state): its outbox is empty and its due
                    // time stands.
                    self.arm_timer_at(node);
                }
            }
            // A photon link's key comes from its machines, not as rate-level blocks.
            Event::LinkBlock { link, .. } if self.photon.is_photon(link) => {}
            Event::Photon(ev) => self.photon_step(ev),
            Event::LinkBlock { link, block } => {
                self.last_block[link] = Some(block);
                let (a, b) = self.link_ends[link].clone();
                // Both ends share the block's one allocation (`Key` clones copy on write), or
                // one lazy key whose bytes are produced only where a node reads them.
                let key = self
                    .block_source(link, block)
                    .key(self.supply.block_bytes, self.lazy_link_key);
                for (me, peer) in [(&a, &b), (&b, &a)] {
                    if let Some(km) = self
                        .nodes
                        .get_mut(me)
                        .filter(|n| !n.frozen)
                        .and_then(|n| n.km.as_mut())
                    {
                        km.handle(
                            now,
                            Input::LinkKeys {
                                peer: peer.clone(),
                                block,
                                key: key.clone(),
                            },
                        );
                        self.drain(me);
                    }
                }
                let at = now + self.link_intervals[link];
                self.push(
                    at,
                    Event::LinkBlock {
                        link,
                        block: block + 1,
                    },
                );
            }
            Event::Restart { node, incarnation } => {
                let n = &self.nodes[&node];
                if n.incarnation == incarnation && n.km.as_ref().is_some_and(|k| k.is_fenced()) {
                    self.counts.fence_restarts += 1;
                    self.stop(&node, false);
                    self.start_node(&node);
                }
            }
        }
        true
    }

    fn store_done(&mut self, node: &NodeId, incarnation: u64, write: u64) {
        if self.nodes[node].frozen {
            // The write waits for the process to run again.
            let inc = incarnation;
            self.push(
                self.now + Duration::from_millis(10),
                Event::StoreDone {
                    node: node.clone(),
                    incarnation: inc,
                    write,
                },
            );
            return;
        }
        let fail = self.rng.gen_bool(self.faults.p_store_fail);
        let now = self.now;
        let delay = self.faults.restart_delay;
        let n = self.nodes.get_mut(node).expect("node");
        if n.incarnation != incarnation || n.km.is_none() {
            return;
        }
        let Some(batch) = n.in_flight.remove(&write) else {
            return;
        };
        let targeted = n.fail_when.is_some_and(|f| batch.iter().any(f));
        if targeted {
            n.fail_when = None;
        }
        // After a failed write the writer writes nothing more for this core.
        let ok = !fail && !targeted && !n.write_failed;
        if ok {
            if self.keep_stores {
                Snapshot::apply_owned(&mut n.durable, batch);
            }
        } else if !n.write_failed {
            n.write_failed = true;
            self.counts.store_failures += 1;
            self.push(
                now + delay,
                Event::Restart {
                    node: node.clone(),
                    incarnation,
                },
            );
        }
        let n = self.nodes.get_mut(node).expect("node");
        n.km.as_mut()
            .expect("running")
            .handle(now, Input::Stored { write, ok });
        self.drain(node);
    }

    /// Runs events until virtual time passes `d` from now.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse((at, ..))) = self.queue.peek() {
            if *at > end {
                break;
            }
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// Runs until request `req` is answered or `limit` of virtual time passes.
    pub fn run_until_answered(&mut self, req: u64, limit: Duration) -> Option<Answered> {
        let end = self.now + limit;
        while !self.answers.contains_key(&req) && self.now < end {
            if !self.step() {
                break;
            }
        }
        self.answer(req)
    }

    /// Stops a node's core. After a `crash` each in-flight batch may have reached the disk (a
    /// prefix, by seeded coins); otherwise none has. Requests waiting there lose their reply.
    fn stop(&mut self, id: &str, crash: bool) {
        let coins: Vec<bool> = (0..self.nodes[id].in_flight.len())
            .map(|_| crash && self.rng.gen_bool(0.5))
            .collect();
        assert!(
            self.keep_stores,
            "node {id} stopped in a run that keeps no stores (Sim::keep_stores)"
        );
        let n = self.nodes.get_mut(id).expect("node");
        if n.km.take().is_none() {
            return;
        }
        n.frozen = false;
        let mut keep = !n.write_failed;
        for ((_, batch), c) in std::mem::take(&mut n.in_flight).into_iter().zip(coins) {
            keep = keep && c;
            if keep {
                Snapshot::apply_owned(&mut n.durable, batch);
            }
        }
        n.timer_at = None;
        n.crash_after = None;
        let waiting = std::mem::take(&mut n.waiting);
        self.photon_node_down(id);
        for req in waiting {
            self.counts.lost_replies += 1;
            // After a crash the commit behind a lost reply may be on disk (a `dec_keys` spent
            // without its reply: the delivery window). Power loss and a failed write keep
            // nothing that was not acknowledged, and every acknowledged reply was given.
            if crash && self.check_keys {
                if let Some((_, asked)) = self.asked.get(&req) {
                    let at = self.asked_at.get(&req).copied().unwrap_or(self.now);
                    self.oracle.lost(asked, at);
                }
            }
            self.answers.insert(
                req,
                Answered {
                    node: id.to_string(),
                    reply: Err(Refusal::Unavailable(
                        "connection lost: the node went down".into(),
                    )),
                },
            );
        }
        self.tell_peers(id, false);
    }

    /// Freezes a running node, as SIGSTOP does: it keeps its connections open, so its peers
    /// get no `PeerDown`; only its silence (heartbeats) can tell them. Messages and link key
    /// sent to it while frozen are lost, and requests to it are refused.
    pub fn freeze(&mut self, id: &str) {
        if let Some(n) = self.nodes.get_mut(id) {
            if n.km.is_some() && !n.frozen {
                n.frozen = true;
                self.counts.freezes += 1;
                self.mix(0xf0);
            }
        }
    }

    /// Thaws a frozen node: its timer runs again at once.
    pub fn thaw(&mut self, id: &str) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(id) else {
            return;
        };
        if !std::mem::take(&mut n.frozen) {
            return;
        }
        n.timer_at = None;
        if let Some(km) = n.km.as_mut() {
            km.handle_timeout(now);
        }
        self.mix(0xf1);
        self.drain(&NodeId::from(id));
        self.photon_thawed(id);
    }

    /// Whether a node is frozen.
    pub fn is_frozen(&self, id: &str) -> bool {
        self.nodes.get(id).is_some_and(|n| n.frozen)
    }

    /// Crashes a node: its core, timers and replies not yet given are gone; each in-flight batch
    /// survives or not by a seeded coin, as a prefix (the disk may have written it).
    pub fn crash(&mut self, id: &str) {
        if self.nodes[id].km.is_some() {
            self.counts.crashes += 1;
            self.mix(0xc0);
            self.stop(id, true);
        }
    }

    /// Crashes a node after it has emitted `n` more actions (0: before the next one), so a crash
    /// can fall between any two of them: after a commit and before its reply, between two sends.
    pub fn crash_after_actions(&mut self, id: &str, n: u32) {
        if let Some(node) = self.nodes.get_mut(id) {
            if node.km.is_some() {
                node.crash_after = Some(n);
            }
        }
    }

    /// Loses the next `n` messages that `f(from, to, msg)` picks (a targeted message loss; the
    /// seeded loss of [`Faults::p_loss`] goes on as before).
    pub fn drop_messages(&mut self, f: MsgFilter, n: u32) {
        self.drop_msgs = Some((f, n));
    }

    /// Cancels every crash armed with [`crash_after_actions`](Self::crash_after_actions) that
    /// has not happened yet.
    pub fn cancel_crashes(&mut self) {
        for n in self.nodes.values_mut() {
            n.crash_after = None;
        }
    }

    /// Cuts power to a node: like a crash, but no in-flight batch reaches the disk. What the
    /// store acknowledged survives (`synchronous = FULL`).
    pub fn power_loss(&mut self, id: &str) {
        if self.nodes[id].km.is_some() {
            self.counts.power_losses += 1;
            self.mix(0xb0);
            self.stop(id, false);
        }
    }

    /// Loses a node's whole database (a disk replaced, or a node re-provisioned) and stops it;
    /// [`restart`](Self::restart) then starts it empty. Keys its slaves had not fetched are lost
    /// with it (the oracle stops expecting them).
    pub fn wipe(&mut self, id: &str) {
        self.counts.wipes += 1;
        self.mix(0xd0);
        self.stop(id, false);
        if let Some(n) = self.nodes.get_mut(id) {
            n.durable.clear();
        }
        self.store_lost(id);
    }

    /// `id` lost (part of) its database: keys owed to its slaves may be gone, and so may keys of
    /// assignments it confirmed whose masters are not yet answered.
    fn store_lost(&mut self, id: &str) {
        if self.check_keys {
            self.oracle.store_lost(id);
        }
        let waiting: Vec<u64> = self
            .nodes
            .values()
            .flat_map(|n| n.waiting.iter().copied())
            .collect();
        for req in waiting {
            if let Some((_, Asked::Enc { slaves, .. })) = self.asked.get(&req) {
                if slaves.iter().any(|(_, n)| n == id) {
                    self.lost_slaves
                        .entry(req)
                        .or_default()
                        .insert(id.to_string());
                }
            }
        }
    }

    /// A copy of what a node's store holds now (a backup).
    pub fn backup(&self, id: &str) -> StoreCopy {
        StoreCopy(self.nodes[id].durable.clone())
    }

    /// Stops a node and puts an earlier copy of its store in place; [`restart`](Self::restart)
    /// then starts it from that copy. Keys its slaves had not fetched may be discarded (the
    /// node cannot prove which were fetched after the copy was taken).
    pub fn restore_copy(&mut self, id: &str, copy: &StoreCopy) {
        self.counts.rollbacks += 1;
        self.mix(0xd1);
        self.stop(id, false);
        if let Some(n) = self.nodes.get_mut(id) {
            n.durable = copy.0.clone();
        }
        self.store_lost(id);
    }

    /// Makes the next write of `id` that holds a record matching `f` fail, as a full disk would
    /// (the core is fenced and restarts from its store).
    pub fn fail_write_when(&mut self, id: &str, f: fn(&Record) -> bool) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.fail_when = Some(f);
        }
    }

    /// Restarts a stopped node from its durable records.
    pub fn restart(&mut self, id: &str) {
        if self.nodes[id].km.is_none() && !self.nodes[id].hostile {
            self.start_node(id);
        }
    }

    /// Whether a node's core is running.
    pub fn is_up(&self, id: &str) -> bool {
        self.nodes.get(id).is_some_and(|n| n.km.is_some())
    }

    /// Cuts every pair of nodes on different sides (`side` against the rest); both ends of each
    /// cut pair see the other go down.
    pub fn partition(&mut self, side: &[&str]) {
        self.counts.partitions += 1;
        let ids = self.ids.clone();
        let (left, right): (Vec<&NodeId>, Vec<&NodeId>) =
            ids.iter().partition(|n| side.contains(&n.as_str()));
        for l in &left {
            for r in &right {
                if self.cut.insert(((*l).clone(), (*r).clone())) {
                    self.cut.insert(((*r).clone(), (*l).clone()));
                    self.peer_event(l, r, false);
                    self.peer_event(r, l, false);
                }
            }
        }
    }

    /// Heals every partition: the nodes that can now reach each other see each other up.
    pub fn heal(&mut self) {
        let cut = std::mem::take(&mut self.cut);
        for (a, b) in cut {
            if self.is_up(&b) || self.nodes[&*b].hostile {
                self.peer_event(&a, &b, true);
            }
        }
    }

    /// Sends `msg` in the name of `from` (authenticated as `from` by the transport, as a
    /// compromised node's messages would be).
    pub fn inject(&mut self, from: &str, to: &str, msg: PeerMsg) {
        self.counts.hostile_msgs += 1;
        let at = self.now + self.latency(self.faults.latency);
        self.push(
            at,
            Event::Deliver {
                to: NodeId::from(to),
                from: NodeId::from(from),
                msg,
            },
        );
    }

    /// Messages honest nodes sent to hostile ones since the last call: `(hostile, from, msg)`.
    pub fn take_hostile_inbox(&mut self) -> Vec<(String, String, PeerMsg)> {
        std::mem::take(&mut self.hostile_inbox)
    }

    /// From now on, panics (with the seed) when an honest node sends a relay hop with link pad
    /// bytes that were sent with before, by either end of the link.
    pub fn check_pads(&mut self) {
        self.pads.get_or_insert_with(Default::default);
    }

    /// Link pad bytes recorded since [`check_pads`](Self::check_pads).
    pub fn pad_bytes(&self) -> u64 {
        self.pads.as_ref().map_or(0, |p| p.bytes)
    }

    /// The bytes of block `block` of link number `link` (both halves), as both ends get them.
    pub fn link_block(&self, link: usize, block: u64) -> Vec<u8> {
        self.block_source(link, block)
            .bytes(self.supply.block_bytes)
    }

    /// The key stream of block `block` of link number `link`.
    fn block_source(&self, link: usize, block: u64) -> link_key::BlockSource {
        link_key::BlockSource::new(
            self.topo.link_seed(&self.topo.links[link]),
            block,
            self.link_key_produced.clone(),
        )
    }

    /// Whether link blocks reach the nodes as lazy keys, produced only where a node reads them
    /// (the default), or as bytes produced at delivery. A run is the same event for event
    /// either way (the `lazy_link_key` test checks it): lazy keys only save the time and memory
    /// of producing key nobody reads.
    pub fn lazy_link_key(&mut self, on: bool) {
        self.lazy_link_key = on;
    }

    /// Whether the safety oracle checks every answer (the default; see [`Oracle`]). It keeps
    /// every key served for the whole run, which over a simulated day of a large network is
    /// many gigabytes: a planning run that does not need the check may switch it off. The
    /// nodes run the same either way; only [`oracle`](Self::oracle) then stays empty.
    pub fn check_keys(&mut self, on: bool) {
        self.check_keys = on;
    }

    /// Whether acknowledged writes go into the nodes' virtual stores (the default). A run in
    /// which no node ever stops never reads them back, so `false` spares applying every batch
    /// (a tenth of a large study's time); each write is still made, acknowledged and ordered
    /// as before, so the run is the same event for event. Stopping a node (crash, power loss,
    /// restart) in such a run panics: it would start again from a store that was not kept.
    pub fn keep_stores(&mut self, on: bool) {
        self.keep_stores = on;
    }

    /// Whether [`trace_hash`](Self::trace_hash) is kept (the default). Folding every message's
    /// encoding into it costs a planning run that never reads it a few percent; without it the
    /// hash stays at its initial value and the run is otherwise the same event for event.
    pub fn keep_trace(&mut self, on: bool) {
        self.tracing = on;
    }

    /// Whether every node (now and after restarts) skips refill ticks that cannot change
    /// anything (the default) or runs every one: a run is the same event for event either way,
    /// which a test checks.
    pub fn skip_quiet_refills(&mut self, on: bool) {
        self.skip_quiet_refills = on;
        for n in self.nodes.values_mut() {
            if let Some(km) = n.km.as_mut() {
                km.skip_quiet_refills(on);
            }
        }
    }

    /// Whether the nodes keep `poll_timeout`'s deadlines across echoes (heartbeats, copies of
    /// held adverts; `true`, the default) or handle every echo in full: the same run either
    /// way, as a test checks.
    pub fn keep_echo_deadlines(&mut self, on: bool) {
        self.keep_echo_deadlines = on;
        for n in self.nodes.values_mut() {
            if let Some(km) = n.km.as_mut() {
                km.keep_echo_deadlines(on);
            }
        }
    }

    /// A count summed over the running nodes' cores.
    fn sum_over_cores(&self, count: fn(&KeyManager) -> u64) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| n.km.as_ref())
            .map(count)
            .sum()
    }

    /// Echoes the nodes handled without recomputing their deadlines (their current runs).
    pub fn echoes_handled(&self) -> u64 {
        self.sum_over_cores(KeyManager::echoes_handled)
    }

    /// A hash of the bytes of every key answered to an SAE so far, in order (the trace hash
    /// covers their IDs but not their bytes).
    pub fn key_digest(&self) -> u64 {
        self.key_digest
    }

    /// Link key bytes produced so far: every block's bytes at delivery, or with lazy link key
    /// only those a node (or [`link_block`](Self::link_block)) read.
    pub fn link_key_produced(&self) -> u64 {
        self.link_key_produced
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refill ticks the running nodes skipped as quiet.
    pub fn quiet_refills_skipped(&self) -> u64 {
        self.sum_over_cores(KeyManager::quiet_refills_skipped)
    }

    /// Of those, ticks skipped after a look at the destinations whose pool or demand moved.
    pub fn quiet_refills_looked(&self) -> u64 {
        self.sum_over_cores(KeyManager::quiet_refills_looked)
    }

    /// Sets the interval between blocks of each link (by link number), so that links of the
    /// same network produce key at their own rates. Takes effect from each link's next block.
    pub fn set_link_intervals(&mut self, intervals: Vec<Duration>) {
        if intervals.len() == self.link_intervals.len() {
            self.link_intervals = intervals;
        }
    }

    /// Virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Bytes of each link block (both halves: each end gets all of them).
    pub fn block_bytes(&self) -> usize {
        self.supply.block_bytes
    }

    /// The newest block produced on link number `link`.
    pub fn last_block(&self, link: usize) -> Option<u64> {
        self.last_block[link]
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The core of a running node.
    pub fn node(&self, id: &str) -> Option<&KeyManager> {
        self.nodes.get(id).and_then(|n| n.km.as_ref())
    }

    /// The oracle that checked every answer so far.
    pub fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    /// The oracle, to rule on a refusal ([`Oracle::may_be_gone`]).
    pub fn oracle_mut(&mut self) -> &mut Oracle {
        &mut self.oracle
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// A latency drawn uniformly from `range`.
fn draw_latency(rng: &mut ChaCha20Rng, range: (Duration, Duration)) -> Duration {
    let (lo, hi) = (range.0.as_nanos() as u64, range.1.as_nanos() as u64);
    Duration::from_nanos(if hi > lo { rng.gen_range(lo..=hi) } else { lo })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_km::LinkAdvert;

    /// Folds `bytes` in whole little-endian words, the last one padded with zeros, then the
    /// length.
    fn hash_bytes(h: u64, bytes: &[u8]) -> u64 {
        let mut words = bytes.chunks_exact(8);
        let mut h = (&mut words).fold(h, |h, w| {
            fnv_step(h, u64::from_le_bytes(w.try_into().expect("eight")))
        });
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        h = fnv_step(h, u64::from_le_bytes(last));
        fnv_step(h, bytes.len() as u64)
    }

    /// The trace hash folds in each message's encoding without building it: the same hash and
    /// length as folding in `PeerMsg::encode`'s bytes.
    #[test]
    fn hashing_an_encoding_equals_hashing_its_bytes() {
        let msgs = [
            PeerMsg::Heartbeat,
            PeerMsg::LinkState {
                origin: "n-07".into(),
                run: 3,
                seq: 1 << 40,
                links: vec![LinkAdvert {
                    peer: "n-08".into(),
                    up: true,
                    rate_bps: 123_456,
                    tx_bytes: 7,
                    rx_bytes: u64::MAX,
                }]
                .into(),
                sig: vec![9; 70].into(),
            },
            PeerMsg::LinkKeyWanted { bytes: 300 },
        ];
        // A trailing zero byte still changes the hash (the length is folded in).
        assert_ne!(hash_bytes(1, &[5, 6]), hash_bytes(1, &[5, 6, 0]));
        for m in &msgs {
            let bytes = m.encode();
            let want = hash_bytes(0xcbf2_9ce4_8422_2325, &bytes);
            assert_eq!(
                hash_encoding(0xcbf2_9ce4_8422_2325, m),
                (want, bytes.len() as u64)
            );
        }
    }
}
