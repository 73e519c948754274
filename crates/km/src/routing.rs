//! Where relays go: the topology, which peers are down, which links an operator took out of
//! service, and the paths that follow from them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kagi_control::{disjoint_paths, PathQuery, Routes, Topology};

use crate::fixed_hash::FixedMap;
use crate::msgs::NodeId;
use crate::route::{find_paths, RouteConstraint};
use crate::time::Instant;

/// Most cached answers about route constraints (plans and feasibility); the caches are cleared
/// when full, so requests naming ever new constraints cannot grow them.
const MAX_CACHED_CONSTRAINTS: usize = 1024;

/// How relays to one destination travel now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutePlan {
    /// Node-disjoint paths `[me, ..., dest]`, shortest first; one path means single-path relay.
    pub(crate) paths: Vec<Vec<NodeId>>,
    /// Shares that rebuild the key (1 for single-path relay).
    pub(crate) threshold: u8,
    /// Why the plan falls short of the policy (fewer disjoint paths than asked), if it does.
    pub(crate) shortfall: Option<String>,
    /// The modelled key rate (bit/s, both directions) of the weakest link on any of the paths,
    /// from the topology; `None` where no link states a rate.
    pub(crate) bottleneck_bps: Option<u64>,
}

impl RoutePlan {
    fn new(
        rates: &LinkRates,
        paths: Vec<Vec<NodeId>>,
        threshold: u8,
        shortfall: Option<String>,
    ) -> Self {
        let bottleneck_bps = paths
            .iter()
            .flat_map(|p| p.windows(2))
            .filter_map(|w| rates.get(&w[0]).and_then(|m| m.get(&w[1])).copied())
            .filter(|r| r.is_finite() && *r >= 1.0)
            .reduce(f64::min)
            .map(|r| r as u64);
        Self {
            paths,
            threshold,
            shortfall,
            bottleneck_bps,
        }
    }
}

/// The modelled key rate (bit/s, the topology's rate multiplier applied) of the link between
/// two nodes, both ways round; where several links join the same two nodes, the first the
/// topology lists (the one [`Topology::link`] finds). Computed once: a link's rate runs its
/// technology's model, and every plan reads the rates of the links on its paths.
type LinkRates = BTreeMap<NodeId, BTreeMap<NodeId, f64>>;

fn link_rates(topo: &Topology) -> LinkRates {
    let mut rates = LinkRates::new();
    for l in &topo.links {
        let rate = topo.link_mean_rate_bps(l) * topo.rate_multiplier;
        for (x, y) in [(&l.a, &l.b), (&l.b, &l.a)] {
            rates
                .entry(NodeId::from(x))
                .or_default()
                .entry(NodeId::from(y))
                .or_insert(rate);
        }
    }
    rates
}

/// One destination's plans by `(paths, threshold)`; `None`: unreachable.
type PlansByPolicy = BTreeMap<(u8, u8), Option<Arc<RoutePlan>>>;

/// This node's view of the network and its current routes.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    me: NodeId,
    topology: Arc<Topology>,
    routes: Routes,
    /// Peers whose channel the driver reported down.
    down: BTreeSet<NodeId>,
    /// Nodes silent for longer than the liveness policy allows (see [`crate::liveness`]).
    silent: BTreeSet<NodeId>,
    /// Neighbours whose link an operator took out of service.
    out_of_service: BTreeSet<NodeId>,
    /// Route cost each link has beyond its static cost, from link state (see
    /// [`crate::linkstate`]); links not listed add nothing. Keys are `(smaller id, larger id)`.
    penalties: BTreeMap<(NodeId, NodeId), f64>,
    /// Links an end advertised down: routes leave them out.
    dead: BTreeSet<(NodeId, NodeId)>,
    /// The topology routes are computed on: without links out of service or advertised down,
    /// with link-state penalties added to the link costs. Rebuilt when any of those change.
    usable: Arc<Topology>,
    /// The topology without its nodes' SAEs, which routes never read: the base `usable` is
    /// copied from when links change (copying ten thousand SAE names on every link-state
    /// recomputation was a large simulation's cost). Made on first use.
    bare: Option<Arc<Topology>>,
    /// Each link's modelled rate, for plans' bottlenecks.
    rates: Arc<LinkRates>,
    /// Plans per destination and `(paths, threshold)`, computed on demand and dropped whenever
    /// routes change. Shared (`Arc`) and keyed by destination first, so the refill tick, which
    /// asks for every destination's plan, neither allocates nor copies paths.
    plans: BTreeMap<NodeId, PlansByPolicy>,
    /// Bumped whenever `plans` is dropped, so callers may keep plans while it stays the same.
    generation: u64,
    /// Every link of the topology, both ways round: node → its neighbours (in order). Hashed by
    /// node: every copy of every flooded advert looks its origin up.
    adjacent: FixedMap<NodeId, BTreeSet<NodeId>>,
    /// Each node's links: indices into the topology's links (every node of the topology has
    /// an entry, so this is also the set of its nodes).
    node_links: FixedMap<NodeId, Vec<usize>>,
    /// Plans meeting a route constraint (`kagi_route`), around the peers down now.
    constrained: BTreeMap<(NodeId, RouteConstraint), Result<RoutePlan, String>>,
    /// Whether a constraint can be met at all, on the whole topology (every node up).
    feasible: BTreeMap<(NodeId, RouteConstraint), Result<(), String>>,
    /// Per destination, the constraint applications asked for lately and until when refill
    /// relays under it.
    demand: BTreeMap<NodeId, (RouteConstraint, Instant)>,
}

impl Routing {
    /// Routes over the whole topology, every peer assumed up.
    pub(crate) fn new(me: &NodeId, topology: Arc<Topology>) -> Self {
        let routes = Routes::compute(&topology, me, &[]);
        let mut adjacent: FixedMap<NodeId, BTreeSet<NodeId>> = FixedMap::default();
        let mut node_links: FixedMap<NodeId, Vec<usize>> = topology
            .nodes
            .iter()
            .map(|n| (NodeId::from(&n.id), Vec::new()))
            .collect();
        for (i, l) in topology.links.iter().enumerate() {
            let (a, b) = (NodeId::from(&l.a), NodeId::from(&l.b));
            adjacent.entry(a.clone()).or_default().insert(b.clone());
            adjacent.entry(b.clone()).or_default().insert(a.clone());
            node_links.entry(a).or_default().push(i);
            node_links.entry(b).or_default().push(i);
        }
        Self {
            adjacent,
            node_links,
            me: me.clone(),
            usable: topology.clone(),
            bare: None,
            rates: Arc::new(link_rates(&topology)),
            topology,
            routes,
            down: BTreeSet::new(),
            silent: BTreeSet::new(),
            out_of_service: BTreeSet::new(),
            penalties: BTreeMap::new(),
            dead: BTreeSet::new(),
            plans: BTreeMap::new(),
            generation: 0,
            constrained: BTreeMap::new(),
            feasible: BTreeMap::new(),
            demand: BTreeMap::new(),
        }
    }

    /// Whether any set of paths on the whole topology (every node up) meets `c` from here to
    /// `dest`; the error says how many paths exist. Cached.
    pub(crate) fn feasible(&mut self, dest: &NodeId, c: &RouteConstraint) -> Result<(), String> {
        let key = (dest.clone(), c.clone());
        if let Some(r) = self.feasible.get(&key) {
            return r.clone();
        }
        let r = find_paths(&self.topology, &self.me, dest, c, c.min_paths, &[]).map(|_| ());
        if self.feasible.len() >= MAX_CACHED_CONSTRAINTS {
            self.feasible.clear();
        }
        self.feasible.insert(key, r.clone());
        r
    }

    /// How relays to `dest` meeting `c` go now, around down peers and links out of service:
    /// `policy` paths where that many meet `c` (at least `c.min_paths`), threshold from the
    /// policy (for a single-path policy: one share short of the paths, at least 2). Cached until
    /// routes change.
    pub(crate) fn constrained_plan(
        &mut self,
        dest: &NodeId,
        c: &RouteConstraint,
        policy: (u8, u8),
    ) -> Result<RoutePlan, String> {
        let key = (dest.clone(), c.clone());
        if let Some(p) = self.constrained.get(&key) {
            return p.clone();
        }
        let down = self.avoided();
        let plan = find_paths(&self.usable, &self.me, dest, c, policy.0, &down).map(|paths| {
            let n = paths.len() as u8;
            let threshold = if n == 1 {
                1
            } else if policy.0 >= 2 {
                policy.1.clamp(2, n)
            } else {
                (n - 1).clamp(2, n)
            };
            RoutePlan::new(&self.rates, paths, threshold, None)
        });
        if self.constrained.len() >= MAX_CACHED_CONSTRAINTS {
            self.constrained.clear();
        }
        self.constrained.insert(key, plan.clone());
        plan
    }

    /// Refill relays to `dest` under `c` until `until` (replacing an earlier constraint).
    pub(crate) fn note_demand(&mut self, dest: &NodeId, c: &RouteConstraint, until: Instant) {
        self.demand.insert(dest.clone(), (c.clone(), until));
    }

    /// Whether any route constraint is held for refill (expired ones included until refill
    /// drops them).
    pub(crate) fn has_any_demand(&self) -> bool {
        !self.demand.is_empty()
    }

    /// Whether relays to `dest` are asked to meet a constraint now (without cloning it).
    pub(crate) fn has_demand(&self, dest: &NodeId, now: Instant) -> bool {
        self.demand.get(dest).is_some_and(|(_, until)| *until > now)
    }

    /// The constraint relays to `dest` are asked to meet now, if any (expired ones go).
    pub(crate) fn demand(&mut self, dest: &NodeId, now: Instant) -> Option<RouteConstraint> {
        match self.demand.get(dest) {
            Some((c, until)) if *until > now => Some(c.clone()),
            Some(_) => {
                self.demand.remove(dest);
                None
            }
            None => None,
        }
    }

    /// How relays to `dest` go under policy `(paths, threshold)`: up to `paths` node-disjoint
    /// paths around down peers and links out of service, threshold capped at the paths found.
    /// `None` when `dest` is unreachable.
    pub(crate) fn plan(
        &mut self,
        dest: &NodeId,
        paths: u8,
        threshold: u8,
    ) -> Option<Arc<RoutePlan>> {
        if let Some(p) = self
            .plans
            .get(dest)
            .and_then(|m| m.get(&(paths, threshold)))
        {
            return p.clone();
        }
        let plan = self.compute_plan(dest, paths, threshold).map(Arc::new);
        if let Some(p) = &plan {
            if let Some(why) = &p.shortfall {
                tracing::info!(me = %self.me, %dest, "multi-path relay: {why}");
            }
        }
        self.plans
            .entry(dest.clone())
            .or_default()
            .insert((paths, threshold), plan.clone());
        plan
    }

    /// Changes whenever the plans [`plan`](Self::plan) returns may change: until it does,
    /// `plan` returns the same plan for the same arguments.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Like [`plan`](Self::plan), without caching (for read-only status).
    pub(crate) fn peek_plan(&self, dest: &NodeId, paths: u8, threshold: u8) -> Option<RoutePlan> {
        match self
            .plans
            .get(dest)
            .and_then(|m| m.get(&(paths, threshold)))
        {
            Some(p) => p.as_deref().cloned(),
            None => self.compute_plan(dest, paths, threshold),
        }
    }

    fn compute_plan(&self, dest: &NodeId, paths: u8, threshold: u8) -> Option<RoutePlan> {
        let single = self.routes.path_to(dest)?.to_vec();
        if paths <= 1 {
            return Some(RoutePlan::new(&self.rates, vec![single], 1, None));
        }
        let down: Vec<String> = self.avoided().iter().map(NodeId::to_string).collect();
        let found: Vec<Vec<NodeId>> = disjoint_paths(
            &self.usable,
            &self.me,
            dest,
            &PathQuery {
                max_paths: usize::from(paths),
                avoid: &down,
            },
        )
        .into_iter()
        .map(|p| p.into_iter().map(NodeId::from).collect())
        .collect();
        if found.len() <= 1 {
            return Some(RoutePlan::new(
                &self.rates,
                vec![single],
                1,
                Some(format!(
                    "only one node-disjoint path to {dest} (policy asks for {paths}); \
                     relaying over a single path"
                )),
            ));
        }
        let n = found.len() as u8;
        let t = threshold.min(n);
        let shortfall = (n < paths).then(|| {
            format!(
                "{n} node-disjoint paths to {dest} (policy asks for {paths}); \
                 threshold {t} of {n}"
            )
        });
        Some(RoutePlan::new(&self.rates, found, t, shortfall))
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
                .all(|w| self.adjacent.get(&w[0]).is_some_and(|n| n.contains(&w[1])))
    }

    /// The current path `[me, ..., dest]`, if `dest` is reachable.
    pub(crate) fn path(&self, dest: &NodeId) -> Option<&[NodeId]> {
        self.routes.path_to(dest)
    }

    /// True when the driver reported `peer` down or it went silent.
    pub(crate) fn is_down(&self, peer: &NodeId) -> bool {
        self.down.contains(peer) || self.silent.contains(peer)
    }

    /// True when the driver reported `peer`'s channel down.
    pub(crate) fn is_reported_down(&self, peer: &NodeId) -> bool {
        self.down.contains(peer)
    }

    /// Marks `peer` silent (`true`) or heard from again; recomputes routes and returns `true`
    /// on a change.
    pub(crate) fn set_silent(&mut self, peer: &NodeId, silent: bool) -> bool {
        let changed = if silent {
            self.silent.insert(peer.clone())
        } else {
            self.silent.remove(peer)
        };
        if changed {
            self.recompute();
        }
        changed
    }

    /// Nodes routes avoid now: reported down or silent.
    fn avoided(&self) -> Vec<NodeId> {
        self.down.union(&self.silent).cloned().collect()
    }

    /// True unless an operator took the link to `peer` out of service.
    pub(crate) fn in_service(&self, peer: &NodeId) -> bool {
        !self.out_of_service.contains(peer)
    }

    /// Marks `peer` up (`true`) or down; recomputes routes on a change.
    pub(crate) fn set_up(&mut self, peer: &NodeId, up: bool) {
        let changed = if up {
            self.down.remove(peer)
        } else {
            self.down.insert(peer.clone())
        };
        if changed {
            self.recompute();
        }
    }

    /// Takes the link to neighbour `peer` out of service (`false`) or back; recomputes routes on
    /// a change.
    pub(crate) fn set_in_service(&mut self, peer: &NodeId, in_service: bool) {
        let changed = if in_service {
            self.out_of_service.remove(peer)
        } else {
            self.out_of_service.insert(peer.clone())
        };
        if changed {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        self.plans.clear();
        self.generation += 1;
        self.constrained.clear();
        if self.bare.is_none() && !self.unchanged_links() {
            let mut bare = (*self.topology).clone();
            for n in &mut bare.nodes {
                n.saes = Vec::new();
            }
            self.bare = Some(Arc::new(bare));
        }
        self.usable = self.build_usable();
        let down = self.avoided();
        let down: Vec<String> = down.iter().map(NodeId::to_string).collect();
        self.routes = Routes::compute(&self.usable, &self.me, &down);
    }

    /// The topology without the links this node took out of service or an end advertised
    /// down, link-state penalties added to the link costs.
    fn build_usable(&self) -> Arc<Topology> {
        if self.unchanged_links() {
            return self.topology.clone();
        }
        let me = &self.me;
        let out = &self.out_of_service;
        let base: &Topology = self.bare.as_deref().unwrap_or(&self.topology);
        let mut topo = base.clone();
        topo.links.retain(|l| {
            let (a, b) = (NodeId::from(&l.a), NodeId::from(&l.b));
            let taken_out = (a == *me && out.contains(&b)) || (b == *me && out.contains(&a));
            !taken_out && !self.dead.contains(&link_key(&l.a, &l.b))
        });
        for l in &mut topo.links {
            if let Some(p) = self.penalties.get(&link_key(&l.a, &l.b)) {
                l.cost = Some(l.cost.unwrap_or(1.0) + p);
            }
        }
        Arc::new(topo)
    }

    /// Whether routes go over the topology's links as they are (none out of service, advertised
    /// down or with a link-state penalty).
    fn unchanged_links(&self) -> bool {
        self.out_of_service.is_empty() && self.penalties.is_empty() && self.dead.is_empty()
    }

    /// Sets the link-state cost of some links (`None`: advertised down, else the penalty; 0
    /// adds nothing); recomputes routes when any moved. Returns whether they did, and the links
    /// newly advertised down.
    pub(crate) fn update_link_costs(
        &mut self,
        costs: Vec<((NodeId, NodeId), Option<f64>)>,
    ) -> (bool, BTreeSet<(NodeId, NodeId)>) {
        let mut moved = false;
        let mut newly_dead = BTreeSet::new();
        for (key, cost) in costs {
            match cost {
                None => {
                    moved |= self.penalties.remove(&key).is_some();
                    if !self.dead.contains(&key) {
                        self.dead.insert(key.clone());
                        newly_dead.insert(key);
                        moved = true;
                    }
                }
                Some(extra) => {
                    moved |= self.dead.remove(&key);
                    if extra > 0.0 {
                        moved |= self.penalties.insert(key, extra) != Some(extra);
                    } else {
                        moved |= self.penalties.remove(&key).is_some();
                    }
                }
            }
        }
        if moved {
            self.recompute();
        }
        (moved, newly_dead)
    }

    /// The link-state penalty of a link (`(smaller id, larger id)`): `None` when advertised
    /// down, 0 when it adds nothing.
    pub(crate) fn link_penalty(&self, key: &(NodeId, NodeId)) -> Option<f64> {
        if self.dead.contains(key) {
            return None;
        }
        Some(self.penalties.get(key).copied().unwrap_or(0.0))
    }

    /// `node`'s neighbours in the topology, `None` for a node without links or not in it.
    pub(crate) fn adjacent(&self, node: &NodeId) -> Option<&BTreeSet<NodeId>> {
        self.adjacent.get(node)
    }

    /// `node`'s links: indices into the topology's links (none for a node not in it).
    pub(crate) fn links_of(&self, node: &NodeId) -> &[usize] {
        self.node_links.get(node).map_or(&[], Vec::as_slice)
    }

    /// Whether `node` is a node of the topology.
    pub(crate) fn is_node(&self, node: &NodeId) -> bool {
        self.node_links.contains_key(node)
    }

    /// `node`'s neighbours in the topology.
    pub(crate) fn neighbours<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a NodeId> + 'a {
        self.adjacent.get(node).into_iter().flatten()
    }
}

/// The key of a link in [`Routing`]'s maps: its ends, smaller ID first.
pub(crate) fn link_key(a: &str, b: &str) -> (NodeId, NodeId) {
    let (a, b) = (NodeId::from(a), NodeId::from(b));
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokyo with a rate multiplier and a second, longer link beside koganei–chofu (plans must
    /// take the rate of the first one listed, as `Topology::link` does).
    fn tokyo() -> Arc<Topology> {
        let mut t = kagi_control::builtin::tokyo();
        t.rate_multiplier = 4.0;
        let mut twin = t.links[0].clone();
        twin.length_km *= 5.0;
        std::mem::swap(&mut twin.a, &mut twin.b);
        t.links.push(twin);
        Arc::new(t)
    }

    #[test]
    fn plans_take_bottlenecks_from_the_links_the_topology_finds() {
        let topo = tokyo();
        let mut r = Routing::new(&NodeId::from("koganei"), topo.clone());
        let mut seen = BTreeSet::new();
        for n in &topo.nodes {
            for (paths, threshold) in [(1, 1), (3, 2)] {
                let Some(plan) = r.plan(&NodeId::from(&n.id), paths, threshold) else {
                    continue;
                };
                // As plans computed it before the rates were kept: each hop's link looked up
                // in the topology and its technology's model run.
                let expected = plan
                    .paths
                    .iter()
                    .flat_map(|p| p.windows(2))
                    .filter_map(|w| topo.link(&w[0], &w[1]))
                    .map(|l| topo.link_mean_rate_bps(l) * topo.rate_multiplier)
                    .filter(|r| r.is_finite() && *r >= 1.0)
                    .reduce(f64::min)
                    .map(|r| r as u64);
                assert_eq!(plan.bottleneck_bps, expected, "to {}", n.id);
                seen.insert(plan.bottleneck_bps);
            }
        }
        assert!(seen.len() > 2, "bottlenecks differ between plans: {seen:?}");
    }

    #[test]
    fn routes_over_penalised_links_are_those_of_the_whole_topology() {
        let topo = tokyo();
        let mut r = Routing::new(&NodeId::from("koganei"), topo.clone());
        let penalties: BTreeMap<_, _> = [
            (link_key("koganei", "shinjuku"), 5.0),
            (link_key("otemachi", "ueno"), 0.5),
        ]
        .into_iter()
        .collect();
        let dead: BTreeSet<_> = [link_key("chofu", "otemachi")].into_iter().collect();
        let costs = penalties
            .iter()
            .map(|(k, p)| (k.clone(), Some(*p)))
            .chain(dead.iter().map(|k| (k.clone(), None)))
            .collect();
        assert_eq!(r.update_link_costs(costs), (true, dead.clone()));
        // The same costs again, and a link set to cost nothing: routes do not move.
        let again = vec![
            (link_key("chofu", "otemachi"), None),
            (link_key("koganei", "shinjuku"), Some(5.0)),
            (link_key("ueno", "shinjuku"), Some(0.0)),
        ];
        assert_eq!(r.update_link_costs(again), (false, BTreeSet::new()));
        // As `usable` was built before: from a copy of the whole topology, SAEs included.
        let mut whole = (*topo).clone();
        whole
            .links
            .retain(|l| !dead.contains(&link_key(&l.a, &l.b)));
        for l in &mut whole.links {
            if let Some(p) = penalties.get(&link_key(&l.a, &l.b)) {
                l.cost = Some(l.cost.unwrap_or(1.0) + p);
            }
        }
        assert_eq!(r.usable.links, whole.links);
        assert!(r.usable.nodes.iter().all(|n| n.saes.is_empty()));
        let expected = Routes::compute(&whole, "koganei", &[]);
        for n in &topo.nodes {
            let expected: Option<Vec<NodeId>> = expected
                .path(&n.id)
                .map(|p| p.iter().map(NodeId::from).collect());
            assert_eq!(
                r.path(&NodeId::from(&n.id)),
                expected.as_deref(),
                "to {}",
                n.id
            );
        }
        assert_eq!(
            r.path(&NodeId::from("chofu")).map(|p| p.len()),
            Some(2),
            "a direct link stays the route"
        );
    }
}
