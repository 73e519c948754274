//! `kagi vault put|get|ls|refresh|repair|sites`: long-term secure storage over a network started
//! by `kagi up` (Fujiwara et al., Sci. Rep. 6:28988): a file is split k-of-n with Shamir
//! sharing, each share goes to a storage site beside a different trusted node, and every transfer
//! is one-time-pad encrypted with QKD keys fetched over ETSI GS QKD 014 and tagged with a
//! Wegman–Carter MAC (crates/vault).
//!
//! Sites: the `vault_sites` list of `network.json` when present (`[{"id", "node", "data_dir"}]`,
//! paths relative to the data directory); otherwise one site per other node, acting as that
//! node's first SAE, storing under `vault/sites/<SAE>/`. In this version the sites' protocol steps
//! run inside the `kagi vault` process (each with its own SAE certificate, its own node and its
//! own directory); the key flows are the network's real ones.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kagi_keymat::Key;
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::etsi014::wire;
use kagi_vault::client;
use kagi_vault::keys::{KeyBatch, KeySupply};
use kagi_vault::site::Site;
use kagi_vault::VaultError;
use uuid::Uuid;

use super::up::NetworkFile;

/// Arguments of `kagi vault`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the network (where `kagi up` wrote network.json).
    #[arg(long, global = true, default_value = "./kagi-data")]
    pub data_dir: PathBuf,
    /// The data owner's SAE (default: the first SAE of the first node).
    #[arg(long, global = true)]
    pub sae: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for QKD key when a node has too little, before failing.
    #[arg(long, global = true, default_value_t = 120)]
    pub wait_secs: u64,
    #[command(subcommand)]
    pub command: VaultCommand,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum VaultCommand {
    /// Split FILE k-of-n and store one share at each of n sites; prints the object ID last.
    Put {
        /// The file to store.
        file: PathBuf,
        /// Shares needed to rebuild.
        #[arg(long, default_value_t = 3)]
        k: usize,
        /// Shares (sites).
        #[arg(long, default_value_t = 5)]
        n: usize,
    },
    /// Rebuild object ID from the sites that still hold it and write it to FILE.
    Get {
        /// Object ID (from `put` or `ls`).
        id: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List stored objects.
    Ls,
    /// Proactive refresh of object ID: every share is re-randomised; the object is unchanged.
    Refresh {
        /// Object ID.
        id: String,
    },
    /// Rebuild site S's share of object ID from k other sites.
    Repair {
        /// Object ID.
        id: String,
        /// The site (SAE ID) whose share was lost.
        #[arg(long)]
        site: String,
    },
    /// Show the storage sites.
    Sites,
    /// Store every file under DIR (one object each); writes an index (path → object ID) as JSON.
    PutDir {
        /// Directory to store.
        dir: PathBuf,
        /// Where to write the index.
        #[arg(long)]
        index: PathBuf,
        /// Shares needed to rebuild.
        #[arg(long, default_value_t = 3)]
        k: usize,
        /// Shares (sites).
        #[arg(long, default_value_t = 5)]
        n: usize,
    },
    /// Restore every object of an index written by `put-dir` under OUT.
    GetDir {
        /// The index.
        index: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Write clearly synthetic medical records (SS-MIX2-like layout) for the walkthrough.
    DemoRecords {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Number of patients (records).
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        /// Seed (same seed, same files).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// A party's ETSI 014 access to its own node, as the vault's key supply. Waits (with progress on
/// stderr) while the node has too little key, up to a deadline; never substitutes anything else.
struct EtsiKeys {
    sae: String,
    client: Etsi014Client,
    rt: Rc<tokio::runtime::Runtime>,
    used: u64,
    wait: Duration,
    spent: Rc<RefCell<u64>>,
    /// Per peer: (min key bits, max key bits, max keys per request), from ETSI 014 status.
    limits: std::collections::HashMap<String, (u64, u64, u64)>,
}

impl EtsiKeys {
    fn refused(e: ClientError) -> VaultError {
        VaultError::Keys(e.to_string())
    }
}

impl KeySupply for EtsiKeys {
    fn sae(&self) -> &str {
        &self.sae
    }

    fn enc_keys(&mut self, peer: &str, bytes: usize) -> Result<KeyBatch, VaultError> {
        let rt = self.rt.clone();
        let (min_size, max_size, max_per_request) = match self.limits.get(peer) {
            Some(l) => *l,
            None => {
                let st = rt
                    .block_on(self.client.status(peer))
                    .map_err(Self::refused)?;
                let l = (st.min_key_size, st.max_key_size, st.max_key_per_request);
                self.limits.insert(peer.to_string(), l);
                l
            }
        };
        // Keys sized to the transfer (whole bytes, within the node's limits), so that small
        // transfers do not waste a large key.
        let max_bits = (max_size.min(8192) / 8 * 8).max(8);
        let min_bits = min_size.div_ceil(8) * 8;
        let size_bits =
            ((bytes as u64 * 8).div_ceil(8) * 8).clamp(min_bits.min(max_bits), max_bits);
        let key_len = (size_bits / 8).max(1) as usize;
        let per_request = max_per_request.max(1) as usize;
        let wanted = bytes.div_ceil(key_len);
        let mut ids = Vec::with_capacity(wanted);
        let mut key = Key::default();
        let deadline = Instant::now() + self.wait;
        let mut last_note = Instant::now();
        while ids.len() < wanted {
            // Modest requests (16 KiB): a node keeps a bounded end-to-end pool per peer and
            // refuses requests larger than what is ready; small ones drain it as it refills.
            let number = (wanted - ids.len())
                .min(per_request)
                .min((16384 / key_len).max(1)) as u64;
            let req = wire::KeyRequest {
                number: Some(number),
                size: Some(size_bits),
                ..Default::default()
            };
            match rt.block_on(self.client.enc_keys(peer, &req)) {
                Ok(keys) => {
                    for k in keys {
                        ids.push(k.id);
                        key.extend_from(&k.key);
                    }
                }
                Err(ClientError::Refused {
                    status: 503,
                    message,
                }) => {
                    if Instant::now() >= deadline {
                        return Err(VaultError::KeyShortage {
                            needed: bytes as u64,
                            available: key.len() as u64,
                        });
                    }
                    if last_note.elapsed() >= Duration::from_secs(5) {
                        eprintln!(
                            "waiting for QKD key {} -> {peer}: {} of {} bytes ({message})",
                            self.sae,
                            key.len(),
                            wanted * key_len
                        );
                        last_note = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(Self::refused(e)),
            }
        }
        self.used += key.len() as u64;
        *self.spent.borrow_mut() += key.len() as u64;
        Ok(KeyBatch { ids, key })
    }

    fn dec_keys(&mut self, master: &str, ids: &[Uuid]) -> Result<Key, VaultError> {
        let rt = self.rt.clone();
        let mut out = Key::default();
        for chunk in ids.chunks(256) {
            let keys = rt
                .block_on(self.client.dec_keys(master, chunk))
                .map_err(Self::refused)?;
            for id in chunk {
                let k = keys
                    .iter()
                    .find(|k| k.id == *id)
                    .ok_or_else(|| VaultError::Keys(format!("node did not return key {id}")))?;
                out.extend_from(&k.key);
            }
        }
        Ok(out)
    }

    fn key_bytes_used(&self) -> u64 {
        self.used
    }
}

/// A storage site: its SAE and directory.
struct SiteSpec {
    sae: String,
    node: String,
    dir: PathBuf,
}

fn site_specs(dir: &Path, net: &NetworkFile, owner: &str) -> anyhow::Result<Vec<SiteSpec>> {
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("network.json"))?)?;
    if let Some(list) = raw.get("vault_sites").and_then(|v| v.as_array()) {
        let mut out = Vec::new();
        for s in list {
            let id = s
                .get("id")
                .and_then(|v| v.as_str())
                .context("vault_sites[].id")?;
            let node = s
                .get("node")
                .and_then(|v| v.as_str())
                .context("vault_sites[].node")?;
            let d = s
                .get("data_dir")
                .and_then(|v| v.as_str())
                .context("vault_sites[].data_dir")?;
            out.push(SiteSpec {
                sae: id.to_string(),
                node: node.to_string(),
                dir: dir.join(d),
            });
        }
        return Ok(out);
    }
    let owner_node = net.find_sae(owner).map(|(n, _)| n.id.clone());
    Ok(net
        .nodes
        .iter()
        .filter(|n| Some(&n.id) != owner_node.as_ref())
        .filter_map(|n| n.saes.first().map(|s| (n, s)))
        .map(|(n, s)| SiteSpec {
            sae: s.id.clone(),
            node: n.id.clone(),
            dir: dir.join("vault").join("sites").join(&s.id),
        })
        .collect())
}

fn keys_for(
    dir: &Path,
    net: &NetworkFile,
    sae: &str,
    rt: &Rc<tokio::runtime::Runtime>,
    wait: Duration,
    spent: &Rc<RefCell<u64>>,
) -> anyhow::Result<EtsiKeys> {
    let (node, entry) = net.find_sae(sae).with_context(|| {
        format!(
            "SAE {sae:?} is not in {}",
            dir.join("network.json").display()
        )
    })?;
    let client = Etsi014Client::from_files(
        &node.etsi014_url,
        &dir.join(&net.ca),
        &dir.join(&entry.cert),
        &dir.join(&entry.key),
    )?;
    Ok(EtsiKeys {
        sae: sae.to_string(),
        client,
        rt: rt.clone(),
        used: 0,
        wait,
        spent: spent.clone(),
        limits: Default::default(),
    })
}

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Runs `kagi vault`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    if let VaultCommand::DemoRecords {
        out,
        patients,
        seed,
    } = &args.command
    {
        let cfg = kagi_sharing::demo_emr::EmrConfig {
            patients: *patients,
            seed: *seed,
            max_visits: 4,
        };
        let s = kagi_sharing::demo_emr::write_to_dir(out, &cfg)?;
        println!(
            "{} synthetic patients: {} files, {} under {}",
            s.patients,
            s.files,
            fmt_bytes(s.bytes),
            out.display()
        );
        return Ok(());
    }
    let net = NetworkFile::load(dir)?;
    let owner_sae = match &args.sae {
        Some(s) => s.clone(),
        None => net
            .nodes
            .iter()
            .find_map(|n| n.saes.first())
            .map(|s| s.id.clone())
            .context("network.json lists no SAE")?,
    };
    let specs = site_specs(dir, &net, &owner_sae)?;
    if let VaultCommand::Sites = args.command {
        for s in &specs {
            println!("{:<24} node {:<12} {}", s.sae, s.node, s.dir.display());
        }
        return Ok(());
    }
    let rt = Rc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    );
    let wait = Duration::from_secs(args.wait_secs);
    let spent = Rc::new(RefCell::new(0u64));
    let mut owner = keys_for(dir, &net, &owner_sae, &rt, wait, &spent)?;
    let mut sites = specs
        .iter()
        .map(|s| {
            Ok(Site::new(
                s.dir.clone(),
                keys_for(dir, &net, &s.sae, &rt, wait, &spent)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    match args.command {
        VaultCommand::Put { file, k, n } => {
            if n > sites.len() {
                bail!(
                    "n = {n} sites asked for, the network has {} (see `kagi vault sites`)",
                    sites.len()
                );
            }
            let data = Key::from_vec(
                std::fs::read(&file).with_context(|| format!("read {}", file.display()))?,
            );
            let name = file
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let r = client::put(&mut owner, &mut sites, &name, data.expose(), k, n)?;
            let secs = started.elapsed().as_secs_f64();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "object": r.object, "bytes": r.len, "k": k, "n": n, "sites": r.sites,
                        "qkd_key_bytes": *spent.borrow(), "seconds": secs,
                    })
                );
            } else {
                eprintln!(
                    "stored {} ({}) as {k}-of-{n} at {}; QKD key spent: {} ({:.1} bytes per byte); {:.2} s",
                    name,
                    fmt_bytes(r.len),
                    r.sites.join(", "),
                    fmt_bytes(*spent.borrow()),
                    *spent.borrow() as f64 / r.len.max(1) as f64,
                    secs
                );
                println!("{}", r.object);
            }
        }
        VaultCommand::Get { id, output } => {
            let g = client::get(&mut owner, &mut sites, &id)?;
            let tmp = output.with_extension("kagi-tmp");
            std::fs::write(&tmp, g.data.expose())
                .with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, &output)?;
            let secs = started.elapsed().as_secs_f64();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "object": id, "bytes": g.data.len(), "answered": g.answered, "missing": g.missing,
                        "corrupted": g.corrupted, "qkd_key_bytes": *spent.borrow(), "seconds": secs,
                    })
                );
            } else {
                println!(
                    "{} ({}) -> {}: rebuilt from {}{}{}; integrity verified; QKD key spent: {}; {:.2} s",
                    id,
                    fmt_bytes(g.data.len() as u64),
                    output.display(),
                    g.answered.join(", "),
                    if g.missing.is_empty() { String::new() } else { format!("; missing: {}", g.missing.join(", ")) },
                    if g.corrupted.is_empty() {
                        String::new()
                    } else {
                        format!("; corrupted share corrected: {}", g.corrupted.join(", "))
                    },
                    fmt_bytes(*spent.borrow()),
                    secs
                );
            }
        }
        VaultCommand::Ls => {
            let all = client::list(&sites)?;
            if args.json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(m, h)| {
                        serde_json::json!({"object": m.object, "name": m.name, "bytes": m.len,
                        "k": m.k, "n": m.n, "epoch": m.epoch, "sites": m.sites, "holding": h})
                    })
                    .collect();
                print_out(&(serde_json::to_string_pretty(&v)? + "\n"))?;
            } else {
                for (m, h) in &all {
                    print_out(&format!(
                        "{}  {:<24} {:>10}  {}-of-{}  refreshed {}x  held by {}/{}\n",
                        m.object,
                        m.name,
                        fmt_bytes(m.len),
                        m.k,
                        m.n,
                        m.epoch,
                        h.len(),
                        m.n
                    ))?;
                }
            }
        }
        VaultCommand::Refresh { id } => {
            client::refresh(&mut sites, &id)?;
            println!(
                "{id}: every share re-randomised; QKD key spent: {}",
                fmt_bytes(*spent.borrow())
            );
        }
        VaultCommand::Repair { id, site } => {
            client::repair(&mut sites, &id, &site)?;
            println!(
                "{id}: share of {site} rebuilt; QKD key spent: {}",
                fmt_bytes(*spent.borrow())
            );
        }
        VaultCommand::PutDir {
            dir: root,
            index,
            k,
            n,
        } => {
            if n > sites.len() {
                bail!(
                    "n = {n} sites asked for, the network has {} (see `kagi vault sites`)",
                    sites.len()
                );
            }
            let mut files = Vec::new();
            walk(&root, &mut files)?;
            files.sort();
            let mut entries = serde_json::Map::new();
            let mut total = 0u64;
            for (i, f) in files.iter().enumerate() {
                let data = Key::from_vec(std::fs::read(f)?);
                let rel = f
                    .strip_prefix(&root)
                    .unwrap_or(f)
                    .to_string_lossy()
                    .into_owned();
                let r = client::put(&mut owner, &mut sites, &rel, data.expose(), k, n)
                    .with_context(|| format!("put {rel}"))?;
                total += r.len;
                entries.insert(rel, serde_json::Value::String(r.object));
                if (i + 1) % 100 == 0 {
                    eprintln!("  {} of {} files stored", i + 1, files.len());
                }
            }
            std::fs::write(&index, serde_json::to_vec_pretty(&entries)?)?;
            eprintln!(
                "stored {} files ({}) as {k}-of-{n}; QKD key spent: {}; {:.1} s; index: {}",
                files.len(),
                fmt_bytes(total),
                fmt_bytes(*spent.borrow()),
                started.elapsed().as_secs_f64(),
                index.display()
            );
        }
        VaultCommand::GetDir { index, output } => {
            let entries: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&std::fs::read(&index)?)?;
            let mut total = 0u64;
            let mut missing_sites = std::collections::BTreeSet::new();
            for (rel, id) in &entries {
                let id = id.as_str().context("index entries are object IDs")?;
                let g = client::get(&mut owner, &mut sites, id)
                    .with_context(|| format!("get {rel}"))?;
                missing_sites.extend(g.missing.iter().cloned());
                let path = output.join(rel);
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::write(&path, g.data.expose())?;
                total += g.data.len() as u64;
            }
            println!(
                "restored {} files ({}) under {}; integrity verified for every object; sites without shares: {}; QKD key spent: {}; {:.1} s",
                entries.len(),
                fmt_bytes(total),
                output.display(),
                if missing_sites.is_empty() {
                    "none".to_string()
                } else {
                    missing_sites.into_iter().collect::<Vec<_>>().join(", ")
                },
                fmt_bytes(*spent.borrow()),
                started.elapsed().as_secs_f64()
            );
        }
        VaultCommand::Sites | VaultCommand::DemoRecords { .. } => {}
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`kagi vault ls | head`) ends the output quietly.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}
