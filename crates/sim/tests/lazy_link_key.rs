//! Link blocks delivered as lazy keys (produced only where a node reads them) are a pure
//! speed-up: a run is the same event for event as with the blocks' bytes produced at delivery.
//! The trace hash covers every event time and every message's bytes (relay hops carry pads
//! XOR-ed with link key); the key digest covers the bytes of every key answered to an SAE.

use std::time::Duration;

use kagi_km::{AppCall, Policy};
use kagi_sim::chaos::{self, ChaosConfig};
use kagi_sim::study::{study, StudyOptions};
use kagi_sim::{seeds, Faults, LinkSupply, Sim};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

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

/// A 16-node mesh, four SAEs per node asking for keys to random other nodes, with two nodes
/// crashing and coming back: returns the trace hash, the key digest and the keys served.
fn mesh_run(lazy: bool) -> (u64, u64, u64) {
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
        interval: Duration::from_millis(100),
        block_bytes: 4 * 1024 + 1,
    };
    let mut sim = Sim::new(topo, 5, faults, supply, Policy::default());
    sim.lazy_link_key(lazy);
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
            sim.power_loss(&nodes[9]);
        }
        if step == 300 {
            sim.restart(&nodes[9]);
        }
        if rng.gen_bool(0.6) {
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
