//! `kagi mpc query|tables|demo-table` and `kagi vault put-table`: tables in three-party
//! replicated shares at three storage sites, and queries the sites compute on the shares
//! (crates/mpc, crates/vault `tables` and `net::mpc`). Only the owner gets a result; every
//! result shows the QKD key it spent, per link, and the time it took.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kagi_mpc::query::{parse, plan, DEFAULT_MIN_GROUP};
use kagi_mpc::table::{encode_csv, os_words, parse_schema, share_table};
use kagi_mpc::Security;
use kagi_vault::api::SiteApi;
use kagi_vault::keys::KeySupply;
use kagi_vault::net::mpc::{query_table, Channel};
use kagi_vault::net::{EtsiKeys, RemoteSite};
use kagi_vault::tables::{seal_share, TableManifest};

use super::up::NetworkFile;
use super::vault::{fmt_bytes, owner_keys, remote_sites, site_specs, SiteSpec};

/// Arguments of `kagi vault put-table`.
#[derive(clap::Args, Debug)]
pub struct PutTableArgs {
    /// The CSV file (a header row, then one row per line).
    pub csv: PathBuf,
    /// Column types: `name:int`, `name:fixed(D)`, `name:cat(A|B|C)` or `name:cat`, comma-separated.
    #[arg(long)]
    pub schema: String,
    /// Name of the table (default: the file name).
    #[arg(long)]
    pub name: Option<String>,
    /// The three sites (SAE IDs, comma-separated; default: the first three).
    #[arg(long)]
    pub sites: Option<String>,
}

/// Arguments of `kagi mpc`.
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
    #[command(subcommand)]
    pub command: MpcCommand,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum MpcCommand {
    /// Run a query on a shared table: `count`, `sum(c)`, `mean(c)`, `var(c)`, `stddev(c)`,
    /// `count(c)`, `histogram(c, lo, hi, bins)`, `WHERE` (comparisons, `=`/`IN` on categories,
    /// AND/OR/NOT), `GROUP BY` a categorical column.
    Query {
        /// Table name or ID.
        table: String,
        /// The query, e.g. `"mean(hba1c) where dx = E11 group by age_band"`.
        expr: String,
        /// Party channels: `its` (one-time pad + Wegman–Carter with QKD key, over TLS) or `tls`.
        #[arg(long, default_value = "its")]
        channel: String,
        /// Semi-honest security (default: malicious with abort — a cheating site is caught).
        #[arg(long)]
        semi_honest: bool,
        /// Smallest number of rows behind any released aggregate (sites may require more).
        #[arg(long, default_value_t = DEFAULT_MIN_GROUP)]
        min_group: u64,
    },
    /// List the owner's shared tables and their columns.
    Tables,
    /// Write the synthetic EMR patients as a CSV table and print its schema.
    DemoTable {
        /// Output CSV.
        #[arg(long)]
        out: PathBuf,
        /// Patients.
        #[arg(long, default_value_t = 10_000)]
        patients: usize,
        /// Seed (same as `kagi vault demo-records`).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `kagi vault put-table`.
pub fn put_table(
    a: &PutTableArgs,
    _net: &NetworkFile,
    specs: &[SiteSpec],
    owner: &mut EtsiKeys,
    sites: &mut [RemoteSite],
    json: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let spec = parse_schema(&a.schema)?;
    let text =
        std::fs::read_to_string(&a.csv).with_context(|| format!("read {}", a.csv.display()))?;
    let t = encode_csv(&text, &spec)?;
    let chosen: Vec<String> = match &a.sites {
        Some(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
        None => specs.iter().take(3).map(|s| s.sae.clone()).collect(),
    };
    if chosen.len() != 3 {
        bail!(
            "a table is shared among exactly three sites; the network has {}",
            specs.len()
        );
    }
    let mut idx = Vec::new();
    for c in &chosen {
        idx.push(
            sites
                .iter()
                .position(|s| s.id() == c)
                .with_context(|| format!("unknown site {c} (see `kagi vault sites`)"))?,
        );
    }
    let name = a.name.clone().unwrap_or_else(|| {
        a.csv
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let manifest = TableManifest {
        object: uuid::Uuid::new_v4().to_string(),
        name,
        owner: owner.sae().to_string(),
        sites: chosen.clone(),
        schema: t.schema.clone(),
        epoch: 0,
    };
    let shares = share_table(&t, &mut os_words());
    let before = owner.key_bytes_used();
    let mut put = || -> anyhow::Result<()> {
        for (p, &i) in idx.iter().enumerate() {
            let env = seal_share(owner, &manifest, &shares[p])?;
            sites[i].request("POST", "/v1/tables/put", env.0)?;
        }
        for &i in &idx {
            sites[i].request(
                "POST",
                &format!("/v1/tables/{}/commit", manifest.object),
                Vec::new(),
            )?;
        }
        Ok(())
    };
    if let Err(e) = put() {
        for &i in &idx {
            let _ = sites[i].request(
                "POST",
                &format!("/v1/tables/{}/abort", manifest.object),
                Vec::new(),
            );
        }
        return Err(e.context("put-table failed; the partial table was rolled back"));
    }
    let spent = owner.key_bytes_used() - before;
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"table": manifest.object, "name": manifest.name, "rows": t.schema.rows,
                "stored_columns": t.stored.len(), "sites": chosen, "qkd_key_bytes": spent, "seconds": secs})
        );
    } else {
        eprintln!(
            "shared {} ({} rows, {} stored columns) at {}; QKD key spent: {}; {:.2} s",
            manifest.name,
            t.schema.rows,
            t.stored.len(),
            chosen.join(", "),
            fmt_bytes(spent),
            secs
        );
        println!("{}", manifest.object);
    }
    Ok(())
}

/// Moves the table's three sites out of `sites`, in the table's party order.
fn take_table_sites(
    sites: &mut Vec<RemoteSite>,
    m: &TableManifest,
) -> anyhow::Result<Vec<RemoteSite>> {
    m.sites
        .iter()
        .map(|s| {
            let i = sites
                .iter()
                .position(|x| x.id() == s)
                .with_context(|| format!("site {s} of the table is not in network.json"))?;
            Ok(sites.remove(i))
        })
        .collect()
}

/// `kagi vault refresh ID` when ID names a table: re-randomises the table's shares at its three
/// sites. Returns `false` (and does nothing) if no site holds a table with that ID or name.
pub fn refresh_table(
    id: &str,
    owner: &mut EtsiKeys,
    sites: &mut Vec<RemoteSite>,
    json: bool,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let Some(m) = tables_of(sites)?
        .into_iter()
        .find(|m| m.object == id || m.name == id)
    else {
        return Ok(false);
    };
    let mut chosen = take_table_sites(sites, &m)?;
    let before = owner.key_bytes_used() + chosen.iter().map(SiteApi::key_bytes_used).sum::<u64>();
    let spin = super::progress::spinner(&format!(
        "refreshing table {} ({} rows) at {}",
        m.name,
        m.schema.rows,
        m.sites.join(", ")
    ));
    let r = kagi_vault::net::table_refresh::refresh_table(&mut chosen, owner, &m);
    spin.finish_and_clear();
    let epoch = r.context("table refresh failed; the table is unchanged (a retry settles it)")?;
    let spent =
        owner.key_bytes_used() + chosen.iter().map(SiteApi::key_bytes_used).sum::<u64>() - before;
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"table": m.object, "name": m.name, "epoch": epoch,
                "qkd_key_bytes": spent, "seconds": secs})
        );
    } else {
        println!(
            "{} (table {}): every share re-randomised, now refresh epoch {epoch}; QKD key spent: {}; {:.2} s",
            m.object,
            m.name,
            fmt_bytes(spent),
            secs
        );
    }
    Ok(true)
}

fn tables_of(sites: &mut [RemoteSite]) -> anyhow::Result<Vec<TableManifest>> {
    let mut all: Vec<TableManifest> = Vec::new();
    for s in sites.iter_mut() {
        let b = match s.request("GET", "/v1/tables", Vec::new()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("warning: site {}: {e}", s.id());
                continue;
            }
        };
        let v: Vec<TableManifest> = serde_json::from_slice(&b)?;
        for m in v {
            if !all.iter().any(|x| x.object == m.object) {
                all.push(m);
            }
        }
    }
    Ok(all)
}

/// Runs `kagi mpc`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let MpcCommand::DemoTable {
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
        std::fs::write(out, kagi_sharing::demo_emr::patient_table_csv(&cfg))?;
        eprintln!(
            "{patients} synthetic patients -> {}; schema:",
            out.display()
        );
        println!("{}", kagi_sharing::demo_emr::PATIENT_SCHEMA);
        return Ok(());
    }
    let dir = &args.data_dir;
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
    let specs = site_specs(dir, &net)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let wait = Duration::from_secs(600);
    let mut sites = remote_sites(dir, &net, &specs, &owner_sae, rt.handle(), wait)?;
    match args.command {
        MpcCommand::DemoTable { .. } => Ok(()),
        MpcCommand::Tables => {
            let all = tables_of(&mut sites)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for m in &all {
                    let cols: Vec<String> = m
                        .schema
                        .columns
                        .iter()
                        .map(|c| {
                            format!(
                                "{}:{}",
                                c.name,
                                serde_json::to_string(&c.ty).unwrap_or_default()
                            )
                        })
                        .collect();
                    println!(
                        "{}  {:<20} {:>7} rows  at {}  columns {}",
                        m.object,
                        m.name,
                        m.schema.rows,
                        m.sites.join(","),
                        cols.join(" ")
                    );
                }
            }
            Ok(())
        }
        MpcCommand::Query {
            table,
            expr,
            channel,
            semi_honest,
            min_group,
        } => {
            let channel = match channel.as_str() {
                "its" => Channel::Its,
                "tls" => Channel::Tls,
                other => bail!("--channel {other:?}: expected its or tls"),
            };
            let security = if semi_honest {
                Security::SemiHonest
            } else {
                Security::Malicious
            };
            // Syntax first: a malformed query fails before any site is contacted.
            let query = parse(&expr)?;
            let all = tables_of(&mut sites)?;
            let m = all
                .iter()
                .find(|m| m.object == table || m.name == table)
                .with_context(|| format!("no table {table:?} (see `kagi mpc tables`)"))?
                .clone();
            plan(&m.schema, &query)?;
            let mut owner = owner_keys(dir, &net, &owner_sae, rt.handle(), wait)?;
            let mut chosen = take_table_sites(&mut sites, &m)?;
            let security_name = if semi_honest {
                "semi-honest"
            } else {
                "malicious"
            };
            let channel_name = if channel == Channel::Its {
                "one-time-pad"
            } else {
                "TLS"
            };
            // The sites compute in one exchange each: a spinner with the time elapsed (on a
            // terminal only) shows that a key-bound query is waiting, not stuck.
            let spin = super::progress::spinner(&format!(
                "{} on {} ({} rows) at {}: {security_name} security, {channel_name} channels",
                expr,
                m.name,
                m.schema.rows,
                m.sites.join(", "),
            ));
            let out = query_table(
                &mut chosen,
                &mut owner,
                &m,
                &query,
                security,
                channel,
                min_group,
            );
            spin.finish_and_clear();
            let out = out?;
            let total: u64 = out.key_spent_bytes.values().sum::<u64>() + owner.key_bytes_used();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "result": out.result,
                        "key_spent_bytes": out.key_spent_bytes,
                        "bytes_sent": out.bytes_sent,
                        "elapsed_s": out.elapsed_s,
                        "work": out.work,
                        "security": security_name,
                        "channel": if channel == Channel::Its { "its" } else { "tls" },
                    })
                );
            } else {
                println!("{}", serde_json::to_string_pretty(&out.result)?);
                eprintln!(
                    "{security_name} security, {channel_name} channels, {:.2} s; QKD key spent: {} in all",
                    out.elapsed_s,
                    fmt_bytes(total)
                );
                eprintln!(
                    "  work per site: {} AND gates, {} 64-bit multiplications, {} rounds",
                    out.work.ands, out.work.mults, out.work.rounds
                );
                for (link, b) in &out.key_spent_bytes {
                    eprintln!("  {link:<40} {}", fmt_bytes(*b));
                }
            }
            Ok(())
        }
    }
}
