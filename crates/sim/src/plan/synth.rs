//! Synthetic planning topologies: a jittered grid mesh of metro-scale fibre links (10–80 km,
//! node degree 2–4), for sizing studies and the planner's scale benchmark.

use kagi_control::{LinkSpec, NodeSpec, Topology};
use rand::{Rng, SeedableRng};

/// A connected mesh of `n` nodes on a jittered grid, about 40 km apart, each joined to its
/// right and lower neighbours; about one link in six is left out where the mesh stays
/// connected. Deterministic in `seed`.
pub fn grid_mesh(n: usize, seed: u64) -> Topology {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w = (n as f64).sqrt().ceil().max(1.0) as usize;
    let name = |i: usize| format!("n{i:05}");
    let pos: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            (
                x * 40.0 + rng.gen_range(-12.0..12.0),
                y * 40.0 + rng.gen_range(-12.0..12.0),
            )
        })
        .collect();
    let mut candidates = Vec::new();
    for i in 0..n {
        if (i % w) + 1 < w && i + 1 < n {
            candidates.push((i, i + 1));
        }
        if i + w < n {
            candidates.push((i, i + w));
        }
    }
    // Keep a spanning tree (union-find over a shuffled order), then most of the rest.
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for i in (1..candidates.len()).rev() {
        let j = rng.gen_range(0..=i);
        candidates.swap(i, j);
    }
    let mut links = Vec::new();
    let mut spare = Vec::new();
    for (a, b) in candidates {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent[ra] = rb;
            links.push((a, b));
        } else {
            spare.push((a, b));
        }
    }
    for (a, b) in spare {
        if rng.gen_bool(5.0 / 6.0) {
            links.push((a, b));
        }
    }
    links.sort_unstable();
    Topology {
        name: format!("grid-mesh-{n}"),
        seed,
        epoch_unix: 0,
        rate_multiplier: 1.0,
        insecure_demo_links: false,
        nodes: (0..n)
            .map(|i| NodeSpec {
                id: name(i),
                saes: vec![format!("sae-{}", name(i))],
                peer_addr: None,
                etsi014_addr: None,
                ..Default::default()
            })
            .collect(),
        links: links
            .into_iter()
            .map(|(a, b)| {
                let d = ((pos[a].0 - pos[b].0).powi(2) + (pos[a].1 - pos[b].1).powi(2)).sqrt();
                LinkSpec {
                    a: name(a),
                    b: name(b),
                    length_km: d.clamp(10.0, 80.0).round(),
                    ..Default::default()
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn meshes_are_connected_valid_and_deterministic() {
        for n in [1, 2, 7, 48, 300] {
            let t = super::grid_mesh(n, 3);
            t.validate().unwrap();
            assert_eq!(t.nodes.len(), n);
            let r = kagi_control::Routes::compute(&t, &t.nodes[0].id, &[]);
            for node in &t.nodes {
                assert!(r.path(&node.id).is_some(), "{} unreachable in {n}", node.id);
            }
            assert!(t.links.iter().all(|l| (10.0..=80.0).contains(&l.length_km)));
            assert_eq!(t, super::grid_mesh(n, 3));
        }
    }
}
