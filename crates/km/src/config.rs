//! What the key manager core needs to know: who it is, the network, its limits and policies.

use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use serde::{Deserialize, Serialize};

use crate::app::Refusal;
use crate::msgs::NodeId;

/// ETSI GS QKD 014 limits the core enforces. The node's config file embeds this struct (its
/// `[etsi014]` table), so the limits are defined and checked in one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Default key size in bits.
    pub key_size: u64,
    /// Smallest key size in bits.
    pub min_key_size: u64,
    /// Largest key size in bits.
    pub max_key_size: u64,
    /// Most keys per request.
    pub max_key_per_request: u64,
    /// Most additional slaves per request.
    pub max_sae_id_count: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            key_size: 256,
            min_key_size: 64,
            max_key_size: 8192,
            max_key_per_request: 1024,
            max_sae_id_count: 8,
        }
    }
}

/// A configured limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ETSI 014 limits: {0}")]
pub struct LimitsError(String);

/// Largest key size a configuration may allow, in bits (1 MiB keys; a relay carries at most that).
pub const MAX_CONFIG_KEY_BITS: u64 = 8 << 20;
/// Most keys per request a configuration may allow.
pub const MAX_CONFIG_KEYS_PER_REQUEST: u64 = 1 << 16;
/// Most additional slaves a configuration may allow.
pub const MAX_CONFIG_SAE_IDS: u64 = 1024;

/// An `enc_keys` request after its numbers were checked against [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncKeysShape {
    /// Number of keys.
    pub number: u64,
    /// Size of each key in bits (a multiple of 8).
    pub size_bits: u64,
}

impl Limits {
    /// Checks that the limits are usable: sizes positive multiples of 8 with
    /// `min ≤ default ≤ max`, and every bound below a sane ceiling.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let err = |m: String| Err(LimitsError(m));
        for (name, v) in [
            ("key_size", self.key_size),
            ("min_key_size", self.min_key_size),
            ("max_key_size", self.max_key_size),
        ] {
            if v == 0 || !v.is_multiple_of(8) {
                return err(format!("{name} = {v} must be a positive multiple of 8"));
            }
            if v > MAX_CONFIG_KEY_BITS {
                return err(format!("{name} = {v} exceeds {MAX_CONFIG_KEY_BITS} bits"));
            }
        }
        if !(self.min_key_size <= self.key_size && self.key_size <= self.max_key_size) {
            return err(format!(
                "need min_key_size ≤ key_size ≤ max_key_size (got {} ≤ {} ≤ {})",
                self.min_key_size, self.key_size, self.max_key_size
            ));
        }
        if self.max_key_per_request == 0 || self.max_key_per_request > MAX_CONFIG_KEYS_PER_REQUEST {
            return err(format!(
                "max_key_per_request = {} must be between 1 and {MAX_CONFIG_KEYS_PER_REQUEST}",
                self.max_key_per_request
            ));
        }
        if self.max_sae_id_count > MAX_CONFIG_SAE_IDS {
            return err(format!(
                "max_sae_id_count = {} exceeds {MAX_CONFIG_SAE_IDS}",
                self.max_sae_id_count
            ));
        }
        Ok(())
    }

    /// ETSI 014 rules for the numbers of an `enc_keys` request: `number` (default 1) within
    /// `1..=max_key_per_request`, `size` (default `key_size`) a multiple of 8 within
    /// `min_key_size..=max_key_size`, at most `max_sae_id_count` additional slaves.
    pub fn check_enc_keys(
        &self,
        number: Option<u64>,
        size_bits: Option<u64>,
        additional_slaves: usize,
    ) -> Result<EncKeysShape, Refusal> {
        let bad = |m: String| Err(Refusal::BadRequest(m));
        let size = size_bits.unwrap_or(self.key_size);
        let number = number.unwrap_or(1);
        if !size.is_multiple_of(8) {
            return bad(Refusal::SIZE_NOT_MULTIPLE_OF_8.into());
        }
        if number < 1 || number > self.max_key_per_request {
            return bad(format!(
                "number must be between 1 and {} (got {number})",
                self.max_key_per_request
            ));
        }
        if size < self.min_key_size || size > self.max_key_size {
            return bad(format!(
                "size must be between {} and {} bits (got {size})",
                self.min_key_size, self.max_key_size
            ));
        }
        if additional_slaves as u64 > self.max_sae_id_count {
            return bad(format!(
                "too many additional_slave_SAE_IDs: {additional_slaves} given, at most {}",
                self.max_sae_id_count
            ));
        }
        Ok(EncKeysShape {
            number,
            size_bits: size,
        })
    }

    /// ETSI 014 rule for `dec_keys`: between 1 and `max_key_per_request` key IDs.
    pub fn check_key_ids(&self, n: usize) -> Result<(), Refusal> {
        if n == 0 {
            return Err(Refusal::BadRequest(
                "key_IDs must name at least one key".into(),
            ));
        }
        if n as u64 > self.max_key_per_request {
            return Err(Refusal::BadRequest(format!(
                "too many key_IDs: {n} given, at most {}",
                self.max_key_per_request
            )));
        }
        Ok(())
    }
}

/// End-to-end pool policy and protocol timers.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Most bytes of end-to-end key kept ready per destination node (the pool of a busy
    /// destination; the `demand` module sizes each pool from recent demand).
    pub pool_target_bytes: u64,
    /// Bytes kept ready for a destination without recent demand (capped at
    /// `pool_target_bytes`), so a first request is served at once without relaying key to every
    /// node of a large network ahead of need.
    pub idle_floor_bytes: u64,
    /// Most relays in flight from this node towards destinations without recent demand, all
    /// together: filling their floors (at start-up, on a network of dozens of nodes, one relay
    /// per node) must not crowd the links that carry key applications are waiting for.
    pub idle_relays_in_flight: u32,
    /// A busy destination's pool holds about this long of its recent demand.
    pub pool_horizon: Duration,
    /// Demand older than about this counts less and less (exponential decay).
    pub demand_window: Duration,
    /// Refill starts when a pool drops below this fraction of the target.
    pub pool_low_water: f64,
    /// Bytes of key per relay.
    pub relay_chunk_bytes: u32,
    /// Most relays in flight per destination; fewer while the path's weakest link or
    /// abandonments say so (the `pace` module).
    pub max_relays_in_flight: u32,
    /// How often pools are checked.
    pub refill_interval: Duration,
    /// A relay not acknowledged by then is abandoned.
    pub relay_timeout: Duration,
    /// An assignment not confirmed by every slave node by then is refused (503) and revoked.
    pub assign_timeout: Duration,
    /// Assignment messages are re-sent this often until confirmed.
    pub assign_retry: Duration,
    /// A relay hop that arrives before its link key (or before key to forward it) waits this long.
    pub hop_wait: Duration,
    /// How long a slave that fetched a key may fetch it again (same SAE, same key ID, same
    /// bytes), in case its reply was lost; the key is erased when the grace of every slave that
    /// fetched it has ended. Counted again from each start of the key manager. Zero: erased at
    /// once (the reply is the only copy). At most [`MAX_SLAVE_GRACE`].
    pub slave_grace: Duration,
    /// A key held for slaves that some slave has not fetched by then is erased for it (an
    /// orphan: its master's node crashed mid-assignment and its revoke never arrived, or the
    /// slave application never came); counted as `slave_keys_expired`. Counted again from each
    /// start of the key manager. Zero: never.
    pub slave_key_lifetime: Duration,
    /// Most link key bytes held per link (both halves); further blocks are dropped until key is
    /// spent, which bounds memory and disk when demand is low.
    pub link_buffer_cap_bytes: u64,
    /// Multi-path relay: how each fresh key travels to each destination.
    pub routing: RoutePolicy,
    /// Key rate limits per master SAE (changeable at run time with
    /// [`KeyManager::set_quotas`](crate::KeyManager::set_quotas)).
    pub quotas: crate::quota::QuotaConfig,
    /// Heartbeats and silence detection (`None`: a peer counts as down only when the driver
    /// reports its channel down).
    pub liveness: Option<LivenessPolicy>,
    /// Adaptive direction split of link key: an end short of link key asks its neighbour for
    /// the unspent rest of the neighbour's half (on by default; `None`: each end spends only
    /// its fixed half). See `crate::grants` and PERFORMANCE.md "Link key grants".
    pub link_grants: Option<LinkGrantPolicy>,
    /// Link-state advertisements and routing by key availability (`None`: no adverts; routes
    /// follow the topology's static link costs, hop count by default).
    pub link_state: Option<LinkStatePolicy>,
    /// Which nodes this node keeps talking to without a reason: heartbeats go to them, and
    /// only their silence routes around them.
    pub peers: PeerScope,
}

/// Which nodes get heartbeats (and are watched for silence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerScope {
    /// Every node of the topology: the origin of a relay sees for itself that a node anywhere
    /// went silent, also with link state off (needs a connection to every node; a node's
    /// `[peers] connect = "all"`).
    All,
    /// Neighbours only (the default, as a node's `[peers] connect`): a silent node far away is
    /// learnt from the link-state adverts of its neighbours (which advertise their links to it
    /// down), so connections to other nodes are needed only while there is something to send.
    /// With link state off nothing tells a relay's origin that a far node went silent.
    #[default]
    Neighbours,
}

/// Link-state advertisements ([`PeerMsg::LinkState`](crate::PeerMsg::LinkState)) and the
/// route costs that follow from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatePolicy {
    /// How often this node samples its link key rates and checks whether its links changed
    /// enough to advertise (a route-cost class of a link moved): also the least time between
    /// two such adverts. A link going up or down is advertised sooner.
    pub advert_interval: Duration,
    /// An advert goes at least this often, changed or not, so that receivers can tell a live
    /// origin from a silent one. The default, 30 s, is long beside the heartbeats (a dead or
    /// frozen node's neighbours advertise their links to it down within `silent_after`) and
    /// short beside OSPF's 30 min: refreshes are most of the flood's messages in a quiet mesh.
    pub refresh_interval: Duration,
    /// An origin's advert not refreshed for this long counts as unknown: its links cost like
    /// links nobody advertised (more than a known good link). Longer than `refresh_interval`.
    pub stale_after: Duration,
    /// Link key rates are moving averages over about this long.
    pub rate_window: Duration,
    /// Routes are recomputed from received adverts at most this often.
    pub recompute_interval: Duration,
}

impl Default for LinkStatePolicy {
    fn default() -> Self {
        Self {
            advert_interval: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(90),
            rate_window: Duration::from_secs(5),
            recompute_interval: Duration::from_millis(250),
        }
    }
}

/// When the ends of a link give each other unspent link key (see `crate::grants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkGrantPolicy {
    /// Link key of its own half an end keeps for itself: it grants only beyond this, and asks
    /// its neighbour for a grant when it holds less (its own half plus grants).
    pub reserve_bytes: u64,
    /// Least time between two asks to the same neighbour.
    pub ask_every: Duration,
}

impl Default for LinkGrantPolicy {
    fn default() -> Self {
        Self {
            reserve_bytes: 16 * 1024,
            ask_every: Duration::from_millis(100),
        }
    }
}

/// Heartbeats on the peer channel: a frozen node keeps its connections open, so only its
/// silence shows that it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// How often this node sends a heartbeat to every other node.
    pub heartbeat_interval: Duration,
    /// A node not heard from (heartbeat or any other message) for this long counts as down
    /// for routing until it speaks again.
    pub silent_after: Duration,
}

impl Default for LivenessPolicy {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(500),
            silent_after: Duration::from_secs(2),
        }
    }
}

/// How many node-disjoint paths a relay uses and how many of its shares rebuild the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Paths (and shares) per relay when the topology has that many node-disjoint paths; 1 is
    /// plain single-path relay.
    pub paths: u8,
    /// Shares that rebuild the key (`1 ≤ threshold ≤ paths`): with `threshold < paths` a relay
    /// survives `paths − threshold` lost paths; no node on fewer than `threshold` paths learns
    /// anything about the key.
    pub threshold: u8,
    /// Per destination node: `(paths, threshold)` instead of the default.
    pub per_dest: std::collections::BTreeMap<String, (u8, u8)>,
}

impl Default for RoutePolicy {
    /// Single path: the core's default keeps relays observable hop by hop in tests; the node's
    /// configuration (`[routing]`) defaults to 3 paths, threshold 2.
    fn default() -> Self {
        Self {
            paths: 1,
            threshold: 1,
            per_dest: Default::default(),
        }
    }
}

/// Longest [`Policy::slave_grace`] a configuration may set: a delivered key stays at rest at
/// the slave's node no longer than this (and a restart counts it again).
pub const MAX_SLAVE_GRACE: Duration = Duration::from_secs(3600);

/// Longest [`Policy::slave_key_lifetime`] a configuration may set (30 days).
pub const MAX_SLAVE_KEY_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// Most paths a relay may use.
pub const MAX_PATHS: u8 = 8;

impl RoutePolicy {
    /// `(paths, threshold)` for relays to `dest`.
    pub fn for_dest(&self, dest: &str) -> (u8, u8) {
        self.per_dest
            .get(dest)
            .copied()
            .unwrap_or((self.paths, self.threshold))
    }

    /// Checks `1 ≤ threshold ≤ paths ≤ MAX_PATHS`, for the default and every override.
    pub fn validate(&self) -> Result<(), String> {
        let one = |what: &str, (p, t): (u8, u8)| {
            if p == 0 || p > MAX_PATHS {
                return Err(format!(
                    "{what}: paths = {p} must be between 1 and {MAX_PATHS}"
                ));
            }
            if t == 0 || t > p {
                return Err(format!(
                    "{what}: threshold = {t} must be between 1 and paths ({p})"
                ));
            }
            Ok(())
        };
        one("routing", (self.paths, self.threshold))?;
        for (d, v) in &self.per_dest {
            one(&format!("routing for {d}"), *v)?;
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            pool_target_bytes: 64 * 1024,
            idle_floor_bytes: 4096,
            idle_relays_in_flight: 2,
            pool_horizon: Duration::from_secs(30),
            demand_window: Duration::from_secs(60),
            pool_low_water: 0.5,
            relay_chunk_bytes: 4096,
            max_relays_in_flight: 4,
            refill_interval: Duration::from_millis(20),
            relay_timeout: Duration::from_secs(10),
            assign_timeout: Duration::from_secs(5),
            assign_retry: Duration::from_millis(500),
            hop_wait: Duration::from_secs(3),
            slave_grace: Duration::from_secs(60),
            slave_key_lifetime: Duration::from_secs(86_400),
            link_buffer_cap_bytes: 8 << 20,
            routing: RoutePolicy::default(),
            quotas: crate::quota::QuotaConfig::default(),
            liveness: Some(LivenessPolicy::default()),
            link_grants: Some(LinkGrantPolicy::default()),
            link_state: Some(LinkStatePolicy::default()),
            peers: PeerScope::Neighbours,
        }
    }
}

/// The core's configuration.
#[derive(Debug, Clone)]
pub struct KmConfig {
    /// This node's ID.
    pub node_id: NodeId,
    /// The network.
    pub topology: Arc<Topology>,
    /// ETSI 014 limits.
    pub limits: Limits,
    /// Pool policy and timers.
    pub policy: Policy,
    /// Signs this node's link-state adverts and verifies other origins' (see
    /// [`crate::advert_auth`]). `None`: adverts go unsigned and unsigned adverts are accepted,
    /// so a transit node can forge another origin's advert; the node warns at start.
    pub advert_auth: Option<Arc<dyn crate::advert_auth::AdvertAuth>>,
    /// Least run number of this node's link-state adverts (they carry the larger of it and the
    /// store's run counter). A receiver that verifies adverts never accepts one older than the
    /// newest it accepted from the origin, so this must grow with every start of the core, also
    /// one from an older copy of the store or an empty one, which set the store's counter back.
    /// The core reads no clock: `kagi-node` gives wall-clock milliseconds at each start (see
    /// SECURITY.md AVL.1 for a clock set back), the simulator its virtual time. 0: the store's
    /// run counter alone (a start from an older store is then not heard by such receivers).
    pub advert_run_base: u64,
}

#[cfg(test)]
impl KmConfig {
    /// Node `node` of `topology` under `policy`, with default limits and unsigned adverts (for
    /// unit tests of the core).
    pub(crate) fn for_test(node: &str, topology: Topology, policy: Policy) -> Self {
        Self {
            node_id: node.into(),
            topology: Arc::new(topology),
            limits: Limits::default(),
            policy,
            advert_auth: None,
            advert_run_base: 0,
        }
    }
}
