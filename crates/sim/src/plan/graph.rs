//! The planner's compact view of a topology: nodes by index, links with their mean key rate, and
//! the directed "resources" that relays draw key from.

use kagi_control::Topology;

/// How the two ends of a link share its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Each end spends only its fixed half (what the key manager does today): each direction
    /// of a link is its own resource with half the rate.
    Fixed,
    /// The ends agree on who spends which block, so one direction can use the whole link: the
    /// link is one resource with the whole rate.
    Adaptive,
}

/// A link of the plan.
#[derive(Debug, Clone)]
pub struct PlanLink {
    /// One end (node index).
    pub a: u32,
    /// The other end.
    pub b: u32,
    /// Long-run secret key rate, bit/s.
    pub rate_bps: f64,
}

/// Nodes, links and adjacency of a topology, indexed for speed.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Node IDs by index (the topology's order).
    pub ids: Vec<String>,
    /// SAEs listed for each node in the topology.
    pub listed_saes: Vec<u32>,
    /// Links.
    pub links: Vec<PlanLink>,
    /// Start of each node's neighbours in `adj` (CSR).
    adj_start: Vec<u32>,
    /// `(neighbour, link index)`.
    adj: Vec<(u32, u32)>,
}

impl Graph {
    /// Builds the graph; a link's rate is its technology's long-run mean (without the demo
    /// `rate_multiplier`).
    pub fn new(topo: &Topology) -> Self {
        let ids: Vec<String> = topo.nodes.iter().map(|n| n.id.clone()).collect();
        let index: std::collections::HashMap<&str, u32> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect();
        let links: Vec<PlanLink> = topo
            .links
            .iter()
            .filter_map(|l| {
                Some(PlanLink {
                    a: *index.get(l.a.as_str())?,
                    b: *index.get(l.b.as_str())?,
                    rate_bps: topo.link_mean_rate_bps(l).max(0.0),
                })
            })
            .collect();
        let n = ids.len();
        let mut deg = vec![0u32; n + 1];
        for l in &links {
            deg[l.a as usize] += 1;
            deg[l.b as usize] += 1;
        }
        let mut adj_start = vec![0u32; n + 1];
        for i in 0..n {
            adj_start[i + 1] = adj_start[i] + deg[i];
        }
        let mut fill = adj_start.clone();
        let mut adj = vec![(0u32, 0u32); adj_start[n] as usize];
        for (li, l) in links.iter().enumerate() {
            adj[fill[l.a as usize] as usize] = (l.b, li as u32);
            fill[l.a as usize] += 1;
            adj[fill[l.b as usize] as usize] = (l.a, li as u32);
            fill[l.b as usize] += 1;
        }
        // Deterministic neighbour order: by node ID, as the node's routing breaks ties.
        for i in 0..n {
            let s = adj_start[i] as usize..adj_start[i + 1] as usize;
            adj[s].sort_by(|x, y| ids[x.0 as usize].cmp(&ids[y.0 as usize]));
        }
        let listed_saes = topo.nodes.iter().map(|n| n.saes.len() as u32).collect();
        Self {
            ids,
            listed_saes,
            links,
            adj_start,
            adj,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// `(neighbour, link index)` of node `v`.
    pub fn neighbours(&self, v: u32) -> &[(u32, u32)] {
        &self.adj[self.adj_start[v as usize] as usize..self.adj_start[v as usize + 1] as usize]
    }

    /// Number of resources under `split`.
    pub fn resources(&self, split: Split) -> usize {
        match split {
            Split::Fixed => 2 * self.links.len(),
            Split::Adaptive => self.links.len(),
        }
    }

    /// The resource a hop `from → over link` draws key from.
    pub fn resource(&self, split: Split, from: u32, link: u32) -> u32 {
        match split {
            Split::Fixed => 2 * link + u32::from(self.links[link as usize].a != from),
            Split::Adaptive => link,
        }
    }

    /// Capacity of a resource, bit/s.
    pub fn capacity(&self, split: Split, resource: u32) -> f64 {
        match split {
            Split::Fixed => self.links[(resource / 2) as usize].rate_bps / 2.0,
            Split::Adaptive => self.links[resource as usize].rate_bps,
        }
    }

    /// The link a resource belongs to.
    pub fn link_of(&self, split: Split, resource: u32) -> u32 {
        match split {
            Split::Fixed => resource / 2,
            Split::Adaptive => resource,
        }
    }
}
