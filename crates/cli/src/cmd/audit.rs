//! `kagi audit verify PATH`: checks nodes' audit trails offline.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};

/// Arguments of `kagi audit`.
#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain, the seq numbers and the ML-DSA-65 checkpoint signatures of every
    /// trail under PATH (a `<node>-audit.jsonl` file, a node's directory, or a whole data
    /// directory), and compare each node's checkpoints with the copies its neighbours witnessed.
    /// Exits non-zero naming the node, entry and reason of the first problem of each trail.
    Verify {
        /// A trail file, a node's data directory, or the network's data directory.
        path: PathBuf,
    },
}

/// Runs `kagi audit`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify { path } => verify(&path),
    }
}

fn verify(path: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    let reports = kagi_node::audit::verify::verify_path(path);
    anyhow::ensure!(
        !reports.is_empty(),
        "no audit trail (*-audit.jsonl) under {}",
        path.display()
    );
    let mut bad = 0;
    for r in &reports {
        let file = r
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match &r.problem {
            None => {
                let tail = if r.uncovered > 0 {
                    format!(
                        ", {} entries after the last checkpoint (node running or crashed)",
                        r.uncovered
                    )
                } else {
                    String::new()
                };
                println!(
                    "ok   {}: {} entries, {} signed checkpoints, {} witnessed for neighbours{tail} ({file})",
                    r.node,
                    r.entries,
                    r.checkpoints,
                    r.witnessed.len()
                );
            }
            Some(p) => {
                bad += 1;
                let at = if p.line == 0 {
                    "trail".to_string()
                } else {
                    format!("entry {}", p.line)
                };
                println!("FAIL {}: {at}: {} ({file})", r.node, p.why);
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} audit trails do not verify", reports.len());
    }
    Ok(())
}
