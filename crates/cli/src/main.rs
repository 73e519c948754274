//! The `kagi` command line: one binary for the node, the local network, clients, simulators and
//! benchmarks.

mod cmd;

use clap::{Parser, Subcommand};

/// kagi (鍵): a quantum-safe key management network.
#[derive(Parser)]
#[command(name = "kagi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Secret key rate against distance for a QKD protocol (analytic link models).
    LinkRate(cmd::link_rate::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::LinkRate(a) => cmd::link_rate::run(a),
    }
}
