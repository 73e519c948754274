//! `kagi plan` from the command line: JSON a planner can script against, a topology written back
//! that `kagi up` accepts, and clear errors for impossible policies.

mod common;

use common::{err, kagi, ok, TempDir};

#[test]
fn plan_prints_json_and_writes_the_topology() {
    let tmp = TempDir::new("plan");
    let file = tmp.path().join("mesh.toml");
    let out = ok(kagi()
        .args([
            "plan",
            "--grid-mesh",
            "30",
            "--paths",
            "2",
            "--json",
            "--write-topology",
        ])
        .arg(&file)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"], 30);
    assert_eq!(v["pairs"], 30 * 29 / 2);
    assert!(v["delivered_bps"].as_f64().unwrap() > 0.0);
    assert_eq!(v["pair_rates"].as_array().unwrap().len(), 30 * 29 / 2);
    assert!(v["median_cut_gain"].as_f64().unwrap() >= 1.0 - 1e-9);
    let topo = kagi_control::Topology::from_toml(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(topo.nodes.len(), 30);
    // The written topology plans the same.
    let again = ok(kagi()
        .args(["plan", "--paths", "2", "--json", "--topology"])
        .arg(&file)
        .output()
        .unwrap());
    let w: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v["delivered_bps"], w["delivered_bps"]);
    // The map: every node and link drawn.
    let map = tmp.path().join("map.svg");
    ok(kagi()
        .args(["plan", "--svg"])
        .arg(&map)
        .arg("--topology")
        .arg(&file)
        .output()
        .unwrap());
    let svg = std::fs::read_to_string(&map).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<circle ").count(), 30);
    assert_eq!(svg.matches("<line ").count(), topo.links.len());
}

#[test]
fn impossible_policies_and_files_are_refused_clearly() {
    let e = err(&kagi()
        .args(["plan", "--paths", "2", "--threshold", "3"])
        .output()
        .unwrap());
    assert!(e.contains("threshold 1..=paths"), "{e}");
    let e = err(&kagi().args(["plan", "--demand-bps=-5"]).output().unwrap());
    assert!(e.contains("positive"), "{e}");
    let e = err(&kagi()
        .args(["plan", "--topology", "/nonexistent.toml"])
        .output()
        .unwrap());
    assert!(e.contains("/nonexistent.toml"), "{e}");
}

#[test]
fn the_japan_example_plans_and_key_routing_lifts_the_weakest_pair() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/japan-backbone.toml"
    );
    let run = |cost: &str| -> serde_json::Value {
        let out = ok(kagi()
            .args(["plan", "--json", "--cost", cost, "--topology", file])
            .output()
            .unwrap());
        serde_json::from_str(&out).unwrap()
    };
    let (hops, key) = (run("hops"), run("key"));
    assert_eq!(hops["nodes"], 39);
    assert_eq!(hops["unreachable_pairs"], 0);
    let min = |v: &serde_json::Value| v["pair_bps"]["min"].as_f64().unwrap();
    // Hop routing sends Tokyo–Fukuoka over the satellite; key routing over the backbone.
    assert!(
        min(&key) > 100.0 * min(&hops),
        "{} vs {}",
        min(&key),
        min(&hops)
    );
}

#[test]
fn plan_takes_the_demand_kagi_sim_runs() {
    let topo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/japan24.toml"
    );
    let out = ok(kagi()
        .args([
            "plan",
            "--json",
            "--sim-demand",
            "--seed",
            "1",
            "--topology",
            topo,
        ])
        .args(["--requests-per-hour", "3600", "--keys-per-request", "2"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 24 nodes × 4 SAEs (kagi sim's default), each the master of one pair asking 512 b/s.
    assert_eq!(v["saes"], 96);
    let pairs = kagi_sim::study::sim_demand_pairs(
        &kagi_control::Topology::from_toml(&std::fs::read_to_string(topo).unwrap()).unwrap(),
        4,
        1,
    )
    .unwrap();
    let node_pairs: std::collections::BTreeSet<_> = pairs
        .iter()
        .map(|p| (p.2.clone().min(p.3.clone()), p.2.clone().max(p.3.clone())))
        .collect();
    assert_eq!(v["pairs"], node_pairs.len());
    let delivered = v["delivered_bps"].as_f64().unwrap();
    assert!((delivered - 96.0 * 512.0).abs() < 1e-6, "{delivered}");
    // The sim's demand flags mean nothing without --sim-demand.
    let e = err(&kagi()
        .args(["plan", "--requests-per-hour", "10"])
        .output()
        .unwrap());
    assert!(e.contains("--sim-demand"), "{e}");
}
