//! A read-only snapshot of the key manager for operators (management API, metrics, dashboard).
//!
//! The management layer reads the core only through [`KeyManager::km_status`], so the core's
//! internals can change without touching it. The snapshot carries counts and byte totals,
//! never key bytes.

use crate::manager::{KeyManager, NodeStats};
use crate::msgs::NodeId;

/// What a node's key manager holds and does now.
#[derive(Debug, Clone, PartialEq)]
pub struct KmStatus {
    /// This node.
    pub node_id: NodeId,
    /// True after a storage fault until the driver restarts the core.
    pub fenced: bool,
    /// Whether this node signs its link-state adverts and accepts only adverts signed by their
    /// origin (an [`AdvertAuth`](crate::AdvertAuth) is configured). False: any transit node can
    /// forge or alter adverts.
    pub adverts_signed: bool,
    /// One entry per QKD link of this node (neighbours in the topology).
    pub links: Vec<LinkStatus>,
    /// One entry per other node of the network: end-to-end pools and relays.
    pub pools: Vec<PoolStatus>,
    /// Counters since the core started.
    pub stats: NodeStats,
    /// Key rate limits per master SAE in force now.
    pub quotas: crate::quota::QuotaConfig,
    /// Key granted to and refused for each master SAE that asked here since the core started.
    pub sae_usage: std::collections::BTreeMap<crate::app::SaeId, crate::quota::SaeUsage>,
}

/// One QKD link as this end sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStatus {
    /// The neighbour at the other end.
    pub peer: NodeId,
    /// The core sees the peer as up: its channel not reported down, and heard from within
    /// the liveness policy's `silent_after`.
    pub peer_up: bool,
    /// Not taken out of service by an operator.
    pub in_service: bool,
    /// Unspent link key this end may spend (its transmit half), bytes.
    pub tx_bytes: u64,
    /// Unspent link key the neighbour spends towards this end (receive half), bytes.
    pub rx_bytes: u64,
    /// Highest link key block stored.
    pub high_water: Option<u64>,
}

/// End-to-end key between this node and one other node.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    /// The other node.
    pub peer: NodeId,
    /// Key ready for masters here with slaves there, bytes.
    pub out_bytes: u64,
    /// Key relayed from there, held for slaves here, bytes.
    pub in_bytes: u64,
    /// Relays started here towards `peer` and not yet acknowledged.
    pub relays_in_flight: u64,
    /// The current relay path `[self, ..., peer]`, empty when unreachable.
    pub route: Vec<NodeId>,
    /// The node-disjoint paths relays to `peer` use now (one: single-path relay).
    pub paths: Vec<Vec<NodeId>>,
    /// Shares that rebuild each key relayed to `peer` (1 for single-path relay).
    pub threshold: u8,
    /// Why relays to `peer` use fewer paths than the routing policy asks, if they do.
    pub route_note: Option<String>,
    /// Keys `peer` assigned to slaves here that expired unfetched (orphans), since the core
    /// started.
    pub slave_keys_expired: u64,
}

impl KeyManager {
    /// A snapshot for operators (no key bytes). Cost: linear in links, pools and relays.
    pub fn km_status(&self) -> KmStatus {
        let links = self
            .links
            .held()
            .map(|(peer, h)| LinkStatus {
                peer: peer.clone(),
                peer_up: !self.routing.is_down(peer),
                in_service: self.routing.in_service(peer),
                tx_bytes: h.tx_bytes,
                rx_bytes: h.rx_bytes,
                high_water: h.high_water,
            })
            .collect();
        let pools = self
            .cfg
            .topology
            .nodes
            .iter()
            .filter(|n| n.id != self.cfg.node_id)
            .map(|n| NodeId::from(&n.id))
            .map(|id| {
                let (p, t) = self.cfg.policy.routing.for_dest(&id);
                let plan = self.routing.peek_plan(&id, p, t);
                PoolStatus {
                    peer: id.clone(),
                    out_bytes: self.pools.out_free(&id),
                    in_bytes: self.pools.in_bytes(&id),
                    relays_in_flight: self.relays.in_flight(&id),
                    route: self
                        .routing
                        .path(&id)
                        .map(<[_]>::to_vec)
                        .unwrap_or_default(),
                    threshold: plan.as_ref().map_or(0, |p| p.threshold),
                    route_note: plan.as_ref().and_then(|p| p.shortfall.clone()),
                    slave_keys_expired: self.delivery.expired_from.get(&id).copied().unwrap_or(0),
                    paths: plan.map(|p| p.paths).unwrap_or_default(),
                }
            })
            .collect();
        KmStatus {
            node_id: self.cfg.node_id.clone(),
            fenced: self.is_fenced(),
            adverts_signed: self.cfg.advert_auth.is_some(),
            links,
            pools,
            stats: self.stats(),
            quotas: self.quotas.config().clone(),
            sae_usage: self.quotas.usage(),
        }
    }

    /// Which nodes could have seen which shares, for every relay in flight from this node
    /// (X.1712-style exposure record: no single intermediate node should see `threshold`).
    pub fn relay_exposures(&self) -> Vec<crate::relay::RelayExposure> {
        self.relays.exposures()
    }

    /// Takes the link to neighbour `peer` out of service (`false`) or back (`true`): relays from
    /// this node stop or resume using it. Returns whether `peer` is a neighbour. Each end of a
    /// link decides for itself; an operator takes a link out at both ends.
    pub fn set_link_in_service(&mut self, peer: &str, in_service: bool) -> bool {
        let peer = &NodeId::from(peer);
        if !self.links.contains(peer) {
            return false;
        }
        self.deadline_memo.forget();
        self.routing.set_in_service(peer, in_service);
        true
    }

    /// Replaces the per-SAE key rate limits (a reload: no restart, buckets keep their level up
    /// to the new burst). Invalid limits are refused and the old ones stay.
    pub fn set_quotas(
        &mut self,
        quotas: crate::quota::QuotaConfig,
    ) -> Result<(), crate::quota::QuotaError> {
        quotas.validate()?;
        self.cfg.policy.quotas = quotas.clone();
        self.quotas.set(quotas);
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use kagi_control::Topology;

    use crate::config::{KmConfig, Policy};
    use crate::manager::KeyManager;
    use crate::record::Snapshot;
    use crate::time::Instant;

    fn km(topo: Topology, me: &str) -> KeyManager {
        let cfg = KmConfig::for_test(me, topo, Policy::default());
        KeyManager::restore(cfg, Snapshot::default(), [7; 32], Instant(0))
    }

    /// A ring a-b-c-d-a: taking a-b out of service sends a's relays to b the long way round.
    #[test]
    fn link_out_of_service_reroutes_and_comes_back() {
        let mut topo = Topology::line("ring", &["a", "b", "c", "d"], 10.0, |_| vec![]);
        let mut back = topo.links[0].clone();
        back.a = "d".into();
        back.b = "a".into();
        topo.links.push(back);
        let mut k = km(topo, "a");
        let route = |k: &KeyManager| {
            k.km_status()
                .pools
                .into_iter()
                .find(|p| p.peer == "b")
                .unwrap()
                .route
        };
        assert_eq!(route(&k), ["a", "b"]);
        assert!(k.set_link_in_service("b", false));
        assert_eq!(route(&k), ["a", "d", "c", "b"]);
        let st = k.km_status();
        let l = st.links.iter().find(|l| l.peer == "b").unwrap();
        assert!(!l.in_service && l.peer_up);
        assert!(k.set_link_in_service("b", true));
        assert_eq!(route(&k), ["a", "b"]);
        assert!(
            !k.set_link_in_service("c", false),
            "c is not a neighbour of a"
        );
    }
}
