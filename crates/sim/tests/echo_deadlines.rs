//! Keeping `poll_timeout`'s deadlines across echoes (`kagi_km`'s `echo` module: heartbeats and
//! copies of held link-state adverts change nothing but liveness) is a pure speed-up: a run is
//! the same event for event with and without it (the trace hash covers every event time and
//! every message's bytes), under every fault of the chaos network (frozen nodes that speak
//! again included) and on a mesh with demand and crashes, and echoes are handled that way.

use std::time::Duration;

use kagi_sim::chaos::{self, ChaosConfig};
use kagi_sim::seeds;

mod mesh_demand;

use mesh_demand::{Failures, MeshRun};

#[test]
fn under_every_fault_keeping_deadlines_across_echoes_changes_no_event() {
    for seed in seeds(1, 16) {
        let on = chaos::run(seed, &ChaosConfig::default());
        let off = chaos::run(
            seed,
            &ChaosConfig {
                keep_echo_deadlines: false,
                ..ChaosConfig::default()
            },
        );
        assert_eq!(on.trace_hash, off.trace_hash, "seed {seed}");
        assert_eq!(on.key_digest, off.key_digest, "seed {seed}");
    }
}

/// Link key in plenty, a request every 62 ms on average, two crashes.
const MODEST: MeshRun = MeshRun {
    block_interval: Duration::from_millis(50),
    block_bytes: 8 * 1024,
    request: 0.4,
    failures: Failures::Crashes,
};

#[test]
fn on_a_mesh_with_demand_and_crashes_keeping_deadlines_changes_no_event() {
    let run = |keep: bool| {
        let (sim, served) = mesh_demand::run(&MODEST, |sim| sim.keep_echo_deadlines(keep));
        (
            sim.trace_hash,
            served,
            sim.timer_wakeups,
            sim.echoes_handled(),
        )
    };
    let (hash_on, served_on, woken_on, echoes) = run(true);
    let (hash_off, served_off, woken_off, none) = run(false);
    assert_eq!(hash_on, hash_off);
    assert_eq!(served_on, served_off);
    assert_eq!(woken_on, woken_off);
    assert!(served_on > 20, "{served_on} requests served");
    assert_eq!(none, 0);
    assert!(
        echoes > 1000,
        "{echoes} echoes handled without recomputing deadlines"
    );
    eprintln!("{echoes} echoes handled without recomputing deadlines");
}
