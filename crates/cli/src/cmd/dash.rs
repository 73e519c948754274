//! `kagi dash`: the live web dashboard of a network started by `kagi up` (which already serves
//! one; this runs another, e.g. on a fixed port).

use std::path::PathBuf;

use anyhow::Context;

use super::up::NetworkFile;

/// Arguments of `kagi dash`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The directory of a running `kagi up` (reads network.json).
    #[arg(long, default_value = "./kagi-data")]
    pub data_dir: PathBuf,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// Runs `kagi dash` until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", args.data_dir.display()))?;
    let net = NetworkFile::load(&dir)?;
    let name = kagi_control::Topology::from_toml(
        &std::fs::read_to_string(dir.join("topology.toml")).unwrap_or_default(),
    )
    .map(|t| t.name)
    .unwrap_or_else(|_| "kagi".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (url, task) = super::up_dash::start(&dir, &net, &name, args.port).await?;
        println!("Dashboard: {url}");
        tokio::select! {
            r = task => r.context("dashboard task")?,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
