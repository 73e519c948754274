//! `kagi seal`: a node's seal — status without unsealing, and KEK rotation (rewrap) while it runs.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};

/// Arguments of `kagi seal`.
#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: SealCommand,
}

#[derive(Subcommand)]
enum SealCommand {
    /// Whether the node's store and photon ledger are sealed, where the KEK comes from and
    /// whether its key file is safe, records quarantined, the audit key and trail (no KEK needed).
    Status {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the KEK: for a key file, a new key file, every data key rewrapped under it, the old
    /// file kept as `<key_file>.old-<time>`; for a PKCS#11 token, a new non-extractable key on
    /// the token, the old one relabelled `<label>.old-<time>`. Safe while the node runs (it keeps its unwrapped data key;
    /// its next start uses the new KEK).
    Rewrap {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

/// Runs `kagi seal`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        SealCommand::Status { config, json } => {
            let cfg = kagi_node::config::NodeConfig::load(&config)?;
            let st = kagi_node::seal::admin::status(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            println!("node          {}", st.node_id);
            match (&st.key_file, &st.key_file_ok) {
                (Some(p), Some(Ok(()))) => {
                    println!("KEK           key file {} (permissions ok)", p.display())
                }
                (Some(p), Some(Err(e))) => println!("KEK           key file {}: {e}", p.display()),
                (Some(p), None) => println!("KEK           key file {} (missing)", p.display()),
                (None, _) => match &st.token {
                    Some(t) => println!("KEK           pkcs11: {t}"),
                    None => println!("KEK           {}", st.kek_source),
                },
            }
            for (name, f) in [("store", &st.store), ("photon ledger", &st.photon_ledger)] {
                let state = match (f.exists, f.sealed) {
                    (false, _) => "absent".to_string(),
                    (true, false) => "NOT sealed".to_string(),
                    (true, true) => format!(
                        "sealed (data key wrapped by {})",
                        f.kek_kind.as_deref().unwrap_or("?")
                    ),
                };
                let q = f
                    .quarantined
                    .map(|n| format!(", {n} records quarantined"))
                    .unwrap_or_default();
                println!("{name:<13} {} {state}{q}", f.path.display());
            }
            println!(
                "audit key     {}",
                st.audit_key.as_deref().unwrap_or("none yet")
            );
            println!(
                "audit trail   {}",
                st.audit_trail.as_deref().unwrap_or("none yet")
            );
            Ok(())
        }
        SealCommand::Rewrap { config } => {
            let cfg = kagi_node::config::NodeConfig::load(&config)?;
            let r = kagi_node::seal::admin::rewrap(&cfg)?;
            for f in &r.files {
                println!("rewrapped     {}", f.display());
            }
            println!("new KEK       {}", r.kek);
            println!(
                "previous key  {} (delete it once the node has restarted with the new one)",
                r.previous
            );
            Ok(())
        }
    }
}
