//! One module per subcommand; each has `Args` (clap) and `run`.

pub mod bench;
pub mod bench_xks;
pub mod keys;
pub mod link_rate;
pub mod link_sim;
pub mod node;
pub mod pki;
pub mod skip_ports;
pub mod up;
pub mod vault;
pub mod xks;
