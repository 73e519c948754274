//! `kagi keys status|get|retrieve`: a friendly ETSI GS QKD 014 client for a network started by
//! `kagi up` (it reads `DIR/network.json` to find each SAE's node, certificate and key).
//!
//! Key bytes are printed because that is what the user asked for: `get` and `retrieve` exist to
//! show keys. Nothing else in kagi prints them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use kagi_km::app::DeliveredKey;
use kagi_node::client::Etsi014Client;
use kagi_node::etsi014::wire;
use serde_json::json;
use uuid::Uuid;

use super::up::NetworkFile;

/// Arguments of `kagi keys`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the network (where `kagi up` wrote network.json).
    #[arg(long, global = true, default_value = "./kagi-data")]
    pub data_dir: PathBuf,
    /// Print the standard's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Keys available to master SAE `--sae` for slave `--slave` (ETSI 014 Get status).
    Status {
        /// The calling (master) SAE.
        #[arg(long)]
        sae: String,
        /// The slave SAE.
        #[arg(long)]
        slave: String,
    },
    /// New keys for master `--sae`, shared with `--slave` (ETSI 014 Get key).
    Get {
        /// The calling (master) SAE.
        #[arg(long)]
        sae: String,
        /// The slave SAE.
        #[arg(long)]
        slave: String,
        /// Number of keys.
        #[arg(long, short)]
        number: Option<u64>,
        /// Key size in bits (multiple of 8).
        #[arg(long, short)]
        size: Option<u64>,
        /// Further slaves that get the same keys (multicast); repeat or separate with commas.
        #[arg(long = "also", value_delimiter = ',')]
        also: Vec<String>,
    },
    /// Keys by ID for slave `--sae`, obtained by `--master` (ETSI 014 Get key with key IDs).
    Retrieve {
        /// The calling (slave) SAE.
        #[arg(long)]
        sae: String,
        /// The master SAE that obtained the keys.
        #[arg(long)]
        master: String,
        /// Key IDs.
        #[arg(required = true)]
        key_ids: Vec<Uuid>,
    },
}

fn client_for(dir: &Path, net: &NetworkFile, sae: &str) -> anyhow::Result<(Etsi014Client, String)> {
    let (node, entry) = net.find_sae(sae).with_context(|| {
        let known: Vec<&str> = net
            .nodes
            .iter()
            .flat_map(|n| n.saes.iter().map(|s| s.id.as_str()))
            .collect();
        format!(
            "SAE {sae:?} is not in {}; known SAEs: {}",
            dir.join("network.json").display(),
            known.join(", ")
        )
    })?;
    let c = Etsi014Client::from_files(
        &node.etsi014_url,
        &dir.join(&net.ca),
        &dir.join(&entry.cert),
        &dir.join(&entry.key),
    )?;
    Ok((c, node.id.clone()))
}

fn print_keys(keys: &[DeliveredKey], json_out: bool) -> anyhow::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if json_out {
        let c = wire::KeyContainer {
            keys: keys
                .iter()
                .map(|k| wire::KeyEntry {
                    key_ID: k.id.to_string(),
                    key_ID_extension: None,
                    key: b64.encode(k.key.expose()),
                    key_extension: None,
                })
                .collect(),
            key_container_extension: None,
        };
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        for k in keys {
            println!(
                "{}  {}  ({} bits)",
                k.id,
                b64.encode(k.key.expose()),
                k.key.len() * 8
            );
        }
    }
    Ok(())
}

/// Runs `kagi keys`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let net = NetworkFile::load(&args.data_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.command {
            KeysCommand::Status { sae, slave } => {
                let (c, node) = client_for(&args.data_dir, &net, &sae)?;
                let s = c.status(&slave).await?;
                if args.json {
                    let v = json!({
                        "source_KME_ID": s.source_kme_id,
                        "target_KME_ID": s.target_kme_id,
                        "master_SAE_ID": s.master_sae_id,
                        "slave_SAE_ID": s.slave_sae_id,
                        "key_size": s.key_size,
                        "stored_key_count": s.stored_key_count,
                        "max_key_count": s.max_key_count,
                        "max_key_per_request": s.max_key_per_request,
                        "max_key_size": s.max_key_size,
                        "min_key_size": s.min_key_size,
                        "max_SAE_ID_count": s.max_sae_id_count,
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("{} ({node}) -> {} ({})", s.master_sae_id, s.slave_sae_id, s.target_kme_id);
                    println!("  keys ready:        {} of {} ({} bits each)", s.stored_key_count, s.max_key_count, s.key_size);
                    println!("  per request:       up to {} keys of {}..{} bits", s.max_key_per_request, s.min_key_size, s.max_key_size);
                    println!("  multicast:         up to {} additional slaves", s.max_sae_id_count);
                }
            }
            KeysCommand::Get { sae, slave, number, size, also } => {
                let (c, _) = client_for(&args.data_dir, &net, &sae)?;
                let req = wire::KeyRequest {
                    number,
                    size,
                    additional_slave_sae_ids: (!also.is_empty()).then_some(also),
                    ..Default::default()
                };
                let keys = c.enc_keys(&slave, &req).await?;
                print_keys(&keys, args.json)?;
                if !args.json {
                    let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
                    eprintln!(
                        "# the slave fetches them with: kagi keys retrieve --data-dir {} --sae {slave} --master {sae} {}",
                        args.data_dir.display(),
                        ids.join(" ")
                    );
                }
            }
            KeysCommand::Retrieve { sae, master, key_ids } => {
                let (c, _) = client_for(&args.data_dir, &net, &sae)?;
                let keys = c.dec_keys(&master, &key_ids).await?;
                print_keys(&keys, args.json)?;
            }
        }
        Ok(())
    })
}
