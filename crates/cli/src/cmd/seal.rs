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
    /// the token, the old one relabelled `<label>.old-<time>`; for a passphrase, a new
    /// passphrase (with a new salt). `--to` moves between a key file and a passphrase. Safe
    /// while the node runs (it keeps its unwrapped data key; its next start uses the new KEK).
    Rewrap {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The new KEK's kind (default: the configured one).
        #[arg(long, value_enum)]
        to: Option<KekArg>,
        /// Environment variable holding the new passphrase (default: asked twice on the
        /// terminal). The current one comes from `[store.seal] passphrase_env` or the terminal.
        #[arg(long)]
        new_passphrase_env: Option<String>,
    },
}

/// A KEK kind on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KekArg {
    File,
    Passphrase,
    Pkcs11,
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
        SealCommand::Rewrap {
            config,
            to,
            new_passphrase_env,
        } => {
            use kagi_node::seal::kek::KekKind;
            let cfg = kagi_node::config::NodeConfig::load(&config)?;
            let to = match to {
                None => cfg.store.seal.kek,
                Some(KekArg::File) => KekKind::File,
                Some(KekArg::Passphrase) => KekKind::Passphrase,
                Some(KekArg::Pkcs11) => KekKind::Pkcs11,
            };
            let r = kagi_node::seal::admin::rewrap_to(&cfg, to, new_passphrase_env.as_deref())?;
            for f in &r.files {
                println!("rewrapped     {}", f.display());
            }
            println!("new KEK       {}", r.kek);
            println!(
                "previous key  {} (delete it once the node has restarted with the new one)",
                r.previous
            );
            if let Some(c) = &r.config_change {
                println!("now           {c}");
            }
            Ok(())
        }
    }
}
