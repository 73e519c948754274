//! `node.toml`: what one `kagi node` process needs to know.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Configuration of one key manager node. Relative paths are relative to the config file's
/// directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's ID in the topology.
    pub node_id: String,
    /// The topology file every node of the network reads (nodes carry `peer_addr` and
    /// `etsi014_addr`).
    pub topology: PathBuf,
    /// Directory for this node's SQLite database.
    pub data_dir: PathBuf,
    /// TLS material.
    pub tls: TlsConfig,
    /// ETSI GS QKD 014 parameters.
    #[serde(default)]
    pub etsi014: Etsi014Config,
    /// End-to-end key pool policy.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Multi-path relay policy (`[routing]`).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Which peers this node keeps connections to (`[peers]`: `connect`, `idle_close_s`).
    #[serde(default, skip_serializing_if = "PeersConfig::is_default")]
    pub peers: PeersConfig,
    /// Origin signatures on link-state adverts (`[link_state]`: `signing_key`,
    /// `public_keys`). Without them adverts go unsigned and the node warns at start.
    #[serde(default, skip_serializing_if = "LinkStateConfig::is_default")]
    pub link_state: LinkStateConfig,
    /// Key store durability.
    #[serde(default)]
    pub store: StoreConfig,
    /// What happens to keys delivered to slaves here (`[delivery]`: `grace_s`).
    #[serde(default, skip_serializing_if = "DeliveryConfig::is_default")]
    pub delivery: DeliveryConfig,
    /// Where Cisco SKIP is served (`127.0.0.1:PORT`, TLS 1.3 with client certificates); off
    /// when absent. See [`crate::skip`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_addr: Option<String>,
    /// Management listener (roles, metrics); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<ManagementConfig>,
    /// ETSI GS QKD 004 key streams (`[etsi004]`); off when absent. See [`crate::etsi004`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etsi004: Option<Etsi004Config>,
    /// Tamper signal sources (`[tamper]`).
    #[serde(default, skip_serializing_if = "TamperConfig::is_default")]
    pub tamper: TamperConfig,
    /// Key rates and priorities (`[quotas]`: `default`, `[quotas.sae."<master>"]` and
    /// `[quotas.pair."<master>"."<slave>"]` with `bytes_per_second`, `burst_bytes`,
    /// `daily_bytes`, `priority`; `[quotas.reserve]` with `normal_percent`, `low_percent`);
    /// reloaded on SIGHUP.
    #[serde(default, skip_serializing_if = "kagi_km::QuotaConfig::is_empty")]
    pub quotas: kagi_km::QuotaConfig,
    /// The file this config was loaded from (set by [`NodeConfig::load`]; SIGHUP re-reads its
    /// `[quotas]`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The ETSI GS QKD 004 listener and the bounds on what its callers may hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Etsi004Config {
    /// Where to listen, e.g. `127.0.0.1:9004` (TLS 1.3, SAE client certificates).
    pub listen: String,
    /// Most key streams one SAE may have open at this node.
    #[serde(default = "Etsi004Config::default_streams_per_sae")]
    pub max_streams_per_sae: usize,
    /// Most key streams this node tracks in all (its own callers' and its peers').
    #[serde(default = "Etsi004Config::default_streams")]
    pub max_streams: usize,
    /// Most GET_KEY calls one SAE may have waiting at once.
    #[serde(default = "Etsi004Config::default_waiting")]
    pub max_waiting_per_sae: usize,
    /// Largest `key_chunk_size` (bytes).
    #[serde(default = "Etsi004Config::default_chunk")]
    pub max_chunk_bytes: u32,
    /// Longest GET_KEY `timeout` (milliseconds).
    #[serde(default = "Etsi004Config::default_timeout")]
    pub max_timeout_ms: u32,
    /// Longest stream `TTL` (seconds).
    #[serde(default = "Etsi004Config::default_ttl")]
    pub max_ttl_s: u32,
    /// How many chunks one side of a stream may run ahead of the other (key held in memory).
    #[serde(default = "Etsi004Config::default_window")]
    pub window: u32,
}

impl Etsi004Config {
    /// Defaults for a listener at `listen`.
    pub fn new(listen: impl Into<String>) -> Self {
        Self {
            listen: listen.into(),
            max_streams_per_sae: Self::default_streams_per_sae(),
            max_streams: Self::default_streams(),
            max_waiting_per_sae: Self::default_waiting(),
            max_chunk_bytes: Self::default_chunk(),
            max_timeout_ms: Self::default_timeout(),
            max_ttl_s: Self::default_ttl(),
            window: Self::default_window(),
        }
    }
    fn default_streams_per_sae() -> usize {
        16
    }
    fn default_streams() -> usize {
        4096
    }
    fn default_waiting() -> usize {
        8
    }
    fn default_chunk() -> u32 {
        1024
    }
    fn default_timeout() -> u32 {
        10_000
    }
    fn default_ttl() -> u32 {
        86_400
    }
    fn default_window() -> u32 {
        64
    }
}

/// Where tamper signals come from besides the management API (`POST /api/v1/tamper`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TamperConfig {
    /// A path watched about 5 times a second: when it exists the node erases its keys from
    /// memory and fences itself. Stands in for an enclosure switch (a udev rule or a GPIO daemon
    /// creates the file).
    pub watch_path: Option<PathBuf>,
    /// Stored records failing authentication in one run of the node (its start and any restart
    /// of its core) that count as tampering rather than decay: at this many the node fences
    /// itself as for any tamper signal. Fewer are quarantined and the node runs on. 0 = never.
    pub integrity_failures: u64,
    /// SIGUSR1 to the node process is a tamper signal (source `signal`): what an intrusion
    /// sensor's daemon sends. On by default; `false` leaves SIGUSR1 to its default action.
    pub sigusr1: bool,
}

impl Default for TamperConfig {
    fn default() -> Self {
        Self {
            watch_path: None,
            // One flipped record is bit rot or a torn sector; three in one start is someone
            // editing the store.
            integrity_failures: 3,
            sigusr1: true,
        }
    }
}

impl TamperConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The management listener: mutual TLS with role certificates, JSON API and `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementConfig {
    /// Where to listen, e.g. `127.0.0.1:9001`.
    pub listen: String,
}

/// Key store settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `"full"` (default: fsync per commit, survives power loss) or `"unsafe-normal"` (survives
    /// `kill -9`; a power loss may roll back the latest commits and re-serve their keys; the
    /// node warns at start). `"normal"` is refused.
    pub synchronous: crate::store::Sync,
    /// Where the key-encryption key that unseals the store comes from (`[store.seal]`).
    pub seal: crate::seal::kek::SealConfig,
}

/// Keys delivered to slave SAEs at this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Seconds during which a slave SAE that fetched a key may fetch it again (same SAE, same
    /// key ID, same bytes) in case its reply was lost; then the key is erased. 0: erased at
    /// once, as ETSI GS QKD 014 reads literally. At most 3600. Counted again from a restart.
    pub grace_s: u64,
    /// Seconds after which a key held here for slaves is erased for the slaves that have not
    /// fetched it (an orphan: its master's node crashed mid-assignment, or the slave never
    /// came); counted in `kagi_slave_keys_expired_total`. 0: never. At most 30 days. Counted
    /// again from a restart.
    pub slave_key_lifetime_s: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            grace_s: 60,
            slave_key_lifetime_s: 86_400,
        }
    }
}

impl DeliveryConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        let max = kagi_km::MAX_SLAVE_GRACE.as_secs();
        if self.grace_s > max {
            return Err(format!(
                "grace_s = {} must be at most {max} (a delivered key stays at rest that long)",
                self.grace_s
            ));
        }
        let max = kagi_km::MAX_SLAVE_KEY_LIFETIME.as_secs();
        if self.slave_key_lifetime_s > max {
            return Err(format!(
                "slave_key_lifetime_s = {} must be at most {max} (30 days)",
                self.slave_key_lifetime_s
            ));
        }
        Ok(())
    }
}

/// Certificates and keys (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA that signs node and SAE certificates; clients and peers are verified against it.
    pub ca: PathBuf,
    /// This node's certificate (server for ETSI 014 and peers, client towards peers).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// ETSI GS QKD 014 limits and SAE identity mapping.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Etsi014Config {
    /// The key manager core's limits (`key_size`, `min_key_size`, `max_key_size`,
    /// `max_key_per_request`, `max_sae_id_count`), written directly in `[etsi014]`. The core
    /// defines and enforces them; the adapter only parses.
    #[serde(flatten)]
    pub limits: kagi_km::Limits,
    /// Certificate subject CN → SAE ID. A CN absent here maps to itself unless
    /// `strict_sae_map` is set.
    pub sae_map: std::collections::BTreeMap<String, String>,
    /// Only certificates whose CN is listed in `sae_map` are SAEs; any other CN gets 401 even when
    /// it equals an SAE ID of the topology.
    pub strict_sae_map: bool,
    /// Refuse applications that cannot do TLS 1.3 with X25519MLKEM768 (classical-only and
    /// TLS 1.2 clients). Off by default so that deployed encryptors that speak only classical
    /// TLS keep working; node-to-node and vault traffic always require it.
    pub require_pq: bool,
}

/// How relays travel: over up to `paths` node-disjoint paths, the key split so that any
/// `threshold` shares rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Node-disjoint paths per relay where the topology has them (1: single-path relay). Where
    /// it has fewer, relays use those it has and the node logs and reports why.
    pub paths: u8,
    /// Shares that rebuild a key (`1 ≤ threshold ≤ paths`); `paths − threshold` paths may fail.
    pub threshold: u8,
    /// Per destination node: `[routing.dest.<node>]` with its own `paths` and `threshold`.
    pub dest: std::collections::BTreeMap<String, PathPolicy>,
}

/// `paths` and `threshold` for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathPolicy {
    /// Node-disjoint paths.
    pub paths: u8,
    /// Shares that rebuild a key.
    pub threshold: u8,
}

impl Default for RoutingConfig {
    /// Three paths, any two of which deliver: no single trusted node on the way learns a key,
    /// and one failed path does not stop delivery.
    fn default() -> Self {
        Self {
            paths: 3,
            threshold: 2,
            dest: Default::default(),
        }
    }
}

impl RoutingConfig {
    /// The core's routing policy.
    pub fn to_policy(&self) -> kagi_km::RoutePolicy {
        kagi_km::RoutePolicy {
            paths: self.paths,
            threshold: self.threshold,
            per_dest: self
                .dest
                .iter()
                .map(|(d, p)| (d.clone(), (p.paths, p.threshold)))
                .collect(),
        }
    }
}

/// Which peers a node keeps connections to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// `"all"`: a connection to every node of the topology, always. `"neighbours"` (the
    /// default): always to
    /// the nodes this node shares a QKD link with; to any other node only while there is
    /// something to send to it (relay acknowledgements, assignments, reconciliation),
    /// closed after `idle_close_s` without a message. Heartbeats then go to neighbours only,
    /// and a failed node far away is routed around through the link-state adverts of its
    /// neighbours.
    pub connect: PeerConnect,
    /// Seconds without a message after which an on-demand connection closes (`"neighbours"`).
    pub idle_close_s: u64,
}

/// `[peers] connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerConnect {
    /// Every node, always.
    All,
    /// Neighbours always; other nodes while needed.
    Neighbours,
}

impl Default for PeersConfig {
    /// Neighbours always, other nodes while needed: on the 24-node example this cuts peer
    /// connections per node from 47 to about 14 with keys still matching end to end
    /// (docs/PERFORMANCE.md, `scripts/japan24-peers.sh`).
    fn default() -> Self {
        Self {
            connect: PeerConnect::Neighbours,
            idle_close_s: 30,
        }
    }
}

impl PeersConfig {
    /// True when nothing differs from the default (not written out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Origin signatures on link-state adverts (see [`crate::advert_keys`]): both files or neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkStateConfig {
    /// This node's ML-DSA-65 advert signing key (PKCS#8 PEM; `kagi pki advert-keys` and
    /// `kagi up` write `pki/nodes/<node>-advert-key.pem`).
    pub signing_key: Option<PathBuf>,
    /// Every node's advert public key (`pki/advert-keys.toml`); adverts that do not verify
    /// under their origin's key are dropped.
    pub public_keys: Option<PathBuf>,
}

impl LinkStateConfig {
    /// True when no key is configured (not written out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Both files or neither.
    pub fn validate(&self) -> Result<(), String> {
        if self.signing_key.is_some() != self.public_keys.is_some() {
            return Err(
                "set both signing_key and public_keys (adverts are signed and verified), or                  neither (unsigned adverts: any transit node can forge them)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// End-to-end key pool policy, per destination node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Bytes of end-to-end key to keep ready per destination.
    pub target_bytes: u64,
    /// Start refilling when the pool drops below this fraction of the target.
    pub low_water: f64,
    /// Bytes of key per relay message.
    pub relay_chunk_bytes: u64,
    /// Relays in flight per destination.
    pub max_in_flight: u32,
    /// Adaptive direction split of link key: an end short of link key asks its neighbour,
    /// which grants the rest of its oldest blocks beyond its reserve (on by default; `false`
    /// keeps the fixed half-and-half split).
    pub link_grants: bool,
    /// Link key of its own half each end keeps when granting (and below which it asks).
    pub link_grant_reserve_bytes: u64,
}

/// Bounds of `[pool] link_grant_reserve_bytes`.
pub const LINK_GRANT_RESERVE_RANGE: std::ops::RangeInclusive<u64> = 1024..=(1 << 30);

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            target_bytes: 64 * 1024,
            low_water: 0.5,
            relay_chunk_bytes: 4096,
            max_in_flight: 4,
            link_grants: true,
            link_grant_reserve_bytes: kagi_km::LinkGrantPolicy::default().reserve_bytes,
        }
    }
}

impl PoolConfig {
    /// Checks the link grant reserve is within [`LINK_GRANT_RESERVE_RANGE`].
    pub fn validate(&self) -> Result<(), String> {
        let r = self.link_grant_reserve_bytes;
        if !LINK_GRANT_RESERVE_RANGE.contains(&r) {
            return Err(format!(
                "link_grant_reserve_bytes = {r} must be between {} and {}",
                LINK_GRANT_RESERVE_RANGE.start(),
                LINK_GRANT_RESERVE_RANGE.end()
            ));
        }
        Ok(())
    }

    /// The core's grant policy (`None` when grants are off).
    pub fn link_grant_policy(&self) -> Option<kagi_km::LinkGrantPolicy> {
        self.link_grants.then(|| kagi_km::LinkGrantPolicy {
            reserve_bytes: self.link_grant_reserve_bytes,
            ..Default::default()
        })
    }
}

impl NodeConfig {
    /// A pool is refilled only once it drops below `[pool] low_water` of its target; a
    /// priority whose reserve is at or above that could wait forever on a pool that never
    /// drops low enough to be refilled.
    fn check_reserve_below_low_water(&self) -> Result<(), String> {
        let r = &self.quotas.reserve;
        for (field, pct) in [
            ("low_percent", r.low_percent),
            ("normal_percent", r.normal_percent),
        ] {
            if pct > 0 && f64::from(pct) >= self.pool.low_water * 100.0 {
                return Err(format!(
                    "[quotas.reserve] {field} = {pct} must be below [pool] low_water = {} (as a \
                     percentage): a pool is refilled only below low_water, so requests held to \
                     that reserve could wait forever",
                    self.pool.low_water
                ));
            }
        }
        Ok(())
    }

    /// Reads a config file and resolves relative paths against its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.topology,
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [
            cfg.tamper.watch_path.as_mut(),
            cfg.link_state.signing_key.as_mut(),
            cfg.link_state.public_keys.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.link_state
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [link_state]: {e}", path.display()))?;
        cfg.etsi014
            .limits
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [etsi014]: {e}", path.display()))?;
        cfg.routing
            .to_policy()
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [routing]: {e}", path.display()))?;
        cfg.quotas
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [quotas]: {e}", path.display()))?;
        crate::config_check::check(&cfg).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.check_reserve_below_low_water()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.delivery
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [delivery]: {e}", path.display()))?;
        cfg.pool
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [pool]: {e}", path.display()))?;
        cfg.source = Some(path.to_path_buf());
        if let Some(p) = cfg.store.seal.key_file.as_mut() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advert_keys_are_both_or_neither() {
        let l: LinkStateConfig = toml::from_str("").unwrap();
        assert!(l.is_default());
        l.validate().unwrap();
        let l: LinkStateConfig =
            toml::from_str("signing_key = \"k.pem\"\npublic_keys = \"keys.toml\"").unwrap();
        l.validate().unwrap();
        for half in ["signing_key = \"k.pem\"", "public_keys = \"keys.toml\""] {
            let l: LinkStateConfig = toml::from_str(half).unwrap();
            let err = l.validate().unwrap_err();
            assert!(err.contains("both"), "{err}");
        }
        assert!(toml::from_str::<LinkStateConfig>("signing_keys = \"k.pem\"").is_err());
    }

    #[test]
    fn link_grants_are_on_by_default_can_be_switched_off_and_the_reserve_is_bounded() {
        let p: PoolConfig = toml::from_str("").unwrap();
        assert_eq!(
            p.link_grant_policy(),
            kagi_km::Policy::default().link_grants
        );
        assert!(p.link_grant_policy().is_some());
        p.validate().unwrap();
        let p: PoolConfig = toml::from_str("link_grants = false").unwrap();
        assert_eq!(p.link_grant_policy(), None);
        let p: PoolConfig = toml::from_str("link_grant_reserve_bytes = 65536").unwrap();
        assert_eq!(p.link_grant_policy().unwrap().reserve_bytes, 65536);
        for bad in ["0", "1023", "1073741825"] {
            let p: PoolConfig =
                toml::from_str(&format!("link_grant_reserve_bytes = {bad}")).unwrap();
            let err = p.validate().unwrap_err();
            assert!(err.contains("link_grant_reserve_bytes"), "{err}");
        }
        assert!(toml::from_str::<PoolConfig>("link_grant_reserve_bytes = -1").is_err());
    }

    #[test]
    fn a_store_that_can_reserve_key_after_power_loss_is_refused_unless_named_unsafe() {
        let err = toml::from_str::<StoreConfig>("synchronous = \"normal\"").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("refused") && msg.contains("unsafe-normal"),
            "{msg}"
        );
        let s: StoreConfig = toml::from_str("synchronous = \"unsafe-normal\"").unwrap();
        assert!(s.synchronous.is_unsafe());
        let s: StoreConfig = toml::from_str("synchronous = \"full\"").unwrap();
        assert!(!s.synchronous.is_unsafe());
        assert!(!StoreConfig::default().synchronous.is_unsafe());
        assert!(toml::from_str::<StoreConfig>("synchronous = \"off\"").is_err());
        // What a node writes back reads again.
        let t = toml::to_string(&StoreConfig {
            synchronous: crate::store::Sync::Normal,
            ..Default::default()
        })
        .unwrap();
        assert!(toml::from_str::<StoreConfig>(&t)
            .unwrap()
            .synchronous
            .is_unsafe());
    }

    #[test]
    fn the_delivery_grace_is_bounded_and_defaults_to_a_minute() {
        assert_eq!(DeliveryConfig::default().grace_s, 60);
        let d: DeliveryConfig = toml::from_str("grace_s = 0").unwrap();
        d.validate().unwrap();
        let d: DeliveryConfig = toml::from_str("grace_s = 3601").unwrap();
        let err = d.validate().unwrap_err();
        assert!(err.contains("grace_s = 3601"), "{err}");
        assert!(toml::from_str::<DeliveryConfig>("grace_s = -1").is_err());
        assert!(toml::from_str::<DeliveryConfig>("grace = 5").is_err());
        assert_eq!(DeliveryConfig::default().slave_key_lifetime_s, 86_400);
        let d: DeliveryConfig = toml::from_str("slave_key_lifetime_s = 2592001").unwrap();
        let err = d.validate().unwrap_err();
        assert!(err.contains("slave_key_lifetime_s = 2592001"), "{err}");
    }

    #[test]
    fn etsi014_limits_are_the_cores_and_written_flat() {
        let e: Etsi014Config =
            toml::from_str("key_size = 512\nmax_key_per_request = 8\nrequire_pq = true").unwrap();
        assert_eq!(e.limits.key_size, 512);
        assert_eq!(e.limits.max_key_per_request, 8);
        assert_eq!(
            e.limits.min_key_size,
            kagi_km::Limits::default().min_key_size
        );
        assert!(e.require_pq);
        e.limits.validate().unwrap();
        // Unknown keys are still refused, next to the flattened limits.
        let err = toml::from_str::<Etsi014Config>("key_size = 512\nkey_sise = 8").unwrap_err();
        assert!(err.to_string().contains("key_sise"), "{err}");
        // Negative or huge values: a clear error, never a panic.
        let err = toml::from_str::<Etsi014Config>("max_key_per_request = -1").unwrap_err();
        assert!(err.to_string().contains("-1"), "{err}");
        let huge: Etsi014Config = toml::from_str("max_key_per_request = 9000000000").unwrap();
        let err = huge.limits.validate().unwrap_err().to_string();
        assert!(err.contains("max_key_per_request"), "{err}");
        let odd: Etsi014Config = toml::from_str("key_size = 100").unwrap();
        assert!(odd
            .limits
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of 8"));
        let inverted: Etsi014Config = toml::from_str("min_key_size = 512\nkey_size = 256").unwrap();
        assert!(inverted.limits.validate().is_err());
        // What `kagi up` writes reads back.
        let text = toml::to_string(&Etsi014Config::default()).unwrap();
        let back: Etsi014Config = toml::from_str(&text).unwrap();
        assert_eq!(back.limits, kagi_km::Limits::default());
    }
}
