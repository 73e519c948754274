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
}

impl Routing {
    /// Routes over the whole topology, every peer assumed up.
    pub(crate) fn new(me: &str, topology: Arc<Topology>) -> Self {
        let routes = Routes::compute(&topology, me, &[]);
        Self {
            me: me.to_string(),
            topology,
            routes,
            down: BTreeSet::new(),
            out_of_service: BTreeSet::new(),
        }
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
