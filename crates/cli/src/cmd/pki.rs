//! `kagi pki`: certificate revocation for a network's CA (the one `kagi up` creates), and the
//! nodes' link-state advert signing keys.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use kagi_node::pki::Pki;
use kagi_node::revocation::{self, Revoked};

/// Arguments of `kagi pki`.
#[derive(ClapArgs)]
pub struct Args {
    /// The network's data directory (its CA is `DATA_DIR/pki`).
    #[arg(long, default_value = "kagi-data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Revoke a certificate: every node refuses it on its next handshake, without a restart.
    Revoke {
        /// A node's certificate, by node ID.
        #[arg(long, conflicts_with_all = ["sae", "cert"])]
        node: Option<String>,
        /// An SAE's certificate, by SAE ID.
        #[arg(long, conflicts_with = "cert")]
        sae: Option<String>,
        /// Any certificate file issued by this CA.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
    /// List revoked certificates.
    Revoked,
    /// Issue each node of the topology a link-state advert signing key (ML-DSA-65; existing
    /// keys are kept) and write the file of every node's public key. Point each node.toml's
    /// `[link_state]` at its key and that file (`kagi up` does this itself).
    AdvertKeys {
        /// The topology (default: DATA_DIR/topology.toml).
        #[arg(long)]
        topology: Option<PathBuf>,
    },
}

/// Runs `kagi pki`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.data_dir.join("pki");
    anyhow::ensure!(
        dir.join("ca.pem").exists(),
        "no CA at {} (start a network with kagi up first, or pass --data-dir)",
        dir.display()
    );
    let pki = Pki::open_or_create(&dir)?;
    match args.command {
        PkiCommand::Revoke { node, sae, cert } => {
            let path = match (node, sae, cert) {
                (Some(n), None, None) => pki.node_paths(&n).cert,
                (None, Some(s), None) => pki.sae_paths(&s).cert,
                (None, None, Some(c)) => c,
                _ => anyhow::bail!("name exactly one of --node, --sae or --cert"),
            };
            anyhow::ensure!(path.exists(), "no certificate at {}", path.display());
            let r = revocation::revoke(&pki, &path)
                .with_context(|| format!("revoking {}", path.display()))?;
            println!(
                "revoked {} (serial {}); {} updated",
                r.subject,
                r.serial,
                revocation::crl_path(&pki.ca_cert_path()).display()
            );
        }
        PkiCommand::AdvertKeys { topology } => {
            let path = topology.unwrap_or_else(|| args.data_dir.join("topology.toml"));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let topo = kagi_control::Topology::from_toml(&text)
                .with_context(|| format!("topology {}", path.display()))?;
            let file = pki.ensure_advert_keys(topo.nodes.iter().map(|n| n.id.as_str()))?;
            for n in &topo.nodes {
                println!("{}\t{}", n.id, pki.advert_key_path(&n.id).display());
            }
            println!(
                "public keys of all {} nodes: {}",
                topo.nodes.len(),
                file.display()
            );
        }
        PkiCommand::Revoked => {
            let list: Vec<Revoked> = match std::fs::read_to_string(dir.join("revoked.json")) {
                Ok(t) => serde_json::from_str(&t)?,
                Err(_) => Vec::new(),
            };
            if list.is_empty() {
                println!("no certificate is revoked");
            }
            for r in list {
                println!("{}\t{}\t{}", r.serial, r.subject, r.revoked_unix);
            }
        }
    }
    Ok(())
}
