//! Deterministic simulation of a kagi network.
//!
//! [`Sim`] runs one real [`KeyManager`] per node on a virtual network: a discrete-event queue
//! keyed by `(time, seq)`, seeded message loss, duplication and latency (reordering falls out of
//! random latency), a virtual store per node that keeps only acknowledged batches across a crash,
//! and crash/restart of nodes. Link key blocks are produced identically at both ends of every link
//! from the link's seed. Every step checks safety invariants: no key ID is delivered with two
//! different values, and no (key, side) is served twice.
//!
//! Seeds: `KAGI_SIM_SEED` picks the first seed and `KAGI_SIM_RUNS` how many consecutive seeds the
//! scenario tests run; failures print the seed.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod plan;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use kagi_keymat::Key;
use kagi_km::record::Snapshot;
use kagi_km::{
    Action, AppCall, AppReply, Input, Instant, KeyManager, KmConfig, Limits, PeerMsg, Policy,
    Record, Refusal,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use uuid::Uuid;

/// Network fault model.
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
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            p_loss: 0.0,
            p_dup: 0.0,
            latency: (Duration::from_micros(200), Duration::from_millis(2)),
            store_latency: (Duration::from_micros(50), Duration::from_micros(500)),
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

#[derive(Debug)]
enum Event {
    Deliver {
        to: String,
        from: String,
        msg: PeerMsg,
    },
    StoreDone {
        node: String,
        incarnation: u64,
        write: u64,
    },
    Timer {
        node: String,
        incarnation: u64,
    },
    LinkBlock {
        link: usize,
        block: u64,
    },
}

struct SimNode {
    km: Option<KeyManager>,
    incarnation: u64,
    durable: BTreeMap<(&'static str, String), Record>,
    in_flight: BTreeMap<u64, Vec<Record>>,
    timer_at: Option<Instant>,
    last_store_at: Instant,
}

/// An answer an application got.
#[derive(Debug)]
pub struct Answered {
    /// Node that answered.
    pub node: String,
    /// The answer.
    pub reply: Result<AppReply, Refusal>,
}

/// The simulated network.
pub struct Sim {
    topo: Arc<Topology>,
    /// The current virtual time.
    pub now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_ev: usize,
    seq: u64,
    nodes: BTreeMap<String, SimNode>,
    rng: ChaCha20Rng,
    seed: u64,
    /// Fault model (may be changed between steps).
    pub faults: Faults,
    supply: LinkSupply,
    policy: Policy,
    next_req: u64,
    answers: BTreeMap<u64, Answered>,
    /// Every key value ever served, per key id: (value, served to master?, slaves served).
    served: BTreeMap<Uuid, (Key, u32, BTreeMap<String, u32>)>,
    req_kind: BTreeMap<u64, (String, bool)>,
    /// A record of every action, for the determinism check.
    pub trace_hash: u64,
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
        let topo = Arc::new(topo);
        let mut sim = Sim {
            topo: topo.clone(),
            now: Instant(1_000_000),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_ev: 0,
            seq: 0,
            nodes: BTreeMap::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            seed,
            faults,
            supply,
            policy,
            next_req: 1,
            answers: BTreeMap::new(),
            served: BTreeMap::new(),
            req_kind: BTreeMap::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
        };
        for n in &topo.nodes {
            sim.nodes.insert(
                n.id.clone(),
                SimNode {
                    km: None,
                    incarnation: 0,
                    durable: BTreeMap::new(),
                    in_flight: BTreeMap::new(),
                    timer_at: None,
                    last_store_at: Instant::ZERO,
                },
            );
            sim.start_node(&n.id);
        }
        for i in 0..topo.links.len() {
            let at = sim.now + sim.supply.interval;
            sim.push(at, Event::LinkBlock { link: i, block: 0 });
        }
        sim
    }

    fn km_config(&self, node: &str) -> KmConfig {
        KmConfig {
            node_id: node.to_string(),
            topology: self.topo.clone(),
            limits: Limits::default(),
            policy: self.policy.clone(),
        }
    }

    fn start_node(&mut self, id: &str) {
        let cfg = self.km_config(id);
        let n = self.nodes.get_mut(id).expect("node");
        n.incarnation += 1;
        let snap = Snapshot {
            records: n.durable.values().cloned().collect(),
        };
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        for (i, b) in id.bytes().enumerate() {
            seed[8 + i % 16] ^= b;
        }
        seed[24..].copy_from_slice(&n.incarnation.to_le_bytes());
        n.km = Some(KeyManager::restore(cfg, snap, seed, self.now));
        n.timer_at = None;
        self.drain(id);
    }

    fn push(&mut self, at: Instant, ev: Event) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.seq += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at, self.seq, id)));
    }

    fn latency(&mut self, range: (Duration, Duration)) -> Duration {
        let (lo, hi) = (range.0.as_nanos() as u64, range.1.as_nanos() as u64);
        Duration::from_nanos(if hi > lo {
            self.rng.gen_range(lo..=hi)
        } else {
            lo
        })
    }

    fn mix(&mut self, x: u64) {
        self.trace_hash ^= x;
        self.trace_hash = self.trace_hash.wrapping_mul(0x0100_0000_01b3);
    }

    /// Drains a node's actions and re-arms its timer.
    fn drain(&mut self, id: &str) {
        loop {
            let act = {
                let n = self.nodes.get_mut(id).expect("node");
                match n.km.as_mut() {
                    Some(km) => km.poll_action(),
                    None => return,
                }
            };
            let Some(act) = act else { break };
            match act {
                Action::Send { to, msg } => {
                    self.mix(1);
                    if self.rng.gen_bool(self.faults.p_loss) {
                        continue;
                    }
                    let copies = if self.rng.gen_bool(self.faults.p_dup) {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let at = self.now + self.latency(self.faults.latency);
                        self.push(
                            at,
                            Event::Deliver {
                                to: to.clone(),
                                from: id.to_string(),
                                msg: msg.clone(),
                            },
                        );
                    }
                }
                Action::Store { write, batch } => {
                    self.mix(2 ^ write);
                    let inc = self.nodes[id].incarnation;
                    self.nodes
                        .get_mut(id)
                        .expect("node")
                        .in_flight
                        .insert(write, batch);
                    let lat = self.latency(self.faults.store_latency);
                    let n = self.nodes.get_mut(id).expect("node");
                    // Writes complete in order: never before the previous one.
                    let at = (self.now + lat).max(n.last_store_at);
                    n.last_store_at = at;
                    self.push(
                        at,
                        Event::StoreDone {
                            node: id.to_string(),
                            incarnation: inc,
                            write,
                        },
                    );
                }
                Action::Answer { req, reply } => {
                    self.mix(3 ^ req);
                    self.check_served(id, req, &reply);
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
        let n = self.nodes.get_mut(id).expect("node");
        let t = n.km.as_ref().and_then(|k| k.poll_timeout());
        if let Some(t) = t {
            if n.timer_at.is_none_or(|old| t < old || old <= self.now) {
                n.timer_at = Some(t);
                let inc = n.incarnation;
                self.push(
                    t.max(self.now),
                    Event::Timer {
                        node: id.to_string(),
                        incarnation: inc,
                    },
                );
            }
        }
    }

    /// Safety invariant: a key ID always carries the same bytes, and each side gets it once.
    fn check_served(&mut self, node: &str, req: u64, reply: &Result<AppReply, Refusal>) {
        if let Ok(AppReply::Status(s)) = reply {
            assert!(
                s.stored_key_count <= s.max_key_count,
                "seed {}: status at {node} counts {} stored keys over its maximum {}",
                self.seed,
                s.stored_key_count,
                s.max_key_count
            );
        }
        let Ok(AppReply::Keys(keys)) = reply else {
            return;
        };
        let (sae, is_master) = self.req_kind.get(&req).cloned().unwrap_or_default();
        for k in keys {
            let e = self
                .served
                .entry(k.id)
                .or_insert_with(|| (k.key.clone(), 0, BTreeMap::new()));
            assert!(
                e.0 == k.key,
                "seed {}: key {} served with two different values (at {node})",
                self.seed,
                k.id
            );
            if is_master {
                e.1 += 1;
                assert!(
                    e.1 == 1,
                    "seed {}: key {} served twice to its master",
                    self.seed,
                    k.id
                );
            } else {
                let c = e.2.entry(sae.clone()).or_insert(0);
                *c += 1;
                assert!(
                    *c == 1,
                    "seed {}: key {} served twice to slave {sae}",
                    self.seed,
                    k.id
                );
            }
        }
    }

    /// Submits an application call at `node`; returns the request id.
    pub fn call(&mut self, node: &str, call: AppCall) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        let kind = match &call {
            AppCall::EncKeys { master, .. } => (master.clone(), true),
            AppCall::DecKeys { slave, .. } => (slave.clone(), false),
            AppCall::Status { master, .. } => (master.clone(), true),
        };
        self.req_kind.insert(req, kind);
        let now = self.now;
        if let Some(km) = self.nodes.get_mut(node).and_then(|n| n.km.as_mut()) {
            km.handle(now, Input::App { req, call });
            self.drain(node);
        }
        req
    }

    /// The answer to a request, once given.
    pub fn answer(&mut self, req: u64) -> Option<Answered> {
        self.answers.remove(&req)
    }

    /// Runs one event. Returns false when nothing is queued.
    pub fn step(&mut self) -> bool {
        let Some(Reverse((at, _, id))) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        let ev = self.events.remove(&id).expect("event");
        let now = self.now;
        match ev {
            Event::Deliver { to, from, msg } => {
                if let Some(km) = self.nodes.get_mut(&to).and_then(|n| n.km.as_mut()) {
                    km.handle(now, Input::Peer { from, msg });
                    self.drain(&to);
                }
            }
            Event::StoreDone {
                node,
                incarnation,
                write,
            } => {
                let n = self.nodes.get_mut(&node).expect("node");
                if n.incarnation != incarnation || n.km.is_none() {
                    return true;
                }
                if let Some(batch) = n.in_flight.remove(&write) {
                    Snapshot::apply(&mut n.durable, &batch);
                }
                n.km.as_mut()
                    .expect("running")
                    .handle(now, Input::Stored { write, ok: true });
                self.drain(&node);
            }
            Event::Timer { node, incarnation } => {
                let n = self.nodes.get_mut(&node).expect("node");
                if n.incarnation != incarnation || n.km.is_none() {
                    return true;
                }
                if n.timer_at.is_some_and(|t| t <= now) {
                    n.timer_at = None;
                    n.km.as_mut().expect("running").handle_timeout(now);
                }
                self.drain(&node);
            }
            Event::LinkBlock { link, block } => {
                let l = self.topo.links[link].clone();
                let seed = self.topo.link_seed(&l);
                let mut r =
                    ChaCha20Rng::seed_from_u64(seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut bytes = vec![0u8; self.supply.block_bytes];
                r.fill_bytes(&mut bytes);
                for (me, peer) in [(&l.a, &l.b), (&l.b, &l.a)] {
                    if let Some(km) = self.nodes.get_mut(me.as_str()).and_then(|n| n.km.as_mut()) {
                        km.handle(
                            now,
                            Input::LinkKeys {
                                peer: peer.clone(),
                                block,
                                key: Key::from_slice(&bytes),
                            },
                        );
                        self.drain(me);
                    }
                }
                let at = now + self.supply.interval;
                self.push(
                    at,
                    Event::LinkBlock {
                        link,
                        block: block + 1,
                    },
                );
            }
        }
        true
    }

    /// Runs events until virtual time passes `d` from now.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
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

    /// Crashes a node: its core, timers and unacknowledged writes are gone; each in-flight batch
    /// survives or not as a whole, by a seeded coin (the disk may have written it).
    pub fn crash(&mut self, id: &str) {
        let coin: Vec<bool> = (0..self.nodes[id].in_flight.len())
            .map(|_| self.rng.gen_bool(0.5))
            .collect();
        let n = self.nodes.get_mut(id).expect("node");
        n.km = None;
        // Writes land in order: a surviving prefix of the in-flight batches.
        let mut keep = true;
        for ((_, batch), c) in std::mem::take(&mut n.in_flight).into_iter().zip(coin) {
            keep = keep && c;
            if keep {
                Snapshot::apply(&mut n.durable, &batch);
            }
        }
        n.timer_at = None;
    }

    /// Restarts a crashed node from its durable records.
    pub fn restart(&mut self, id: &str) {
        self.start_node(id);
    }

    /// The core of a running node.
    pub fn node(&self, id: &str) -> Option<&KeyManager> {
        self.nodes.get(id).and_then(|n| n.km.as_ref())
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// Seeds to run: `KAGI_SIM_SEED` (default `default`) and `KAGI_SIM_RUNS` consecutive ones
/// (default `runs`).
pub fn seeds(default: u64, runs: u64) -> impl Iterator<Item = u64> {
    let first = std::env::var("KAGI_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let n = std::env::var("KAGI_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(runs);
    first..first + n
}
