//! Where relays go: the topology, which peers are down, which links an operator took out of
//! service, and the paths that follow from them.

use std::collections::BTreeSet;
use std::sync::Arc;

use kagi_control::{Routes, Topology};

use crate::msgs::NodeId;

/// This node's view of the network and its current routes.
#[derive(Debug)]
pub(crate) struct Routing {
    me: NodeId,
    topology: Arc<Topology>,
    routes: Routes,
    /// Peers whose channel the driver reported down.
    down: BTreeSet<NodeId>,
    /// Neighbours whose link an operator took out of service.
    out_of_service: BTreeSet<NodeId>,
    /// Every link of the topology, both ways round.
    adjacent: BTreeSet<(NodeId, NodeId)>,
}

impl Routing {
    /// Routes over the whole topology, every peer assumed up.
    pub(crate) fn new(me: &str, topology: Arc<Topology>) -> Self {
        let routes = Routes::compute(&topology, me, &[]);
        let adjacent = topology
            .links
            .iter()
            .flat_map(|l| [(l.a.clone(), l.b.clone()), (l.b.clone(), l.a.clone())])
            .collect();
        Self {
            me: me.to_string(),
            topology,
            routes,
            down: BTreeSet::new(),
            out_of_service: BTreeSet::new(),
            adjacent,
        }
    }

    /// Whether `path` is a simple path over links of the topology, checked in `O(n log n)` so
    /// a hostile path cannot stall the core.
    pub(crate) fn is_simple_path(&self, path: &[NodeId]) -> bool {
        if path.len() < 2 || path.len() > self.topology.nodes.len() {
            return false;
        }
        let mut seen = BTreeSet::new();
        path.iter().all(|n| seen.insert(n.as_str()))
            && path
                .windows(2)
                .all(|w| self.adjacent.contains(&(w[0].clone(), w[1].clone())))
    }

    /// The current path `[me, ..., dest]`, if `dest` is reachable.
    pub(crate) fn path(&self, dest: &str) -> Option<&[NodeId]> {
        self.routes.path(dest)
    }

    /// True when the driver reported `peer` down.
    pub(crate) fn is_down(&self, peer: &str) -> bool {
        self.down.contains(peer)
    }

    /// True unless an operator took the link to `peer` out of service.
    pub(crate) fn in_service(&self, peer: &str) -> bool {
        !self.out_of_service.contains(peer)
    }

    /// Marks `peer` up (`true`) or down; recomputes routes on a change.
    pub(crate) fn set_up(&mut self, peer: &str, up: bool) {
        let changed = if up {
            self.down.remove(peer)
        } else {
            self.down.insert(peer.to_string())
        };
        if changed {
            self.recompute();
        }
    }

    /// Takes the link to neighbour `peer` out of service (`false`) or back; recomputes routes on
    /// a change.
    pub(crate) fn set_in_service(&mut self, peer: &str, in_service: bool) {
        let changed = if in_service {
            self.out_of_service.remove(peer)
        } else {
            self.out_of_service.insert(peer.to_string())
        };
        if changed {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        let down: Vec<String> = self.down.iter().cloned().collect();
        self.routes = Routes::compute(&self.usable_topology(), &self.me, &down);
    }

    /// The topology without the links this node took out of service.
    pub(crate) fn usable_topology(&self) -> std::borrow::Cow<'_, Topology> {
        if self.out_of_service.is_empty() {
            return std::borrow::Cow::Borrowed(&self.topology);
        }
        let me = self.me.as_str();
        let out = &self.out_of_service;
        let mut topo: Topology = (*self.topology).clone();
        topo.links
            .retain(|l| !((l.a == me && out.contains(&l.b)) || (l.b == me && out.contains(&l.a))));
        std::borrow::Cow::Owned(topo)
    }
}
