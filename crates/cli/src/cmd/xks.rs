//! `kagi xks init|serve|key|audit`: an AWS KMS external key store (XKS proxy API v1) over a
//! network started with `kagi up --vault` (crates/xks).
//!
//! Files, under the data directory's `xks/`:
//!
//! ```text
//! proxy.json         listen address, region, TLS, mTLS, idle zeroize time, the vault behind it
//! credentials.json   SigV4 credentials per URI path (re-read while the proxy runs)
//! keys.json          the key registry (IDs, states, vault objects; no key bytes)
//! proxy-audit.jsonl  the proxy's signed audit trail (every XKS call; kagi's trail format)
//! keys-audit.jsonl   the same for key lifecycle commands
//! *-audit.pub        the trails' ML-DSA-65 public key; xks-seal.db + xks.kek its sealed private key
//! proxy.log/.pid     the proxy process started by `kagi up --xks`
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kagi_xks::audit::Audit;
use kagi_xks::backend::Backend;
use kagi_xks::config::{ProxyConfig, SiteRef, VaultConfig};
use kagi_xks::creds::{Credentials, UriPath};
use kagi_xks::registry::{check_key_id, KeyRecord, KeyStatus, Registry};
use kagi_xks::vault_backend::VaultBackend;
use serde_json::json;

use super::up::NetworkFile;

/// Arguments of `kagi xks`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the network (where `kagi up` wrote network.json).
    #[arg(long, global = true, default_value = "./kagi-data")]
    pub data_dir: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: XksCommand,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum XksCommand {
    /// Write xks/proxy.json, credentials (two sets) and a TLS certificate for a proxy over the
    /// network's vault sites (kept if they exist).
    Init {
        /// Shares needed to rebuild a key.
        #[arg(long, default_value_t = 3)]
        k: u8,
        /// Shares per key.
        #[arg(long, default_value_t = 5)]
        n: u8,
        /// XksProxyUriPath to serve.
        #[arg(long, default_value = "/kms/xks/v1")]
        uri_path: String,
        /// Port (default: the previous one if free, else any free port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Run the proxy (normally started by `kagi up --xks`).
    Serve {
        /// Exit when the parent process goes away.
        #[arg(long)]
        exit_with_parent: bool,
    },
    /// Key lifecycle.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Check the hash chains of the audit trails.
    AuditVerify,
}

/// `kagi xks key …`.
#[derive(clap::Subcommand, Debug)]
pub enum KeyAction {
    /// Make a key from QKD key and store it k-of-n at the vault sites; prints its ID.
    Create {
        /// The externalKeyId (default: a random UUID).
        #[arg(long)]
        id: Option<String>,
    },
    /// Disable: metadata says DISABLED, encrypt/decrypt get InvalidStateException.
    Disable {
        /// Key ID.
        id: String,
    },
    /// Enable a disabled key.
    Enable {
        /// Key ID.
        id: String,
    },
    /// Revoke: destroy every share; the key can never be rebuilt and nothing it encrypted can
    /// be decrypted.
    Revoke {
        /// Key ID.
        id: String,
    },
    /// List keys.
    List,
}

/// Paths of the proxy's files.
pub struct XksPaths {
    /// proxy.json.
    pub config: PathBuf,
    /// Log of the proxy process.
    pub log: PathBuf,
    /// Its pid.
    pub pid: PathBuf,
}

/// Where the proxy's files live in `dir`.
pub fn paths(dir: &Path) -> XksPaths {
    let x = dir.join("xks");
    XksPaths {
        config: x.join("proxy.json"),
        log: x.join("proxy.log"),
        pid: x.join("proxy.pid"),
    }
}

fn load(dir: &Path) -> anyhow::Result<ProxyConfig> {
    let p = paths(dir).config;
    if !p.exists() {
        bail!(
            "no {} — run `kagi xks init --data-dir {}` on a network started with `kagi up --vault` (or use `kagi up --vault --xks`)",
            p.display(),
            dir.display()
        );
    }
    ProxyConfig::load(&p, dir)
}

/// What `init` made: the config and the first credential set (for network.json).
pub struct Init {
    /// The proxy's URL (`https://127.0.0.1:PORT` + URI path).
    pub url: String,
    /// Region.
    pub region: String,
    /// First access key ID.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// Port.
    pub port: u16,
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn free_port(taken: &[u16]) -> anyhow::Result<u16> {
    Ok(kagi_node::loopback::free_port_except(taken)?)
}

/// `kagi xks init`: config, credentials and certificate (existing credentials and keys kept).
pub fn init(
    dir: &Path,
    net: &NetworkFile,
    k: u8,
    n: u8,
    uri_path: &str,
    port: Option<u16>,
    taken: &[u16],
) -> anyhow::Result<Init> {
    kagi_xks::creds::check_uri_path(uri_path).map_err(anyhow::Error::msg)?;
    if net.vault_sites.is_empty() {
        bail!("the network has no vault sites: start it with `kagi up --vault`");
    }
    if k == 0 || k > n || usize::from(n) > net.vault_sites.len() {
        bail!("need 1 <= k <= n <= {} (sites)", net.vault_sites.len());
    }
    // The proxy's SAE: the first node's second SAE (no vault site uses it), else its first.
    let node = net.nodes.first().context("network.json lists no node")?;
    let sae = node
        .saes
        .get(1)
        .or(node.saes.first())
        .context("the first node has no SAE")?;
    let xdir = dir.join("xks");
    std::fs::create_dir_all(&xdir)?;
    let old = ProxyConfig::load(&paths(dir).config, dir).ok();
    let port = match port {
        Some(p) => p,
        None => old
            .as_ref()
            .and_then(|c| c.listen.rsplit_once(':')?.1.parse::<u16>().ok())
            .filter(|p| {
                !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
            })
            .map_or_else(|| free_port(taken), Ok)?,
    };
    let pki = kagi_node::pki::Pki::open_or_create(&dir.join("pki"))?;
    let issued = pki.issue_node("xks-proxy")?;
    let pdir = dir.join("pki").join("xks");
    std::fs::create_dir_all(&pdir)?;
    write_private(&pdir.join("xks-proxy-key.pem"), issued.key_pem.as_bytes())?;
    std::fs::write(pdir.join("xks-proxy.pem"), issued.cert_pem.as_bytes())?;
    let creds_path = xdir.join("credentials.json");
    let mut creds = Credentials::load(&creds_path).unwrap_or_default();
    if !creds.uri_paths.iter().any(|p| p.uri_path == uri_path) {
        // Two sets from the start, so that rotation never needs a restart.
        creds.uri_paths.push(UriPath {
            uri_path: uri_path.to_string(),
            credentials: vec![Credentials::generate(), Credentials::generate()],
        });
        write_private(&creds_path, &serde_json::to_vec_pretty(&creds)?)?;
    }
    let first = creds
        .uri_paths
        .iter()
        .find(|p| p.uri_path == uri_path)
        .and_then(|p| p.credentials.first())
        .context("no credentials for the URI path")?
        .clone();
    let cfg = ProxyConfig {
        listen: format!("127.0.0.1:{port}"),
        region: old
            .as_ref()
            .map_or_else(|| "us-east-1".to_string(), |c| c.region.clone()),
        credentials: "xks/credentials.json".into(),
        registry: "xks/keys.json".into(),
        audit: "xks/proxy-audit.jsonl".into(),
        tls_cert: "pki/xks/xks-proxy.pem".into(),
        tls_key: "pki/xks/xks-proxy-key.pem".into(),
        mtls: None,
        idle_zeroize_secs: old.as_ref().map_or(300, |c| c.idle_zeroize_secs),
        vault: VaultConfig {
            owner_sae: sae.id.clone(),
            etsi014_url: node.etsi014_url.clone(),
            ca: net.ca.clone().into(),
            cert: sae.cert.clone().into(),
            key: sae.key.clone().into(),
            sites: net
                .vault_sites
                .iter()
                .map(|s| SiteRef {
                    id: s.id.clone(),
                    url: s.url.clone(),
                })
                .collect(),
            k,
            n,
            key_wait_ms: 3000,
        },
    };
    std::fs::write(paths(dir).config, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(Init {
        url: format!("https://127.0.0.1:{port}{uri_path}"),
        region: cfg.region,
        access_key_id: first.access_key_id,
        secret_access_key: first.secret_access_key,
        port,
    })
}

/// Creates a key (blocking; call outside async context): returns its record.
pub fn create_key(
    dir: &Path,
    id: Option<String>,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<KeyRecord> {
    let cfg = load(dir)?;
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if !check_key_id(&id) {
        bail!("key ID {id:?}: 1-128 characters from A-Z a-z 0-9 - . _");
    }
    let mut reg = Registry::load(&cfg.registry).map_err(anyhow::Error::msg)?;
    if reg.get(&id).is_some() {
        bail!("key {id} exists already (IDs are never reused, even after revoke)");
    }
    let backend = VaultBackend::new(cfg.vault.clone(), handle)?;
    let c = backend
        .create(&id)
        .with_context(|| format!("create key {id}"))?;
    let now = kagi_xks::time::now_unix();
    let rec = KeyRecord {
        id: id.clone(),
        object: c.object,
        status: KeyStatus::Enabled,
        created_unix: now,
        changed_unix: now,
        k: c.k,
        n: c.n,
        sites: c.sites,
        qkd_key_bytes: c.qkd_key_bytes,
    };
    reg.keys.push(rec.clone());
    reg.save(&cfg.registry)?;
    lifecycle_record(
        dir,
        json!({"op": "key.create", "key": id, "object": rec.object, "k": rec.k, "n": rec.n, "sites": rec.sites, "qkd_key_bytes": rec.qkd_key_bytes}),
    )?;
    Ok(rec)
}

/// Records one key lifecycle event in the signed `keys` trail and closes it with a checkpoint.
fn lifecycle_record(dir: &Path, event: serde_json::Value) -> anyhow::Result<()> {
    let audit = Audit::open(&kagi_xks::audit::trail_path(&dir.join("xks"), "keys"))?;
    audit.record(event).map_err(anyhow::Error::msg)?;
    audit.close().map_err(anyhow::Error::msg)
}

fn set_status(dir: &Path, id: &str, to: KeyStatus) -> anyhow::Result<KeyRecord> {
    let cfg = load(dir)?;
    let mut reg = Registry::load(&cfg.registry).map_err(anyhow::Error::msg)?;
    let rec = reg
        .get_mut(id)
        .with_context(|| format!("no key {id:?} (see `kagi xks key list`)"))?;
    if rec.status == KeyStatus::Revoked && to != KeyStatus::Revoked {
        bail!("key {id} is revoked; its shares are destroyed and it cannot change state again");
    }
    rec.status = to;
    rec.changed_unix = kagi_xks::time::now_unix();
    let rec = rec.clone();
    reg.save(&cfg.registry)?;
    Ok(rec)
}

fn run_serve(dir: &Path, exit_with_parent: bool) -> anyhow::Result<()> {
    let cfg = load(dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let backend: Arc<dyn Backend> =
        Arc::new(VaultBackend::new(cfg.vault.clone(), rt.handle().clone())?);
    let creds = Credentials::load(&cfg.credentials).map_err(anyhow::Error::msg)?;
    let reg = Registry::load(&cfg.registry).map_err(anyhow::Error::msg)?;
    let audit =
        Audit::open(&cfg.audit).with_context(|| format!("audit trail {}", cfg.audit.display()))?;
    let tls = kagi_xks::server::tls_config(&cfg.tls_cert, &cfg.tls_key, cfg.mtls.as_ref())?;
    let proxy = Arc::new(kagi_xks::proxy::Proxy::new(
        kagi_xks::proxy::ProxySettings {
            region: None,
            idle_zeroize: Duration::from_secs(cfg.idle_zeroize_secs),
        },
        creds,
        Some(cfg.credentials.clone()),
        reg,
        Some(cfg.registry.clone()),
        backend,
        audit,
    ));
    rt.block_on(async move {
        proxy.spawn_maintenance(Duration::from_millis(200));
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        eprintln!(
            "kagi xks: XKS proxy API v1 on https://{} (keys shared {}-of-{} at {} vault sites, owner SAE {})",
            cfg.listen,
            cfg.vault.k,
            cfg.vault.n,
            cfg.vault.sites.len(),
            cfg.vault.owner_sae
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
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
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
        let served = kagi_xks::server::serve(listener, tls, proxy.clone(), stop).await;
        // A clean stop ends the trail on a signed checkpoint.
        if let Err(e) = proxy.audit().close() {
            eprintln!("kagi xks: cannot close the audit trail: {e}");
        }
        served
    })
}

/// Runs `kagi xks`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    match args.command {
        XksCommand::Serve { exit_with_parent } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .try_init();
            run_serve(dir, exit_with_parent)
        }
        XksCommand::Init {
            k,
            n,
            uri_path,
            port,
        } => {
            let net = NetworkFile::load(dir)?;
            let i = init(dir, &net, k, n, &uri_path, port, &[])?;
            if args.json {
                println!(
                    "{}",
                    json!({"url": i.url, "region": i.region, "access_key_id": i.access_key_id, "secret_access_key": i.secret_access_key})
                );
            } else {
                println!("XKS proxy configured: {} (region {}); start it with `kagi xks serve --data-dir {}`", i.url, i.region, dir.display());
                println!(
                    "credentials: {}",
                    dir.join("xks/credentials.json").display()
                );
            }
            Ok(())
        }
        XksCommand::AuditVerify => {
            let reports = kagi_xks::audit::verify(&dir.join("xks"));
            let mut bad = reports.is_empty();
            for r in &reports {
                let p = r.path.as_deref().unwrap_or(Path::new("?")).display();
                match &r.problem {
                    None => println!(
                        "{p}: {} entries, chain intact, {} signed checkpoints verify",
                        r.entries, r.checkpoints
                    ),
                    Some(pr) => {
                        bad = true;
                        println!("{p}: BROKEN at entry {}: {}", pr.line, pr.why);
                    }
                }
            }
            if bad {
                bail!("audit trail missing, tampered with or damaged");
            }
            Ok(())
        }
        XksCommand::Key { action } => key(dir, args.json, action),
    }
}

fn print_record(r: &KeyRecord, json_out: bool) {
    if json_out {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        println!(
            "{:<40} {:<9} {}-of-{} at {}  QKD key spent {} B",
            r.id,
            r.status.as_str(),
            r.k,
            r.n,
            r.sites.join(","),
            r.qkd_key_bytes
        );
    }
}

fn key(dir: &Path, json_out: bool, action: KeyAction) -> anyhow::Result<()> {
    match action {
        KeyAction::Create { id } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let d = dir.to_owned();
            let rec = std::thread::spawn(move || create_key_owned(d, id, handle))
                .join()
                .map_err(|_| anyhow::anyhow!("key creation panicked"))??;
            if json_out {
                print_record(&rec, true);
            } else {
                eprintln!(
                    "created key {} from QKD key, stored {}-of-{} at {}; QKD key spent: {} bytes",
                    rec.id,
                    rec.k,
                    rec.n,
                    rec.sites.join(", "),
                    rec.qkd_key_bytes
                );
                println!("{}", rec.id);
            }
            Ok(())
        }
        KeyAction::Disable { id } => {
            let r = set_status(dir, &id, KeyStatus::Disabled)?;
            lifecycle_record(dir, json!({"op": "key.disable", "key": id}))?;
            print_record(&r, json_out);
            Ok(())
        }
        KeyAction::Enable { id } => {
            let r = set_status(dir, &id, KeyStatus::Enabled)?;
            lifecycle_record(dir, json!({"op": "key.enable", "key": id}))?;
            print_record(&r, json_out);
            Ok(())
        }
        KeyAction::Revoke { id } => {
            // First the registry (a running proxy stops using the key and zeroizes it within
            // its poll interval), then the shares.
            let cfg = load(dir)?;
            let r = set_status(dir, &id, KeyStatus::Revoked)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let backend = VaultBackend::new(cfg.vault.clone(), rt.handle().clone())?;
            let object = r.object.clone();
            let res = std::thread::spawn(move || backend.destroy(&object))
                .join()
                .map_err(|_| anyhow::anyhow!("revoke panicked"))?;
            match res {
                Ok(sites) => {
                    lifecycle_record(
                        dir,
                        json!({"op": "key.revoke", "key": id, "destroyed_at": sites}),
                    )?;
                    if json_out {
                        println!(
                            "{}",
                            json!({"id": id, "status": "REVOKED", "destroyed_at": sites})
                        );
                    } else {
                        println!(
                            "{id}: revoked; shares destroyed at {}; it can never be rebuilt",
                            sites.join(", ")
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    lifecycle_record(
                        dir,
                        json!({"op": "key.revoke", "key": id, "incomplete": e.to_string()}),
                    )?;
                    bail!("{id}: marked revoked (the proxy refuses it), but not every share was destroyed: {e}; run the revoke again when the sites are back")
                }
            }
        }
        KeyAction::List => {
            let cfg = load(dir)?;
            let reg = Registry::load(&cfg.registry).map_err(anyhow::Error::msg)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&reg.keys)?);
            } else {
                for r in &reg.keys {
                    print_record(r, false);
                }
            }
            Ok(())
        }
    }
}

fn create_key_owned(
    dir: PathBuf,
    id: Option<String>,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<KeyRecord> {
    create_key(&dir, id, handle)
}

// ---- `kagi up --xks` ------------------------------------------------------------------------

/// The proxy as listed in `network.json` (`xks`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct XksInfo {
    /// Base URL including the URI path (`https://127.0.0.1:PORT/kms/xks/v1`).
    pub url: String,
    /// SigV4 region.
    pub region: String,
    /// An access key ID accepted on that URI path.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// External keys that are not revoked.
    pub key_ids: Vec<String>,
}

/// The proxy process started by `kagi up --xks`.
pub struct ProxyChild {
    /// The process.
    pub proc: tokio::process::Child,
    /// Its pid file.
    pub pid_file: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

/// Configures (keeping earlier credentials and keys) and starts `kagi xks serve` beside a
/// network whose vault sites are up, waits until it listens, and creates a key if none is usable.
pub async fn start_for_up(dir: &Path, net: &NetworkFile) -> anyhow::Result<(XksInfo, ProxyChild)> {
    let n = net.vault_sites.len().min(5) as u8;
    let k = n.min(3);
    let i = init(dir, net, k, n, "/kms/xks/v1", None, &[])?;
    let p = paths(dir);
    let mut cmd = super::child::kagi_child(&p.log)?;
    cmd.args(["xks", "serve", "--exit-with-parent", "--data-dir"])
        .arg(dir);
    let mut proc = cmd.spawn().context("cannot start the XKS proxy")?;
    if let Some(pid) = proc.id() {
        std::fs::write(&p.pid, format!("{pid}\n"))?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", i.port))
        .await
        .is_err()
    {
        if let Ok(Some(st)) = proc.try_wait() {
            bail!("the XKS proxy exited ({st}); see {}", p.log.display());
        }
        if std::time::Instant::now() > deadline {
            let _ = proc.start_kill();
            bail!(
                "the XKS proxy did not listen within 30 s; see {}",
                p.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = load(dir)?;
    let reg = Registry::load(&cfg.registry).map_err(anyhow::Error::msg)?;
    if !reg.keys.iter().any(|r| r.status != KeyStatus::Revoked) {
        let h = tokio::runtime::Handle::current();
        let d = dir.to_owned();
        let made = tokio::task::spawn_blocking(move || create_key(&d, None, h)).await;
        match made {
            Ok(Ok(r)) => println!(
                "kagi up: XKS key {} created from QKD key, {}-of-{} at the vault sites",
                r.id, r.k, r.n
            ),
            Ok(Err(e)) => {
                let _ = proc.start_kill();
                return Err(e.context("creating the first XKS key"));
            }
            Err(e) => {
                let _ = proc.start_kill();
                bail!("creating the first XKS key: {e}");
            }
        }
    }
    let reg = Registry::load(&cfg.registry).map_err(anyhow::Error::msg)?;
    let enabled: Vec<String> = reg
        .keys
        .iter()
        .filter(|r| r.status == KeyStatus::Enabled)
        .map(|r| r.id.clone())
        .collect();
    let spin = super::progress::spinner("XKS proxy: rebuilding its keys from the vault sites");
    let warmed = warm(
        &i.url,
        &dir.join(&net.ca),
        &i.region,
        &i.access_key_id,
        &i.secret_access_key,
        &enabled,
    )
    .await;
    spin.finish_and_clear();
    if let Err(e) = warmed {
        // The proxy still answers (with the spec's retryable 503 until key arrives): the network
        // is usable, only the first calls will wait.
        eprintln!("kagi up: warning: the XKS proxy could not rebuild its keys yet: {e:#}");
    }
    Ok((
        XksInfo {
            url: i.url,
            region: i.region,
            access_key_id: i.access_key_id,
            secret_access_key: i.secret_access_key,
            key_ids: reg
                .keys
                .iter()
                .filter(|r| r.status != KeyStatus::Revoked)
                .map(|r| r.id.clone())
                .collect(),
        },
        ProxyChild {
            proc,
            pid_file: p.pid,
            log: p.log,
        },
    ))
}

/// How long `kagi up` waits for the proxy to rebuild its keys before reporting ready anyway.
const WARM_LIMIT: Duration = Duration::from_secs(120);

/// Has the proxy rebuild each of `keys` once (one signed Encrypt each), retrying the spec's
/// retryable 503 while the vault channels refill. Creating a key draws QKD key on the channels
/// to every vault site, and the proxy's first rebuild needs key on the same channels; doing it
/// here means `kagi up` reports ready only once the proxy answers at once, instead of handing
/// the first callers `DependencyTimeoutException`.
async fn warm(
    url: &str,
    ca: &Path,
    region: &str,
    access_key_id: &str,
    secret: &str,
    keys: &[String],
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + WARM_LIMIT;
    let mut c =
        kagi_xks::client::XksClient::connect(url, ca, region, access_key_id, secret).await?;
    for key in keys {
        let body = json!({
            "requestMetadata": {
                "awsPrincipalArn": "arn:aws:iam::000000000000:user/kagi-up-warm-up",
                "kmsKeyArn": format!("arn:aws:kms:{region}:000000000000:key/kagi-up-warm-up"),
                "kmsOperation": "Encrypt",
                "kmsRequestId": format!("kagi-up-warm-up-{key}"),
            },
            "plaintext": kagi_xks::wire::encode(&[0u8; 32]),
            "encryptionAlgorithm": "AES_GCM",
        })
        .to_string();
        loop {
            let (status, answer) = c
                .call(&format!("/keys/{key}/encrypt"), body.as_bytes())
                .await?;
            if status == 200 {
                break;
            }
            let text = String::from_utf8_lossy(&answer);
            if status != 503 || std::time::Instant::now() > deadline {
                bail!("key {key}: encrypt answered {status}: {text}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// Prints how to call the proxy with curl.
pub fn print_banner(dir: &Path, net: &NetworkFile) {
    let Some(x) = &net.xks else { return };
    let key = x.key_ids.first().map_or("KEY_ID", String::as_str);
    println!(
        "\nAWS KMS external key store proxy (XKS API v1, SigV4, keys shared at the vault sites):"
    );
    println!(
        "  {}   region {}   keys: {}",
        x.url,
        x.region,
        x.key_ids.join(", ")
    );
    println!(
        "  curl --cacert {ca} --aws-sigv4 \"aws:amz:{r}:kms-xks-proxy\" --user {ak}:{sk} \\\n    -X POST -H \"Content-Type:application/json\" \\\n    --data '{{\"requestMetadata\":{{\"awsPrincipalArn\":\"arn:aws:iam::123456789012:user/Alice\",\"kmsKeyArn\":\"arn:aws:kms:{r}:123456789012:key/demo\",\"kmsOperation\":\"Encrypt\",\"kmsRequestId\":\"demo-1\"}},\"plaintext\":\"SGVsbG8gV29ybGQh\",\"encryptionAlgorithm\":\"AES_GCM\"}}' \\\n    {url}/keys/{key}/encrypt",
        ca = dir.join(&net.ca).display(),
        r = x.region,
        ak = x.access_key_id,
        sk = x.secret_access_key,
        url = x.url,
    );
    println!(
        "  Keys: kagi xks key list|create|disable|enable|revoke --data-dir {}",
        dir.display()
    );
}
