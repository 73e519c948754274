//! Adaptive direction split of link key (`crate::grants`): under one-way demand the idle end
//! grants its half, so the busy end gets most of the link; and the two ends never spend the
//! same bits, with messages lost, duplicated and reordered, and either end restarting, even
//! from an older copy of its store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use kagi_control::Topology;
use kagi_keymat::Key;
use kagi_km::msgs::{Span, GRANTED};
use kagi_km::record::Record;
use kagi_km::{
    Action, AppCall, Input, Instant, KeyManager, KmConfig, Limits, LinkGrantPolicy, PeerMsg,
    Policy, Snapshot,
};

const STEP_NS: u64 = 10_000_000;
/// Bytes of each link block (both halves).
const BLOCK: usize = 2048;

type Store = BTreeMap<(&'static str, String), Record>;

/// A byte range one hop spent: `(start, end, index of the hop)`.
type Used = (u32, u32, usize);

/// Nodes a and b on one QKD link, driven step by step; every message sent is kept.
struct Net {
    kms: BTreeMap<&'static str, KeyManager>,
    cfgs: BTreeMap<&'static str, KmConfig>,
    stores: BTreeMap<&'static str, Store>,
    now: Instant,
    queue: VecDeque<(&'static str, &'static str, PeerMsg)>,
    /// Every relay hop sent: (from, to, pad spans).
    hops: Vec<(&'static str, &'static str, Vec<Span>)>,
    rng: u64,
    p_loss: u64,
    p_dup: u64,
    next_block: u64,
    link_key_in: u64,
    restarts: u8,
}

fn other(n: &str) -> &'static str {
    if n == "a" {
        "b"
    } else {
        "a"
    }
}

impl Net {
    /// `a_busy`: a relays to b as fast as the link allows; b relays only what `b_demand` asks.
    fn new(grants: bool) -> Self {
        let t = Arc::new(Topology::line("t", &["a", "b"], 10.0, |n| {
            vec![format!("sae-{n}")]
        }));
        let base = Policy {
            relay_chunk_bytes: 1024,
            max_relays_in_flight: 8,
            link_grants: grants.then(LinkGrantPolicy::default),
            liveness: None,
            ..Policy::default()
        };
        let busy = Policy {
            pool_target_bytes: 1 << 30,
            idle_floor_bytes: 1 << 30,
            idle_relays_in_flight: 8,
            ..base.clone()
        };
        let idle = Policy {
            pool_target_bytes: 2048,
            idle_floor_bytes: 2048,
            relay_chunk_bytes: 512,
            ..base
        };
        let mut net = Net {
            kms: BTreeMap::new(),
            cfgs: BTreeMap::new(),
            stores: BTreeMap::new(),
            now: Instant(1),
            queue: VecDeque::new(),
            hops: vec![],
            rng: 0x9e37_79b9_7f4a_7c15,
            p_loss: 0,
            p_dup: 0,
            next_block: 0,
            link_key_in: 0,
            restarts: 0,
        };
        for (n, policy) in [("a", busy), ("b", idle)] {
            let cfg = KmConfig {
                node_id: n.into(),
                topology: t.clone(),
                limits: Limits::default(),
                policy,
                advert_auth: None,
                advert_run_base: 0,
            };
            net.cfgs.insert(n, cfg.clone());
            net.stores.insert(n, Store::new());
            let km = KeyManager::restore(cfg, Snapshot::default(), [n.as_bytes()[0]; 32], net.now);
            net.kms.insert(n, km);
            net.drain(n);
        }
        for n in ["a", "b"] {
            net.input(
                n,
                Input::PeerUp {
                    peer: other(n).into(),
                },
            );
        }
        net
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 1000
    }

    fn input(&mut self, node: &'static str, i: Input) {
        let now = self.now;
        self.kms.get_mut(node).unwrap().handle(now, i);
        self.drain(node);
    }

    fn drain(&mut self, node: &'static str) {
        loop {
            let km = self.kms.get_mut(node).unwrap();
            let Some(a) = km.poll_action() else { break };
            match a {
                Action::Send { to, msg } => {
                    let to = if to == "a" { "a" } else { "b" };
                    if let PeerMsg::RelayHop { pad, .. } | PeerMsg::ShareHop { pad, .. } = &msg {
                        self.hops.push((node, to, pad.clone()));
                    }
                    self.queue.push_back((node, to, msg));
                }
                Action::Store { write, batch } => {
                    Snapshot::apply(self.stores.get_mut(node).unwrap(), &batch);
                    km.handle(self.now, Input::Stored { write, ok: true });
                }
                Action::Answer { .. } => {}
            }
        }
    }

    /// One step: a link block to both ends, timers, then every queued message (some lost, some
    /// twice, in an order shuffled a little).
    fn step(&mut self) {
        self.now = Instant(self.now.0 + STEP_NS);
        let b = self.next_block;
        self.next_block += 1;
        let key: Vec<u8> = (0..BLOCK)
            .map(|i| (i as u64 ^ b.wrapping_mul(31)) as u8)
            .collect();
        for n in ["a", "b"] {
            self.input(
                n,
                Input::LinkKeys {
                    peer: other(n).into(),
                    block: b,
                    key: Key::from_slice(&key),
                },
            );
        }
        self.link_key_in += BLOCK as u64;
        for n in ["a", "b"] {
            let now = self.now;
            self.kms.get_mut(n).unwrap().handle_timeout(now);
            self.drain(n);
        }
        let mut msgs: Vec<_> = self.queue.drain(..).collect();
        if msgs.len() > 1 && self.rand() < 300 {
            let i = self.rand() as usize % msgs.len();
            let j = self.rand() as usize % msgs.len();
            msgs.swap(i, j);
        }
        for (from, to, msg) in msgs {
            if self.rand() < self.p_loss {
                continue;
            }
            if self.rand() < self.p_dup {
                self.input(
                    to,
                    Input::Peer {
                        from: from.into(),
                        msg: msg.clone(),
                    },
                );
            }
            self.input(
                to,
                Input::Peer {
                    from: from.into(),
                    msg,
                },
            );
        }
    }

    /// `node` asks for a little key to the other node (its pool drains, so it keeps relaying).
    fn demand(&mut self, node: &'static str) {
        self.input(
            node,
            Input::App {
                req: 1,
                call: AppCall::EncKeys {
                    master: format!("sae-{node}"),
                    slave: format!("sae-{}", other(node)),
                    number: Some(1),
                    size_bits: Some(256),
                    additional_slaves: vec![],
                    route: None,
                },
            },
        );
    }

    /// `node` crashes and restarts from `store` (its own, or an older copy of it).
    fn restart(&mut self, node: &'static str, store: Store) {
        self.restarts += 1;
        let peer = other(node);
        self.input(peer, Input::PeerDown { peer: node.into() });
        let snap = Snapshot {
            records: store.values().cloned().collect(),
        };
        self.stores.insert(node, store);
        let seed = [node.as_bytes()[0] ^ self.restarts; 32];
        let km = KeyManager::restore(self.cfgs[node].clone(), snap, seed, self.now);
        self.kms.insert(node, km);
        self.drain(node);
        self.input(node, Input::PeerUp { peer: peer.into() });
        self.input(peer, Input::PeerUp { peer: node.into() });
    }

    /// Share of the link's key that `node` spent.
    fn share(&self, node: &str) -> f64 {
        self.kms[node].stats().link_key_spent as f64 / self.link_key_in as f64
    }

    /// Every byte sent with, per (owner of the half, block): panics if two hops used one.
    fn assert_no_overlap(&self) {
        // (owner, block) → (start, end, hop index)
        let mut used: BTreeMap<(&str, u64), Vec<Used>> = BTreeMap::new();
        for (i, (from, to, pad)) in self.hops.iter().enumerate() {
            for s in pad {
                // A span in granted bytes lies in the receiver's half.
                let owner = if s.id & GRANTED != 0 { *to } else { *from };
                used.entry((owner, s.id & !GRANTED)).or_default().push((
                    s.start,
                    s.start + s.len,
                    i,
                ));
            }
        }
        let mut checked = 0;
        for ((owner, block), mut ranges) in used {
            ranges.sort();
            for w in ranges.windows(2) {
                assert!(
                    w[0].1 <= w[1].0,
                    "hops {} ({}→) and {} ({}→) both spent bytes {}..{} of {owner}'s half of block {block}",
                    w[0].2,
                    self.hops[w[0].2].0,
                    w[1].2,
                    self.hops[w[1].2].0,
                    w[1].0,
                    w[0].1.min(w[1].1),
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "too few spans to check ({checked})");
    }
}

/// One-way demand a → b: with grants a spends more than 80 % of the link's key; with the fixed
/// split at most half.
#[test]
fn one_way_demand_gets_most_of_the_link() {
    let mut with = Net::new(true);
    let mut without = Net::new(false);
    for _ in 0..600 {
        with.step();
        without.step();
    }
    let (s_with, s_without) = (with.share("a"), without.share("a"));
    eprintln!(
        "a spent {:.1} % of the link's key with grants, {:.1} % without",
        100.0 * s_with,
        100.0 * s_without
    );
    assert!(s_without <= 0.5, "fixed split: {s_without}");
    assert!(s_with > 0.8, "with grants a got only {s_with} of the link");
    assert!(with.kms["b"].stats().link_key_granted_out > 0);
    assert!(with.kms["a"].stats().link_key_granted_in > 0);
    with.assert_no_overlap();
    without.assert_no_overlap();
}

/// The two ends never spend the same bits: lost, duplicated and reordered messages, b (the
/// grantor) restarting from its store and later from an older copy of it, a (the grantee)
/// restarting; b relays a little all along, so it spends its own half between grants.
#[test]
fn ends_never_spend_the_same_bits() {
    let mut net = Net::new(true);
    net.p_loss = 50;
    net.p_dup = 50;
    let mut copy = None;
    for i in 0..900 {
        if i % 7 == 0 {
            net.demand("b");
        }
        match i {
            150 => copy = Some(net.stores["b"].clone()),
            250 => {
                let s = net.stores["b"].clone();
                net.restart("b", s);
            }
            400 => {
                let s = net.stores["a"].clone();
                net.restart("a", s);
            }
            600 => net.restart("b", copy.take().unwrap()),
            _ => {}
        }
        net.step();
    }
    let (a, b) = (net.kms["a"].stats(), net.kms["b"].stats());
    eprintln!(
        "granted b→a {} bytes, a→b {}; a spent {:.1} %, b {:.1} %",
        b.link_key_granted_out,
        a.link_key_granted_out,
        100.0 * net.share("a"),
        100.0 * net.share("b")
    );
    assert!(b.link_key_granted_out > 0 && a.link_key_granted_in > 0);
    assert!(b.link_key_spent > 0, "b relayed too");
    net.assert_no_overlap();
}

/// A grant gives away only the sender's own bits: b naming bytes of a's half as granted (spans
/// flagged [`GRANTED`] that a never granted) gets nothing, and a "grant" from b naming every
/// block whole moves only b's half (a's stored copy of it), never a's own.
#[test]
fn a_peer_cannot_grant_itself_the_other_ends_bits() {
    let mut net = Net::new(true);
    for _ in 0..20 {
        net.step();
    }
    let stats = net.kms["a"].stats();
    let msg = PeerMsg::RelayHop {
        relay: kagi_km::msgs::RelayId {
            origin: "b".into(),
            epoch: net.kms["b"].epoch(),
            seq: 999,
        },
        path: vec!["b".into(), "a".into()],
        pad: vec![Span {
            id: 19 | GRANTED,
            start: 0,
            len: 64,
        }],
        ct: vec![0; 32],
        tag: kagi_keymat::Tag([0; 16]),
    };
    net.input(
        "a",
        Input::Peer {
            from: "b".into(),
            msg,
        },
    );
    let after = net.kms["a"].stats();
    assert_eq!(after.replays_rejected, stats.replays_rejected + 1);
    assert_eq!(after.relays_received, stats.relays_received);

    let own = |net: &Net| -> Vec<Record> {
        net.stores["a"]
            .values()
            .filter(|r| {
                matches!(
                    r,
                    Record::LinkBlock {
                        half: kagi_km::record::Half::Tx,
                        ..
                    }
                )
            })
            .cloned()
            .collect()
    };
    let (own_before, free_before) = (own(&net), net.kms["a"].link_tx_free("b"));
    assert!(!own_before.is_empty());
    let spans = (0..20)
        .map(|id| Span {
            id,
            start: 0,
            len: (BLOCK / 2) as u32,
        })
        .chain((0..20).map(|id| Span {
            id: id | GRANTED,
            start: 0,
            len: (BLOCK / 2) as u32,
        }))
        .collect();
    let epoch = net.kms["b"].epoch();
    net.input(
        "a",
        Input::Peer {
            from: "b".into(),
            msg: PeerMsg::LinkKeyGranted { epoch, spans },
        },
    );
    assert_eq!(own(&net), own_before, "a's own half changed");
    assert!(net.kms["a"].link_tx_free("b") >= free_before);
}

/// The grantor's store is restored from a copy taken before it granted blocks (which the
/// grantee then spent): its neighbour's `Seen` makes it drop them before it spends again, so it
/// never spends what it granted, though b now relays a lot from its (restored) own half.
#[test]
fn a_grantor_restored_from_an_older_copy_never_spends_what_it_granted() {
    let mut net = Net::new(true);
    let mut copy = None;
    for i in 0..400 {
        match i {
            60 => copy = Some(net.stores["b"].clone()),
            200 => net.restart("b", copy.take().unwrap()),
            _ => {}
        }
        if i > 200 {
            net.demand("b");
        }
        net.step();
    }
    let (a, b) = (net.kms["a"].stats(), net.kms["b"].stats());
    assert!(a.link_key_granted_in > 0);
    assert!(b.link_key_spent > 4096, "b spent {}", b.link_key_spent);
    net.assert_no_overlap();
}
