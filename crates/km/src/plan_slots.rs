//! The refill tick's own copy of each destination's route plan and relay cap, in a vector
//! indexed like the topology's node list. Refill visits every destination of every node on
//! every tick; looking each plan up in the routing cache (string-keyed maps, then the plan's
//! reference count) missed the CPU cache so often that it was a fifth of a large simulation.
//! The copy is dropped whenever routing's plans may have changed (its generation moved) or
//! the topology is another one, so it always holds what routing would answer.

use std::sync::Arc;

use kagi_control::Topology;

use crate::routing::RoutePlan;

/// A destination's plan and the most relays to it that may be in flight; `None`: unreachable.
pub(crate) type Slot = Option<(Arc<RoutePlan>, u32)>;

/// Plans by topology node index, valid for one routing generation and one topology.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanSlots {
    generation: u64,
    topology: Option<Arc<Topology>>,
    /// `None`: not looked up since the copy was last dropped.
    slots: Vec<Option<Slot>>,
}

impl PlanSlots {
    /// Drops every slot unless they were filled under `generation` and `topology`.
    pub(crate) fn validate(&mut self, generation: u64, topology: &Arc<Topology>) {
        let same_topology = self
            .topology
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, topology));
        if generation != self.generation || !same_topology {
            self.generation = generation;
            self.topology = Some(topology.clone());
            self.slots.clear();
            self.slots.resize(topology.nodes.len(), None);
        }
    }

    /// The slot of node `index`, if looked up already.
    pub(crate) fn get(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index)?.as_ref()
    }

    /// Records node `index`'s slot.
    pub(crate) fn set(&mut self, index: usize, slot: Slot) {
        if let Some(s) = self.slots.get_mut(index) {
            *s = Some(slot);
        }
    }
}
