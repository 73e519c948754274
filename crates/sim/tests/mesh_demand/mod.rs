//! A 16-node mesh, four SAEs per node asking for keys to random other nodes, while two nodes
//! fail and come back (or none fails): the run that tests of pure speed-ups repeat with the
//! speed-up on and off and compare event for event.

use std::time::Duration;

use kagi_km::{AppCall, Policy};
use kagi_sim::{Faults, LinkSupply, Sim};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Which nodes fail during the run.
#[allow(dead_code)] // each test binary that includes this module picks its own
pub enum Failures {
    /// One node crashes and restarts, then a second crashes (its store keeps every
    /// acknowledged write) and restarts.
    Crashes,
    /// As `Crashes`, but the second node's machine loses power (writes not yet acknowledged
    /// may be lost).
    CrashThenPowerLoss,
    /// No node fails.
    None,
}

/// What a mesh run varies.
pub struct MeshRun {
    /// Between link key blocks.
    pub block_interval: Duration,
    /// Bytes of each link key block.
    pub block_bytes: usize,
    /// Chance of a request every 25 ms.
    pub request: f64,
    /// Which nodes fail.
    pub failures: Failures,
}

/// Runs 10 simulated seconds on a `Sim` that `setup` configured first; returns the sim and the
/// keys served.
pub fn run(m: &MeshRun, setup: impl FnOnce(&mut Sim)) -> (Sim, u64) {
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
        interval: m.block_interval,
        block_bytes: m.block_bytes,
    };
    let mut sim = Sim::new(topo, 5, faults, supply, Policy::default());
    setup(&mut sim);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut served = 0;
    let mut open = Vec::new();
    for step in 0..400u32 {
        sim.run_for(Duration::from_millis(25));
        let fails = !matches!(m.failures, Failures::None);
        if fails && step == 120 {
            sim.crash(&nodes[5]);
        }
        if fails && step == 200 {
            sim.restart(&nodes[5]);
            match m.failures {
                Failures::CrashThenPowerLoss => sim.power_loss(&nodes[9]),
                _ => sim.crash(&nodes[9]),
            }
        }
        if fails && step == 300 {
            sim.restart(&nodes[9]);
        }
        if rng.gen_bool(m.request) {
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
    (sim, served)
}
