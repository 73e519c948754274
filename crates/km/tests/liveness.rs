//! Liveness at the core level: with `PeerScope::All` every node sends heartbeats to every other
//! node about every 500 ms (with the default, `Neighbours`, to its neighbours only), a node silent for about 2 s (frozen: its connections stay open, so no `PeerDown`
//! ever comes) is routed around, and it counts as up again as soon as it speaks.
//!
//! Topology: a reaches z over a-b-z (shortest) or a-c1-c2-z.

use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use kagi_km::{Instant, LivenessPolicy, PeerMsg, PeerScope, Policy};

mod common;
use common::{small_pools, topology, LinkKey, Net};

fn topo() -> Arc<Topology> {
    topology(
        "detour",
        &["a", "b", "c1", "c2", "z"],
        &[
            ("a", "b"),
            ("b", "z"),
            ("a", "c1"),
            ("c1", "c2"),
            ("c2", "z"),
        ],
    )
}

/// Every node's core, messages delivered at once, link key once a second, `liveness` on every
/// node, heartbeats to every node (`PeerScope::All`: the origin sees a frozen node itself).
fn detour_net(liveness: Option<LivenessPolicy>) -> Net {
    net_with(Policy {
        liveness,
        peers: PeerScope::All,
        ..small_pools()
    })
}

fn net_with(policy: Policy) -> Net {
    let seed = |n: &str| [n.as_bytes()[0] ^ n.len() as u8; 32];
    let key = LinkKey {
        len: 16384,
        salt: 37,
    };
    let mut net = Net::new(topo(), policy, seed, Instant(0), key);
    net.link_blocks();
    net
}

/// Heartbeats `from` sent `to`.
fn beats(net: &Net, from: &str, to: &str) -> u32 {
    net.wire
        .iter()
        .filter(|(f, t, m)| f == from && t == to && matches!(m, PeerMsg::Heartbeat))
        .count() as u32
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
    net.drain_pool("a", "z");
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
    let mut net = detour_net(Some(LivenessPolicy::default()));
    net.run(2000);
    for from in ["a", "b", "z"] {
        for to in ["a", "b", "c1", "c2", "z"] {
            if from == to {
                assert_eq!(beats(&net, from, to), 0);
                continue;
            }
            let n = beats(&net, from, to);
            // At 0, 0.5, 1, 1.5 and 2 s (the first one at once).
            assert!((4..=5).contains(&n), "{from}→{to}: {n} heartbeats in 2 s");
        }
    }
}

/// The default scope (`PeerScope::Neighbours`, as a node's `[peers] connect`): heartbeats go to
/// link neighbours only.
#[test]
fn by_default_heartbeats_go_to_neighbours_only() {
    assert_eq!(Policy::default().peers, PeerScope::Neighbours);
    let mut net = net_with(small_pools());
    net.run(2000);
    for (from, to) in [("a", "b"), ("a", "c1"), ("b", "z"), ("c1", "c2")] {
        let n = beats(&net, from, to);
        assert!((4..=5).contains(&n), "{from}→{to}: {n} heartbeats in 2 s");
    }
    for (from, to) in [("a", "z"), ("a", "c2"), ("b", "c1"), ("z", "a")] {
        assert_eq!(beats(&net, from, to), 0, "{from}→{to}");
    }
}

#[test]
fn a_frozen_intermediate_node_is_routed_around_within_the_bound() {
    let mut net = detour_net(Some(LivenessPolicy::default()));
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
        .sent_since(detected)
        .filter_map(|(f, _, m)| match m {
            PeerMsg::RelayHop { path, .. } if f == "a" => Some(path),
            _ => None,
        })
        .filter(|p| via_b(p))
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
    let mut net = detour_net(None);
    assert_eq!(
        refill_time_after_freezing_b(&mut net, Duration::from_secs(5)),
        None
    );
    assert_eq!(net.route("a", "z"), ["a", "b", "z"]);
}

#[test]
fn a_node_whose_own_timer_stalled_does_not_blame_its_peers() {
    let mut net = detour_net(Some(LivenessPolicy::default()));
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
