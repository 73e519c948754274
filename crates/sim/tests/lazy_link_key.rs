//! Link blocks delivered as lazy keys (produced only where a node reads them) are a pure
//! speed-up: a run is the same event for event as with the blocks' bytes produced at delivery.
//! The trace hash covers every event time and every message's bytes (relay hops carry pads
//! XOR-ed with link key); the key digest covers the bytes of every key answered to an SAE.

use std::time::Duration;

use kagi_sim::chaos::{self, ChaosConfig};
use kagi_sim::seeds;
use kagi_sim::study::{study, StudyOptions};

#[test]
fn under_every_fault_lazy_link_key_changes_no_event_and_no_key() {
    let mut delivered = 0;
    for seed in seeds(1, 8) {
        let lazy = chaos::run(seed, &ChaosConfig::default());
        let bytes = chaos::run(
            seed,
            &ChaosConfig {
                lazy_link_key: false,
                ..ChaosConfig::default()
            },
        );
        assert_eq!(lazy.trace_hash, bytes.trace_hash, "seed {seed}");
        assert_eq!(lazy.key_digest, bytes.key_digest, "seed {seed}");
        assert_eq!(
            (lazy.delivered, lazy.fetched, lazy.pad_bytes),
            (bytes.delivered, bytes.fetched, bytes.pad_bytes),
            "seed {seed}"
        );
        delivered += lazy.delivered;
    }
    assert!(delivered > 0, "no key was delivered");
}

mod mesh_demand;

use mesh_demand::{Failures, MeshRun};

/// The mesh run with link key lazy or not: returns the trace hash, the key digest and the keys
/// served. Blocks of an odd length: intake drops the last byte.
fn mesh_run(lazy: bool) -> (u64, u64, u64) {
    let m = MeshRun {
        block_interval: Duration::from_millis(100),
        block_bytes: 4 * 1024 + 1,
        request: 0.6,
        failures: Failures::CrashThenPowerLoss,
    };
    let (sim, served) = mesh_demand::run(&m, |sim| sim.lazy_link_key(lazy));
    (sim.trace_hash, sim.key_digest(), served)
}

#[test]
fn on_a_mesh_with_demand_and_crashes_lazy_link_key_changes_no_event_and_no_key() {
    let lazy = mesh_run(true);
    let bytes = mesh_run(false);
    assert_eq!(lazy, bytes);
    assert!(lazy.2 > 20, "{} requests served", lazy.2);
}

#[test]
fn a_study_gives_the_same_report_with_lazy_link_key() {
    let topo = kagi_control::builtin::tokyo();
    let opt = StudyOptions {
        hours: 0.03,
        saes_per_node: 2,
        requests_per_hour: 1200.0,
        rate_multiplier: 4.0,
        node_mtbf_hours: Some(0.02),
        repair_minutes: 0.5,
        seed: 3,
        ..StudyOptions::default()
    };
    assert!(opt.lazy_link_key, "lazy is the default");
    let lazy = study(&topo, &opt).unwrap();
    let bytes = study(
        &topo,
        &StudyOptions {
            lazy_link_key: false,
            ..opt
        },
    )
    .unwrap();
    assert!(lazy.delivered_bits > 0);
    assert_eq!(
        serde_json::to_string(&lazy).unwrap(),
        serde_json::to_string(&bytes).unwrap()
    );
}
