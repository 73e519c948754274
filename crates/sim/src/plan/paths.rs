//! Path sets per node pair: the node's own shortest-path rule for one path, and node-disjoint
//! paths of least total cost (min-cost flow on the node-split graph, as Bhandari's algorithm)
//! for multi-path relay.
//!
//! The planner has its own index-based implementation because it runs these for up to half a
//! million pairs; the single-path rule is checked against `kagi_control::Routes` in the tests.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::graph::Graph;

/// What a hop costs when choosing routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cost {
    /// The link's `cost` in the topology, else 1 per hop (what the node does today).
    Hops,
    /// Seconds per bit of the link's key rate: routes prefer rich links.
    Key,
}

/// Per-link costs for `cost` (`f64::INFINITY` for a link that never yields key under `Key`).
pub fn link_costs(g: &Graph, topo_costs: &[Option<f64>], cost: Cost) -> Vec<f64> {
    g.links
        .iter()
        .enumerate()
        .map(|(i, l)| match cost {
            Cost::Hops => topo_costs.get(i).copied().flatten().unwrap_or(1.0),
            Cost::Key if l.rate_bps > 0.0 => 1.0 / l.rate_bps,
            Cost::Key => f64::INFINITY,
        })
        .collect()
}

#[derive(PartialEq)]
struct Item(f64, u32, u32); // (cost, rank, node)
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

/// Rank of each node in node-ID order (ties in routing go to the smaller ID).
pub fn id_ranks(g: &Graph) -> Vec<u32> {
    let mut order: Vec<u32> = (0..g.len() as u32).collect();
    order.sort_by(|a, b| g.ids[*a as usize].cmp(&g.ids[*b as usize]));
    let mut rank = vec![0u32; g.len()];
    for (r, v) in order.into_iter().enumerate() {
        rank[v as usize] = r as u32;
    }
    rank
}

/// Shortest-path predecessors from `src` (`u32::MAX`: unreachable or `src`), with the node's
/// tie rule: equal cost goes through the predecessor with the smaller ID.
pub fn shortest_tree(g: &Graph, costs: &[f64], rank: &[u32], src: u32) -> Vec<u32> {
    let n = g.len();
    let mut dist = vec![f64::INFINITY; n];
    let mut prev = vec![u32::MAX; n];
    let mut heap = BinaryHeap::new();
    dist[src as usize] = 0.0;
    heap.push(Item(0.0, rank[src as usize], src));
    while let Some(Item(d, _, u)) = heap.pop() {
        if d > dist[u as usize] {
            continue;
        }
        for &(v, li) in g.neighbours(u) {
            let c = costs[li as usize];
            if !c.is_finite() {
                continue;
            }
            let nd = d + c;
            let old = dist[v as usize];
            let p = prev[v as usize];
            let better =
                nd < old || (nd == old && p != u32::MAX && rank[u as usize] < rank[p as usize]);
            if better {
                dist[v as usize] = nd;
                prev[v as usize] = u;
                heap.push(Item(nd, rank[v as usize], v));
            }
        }
    }
    prev
}

/// The path `[src, .., dst]` in a predecessor tree from `src`, if `dst` is reachable.
pub fn path_in_tree(prev: &[u32], src: u32, dst: u32) -> Option<Vec<u32>> {
    if src == dst {
        return None;
    }
    let mut p = vec![dst];
    let mut cur = dst;
    while cur != src {
        cur = prev[cur as usize];
        if cur == u32::MAX || p.len() > prev.len() {
            return None;
        }
        p.push(cur);
    }
    p.reverse();
    Some(p)
}

/// Finds node-disjoint paths on one graph, many pairs in turn: the node-split flow network is
/// built once, and the first shortest-path tree is reused while the source stays the same.
pub struct DisjointFinder<'g> {
    g: &'g Graph,
    costs: &'g [f64],
    head: Vec<u32>,
    next: Vec<u32>,
    to: Vec<u32>,
    cost: Vec<f64>,
    base_cap: Vec<i8>,
    cap: Vec<i8>,
    pot: Vec<f64>,
    dist: Vec<f64>,
    via: Vec<u32>,
    done: Vec<bool>,
    /// Source of the cached first tree, its distances and arcs.
    first: Option<(u32, Vec<f64>, Vec<u32>)>,
}

impl<'g> DisjointFinder<'g> {
    /// Builds the node-split network of `g` (links of infinite cost left out).
    pub fn new(g: &'g Graph, costs: &'g [f64]) -> Self {
        let n = g.len();
        let mut f = Self {
            g,
            costs,
            head: vec![u32::MAX; 2 * n],
            next: Vec::new(),
            to: Vec::new(),
            cost: Vec::new(),
            base_cap: Vec::new(),
            cap: Vec::new(),
            pot: Vec::new(),
            dist: Vec::new(),
            via: Vec::new(),
            done: Vec::new(),
            first: None,
        };
        // v_in = 2v, v_out = 2v + 1; the through arc of v is arc 2v.
        for v in 0..n as u32 {
            f.arc(2 * v, 2 * v + 1, 1, 0.0);
        }
        for (li, l) in g.links.iter().enumerate() {
            let c = costs[li];
            if c.is_finite() {
                f.arc(2 * l.a + 1, 2 * l.b, 1, c);
                f.arc(2 * l.b + 1, 2 * l.a, 1, c);
            }
        }
        f
    }

    fn arc(&mut self, u: u32, v: u32, cap: i8, cost: f64) {
        for (a, b, c, w) in [(u, v, cap, cost), (v, u, 0, -cost)] {
            self.to.push(b);
            self.base_cap.push(c);
            self.cost.push(w);
            self.next.push(self.head[a as usize]);
            self.head[a as usize] = (self.to.len() - 1) as u32;
        }
    }

    /// Dijkstra on reduced costs from `src`; stops once `stop` is settled (if given), leaving
    /// unsettled vertices at the distance of `stop` so the potentials stay feasible.
    fn dijkstra(&mut self, src: u32, stop: Option<u32>) {
        let nn = self.head.len();
        self.dist.clear();
        self.dist.resize(nn, f64::INFINITY);
        self.via.clear();
        self.via.resize(nn, u32::MAX);
        self.done.clear();
        self.done.resize(nn, false);
        let mut heap = BinaryHeap::new();
        self.dist[src as usize] = 0.0;
        heap.push(Item(0.0, src, src));
        while let Some(Item(d, _, u)) = heap.pop() {
            if self.done[u as usize] {
                continue;
            }
            self.done[u as usize] = true;
            if Some(u) == stop {
                for v in 0..nn {
                    if !self.done[v] {
                        self.dist[v] = self.dist[v].min(d);
                    }
                }
                return;
            }
            let mut e = self.head[u as usize];
            while e != u32::MAX {
                let ei = e as usize;
                if self.cap[ei] > 0 {
                    let v = self.to[ei];
                    let rc = self.cost[ei] + self.pot[u as usize] - self.pot[v as usize];
                    let nd = d + rc.max(0.0);
                    if nd < self.dist[v as usize] {
                        self.dist[v as usize] = nd;
                        self.via[v as usize] = e;
                        heap.push(Item(nd, v, v));
                    }
                }
                e = self.next[ei];
            }
        }
    }

    fn augment(&mut self, src: u32, dst: u32) {
        let mut v = dst;
        while v != src {
            let e = self.via[v as usize] as usize;
            self.cap[e] -= 1;
            self.cap[e ^ 1] += 1;
            v = self.to[e ^ 1];
        }
    }

    /// Up to `k` node-disjoint paths from `s` to `t` of least total cost, cheapest first;
    /// fewer when the topology has fewer.
    pub fn paths(&mut self, s: u32, t: u32, k: usize) -> Vec<Vec<u32>> {
        let nn = self.head.len();
        if s == t || k == 0 {
            return Vec::new();
        }
        let kk = k.min(i8::MAX as usize) as i8;
        self.cap.clone_from(&self.base_cap);
        self.cap[2 * s as usize] = kk;
        self.cap[2 * t as usize] = kk;
        let (src, dst) = (2 * s + 1, 2 * t);
        // The first tree depends only on the source: reuse it.
        if self.first.as_ref().is_none_or(|(fs, _, _)| *fs != s) {
            self.pot.clear();
            self.pot.resize(nn, 0.0);
            self.dijkstra(src, None);
            self.first = Some((s, self.dist.clone(), self.via.clone()));
        }
        let (_, d0, v0) = self.first.as_ref().expect("cached");
        if !d0[dst as usize].is_finite() {
            return Vec::new();
        }
        let bound = d0[dst as usize];
        self.via.clone_from(v0);
        self.pot.clear();
        self.pot.extend(
            d0.iter()
                .map(|&d| if d.is_finite() { d.min(bound) } else { bound }),
        );
        self.augment(src, dst);
        let mut found = 1;
        while found < k {
            self.dijkstra(src, Some(dst));
            if !self.dist[dst as usize].is_finite() {
                break;
            }
            for v in 0..nn {
                if self.dist[v].is_finite() {
                    self.pot[v] += self.dist[v];
                }
            }
            self.augment(src, dst);
            found += 1;
        }
        self.decompose(s, t, found)
    }

    /// Splits the flow into paths: from s, follow forward link arcs that carry flow.
    fn decompose(&mut self, s: u32, t: u32, found: usize) -> Vec<Vec<u32>> {
        let (src, dst) = (2 * s + 1, 2 * t);
        let mut paths = Vec::with_capacity(found);
        for _ in 0..found {
            let mut p = vec![s];
            let mut u = src;
            while u != dst {
                let mut e = self.head[u as usize];
                let mut step = None;
                while e != u32::MAX {
                    let ei = e as usize;
                    // A forward arc (even index) whose reverse has capacity carries flow.
                    if ei.is_multiple_of(2) && self.cap[ei ^ 1] > 0 {
                        step = Some(ei);
                        break;
                    }
                    e = self.next[ei];
                }
                let Some(ei) = step else { break };
                // Consume the unit so the next path takes another arc.
                self.cap[ei ^ 1] -= 1;
                let v = self.to[ei];
                if v.is_multiple_of(2) {
                    p.push(v / 2);
                    u = if v == dst { dst } else { v + 1 };
                } else {
                    u = v;
                }
            }
            if p.last() == Some(&t) && p.len() > 1 {
                paths.push(p);
            }
        }
        let (g, costs) = (self.g, self.costs);
        let cost_of = |p: &Vec<u32>| -> f64 {
            p.windows(2)
                .map(|w| {
                    g.neighbours(w[0])
                        .iter()
                        .filter(|(x, _)| *x == w[1])
                        .map(|(_, li)| costs[*li as usize])
                        .fold(f64::INFINITY, f64::min)
                })
                .sum()
        };
        paths.sort_by(|a, b| cost_of(a).total_cmp(&cost_of(b)).then_with(|| a.cmp(b)));
        paths
    }
}
