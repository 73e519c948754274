//! Shortest-path routing (Dijkstra over link cost, hop count by default), deterministic: ties go
//! to the lexicographically smaller node ID so every node computes the same paths.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use crate::{NodeId, Topology};

/// Paths from one node to every reachable node.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    paths: BTreeMap<NodeId, Vec<NodeId>>,
}

/// A heap entry: a node (by any string type: the search borrows the topology's IDs) and its
/// distance.
#[derive(PartialEq)]
struct Item<S>(f64, S);
impl<S: Ord> Eq for Item<S> {}
impl<S: Ord> PartialOrd for Item<S> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<S: Ord> Ord for Item<S> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on (cost, id).
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

impl Routes {
    /// Computes shortest paths from `src`, skipping nodes in `down`.
    pub fn compute(topo: &Topology, src: &str, down: &[String]) -> Self {
        // Each node's neighbours with their link costs, in the topology's link order (as
        // `Topology::neighbours` gives them), built once: asking the topology for every node
        // the search visits scans every link each time, which made large networks' route
        // recomputations quadratic.
        let mut adjacent: BTreeMap<&str, Vec<(&str, f64)>> = BTreeMap::new();
        for l in &topo.links {
            let cost = l.cost.unwrap_or(1.0);
            adjacent
                .entry(l.a.as_str())
                .or_default()
                .push((l.b.as_str(), cost));
            if l.b != l.a {
                adjacent
                    .entry(l.b.as_str())
                    .or_default()
                    .push((l.a.as_str(), cost));
            }
        }
        // The search borrows the IDs (an owned copy per visit was most of its cost); only the
        // paths it returns own theirs.
        let mut dist: BTreeMap<&str, f64> = BTreeMap::new();
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut heap = BinaryHeap::new();
        dist.insert(src, 0.0);
        heap.push(Item(0.0, src));
        while let Some(Item(d, u)) = heap.pop() {
            if d > dist[u] {
                continue;
            }
            let mut next: Vec<(&str, f64)> = adjacent
                .get(u)
                .into_iter()
                .flatten()
                .filter(|(v, _)| !down.iter().any(|x| x == v))
                .copied()
                .collect();
            next.sort_by(|a, b| a.0.cmp(b.0));
            for (v, c) in next {
                let nd = d + c;
                let better = match dist.get(v) {
                    None => true,
                    Some(&old) => nd < old || (nd == old && prev.get(v).is_some_and(|p| u < *p)),
                };
                if better {
                    dist.insert(v, nd);
                    prev.insert(v, u);
                    heap.push(Item(nd, v));
                }
            }
        }
        let mut paths = BTreeMap::new();
        for &dst in dist.keys() {
            let mut p = vec![NodeId::from(dst)];
            let mut cur = dst;
            while let Some(&pr) = prev.get(cur) {
                p.push(NodeId::from(pr));
                cur = pr;
            }
            p.reverse();
            paths.insert(NodeId::from(dst), p);
        }
        Self { paths }
    }

    /// The full path `[src, ..., dst]`, if `dst` is reachable.
    pub fn path(&self, dst: &str) -> Option<&[NodeId]> {
        self.path_to(&NodeId::from(dst))
    }

    /// [`path`](Self::path) for an ID at hand (no conversion; the key manager asks per relay).
    pub fn path_to(&self, dst: &NodeId) -> Option<&[NodeId]> {
        self.paths.get(dst).map(|v| v.as_slice())
    }

    /// Number of hops to `dst`.
    pub fn hops(&self, dst: &str) -> Option<usize> {
        self.path(dst).map(|p| p.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;

    #[test]
    fn builtin_has_three_hop_pair() {
        let t = builtin::tokyo();
        let r = Routes::compute(&t, "koganei", &[]);
        assert_eq!(r.hops("hakusan"), Some(3));
        assert_eq!(r.path("koganei").unwrap().len(), 1);
        for n in &t.nodes {
            assert!(r.path(&n.id).is_some(), "{} unreachable", n.id);
        }
    }

    /// The search as it was before the neighbour lists: the topology asked for every node
    /// it visits. The new one must find the same paths.
    fn reference(topo: &Topology, src: &str, down: &[String]) -> BTreeMap<String, Vec<String>> {
        let mut dist: BTreeMap<String, f64> = BTreeMap::new();
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut heap = BinaryHeap::new();
        dist.insert(src.to_string(), 0.0);
        heap.push(Item(0.0, src.to_string()));
        while let Some(Item(d, u)) = heap.pop() {
            if d > dist[&u] {
                continue;
            }
            let mut next: Vec<(&str, f64)> = topo
                .neighbours(&u)
                .filter(|(v, _)| !down.iter().any(|x| x == v))
                .map(|(v, l)| (v, l.cost.unwrap_or(1.0)))
                .collect();
            next.sort_by(|a, b| a.0.cmp(b.0));
            for (v, c) in next {
                let nd = d + c;
                let better = match dist.get(v) {
                    None => true,
                    Some(&old) => nd < old || (nd == old && prev.get(v).is_some_and(|p| u < *p)),
                };
                if better {
                    dist.insert(v.to_string(), nd);
                    prev.insert(v.to_string(), u.clone());
                    heap.push(Item(nd, v.to_string()));
                }
            }
        }
        dist.keys()
            .map(|dst| {
                let mut p = vec![dst.clone()];
                let mut cur = dst.clone();
                while let Some(pr) = prev.get(&cur) {
                    p.push(pr.clone());
                    cur = pr.clone();
                }
                p.reverse();
                (dst.clone(), p)
            })
            .collect()
    }

    #[test]
    fn neighbour_lists_find_the_paths_the_link_scan_found() {
        // Random meshes with few distinct costs (many ties), parallel links with other costs,
        // and nodes down: every path from every node is the same as the old search's.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..40 {
            let ids: Vec<String> = (0..12).map(|i| format!("n{i:02}")).collect();
            let names: Vec<&str> = ids.iter().map(String::as_str).collect();
            let mut t = Topology::line("r", &names, 10.0, |_| vec![]);
            let proto = t.links[0].clone();
            t.links.clear();
            for _ in 0..30 {
                let (a, b) = (next(12) as usize, next(12) as usize);
                if a == b {
                    continue;
                }
                t.links.push(crate::LinkSpec {
                    a: ids[a].clone(),
                    b: ids[b].clone(),
                    cost: (round % 2 == 1).then(|| [1.0, 2.0, 0.5][next(3) as usize]),
                    ..proto.clone()
                });
            }
            let down: Vec<String> = (0..next(3))
                .map(|_| ids[next(12) as usize].clone())
                .collect();
            for src in &ids {
                let r = Routes::compute(&t, src, &down);
                let paths: BTreeMap<String, Vec<String>> = r
                    .paths
                    .iter()
                    .map(|(d, p)| (d.to_string(), p.iter().map(NodeId::to_string).collect()))
                    .collect();
                assert_eq!(paths, reference(&t, src, &down), "round {round} from {src}");
            }
        }
    }

    #[test]
    fn avoids_down_nodes() {
        let t = builtin::tokyo();
        let r = Routes::compute(&t, "koganei", &["shinjuku".to_string()]);
        let p = r.path("otemachi").unwrap();
        assert!(!p.iter().any(|n| n == "shinjuku"), "{p:?}");
    }
}
