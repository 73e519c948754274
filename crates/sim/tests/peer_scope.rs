//! Heartbeats to neighbours only (`PeerScope::Neighbours`, a node's `[peers] connect =
//! "neighbours"`) against heartbeats to every node (`PeerScope::All`): a frozen transit node two
//! hops from the origin is routed around either way, in the first case because its neighbours
//! advertise their links to it down and the flood reaches the origin. Without link-state
//! adverts nothing tells the origin, so neighbour-only heartbeats would leave its relays going
//! into the frozen node (the control).
//!
//! Topology: a reaches z over a-b1-b2-z or a-c1-c2-z (ties go to b1); b2 freezes.

mod common;

use std::time::Duration;

use kagi_control::Topology;
use kagi_km::{PeerScope, Policy};
use kagi_sim::{Faults, LinkSupply, Sim};

fn two_routes() -> Topology {
    let mut t = String::from("name = \"two-routes\"\nseed = 1\n");
    for n in ["a", "b1", "b2", "c1", "c2", "z"] {
        t += &format!("[[nodes]]\nid = \"{n}\"\nsaes = [\"sae-{n}\"]\n");
    }
    for (a, b) in [
        ("a", "b1"),
        ("b1", "b2"),
        ("b2", "z"),
        ("a", "c1"),
        ("c1", "c2"),
        ("c2", "z"),
    ] {
        t += &format!("[[links]]\na = \"{a}\"\nb = \"{b}\"\nlength_km = 10.0\n");
    }
    Topology::from_toml(&t).expect("two-routes topology")
}

/// Requests `sae-a` made for `sae-z` every 100 ms for 10 s, starting 3 s after b2 froze (time
/// to notice), and how many were served.
fn served_while_b2_frozen(peers: PeerScope, link_state: bool) -> (u32, u32) {
    let mut policy = Policy {
        pool_target_bytes: 1024,
        relay_chunk_bytes: 256,
        peers,
        ..Policy::default()
    };
    if !link_state {
        policy.link_state = None;
    }
    let supply = LinkSupply {
        interval: Duration::from_millis(20),
        block_bytes: 8 * 1024,
    };
    let mut sim = Sim::new(two_routes(), 3, Faults::default(), supply, policy);
    sim.run_for(Duration::from_secs(5));
    sim.freeze("b2");
    sim.run_for(Duration::from_secs(3));
    common::served_rounds(&mut sim, "a", "sae-a", "sae-z", 100)
}

#[test]
fn a_far_frozen_node_is_routed_around_with_heartbeats_to_neighbours_only() {
    let (all, asked) = served_while_b2_frozen(PeerScope::All, true);
    let (neighbours, _) = served_while_b2_frozen(PeerScope::Neighbours, true);
    assert_eq!(all, asked, "heartbeats to every node");
    assert_eq!(neighbours, asked, "heartbeats to neighbours, link state on");
    // The control: neighbour heartbeats alone do not reach the origin.
    let (blind, _) = served_while_b2_frozen(PeerScope::Neighbours, false);
    assert!(
        blind < asked / 2,
        "{blind} of {asked} served with nothing telling a that b2 froze"
    );
}
