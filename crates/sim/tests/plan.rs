//! The flow-level planner: its routes are the node's routes, its disjoint paths are optimal and
//! disjoint, and its rates follow from link rates, overheads and fairness by hand.

use kagi_control::{LinkSpec, NodeSpec, Routes, Topology};
use kagi_sim::plan::graph::Graph;
use kagi_sim::plan::paths::{self, Cost, DisjointFinder};
use kagi_sim::plan::{plan, PlanError, PlanOptions, Split};

fn topo(nodes: &[&str], links: &[(&str, &str, f64)], saes: u32) -> Topology {
    Topology {
        name: "t".into(),
        seed: 1,
        epoch_unix: 0,
        rate_multiplier: 1.0,
        insecure_demo_links: false,
        nodes: nodes
            .iter()
            .map(|n| NodeSpec {
                id: n.to_string(),
                saes: (0..saes).map(|i| format!("sae-{n}-{i}")).collect(),
                peer_addr: None,
                etsi014_addr: None,
                ..Default::default()
            })
            .collect(),
        links: links
            .iter()
            .map(|(a, b, km)| LinkSpec {
                a: a.to_string(),
                b: b.to_string(),
                length_km: *km,
                ..Default::default()
            })
            .collect(),
    }
}

fn ids(g: &Graph, p: &[u32]) -> Vec<String> {
    p.iter().map(|&v| g.ids[v as usize].clone()).collect()
}

#[test]
fn single_paths_are_the_nodes_own_routes() {
    for t in [kagi_control::builtin::tokyo(), grid(5, 4)] {
        let g = Graph::new(&t);
        let costs = paths::link_costs(
            &g,
            &t.links.iter().map(|l| l.cost).collect::<Vec<_>>(),
            Cost::Hops,
        );
        let rank = paths::id_ranks(&g);
        for (si, s) in t.nodes.iter().enumerate() {
            let routes = Routes::compute(&t, &s.id, &[]);
            let tree = paths::shortest_tree(&g, &costs, &rank, si as u32);
            for (di, d) in t.nodes.iter().enumerate() {
                if si == di {
                    continue;
                }
                let mine = paths::path_in_tree(&tree, si as u32, di as u32).map(|p| ids(&g, &p));
                let node = routes
                    .path(&d.id)
                    .map(|p| p.iter().map(|n| n.to_string()).collect::<Vec<_>>());
                assert_eq!(mine, node, "{} → {}", s.id, d.id);
            }
        }
    }
}

fn grid(w: usize, h: usize) -> Topology {
    let name = |x: usize, y: usize| format!("n{y:02}{x:02}");
    let names: Vec<String> = (0..h)
        .flat_map(|y| (0..w).map(move |x| name(x, y)))
        .collect();
    let mut links = Vec::new();
    for y in 0..h {
        for x in 0..w {
            if x + 1 < w {
                links.push((
                    name(x, y),
                    name(x + 1, y),
                    10.0 + ((x * 7 + y * 3) % 5) as f64 * 10.0,
                ));
            }
            if y + 1 < h {
                links.push((
                    name(x, y),
                    name(x, y + 1),
                    15.0 + ((x + y) % 4) as f64 * 12.0,
                ));
            }
        }
    }
    let n: Vec<&str> = names.iter().map(String::as_str).collect();
    let l: Vec<(&str, &str, f64)> = links
        .iter()
        .map(|(a, b, k)| (a.as_str(), b.as_str(), *k))
        .collect();
    topo(&n, &l, 1)
}

#[test]
fn disjoint_paths_avoid_the_greedy_trap() {
    // The classic trap: the shortest s→t path (s-a-b-t) blocks both detours, yet two disjoint
    // paths exist (s-a-c-t and s-d-b-t). A greedy "take the shortest, remove it" finds one.
    let t = topo(
        &["s", "a", "b", "t", "c", "d"],
        &[
            ("s", "a", 10.0),
            ("a", "b", 10.0),
            ("b", "t", 10.0),
            ("a", "c", 10.0),
            ("c", "t", 10.0),
            ("s", "d", 10.0),
            ("d", "b", 10.0),
        ],
        1,
    );
    let g = Graph::new(&t);
    let costs = vec![1.0; g.links.len()];
    let ps = DisjointFinder::new(&g, &costs).paths(0, 3, 3);
    let named: Vec<Vec<String>> = ps.iter().map(|p| ids(&g, p)).collect();
    assert_eq!(named.len(), 2, "{named:?}");
    let inner: Vec<&String> = named.iter().flat_map(|p| &p[1..p.len() - 1]).collect();
    let mut dedup = inner.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(inner.len(), dedup.len(), "paths share a node: {named:?}");
    for p in &named {
        assert_eq!((p[0].as_str(), p.last().unwrap().as_str()), ("s", "t"));
        for w in p.windows(2) {
            assert!(t.link(&w[0], &w[1]).is_some(), "{p:?} is not a path");
        }
    }
}

#[test]
fn a_line_gets_its_weakest_half_link_less_the_mac_key() {
    // a - b - c, only a and c have SAEs: each direction of a pair gets half of the weakest link,
    // net of the 32-byte MAC key per 4096-byte chunk and hop.
    let mut t = topo(&["a", "b", "c"], &[("a", "b", 10.0), ("b", "c", 40.0)], 1);
    t.nodes[1].saes.clear();
    let r = plan(&t, &PlanOptions::default()).unwrap();
    let weakest = t.link_mean_rate_bps(&t.links[1]);
    assert!(weakest > 0.0);
    let want = weakest / (1.0 + 32.0 / 4096.0); // both halves, one per direction
    assert_eq!(r.pairs, 1);
    assert!(
        (r.delivered_bps - want).abs() / want < 1e-9,
        "{} vs {want}",
        r.delivered_bps
    );
    assert_eq!(r.pair_rates[0].limited_by, "b-c");
    assert_eq!(r.pair_rates[0].hops, 2);
    // Two hops per delivered bit, plus the MAC keys.
    assert!((r.link_key_per_delivered_bit - 2.0 * (1.0 + 32.0 / 4096.0)).abs() < 1e-9);
    // Adaptive split: the same here (demand is symmetric) — both halves are used already.
    let a = plan(
        &t,
        &PlanOptions {
            split: Split::Adaptive,
            ..Default::default()
        },
    )
    .unwrap();
    assert!((a.delivered_bps - want).abs() / want < 1e-9);
}

#[test]
fn multi_path_costs_a_share_per_path_and_the_cut_bound_sees_both() {
    // A ring of four equal links: a↔c has two disjoint 2-hop paths. Single path: half of one
    // link per direction. Two paths with shares: every key costs a share on each path, so the
    // rate is the same but twice the key is spent; the min cut is twice the single path's rate.
    let mut t = topo(
        &["a", "b", "c", "d"],
        &[
            ("a", "b", 20.0),
            ("b", "c", 20.0),
            ("c", "d", 20.0),
            ("d", "a", 20.0),
        ],
        1,
    );
    t.nodes[1].saes.clear();
    t.nodes[3].saes.clear();
    let one = plan(&t, &PlanOptions::default()).unwrap();
    let two = plan(
        &t,
        &PlanOptions {
            paths: 2,
            threshold: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(two.pair_rates[0].paths, 2);
    assert!((one.delivered_bps - two.delivered_bps).abs() / one.delivered_bps < 1e-9);
    assert!((two.link_key_per_delivered_bit - 2.0 * one.link_key_per_delivered_bit).abs() < 1e-9);
    let c = &one.cut_samples[0];
    assert!((c.min_cut_bps / c.policy_bps - 2.0).abs() < 1e-9, "{c:?}");
    // Three paths are asked for but the ring has two: reported, not hidden.
    let three = plan(
        &t,
        &PlanOptions {
            paths: 3,
            threshold: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(three.fewer_paths_pairs, 1);
    assert_eq!(three.below_threshold_pairs, 0);
}

#[test]
fn fairness_is_per_sae_pair() {
    // A star: hub h, leaves x (3 SAEs), y and z (1 SAE each); every link alike. Pairs x-y and
    // x-z share link h-x; the x pairs carry 3 SAE pairs each, y-z one.
    let mut t = topo(
        &["h", "x", "y", "z"],
        &[("h", "x", 20.0), ("h", "y", 20.0), ("h", "z", 20.0)],
        1,
    );
    t.nodes[0].saes.clear();
    t.nodes[1].saes = vec!["sx1".into(), "sx2".into(), "sx3".into()];
    let r = plan(&t, &PlanOptions::default()).unwrap();
    let get = |a: &str, b: &str| r.pair_rates.iter().find(|p| p.a == a && p.b == b).unwrap();
    let (xy, xz, yz) = (get("x", "y"), get("x", "z"), get("y", "z"));
    assert!((xy.per_sae_pair_bps - xz.per_sae_pair_bps).abs() < 1e-6);
    assert_eq!(xy.limited_by, "h-x");
    // y-z is not limited by h-x, so it gets more per SAE pair.
    assert!(yz.per_sae_pair_bps > xy.per_sae_pair_bps);
}

#[test]
fn a_demand_cap_is_honoured() {
    let t = topo(&["a", "b"], &[("a", "b", 10.0)], 1);
    let r = plan(
        &t,
        &PlanOptions {
            demand_bps: Some(100.0),
            ..Default::default()
        },
    )
    .unwrap();
    assert!((r.delivered_bps - 200.0).abs() < 1e-9);
    assert_eq!(r.pair_rates[0].limited_by, "demand");
}

#[test]
fn bad_requests_get_clear_errors() {
    let t = topo(&["a", "b"], &[("a", "b", 10.0)], 1);
    for (p, th) in [(0, 1), (2, 3), (9, 1)] {
        let e = plan(
            &t,
            &PlanOptions {
                paths: p,
                threshold: th,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::Policy { .. }), "{e}");
    }
    let e = plan(
        &t,
        &PlanOptions {
            demand_bps: Some(-1.0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("positive"), "{e}");
    let mut bad = t.clone();
    bad.links[0].b = "nowhere".into();
    assert!(matches!(
        plan(&bad, &PlanOptions::default()),
        Err(PlanError::Topology(_))
    ));
}

#[test]
fn a_hopeless_extra_path_is_dropped_above_the_threshold() {
    // a–b–c over 10 km links, and a detour a–d–c over 250 km links that yield almost nothing.
    let mut t = topo(
        &["a", "b", "c", "d"],
        &[
            ("a", "b", 10.0),
            ("b", "c", 10.0),
            ("a", "d", 250.0),
            ("d", "c", 250.0),
        ],
        1,
    );
    t.nodes[1].saes.clear();
    t.nodes[3].saes.clear();
    let keep_one = plan(
        &t,
        &PlanOptions {
            paths: 2,
            threshold: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(keep_one.pair_rates[0].paths, 1);
    // With threshold 2 both paths are needed, so the detour stays and holds the rate down.
    let need_two = plan(
        &t,
        &PlanOptions {
            paths: 2,
            threshold: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(need_two.pair_rates[0].paths, 2);
    assert!(need_two.delivered_bps < keep_one.delivered_bps / 10.0);
}

#[test]
fn a_directed_demand_draws_only_its_own_direction() {
    // a - b - c; two SAE pairs with masters at a and slaves at c, none the other way: a → c
    // gets the weakest link's half (net of MAC key), shared by its two SAE pairs; the c → a
    // halves stay idle, and the link rate multiplier scales it all.
    let mut t = topo(&["a", "b", "c"], &[("a", "b", 10.0), ("b", "c", 40.0)], 1);
    t.nodes[1].saes.clear();
    let half = t.link_mean_rate_bps(&t.links[1]) / 2.0 / (1.0 + 32.0 / 4096.0);
    let directed = Some(vec![("a".to_string(), "c".to_string()); 2]);
    for m in [1.0, 3.0] {
        let r = plan(
            &t,
            &PlanOptions {
                directed: directed.clone(),
                rate_multiplier: m,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.pairs, 1);
        let p = &r.pair_rates[0];
        assert!((p.delivered_bps - m * half).abs() / half < 1e-9, "{p:?}");
        assert!((p.per_sae_pair_bps - m * half / 2.0).abs() / half < 1e-9);
        assert_eq!(p.sae_pairs, 2);
        assert_eq!(p.limited_by, "b-c");
        let bc = r.link_loads.iter().find(|l| l.a == "b").unwrap();
        assert!((bc.utilisation - 0.5).abs() < 1e-9, "{bc:?}");
    }
    // A capped directed demand gets exactly its cap.
    let r = plan(
        &t,
        &PlanOptions {
            directed: directed.clone(),
            demand_bps: Some(10.0),
            ..Default::default()
        },
    )
    .unwrap();
    assert!((r.delivered_bps - 20.0).abs() < 1e-9);
    for (bad, says) in [
        (("a", "x"), "unknown node x"),
        (("a", "a"), "does not leave"),
    ] {
        let e = plan(
            &t,
            &PlanOptions {
                directed: Some(vec![(bad.0.into(), bad.1.into())]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
}
