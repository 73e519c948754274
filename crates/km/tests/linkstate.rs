//! Link-state advertisements at the core level: every node advertises its links, adverts are
//! flooded to every node, and relays are routed by the key each link has rather than by hop
//! count.
//!
//! Topology: a diamond, a reaches z over a-b-z or a-c-z (equal hop counts; ties go to b).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use kagi_km::advert_auth::signed_bytes;
use kagi_km::{
    AdvertAuth, Input, Instant, KeyManager, KmConfig, Limits, LinkAdvert, LinkStatePolicy, NodeId,
    PeerMsg, PeerScope, Policy, Snapshot,
};

mod common;
use common::{small_pools, test_tag, topology, LinkKey, Net, TestAuth};

fn topo() -> Arc<Topology> {
    topology(
        "diamond",
        &["a", "b", "c", "z"],
        &[("a", "b"), ("b", "z"), ("a", "c"), ("c", "z")],
    )
}

/// The test's link key: a 16 KiB block a second on every link that is not starved.
const LINK_KEY: LinkKey = LinkKey {
    len: 16384,
    salt: 37,
};

/// The diamond, messages delivered at once, link key once a second on every link but the
/// `starved` ones; adverts with the default timing (sent when a link's cost class moves).
fn diamond(starved: &[(&str, &str)]) -> Net {
    diamond_with(starved, true)
}

/// Every node advertises every second whatever changed, and adverts go stale after 5 s: for
/// the tests of flooding, forgery and replay, which count on each origin's adverts.
fn chatty(mut policy: Policy) -> Policy {
    policy.link_state = Some(LinkStatePolicy {
        advert_interval: Duration::from_secs(1),
        refresh_interval: Duration::from_secs(1),
        stale_after: Duration::from_secs(5),
        ..LinkStatePolicy::default()
    });
    policy
}

/// The diamond with [`chatty`] adverts.
fn chatty_diamond(starved: &[(&str, &str)]) -> Net {
    diamond_with_policy(starved, chatty(small_pools()))
}

fn diamond_with(starved: &[(&str, &str)], link_state: bool) -> Net {
    let mut policy = small_pools();
    assert!(policy.link_state.is_some(), "link state is on by default");
    if !link_state {
        policy.link_state = None;
    }
    diamond_with_policy(starved, policy)
}

fn diamond_with_policy(starved: &[(&str, &str)], policy: Policy) -> Net {
    let mut net = Net::new(
        topo(),
        policy,
        |n| [n.as_bytes()[0]; 32],
        Instant(0),
        LINK_KEY,
    );
    net.starved = starved
        .iter()
        .map(|(a, b)| (NodeId::from(*a), NodeId::from(*b)))
        .collect();
    net.link_blocks();
    net
}

/// Link-state adverts delivered, per (from, to, origin).
fn adverts(net: &Net) -> BTreeMap<(String, String, String), u32> {
    let mut n = BTreeMap::new();
    for (from, to, m) in &net.wire {
        if let PeerMsg::LinkState { origin, .. } = m {
            *n.entry((from.clone(), to.clone(), origin.to_string()))
                .or_default() += 1;
        }
    }
    n
}

fn via(path: &[String], n: &str) -> bool {
    path.iter().any(|x| x == n)
}

fn key(a: &str, b: &str) -> (NodeId, NodeId) {
    (a.into(), b.into())
}

/// b's link to z gets no key: once the adverts have spread, a routes to z over c, and a's pool
/// to z fills; when b's link gets key again, routes may go over b again (ties go to b).
#[test]
fn relays_avoid_a_starved_link_and_return_when_it_refills() {
    let mut net = diamond(&[("b", "z")]);
    net.run(500);
    // a is no neighbour of z: it learnt z's advert (and b's view of b–z) by flooding.
    let held = net.kms["a"].link_adverts_held();
    assert_eq!(
        held.keys().map(NodeId::as_str).collect::<Vec<_>>(),
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
    let after = net.relay_paths_since("a", "z", t0);
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
    net.drain_pool("a", "z");
    net.run(2000);
    let after = net.relay_paths_since("a", "z", t1);
    assert!(!after.is_empty());
    assert!(after.iter().all(|p| via(p, "b")), "{after:?}");
    assert!(net.kms["a"].pool_free("z") >= 512);
}

/// Adverts go to neighbours only, once a second, and every origin's reaches every node.
#[test]
fn adverts_flood_to_every_node_over_neighbours_only() {
    let mut net = chatty_diamond(&[]);
    net.run(3000);
    let sent = adverts(&net);
    for (from, to, _) in sent.keys() {
        assert!(
            topo().link(from, to).is_some(),
            "advert sent to a non-neighbour: {from}→{to}"
        );
    }
    // a's own advert to b: at 0.01 s, 1.01, 2.01 (3 or 4 in 3 s).
    let n = sent[&("a".to_string(), "b".to_string(), "a".to_string())];
    assert!((3..=4).contains(&n), "{n} adverts a→b in 3 s");
    for at in ["a", "b", "c", "z"] {
        let held = net.kms[at].link_adverts_held();
        assert_eq!(held.len(), 4, "{at}: {held:?}");
        for (origin, (_, seq)) in held {
            assert!(seq >= 3, "{at} holds {origin}'s advert {seq}");
        }
    }
    // Never back to the sender: b does not echo a's advert to a.
    assert!(!sent.contains_key(&("b".to_string(), "a".to_string(), "a".to_string())));
}

/// With the default timing, a node whose links' cost classes stay put (every buffer covers a
/// window of relays) sends its advert once per refresh interval, not once per check; the
/// flood carries nothing else. (The starved-link test above shows a class that moves is
/// advertised within a check.)
#[test]
fn a_node_whose_links_do_not_change_advertises_once_per_refresh_interval() {
    let lp = LinkStatePolicy::default();
    assert!(lp.refresh_interval >= 5 * lp.advert_interval);
    let mut net = diamond(&[]);
    // Buffers fill (16 KiB a second per link) until they cover the relay window.
    net.run(30_000);
    let before = adverts(&net);
    let secs = 40;
    net.run(secs * 1000);
    let after = adverts(&net);
    let own = |m: &BTreeMap<(String, String, String), u32>| {
        m.get(&("a".to_string(), "b".to_string(), "a".to_string()))
            .copied()
            .unwrap_or(0)
    };
    let n = own(&after) - own(&before);
    let refreshes = (secs as f64 / lp.refresh_interval.as_secs_f64()) as u32;
    assert!(
        (refreshes..=refreshes + 1).contains(&n),
        "a sent {n} adverts to b in {secs} s; a refresh every {:?} makes {refreshes}",
        lp.refresh_interval
    );
    // Every origin is still held fresh everywhere, so no link counts as unknown.
    for at in ["a", "b", "c", "z"] {
        assert_eq!(net.kms[at].link_adverts_held().len(), 4, "{at}");
        assert!(
            net.kms[at]
                .link_penalties()
                .values()
                .all(|p| *p == Some(0.0)),
            "{at}: {:?}",
            net.kms[at].link_penalties()
        );
    }
}

/// A node may advertise only its own links: adverts naming a link their origin does not have,
/// or from a node outside the topology, are dropped whole. A forged advert of b's links (which
/// no receiver can tell from a flooded copy) cannot make b's starved link look good, because
/// z, its other end, says otherwise.
#[test]
fn forged_adverts_cannot_make_a_starved_link_look_good() {
    let mut net = chatty_diamond(&[("b", "z")]);
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
                    links: links.into(),
                    sig: vec![].into(),
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
    net.drain_pool("a", "z");
    net.run(2000);
    let after = net.relay_paths_since("a", "z", t0);
    assert!(!after.is_empty());
    assert!(after.iter().all(|p| !via(p, "b")), "{after:?}");
    // Unsigned, the numbers prove nothing: once the forged advert is stale, b's genuine ones
    // (numbered far below it) are taken again, so one forgery cannot silence b for good.
    net.run(3000);
    let (run, _) = net.kms["a"].link_adverts_held()["b"];
    assert!(run < u64::MAX, "a still holds the forged advert of b");
}

/// A signed network, b–z starved.
fn signed_diamond() -> Net {
    let mut net = Net::with_auth(
        topo(),
        chatty(small_pools()),
        |n| [n.as_bytes()[0]; 32],
        Instant(0),
        LINK_KEY,
        |n| Some(Arc::new(TestAuth { me: n.into() }) as Arc<dyn AdvertAuth>),
    );
    net.starved.insert(key("b", "z"));
    net.link_blocks();
    net
}

/// b's first advert that went to a.
fn first_advert_of_b_to_a(net: &Net) -> PeerMsg {
    net.wire
        .iter()
        .find_map(|(_, to, m)| match m {
            PeerMsg::LinkState { origin, .. } if origin == "b" && to == "a" => Some(m.clone()),
            _ => None,
        })
        .expect("b advertised to a")
}

/// A transit node replays b's old genuine (signed) advert once b has fallen silent and its
/// newest advert at a has gone stale: a refuses it (it is older than the newest a accepted
/// from b), counts it, keeps b's newest and floods nothing on. A copy of the newest is not
/// counted.
#[test]
fn an_old_signed_advert_replayed_after_its_origin_fell_silent_is_refused() {
    let mut net = signed_diamond();
    net.run(3000);
    let old = first_advert_of_b_to_a(&net);
    let newest = net
        .wire
        .iter()
        .rev()
        .find_map(|(_, to, m)| match m {
            PeerMsg::LinkState { origin, .. } if origin == "b" && to == "a" => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    let PeerMsg::LinkState {
        run,
        seq,
        ref links,
        ref sig,
        ..
    } = old
    else {
        unreachable!()
    };
    // Genuine: b's own signature over it.
    assert_eq!(
        *sig,
        test_tag("b", &signed_bytes(&"b".into(), run, seq, links)).into()
    );
    let held = net.kms["a"].link_adverts_held()["b"];
    assert!(
        held > (run, seq),
        "a holds {held:?}, the old one is {run}/{seq}"
    );
    // b falls silent; 6 s later its newest advert at a is stale.
    net.frozen.insert("b".into());
    net.run(6000);
    assert_eq!(net.kms["a"].link_adverts_held()["b"], held);
    let sent = net.wire.len();
    for msg in [old, newest] {
        net.input(
            "a",
            Input::Peer {
                from: "c".into(),
                msg,
            },
        );
    }
    let st = net.kms["a"].stats();
    assert_eq!(st.link_adverts_replayed, 1);
    assert_eq!(st.link_adverts_unauthenticated, 0);
    assert_eq!(
        net.kms["a"].link_adverts_held()["b"],
        held,
        "a took b's replayed advert"
    );
    assert!(
        !net.wire[sent..]
            .iter()
            .any(|(_, _, m)| matches!(m, PeerMsg::LinkState { .. })),
        "a flooded the replayed advert on"
    );
}

/// b starts again from an empty store (wiped, or restored from an older copy: its store's run
/// counter goes back). Numbered by the store alone, its new adverts are below what a accepted
/// and a refuses them (counted once b's old advert is stale), as it would those of a node whose
/// clock was set back; numbered from a base above every earlier start (the node's wall clock),
/// they are heard at once.
#[test]
fn an_origin_started_again_from_an_empty_store_is_heard_at_once() {
    let mut net = signed_diamond();
    net.run(10_000);
    let before = net.kms["a"].link_adverts_held()["b"];
    assert!(before.1 >= 9, "{before:?}");
    let start_b = |net: &mut Net, base: u64| {
        let cfg = KmConfig {
            node_id: "b".into(),
            topology: topo(),
            limits: Limits::default(),
            policy: chatty(small_pools()),
            advert_auth: Some(Arc::new(TestAuth { me: "b".into() })),
            advert_run_base: base,
        };
        let km = KeyManager::restore(cfg, Snapshot::default(), [base as u8 ^ 0x5a; 32], net.now);
        net.kms.insert("b".into(), km);
    };
    start_b(&mut net, 0);
    net.run(6500);
    assert_eq!(
        net.kms["a"].link_adverts_held()["b"],
        before,
        "a took an advert numbered below b's newest"
    );
    let refused = net.kms["a"].stats().link_adverts_replayed;
    assert!(refused >= 1, "a did not count b's refused adverts");
    // Started again with a base above its earlier starts: heard within one advert interval.
    start_b(&mut net, 1_000_000);
    net.run(1500);
    let (run, _) = net.kms["a"].link_adverts_held()["b"];
    assert_eq!(run, 1_000_000);
    assert_eq!(net.kms["a"].stats().link_adverts_replayed, refused);
    assert_eq!(net.kms["a"].stats().link_adverts_unauthenticated, 0);
}

/// With signed adverts (every node signs its own and verifies every origin's), a transit node
/// can no longer pass off an advert of another origin's links: c sends a adverts of b's links,
/// newer than b's newest and rich on b's starved link to z, with no signature, under b's
/// signature of its genuine advert, and under c's own signature. a drops each (counted), keeps
/// b's genuine advert, floods none of them on, and keeps routing around the starved link.
/// Genuine adverts still reach every node, and a copy of one already held is dropped before any
/// verification.
#[test]
fn signed_adverts_forged_or_altered_by_a_transit_node_are_refused() {
    let mut net = signed_diamond();
    net.run(1000);
    for at in ["a", "b", "c", "z"] {
        assert_eq!(net.kms[at].link_adverts_held().len(), 4, "{at}");
        assert_eq!(net.kms[at].stats().link_adverts_unauthenticated, 0, "{at}");
        assert!(net.kms[at].km_status().adverts_signed);
    }
    assert_eq!(net.route("a", "z"), ["a", "c", "z"]);
    let held = net.kms["a"].link_adverts_held();
    // b's newest advert as it went to a, signed.
    let genuine = net
        .wire
        .iter()
        .rev()
        .find_map(|(_, to, m)| match m {
            PeerMsg::LinkState { origin, .. } if origin == "b" && to == "a" => Some(m.clone()),
            _ => None,
        })
        .expect("b advertised to a");
    let PeerMsg::LinkState {
        run,
        seq,
        links,
        sig,
        ..
    } = genuine.clone()
    else {
        unreachable!()
    };
    assert_eq!(
        sig,
        test_tag("b", &signed_bytes(&"b".into(), run, seq, &links)).into()
    );
    let rich = |peer: &str| LinkAdvert {
        peer: peer.into(),
        up: true,
        rate_bps: 1 << 30,
        tx_bytes: 1 << 30,
        rx_bytes: 1 << 30,
    };
    let forged = vec![rich("a"), rich("z")];
    let by_c = test_tag("c", &signed_bytes(&"b".into(), run, seq + 1, &forged));
    let sent = net.wire.len();
    for (links, sig) in [
        (forged.clone(), vec![]),
        (forged.clone(), sig.to_vec()),
        (links.to_vec(), sig.to_vec()),
        (forged.clone(), by_c),
    ] {
        net.input(
            "a",
            Input::Peer {
                from: "c".into(),
                msg: PeerMsg::LinkState {
                    origin: "b".into(),
                    run,
                    seq: seq + 1,
                    links: links.into(),
                    sig: sig.into(),
                },
            },
        );
    }
    assert_eq!(net.kms["a"].stats().link_adverts_unauthenticated, 4);
    assert_eq!(
        net.kms["a"].link_adverts_held(),
        held,
        "a kept a forged advert"
    );
    assert!(
        !net.wire[sent..]
            .iter()
            .any(|(_, _, m)| matches!(m, PeerMsg::LinkState { .. })),
        "a flooded a forged advert on"
    );
    // The genuine advert again: a copy, not newer, dropped unverified and uncounted.
    net.input(
        "a",
        Input::Peer {
            from: "c".into(),
            msg: genuine,
        },
    );
    assert_eq!(net.kms["a"].stats().link_adverts_unauthenticated, 4);
    // A forgery no newer than the advert held is dropped as a copy before any verification:
    // a flood of stale forgeries costs no signature checks.
    net.input(
        "a",
        Input::Peer {
            from: "c".into(),
            msg: PeerMsg::LinkState {
                origin: "b".into(),
                run,
                seq,
                links: forged.clone().into(),
                sig: vec![].into(),
            },
        },
    );
    assert_eq!(net.kms["a"].stats().link_adverts_unauthenticated, 4);
    net.run(1000);
    assert!(net.kms["a"].link_penalties()[&key("b", "z")].unwrap() >= 512.0);
    assert_eq!(net.route("a", "z"), ["a", "c", "z"]);
    assert_eq!(net.kms["a"].stats().link_adverts_unauthenticated, 4);
}

/// With link state off, routes follow hop count (ties to b), as before link state existed:
/// relays to z go over b's starved link and a's pool to z stays empty.
#[test]
fn without_link_state_relays_take_the_starved_link() {
    let mut net = diamond_with(&[("b", "z")], false);
    net.run(5000);
    assert!(adverts(&net).is_empty());
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
        peers: PeerScope::Neighbours,
        ..small_pools()
    };
    let mut net = Net::new(
        t.clone(),
        policy,
        |n| [n.len() as u8; 32],
        Instant(0),
        LINK_KEY,
    );
    net.link_blocks();
    net.run(2000);
    assert_eq!(net.route("a", "z"), ["a", "b1", "b2", "z"]);
    assert!(net.kms["a"].pool_free("z") >= 512, "pool not warm");
    // Heartbeats go to neighbours only.
    for (from, to, msg) in &net.wire {
        if matches!(msg, PeerMsg::Heartbeat) {
            assert!(t.link(from, to).is_some(), "heartbeat {from}→{to}");
        }
    }
    net.frozen.insert("b2".into());
    let frozen_at = net.now;
    // Empty a's pool so that refill must relay again.
    net.drain_pool("a", "z");
    let mut refilled = None;
    for _ in 0..600 {
        net.run(10);
        if net.kms["a"].pool_free("z") >= 128 {
            refilled = Some(net.now.saturating_since(frozen_at));
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
    assert_eq!(net.route("a", "z"), ["a", "c1", "c2", "z"]);
    let pen = net.kms["a"].link_penalties();
    assert_eq!(pen[&key("b1", "b2")], None, "{pen:?}");
    // a never sent anything to b2 or z directly except what relays need (no heartbeats).
    assert!(!net.wire.iter().any(|(f, to, m)| f == "a"
        && (to == "b2" || to == "z")
        && matches!(m, PeerMsg::Heartbeat)));
}
