//! A node whose database is lost while the rest of the network keeps running (issue 10, "survive
//! lost and restored databases"). Open: the restarted node reuses relay and assignment counters
//! its peers have already seen, so a destination acknowledges a new relay as a duplicate of an
//! old one and serves other bytes than the master got. Store epochs and reconciliation will fix
//! it; until then this test is ignored. Run it with
//! `cargo test --release -p kagi-sim --test wiped_store -- --ignored`.

use std::time::Duration;

use kagi_control::Topology;
use kagi_km::{AppCall, AppReply, Policy};
use kagi_sim::{seeds, Faults, LinkSupply, Sim};

fn exchange(sim: &mut Sim) {
    let req = sim.call(
        "a",
        AppCall::EncKeys {
            master: "sae-a".into(),
            slave: "sae-c".into(),
            number: Some(2),
            size_bits: Some(256),
            additional_slaves: vec![],
        },
    );
    let Some(Ok(AppReply::Keys(keys))) = sim
        .run_until_answered(req, Duration::from_secs(10))
        .map(|a| a.reply)
    else {
        return; // refused: allowed
    };
    let req = sim.call(
        "c",
        AppCall::DecKeys {
            slave: "sae-c".into(),
            master: "sae-a".into(),
            key_ids: keys.iter().map(|k| k.id).collect(),
        },
    );
    // The oracle compares the slave's bytes with the master's.
    let _ = sim.run_until_answered(req, Duration::from_secs(5));
}

#[test]
#[ignore = "open: store epochs and reconciliation after a lost database"]
fn a_node_restarted_with_an_empty_database_never_serves_wrong_or_repeated_key() {
    for seed in seeds(1, 10) {
        let mut t = Topology::line("w", &["a", "b", "c"], 20.0, |n| vec![format!("sae-{n}")]);
        t.seed = 3;
        let policy = Policy {
            pool_target_bytes: 8 * 1024,
            relay_chunk_bytes: 1024,
            ..Policy::default()
        };
        let mut sim = Sim::new(t, seed, Faults::default(), LinkSupply::default(), policy);
        sim.run_for(Duration::from_secs(1));
        for _ in 0..5 {
            exchange(&mut sim);
        }
        sim.wipe("a");
        sim.run_for(Duration::from_millis(200));
        sim.restart("a");
        sim.run_for(Duration::from_secs(2));
        for _ in 0..40 {
            exchange(&mut sim);
            sim.run_for(Duration::from_millis(50));
        }
    }
}
