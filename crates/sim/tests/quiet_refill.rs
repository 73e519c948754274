//! Skipping refill ticks that cannot change anything (`kagi_km`'s `quiet` module) is a pure
//! speed-up: a run is the same event for event with and without it (the simulator's trace hash
//! covers every event time and every message's bytes), under every fault of the chaos
//! network and on a mesh with demand, and it does skip ticks.

use std::time::Duration;

use kagi_sim::chaos::{self, ChaosConfig};
use kagi_sim::seeds;

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

mod mesh_demand;

use mesh_demand::{Failures, MeshRun};

/// Link key in plenty, a request every 62 ms on average.
const MODEST: MeshRun = MeshRun {
    block_interval: Duration::from_millis(50),
    block_bytes: 8 * 1024,
    request: 0.4,
    failures: Failures::Crashes,
};

/// Link key short of what the requests want: pools run low, relays wait on key and on the
/// caps on relays in flight.
const SCARCE: MeshRun = MeshRun {
    block_interval: Duration::from_millis(400),
    block_bytes: 8 * 1024,
    request: 0.95,
    failures: Failures::Crashes,
};

/// The mesh run with quiet ticks skipped or not: returns the trace hash, the keys served, the
/// ticks skipped and, of those, the ticks skipped after a look at the destinations whose pool
/// or demand moved.
fn mesh_run(skip: bool, load: &MeshRun) -> (u64, u64, u64, u64) {
    mesh_run_woken(skip, load).0
}

/// [`mesh_run`], and the times the nodes' timers woke their cores.
fn mesh_run_woken(skip: bool, load: &MeshRun) -> ((u64, u64, u64, u64), u64) {
    let (sim, served) = mesh_demand::run(load, |sim| sim.skip_quiet_refills(skip));
    (
        (
            sim.trace_hash,
            served,
            sim.quiet_refills_skipped(),
            sim.quiet_refills_looked(),
        ),
        sim.timer_wakeups,
    )
}

#[test]
fn quiet_ticks_do_not_wake_the_node_at_all() {
    // The same run (the tests above), with far fewer wake-ups: a node sleeps through the
    // ticks it would skip.
    let ((hash_on, ..), woken_on) = mesh_run_woken(true, &MODEST);
    let ((hash_off, ..), woken_off) = mesh_run_woken(false, &MODEST);
    assert_eq!(hash_on, hash_off);
    assert!(
        woken_on * 2 < woken_off,
        "{woken_on} wake-ups sleeping through quiet ticks, {woken_off} ticking always"
    );
    eprintln!("{woken_on} wake-ups against {woken_off}");
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
