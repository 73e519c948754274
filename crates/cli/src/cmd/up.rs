//! `kagi up`: a whole local kagi network in one command.
//!
//! In the data directory (`./kagi-data` by default) it creates or reuses:
//!
//! ```text
//! pki/ca.pem, pki/nodes/*.pem, pki/saes/*.pem   local CA, node and SAE certificates
//! pki/nodes/<id>-advert-key.pem, pki/advert-keys.toml  each node's link-state advert signing
//!                                                key (ML-DSA-65) and every node's public key
//! topology.toml                                  the topology every node reads, with addresses
//! nodes/<id>/node.toml, node.log, node.pid      one node's config, log and process id
//! nodes/<id>/<id>.db                             its SQLite store (kept across runs)
//! network.json                                   written once every node answers
//! vault/<SAE>.json, <SAE>.log, <SAE>.pid          with --vault: one storage site's config,
//!                                                log and process id
//! vault/sites/<SAE>/                              its shares (network.json `vault_sites`)
//! pki/vault/<SAE>.pem                             its TLS server certificate
//! ```
//!
//! With `--vault` it also starts one `kagi vault site` process beside every node but the first
//! (as the node's second SAE), waits until each listens, and lists them in `network.json` as
//! `vault_sites`. A site that exits (even by `kill -9`) is restarted on the same port and
//! directory; sites stop before the nodes, and exit on their own if `kagi up` disappears.
//!
//! Then it starts one `kagi node --config nodes/<id>/node.toml` child process per node, waits
//! until each node's ETSI 014 endpoint answers, writes `network.json`, prints the endpoints and
//! a copy-paste curl pair, and runs until Ctrl-C or SIGTERM, when it stops every node with
//! SIGTERM (SIGKILL after a grace period). A re-run on the same directory keeps certificates,
//! ports (when still free), the link epoch and the stored keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use kagi_control::{Routes, Topology};
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::config::{Etsi014Config, NodeConfig, PoolConfig, TlsConfig};
use kagi_node::pki::Pki;
use serde::{Deserialize, Serialize};

/// Arguments of `kagi up`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory for certificates, configs, node databases, logs and network.json.
    #[arg(long, default_value = "./kagi-data")]
    pub data_dir: PathBuf,
    /// Topology file (TOML); default: the built-in Tokyo metropolitan network.
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Speed-up of every simulated link's key rate (demo); default: the topology's value, or
    /// the value of the previous run on this directory.
    #[arg(long)]
    pub rate_multiplier: Option<f64>,
    /// First port to use: node i gets ETSI 014 on BASE+2i and its peer port on BASE+2i+1.
    /// Default: ports of the previous run if free, otherwise any free ports.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Seconds to wait for every node to answer.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// Stop nodes of this directory left running (e.g. after `kagi up` itself was killed),
    /// then exit.
    #[arg(long)]
    pub stop: bool,
    /// Also start a storage site (`kagi vault site`) beside every node but the first, as the
    /// node's second SAE (its first if it has one): see `kagi vault --help`.
    #[arg(long)]
    pub vault: bool,
    /// Also start an AWS KMS external key store proxy (`kagi xks serve`) over the vault sites
    /// (implies --vault), create one key and list it in network.json as `xks`.
    #[arg(long)]
    pub xks: bool,
    /// Which peers every node keeps connections to (`[peers] connect` in each node.toml):
    /// `neighbours` (always to the nodes it shares a link with, to others while needed) or
    /// `all`. Default: what each node.toml of an earlier run says, else the nodes' default.
    #[arg(long, value_enum)]
    pub peers: Option<PeersArg>,
}

/// `kagi up --peers`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeersArg {
    /// `connect = "neighbours"`.
    Neighbours,
    /// `connect = "all"`.
    All,
}

impl PeersArg {
    /// The node config's value.
    fn connect(self) -> kagi_node::config::PeerConnect {
        match self {
            PeersArg::Neighbours => kagi_node::config::PeerConnect::Neighbours,
            PeersArg::All => kagi_node::config::PeerConnect::All,
        }
    }
}

/// `DIR/network.json`: what scripts and tests rely on. Paths are relative to DIR.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkFile {
    /// CA certificate (PEM).
    pub ca: String,
    /// Nodes with their ETSI 014 endpoint and SAE credentials.
    pub nodes: Vec<NetworkNode>,
    /// Fibre links.
    pub links: Vec<NetworkLink>,
    /// Storage sites (`kagi up --vault`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vault_sites: Vec<VaultSite>,
    /// The XKS proxy (`kagi up --xks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xks: Option<super::xks::XksInfo>,
    /// The live dashboard (`http://127.0.0.1:PORT/?token=...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// Management client certificates, one per role (operator, auditor, observer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operators: Vec<super::up_mgmt::NetworkOperator>,
}

/// A storage site in `network.json` (`kagi up --vault`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaultSite {
    /// The site's SAE ID.
    pub id: String,
    /// The trusted node it sits beside.
    pub node: String,
    /// Its share store, relative to DIR: deleting it destroys the site's data.
    pub data_dir: String,
    /// Where it listens (`https://127.0.0.1:PORT`, mutual TLS).
    pub url: String,
}

/// A node in `network.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkNode {
    /// Node ID.
    pub id: String,
    /// `https://127.0.0.1:PORT`.
    pub etsi014_url: String,
    /// The node's management listener, `https://127.0.0.1:PORT` (mutual TLS, role certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
    /// SAEs attached to the node.
    pub saes: Vec<NetworkSae>,
    /// Cisco SKIP endpoint (TLS 1.3, SAE client certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_url: Option<String>,
    /// ETSI GS QKD 004 key streams (`POST /etsi004/v2/...`, SAE client certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etsi004_url: Option<String>,
}

/// An SAE in `network.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkSae {
    /// SAE ID.
    pub id: String,
    /// Client certificate (PEM), relative to DIR.
    pub cert: String,
    /// Private key (PEM), relative to DIR.
    pub key: String,
}

/// A link in `network.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkLink {
    /// One end.
    pub a: String,
    /// Other end.
    pub b: String,
    /// Fibre length.
    pub length_km: f64,
}

impl NetworkFile {
    /// Reads `DIR/network.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let p = dir.join("network.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (is `kagi up --data-dir {}` running?)",
                p.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))
    }

    /// The node an SAE is attached to, and the SAE's entry.
    pub fn find_sae(&self, sae: &str) -> Option<(&NetworkNode, &NetworkSae)> {
        self.nodes
            .iter()
            .find_map(|n| n.saes.iter().find(|s| s.id == sae).map(|s| (n, s)))
    }
}

pub(crate) fn rel(p: &Path, dir: &Path) -> String {
    p.strip_prefix(dir)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

pub(crate) fn port_free(port: u16) -> bool {
    kagi_node::loopback::port_free(port)
}

pub(crate) fn free_port(taken: &[u16]) -> anyhow::Result<u16> {
    Ok(kagi_node::loopback::free_port_except(taken)?)
}

fn addr_port(addr: &Option<String>) -> Option<u16> {
    addr.as_ref()?.rsplit_once(':')?.1.parse().ok()
}

/// Builds the topology for this run: addresses and epoch from the previous run where possible.
fn plan_topology(args: &Args, dir: &Path) -> anyhow::Result<Topology> {
    let mut topo = match &args.topology {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            Topology::from_toml(&text).with_context(|| format!("topology {}", p.display()))?
        }
        None => kagi_control::builtin::tokyo(),
    };
    let prev_path = dir.join("topology.toml");
    let prev = match std::fs::read_to_string(&prev_path) {
        Ok(text) => {
            Some(Topology::from_toml(&text).with_context(|| format!("{}", prev_path.display()))?)
        }
        Err(_) => None,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    topo.epoch_unix = match &prev {
        Some(p) if p.epoch_unix != 0 => p.epoch_unix,
        _ if topo.epoch_unix != 0 => topo.epoch_unix,
        _ => now,
    };
    if let Some(m) = args.rate_multiplier {
        let max = kagi_control::topology::MAX_RATE_MULTIPLIER;
        if !(m.is_finite() && m > 0.0 && m <= max) {
            bail!("--rate-multiplier must be above 0 and at most {max} (got {m})");
        }
        topo.rate_multiplier = m;
    } else if let Some(p) = &prev {
        if args.topology.is_none() {
            topo.rate_multiplier = p.rate_multiplier;
        }
    }
    let mut taken: Vec<u16> = Vec::new();
    for (i, node) in topo.nodes.iter_mut().enumerate() {
        let before = prev.as_ref().and_then(|p| p.node(&node.id));
        for (which, slot) in [(0u16, &mut node.etsi014_addr), (1u16, &mut node.peer_addr)] {
            let port = if let Some(base) = args.base_port {
                let off = u16::try_from(2 * i).ok().and_then(|o| o.checked_add(which));
                let p = off
                    .and_then(|o| base.checked_add(o))
                    .context("--base-port too high for this many nodes")?;
                Some(p)
            } else if let Some(p) = addr_port(slot) {
                Some(p) // the user's topology names it
            } else {
                let old = before.and_then(|b| {
                    addr_port(if which == 0 {
                        &b.etsi014_addr
                    } else {
                        &b.peer_addr
                    })
                });
                old.filter(|p| !taken.contains(p) && port_free(*p))
            };
            let port = match port {
                Some(p) => p,
                None => free_port(&taken)?,
            };
            taken.push(port);
            *slot = Some(format!("127.0.0.1:{port}"));
        }
    }
    assign_device_ports(&mut topo, prev.as_ref(), &mut taken)?;
    topo.validate()?;
    Ok(topo)
}

/// Gives every `source = "etsi014"` link without device URLs a simulated device pair on two
/// fresh loopback ports (the previous run's where still free); `kagi up` starts it.
fn assign_device_ports(
    topo: &mut Topology,
    prev: Option<&Topology>,
    taken: &mut Vec<u16>,
) -> anyhow::Result<()> {
    for l in &mut topo.links {
        if l.key_source().ok() != Some(kagi_control::KeySource::Device) {
            continue;
        }
        let d = l.device.get_or_insert_with(Default::default);
        if d.url_a.is_some() || d.url_b.is_some() {
            continue; // the user's own devices
        }
        let before = prev
            .and_then(|p| p.link(&l.a, &l.b))
            .filter(|pl| pl.a == l.a)
            .and_then(|pl| pl.device.clone());
        let mut urls = Vec::new();
        for old in [
            before.as_ref().and_then(|b| b.url_a.clone()),
            before.as_ref().and_then(|b| b.url_b.clone()),
        ] {
            let old = old
                .and_then(|u| {
                    u.rsplit_once(':')
                        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
                })
                .filter(|p: &u16| !taken.contains(p) && port_free(*p));
            let port = match old {
                Some(p) => p,
                None => free_port(taken)?,
            };
            taken.push(port);
            urls.push(format!("https://127.0.0.1:{port}"));
        }
        d.url_b = urls.pop();
        d.url_a = urls.pop();
        d.simulated = true;
    }
    Ok(())
}

/// `data_dir` as written in a node config (loading resolves it against the file's directory,
/// and a relative path must stay relative).
fn written_data_dir(cfg_path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(cfg_path).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    v.get("data_dir")?.as_str().map(PathBuf::from)
}

/// What `prepare` produced for each node.
struct Prepared {
    topo: Topology,
    configs: BTreeMap<String, PathBuf>,
    network: NetworkFile,
    /// Every port handed to a node listener (ETSI 014, peer, management, SKIP, ETSI 004).
    taken: Vec<u16>,
}

/// Certificates, topology file and node configs in `dir`.
fn prepare(args: &Args, dir: &Path) -> anyhow::Result<Prepared> {
    let topo = plan_topology(args, dir)?;
    let pki = Pki::open_or_create(&dir.join("pki"))?;
    let mut configs = BTreeMap::new();
    let mut nodes = Vec::new();
    let mut taken: Vec<u16> = topo
        .nodes
        .iter()
        .flat_map(|n| [addr_port(&n.etsi014_addr), addr_port(&n.peer_addr)])
        .flatten()
        .collect();
    // Simulated devices' ports too: nothing listens there until the devices start.
    for d in topo.links.iter().filter_map(|l| l.device.as_ref()) {
        for u in [&d.url_a, &d.url_b].into_iter().flatten() {
            if let Some(p) = u
                .rsplit_once(':')
                .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
            {
                taken.push(p);
            }
        }
    }
    // Every node signs its link-state adverts; every node verifies them with this file.
    let advert_keys = pki.ensure_advert_keys(topo.nodes.iter().map(|n| n.id.as_str()))?;
    for (i, n) in topo.nodes.iter().enumerate() {
        let certs = pki.ensure_node(&n.id)?;
        let node_dir = dir.join("nodes").join(&n.id);
        std::fs::create_dir_all(&node_dir)?;
        let old = NodeConfig::load(&node_dir.join("node.toml")).ok();
        let mgmt_addr = super::up_mgmt::management_addr(
            old.as_ref(),
            i,
            topo.nodes.len(),
            args.base_port,
            &mut taken,
        )?;
        let up = Path::new("../..");
        let cfg = NodeConfig {
            node_id: n.id.clone(),
            topology: up.join("topology.toml"),
            data_dir: PathBuf::from("."),
            tls: TlsConfig {
                ca: up.join(rel(&pki.ca_cert_path(), dir)),
                cert: up.join(rel(&certs.cert, dir)),
                key: up.join(rel(&certs.key, dir)),
            },
            etsi014: Etsi014Config::default(),
            pool: PoolConfig::default(),
            routing: Default::default(),
            peers: Default::default(),
            link_state: kagi_node::config::LinkStateConfig {
                signing_key: Some(up.join(rel(&pki.advert_key_path(&n.id), dir))),
                public_keys: Some(up.join(rel(&advert_keys, dir))),
            },
            store: Default::default(),
            delivery: Default::default(),
            skip_addr: None,
            etsi004: None,
            management: Some(kagi_node::config::ManagementConfig {
                listen: mgmt_addr.clone(),
            }),
            tamper: Default::default(),
            quotas: Default::default(),
            source: None,
        };
        let cfg_path = node_dir.join("node.toml");
        // Keep a config the user edited (limits, pool policy, where the store lives), refreshing
        // only what kagi up owns.
        let mut cfg = match old {
            Some(old) => NodeConfig {
                data_dir: written_data_dir(&cfg_path).unwrap_or(cfg.data_dir),
                etsi014: old.etsi014,
                pool: old.pool,
                routing: old.routing,
                peers: old.peers,
                store: old.store,
                delivery: old.delivery,
                ..cfg
            },
            None => cfg,
        };
        if let Some(p) = args.peers {
            cfg.peers.connect = p.connect();
        }
        let cfg = super::skip_ports::with_skip_port(cfg, &cfg_path, &mut taken);
        let cfg = super::skip_ports::with_etsi004_port(cfg, &cfg_path, &mut taken);
        write_atomic(&cfg_path, &toml::to_string_pretty(&cfg)?)?;
        configs.insert(n.id.clone(), cfg_path);
        let mut saes = Vec::new();
        for s in &n.saes {
            let p = pki.ensure_sae(s)?;
            saes.push(NetworkSae {
                id: s.clone(),
                cert: rel(&p.cert, dir),
                key: rel(&p.key, dir),
            });
        }
        let port = addr_port(&n.etsi014_addr).context("etsi014 address")?;
        nodes.push(NetworkNode {
            id: n.id.clone(),
            etsi014_url: format!("https://127.0.0.1:{port}"),
            management_url: Some(format!("https://{mgmt_addr}")),
            saes,
            skip_url: cfg.skip_addr.as_ref().map(|a| format!("https://{a}")),
            etsi004_url: cfg
                .etsi004
                .as_ref()
                .map(|c| format!("https://{}", c.listen)),
        });
    }
    write_atomic(&dir.join("topology.toml"), &topo.to_toml())?;
    // Every link's secret goes, sealed, into its two nodes' stores only (never the topology).
    let loaded = configs
        .values()
        .map(|p| NodeConfig::load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fresh = kagi_node::seal::links::provision(&topo, &loaded)
        .context("provisioning the per-link secrets")?;
    if fresh > 0 {
        println!("kagi up: sealed a new secret for {fresh} links into their two nodes' stores");
    }
    let network = NetworkFile {
        ca: rel(&pki.ca_cert_path(), dir),
        nodes,
        links: topo
            .links
            .iter()
            .map(|l| NetworkLink {
                a: l.a.clone(),
                b: l.b.clone(),
                length_km: l.length_km,
            })
            .collect(),
        vault_sites: Vec::new(),
        xks: None,
        dashboard_url: None,
        operators: super::up_mgmt::operators(&pki, dir)?,
    };
    Ok(Prepared {
        topo,
        configs,
        network,
        taken,
    })
}

/// A `kagi node` from an earlier run that is still alive (its pid file names a live process
/// whose command line mentions the config).
fn stale_node(pid_file: &Path, cfg: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let name = cfg.file_name()?.to_string_lossy().into_owned();
    let parent = cfg.parent()?.file_name()?.to_string_lossy().into_owned();
    (cmdline.contains(&name) && cmdline.contains(&parent) && cmdline.contains("node"))
        .then_some(pid)
}

/// Refuses to touch a directory whose network is still running (another `kagi up`, or nodes
/// left behind by one that was killed).
fn check_no_live_nodes(dir: &Path) -> anyhow::Result<()> {
    let live = live_nodes(dir);
    if live.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = live
        .iter()
        .map(|(id, pid, _)| format!("{id} (pid {pid})"))
        .collect();
    bail!(
        "nodes of a network in {d} are still running: {}; stop that `kagi up` (Ctrl-C), or run \
         `kagi up --stop --data-dir {d}`",
        names.join(", "),
        d = dir.display(),
    )
}

/// Nodes of `dir` that are alive: (node ID, pid, pid file).
fn live_nodes(dir: &Path) -> Vec<(String, u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir.join("nodes")) else {
        return Vec::new();
    };
    let mut live = Vec::new();
    for e in entries.flatten() {
        let pid_file = e.path().join("node.pid");
        if let Some(pid) = stale_node(&pid_file, &e.path().join("node.toml")) {
            live.push((e.file_name().to_string_lossy().into_owned(), pid, pid_file));
        }
    }
    live.sort();
    live
}

/// Whether a process exists and has not exited (a zombie that nobody reaped has exited).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// `kagi up --stop`: SIGTERM to every live node of `dir`, SIGKILL after 10 s.
fn stop_left_over(dir: &Path) -> anyhow::Result<()> {
    let live = live_nodes(dir);
    if live.is_empty() {
        println!("kagi up: no running nodes in {}", dir.display());
        return Ok(());
    }
    for (id, pid, _) in &live {
        println!("kagi up: stopping node {id} (pid {pid})");
        signal(*pid, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, pid, pid_file) in &live {
        while running(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if running(*pid) {
            eprintln!("kagi up: node {id} did not stop in time; killing it");
            signal(*pid, "KILL");
        }
        let _ = std::fs::remove_file(pid_file);
    }
    let _ = std::fs::remove_file(dir.join("network.json"));
    Ok(())
}

struct Child {
    id: String,
    proc: tokio::process::Child,
    pid_file: PathBuf,
    log: PathBuf,
    exited: bool,
    /// For a storage site: restarted when it exits (its data is on disk; `kill -9` included).
    site: bool,
}

fn signal(pid: u32, sig: &str) {
    // No `unsafe` (libc::kill) in this workspace: the `kill` utility does it.
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn stop_all(children: &mut [Child]) {
    for c in children.iter().filter(|c| !c.exited) {
        if let Some(pid) = c.proc.id() {
            signal(pid, "TERM");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        if !c.exited {
            match tokio::time::timeout_at(deadline, c.proc.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("kagi up: node {} did not stop in time; killing it", c.id);
                    let _ = c.proc.start_kill();
                    let _ = c.proc.wait().await;
                }
            }
            c.exited = true;
        }
        let _ = std::fs::remove_file(&c.pid_file);
    }
}

async fn spawn_nodes(dir: &Path, prep: &Prepared) -> anyhow::Result<Vec<Child>> {
    let mut children = Vec::new();
    for (id, cfg) in &prep.configs {
        let node_dir = dir.join("nodes").join(id);
        let pid_file = node_dir.join("node.pid");
        if let Some(pid) = stale_node(&pid_file, cfg) {
            stop_all(&mut children).await;
            bail!(
                "node {id} from an earlier `kagi up` is still running (pid {pid}); stop it first \
                 (kill {pid})"
            );
        }
        let log = node_dir.join("node.log");
        let mut cmd = super::child::kagi_child(&log)?;
        cmd.arg("node").arg("--config").arg(cfg);
        let proc = match cmd.spawn() {
            Ok(p) => p,
            Err(e) => {
                stop_all(&mut children).await;
                return Err(e).context(format!("cannot start node {id}"));
            }
        };
        if let Some(pid) = proc.id() {
            std::fs::write(&pid_file, format!("{pid}\n"))?;
        }
        children.push(Child {
            id: id.clone(),
            proc,
            pid_file,
            log,
            exited: false,
            site: false,
        });
    }
    Ok(children)
}

/// Starts one simulated QKD device pair (`kagi device`) per device link `kagi up` gave ports
/// to; logs under `devices/`.
fn spawn_devices(dir: &Path, prep: &Prepared) -> anyhow::Result<Vec<Child>> {
    let mut out = Vec::new();
    for l in &prep.topo.links {
        if !l.device.as_ref().is_some_and(|d| d.simulated) {
            continue;
        }
        let name = format!("{}-{}", l.a, l.b);
        let ddir = dir.join("devices");
        std::fs::create_dir_all(&ddir)?;
        let log = ddir.join(format!("{name}.log"));
        let mut cmd = super::child::kagi_child(&log)?;
        cmd.arg("device")
            .arg("--data-dir")
            .arg(dir)
            .arg("--link")
            .arg(&name);
        let proc = cmd
            .spawn()
            .with_context(|| format!("cannot start the simulated device of link {name}"))?;
        let pid_file = ddir.join(format!("{name}.pid"));
        if let Some(pid) = proc.id() {
            std::fs::write(&pid_file, format!("{pid}\n"))?;
        }
        out.push(Child {
            id: format!("device {name}"),
            proc,
            pid_file,
            log,
            exited: false,
            site: false,
        });
    }
    Ok(out)
}

/// Waits until every node's ETSI 014 endpoint answers an authenticated status call.
async fn wait_ready(
    dir: &Path,
    prep: &Prepared,
    children: &mut [Child],
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let ca = dir.join(&prep.network.ca);
    let all_saes: Vec<&str> = prep
        .network
        .nodes
        .iter()
        .flat_map(|n| n.saes.iter().map(|s| s.id.as_str()))
        .collect();
    let any_sae = prep.network.nodes.iter().find_map(|n| n.saes.first());
    let bar = super::progress::bar(prep.network.nodes.len() as u64, "nodes answering");
    for node in &prep.network.nodes {
        // A node without SAEs of its own still answers any SAE of the network (a 4xx is an
        // answer too); with no SAE at all there is nothing to ask.
        let Some(sae) = node.saes.first().or(any_sae) else {
            continue;
        };
        let slave = all_saes
            .iter()
            .find(|s| **s != sae.id)
            .copied()
            .unwrap_or(&sae.id);
        let client = Etsi014Client::from_files(
            &node.etsi014_url,
            &ca,
            &dir.join(&sae.cert),
            &dir.join(&sae.key),
        )?
        .with_timeout(Duration::from_secs(5));
        loop {
            match client.status(slave).await {
                Ok(_) | Err(ClientError::Refused { .. }) => {
                    bar.inc(1);
                    break;
                }
                Err(e) => {
                    for c in children.iter_mut() {
                        if let Ok(Some(st)) = c.proc.try_wait() {
                            c.exited = true;
                            bail!(
                                "node {} exited during start-up ({st}); see {}{}",
                                c.id,
                                c.log.display(),
                                log_tail(&c.log, 12)
                            );
                        }
                    }
                    if start.elapsed() > limit {
                        bail!("node {} did not answer within {limit:?}: {e}", node.id);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Why a node stopped, from its log, indented: its `Error:` report without the stack backtrace
/// that follows it when `RUST_BACKTRACE` is set, else the last `lines` lines (empty when the log
/// cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    let shown: Vec<&str> = match all.iter().rposition(|l| l.starts_with("Error:")) {
        Some(at) => all[at..]
            .iter()
            .take_while(|l| !l.starts_with("Stack backtrace:"))
            .take(lines)
            .copied()
            .collect(),
        None => all[all.len().saturating_sub(lines)..].to_vec(),
    };
    shown.iter().fold(String::from(":"), |mut out, l| {
        out.push_str("\n  ");
        out.push_str(l);
        out
    })
}

/// The curl pair: a master at the first node (koganei in the built-in network) and a slave at
/// the node farthest from it (at least 3 hops in the built-in network).
fn curl_pair(dir: &Path, topo: &Topology, net: &NetworkFile) -> Option<String> {
    let master_node = net
        .nodes
        .iter()
        .find(|n| n.id == "koganei" && !n.saes.is_empty())
        .or_else(|| net.nodes.iter().find(|n| !n.saes.is_empty()))?;
    let routes = Routes::compute(topo, &master_node.id, &[]);
    let slave_node = net
        .nodes
        .iter()
        .filter(|n| n.id != master_node.id && !n.saes.is_empty())
        .max_by_key(|n| routes.hops(&n.id).unwrap_or(0))?;
    let hops = routes.hops(&slave_node.id).unwrap_or(0);
    let (m, s) = (&master_node.saes[0], &slave_node.saes[0]);
    let abs = |p: &str| dir.join(p).display().to_string();
    let ca = abs(&net.ca);
    Some(format!(
        "# {m_id} at {m_node} asks for a key shared with {s_id} at {s_node} ({hops} hops away):\n\
         R=$(curl -sS --cacert {ca} --cert {m_cert} --key {m_key} \\\n  \
         '{m_url}/api/v1/keys/{s_id}/enc_keys?number=1&size=256'); echo \"$R\"\n\
         KEY_ID=$(echo \"$R\" | sed -E 's/.*\"key_ID\":\"([^\"]+)\".*/\\1/')\n\
         # {s_id} fetches the same key by its ID:\n\
         curl -sS --cacert {ca} --cert {s_cert} --key {s_key} \\\n  \
         \"{s_url}/api/v1/keys/{m_id}/dec_keys?key_ID=$KEY_ID\"; echo",
        m_id = m.id,
        m_node = master_node.id,
        s_id = s.id,
        s_node = slave_node.id,
        m_cert = abs(&m.cert),
        m_key = abs(&m.key),
        s_cert = abs(&s.cert),
        s_key = abs(&s.key),
        m_url = master_node.etsi014_url,
        s_url = slave_node.etsi014_url,
    ))
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

async fn supervise(children: &mut [Child]) -> anyhow::Result<()> {
    let sig = shutdown_signal();
    tokio::pin!(sig);
    loop {
        if children.iter().all(|c| c.exited || c.site) {
            bail!("every node has exited");
        }
        tokio::select! {
            s = &mut sig => {
                eprintln!("kagi up: {s}, stopping {} nodes", children.iter().filter(|c| !c.exited).count());
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                for c in children.iter_mut().filter(|c| !c.exited) {
                    if let Ok(Some(st)) = c.proc.try_wait() {
                        if c.site {
                            restart_site(c, st).await;
                            continue;
                        }
                        c.exited = true;
                        let _ = std::fs::remove_file(&c.pid_file);
                        eprintln!(
                            "kagi up: node {} exited unexpectedly ({st}); see {}. The other nodes keep running.",
                            c.id,
                            c.log.display()
                        );
                    }
                }
            }
        }
    }
}

/// Runs `kagi up`.
pub fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let dir = args.data_dir.canonicalize()?;
    if args.stop {
        return stop_left_over(&dir);
    }
    check_no_live_nodes(&dir)?;
    let prep = prepare(&args, &dir)?;
    let _ = std::fs::remove_file(dir.join("network.json"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let devices = spawn_devices(&dir, &prep)?;
        let mut children = spawn_nodes(&dir, &prep).await?;
        children.extend(devices);
        println!(
            "kagi up: starting {} nodes of {:?} in {} (rate multiplier {})",
            children.len(),
            prep.topo.name,
            dir.display(),
            prep.topo.rate_multiplier
        );
        let ready = tokio::select! {
            r = wait_ready(&dir, &prep, &mut children, Duration::from_secs(args.wait_secs)) => r,
            s = shutdown_signal() => Err(anyhow::anyhow!("{s} during start-up")),
        };
        if let Err(e) = ready {
            stop_all(&mut children).await;
            return Err(e);
        }
        let mut network = prep.network.clone();
        if args.vault || args.xks {
            let sites = match start_vault_sites(&dir, &prep).await {
                Ok(s) => s,
                Err(e) => {
                    stop_all(&mut children).await;
                    return Err(e);
                }
            };
            network.vault_sites = sites.iter().map(|(v, _)| v.clone()).collect();
            // Sites stop before the nodes they draw key from.
            let nodes = std::mem::take(&mut children);
            children.extend(sites.into_iter().map(|(_, c)| c));
            children.extend(nodes);
        }
        if args.xks {
            match super::xks::start_for_up(&dir, &network).await {
                Ok((info, c)) => {
                    network.xks = Some(info);
                    children.insert(
                        0,
                        Child {
                            id: "xks-proxy".into(),
                            proc: c.proc,
                            pid_file: c.pid_file,
                            log: c.log,
                            exited: false,
                            site: false,
                        },
                    );
                }
                Err(e) => {
                    stop_all(&mut children).await;
                    return Err(e);
                }
            }
        }
        // The dashboard runs in this process; a failure to start it is not fatal.
        let dash = super::up_dash::start(&dir, &network, &prep.topo.name, 0).await;
        match &dash {
            Ok((url, _)) => network.dashboard_url = Some(url.clone()),
            Err(e) => eprintln!("kagi up: no dashboard: {e:#}"),
        }
        let json = serde_json::to_string_pretty(&network)?;
        write_atomic(&dir.join("network.json"), &json)?;
        if let Some(url) = &network.dashboard_url {
            println!("\nDashboard (live network map; open in a browser on this machine):\n  {url}");
        }
        print_banner(&dir, &prep);
        print_vault_banner(&dir, &network);
        super::xks::print_banner(&dir, &network);
        let result = supervise(&mut children).await;
        stop_all(&mut children).await;
        let _ = std::fs::remove_file(dir.join("network.json"));
        println!("kagi up: all nodes stopped; keys stay in {}", dir.display());
        result
    })
}

// ---- `kagi up --vault`: storage sites as separate processes ----------------------------------

/// Where a site's files live: config, log and pid file under `vault/`, shares under
/// `vault/sites/<SAE>/` (the `data_dir` of network.json: deleting it destroys the site's data).
fn site_paths(dir: &Path, sae: &str) -> (PathBuf, PathBuf, PathBuf) {
    let v = dir.join("vault");
    (
        v.join(format!("{sae}.json")),
        v.join(format!("{sae}.log")),
        v.join(format!("{sae}.pid")),
    )
}

/// One site beside every node but the first (the default owner's), as the node's second SAE
/// (its first when it has only one): (site SAE, node, node's ETSI 014 URL).
fn vault_site_plan(net: &NetworkFile) -> Vec<(String, String, String)> {
    net.nodes
        .iter()
        .skip(1)
        .filter_map(|n| {
            let sae = n.saes.get(1).or(n.saes.first())?;
            Some((sae.id.clone(), n.id.clone(), n.etsi014_url.clone()))
        })
        .collect()
}

/// Writes each site's config and server certificate, starts `kagi vault site` per site and
/// waits until each listens.
async fn start_vault_sites(dir: &Path, prep: &Prepared) -> anyhow::Result<Vec<(VaultSite, Child)>> {
    let pki = Pki::open_or_create(&dir.join("pki"))?;
    let mut taken = prep.taken.clone();
    let mut out: Vec<(VaultSite, Child)> = Vec::new();
    for (sae, node, url) in vault_site_plan(&prep.network) {
        let (cfg_path, log, pid_file) = site_paths(dir, &sae);
        let entry = prep
            .network
            .find_sae(&sae)
            .map(|(_, e)| e.clone())
            .context("site SAE")?;
        let old_port = kagi_vault::net::SiteConfig::load(&cfg_path)
            .ok()
            .and_then(|c| addr_port(&Some(c.listen)))
            .filter(|p| !taken.contains(p) && port_free(*p));
        let port = match old_port {
            Some(p) => p,
            None => free_port(&taken)?,
        };
        taken.push(port);
        let server = kagi_vault::net::issue_site_cert(&pki, &sae)?;
        let data_dir = PathBuf::from("vault").join("sites").join(&sae);
        std::fs::create_dir_all(dir.join(&data_dir))?;
        let cfg = kagi_vault::net::SiteConfig {
            id: sae.clone(),
            node: node.clone(),
            etsi014_url: url,
            listen: format!("127.0.0.1:{port}"),
            data_dir: data_dir.clone(),
            ca: PathBuf::from(&prep.network.ca),
            cert: PathBuf::from(&entry.cert),
            key: PathBuf::from(&entry.key),
            server_cert: PathBuf::from(rel(&server.cert, dir)),
            server_key: PathBuf::from(rel(&server.key, dir)),
            key_wait_ms: 3000,
        };
        write_atomic(&cfg_path, &serde_json::to_string_pretty(&cfg)?)?;
        let child = match spawn_site(dir, &sae, &log, &pid_file) {
            Ok(c) => c,
            Err(e) => {
                let mut started: Vec<Child> = out.into_iter().map(|(_, c)| c).collect();
                stop_all(&mut started).await;
                return Err(e);
            }
        };
        out.push((
            VaultSite {
                id: sae,
                node,
                data_dir: data_dir.to_string_lossy().into_owned(),
                url: format!("https://127.0.0.1:{port}"),
            },
            child,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..out.len() {
        let port = addr_port(&Some(out[i].0.url.clone())).unwrap_or(0);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            let failed = match out[i].1.proc.try_wait() {
                Ok(Some(st)) => Some(format!("exited ({st})")),
                _ if Instant::now() > deadline => Some("did not listen within 30 s".into()),
                _ => None,
            };
            if let Some(why) = failed {
                let log = out[i].1.log.display().to_string();
                let id = out[i].0.id.clone();
                let mut started: Vec<Child> = out.into_iter().map(|(_, c)| c).collect();
                stop_all(&mut started).await;
                bail!("vault site {id} {why}; see {log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(out)
}

fn spawn_site(dir: &Path, sae: &str, log: &Path, pid_file: &Path) -> anyhow::Result<Child> {
    let mut cmd = super::child::kagi_child(log)?;
    cmd.args([
        "vault",
        "site",
        "--exit-with-parent",
        "--id",
        sae,
        "--data-dir",
    ])
    .arg(dir);
    let proc = cmd
        .spawn()
        .with_context(|| format!("cannot start vault site {sae}"))?;
    if let Some(pid) = proc.id() {
        std::fs::write(pid_file, format!("{pid}\n"))?;
    }
    Ok(Child {
        id: sae.to_string(),
        proc,
        pid_file: pid_file.to_owned(),
        log: log.to_owned(),
        exited: false,
        site: true,
    })
}

/// A site exited (crash, `kill -9`): start it again on the same port and directory. Puts in
/// flight at it fail and roll back; its committed shares are on disk.
async fn restart_site(c: &mut Child, st: std::process::ExitStatus) {
    eprintln!(
        "kagi up: vault site {} exited ({st}); restarting it (log {})",
        c.id,
        c.log.display()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Some(dir) = c
        .pid_file
        .parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
    else {
        c.exited = true;
        return;
    };
    match spawn_site(&dir, &c.id, &c.log, &c.pid_file) {
        Ok(new) => *c = new,
        Err(e) => {
            eprintln!("kagi up: cannot restart vault site {}: {e:#}", c.id);
            c.exited = true;
        }
    }
}

fn print_vault_banner(dir: &Path, net: &NetworkFile) {
    if net.vault_sites.is_empty() {
        return;
    }
    println!("\nStorage sites (kagi vault; one process each, mutual TLS):");
    for s in &net.vault_sites {
        println!(
            "  {:<20} beside {:<12} {:<24} data {}",
            s.id,
            s.node,
            s.url,
            dir.join(&s.data_dir).display()
        );
    }
    println!(
        "Store a file: kagi vault put FILE --k 3 --n {} --data-dir {}",
        net.vault_sites.len(),
        dir.display()
    );
}

fn print_banner(dir: &Path, prep: &Prepared) {
    println!(
        "\nETSI GS QKD 014 endpoints (mutual TLS, CA {}):",
        dir.join(&prep.network.ca).display()
    );
    for n in &prep.network.nodes {
        let mut saes: Vec<&str> = n.saes.iter().map(|s| s.id.as_str()).collect();
        if saes.is_empty() {
            saes.push("(none: a relay-only trusted node)");
        }
        println!(
            "  {:<12} {:<24} SAEs: {}",
            n.id,
            n.etsi014_url,
            saes.join(", ")
        );
    }
    println!("\nLinks:");
    print!("{}", super::up_mgmt::links_table(&prep.topo));
    println!("\nWrote {}", dir.join("network.json").display());
    if let Some(curl) = curl_pair(dir, &prep.topo, &prep.network) {
        println!(
            "\nFetch a key with curl (pools fill in the background; a 503 means not yet):\n{curl}"
        );
    }
    println!(
        "\nOr with kagi: kagi keys status --data-dir {d} --sae SAE --slave SAE  (see kagi keys --help)",
        d = dir.display()
    );
    println!(
        "Logs: {}/nodes/<id>/node.log.  Ctrl-C stops the network.\n",
        dir.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("kagi-up-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    fn rand_suffix() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn args(dir: &Path) -> Args {
        Args {
            data_dir: dir.to_owned(),
            topology: None,
            rate_multiplier: None,
            base_port: None,
            wait_secs: 5,
            stop: false,
            vault: false,
            xks: false,
            peers: None,
        }
    }

    #[test]
    fn prepare_writes_everything_and_keeps_it_on_rerun() {
        let dir = tmp();
        let a = args(&dir);
        let p1 = prepare(&a, &dir).unwrap();
        assert_eq!(p1.topo.nodes.len(), 6);
        assert!(p1.topo.epoch_unix > 0);
        for n in &p1.network.nodes {
            for s in &n.saes {
                assert!(dir.join(&s.cert).exists() && dir.join(&s.key).exists());
                assert!(!Path::new(&s.cert).is_absolute());
            }
            let cfg = NodeConfig::load(&p1.configs[&n.id]).unwrap();
            assert!(cfg.tls.cert.exists(), "{}", cfg.tls.cert.display());
            assert!(cfg.topology.exists());
        }
        let cert = std::fs::read(dir.join(&p1.network.nodes[0].saes[0].cert)).unwrap();
        // An operator moves one node's store elsewhere: a re-run keeps that.
        let first = &p1.network.nodes[0].id;
        let text = std::fs::read_to_string(&p1.configs[first]).unwrap();
        let edited = text.replace("data_dir = \".\"", "data_dir = \"store-elsewhere\"");
        assert_ne!(edited, text);
        std::fs::write(&p1.configs[first], edited).unwrap();
        let p2 = prepare(&a, &dir).unwrap();
        assert_eq!(
            written_data_dir(&p2.configs[first]),
            Some(PathBuf::from("store-elsewhere")),
            "an edited data_dir was reset"
        );
        assert_eq!(p2.topo.epoch_unix, p1.topo.epoch_unix);
        assert_eq!(p2.network, p1.network, "same ports and paths on re-run");
        assert_eq!(
            std::fs::read(dir.join(&p2.network.nodes[0].saes[0].cert)).unwrap(),
            cert
        );
        // The curl pair spans at least 3 hops in the built-in network.
        let curl = curl_pair(&dir, &p2.topo, &p2.network).unwrap();
        assert!(
            curl.contains("koganei") && curl.contains("3 hops"),
            "{curl}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn user_topology_with_its_own_addresses() {
        let dir = tmp();
        let topo = r#"
            name = "line"
            [[nodes]]
            id = "n1"
            saes = ["s1"]
            etsi014_addr = "127.0.0.1:45001"
            [[nodes]]
            id = "n2"
            [[nodes]]
            id = "n3"
            saes = ["s3"]
            [[links]]
            a = "n1"
            b = "n2"
            length_km = 20.0
            [[links]]
            a = "n2"
            b = "n3"
            length_km = 30.0
        "#;
        let file = dir.join("line.toml");
        std::fs::write(&file, topo).unwrap();
        let mut a = args(&dir);
        a.topology = Some(file);
        a.rate_multiplier = Some(3.0);
        let p = prepare(&a, &dir).unwrap();
        assert_eq!(p.topo.rate_multiplier, 3.0);
        assert_eq!(p.network.nodes[0].etsi014_url, "https://127.0.0.1:45001");
        assert!(p.network.nodes[1].saes.is_empty());
        let curl = curl_pair(&dir, &p.topo, &p.network).unwrap();
        assert!(
            curl.contains("s1 at n1") && curl.contains("s3 at n3") && curl.contains("2 hops"),
            "{curl}"
        );
        for bad in [-1.0, 0.0, f64::NAN, 1e300] {
            a.rate_multiplier = Some(bad);
            let err = prepare(&a, &dir).err().expect("refused").to_string();
            assert!(
                err.contains("--rate-multiplier must be above 0"),
                "{bad}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_node_is_reported_by_its_error_not_its_backtrace() {
        let dir = std::env::temp_dir().join(format!("kagi-logtail-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("node.log");
        let mut text = String::from("starting\nError: bind ETSI 004 on 127.0.0.1:1: in use\n\n");
        text.push_str("Stack backtrace:\n");
        for i in 0..40 {
            text.push_str(&format!("  {i}: frame\n"));
        }
        std::fs::write(&log, text).unwrap();
        let shown = log_tail(&log, 12);
        assert!(shown.contains("Error: bind ETSI 004"), "{shown}");
        assert!(!shown.contains("frame"), "{shown}");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), ":\n  b\n  c");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn base_port_lays_ports_out() {
        let dir = tmp();
        let mut a = args(&dir);
        a.base_port = Some(40000);
        let p = prepare(&a, &dir).unwrap();
        assert_eq!(
            p.topo.nodes[0].etsi014_addr.as_deref(),
            Some("127.0.0.1:40000")
        );
        assert_eq!(
            p.topo.nodes[0].peer_addr.as_deref(),
            Some("127.0.0.1:40001")
        );
        assert_eq!(
            p.topo.nodes[1].etsi014_addr.as_deref(),
            Some("127.0.0.1:40002")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
