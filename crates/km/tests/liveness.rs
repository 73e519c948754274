//! Liveness at the core level: with `PeerScope::All` every node is heard by every other node at
//! least every 750 ms, by a heartbeat each 500 ms round unless something else went in its last
//! 250 ms (with the default, `Neighbours`, its neighbours only), a node silent for about 2 s (frozen: its connections stay open, so no `PeerDown`
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

/// The longest time from→to went without any message, from the start to now.
fn longest_silence(net: &Net, from: &str, to: &str) -> Duration {
    let mut last = Instant(0);
    let mut worst = Duration::ZERO;
    let times = net
        .wire
        .iter()
        .zip(&net.wire_at)
        .filter(|((f, t, _), _)| f == from && t == to)
        .map(|(_, at)| *at)
        .chain([net.now]);
    for at in times {
        worst = worst.max(at.saturating_since(last));
        last = at;
    }
    worst
}

/// Heartbeats from→to that followed another message from→to within `gap`.
fn needless_beats(net: &Net, from: &str, to: &str, gap: Duration) -> usize {
    let sent: Vec<(Instant, bool)> = net
        .wire
        .iter()
        .zip(&net.wire_at)
        .filter(|((f, t, _), _)| f == from && t == to)
        .map(|((_, _, m), at)| (*at, matches!(m, PeerMsg::Heartbeat)))
        .collect();
    sent.iter()
        .enumerate()
        .filter(|(i, (at, beat))| {
            *beat
                && sent[..*i]
                    .iter()
                    .any(|(t, b)| !*b && at.saturating_since(*t) < gap)
        })
        .count()
}

fn via_b<N: AsRef<str>>(path: &[N]) -> bool {
    path.iter().any(|n| n.as_ref() == "b")
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

/// The timer runs every 10 ms here: a 500 ms round can run up to one step late.
const HEARD_EVERY: Duration = Duration::from_millis(750 + 10);

#[test]
fn every_other_node_hears_from_each_node_at_least_every_750_ms() {
    let mut net = detour_net(Some(LivenessPolicy::default()));
    net.run(4000);
    for from in ["a", "b", "z"] {
        for to in ["a", "b", "c1", "c2", "z"] {
            if from == to {
                assert_eq!(beats(&net, from, to), 0);
                continue;
            }
            let gap = longest_silence(&net, from, to);
            assert!(gap <= HEARD_EVERY, "{from}→{to}: silent for {gap:?}");
            assert!(beats(&net, from, to) >= 1, "{from}→{to}: no heartbeat");
        }
    }
}

/// Any message says "alive": no heartbeat follows another message within half a round.
#[test]
fn no_heartbeat_goes_where_another_message_just_went() {
    let mut net = detour_net(Some(LivenessPolicy::default()));
    net.run(4000);
    let mut others = 0;
    for from in ["a", "b", "c1", "c2", "z"] {
        for to in ["a", "b", "c1", "c2", "z"] {
            let half = LivenessPolicy::default().heartbeat_interval / 2;
            assert_eq!(needless_beats(&net, from, to, half), 0, "{from}→{to}");
            others += net
                .wire
                .iter()
                .filter(|(f, t, m)| f == from && t == to && !matches!(m, PeerMsg::Heartbeat))
                .count();
        }
    }
    // Not vacuous: the nodes did talk of other things.
    assert!(others > 100, "{others} other messages");
}

/// The default scope (`PeerScope::Neighbours`, as a node's `[peers] connect`): heartbeats go to
/// link neighbours only.
#[test]
fn by_default_heartbeats_go_to_neighbours_only() {
    assert_eq!(Policy::default().peers, PeerScope::Neighbours);
    let mut net = net_with(small_pools());
    net.run(4000);
    for (from, to) in [("a", "b"), ("a", "c1"), ("b", "z"), ("c1", "c2")] {
        let gap = longest_silence(&net, from, to);
        assert!(gap <= HEARD_EVERY, "{from}→{to}: silent for {gap:?}");
        assert!(beats(&net, from, to) >= 1, "{from}→{to}: no heartbeat");
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
