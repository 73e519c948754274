//! The `kagi` command line: one binary for the node, the local network, clients, simulators and
//! benchmarks.

mod cmd;

use clap::{Parser, Subcommand};

// Most of a large simulation's time went to the system allocator (small messages, names and
// key buffers made and dropped by the million): mimalloc is several times faster at that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kagi (鍵): a quantum-safe key management network.
#[derive(Parser)]
#[command(name = "kagi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Secret key rate against distance for a QKD protocol (analytic link models).
    LinkRate(cmd::link_rate::Args),
    /// Photon-level link simulation through the whole post-processing pipeline.
    LinkSim(cmd::link_sim::Args),
    /// The links of a topology: technology, mean key rate, satellite pass windows and weather.
    Links(cmd::links::Args),
    /// Flow-level planning: key rate per node pair and SAE pair under a routing and multi-path
    /// policy, link loads, min-cut bounds (networks of thousands of nodes).
    Plan(cmd::plan::Args),
    /// Planning simulation on the real key managers under virtual time: delivered key and
    /// served share per SAE pair and node pair for a demand model, with node failures.
    Sim(cmd::sim::Args),
    /// Run one trusted node's key manager (`--config node.toml`).
    Node(cmd::node::Args),
    /// A simulated QKD device pair serving ETSI 014 to the two nodes of a `source = "etsi014"`
    /// link, with injectable faults.
    Device(cmd::device::Args),
    /// Start a whole local network (certificates, configs, one `kagi node` per trusted node).
    Up(cmd::up::Args),
    /// The network from the management API (nodes, links, pools); links out of service, drain.
    Net(cmd::net::Args),
    /// Live web dashboard of a network started by `kagi up`.
    Dash(cmd::dash::Args),
    /// Fetch keys over ETSI GS QKD 014 from a network started by `kagi up`.
    Keys(cmd::keys::Args),
    /// Long-term secure storage: k-of-n shares at separate sites, one-time-pad QKD transfers.
    Vault(cmd::vault::Args),
    /// AWS KMS external key store (XKS proxy API v1) with keys secret-shared at vault sites.
    Xks(cmd::xks::Args),
    /// Computation on shared tables: queries run by three sites on replicated shares.
    Mpc(cmd::mpc::Args),
    /// Certificates of a network's CA: revoke one, list revoked ones.
    Pki(cmd::pki::Args),
    /// A node's seal: status without unsealing, KEK rotation (rewrap) while it runs.
    Seal(cmd::seal::Args),
    /// Audit trails: verify their hash chains, signed checkpoints and neighbours' copies.
    Audit(cmd::audit::Args),
    /// Benchmarks (ETSI 014 delivery over a local network, relay throughput).
    Bench(cmd::bench::Args),
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::LinkRate(a) => cmd::link_rate::run(a),
        Command::LinkSim(a) => cmd::link_sim::run(a),
        Command::Links(a) => cmd::links::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Up(a) => cmd::up::run(a),
        Command::Keys(a) => cmd::keys::run(a),
        Command::Dash(a) => cmd::dash::run(a),
        Command::Net(a) => cmd::net::run(a),
        Command::Vault(a) => cmd::vault::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Xks(a) => cmd::xks::run(a),
        Command::Mpc(a) => cmd::mpc::run(a),
        Command::Pki(a) => cmd::pki::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::Seal(a) => cmd::seal::run(a),
        Command::Device(a) => {
            init_tracing();
            cmd::device::run(a)
        }
        Command::Node(a) => {
            init_tracing();
            cmd::node::run(a)
        }
    }
}
