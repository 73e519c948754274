//! Up to *n* node-disjoint paths between two nodes, with the least total cost.
//!
//! Suurballe/Bhandari as a min-cost flow: every node other than the two ends is split into an
//! "in" and an "out" half joined by an arc of capacity 1, so a node carries at most one path;
//! each link becomes two arcs of capacity 1 and the link's cost (hop count by default). Each
//! round augments along a shortest path of the residual graph (Bellman–Ford, since residual arcs
//! have negative costs); a later path may reroute an earlier one, which a greedy "shortest path,
//! remove it, repeat" cannot do (the trap topology in the tests). Arcs are scanned in a fixed
//! order and only strict improvements are taken, so every node computes the same paths.

use std::collections::BTreeMap;

use crate::Topology;

/// Constraints on a set of disjoint paths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathQuery<'a> {
    /// Most paths wanted.
    pub max_paths: usize,
    /// Nodes no path may touch (the two ends excepted: asking to avoid them is an error the
    /// caller reports).
    pub avoid: &'a [String],
}

#[derive(Debug, Clone)]
struct Arc {
    to: usize,
    cap: i32,
    cost: f64,
    rev: usize,
}

struct Graph {
    arcs: Vec<Vec<Arc>>,
}

impl Graph {
    fn new(n: usize) -> Self {
        Self {
            arcs: vec![Vec::new(); n],
        }
    }

    fn add(&mut self, from: usize, to: usize, cap: i32, cost: f64) {
        let rf = self.arcs[to].len() + usize::from(from == to);
        let rt = self.arcs[from].len();
        self.arcs[from].push(Arc {
            to,
            cap,
            cost,
            rev: rf,
        });
        self.arcs[to].push(Arc {
            to: from,
            cap: 0,
            cost: -cost,
            rev: rt,
        });
    }

    /// Bellman–Ford from `s`; returns the predecessor arc of every reachable vertex.
    fn shortest(&self, s: usize) -> Vec<Option<(usize, usize)>> {
        let n = self.arcs.len();
        let mut dist = vec![f64::INFINITY; n];
        let mut prev: Vec<Option<(usize, usize)>> = vec![None; n];
        dist[s] = 0.0;
        for _ in 0..n {
            let mut changed = false;
            for u in 0..n {
                if dist[u].is_infinite() {
                    continue;
                }
                for (i, a) in self.arcs[u].iter().enumerate() {
                    if a.cap > 0 && dist[u] + a.cost < dist[a.to] - 1e-9 {
                        dist[a.to] = dist[u] + a.cost;
                        prev[a.to] = Some((u, i));
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        prev
    }
}

/// Up to `q.max_paths` node-disjoint paths `[src, ..., dst]` of least total cost, shortest
/// first (ties by node IDs). Empty when `src == dst`, either end is unknown or avoided, or no
/// path exists. Link costs are `LinkSpec::cost` (1 per hop when unset), as in [`crate::Routes`].
pub fn disjoint_paths(
    topo: &Topology,
    src: &str,
    dst: &str,
    q: &PathQuery<'_>,
) -> Vec<Vec<String>> {
    let mut ids: Vec<&str> = topo.nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let index: BTreeMap<&str, usize> = ids.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let (Some(&s), Some(&t)) = (index.get(src), index.get(dst)) else {
        return Vec::new();
    };
    let avoided = |n: &str| q.avoid.iter().any(|a| a == n);
    if s == t || q.max_paths == 0 || avoided(src) || avoided(dst) {
        return Vec::new();
    }
    // Vertex 2i is node i's "in" half, 2i+1 its "out" half.
    let mut g = Graph::new(2 * ids.len());
    // The ends need no split arc: paths start at the source's out half and end at the sink's in
    // half, so no path can pass through either end.
    for (i, n) in ids.iter().enumerate() {
        if !avoided(n) && i != s && i != t {
            g.add(2 * i, 2 * i + 1, 1, 0.0);
        }
    }
    let mut links: Vec<(usize, usize, f64)> = topo
        .links
        .iter()
        .filter_map(|l| {
            let (a, b) = (*index.get(l.a.as_str())?, *index.get(l.b.as_str())?);
            (a != b && !avoided(&l.a) && !avoided(&l.b)).then_some((a, b, l.cost.unwrap_or(1.0)))
        })
        .collect();
    links.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)).then(x.2.total_cmp(&y.2)));
    for (a, b, c) in links {
        g.add(2 * a + 1, 2 * b, 1, c);
        g.add(2 * b + 1, 2 * a, 1, c);
    }
    let (source, sink) = (2 * s + 1, 2 * t);
    let mut found = 0;
    while found < q.max_paths {
        let prev = g.shortest(source);
        if prev[sink].is_none() {
            break;
        }
        let mut v = sink;
        while v != source {
            let Some((u, i)) = prev[v] else { break };
            g.arcs[u][i].cap -= 1;
            let rev = g.arcs[u][i].rev;
            g.arcs[v][rev].cap += 1;
            v = u;
        }
        found += 1;
    }
    // Decompose the flow: follow saturated original arcs from the source's out half.
    let mut paths = Vec::with_capacity(found);
    for _ in 0..found {
        let mut path = vec![ids[s].to_string()];
        let mut v = source;
        while v != sink {
            // An original link arc (cost ≥ 0, from an out half to an in half) carrying flow has
            // its reverse arc's capacity raised; take the first one and consume it.
            let Some(i) = g.arcs[v]
                .iter()
                .position(|a| a.to % 2 == 0 && a.to != v - 1 && flow_on(&g, a))
            else {
                break;
            };
            let (to, rev) = (g.arcs[v][i].to, g.arcs[v][i].rev);
            g.arcs[to][rev].cap -= 1; // consumed
            path.push(ids[to / 2].to_string());
            v = if to == sink { sink } else { to + 1 };
        }
        if v == sink {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    paths
}

/// True when the original arc `a` carries unconsumed flow (its reverse has capacity).
fn flow_on(g: &Graph, a: &Arc) -> bool {
    g.arcs[a.to][a.rev].cap > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{builtin, LinkSpec, NodeSpec};

    fn topo(nodes: &[&str], links: &[(&str, &str)]) -> Topology {
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
                    saes: vec![],
                    peer_addr: None,
                    etsi014_addr: None,
                    ..Default::default()
                })
                .collect(),
            links: links
                .iter()
                .map(|(a, b)| LinkSpec {
                    a: a.to_string(),
                    b: b.to_string(),
                    length_km: 10.0,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn q(n: usize) -> PathQuery<'static> {
        PathQuery {
            max_paths: n,
            avoid: &[],
        }
    }

    fn assert_disjoint(paths: &[Vec<String>], src: &str, dst: &str) {
        let mut seen = std::collections::BTreeSet::new();
        for p in paths {
            assert_eq!(p.first().map(String::as_str), Some(src));
            assert_eq!(p.last().map(String::as_str), Some(dst));
            for n in &p[1..p.len() - 1] {
                assert!(seen.insert(n.clone()), "{n} on two paths: {paths:?}");
            }
        }
    }

    #[test]
    fn complete_graph_gives_three_paths_shortest_first() {
        let t = topo(
            &["a", "b", "c", "d"],
            &[
                ("a", "b"),
                ("a", "c"),
                ("a", "d"),
                ("b", "c"),
                ("b", "d"),
                ("c", "d"),
            ],
        );
        let p = disjoint_paths(&t, "a", "d", &q(5));
        assert_eq!(
            p,
            vec![vec!["a", "d"], vec!["a", "b", "d"], vec!["a", "c", "d"]]
        );
        assert_eq!(disjoint_paths(&t, "a", "d", &q(2)).len(), 2);
        assert_eq!(disjoint_paths(&t, "a", "d", &q(1)), vec![vec!["a", "d"]]);
    }

    /// The trap: the single shortest path s-a-b-t uses the middle of both detours, so removing it
    /// leaves no second path; the flow reroutes it and finds two.
    #[test]
    fn trap_topology_needs_rerouting() {
        let t = topo(
            &["s", "a", "b", "c", "d", "t"],
            &[
                ("s", "a"),
                ("a", "b"),
                ("b", "t"),
                ("s", "c"),
                ("c", "b"),
                ("a", "d"),
                ("d", "t"),
            ],
        );
        let p = disjoint_paths(&t, "s", "t", &q(2));
        assert_eq!(p.len(), 2, "{p:?}");
        assert_disjoint(&p, "s", "t");
        assert_eq!(p, vec![vec!["s", "a", "d", "t"], vec!["s", "c", "b", "t"]]);
    }

    #[test]
    fn builtin_has_two_disjoint_paths_from_koganei_to_otemachi_and_one_to_ueno() {
        let t = builtin::tokyo();
        let p = disjoint_paths(&t, "koganei", "otemachi", &q(3));
        assert_eq!(p.len(), 2, "koganei has two links: {p:?}");
        assert_disjoint(&p, "koganei", "otemachi");
        // Every way into ueno passes otemachi (hakusan hangs off otemachi).
        assert_eq!(disjoint_paths(&t, "koganei", "ueno", &q(3)).len(), 1);
    }

    #[test]
    fn avoided_nodes_and_edge_cases() {
        let t = topo(
            &["a", "b", "c", "d"],
            &[
                ("a", "b"),
                ("a", "c"),
                ("a", "d"),
                ("b", "c"),
                ("b", "d"),
                ("c", "d"),
            ],
        );
        let avoid = vec!["d".to_string()];
        let p = disjoint_paths(
            &t,
            "a",
            "c",
            &PathQuery {
                max_paths: 3,
                avoid: &avoid,
            },
        );
        assert_eq!(p, vec![vec!["a", "c"], vec!["a", "b", "c"]]);
        assert!(disjoint_paths(&t, "a", "a", &q(3)).is_empty());
        assert!(disjoint_paths(&t, "a", "zz", &q(3)).is_empty());
        assert!(disjoint_paths(
            &t,
            "a",
            "d",
            &PathQuery {
                max_paths: 3,
                avoid: &avoid
            }
        )
        .is_empty());
        let line = topo(&["a", "b", "c"], &[("a", "b"), ("b", "c")]);
        assert_eq!(
            disjoint_paths(&line, "a", "c", &q(3)),
            vec![vec!["a", "b", "c"]]
        );
    }

    /// Random graphs: paths are valid walks over links, node-disjoint, and as many as a brute
    /// force over simple paths finds (up to 3).
    #[test]
    fn random_graphs_match_brute_force_count() {
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        for _ in 0..200 {
            let mut links = Vec::new();
            for i in 0..names.len() {
                for j in i + 1..names.len() {
                    if next() % 3 == 0 {
                        links.push((names[i], names[j]));
                    }
                }
            }
            let t = topo(&names, &links);
            let p = disjoint_paths(&t, "a", "g", &q(3));
            assert_disjoint(&p, "a", "g");
            for path in &p {
                for w in path.windows(2) {
                    assert!(t.link(&w[0], &w[1]).is_some(), "{path:?} uses a non-link");
                }
            }
            assert_eq!(p.len(), brute_force_max(&t, "a", "g", 3), "{links:?}");
        }
    }

    fn brute_force_max(t: &Topology, s: &str, d: &str, cap: usize) -> usize {
        fn all_paths(
            t: &Topology,
            cur: &str,
            d: &str,
            seen: &mut Vec<String>,
            out: &mut Vec<Vec<String>>,
        ) {
            if cur == d {
                out.push(seen.clone());
                return;
            }
            let next: Vec<String> = t.neighbours(cur).map(|(n, _)| n.to_string()).collect();
            for n in next {
                if !seen.contains(&n) {
                    seen.push(n.clone());
                    all_paths(t, &n, d, seen, out);
                    seen.pop();
                }
            }
        }
        let mut paths = Vec::new();
        all_paths(t, s, d, &mut vec![s.to_string()], &mut paths);
        fn best(paths: &[Vec<String>], i: usize, used: &mut Vec<String>, cap: usize) -> usize {
            if i == paths.len() || cap == 0 {
                return 0;
            }
            let skip = best(paths, i + 1, used, cap);
            let inner = &paths[i][1..paths[i].len() - 1];
            if inner.iter().any(|n| used.contains(n))
                || (inner.is_empty() && used.contains(&"<direct>".to_string()))
            {
                return skip;
            }
            let mark: Vec<String> = if inner.is_empty() {
                vec!["<direct>".into()]
            } else {
                inner.to_vec()
            };
            used.extend(mark.iter().cloned());
            let take = 1 + best(paths, i + 1, used, cap - 1);
            used.truncate(used.len() - mark.len());
            skip.max(take)
        }
        best(&paths, 0, &mut Vec::new(), cap)
    }
}
