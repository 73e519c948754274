//! The multi-path gain, structurally: on `docs/examples/three-paths.toml` (a and f joined over
//! exactly three node-disjoint paths, through b, c and d) with failure detection switched off,
//! a frozen transit node stops single-path delivery whenever it is on the route, while three
//! shares of which any two rebuild the key survive any one frozen transit node. Each transit
//! node is frozen in turn, so the claim does not depend on which route single path picked.

mod common;

use std::time::Duration;

use kagi_control::Topology;
use kagi_km::Policy;
use kagi_sim::{Faults, LinkSupply, Sim};

/// Keys `sae-a` got for `sae-f` out of `asked` requests made every 100 ms for 20 s while
/// `frozen` stays frozen.
fn served_while_frozen(paths: u8, threshold: u8, frozen: &str) -> (u32, u32) {
    let topo = Topology::from_toml(include_str!("../../../docs/examples/three-paths.toml"))
        .expect("three-paths example");
    let mut policy = Policy {
        pool_target_bytes: 2 * 1024,
        relay_chunk_bytes: 512,
        // No heartbeats: a frozen node is seen only through the relays that die in it.
        liveness: None,
        // The default 8 MiB link buffer: a node spends its half only within what the neighbour
        // reserved (about 64 KiB ahead, `kagi_km::reserve`), and a frozen neighbour answers no
        // new reservation, so once eviction of the oldest blocks has eaten the reserved window
        // (15 s into the freeze) the origin has no key towards it. A multi-path relay starts
        // when `threshold` first hops have key, so the other two paths carry on (when it
        // waited for every first hop, 176 of 200 requests were served here). With heartbeats
        // (the default) the frozen node is routed around in about 2 s.
        ..Policy::default()
    };
    policy.routing.paths = paths;
    policy.routing.threshold = threshold;
    let supply = LinkSupply {
        interval: Duration::from_millis(20),
        block_bytes: 8 * 1024,
    };
    let mut sim = Sim::new(topo, 7, Faults::default(), supply, policy);
    sim.run_for(Duration::from_secs(5));
    sim.freeze(frozen);
    common::served_rounds(&mut sim, "a", "sae-a", "sae-f", 200)
}

#[test]
fn three_shares_survive_any_one_frozen_transit_node_and_single_path_does_not() {
    let mut single_path_lost = 0;
    for frozen in ["b", "c", "d"] {
        let (served, asked) = served_while_frozen(3, 2, frozen);
        assert_eq!(served, asked, "three shares with {frozen} frozen");
        let (served, asked) = served_while_frozen(1, 1, frozen);
        single_path_lost += asked - served;
    }
    // Single path loses requests with its route's transit node frozen (and only then).
    assert!(
        single_path_lost > 0,
        "single path never missed a frozen node"
    );
}
