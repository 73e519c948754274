//! `kagi vault put|get|ls|refresh|repair|sites`: long-term secure storage over a network started
//! by `kagi up` (Fujiwara et al., Sci. Rep. 6:28988): a file is split k-of-n with Shamir
//! sharing, each share goes to a storage site beside a different trusted node, and every transfer
//! is one-time-pad encrypted with QKD keys fetched over ETSI GS QKD 014 and tagged with a
//! Wegman–Carter MAC (crates/vault).
//!
//! Sites are separate processes (`kagi vault site`, started by `kagi up --vault`), listed in
//! `network.json` as `vault_sites` (`[{"id", "node", "data_dir", "url"}]`, paths relative to the
//! data directory). `kagi vault` talks to them over mutual TLS (kagi's node-to-node profile:
//! TLS 1.3, X25519MLKEM768) as the owner's SAE; each share travels sealed (one-time pad and
//! Wegman–Carter tag with keys the owner and the site get from their own nodes over ETSI 014).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kagi_keymat::Key;
use kagi_node::config::TlsConfig;
use kagi_vault::client;
use kagi_vault::keys::KeySupply;
use kagi_vault::net::{serve_site, EtsiKeys, Progress, RemoteSite, SiteConfig, SiteServer};
use kagi_vault::site::Site;
use tokio::runtime::Handle;

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
    /// Proactive refresh of object ID (a stored object or a shared table): every share is
    /// re-randomised; the object is unchanged and earlier shares no longer combine with new ones.
    Refresh {
        /// Object ID (or a table's name).
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
    /// Run one storage site (normally started by `kagi up --vault`; reads `vault/ID.json`).
    Site {
        /// The site's SAE ID.
        #[arg(long)]
        id: String,
        /// Exit when the parent process (`kagi up`) goes away.
        #[arg(long)]
        exit_with_parent: bool,
    },
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
    /// Share a CSV table column by column into three-party replicated shares at three sites,
    /// for computation on shares (`kagi mpc query`); prints the table ID last.
    PutTable(super::mpc::PutTableArgs),
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

/// A storage site as listed in `network.json`.
pub(crate) struct SiteSpec {
    pub(crate) sae: String,
    node: String,
    url: String,
    dir: PathBuf,
}

pub(crate) fn site_specs(dir: &Path, net: &NetworkFile) -> anyhow::Result<Vec<SiteSpec>> {
    if net.vault_sites.is_empty() {
        bail!(
            "{} lists no storage sites: start the network with `kagi up --vault --data-dir {}`",
            dir.join("network.json").display(),
            dir.display()
        );
    }
    Ok(net
        .vault_sites
        .iter()
        .map(|s| SiteSpec {
            sae: s.id.clone(),
            node: s.node.clone(),
            url: s.url.clone(),
            dir: dir.join(&s.data_dir),
        })
        .collect())
}

fn progress() -> Progress {
    Arc::new(|line: &str| eprintln!("{line}"))
}

/// The owner's ETSI 014 key supply (at its own node).
pub(crate) fn owner_keys(
    dir: &Path,
    net: &NetworkFile,
    sae: &str,
    handle: &Handle,
    wait: Duration,
) -> anyhow::Result<EtsiKeys> {
    let (node, entry) = net.find_sae(sae).with_context(|| {
        format!(
            "SAE {sae:?} is not in {}",
            dir.join("network.json").display()
        )
    })?;
    Ok(EtsiKeys::new(
        sae,
        &node.etsi014_url,
        &dir.join(&net.ca),
        &dir.join(&entry.cert),
        &dir.join(&entry.key),
        handle.clone(),
        wait,
    )?
    .with_progress(progress()))
}

/// The sites as remote handles, authenticated as the owner's SAE.
pub(crate) fn remote_sites(
    dir: &Path,
    net: &NetworkFile,
    specs: &[SiteSpec],
    owner: &str,
    handle: &Handle,
    wait: Duration,
) -> anyhow::Result<Vec<RemoteSite>> {
    let (_, entry) = net.find_sae(owner).context("owner SAE")?;
    let tls = kagi_node::tls::peer_client_config(&TlsConfig {
        ca: dir.join(&net.ca),
        cert: dir.join(&entry.cert),
        key: dir.join(&entry.key),
    })?;
    specs
        .iter()
        .map(|s| {
            Ok(
                RemoteSite::new(&s.sae, &s.url, tls.clone(), handle.clone(), wait)?
                    .with_progress(progress()),
            )
        })
        .collect()
}

/// `kagi vault site --id SAE`: one storage site process (normally started by `kagi up --vault`).
fn run_site(dir: &Path, id: &str, exit_with_parent: bool) -> anyhow::Result<()> {
    let cfg_path = dir.join("vault").join(format!("{id}.json"));
    let cfg = SiteConfig::load(&cfg_path).with_context(|| {
        format!(
            "no site config {} (sites are set up by `kagi up --vault`)",
            cfg_path.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let keys = EtsiKeys::new(
        &cfg.id,
        &cfg.etsi014_url,
        &dir.join(&cfg.ca),
        &dir.join(&cfg.cert),
        &dir.join(&cfg.key),
        rt.handle().clone(),
        Duration::from_millis(cfg.key_wait_ms),
    )?
    .with_progress(progress());
    let mut site = Site::new(dir.join(&cfg.data_dir), keys);
    let dropped = site.clear_pending()?;
    if dropped > 0 {
        eprintln!(
            "vault site {}: dropped {dropped} uncommitted put(s) from before the restart",
            cfg.id
        );
    }
    let tls = kagi_node::tls::peer_server_config(&TlsConfig {
        ca: dir.join(&cfg.ca),
        cert: dir.join(&cfg.server_cert),
        key: dir.join(&cfg.server_key),
    })?;
    let client_tls = kagi_node::tls::peer_client_config(&TlsConfig {
        ca: dir.join(&cfg.ca),
        cert: dir.join(&cfg.server_cert),
        key: dir.join(&cfg.server_key),
    })?;
    let keys_cfg = cfg.clone();
    let keys_dir = dir.to_path_buf();
    let keys_handle = rt.handle().clone();
    let make_keys = move || {
        EtsiKeys::new(
            &keys_cfg.id,
            &keys_cfg.etsi014_url,
            &keys_dir.join(&keys_cfg.ca),
            &keys_dir.join(&keys_cfg.cert),
            &keys_dir.join(&keys_cfg.key),
            keys_handle.clone(),
            Duration::from_secs(120),
        )
    };
    let bind_host = cfg
        .listen
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let mpc = kagi_vault::net::mpc::MpcSite::new(
        cfg.id.clone(),
        dir.join(&cfg.data_dir),
        tls.clone(),
        client_tls,
        bind_host,
        Arc::new(make_keys),
    );
    let server = SiteServer::new(site).with_mpc(mpc);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        eprintln!(
            "vault site {} (node {}) listening on https://{}, storing under {}",
            cfg.id,
            cfg.node,
            cfg.listen,
            dir.join(&cfg.data_dir).display()
        );
        let parent = std::os::unix::process::parent_id();
        let stop = async move {
            let parent_gone = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if exit_with_parent && std::os::unix::process::parent_id() != parent {
                        return;
                    }
                }
            };
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async move {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = term => {}
                () = parent_gone => {}
            }
        };
        serve_site(listener, tls, server, stop).await?;
        anyhow::Ok(())
    })
}

pub(crate) fn fmt_bytes(b: u64) -> String {
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
    // A site starts before network.json exists (kagi up writes it once the sites listen).
    if let VaultCommand::Site {
        id,
        exit_with_parent,
    } = &args.command
    {
        return run_site(dir, id, *exit_with_parent);
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
    if net.find_sae(&owner_sae).is_none() {
        bail!(
            "unknown SAE {owner_sae:?}: {} lists {}",
            dir.join("network.json").display(),
            net.nodes
                .iter()
                .flat_map(|n| n.saes.iter().map(|s| s.id.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let specs = site_specs(dir, &net)?;
    if let VaultCommand::Sites = args.command {
        for s in &specs {
            println!(
                "{:<24} node {:<12} {:<24} {}",
                s.sae,
                s.node,
                s.url,
                s.dir.display()
            );
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let wait = Duration::from_secs(args.wait_secs);
    // One key-supply handle per site, so that a put's share transfers run at once.
    let mut owners = (0..specs.len().max(1))
        .map(|_| owner_keys(dir, &net, &owner_sae, rt.handle(), wait))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut sites = remote_sites(dir, &net, &specs, &owner_sae, rt.handle(), wait)?;
    let spent = |owners: &[EtsiKeys], sites: &[RemoteSite]| -> u64 {
        owners.iter().map(KeySupply::key_bytes_used).sum::<u64>()
            + sites
                .iter()
                .map(kagi_vault::api::SiteApi::key_bytes_used)
                .sum::<u64>()
    };
    let started = Instant::now();
    if let VaultCommand::PutTable(a) = &args.command {
        return super::mpc::put_table(a, &net, &specs, &mut owners[0], &mut sites, args.json);
    }
    match args.command {
        VaultCommand::Put { file, k, n } => {
            kagi_sharing::Params::new(k, n)?;
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
            let spin = super::progress::spinner(&format!(
                "sharing {name} ({}) as {k}-of-{n}",
                fmt_bytes(data.len() as u64)
            ));
            let r = client::put_with(&mut owners, &mut sites, &name, data.expose(), k, n);
            spin.finish_and_clear();
            let r = r?;
            let secs = started.elapsed().as_secs_f64();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "object": r.object, "bytes": r.len, "k": k, "n": n, "sites": r.sites,
                        "qkd_key_bytes": spent(&owners, &sites), "seconds": secs,
                    })
                );
            } else {
                eprintln!(
                    "stored {} ({}) as {k}-of-{n} at {}; QKD key spent: {} ({:.1} bytes per byte); {:.2} s",
                    name,
                    fmt_bytes(r.len),
                    r.sites.join(", "),
                    fmt_bytes(spent(&owners, &sites)),
                    spent(&owners, &sites) as f64 / r.len.max(1) as f64,
                    secs
                );
                println!("{}", r.object);
            }
        }
        VaultCommand::Get { id, output } => {
            let spin = super::progress::spinner(&format!("rebuilding {id} from its shares"));
            let g = client::get(&mut owners[0], &mut sites, &id);
            spin.finish_and_clear();
            let g = g?;
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
                        "corrupted": g.corrupted, "qkd_key_bytes": spent(&owners, &sites), "seconds": secs,
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
                    fmt_bytes(spent(&owners, &sites)),
                    secs
                );
            }
        }
        VaultCommand::Ls => {
            let (all, unreachable) = client::list_reporting(&mut sites)?;
            for u in &unreachable {
                eprintln!("warning: site {u}");
            }
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
            if super::mpc::refresh_table(&id, &mut owners[0], &mut sites, args.json)? {
                return Ok(());
            }
            client::refresh(&mut sites, &id)?;
            println!(
                "{id}: every share re-randomised; QKD key spent: {}",
                fmt_bytes(spent(&owners, &sites))
            );
        }
        VaultCommand::Repair { id, site } => {
            client::repair(&mut sites, &id, &site)?;
            println!(
                "{id}: share of {site} rebuilt; QKD key spent: {}",
                fmt_bytes(spent(&owners, &sites))
            );
        }
        VaultCommand::PutDir {
            dir: root,
            index,
            k,
            n,
        } => {
            kagi_sharing::Params::new(k, n)?;
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
            let bar = super::progress::bar(files.len() as u64, "files stored");
            for f in &files {
                let data = Key::from_vec(std::fs::read(f)?);
                let rel = f
                    .strip_prefix(&root)
                    .unwrap_or(f)
                    .to_string_lossy()
                    .into_owned();
                let r = client::put_with(&mut owners, &mut sites, &rel, data.expose(), k, n)
                    .with_context(|| format!("put {rel}"))?;
                total += r.len;
                entries.insert(rel, serde_json::Value::String(r.object));
                bar.inc(1);
            }
            bar.finish_and_clear();
            std::fs::write(&index, serde_json::to_vec_pretty(&entries)?)?;
            eprintln!(
                "stored {} files ({}) as {k}-of-{n}; QKD key spent: {}; {:.1} s; index: {}",
                files.len(),
                fmt_bytes(total),
                fmt_bytes(spent(&owners, &sites)),
                started.elapsed().as_secs_f64(),
                index.display()
            );
        }
        VaultCommand::GetDir { index, output } => {
            let entries: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&std::fs::read(&index)?)?;
            let mut total = 0u64;
            let mut missing_sites = std::collections::BTreeSet::new();
            let bar = super::progress::bar(entries.len() as u64, "files restored");
            for (rel, id) in &entries {
                bar.inc(1);
                let id = id.as_str().context("index entries are object IDs")?;
                let g = client::get(&mut owners[0], &mut sites, id)
                    .with_context(|| format!("get {rel}"))?;
                missing_sites.extend(g.missing.iter().cloned());
                let path = output.join(rel);
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::write(&path, g.data.expose())?;
                total += g.data.len() as u64;
            }
            bar.finish_and_clear();
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
                fmt_bytes(spent(&owners, &sites)),
                started.elapsed().as_secs_f64()
            );
        }
        VaultCommand::Sites
        | VaultCommand::Site { .. }
        | VaultCommand::DemoRecords { .. }
        | VaultCommand::PutTable(_) => {}
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
