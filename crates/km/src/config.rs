//! What the key manager core needs to know: who it is, the network, its limits and policies.

use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;

/// ETSI GS QKD 014 limits the core enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// End-to-end pool policy and protocol timers.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Bytes of end-to-end key kept ready per destination node.
    pub pool_target_bytes: u64,
    /// Refill starts when a pool drops below this fraction of the target.
    pub pool_low_water: f64,
    /// Bytes of key per relay.
    pub relay_chunk_bytes: u32,
    /// Relays in flight per destination.
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
    /// Most link key bytes held per link (both halves); further blocks are dropped until key is
    /// spent, which bounds memory and disk when demand is low.
    pub link_buffer_cap_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            pool_target_bytes: 64 * 1024,
            pool_low_water: 0.5,
            relay_chunk_bytes: 4096,
            max_relays_in_flight: 4,
            refill_interval: Duration::from_millis(20),
            relay_timeout: Duration::from_secs(10),
            assign_timeout: Duration::from_secs(5),
            assign_retry: Duration::from_millis(500),
            hop_wait: Duration::from_secs(3),
            link_buffer_cap_bytes: 8 << 20,
        }
    }
}

/// The core's configuration.
#[derive(Debug, Clone)]
pub struct KmConfig {
    /// This node's ID.
    pub node_id: String,
    /// The network.
    pub topology: Arc<Topology>,
    /// ETSI 014 limits.
    pub limits: Limits,
    /// Pool policy and timers.
    pub policy: Policy,
}
