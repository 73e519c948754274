//! `kagi node --config node.toml`: one trusted node's key manager.

use std::path::PathBuf;

/// Arguments of `kagi node`.
#[derive(clap::Args)]
pub struct Args {
    /// The node's configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs a node until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = kagi_node::config::NodeConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(kagi_node::run_node(cfg, shutdown_signal()))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
