//! Deterministic simulation of a kagi network.
//!
//! [`Sim`] runs one real [`kagi_km::KeyManager`] per node on a virtual network with virtual time
//! and injects, from a seed, the faults a deployment meets: lost, duplicated and reordered
//! messages, partitions, failed store writes, crashes at any action boundary, power loss, and a
//! hostile neighbour ([`hostile`]). The [`Oracle`] checks every answer an application gets;
//! [`chaos`] runs all faults at once over many seeds.
//!
//! Seeds: `KAGI_SIM_SEED` picks the first seed and `KAGI_SIM_RUNS` how many consecutive seeds the
//! scenario tests run; failures print the seed and a command that replays it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod advert_auth;
pub mod arrivals;
pub mod chaos;
pub mod hostile;
mod net;
pub mod oracle;
pub mod pads;
pub mod plan;
pub mod series_svg;
pub mod study;

pub use net::{
    Answered, FaultCounts, Faults, LinkSupply, MsgFilter, PhotonLinkStats, Sim, StoreCopy,
};
pub use oracle::Oracle;

/// Seeds to run: `KAGI_SIM_SEED` (default `default`) and `KAGI_SIM_RUNS` consecutive ones
/// (default `runs`).
pub fn seeds(default: u64, runs: u64) -> impl Iterator<Item = u64> {
    let first = std::env::var("KAGI_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let n = std::env::var("KAGI_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(runs);
    first..first + n
}
