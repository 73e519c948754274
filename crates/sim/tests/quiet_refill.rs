//! Skipping refill ticks that cannot change anything (`kagi_km`'s `quiet` module) is a pure
//! speed-up: a run is the same event for event with and without it (the simulator's trace hash
//! covers every event time and every message's bytes), under every fault of the chaos
//! network and on a mesh with demand, and it does skip ticks.

use std::time::Duration;

use kagi_km::{AppCall, Policy};
use kagi_sim::chaos::{self, ChaosConfig};
use kagi_sim::{seeds, Faults, LinkSupply, Sim};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

#[test]
fn under_every_fault_skipping_quiet_ticks_changes_no_event() {
    let mut skipped = 0;
    for seed in seeds(1, 16) {
        let on = chaos::run(seed, &ChaosConfig::default());
        let off = chaos::run(
            seed,
            &ChaosConfig {
                skip_quiet_refills: false,
                ..ChaosConfig::default()
            },
        );
        assert_eq!(on.trace_hash, off.trace_hash, "seed {seed}");
        assert_eq!(off.quiet_refills_skipped, 0);
        skipped += on.quiet_refills_skipped;
    }
    assert!(skipped > 0, "no tick was skipped");
}

/// How busy a mesh run is.
struct Load {
    /// Between link key blocks.
    block_interval: Duration,
    /// Chance of a request every 25 ms.
    request: f64,
}

/// Link key in plenty, a request every 62 ms on average.
const MODEST: Load = Load {
    block_interval: Duration::from_millis(50),
    request: 0.4,
};

/// Link key short of what the requests want: pools run low, relays wait on key and on the
/// caps on relays in flight.
const SCARCE: Load = Load {
    block_interval: Duration::from_millis(400),
    request: 0.95,
};

/// A 16-node mesh, four SAEs per node asking for keys to random other nodes, with two nodes
/// crashing and coming back: returns the trace hash, the keys served, the ticks skipped and,
/// of those, the ticks skipped after a look at the destinations whose pool or demand moved.
fn mesh_run(skip: bool, load: &Load) -> (u64, u64, u64, u64) {
    let mut topo = kagi_sim::plan::synth::grid_mesh(16, 3);
    for n in &mut topo.nodes {
        n.saes = (0..4).map(|i| format!("sae-{}-{i}", n.id)).collect();
    }
    let nodes: Vec<String> = topo.nodes.iter().map(|n| n.id.clone()).collect();
    let faults = Faults {
        latency: (Duration::from_millis(1), Duration::from_millis(5)),
        ..Faults::default()
    };
    let supply = LinkSupply {
        interval: load.block_interval,
        block_bytes: 8 * 1024,
    };
    let mut sim = Sim::new(topo, 5, faults, supply, Policy::default());
    sim.skip_quiet_refills(skip);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut served = 0;
    let mut open = Vec::new();
    for step in 0..400u32 {
        sim.run_for(Duration::from_millis(25));
        if step == 120 {
            sim.crash(&nodes[5]);
        }
        if step == 200 {
            sim.restart(&nodes[5]);
            sim.crash(&nodes[9]);
        }
        if step == 300 {
            sim.restart(&nodes[9]);
        }
        if rng.gen_bool(load.request) {
            let a = rng.gen_range(0..nodes.len());
            let b = (a + rng.gen_range(1..nodes.len())) % nodes.len();
            let req = sim.call(
                &nodes[a],
                AppCall::EncKeys {
                    master: format!("sae-{}-{}", nodes[a], rng.gen_range(0..4)),
                    slave: format!("sae-{}-{}", nodes[b], rng.gen_range(0..4)),
                    number: Some(rng.gen_range(1..4)),
                    size_bits: Some(256),
                    additional_slaves: vec![],
                    route: None,
                },
            );
            open.push(req);
        }
        open.retain(|req| match sim.answer(*req) {
            None => true,
            Some(a) => {
                served += u64::from(a.reply.is_ok());
                false
            }
        });
    }
    (
        sim.trace_hash,
        served,
        sim.quiet_refills_skipped(),
        sim.quiet_refills_looked(),
    )
}

#[test]
fn on_a_mesh_with_demand_and_crashes_skipping_quiet_ticks_changes_no_event() {
    let (hash_on, served_on, skipped, looked) = mesh_run(true, &MODEST);
    let (hash_off, served_off, none, _) = mesh_run(false, &MODEST);
    assert_eq!(hash_on, hash_off);
    assert_eq!(served_on, served_off);
    assert!(served_on > 20, "{served_on} requests served");
    assert_eq!(none, 0);
    assert!(skipped > 1000, "{skipped} ticks skipped");
    // Requests move pool and demand counters: most of those ticks are skipped after a look
    // at the destinations they moved for.
    assert!(looked > 100, "{looked} of {skipped} skipped after a look");
    eprintln!("{skipped} ticks skipped, {looked} after a look");
}

#[test]
fn on_a_mesh_short_of_link_key_skipping_quiet_ticks_changes_no_event() {
    let (hash_on, served_on, skipped, looked) = mesh_run(true, &SCARCE);
    let (hash_off, served_off, _, _) = mesh_run(false, &SCARCE);
    assert_eq!(hash_on, hash_off);
    assert_eq!(served_on, served_off);
    eprintln!("{served_on} served, {skipped} ticks skipped, {looked} after a look");
    assert!(looked > 100, "{looked} of {skipped} skipped after a look");
}
