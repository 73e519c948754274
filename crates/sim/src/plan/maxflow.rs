//! Max-flow / min-cut between two nodes (Dinic's algorithm): the most key per second any relay
//! scheme can move between them, network coding included (for one pair, the min cut is also
//! what routing over split paths achieves).

use std::collections::VecDeque;

/// A directed graph with real capacities, for one max-flow computation.
#[derive(Debug, Default)]
pub struct FlowGraph {
    head: Vec<u32>,
    next: Vec<u32>,
    to: Vec<u32>,
    cap: Vec<f64>,
}

impl FlowGraph {
    /// A graph of `n` vertices and no arcs.
    pub fn new(n: usize) -> Self {
        Self {
            head: vec![u32::MAX; n],
            ..Self::default()
        }
    }

    /// Adds the arc `u → v` with capacity `c` (and its residual twin).
    pub fn arc(&mut self, u: u32, v: u32, c: f64) {
        for (a, b, cap) in [(u, v, c), (v, u, 0.0)] {
            self.to.push(b);
            self.cap.push(cap);
            self.next.push(self.head[a as usize]);
            self.head[a as usize] = (self.to.len() - 1) as u32;
        }
    }

    /// The maximum flow from `s` to `t` (consumes the capacities).
    pub fn max_flow(&mut self, s: u32, t: u32) -> f64 {
        let n = self.head.len();
        let eps = 1e-9;
        let mut total = 0.0;
        let mut level = vec![u32::MAX; n];
        let mut it = vec![0u32; n];
        loop {
            level.fill(u32::MAX);
            level[s as usize] = 0;
            let mut q = VecDeque::from([s]);
            while let Some(u) = q.pop_front() {
                let mut e = self.head[u as usize];
                while e != u32::MAX {
                    let v = self.to[e as usize];
                    if self.cap[e as usize] > eps && level[v as usize] == u32::MAX {
                        level[v as usize] = level[u as usize] + 1;
                        q.push_back(v);
                    }
                    e = self.next[e as usize];
                }
            }
            if level[t as usize] == u32::MAX {
                return total;
            }
            it.copy_from_slice(&self.head);
            loop {
                let f = self.push(s, t, f64::INFINITY, &level, &mut it);
                if f <= eps {
                    break;
                }
                total += f;
            }
        }
    }

    fn push(&mut self, u: u32, t: u32, limit: f64, level: &[u32], it: &mut [u32]) -> f64 {
        if u == t {
            return limit;
        }
        while it[u as usize] != u32::MAX {
            let e = it[u as usize] as usize;
            let v = self.to[e];
            if self.cap[e] > 1e-9 && level[v as usize] == level[u as usize] + 1 {
                let f = self.push(v, t, limit.min(self.cap[e]), level, it);
                if f > 0.0 {
                    self.cap[e] -= f;
                    self.cap[e ^ 1] += f;
                    return f;
                }
            }
            it[u as usize] = self.next[e];
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn butterfly_min_cut() {
        // s=0 → 1,2 (cap 1 each); 1→3, 2→3 (1 each); 3→4 (1); 1→5, 4→5 ... t=5
        let mut g = FlowGraph::new(6);
        g.arc(0, 1, 1.0);
        g.arc(0, 2, 1.0);
        g.arc(1, 3, 1.0);
        g.arc(2, 3, 1.0);
        g.arc(3, 4, 1.0);
        g.arc(1, 5, 1.0);
        g.arc(4, 5, 1.0);
        assert!((g.max_flow(0, 5) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn bottleneck_in_series() {
        let mut g = FlowGraph::new(3);
        g.arc(0, 1, 5.0);
        g.arc(1, 2, 2.5);
        assert!((g.max_flow(0, 2) - 2.5).abs() < 1e-9);
    }
}
