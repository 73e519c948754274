//! Link-state advertisements at the core level: every node advertises its links, adverts are
//! flooded to every node, and relays are routed by the key each link has rather than by hop
//! count.
//!
//! Topology: a diamond, a reaches z over a-b-z or a-c-z (equal hop counts; ties go to b).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kagi_control::{LinkSpec, NodeSpec, Topology};
use kagi_keymat::Key;
use kagi_km::{
    Action, AppCall, Input, Instant, KeyManager, KmConfig, Limits, LinkAdvert, PeerMsg, PeerScope,
    Policy, Snapshot,
};

const LINKS: [(&str, &str); 4] = [("a", "b"), ("b", "z"), ("a", "c"), ("c", "z")];

fn topo() -> Arc<Topology> {
    topology("diamond", &["a", "b", "c", "z"], &LINKS)
}

/// A topology of `nodes` (one SAE each, `sae-<node>`) and 10 km `links`.
fn topology(name: &str, nodes: &[&str], links: &[(&str, &str)]) -> Arc<Topology> {
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

/// Every node's core, messages delivered at once, link key once a second on every link that is
/// not starved.
struct Net {
    kms: BTreeMap<String, KeyManager>,
    now: Instant,
    /// Links that get no key now.
    starved: BTreeSet<(String, String)>,
    /// Relay hops `a` sent: (time, path).
    hops_from_a: Vec<(Instant, Vec<String>)>,
    /// Link-state adverts delivered, per (from, to, origin).
    adverts: BTreeMap<(String, String, String), u32>,
    next_block: u64,
}

impl Net {
    fn new(starved: &[(&str, &str)]) -> Self {
        Self::with(starved, true)
    }

    fn with(starved: &[(&str, &str)], link_state: bool) -> Self {
        let t = topo();
        let mut policy = Policy {
            pool_target_bytes: 1024,
            idle_floor_bytes: 1024,
            relay_chunk_bytes: 128,
            max_relays_in_flight: 2,
            ..Policy::default()
        };
        assert!(policy.link_state.is_some(), "link state is on by default");
        if !link_state {
            policy.link_state = None;
        }
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
                let seed = [n.id.as_bytes()[0]; 32];
                let km = KeyManager::restore(cfg, Snapshot::default(), seed, Instant(0));
                (n.id.clone(), km)
            })
            .collect();
        let mut net = Net {
            kms,
            now: Instant(0),
            starved: starved
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            hops_from_a: vec![],
            adverts: BTreeMap::new(),
            next_block: 0,
        };
        net.link_blocks();
        net
    }

    /// One block of link key on every link that is not starved, to both ends.
    fn link_blocks(&mut self) {
        let block = self.next_block;
        self.next_block += 1;
        for (i, (a, b)) in LINKS.iter().enumerate() {
            if self.starved.contains(&(a.to_string(), b.to_string())) {
                continue;
            }
            let k = Key::from_vec(
                (0..16384u32)
                    .map(|j| (j as u8) ^ (i as u8 * 37) ^ (block as u8))
                    .collect(),
            );
            for (x, y) in [(a, b), (b, a)] {
                self.input(
                    x,
                    Input::LinkKeys {
                        peer: y.to_string(),
                        block,
                        key: k.clone(),
                    },
                );
            }
        }
    }

    fn input(&mut self, node: &str, i: Input) {
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
                Action::Answer { .. } => {}
            }
        }
        for (to, msg) in sends {
            match &msg {
                PeerMsg::LinkState { origin, .. } => {
                    *self
                        .adverts
                        .entry((node.to_string(), to.clone(), origin.clone()))
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

    /// Spends a's whole pool towards z (so refill must relay again).
    fn drain_pool_a_to_z(&mut self) {
        let mut req = 1000;
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
            req += 1;
        }
    }

    /// Paths of the relay hops towards z that a sent since `t`.
    fn paths_since(&self, t: Instant) -> Vec<Vec<String>> {
        self.hops_from_a
            .iter()
            .filter(|(at, p)| *at >= t && p.last().is_some_and(|d| d == "z"))
            .map(|(_, p)| p.clone())
            .collect()
    }
}

fn via(path: &[String], n: &str) -> bool {
    path.iter().any(|x| x == n)
}

fn key(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// b's link to z gets no key: once the adverts have spread, a routes to z over c, and a's pool
/// to z fills; when b's link gets key again, routes may go over b again (ties go to b).
#[test]
fn relays_avoid_a_starved_link_and_return_when_it_refills() {
    let mut net = Net::new(&[("b", "z")]);
    net.run(500);
    // a is no neighbour of z: it learnt z's advert (and b's view of b–z) by flooding.
    let held = net.kms["a"].link_adverts_held();
    assert_eq!(
        held.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "c", "z"]
    );
    let pen = net.kms["a"].link_penalties();
    assert_eq!(pen[&key("a", "c")], Some(0.0), "{pen:?}");
    assert_eq!(pen[&key("c", "z")], Some(0.0), "{pen:?}");
    assert!(
        pen[&key("b", "z")].unwrap() >= 512.0,
        "b–z starved: {pen:?}"
    );
    assert_eq!(net.route("a", "z"), ["a", "c", "z"]);
    let t0 = net.now;
    net.run(5000);
    assert!(
        net.kms["a"].pool_free("z") >= 512,
        "a's pool to z did not fill over c: {} bytes",
        net.kms["a"].pool_free("z")
    );
    let after = net.paths_since(t0);
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|p| !via(p, "b")),
        "a relayed over the starved link: {after:?}"
    );

    // b's link gets key again: once b and z advertise it, it is as good as c's.
    net.starved.clear();
    net.run(2000);
    assert_eq!(net.kms["a"].link_penalties()[&key("b", "z")], Some(0.0));
    assert_eq!(net.route("a", "z"), ["a", "b", "z"]);
    let t1 = net.now;
    net.drain_pool_a_to_z();
    net.run(2000);
    let after = net.paths_since(t1);
    assert!(!after.is_empty());
    assert!(after.iter().all(|p| via(p, "b")), "{after:?}");
    assert!(net.kms["a"].pool_free("z") >= 512);
}

/// Adverts go to neighbours only, once a second, and every origin's reaches every node.
#[test]
fn adverts_flood_to_every_node_over_neighbours_only() {
    let mut net = Net::new(&[]);
    net.run(3000);
    for (from, to, _) in net.adverts.keys() {
        assert!(
            topo().link(from, to).is_some(),
            "advert sent to a non-neighbour: {from}→{to}"
        );
    }
    // a's own advert to b: at 0.01 s, 1.01, 2.01 (3 or 4 in 3 s).
    let n = net.adverts[&("a".to_string(), "b".to_string(), "a".to_string())];
    assert!((3..=4).contains(&n), "{n} adverts a→b in 3 s");
    for at in ["a", "b", "c", "z"] {
        let held = net.kms[at].link_adverts_held();
        assert_eq!(held.len(), 4, "{at}: {held:?}");
        for (origin, (_, seq)) in held {
            assert!(seq >= 3, "{at} holds {origin}'s advert {seq}");
        }
    }
    // Never back to the sender: b does not echo a's advert to a.
    assert!(!net
        .adverts
        .contains_key(&("b".to_string(), "a".to_string(), "a".to_string())));
}

/// A node may advertise only its own links: adverts naming a link their origin does not have,
/// or from a node outside the topology, are dropped whole. A forged advert of b's links (which
/// no receiver can tell from a flooded copy) cannot make b's starved link look good, because
/// z, its other end, says otherwise.
#[test]
fn forged_adverts_cannot_make_a_starved_link_look_good() {
    let mut net = Net::new(&[("b", "z")]);
    net.run(1000);
    assert_eq!(net.route("a", "z"), ["a", "c", "z"]);
    let held = net.kms["a"].link_adverts_held();
    let rich = |peer: &str| LinkAdvert {
        peer: peer.into(),
        up: true,
        rate_bps: 1 << 30,
        tx_bytes: 1 << 30,
        rx_bytes: 1 << 30,
    };
    let forge = |net: &mut Net, origin: &str, links: Vec<LinkAdvert>| {
        net.input(
            "a",
            Input::Peer {
                from: "c".into(),
                msg: PeerMsg::LinkState {
                    origin: origin.into(),
                    run: u64::MAX,
                    seq: u64::MAX,
                    links,
                },
            },
        );
    };
    // c claims a link to b (it has none) and z claims one to a.
    forge(&mut net, "c", vec![rich("z"), rich("b")]);
    forge(&mut net, "z", vec![rich("b"), rich("c"), rich("a")]);
    forge(&mut net, "x", vec![rich("a")]);
    assert_eq!(net.kms["a"].stats().link_adverts_rejected, 3);
    assert_eq!(
        net.kms["a"].link_adverts_held(),
        held,
        "a kept a forged advert"
    );
    // c passes off an advert of b's own links as a flooded copy: accepted (it cannot be told
    // apart), but z's advert still says b–z has no key.
    forge(&mut net, "b", vec![rich("a"), rich("z")]);
    assert_eq!(net.kms["a"].link_adverts_held()["b"], (u64::MAX, u64::MAX));
    net.run(1000);
    assert!(net.kms["a"].link_penalties()[&key("b", "z")].unwrap() >= 512.0);
    assert_eq!(net.route("a", "z"), ["a", "c", "z"]);
    let t0 = net.now;
    net.drain_pool_a_to_z();
    net.run(2000);
    let after = net.paths_since(t0);
    assert!(!after.is_empty());
    assert!(after.iter().all(|p| !via(p, "b")), "{after:?}");
}

/// With link state off, routes follow hop count (ties to b), as before link state existed:
/// relays to z go over b's starved link and a's pool to z stays empty.
#[test]
fn without_link_state_relays_take_the_starved_link() {
    let mut net = Net::with(&[("b", "z")], false);
    net.run(5000);
    assert!(net.adverts.is_empty());
    assert_eq!(net.route("a", "z"), ["a", "b", "z"]);
    assert_eq!(net.kms["a"].pool_free("z"), 0);
}

/// Two routes of three hops from a to z: a-b1-b2-z and a-c1-c2-z (ties go to b1).
fn two_routes() -> Arc<Topology> {
    let links = [
        ("a", "b1"),
        ("b1", "b2"),
        ("b2", "z"),
        ("a", "c1"),
        ("c1", "c2"),
        ("c2", "z"),
    ];
    topology("two-routes", &["a", "b1", "b2", "c1", "c2", "z"], &links)
}

/// With heartbeats to neighbours only (`PeerScope::Neighbours`), a node two hops away that
/// freezes is still routed around: its neighbours find it silent and advertise their links to
/// it down, the flood reaches a, and a's relays through it are failed over at once.
#[test]
fn with_neighbour_heartbeats_a_far_frozen_node_is_routed_around_by_link_state() {
    let t = two_routes();
    let policy = Policy {
        pool_target_bytes: 1024,
        idle_floor_bytes: 1024,
        relay_chunk_bytes: 128,
        max_relays_in_flight: 2,
        peers: PeerScope::Neighbours,
        ..Policy::default()
    };
    let mut kms: BTreeMap<String, KeyManager> = t
        .nodes
        .iter()
        .map(|n| {
            let cfg = KmConfig {
                node_id: n.id.clone(),
                topology: t.clone(),
                limits: Limits::default(),
                policy: policy.clone(),
            };
            let km =
                KeyManager::restore(cfg, Snapshot::default(), [n.id.len() as u8; 32], Instant(0));
            (n.id.clone(), km)
        })
        .collect();
    let frozen: std::cell::RefCell<BTreeSet<String>> = Default::default();
    let mut sent: Vec<(Instant, String, String, PeerMsg)> = Vec::new();
    let mut now = Instant(0);
    // Delivers every message at once; frozen nodes neither receive nor send nor tick.
    fn pump(
        kms: &mut BTreeMap<String, KeyManager>,
        frozen: &BTreeSet<String>,
        sent: &mut Vec<(Instant, String, String, PeerMsg)>,
        now: Instant,
        node: &str,
        input: Option<Input>,
    ) {
        if frozen.contains(node) {
            return;
        }
        let mut queue = vec![(node.to_string(), input)];
        while let Some((n, i)) = queue.pop() {
            if frozen.contains(&n) {
                continue;
            }
            let km = kms.get_mut(&n).unwrap();
            if let Some(i) = i {
                km.handle(now, i);
            }
            while let Some(a) = km.poll_action() {
                match a {
                    Action::Send { to, msg } => {
                        sent.push((now, n.clone(), to.clone(), msg.clone()));
                        queue.push((
                            to,
                            Some(Input::Peer {
                                from: n.clone(),
                                msg,
                            }),
                        ));
                    }
                    Action::Store { write, .. } => {
                        km.handle(now, Input::Stored { write, ok: true })
                    }
                    Action::Answer { .. } => {}
                }
            }
        }
    }
    let mut block = 0u64;
    let mut step = |kms: &mut BTreeMap<String, KeyManager>,
                    sent: &mut Vec<(Instant, String, String, PeerMsg)>,
                    now: &mut Instant,
                    ms: u64| {
        for _ in 0..ms / 10 {
            *now = Instant(now.0 + 10_000_000);
            let fz = frozen.borrow().clone();
            if now.0.is_multiple_of(1_000_000_000) || block == 0 {
                for (i, l) in t.links.iter().enumerate() {
                    let k = Key::from_vec(
                        (0..16384u32)
                            .map(|j| (j as u8) ^ (i as u8 * 37) ^ (block as u8))
                            .collect(),
                    );
                    for (x, y) in [(&l.a, &l.b), (&l.b, &l.a)] {
                        let inp = Input::LinkKeys {
                            peer: y.clone(),
                            block,
                            key: k.clone(),
                        };
                        pump(kms, &fz, sent, *now, x, Some(inp));
                    }
                }
                block += 1;
            }
            let names: Vec<String> = kms.keys().cloned().collect();
            for n in names {
                if fz.contains(&n) {
                    continue;
                }
                let km = kms.get_mut(&n).unwrap();
                if km.poll_timeout().is_some_and(|d| d <= *now) {
                    km.handle_timeout(*now);
                }
                pump(kms, &fz, sent, *now, &n, None);
            }
        }
    };
    let route = |kms: &BTreeMap<String, KeyManager>| {
        kms["a"]
            .km_status()
            .pools
            .iter()
            .find(|p| p.peer == "z")
            .unwrap()
            .route
            .clone()
    };
    step(&mut kms, &mut sent, &mut now, 2000);
    assert_eq!(route(&kms), ["a", "b1", "b2", "z"]);
    assert!(kms["a"].pool_free("z") >= 512, "pool not warm");
    // Heartbeats go to neighbours only.
    for (_, from, to, msg) in &sent {
        if matches!(msg, PeerMsg::Heartbeat) {
            assert!(t.link(from, to).is_some(), "heartbeat {from}→{to}");
        }
    }
    frozen.borrow_mut().insert("b2".into());
    let frozen_at = now;
    // Empty a's pool so that refill must relay again.
    let mut req = 1;
    while kms["a"].pool_free("z") >= 32 {
        let n = (kms["a"].pool_free("z") / 32).min(64);
        let call = AppCall::EncKeys {
            master: "sae-a".into(),
            slave: "sae-z".into(),
            number: Some(n),
            size_bits: Some(256),
            additional_slaves: vec![],
            route: None,
        };
        let fz = frozen.borrow().clone();
        pump(
            &mut kms,
            &fz,
            &mut sent,
            now,
            "a",
            Some(Input::App { req, call }),
        );
        req += 1;
    }
    let mut refilled = None;
    for _ in 0..600 {
        step(&mut kms, &mut sent, &mut now, 10);
        if kms["a"].pool_free("z") >= 128 {
            refilled = Some(now.saturating_since(frozen_at));
            break;
        }
    }
    let t_refill = refilled.expect("a's pool to z never refilled while b2 was frozen");
    // Silent for 2 s at b1 and z, advertised and flooded at once, routes recomputed within
    // 250 ms, then a relay over the other three hops.
    assert!(
        t_refill <= std::time::Duration::from_millis(3000),
        "refilled {t_refill:?} after b2 froze"
    );
    assert_eq!(route(&kms), ["a", "c1", "c2", "z"]);
    let pen = kms["a"].link_penalties();
    assert_eq!(pen[&key("b1", "b2")], None, "{pen:?}");
    // a never sent anything to b2 or z directly except what relays need (no heartbeats).
    assert!(!sent.iter().any(|(_, f, to, m)| f == "a"
        && (to == "b2" || to == "z")
        && matches!(m, PeerMsg::Heartbeat)));
}
