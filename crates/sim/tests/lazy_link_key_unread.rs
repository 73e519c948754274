//! Link key nobody reads stays unproduced: with lazy link key, a network without demand takes
//! in, splits, stores and evicts link blocks for a simulated minute without producing a byte of
//! them (no accidental `expose` on that path) and holds no key bytes. Its own test binary:
//! `live_bytes` is process-wide, so no other test may create keys while this one reads it.

use std::time::Duration;

use kagi_keymat::live_bytes;
use kagi_km::Policy;
use kagi_sim::{Faults, LinkSupply, Sim};

/// Key bytes alive after a minute of a 9-node mesh without demand, link key bytes produced,
/// and the blocks delivered.
fn idle_mesh(lazy: bool) -> (usize, u64, u64) {
    let topo = kagi_sim::plan::synth::grid_mesh(9, 2);
    let supply = LinkSupply {
        interval: Duration::from_millis(200),
        block_bytes: 4 * 1024,
    };
    // A small buffer cap: blocks are evicted unread too. No pools kept for idle destinations:
    // filling them reads link key.
    let policy = Policy {
        link_buffer_cap_bytes: 64 * 1024,
        idle_floor_bytes: 0,
        pool_target_bytes: 0,
        ..Policy::default()
    };
    let mut sim = Sim::new(topo, 3, Faults::default(), supply, policy);
    sim.lazy_link_key(lazy);
    sim.run_for(Duration::from_secs(60));
    let blocks = (0..sim.topology().links.len())
        .map(|l| sim.last_block(l).map_or(0, |b| b + 1))
        .sum();
    let dropped = sim
        .topology()
        .nodes
        .iter()
        .map(|n| {
            sim.node(&n.id)
                .map_or(0, |km| km.stats().link_blocks_dropped)
        })
        .sum::<u64>();
    assert!(dropped > 100, "{dropped} blocks evicted");
    (live_bytes(), sim.link_key_produced(), blocks)
}

#[test]
fn lazy_link_key_nobody_reads_is_never_produced() {
    let (bytes_alive, bytes_produced, blocks) = idle_mesh(false);
    assert!(blocks > 1000, "{blocks} blocks");
    assert!(
        bytes_alive > 1 << 20,
        "{bytes_alive} bytes alive with blocks as bytes"
    );
    assert_eq!(live_bytes(), 0, "the dropped simulation freed its key");
    assert_eq!(bytes_produced, blocks * 4096);
    let (lazy_alive, lazy_produced, lazy_blocks) = idle_mesh(true);
    assert_eq!(lazy_blocks, blocks);
    assert_eq!(
        lazy_produced, 0,
        "lazy link key was produced without demand"
    );
    assert_eq!(lazy_alive, 0, "lazy link key is held as bytes");
}
