//! Liveness at the core level: every node sends heartbeats to every other node about every
//! 500 ms, a node silent for about 2 s (frozen: its connections stay open, so no `PeerDown`
//! ever comes) is routed around, and it counts as up again as soon as it speaks.
//!
//! Topology: a reaches z over a-b-z (shortest) or a-c1-c2-z.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kagi_control::{LinkSpec, NodeSpec, Topology};
use kagi_keymat::Key;
use kagi_km::{
    Action, AppCall, AppReply, Input, Instant, KeyManager, KmConfig, Limits, LivenessPolicy,
    PeerMsg, Policy, Refusal, Snapshot,
};

fn topo() -> Arc<Topology> {
    let nodes = ["a", "b", "c1", "c2", "z"];
    let links = [
        ("a", "b"),
        ("b", "z"),
        ("a", "c1"),
        ("c1", "c2"),
        ("c2", "z"),
    ];
    Arc::new(Topology {
        name: "detour".into(),
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

/// Every node's core, messages delivered at once, and frozen nodes: a frozen node receives
/// nothing, sends nothing and its timer does not run, but nobody is told.
struct Net {
    kms: BTreeMap<String, KeyManager>,
    now: Instant,
    frozen: BTreeSet<String>,
    /// Heartbeats sent, per (from, to).
    beats: BTreeMap<(String, String), u32>,
    /// Relay hops `a` sent, with the time: (time, path).
    hops_from_a: Vec<(Instant, Vec<String>)>,
    answers: BTreeMap<u64, Result<AppReply, Refusal>>,
    next_block: u64,
}

impl Net {
    fn new(liveness: Option<LivenessPolicy>) -> Self {
        let t = topo();
        let policy = Policy {
            pool_target_bytes: 1024,
            idle_floor_bytes: 1024,
            relay_chunk_bytes: 128,
            max_relays_in_flight: 2,
            liveness,
            ..Policy::default()
        };
        let kms = t
            .nodes
            .iter()
            .map(|n| {
                let cfg = KmConfig {
                    node_id: n.id.clone(),
                    topology: t.clone(),
                    limits: Limits::default(),
                    policy: policy.clone(),
                };
                let seed = [n.id.as_bytes()[0] ^ n.id.len() as u8; 32];
                let km = KeyManager::restore(cfg, Snapshot::default(), seed, Instant(0));
                (n.id.clone(), km)
            })
            .collect();
        let mut net = Net {
            kms,
            now: Instant(0),
            frozen: BTreeSet::new(),
            beats: BTreeMap::new(),
            hops_from_a: vec![],
            answers: BTreeMap::new(),
            next_block: 0,
        };
        net.link_blocks();
        net
    }

    /// One block of link key on every link, to both ends.
    fn link_blocks(&mut self) {
        let t = topo();
        let block = self.next_block;
        self.next_block += 1;
        for (i, l) in t.links.iter().enumerate() {
            let k = Key::from_vec(
                (0..16384u32)
                    .map(|j| (j as u8) ^ (i as u8 * 37) ^ (block as u8))
                    .collect(),
            );
            for (x, y) in [(&l.a, &l.b), (&l.b, &l.a)] {
                self.input(
                    x,
                    Input::LinkKeys {
                        peer: y.clone(),
                        block,
                        key: k.clone(),
                    },
                );
            }
        }
    }

    fn input(&mut self, node: &str, i: Input) {
        if self.frozen.contains(node) {
            return;
        }
        let now = self.now;
        self.kms.get_mut(node).unwrap().handle(now, i);
        self.drain(node);
    }

    fn drain(&mut self, node: &str) {
        let mut sends = Vec::new();
        loop {
            let km = self.kms.get_mut(node).unwrap();
            let Some(a) = km.poll_action() else { break };
            match a {
                Action::Send { to, msg } => sends.push((to, msg)),
                Action::Store { write, .. } => {
                    km.handle(self.now, Input::Stored { write, ok: true })
                }
                Action::Answer { req, reply } => {
                    self.answers.insert(req, reply);
                }
            }
        }
        for (to, msg) in sends {
            match &msg {
                PeerMsg::Heartbeat => {
                    *self
                        .beats
                        .entry((node.to_string(), to.clone()))
                        .or_default() += 1
                }
                PeerMsg::RelayHop { path, .. } if node == "a" => {
                    self.hops_from_a.push((self.now, path.clone()))
                }
                _ => {}
            }
            self.input(
                &to,
                Input::Peer {
                    from: node.to_string(),
                    msg,
                },
            );
        }
    }

    /// Advances time by `ms` in 10 ms steps, running every timer that is due.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now = Instant(self.now.0 + 10_000_000);
            if self.now.0.is_multiple_of(1_000_000_000) {
                self.link_blocks();
            }
            let names: Vec<String> = self.kms.keys().cloned().collect();
            for n in names {
                if self.frozen.contains(&n) {
                    continue;
                }
                let now = self.now;
                let km = self.kms.get_mut(&n).unwrap();
                if km.poll_timeout().is_some_and(|t| t <= now) {
                    km.handle_timeout(now);
                }
                self.drain(&n);
            }
        }
    }

    fn route(&self, from: &str, to: &str) -> Vec<String> {
        let st = self.kms[from].km_status();
        st.pools
            .iter()
            .find(|p| p.peer == to)
            .unwrap()
            .route
            .clone()
    }

    fn peer_up(&self, at: &str, peer: &str) -> bool {
        let st = self.kms[at].km_status();
        st.links.iter().find(|l| l.peer == peer).unwrap().peer_up
    }

    /// Spends a's whole pool towards z (so refill must relay again).
    fn drain_pool_a_to_z(&mut self) {
        let mut req = 1000 + self.answers.len() as u64;
        while self.kms["a"].pool_free("z") >= 32 {
            let n = (self.kms["a"].pool_free("z") / 32).min(64);
            self.input(
                "a",
                Input::App {
                    req,
                    call: AppCall::EncKeys {
                        master: "sae-a".into(),
                        slave: "sae-z".into(),
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
}

fn via_b(path: &[String]) -> bool {
    path.iter().any(|n| n == "b")
}

/// Freezes b once a's pool to z is full, empties that pool, and returns how long after the
/// freeze a's pool held a relay's worth of key again (`None`: not within `limit`).
fn refill_time_after_freezing_b(net: &mut Net, limit: Duration) -> Option<Duration> {
    net.run(1000);
    assert_eq!(net.route("a", "z"), ["a", "b", "z"]);
    assert!(net.kms["a"].pool_free("z") >= 1024, "pool not warm");
    net.frozen.insert("b".into());
    let frozen_at = net.now;
    net.drain_pool_a_to_z();
    while net.now.saturating_since(frozen_at) < limit {
        net.run(10);
        if net.kms["a"].pool_free("z") >= 128 {
            return Some(net.now.saturating_since(frozen_at));
        }
    }
    None
}

#[test]
fn heartbeats_go_to_every_other_node_about_every_500_ms() {
    let mut net = Net::new(Some(LivenessPolicy::default()));
    net.run(2000);
    for from in ["a", "b", "z"] {
        for to in ["a", "b", "c1", "c2", "z"] {
            if from == to {
                assert!(!net.beats.contains_key(&(from.into(), to.into())));
                continue;
            }
            let n = net.beats[&(from.to_string(), to.to_string())];
            // At 0, 0.5, 1, 1.5 and 2 s (the first one at once).
            assert!((4..=5).contains(&n), "{from}→{to}: {n} heartbeats in 2 s");
        }
    }
}

#[test]
fn a_frozen_intermediate_node_is_routed_around_within_the_bound() {
    let mut net = Net::new(Some(LivenessPolicy::default()));
    let t = refill_time_after_freezing_b(&mut net, Duration::from_secs(10))
        .expect("a's pool to z never refilled while b was frozen");
    // Silent for 2 s, seen at the next timer run, then a relay over three hops.
    assert!(
        t <= Duration::from_millis(2600),
        "refilled only {t:?} after b froze"
    );
    // b last spoke up to one heartbeat interval before it froze.
    assert!(
        t >= Duration::from_millis(1500),
        "b declared silent too early: {t:?}"
    );
    assert_eq!(net.route("a", "z"), ["a", "c1", "c2", "z"]);
    assert!(!net.peer_up("a", "b"));
    assert!(!net.peer_up("z", "b"));
    // Every relay a started after b went silent avoids b.
    let frozen_at = Instant(1_000_000_000);
    let detected = frozen_at + Duration::from_millis(2500);
    let late: Vec<_> = net
        .hops_from_a
        .iter()
        .filter(|(at, p)| *at >= detected && via_b(p))
        .collect();
    assert!(late.is_empty(), "relays through silent b: {late:?}");
    // b thaws: it speaks, and a routes through it again.
    net.frozen.remove("b");
    net.run(600);
    assert!(net.peer_up("a", "b"));
    assert_eq!(net.route("a", "z"), ["a", "b", "z"]);
    assert!(
        net.peer_up("b", "a"),
        "b blamed its peers for its own stall"
    );
}

#[test]
fn without_heartbeats_a_frozen_node_blocks_its_routes() {
    // The control for the test above: with liveness off, nothing tells a that b froze, so its
    // relays keep going into b and the pool stays empty.
    let mut net = Net::new(None);
    assert_eq!(
        refill_time_after_freezing_b(&mut net, Duration::from_secs(5)),
        None
    );
    assert_eq!(net.route("a", "z"), ["a", "b", "z"]);
}

#[test]
fn a_node_whose_own_timer_stalled_does_not_blame_its_peers() {
    let mut net = Net::new(Some(LivenessPolicy::default()));
    net.run(1000);
    net.frozen.insert("a".into());
    net.run(5000);
    // Meanwhile its peers routed around a.
    assert!(!net.peer_up("b", "a"));
    assert_eq!(net.route("b", "c1"), ["b", "z", "c2", "c1"]);
    net.frozen.remove("a");
    // a's first timer run after the stall, before anything reaches it: nobody has spoken to it
    // for 5 s, but it was the one not listening.
    net.now = Instant(net.now.0 + 10_000_000);
    let now = net.now;
    net.kms.get_mut("a").unwrap().handle_timeout(now);
    for peer in ["b", "c1"] {
        assert!(
            net.peer_up("a", peer),
            "a marked {peer} silent after its own stall"
        );
    }
    net.drain("a");
    // Its first heartbeat after the stall tells them it is back.
    assert!(net.peer_up("b", "a"));
}
