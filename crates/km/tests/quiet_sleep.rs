//! A core with nothing to do asks not to be woken for refill ticks that would change nothing:
//! once its pools are full and no request comes, `poll_timeout` (what the node's driver sleeps
//! on) lies beyond the next tick, until an input gives refill something to do.

use std::time::Duration;

use kagi_km::{AppCall, Instant, Policy};

mod common;
use common::{small_pools, topology, LinkKey, Net};

/// A line a–b–c, pools full, no heartbeats or adverts (so only refill could want a tick).
fn idle_net(skip_quiet: bool) -> Net {
    let topo = topology("line", &["a", "b", "c"], &[("a", "b"), ("b", "c")]);
    let policy = Policy {
        liveness: None,
        link_state: None,
        ..small_pools()
    };
    let seed = |n: &str| [n.as_bytes()[0]; 32];
    let key = LinkKey {
        len: 16384,
        salt: 11,
    };
    let mut net = Net::new(topo, policy, seed, Instant(0), key);
    for km in net.kms.values_mut() {
        km.skip_quiet_refills(skip_quiet);
    }
    net.link_blocks();
    net.run(3000);
    assert!(net.kms["a"].pool_free("c") >= 1024, "pools not full");
    net
}

/// How long from now until each node asks to be woken (`None`: not before an input).
fn sleeps(net: &Net) -> Vec<Option<Duration>> {
    ["a", "b", "c"]
        .iter()
        .map(|n| {
            net.kms[*n]
                .poll_timeout()
                .map(|t| t.saturating_since(net.now))
        })
        .collect()
}

#[test]
fn an_idle_core_sleeps_past_the_next_tick_until_a_request() {
    let tick = Policy::default().refill_interval;
    let mut net = idle_net(true);
    for s in sleeps(&net) {
        assert!(s.is_none_or(|d| d > tick), "an idle core wakes in {s:?}");
    }
    // A request takes key from a's pool to c: the next tick looks at it.
    let req = 1;
    net.input(
        "a",
        kagi_km::Input::App {
            req,
            call: AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-c".into(),
                number: Some(1),
                size_bits: Some(256),
                additional_slaves: vec![],
                route: None,
            },
        },
    );
    let woken = sleeps(&net)[0];
    assert!(
        woken.is_some_and(|d| d <= tick),
        "a request leaves the core asleep: {woken:?}"
    );

    // Ticking always (skipping switched off), the same idle core asks for every tick.
    let net = idle_net(false);
    for s in sleeps(&net) {
        assert!(s.is_some_and(|d| d <= tick), "{s:?}");
    }
}
