//! The topology file: nodes with their SAEs, fibre links with their length. Every node of a
//! network reads the same file.

use std::collections::{BTreeMap, BTreeSet};

use kagi_quantum::supply::{BlockSchedule, KeySupply};
use kagi_quantum::tech::{LinkTech, ParamValue, TechError};
use serde::{Deserialize, Serialize};

use crate::name::{Name, NodeId};

/// A trusted node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node (KME) ID, unique in the network.
    pub id: String,
    /// SAEs attached to this node.
    #[serde(default)]
    pub saes: Vec<String>,
    /// Where the node listens for other nodes (mutual TLS), e.g. `127.0.0.1:7001`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// Where the node serves ETSI GS QKD 014, e.g. `127.0.0.1:8001`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etsi014_addr: Option<String>,
    /// Latitude in degrees (WGS 84), for maps; give it together with `lon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude in degrees (WGS 84), for maps; give it together with `lat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
}

/// A QKD link between two nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// One end (node ID).
    pub a: String,
    /// The other end (node ID).
    pub b: String,
    /// Fibre length in km.
    pub length_km: f64,
    /// Routing cost; hop count (1) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Seed of the simulated quantum channel; derived from the network seed and the ends when
    /// absent. Both ends derive identical key blocks from it (this stands in for the quantum
    /// channel and post-processing; see `kagi-node`'s link source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Key source: `"rate"` (rate-level simulation, default), `"photon"` (photon-level
    /// simulation run through the post-processing protocol between the two nodes) or
    /// `"etsi014"` (a QKD device pair that each end calls over ETSI GS QKD 014).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Settings of a `source = "photon"` link; defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photon: Option<PhotonLinkSpec>,
    /// Settings of a `source = "etsi014"` link: where each end's QKD device answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceLinkSpec>,
    /// QKD technology of the link: `"bb84-decoy"` (default), `"bb84-finite"`, `"cv-gg02"`,
    /// `"tf-sns"`, `"satellite"` or `"repeater"` (see `kagi_quantum::tech`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The technology's model parameters, named as the `kagi link-rate` flags
    /// (`mu = 0.5`, `n-x = 1e8`, `detection = "heterodyne"`; `_` works for `-`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
}

/// Settings of a photon-level link (`source = "photon"`). Every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotonLinkSpec {
    /// Sifted key bits per post-processing block (default 4·10^6; finite-size effects leave
    /// little or no key below a few 10^6 at typical error rates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_bits: Option<f64>,
    /// Optical misalignment error e_d (default: the link model's, 3.3 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_d: Option<f64>,
    /// Bob's detection efficiency (default: the link model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_bob: Option<f64>,
    /// Probability of the key basis at both ends (default 0.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_key_basis: Option<f64>,
    /// Error correction: `"cascade"` (default) or `"ldpc"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation: Option<String>,
}

/// Settings of a device-sourced link (`source = "etsi014"`): each end's key manager calls its
/// own QKD device over ETSI GS QKD 014 with mutual TLS (its node certificate as the client
/// certificate).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceLinkSpec {
    /// ETSI 014 base URL of the device at end `a` (`https://HOST:PORT`). Absent: `kagi up`
    /// starts a simulated device pair (`kagi device`) and fills both URLs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_a: Option<String>,
    /// ETSI 014 base URL of the device at end `b`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_b: Option<String>,
    /// PEM file of the CA that signed the devices' server certificates (default: the CA of
    /// the node's own `[tls]`); relative paths resolve from the node's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Bits of each key asked of the device (default 256; a multiple of 8 in 64..=8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_bits: Option<u64>,
    /// Most keys asked per `enc_keys` call (default 64, in 2..=128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_per_call: Option<u64>,
    /// Set by `kagi up` on the links whose device pair it simulates (`kagi device`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
}

/// Checks an ETSI 014 base URL of the form `https://HOST:PORT`.
pub fn check_https_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} must start with https://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} must name a port (https://HOST:PORT)"))?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{url:?} is not https://HOST:PORT"));
    }
    Ok(())
}

impl DeviceLinkSpec {
    /// Default bits per device key.
    pub const DEFAULT_KEY_BITS: u64 = 256;
    /// Default keys per `enc_keys` call.
    pub const DEFAULT_KEYS_PER_CALL: u64 = 64;

    /// Bits per device key.
    pub fn key_bits(&self) -> u64 {
        self.key_bits.unwrap_or(Self::DEFAULT_KEY_BITS)
    }

    /// Keys per `enc_keys` call.
    pub fn keys_per_call(&self) -> u64 {
        self.keys_per_call.unwrap_or(Self::DEFAULT_KEYS_PER_CALL)
    }

    /// Checks every field; the error names the field (`device.url_a`, ...).
    fn check(&self) -> Result<(), (String, String)> {
        for (name, url) in [("device.url_a", &self.url_a), ("device.url_b", &self.url_b)] {
            if let Some(u) = url {
                check_https_url(u).map_err(|e| (name.to_string(), e))?;
            }
        }
        if self.url_a.is_some() != self.url_b.is_some() {
            return Err((
                "device.url_b".into(),
                "give both device URLs or neither (kagi up then starts a simulated pair)".into(),
            ));
        }
        if self.ca.as_deref().is_some_and(str::is_empty) {
            return Err(("device.ca".into(), "must be a file path".into()));
        }
        let bits = self.key_bits();
        if !(64..=8192).contains(&bits) || !bits.is_multiple_of(8) {
            return Err((
                "device.key_bits".into(),
                format!("{bits} is not a multiple of 8 in 64..=8192"),
            ));
        }
        let n = self.keys_per_call();
        if !(2..=128).contains(&n) {
            return Err((
                "device.keys_per_call".into(),
                format!("{n} is not in 2..=128"),
            ));
        }
        Ok(())
    }
}

/// Where a link's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Rate-level simulation: both ends derive identical blocks at the model's rate.
    Rate,
    /// Photon-level simulation through the post-processing protocol between the nodes.
    Photon,
    /// A QKD device pair, called by each end over ETSI GS QKD 014.
    Device,
}

impl LinkSpec {
    /// The link's key source.
    ///
    /// # Errors
    /// A message naming the unknown source.
    pub fn key_source(&self) -> Result<KeySource, String> {
        match self.source.as_deref() {
            None | Some("rate") => Ok(KeySource::Rate),
            Some("photon") => Ok(KeySource::Photon),
            Some("etsi014") => Ok(KeySource::Device),
            Some(other) => Err(format!(
                "unknown source {other:?} (expected \"rate\", \"photon\" or \"etsi014\")"
            )),
        }
    }

    /// The protocol name (`bb84-decoy` when none is given).
    pub fn protocol_name(&self) -> &str {
        self.protocol.as_deref().unwrap_or("bb84-decoy")
    }

    /// The link's technology, built and validated from `protocol` and `params`.
    ///
    /// # Errors
    /// [`TechError`] naming the field (`protocol` or `params.<name>`).
    pub fn technology(&self) -> Result<LinkTech, TechError> {
        LinkTech::from_params(self.protocol_name(), &self.params)
    }

    /// Checks `[links.photon]`; the error names the field (`photon.e_d`, ...).
    fn check_photon(&self) -> Result<(), (String, String)> {
        let Some(p) = &self.photon else {
            return Ok(());
        };
        let frac = |v: Option<f64>, name: &str, lo: f64, hi: f64| match v {
            Some(x) if !(x.is_finite() && x > lo && x < hi) => Err((
                format!("photon.{name}"),
                format!("{x} must be in ({lo}, {hi})"),
            )),
            _ => Ok(()),
        };
        frac(p.e_d, "e_d", -1e-300, 0.5)?;
        frac(p.eta_bob, "eta_bob", 0.0, 1.0 + 1e-12)?;
        frac(p.p_key_basis, "p_key_basis", 0.0, 1.0)?;
        frac(p.block_bits, "block_bits", 9_999.0, 1e9 + 1.0)?;
        match p.reconciliation.as_deref() {
            None | Some("cascade" | "ldpc") => Ok(()),
            Some(o) => Err((
                "photon.reconciliation".into(),
                format!("{o:?} (expected \"cascade\" or \"ldpc\")"),
            )),
        }
    }
}

/// A whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Network name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Network-wide seed for simulated links.
    #[serde(default)]
    pub seed: u64,
    /// Unix time (seconds) of block 0 of every simulated link; both ends of a link produce block
    /// `n` at `epoch + n * block_interval`.
    #[serde(default)]
    pub epoch_unix: u64,
    /// Demo speed-up applied to every simulated link's key rate.
    #[serde(default = "default_multiplier")]
    pub rate_multiplier: f64,
    /// INSECURE, demos only: a simulated link without a provisioned per-link secret derives
    /// its key from `seed`, which every holder of this file knows. Off by default: nodes then
    /// refuse such links (`kagi up` provisions the secrets).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_demo_links: bool,
    /// Nodes.
    pub nodes: Vec<NodeSpec>,
    /// Links.
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}

/// Where each SAE of a topology is attached, as [`Topology::node_of_sae`] answers, built once by
/// [`Topology::sae_index`]. It describes the topology it was built from: keep it beside an
/// `Arc<Topology>` that no longer changes.
#[derive(Debug, Clone, Default)]
pub struct SaeIndex {
    /// SAE ID to position in `ids`. Fixed-key foldhash: a key manager looks SAEs up for every
    /// request, and SipHash was a twentieth of a simulated day's CPU. The keys come from the
    /// topology only (a lookup cannot add one), so a fixed key is no flooding risk.
    /// Inline names: a probe compares in place instead of following a pointer per key.
    at: std::collections::HashMap<Name, usize, foldhash::fast::FixedState>,
    /// Node IDs, in topology order.
    ids: Vec<NodeId>,
}

impl SaeIndex {
    /// The ID of the node `sae` is attached to, if the topology lists it.
    pub fn node_id(&self, sae: &str) -> Option<&NodeId> {
        // A short ID is looked up as a `Name`, so that the probe compares inline bytes.
        let at = if sae.len() <= crate::name::INLINE_LEN {
            self.at.get(&Name::from(sae))
        } else {
            self.at.get(sae)
        };
        at.map(|&i| &self.ids[i])
    }
}

fn default_name() -> String {
    "kagi".into()
}
fn default_multiplier() -> f64 {
    1.0
}

/// What is wrong with a topology.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TopologyError {
    /// The file is not valid TOML for a topology.
    #[error("topology is not valid: {0}")]
    Parse(String),
    /// Two nodes share an ID.
    #[error("node id {0:?} appears twice")]
    DuplicateNode(String),
    /// An SAE ID appears twice.
    #[error("SAE id {0:?} appears twice")]
    DuplicateSae(String),
    /// An SAE ID equals a node ID: certificates name either, so one could pose as the other.
    #[error("SAE id {0:?} is also a node id; SAE and node ids must differ")]
    SaeIsNode(String),
    /// A link names a node that is not in the topology.
    #[error("link {0}-{1} names unknown node {2:?}")]
    UnknownNode(String, String, String),
    /// A link joins a node to itself or repeats another link.
    #[error("link {0}-{1} is a loop or a duplicate")]
    BadLink(String, String),
    /// A link's technology field is not valid: names the link, the field and why.
    #[error("link {0}-{1}: field {2}: {3}")]
    BadField(String, String, String, String),
    /// A length or cost (the field named) is negative or not finite.
    #[error("link {0}-{1}: field {2}: must be finite and non-negative")]
    BadNumber(String, String, String),
    /// A node's coordinates are incomplete or out of range.
    #[error("node {0:?}: lat and lon must be given together, lat within -90..=90 and lon within -180..=180 degrees")]
    BadCoordinates(String),
    /// A network-wide number (the field named) is out of range: says why.
    #[error("field {0}: {1}")]
    BadSetting(String, String),
    /// An ID is empty or has characters outside `[A-Za-z0-9._-]`.
    #[error("id {0:?} must be non-empty and use only letters, digits, '.', '_' and '-'")]
    BadId(String),
}

/// Largest demo speed-up of simulated links a topology may ask for (the demos use 4; far more
/// would make every node generate link key faster than it can store it).
pub const MAX_RATE_MULTIPLIER: f64 = 1000.0;
/// Latest `epoch_unix` a topology may set (the end of year 9999): later would overflow the
/// clock arithmetic of the link sources.
pub const MAX_EPOCH_UNIX: u64 = 253_402_300_799;
/// Longest link a topology may describe, km (a free-space link to a geostationary satellite is
/// about 36,000 km; more is a typo).
pub const MAX_LINK_KM: f64 = 100_000.0;

/// `HOST:PORT` with a port other than 0.
fn valid_addr(a: &str) -> bool {
    a.rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_some_and(|p| p > 0)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

impl Topology {
    /// A chain of nodes `ids[0] — ids[1] — …` joined by links of `length_km`, each node with the
    /// SAEs `saes(id)` and no addresses (tests, benchmarks, small demos).
    pub fn line(
        name: &str,
        ids: &[&str],
        length_km: f64,
        saes: impl Fn(&str) -> Vec<String>,
    ) -> Self {
        Topology {
            name: name.to_string(),
            seed: 1,
            epoch_unix: 0,
            rate_multiplier: 1.0,
            insecure_demo_links: false,
            nodes: ids
                .iter()
                .map(|n| NodeSpec {
                    id: n.to_string(),
                    saes: saes(n),
                    peer_addr: None,
                    etsi014_addr: None,
                    ..Default::default()
                })
                .collect(),
            links: ids
                .windows(2)
                .map(|w| LinkSpec {
                    a: w[0].to_string(),
                    b: w[1].to_string(),
                    length_km,
                    cost: None,
                    seed: None,
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Parses and validates a topology from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        let t: Topology = toml::from_str(text).map_err(|e| {
            // Name the link and field where a `[[links]]` entry is at fault.
            crate::link_fields::first_bad_link(text)
                .unwrap_or_else(|| TopologyError::Parse(e.to_string()))
        })?;
        t.validate()?;
        Ok(t)
    }

    /// Serializes to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("topology serializes")
    }

    /// Checks IDs, links and numbers.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let m = self.rate_multiplier;
        if !(m.is_finite() && m > 0.0 && m <= MAX_RATE_MULTIPLIER) {
            return Err(TopologyError::BadSetting(
                "rate_multiplier".into(),
                format!("{m} must be above 0 and at most {MAX_RATE_MULTIPLIER}"),
            ));
        }
        if self.epoch_unix > MAX_EPOCH_UNIX {
            return Err(TopologyError::BadSetting(
                "epoch_unix".into(),
                format!(
                    "{} is after the year 9999 (at most {MAX_EPOCH_UNIX})",
                    self.epoch_unix
                ),
            ));
        }
        let mut ids = BTreeSet::new();
        let mut saes = BTreeSet::new();
        for n in &self.nodes {
            if !valid_id(&n.id) {
                return Err(TopologyError::BadId(n.id.clone()));
            }
            for (field, addr) in [
                ("peer_addr", &n.peer_addr),
                ("etsi014_addr", &n.etsi014_addr),
            ] {
                if let Some(a) = addr.as_deref().filter(|a| !valid_addr(a)) {
                    return Err(TopologyError::BadSetting(
                        format!("nodes.{}.{field}", n.id),
                        format!("{a:?} must be HOST:PORT with a port between 1 and 65535"),
                    ));
                }
            }
            if !ids.insert(n.id.as_str()) {
                return Err(TopologyError::DuplicateNode(n.id.clone()));
            }
            let coordinates_ok = match (n.lat, n.lon) {
                (None, None) => true,
                (Some(lat), Some(lon)) => {
                    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
                }
                _ => false,
            };
            if !coordinates_ok {
                return Err(TopologyError::BadCoordinates(n.id.clone()));
            }
            for s in &n.saes {
                if !valid_id(s) {
                    return Err(TopologyError::BadId(s.clone()));
                }
                if !saes.insert(s.as_str()) {
                    return Err(TopologyError::DuplicateSae(s.clone()));
                }
            }
        }
        if let Some(s) = saes.iter().find(|s| ids.contains(*s)) {
            return Err(TopologyError::SaeIsNode((*s).to_owned()));
        }
        let mut pairs = BTreeSet::new();
        for l in &self.links {
            for end in [&l.a, &l.b] {
                if !ids.contains(end.as_str()) {
                    return Err(TopologyError::UnknownNode(
                        l.a.clone(),
                        l.b.clone(),
                        end.clone(),
                    ));
                }
            }
            let key = if l.a < l.b {
                (&l.a, &l.b)
            } else {
                (&l.b, &l.a)
            };
            if l.a == l.b || !pairs.insert(key) {
                return Err(TopologyError::BadLink(l.a.clone(), l.b.clone()));
            }
            let field_err = |field: String, why: String| {
                TopologyError::BadField(l.a.clone(), l.b.clone(), field, why)
            };
            if let Err(why) = l.key_source() {
                return Err(field_err("source".into(), why));
            }
            if let Err((field, why)) = l.check_photon() {
                return Err(field_err(field, why));
            }
            if let Err(e) = l.technology() {
                return Err(TopologyError::BadField(
                    l.a.clone(),
                    l.b.clone(),
                    e.field,
                    e.message,
                ));
            }
            let bad = |field: &str, why: String| {
                TopologyError::BadField(l.a.clone(), l.b.clone(), field.into(), why)
            };
            let source = l.key_source().ok();
            if l.photon.is_some() && source != Some(KeySource::Photon) {
                return Err(bad(
                    "photon",
                    "[links.photon] needs source = \"photon\"".into(),
                ));
            }
            match (&l.device, source) {
                (Some(d), Some(KeySource::Device)) => {
                    if let Err((field, why)) = d.check() {
                        return Err(bad(&field, why));
                    }
                }
                (Some(_), _) => {
                    return Err(bad(
                        "device",
                        "[links.device] needs source = \"etsi014\"".into(),
                    ))
                }
                _ => {}
            }
            if l.key_source() == Ok(KeySource::Photon) && l.protocol_name() != "bb84-decoy" {
                return Err(TopologyError::BadField(
                    l.a.clone(),
                    l.b.clone(),
                    "protocol".into(),
                    format!(
                        "source = \"photon\" runs the decoy-BB84 photon simulator; protocol {:?} \
                         is only modelled at rate level (drop source or protocol)",
                        l.protocol_name()
                    ),
                ));
            }
            if !(l.length_km.is_finite() && l.length_km >= 0.0) {
                return Err(TopologyError::BadNumber(
                    l.a.clone(),
                    l.b.clone(),
                    "length_km".into(),
                ));
            }
            if l.length_km > MAX_LINK_KM {
                return Err(bad(
                    "length_km",
                    format!("{} km is longer than {MAX_LINK_KM} km", l.length_km),
                ));
            }
            if !l.cost.is_none_or(|c| c.is_finite() && c >= 0.0) {
                return Err(TopologyError::BadNumber(
                    l.a.clone(),
                    l.b.clone(),
                    "cost".into(),
                ));
            }
        }
        Ok(())
    }

    /// The node with this ID.
    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node an SAE is attached to.
    pub fn node_of_sae(&self, sae: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.saes.iter().any(|s| s == sae))
    }

    /// An index of where each SAE is attached, for callers that look SAEs up often in a
    /// topology that no longer changes (a lookup in it is a hash probe, where
    /// [`Topology::node_of_sae`] scans every node's SAE list).
    pub fn sae_index(&self) -> SaeIndex {
        let mut at = std::collections::HashMap::with_hasher(foldhash::fast::FixedState::default());
        for (i, n) in self.nodes.iter().enumerate() {
            for s in &n.saes {
                // First node wins, as `node_of_sae` finds it (`validate` refuses an SAE twice).
                at.entry(Name::from(s)).or_insert(i);
            }
        }
        SaeIndex {
            at,
            ids: self.nodes.iter().map(|n| NodeId::from(&n.id)).collect(),
        }
    }

    /// Map from SAE ID to node ID.
    pub fn sae_map(&self) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .flat_map(|n| n.saes.iter().map(move |s| (s.clone(), n.id.clone())))
            .collect()
    }

    /// The link between two nodes, either way round.
    pub fn link(&self, x: &str, y: &str) -> Option<&LinkSpec> {
        self.links
            .iter()
            .find(|l| (l.a == x && l.b == y) || (l.a == y && l.b == x))
    }

    /// Neighbours of a node with their links.
    pub fn neighbours<'a>(
        &'a self,
        id: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a LinkSpec)> + 'a {
        self.links.iter().filter_map(move |l| {
            if l.a == id {
                Some((l.b.as_str(), l))
            } else if l.b == id {
                Some((l.a.as_str(), l))
            } else {
                None
            }
        })
    }

    /// How key appears on a rate-level link (after the network's `rate_multiplier`), cut into
    /// numbered blocks of at most `max_bytes`, at most `max_interval_s` apart for constant
    /// rates. Both ends of the link compute the same schedule.
    ///
    /// # Errors
    /// The link's technology error (validated topologies have none).
    pub fn link_schedule(
        &self,
        l: &LinkSpec,
        max_bytes: usize,
        max_interval_s: f64,
    ) -> Result<BlockSchedule, TechError> {
        let supply: KeySupply = l.technology()?.supply(
            l.length_km,
            self.rate_multiplier,
            self.link_seed(l),
            self.epoch_unix as f64,
        );
        Ok(BlockSchedule::new(supply, max_bytes, max_interval_s))
    }

    /// Long-run mean secret key rate of a link, bit/s (0 for an invalid technology), before
    /// the demo `rate_multiplier`.
    pub fn link_mean_rate_bps(&self, l: &LinkSpec) -> f64 {
        l.technology().map_or(0.0, |t| t.mean_rate_bps(l.length_km))
    }

    /// The seed of a link's simulated quantum channel.
    pub fn link_seed(&self, l: &LinkSpec) -> u64 {
        if let Some(s) = l.seed {
            return s;
        }
        let (x, y) = if l.a < l.b {
            (&l.a, &l.b)
        } else {
            (&l.b, &l.a)
        };
        // FNV-1a over the network seed and the ordered ends: stable across processes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed;
        for b in x.bytes().chain([0u8]).chain(y.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index answers as the scan does: every SAE, an unknown name, and an SAE listed by two
    /// nodes (the first wins).
    #[test]
    fn sae_index_answers_as_node_of_sae() {
        let mut t = crate::builtin::tokyo();
        let (first, second) = (t.nodes[0].saes[0].clone(), t.nodes[2].saes[0].clone());
        t.nodes[3].saes.push(first);
        t.nodes[1].saes.push(second);
        // Longer than an inline name: kept and looked up on the heap.
        t.nodes[4]
            .saes
            .push("an-sae-whose-id-is-longer-than-24-bytes".into());
        let idx = t.sae_index();
        let mut checked = 0;
        for n in &t.nodes {
            for s in &n.saes {
                let scan = t.node_of_sae(s).map(|n| n.id.as_str());
                assert_eq!(idx.node_id(s).map(NodeId::as_str), scan, "{s}");
                checked += 1;
            }
        }
        assert!(checked > t.nodes.len());
        assert_eq!(
            idx.node_id(&t.nodes[0].saes[0]).map(NodeId::as_str),
            Some(t.nodes[0].id.as_str())
        );
        assert_eq!(
            idx.node_id(&t.nodes[2].saes[0]).map(NodeId::as_str),
            Some(t.nodes[1].id.as_str())
        );
        assert_eq!(idx.node_id("no-such-sae"), None);
        assert_eq!(
            idx.node_id("an-sae-whose-id-is-longer-than-24-bytes")
                .map(NodeId::as_str),
            Some(t.nodes[4].id.as_str())
        );
        assert_eq!(idx.node_id("an-sae-whose-id-is-longer-than-24-bytez"), None);
    }

    const T: &str = r#"
        [[nodes]]
        id = "a"
        saes = ["sa"]
        [[nodes]]
        id = "b"
        saes = ["sb"]
        [[links]]
        a = "a"
        b = "b"
        length_km = 10.0
    "#;

    #[test]
    fn parses_and_finds() {
        let t = Topology::from_toml(T).unwrap();
        assert_eq!(t.node_of_sae("sb").unwrap().id, "b");
        assert!(t.link("b", "a").is_some());
        assert_eq!(t.link_seed(&t.links[0]), t.link_seed(&t.links[0]));
        let back = Topology::from_toml(&t.to_toml()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn coordinates_come_in_pairs_and_in_range() {
        let at = |lat: &str, lon: &str| {
            let mut extra = String::new();
            if !lat.is_empty() {
                extra += &format!("lat = {lat}\n");
            }
            if !lon.is_empty() {
                extra += &format!("lon = {lon}\n");
            }
            T.replacen(r#"saes = ["sa"]"#, &format!("saes = [\"sa\"]\n{extra}"), 1)
        };
        let t = Topology::from_toml(&at("35.7", "139.5")).unwrap();
        assert_eq!((t.nodes[0].lat, t.nodes[0].lon), (Some(35.7), Some(139.5)));
        assert_eq!(Topology::from_toml(&t.to_toml()).unwrap(), t);
        for (lat, lon) in [
            ("35.7", ""),
            ("", "139.5"),
            ("91", "0"),
            ("0", "-181"),
            ("nan", "0"),
        ] {
            let err = Topology::from_toml(&at(lat, lon)).unwrap_err().to_string();
            assert!(
                err.contains("node \"a\": lat and lon must be given together"),
                "{lat} {lon}: {err}"
            );
        }
    }

    #[test]
    fn an_sae_may_not_share_a_node_id() {
        let clash = T.replace(r#"saes = ["sb"]"#, r#"saes = ["a"]"#);
        assert_ne!(clash, T);
        let err = Topology::from_toml(&clash).unwrap_err().to_string();
        assert!(err.contains("SAE id \"a\" is also a node id"), "{err}");
    }

    #[test]
    fn key_source_and_photon_settings_are_checked() {
        let photon =
            format!("{T}source = \"photon\"\n[links.photon]\nblock_bits = 2e6\ne_d = 0.01\n");
        let t = Topology::from_toml(&photon).unwrap();
        assert_eq!(t.links[0].key_source(), Ok(KeySource::Photon));
        assert_eq!(t.links[0].photon.as_ref().unwrap().block_bits, Some(2e6));
        assert_eq!(
            Topology::from_toml(T).unwrap().links[0].key_source(),
            Ok(KeySource::Rate)
        );
        let bad = format!("{T}source = \"laser\"\n");
        let err = Topology::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown source \"laser\""), "{err}");
        let bad_ed = format!("{T}source = \"photon\"\n[links.photon]\ne_d = 0.7\n");
        let err = Topology::from_toml(&bad_ed).unwrap_err().to_string();
        assert!(err.contains("photon.e_d"), "{err}");
        let bad_rec =
            format!("{T}source = \"photon\"\n[links.photon]\nreconciliation = \"magic\"\n");
        assert!(Topology::from_toml(&bad_rec).is_err());
    }

    #[test]
    fn link_protocols_and_parameters() {
        let with = |extra: &str| format!("{T}{extra}");
        let t = Topology::from_toml(&with(
            "protocol = \"bb84-finite\"\n[links.params]\nn-x = 1e8\nmu = 0.5\nnu = 0.1\n",
        ))
        .unwrap();
        assert_eq!(t.links[0].technology().unwrap().name(), "bb84-finite");
        assert!(t.link_mean_rate_bps(&t.links[0]) > 0.0);
        // Round trip keeps protocol and parameters.
        assert_eq!(Topology::from_toml(&t.to_toml()).unwrap(), t);
        for (proto, params) in [
            ("cv-gg02", "detection = \"heterodyne\"\nva = 5\n"),
            ("tf-sns", "alpha = 0.16\n"),
            ("repeater", "modes = 10\ncoherence_time = 0.5\n"),
            ("satellite", "lat-a = 35.7\nlon-a = 139.5\ncloud-a = 0.3\n"),
            ("bb84-decoy", "mu = 0.5\n"),
        ] {
            let t = Topology::from_toml(&with(&format!(
                "protocol = \"{proto}\"\n[links.params]\n{params}"
            )))
            .unwrap_or_else(|e| panic!("{proto}: {e}"));
            assert_eq!(t.links[0].protocol_name(), proto);
        }
        // Every bad field is named with its link.
        for (extra, field) in [
            ("protocol = \"bb85\"\n", "field protocol"),
            ("protocol = \"cv-gg02\"\n[links.params]\nxi = -1\n", "field params.xi"),
            ("protocol = \"cv-gg02\"\n[links.params]\nn-x = 1e6\n", "field params.n-x"),
            ("protocol = \"bb84-finite\"\n[links.params]\nn-x = 0\n", "field params.n-x"),
            ("protocol = \"bb84-finite\"\n[links.params]\np-mu1 = 1.5\n", "field params.p-mu1"),
            ("protocol = \"tf-sns\"\n[links.params]\nmu = \"big\"\n", "field params.mu"),
            ("protocol = \"satellite\"\n[links.params]\nlat-a = 35\n", "field params.lon-a"),
            ("protocol = \"satellite\"\n[links.params]\nlat-a = 35\nlon-a = 1\ninclination = 190\n", "field params.inclination"),
            ("protocol = \"repeater\"\n[links.params]\nscheme = \"magic\"\n", "field params.scheme"),
            ("protocol = \"tf-sns\"\nsource = \"photon\"\n", "field protocol"),
        ] {
            let err = Topology::from_toml(&with(extra)).unwrap_err().to_string();
            assert!(
                err.starts_with("link a-b: ") && err.contains(field),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn every_bad_link_field_is_named_with_its_link() {
        let with = |extra: &str| format!("{T}{extra}");
        for (extra, field) in [
            ("cost = -1.0\n", "field cost"),
            ("cost = nan\n", "field cost"),
            ("source = \"laser\"\n", "field source"),
            ("[links.photon]\ne_d = 0.01\n", "field photon"),
            ("source = \"photon\"\n[links.photon]\ne_d = 0.7\n", "field photon.e_d"),
            ("source = \"photon\"\n[links.photon]\neta_bob = 0\n", "field photon.eta_bob"),
            ("source = \"photon\"\n[links.photon]\np_key_basis = 1\n", "field photon.p_key_basis"),
            ("source = \"photon\"\n[links.photon]\nblock_bits = 10\n", "field photon.block_bits"),
            ("source = \"photon\"\n[links.photon]\nreconciliation = \"x\"\n", "field photon.reconciliation"),
            ("[links.device]\nkey_bits = 256\n", "field device"),
            ("source = \"etsi014\"\n[links.device]\nurl_a = \"http://h:1\"\nurl_b = \"https://h:2\"\n", "field device.url_a"),
            ("source = \"etsi014\"\n[links.device]\nurl_a = \"https://h:1\"\nurl_b = \"https://h\"\n", "field device.url_b"),
            ("source = \"etsi014\"\n[links.device]\nurl_a = \"https://h:1\"\n", "field device.url_b"),
            ("source = \"etsi014\"\n[links.device]\nca = \"\"\n", "field device.ca"),
            ("source = \"etsi014\"\n[links.device]\nkey_bits = 100\n", "field device.key_bits"),
            ("source = \"etsi014\"\n[links.device]\nkeys_per_call = 1\n", "field device.keys_per_call"),
            ("protocol = \"bb85\"\n", "field protocol"),
            ("[links.params]\nmu = -1\n", "field params.mu"),
        ] {
            let err = Topology::from_toml(&with(extra)).unwrap_err().to_string();
            assert!(
                err.starts_with("link a-b: ") && err.contains(field),
                "{extra}: {err}"
            );
        }
        let neg = T.replace("10.0", "-1.0");
        let err = Topology::from_toml(&neg).unwrap_err().to_string();
        assert!(err.starts_with("link a-b: field length_km"), "{err}");
        let huge = T.replace("10.0", "1e12");
        let err = Topology::from_toml(&huge).unwrap_err().to_string();
        assert!(
            err.starts_with("link a-b: field length_km: 1000000000000 km is longer"),
            "{err}"
        );
        // The network-wide speed-up: negative, zero, not a number or huge is refused by name.
        for m in ["-1.0", "0.0", "nan", "inf", "1e300", "1000.5"] {
            let text = format!("rate_multiplier = {m}\n{T}");
            let err = Topology::from_toml(&text).unwrap_err().to_string();
            assert!(err.starts_with("field rate_multiplier: "), "{m}: {err}");
        }
        let text = format!("rate_multiplier = 1000.0\n{T}");
        assert_eq!(Topology::from_toml(&text).unwrap().rate_multiplier, 1000.0);
        // A device link without URLs is valid (kagi up fills them in); with both, too.
        let ok = with("source = \"etsi014\"\n[links.device]\nurl_a = \"https://127.0.0.1:1\"\nurl_b = \"https://127.0.0.1:2\"\n");
        let t = Topology::from_toml(&ok).unwrap();
        assert_eq!(t.links[0].key_source(), Ok(KeySource::Device));
        assert_eq!(Topology::from_toml(&t.to_toml()).unwrap(), t);
        Topology::from_toml(&with("source = \"etsi014\"\n")).unwrap();
    }

    #[test]
    fn line_is_a_valid_chain() {
        let t = Topology::line("l", &["a", "b", "c"], 12.5, |n| vec![format!("sae-{n}")]);
        t.validate().unwrap();
        assert_eq!(t.links.len(), 2);
        assert!(t.link("b", "c").is_some() && t.link("a", "c").is_none());
        assert_eq!(t.node_of_sae("sae-c").unwrap().id, "c");
    }

    #[test]
    fn rejects_bad_topologies() {
        let dup = T.replace("id = \"b\"", "id = \"a\"");
        assert!(matches!(
            Topology::from_toml(&dup),
            Err(TopologyError::DuplicateNode(_))
        ));
        let unknown = T.replace("b = \"b\"", "b = \"zz\"");
        assert!(matches!(
            Topology::from_toml(&unknown),
            Err(TopologyError::UnknownNode(..))
        ));
        let neg = T.replace("10.0", "-1.0");
        assert!(matches!(
            Topology::from_toml(&neg),
            Err(TopologyError::BadNumber(..))
        ));
        let badid = T.replace("\"sa\"", "\"s a/\"");
        assert!(matches!(
            Topology::from_toml(&badid),
            Err(TopologyError::BadId(_))
        ));
        assert!(matches!(
            Topology::from_toml("nodes = 3"),
            Err(TopologyError::Parse(_))
        ));
    }

    /// Every number of a topology that can be negative, zero, NaN, infinite or absurdly large
    /// is a clear error naming the field, never a panic or a silent wrap.
    #[test]
    fn bad_numbers_name_their_field() {
        let node_a = "id = \"a\"\n        saes = [\"sa\"]";
        let cases: &[(&str, &str, &str)] = &[
            ("rate_multiplier = nan\n", "", "rate_multiplier"),
            ("rate_multiplier = inf\n", "", "rate_multiplier"),
            ("rate_multiplier = 0.0\n", "", "rate_multiplier"),
            ("rate_multiplier = -2.0\n", "", "rate_multiplier"),
            ("rate_multiplier = 1e9\n", "", "rate_multiplier"),
            ("epoch_unix = 18446744073709551615\n", "", "epoch_unix"),
            ("epoch_unix = -1\n", "", "epoch_unix"),
            ("seed = -1\n", "", "seed"),
            ("", "peer_addr = \"127.0.0.1:0\"", "nodes.a.peer_addr"),
            ("", "peer_addr = \"127.0.0.1:70000\"", "nodes.a.peer_addr"),
            ("", "etsi014_addr = \"127.0.0.1\"", "nodes.a.etsi014_addr"),
            ("", "etsi014_addr = \":8000\"", "nodes.a.etsi014_addr"),
            ("", "lat = 91.0\n        lon = 0.0", "lat"),
            ("", "lat = nan\n        lon = 0.0", "lat"),
        ];
        for (top, node, field) in cases {
            let text = format!(
                "{top}{}",
                T.replacen(node_a, &format!("{node_a}\n        {node}"), 1)
            );
            let err = Topology::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{top}{node}: {err}");
        }
        for (value, field) in [
            ("length_km = nan", "length_km"),
            ("length_km = inf", "length_km"),
            ("length_km = -1.0", "length_km"),
            ("length_km = 1e12", "length_km"),
            ("length_km = 10.0\n        cost = -1.0", "cost"),
            ("length_km = 10.0\n        cost = nan", "cost"),
            ("length_km = 10.0\n        seed = -5", "seed"),
        ] {
            let text = T.replace("length_km = 10.0", value);
            let err = Topology::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{value}: {err}");
        }
    }
}
