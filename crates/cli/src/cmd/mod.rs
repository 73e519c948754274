//! One module per subcommand; each has `Args` (clap) and `run`.

pub mod audit;
pub mod bench;
pub mod bench_xks;
pub mod child;
pub mod dash;
pub mod device;
pub mod keys;
pub mod link_rate;
pub mod link_sim;
pub mod links;
pub mod mpc;
pub mod net;
pub mod netmap;
pub mod node;
pub mod pki;
pub mod plan;
pub mod progress;
pub mod seal;
pub mod sim;
pub mod skip_ports;
pub mod up;
pub mod up_children;
pub mod up_dash;
pub mod up_mgmt;
pub mod vault;
pub mod xks;
