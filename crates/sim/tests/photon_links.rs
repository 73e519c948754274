//! Photon-level links inside `kagi sim` (issue 12, items 5 and 6): the photon link's state
//! machine at both ends, the photon simulator and the full post-processing protocol run under
//! the simulator's virtual time, and their keys feed the real key managers.
//!
//! Checked on every run: both ends' keys of every block both delivered are identical, no end
//! delivers a block twice, and (where asked) no authentication pad tags two messages; the
//! oracle checks every key an application gets.

use std::time::Duration;

use kagi_control::Topology;
use kagi_km::{AppCall, AppReply, Policy};
use kagi_sim::study::{study, FailureMode, StudyOptions};
use kagi_sim::{Faults, LinkSupply, Sim};

fn topo() -> Topology {
    Topology::from_toml(include_str!("../../../docs/examples/photon-small.toml")).unwrap()
}

#[test]
fn a_study_runs_the_photon_link_and_delivers_identical_key_end_to_end() {
    let t = topo();
    let r = study(
        &t,
        &StudyOptions {
            hours: 0.004,
            saes_per_node: 2,
            requests_per_hour: 1200.0,
            seed: 3,
            ..StudyOptions::default()
        },
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&r.photon_links).unwrap());
    assert!(r.photon_violations.is_empty(), "{:?}", r.photon_violations);
    assert_eq!(r.photon_links.len(), 1);
    let p = &r.photon_links[0];
    assert_eq!((p.a.as_str(), p.b.as_str()), ("hongo", "yayoi"));
    assert!(p.blocks_delivered >= 3, "{p:?}");
    assert_eq!((p.mismatched_blocks, p.duplicate_blocks), (0, 0));
    assert!(p.key_bits > 0);
    // SAE pairs across the photon link (hongo's with a slave at yayoi or at nezu, beyond it) get
    // key end to end; the oracle checked every key they got.
    let across: Vec<_> = r
        .pairs
        .iter()
        .filter(|x| x.a_node == "hongo" || x.b_node == "hongo")
        .collect();
    assert!(!across.is_empty());
    let served: u64 = across.iter().map(|x| x.served).sum();
    assert!(served > 0, "{across:?}");
    assert_eq!(r.refused_other, 0);
}

/// Node hongo's key for `sae-yayoi`, fetched at yayoi: both answers are checked by the oracle.
fn key_across(sim: &mut Sim) -> bool {
    let req = sim.call(
        "hongo",
        AppCall::EncKeys {
            master: "sae-hongo".into(),
            slave: "sae-yayoi".into(),
            number: Some(1),
            size_bits: None,
            additional_slaves: vec![],
            route: None,
        },
    );
    let Some(Ok(AppReply::Keys(k))) = sim
        .run_until_answered(req, Duration::from_secs(5))
        .map(|a| a.reply)
    else {
        return false;
    };
    let req = sim.call(
        "yayoi",
        AppCall::DecKeys {
            slave: "sae-yayoi".into(),
            master: "sae-hongo".into(),
            key_ids: k.iter().map(|k| k.id).collect(),
        },
    );
    matches!(
        sim.run_until_answered(req, Duration::from_secs(5))
            .map(|a| a.reply),
        Some(Ok(AppReply::Keys(_)))
    )
}

#[test]
fn frame_loss_and_crashes_of_both_ends_reuse_no_pad_and_blocks_resume() {
    let faults = Faults {
        latency: (Duration::from_millis(1), Duration::from_millis(5)),
        ..Faults::default()
    };
    let mut sim = Sim::new(topo(), 5, faults, LinkSupply::default(), Policy::default());
    assert_eq!(sim.run_photon_links(), Ok(1));
    sim.check_photon_pads();
    // A block is 400–500 messages (Cascade); a lost one costs Bob's resend wait (2 s).
    sim.photon_frame_loss(0.003);
    let delivered = |sim: &Sim| sim.photon_stats()[0].blocks_delivered;
    sim.run_for(Duration::from_secs(8));
    assert!(delivered(&sim) >= 1, "{:?}", sim.photon_stats());
    // Alice's node crashes in the middle of whatever block is under way, and comes back.
    sim.crash("hongo");
    sim.run_for(Duration::from_secs(1));
    sim.restart("hongo");
    sim.run_for(Duration::from_secs(8));
    let after_alice = delivered(&sim);
    println!("{:?}", sim.photon_stats());
    // Then Bob's.
    sim.crash("yayoi");
    sim.run_for(Duration::from_millis(700));
    sim.restart("yayoi");
    sim.run_for(Duration::from_secs(10));
    let s = &sim.photon_stats()[0];
    println!("{s:?}");
    assert!(
        sim.photon_violations().is_empty(),
        "{:?}",
        sim.photon_violations()
    );
    assert_eq!(
        (s.mismatched_blocks, s.duplicate_blocks, s.pad_reuses),
        (0, 0, 0)
    );
    assert!(
        s.blocks_delivered > after_alice,
        "no block with key at both ends after Bob's restart: {s:?}"
    );
    assert!(key_across(&mut sim), "no key across the photon link");
}

#[test]
fn failing_and_freezing_nodes_keep_photon_keys_identical_and_a_study_repeats_exactly() {
    let t = topo();
    for mode in [FailureMode::Crash, FailureMode::Freeze] {
        let opt = StudyOptions {
            hours: 0.003,
            saes_per_node: 1,
            requests_per_hour: 1200.0,
            node_mtbf_hours: Some(0.001),
            repair_minutes: 0.03,
            failure_mode: mode,
            seed: 11,
            ..StudyOptions::default()
        };
        let r = study(&t, &opt).unwrap();
        let p = &r.photon_links[0];
        println!("{mode:?}: {} node failures, {p:?}", r.node_failures);
        assert!(r.node_failures >= 3, "{mode:?}: {}", r.node_failures);
        assert!(r.photon_violations.is_empty(), "{:?}", r.photon_violations);
        assert_eq!((p.mismatched_blocks, p.duplicate_blocks), (0, 0));
        assert!(p.blocks_delivered >= 2, "{mode:?}: {p:?}");
        // The photon links' machines, simulator and protocol are seeded from the study's seed.
        let again = study(&t, &opt).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&again).unwrap(),
            "{mode:?}"
        );
    }
}
