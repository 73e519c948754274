//! `kagi link-rate`: placeholder until the link-model crate lands.

/// Arguments of `kagi link-rate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("kagi link-rate is not built yet")
}
