//! The in-memory network the core-level tests share: one `KeyManager` per node, every message
//! delivered at once (or held, for tests that deliver by hand), link key handed to both ends of
//! each link, and frozen nodes that neither receive, send nor run their timers.
//!
//! Each test binary uses its own part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kagi_control::{LinkSpec, NodeSpec, Topology};
use kagi_keymat::Key;
use kagi_km::record::Record;
use kagi_km::{
    Action, AdvertAuth, AdvertSignError, AppCall, AppReply, Input, Instant, KeyManager, KmConfig,
    Limits, NodeId, PeerMsg, Policy, Refusal, Snapshot,
};

/// A test signer for link-state adverts: a keyed hash with a secret per node (derived from its
/// name; every verifier can compute every secret, which a test simply does not do when it plays
/// a forger).
#[derive(Debug)]
pub struct TestAuth {
    pub me: String,
}

/// `origin`'s tag over `bytes`.
pub fn test_tag(origin: &str, bytes: &[u8]) -> Vec<u8> {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(b"test advert secret of ");
    h.write(origin.as_bytes());
    h.write(bytes);
    h.finish().to_le_bytes().to_vec()
}

impl AdvertAuth for TestAuth {
    fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, AdvertSignError> {
        Ok(test_tag(&self.me, bytes))
    }

    fn verify(&self, origin: &str, bytes: &[u8], sig: &[u8]) -> bool {
        test_tag(origin, bytes) == sig
    }
}

/// A topology of `nodes` (one SAE each, `sae-<node>`) and 10 km `links`.
pub fn topology(name: &str, nodes: &[&str], links: &[(&str, &str)]) -> Arc<Topology> {
    Arc::new(Topology {
        name: name.into(),
        seed: 1,
        epoch_unix: 0,
        rate_multiplier: 1.0,
        insecure_demo_links: false,
        nodes: nodes
            .iter()
            .map(|n| NodeSpec {
                id: n.to_string(),
                saes: vec![format!("sae-{n}")],
                ..Default::default()
            })
            .collect(),
        links: links
            .iter()
            .map(|(a, b)| LinkSpec {
                a: a.to_string(),
                b: b.to_string(),
                length_km: 10.0,
                ..Default::default()
            })
            .collect(),
    })
}

/// Small pools that refill by relays of 128 bytes, two in flight: what the routing tests watch.
pub fn small_pools() -> Policy {
    Policy {
        pool_target_bytes: 1024,
        idle_floor_bytes: 1024,
        relay_chunk_bytes: 128,
        max_relays_in_flight: 2,
        ..Policy::default()
    }
}

/// The link key the network hands out: `len` bytes per block, byte `j` of block `b` on link
/// `i` (topology order) is `j ^ i·salt ^ b`, so a test can rebuild any block it needs.
#[derive(Clone, Copy, Debug)]
pub struct LinkKey {
    pub len: u32,
    pub salt: u8,
}

impl LinkKey {
    /// Block `block` of link number `link`.
    pub fn block(&self, link: usize, block: u64) -> Vec<u8> {
        (0..self.len)
            .map(|j| (j as u8) ^ (link as u8).wrapping_mul(self.salt) ^ (block as u8))
            .collect()
    }
}

/// Rewrites a message `from` sends `to` before it goes on the wire (a compromised sender).
pub type Tamper = Box<dyn FnMut(&str, &str, &mut PeerMsg)>;

pub struct Net {
    pub topo: Arc<Topology>,
    pub kms: BTreeMap<String, KeyManager>,
    pub now: Instant,
    /// Every message sent, in order: (from, to, msg).
    pub wire: Vec<(String, String, PeerMsg)>,
    /// When each message of `wire` was sent (same index).
    pub wire_at: Vec<Instant>,
    /// Records written, per node.
    pub written: BTreeMap<String, Vec<Record>>,
    pub answers: BTreeMap<u64, Result<AppReply, Refusal>>,
    /// Nodes that receive nothing, send nothing and whose timers do not run; nobody is told.
    pub frozen: BTreeSet<String>,
    /// Off: messages go on `wire` only, the test delivers what it wants.
    pub auto_deliver: bool,
    pub tamper: Option<Tamper>,
    /// Links (either orientation) that get no link key now.
    pub starved: BTreeSet<(NodeId, NodeId)>,
    pub link_key: LinkKey,
    next_block: u64,
}

impl Net {
    /// Every node of `topo` with `policy`, a fresh core seeded by `seed(node)` at `start`. No
    /// link key yet: call `link_blocks`.
    pub fn new(
        topo: Arc<Topology>,
        policy: Policy,
        seed: impl Fn(&str) -> [u8; 32],
        start: Instant,
        link_key: LinkKey,
    ) -> Self {
        Self::with_auth(topo, policy, seed, start, link_key, |_| None)
    }

    /// Like [`Net::new`], each node's adverts signed and verified by `auth(node)`.
    pub fn with_auth(
        topo: Arc<Topology>,
        policy: Policy,
        seed: impl Fn(&str) -> [u8; 32],
        start: Instant,
        link_key: LinkKey,
        auth: impl Fn(&str) -> Option<Arc<dyn AdvertAuth>>,
    ) -> Self {
        let kms = topo
            .nodes
            .iter()
            .map(|n| {
                let cfg = KmConfig {
                    node_id: NodeId::from(n.id.clone()),
                    topology: topo.clone(),
                    limits: Limits::default(),
                    policy: policy.clone(),
                    advert_auth: auth(&n.id),
                    advert_run_base: 0,
                };
                let km = KeyManager::restore(cfg, Snapshot::default(), seed(&n.id), Instant(0));
                (n.id.clone(), km)
            })
            .collect();
        Net {
            topo,
            kms,
            now: start,
            wire: vec![],
            wire_at: vec![],
            written: BTreeMap::new(),
            answers: BTreeMap::new(),
            frozen: BTreeSet::new(),
            auto_deliver: true,
            tamper: None,
            starved: BTreeSet::new(),
            link_key,
            next_block: 0,
        }
    }

    fn is_starved(&self, a: &str, b: &str) -> bool {
        self.starved.contains(&(a.into(), b.into())) || self.starved.contains(&(b.into(), a.into()))
    }

    /// The next block of link key on every link that is not starved, to both ends.
    pub fn link_blocks(&mut self) {
        let block = self.next_block;
        self.next_block += 1;
        let links: Vec<(String, String)> = self
            .topo
            .links
            .iter()
            .map(|l| (l.a.clone(), l.b.clone()))
            .collect();
        for (i, (a, b)) in links.iter().enumerate() {
            if self.is_starved(a, b) {
                continue;
            }
            let k = Key::from_vec(self.link_key.block(i, block));
            for (x, y) in [(a, b), (b, a)] {
                self.input(
                    x,
                    Input::LinkKeys {
                        peer: NodeId::from(y.clone()),
                        block,
                        key: k.clone(),
                    },
                );
            }
        }
    }

    pub fn input(&mut self, node: &str, i: Input) {
        if self.frozen.contains(node) {
            return;
        }
        let now = self.now;
        self.kms.get_mut(node).unwrap().handle(now, i);
        self.drain(node);
    }

    /// Runs `node`'s actions: stores succeed, answers are kept, messages are sent.
    pub fn drain(&mut self, node: &str) {
        let mut sends = Vec::new();
        loop {
            let km = self.kms.get_mut(node).unwrap();
            let Some(a) = km.poll_action() else { break };
            match a {
                Action::Send { to, msg } => sends.push((node.to_string(), to, msg)),
                Action::Store { write, batch } => {
                    self.written
                        .entry(node.to_string())
                        .or_default()
                        .extend(batch);
                    km.handle(self.now, Input::Stored { write, ok: true });
                }
                Action::Answer { req, reply } => {
                    self.answers.insert(req, reply);
                }
            }
        }
        for (from, to, mut msg) in sends {
            if let Some(t) = self.tamper.as_mut() {
                t(&from, &to, &mut msg);
            }
            self.wire.push((from.clone(), to.to_string(), msg.clone()));
            self.wire_at.push(self.now);
            if self.auto_deliver {
                self.input(
                    &to,
                    Input::Peer {
                        from: NodeId::from(from),
                        msg,
                    },
                );
            }
        }
    }

    /// Takes every message sent so far off the wire.
    pub fn take_wire(&mut self) -> Vec<(String, String, PeerMsg)> {
        self.wire_at.clear();
        std::mem::take(&mut self.wire)
    }

    /// Messages sent at or after `t`.
    pub fn sent_since(&self, t: Instant) -> impl Iterator<Item = &(String, String, PeerMsg)> {
        self.wire
            .iter()
            .zip(&self.wire_at)
            .filter(move |(_, at)| **at >= t)
            .map(|(m, _)| m)
    }

    /// Advances time by `ms` in 10 ms steps, with a block of link key every whole second,
    /// running every timer that is due.
    pub fn run(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now = Instant(self.now.0 + 10_000_000);
            if self.now.0.is_multiple_of(1_000_000_000) {
                self.link_blocks();
            }
            self.timers(false);
        }
    }

    /// Advances time by `ms` at once and runs every node's timer, due or not.
    pub fn tick(&mut self, ms: u64) {
        self.now = Instant(self.now.0 + ms * 1_000_000);
        self.timers(true);
    }

    fn timers(&mut self, always: bool) {
        let names: Vec<String> = self.kms.keys().cloned().collect();
        for n in names {
            if self.frozen.contains(&n) {
                continue;
            }
            let now = self.now;
            let km = self.kms.get_mut(&n).unwrap();
            if always || km.poll_timeout().is_some_and(|t| t <= now) {
                km.handle_timeout(now);
            }
            self.drain(&n);
        }
    }

    /// The route `from`'s pool to `to` relays over.
    pub fn route(&self, from: &str, to: &str) -> Vec<String> {
        let st = self.kms[from].km_status();
        st.pools
            .iter()
            .find(|p| p.peer == to)
            .unwrap()
            .route
            .iter()
            .map(NodeId::to_string)
            .collect()
    }

    /// Whether `at` counts `peer` as up.
    pub fn peer_up(&self, at: &str, peer: &str) -> bool {
        let st = self.kms[at].km_status();
        st.links.iter().find(|l| l.peer == peer).unwrap().peer_up
    }

    /// Spends `from`'s whole pool towards `to` (so refill must relay again), as `sae-<from>`.
    pub fn drain_pool(&mut self, from: &str, to: &str) {
        let mut req = 1000 + self.answers.len() as u64;
        while self.kms[from].pool_free(to) >= 32 {
            let n = (self.kms[from].pool_free(to) / 32).min(64);
            self.input(
                from,
                Input::App {
                    req,
                    call: AppCall::EncKeys {
                        master: format!("sae-{from}"),
                        slave: format!("sae-{to}"),
                        number: Some(n),
                        size_bits: Some(256),
                        additional_slaves: vec![],
                        route: None,
                    },
                },
            );
            assert!(
                matches!(self.answers.get(&req), Some(Ok(_))),
                "{:?}",
                self.answers.get(&req)
            );
            req += 1;
        }
    }

    /// Paths of the relay hops towards `to` that `from` sent since `t`.
    pub fn relay_paths_since(&self, from: &str, to: &str, t: Instant) -> Vec<Vec<String>> {
        self.sent_since(t)
            .filter_map(|(f, _, m)| match m {
                PeerMsg::RelayHop { path, .. }
                    if f == from && path.last().is_some_and(|d| d == to) =>
                {
                    Some(path.iter().map(NodeId::to_string).collect())
                }
                _ => None,
            })
            .collect()
    }
}
