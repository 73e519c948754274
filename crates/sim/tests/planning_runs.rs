//! What long planning runs leave out, and that it changes nothing in the run:
//! - the nodes' virtual stores, where no node stops (`Sim::keep_stores(false)`, what `kagi sim`
//!   does without node failures): the nodes still make, wait for and order every write;
//! - the safety oracle (`Sim::check_keys(false)`, `kagi sim` without `--check-keys`), which
//!   would hold every key served for the whole run;
//! - the trace hash (`Sim::keep_trace(false)`, what every `kagi sim` study does).
//!
//! Either way the run must be the same event for event.

mod mesh_demand;

use std::time::Duration;

use kagi_km::Policy;
use kagi_sim::{Faults, LinkSupply, Sim};
use mesh_demand::{Failures, MeshRun};

/// The mesh with demand and no failing node; returns the trace hash, the key digest, the
/// requests served and the keys the oracle saw delivered.
fn mesh_run(keep: bool, check: bool) -> (u64, u64, u64, usize) {
    mesh_run_traced(keep, check, true).0
}

/// [`mesh_run`], with or without the trace; also returns the trace hash as the run began.
fn mesh_run_traced(keep: bool, check: bool, trace: bool) -> ((u64, u64, u64, usize), u64) {
    let mut began = 0;
    let m = MeshRun {
        block_interval: Duration::from_millis(50),
        block_bytes: 4096,
        request: 0.5,
        failures: Failures::None,
    };
    let (sim, served) = mesh_demand::run(&m, |sim| {
        sim.keep_stores(keep);
        sim.check_keys(check);
        sim.keep_trace(trace);
        began = sim.trace_hash;
    });
    (
        (
            sim.trace_hash,
            sim.key_digest(),
            served,
            sim.oracle().delivered(),
        ),
        began,
    )
}

#[test]
fn a_run_without_kept_stores_is_the_same_event_for_event() {
    let kept = mesh_run(true, true);
    let unkept = mesh_run(false, true);
    assert!(kept.2 > 50, "too little served to compare: {}", kept.2);
    assert_eq!(kept, unkept);
}

#[test]
fn a_run_without_the_oracle_is_the_same_event_for_event_and_holds_no_keys() {
    let checked = mesh_run(true, true);
    let unchecked = mesh_run(true, false);
    assert!(checked.3 > 50, "the oracle saw too little: {}", checked.3);
    assert_eq!(unchecked.3, 0, "the oracle held keys it was not to check");
    assert_eq!(
        (checked.0, checked.1, checked.2),
        (unchecked.0, unchecked.1, unchecked.2)
    );
}

#[test]
fn a_run_without_the_trace_serves_the_same_keys_and_leaves_the_hash_untouched() {
    let (traced, traced_began) = mesh_run_traced(true, true, true);
    let (untraced, untraced_began) = mesh_run_traced(true, true, false);
    assert!(traced.2 > 50, "too little served to compare: {}", traced.2);
    assert_eq!(
        (traced.1, traced.2, traced.3),
        (untraced.1, untraced.2, untraced.3)
    );
    assert_ne!(traced.0, traced_began, "the traced run folded nothing in");
    assert_eq!(
        untraced.0, untraced_began,
        "an untraced run hashed something"
    );
}

#[test]
#[should_panic(expected = "keeps no stores")]
fn stopping_a_node_when_stores_are_not_kept_panics() {
    let topo = kagi_sim::plan::synth::grid_mesh(4, 2);
    let id = topo.nodes[0].id.clone();
    let mut sim = Sim::new(
        topo,
        1,
        Faults::default(),
        LinkSupply::default(),
        Policy::default(),
    );
    sim.keep_stores(false);
    sim.run_for(Duration::from_secs(1));
    sim.crash(&id);
}
