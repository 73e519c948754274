//! Three-party computation on replicated secret shares, for kagi's computation on stored
//! shares (medical and genome data that must never be rebuilt in one place).
//!
//! * [`ring`]: Z_2^64 and bit-sliced Z_2 (64 AND gates per word operation);
//! * [`shares`]: replicated 2-out-of-3 sharing (each party holds two of three additive shares);
//! * [`party`]: the protocols — multiplication, inner product, opening, consistency checks —
//!   with semi-honest and malicious-with-abort modes ([`party::Security`]);
//! * [`verify`]: the malicious mode's triple checks (cut-and-choose and bucketing);
//! * [`bits`], [`circuits`]: bit-slicing, sign bit / comparison, boolean → arithmetic;
//! * [`transport`]: the channel abstraction and in-process channels; [`its`]: one-time pad with
//!   QKD key and a Wegman–Carter tag around any channel, with key accounting;
//! * [`prg`]: AES-CTR streams for correlated randomness from pairwise seeds;
//! * [`sim`]: running the three parties in one process (tests, benchmarks).
//!
//! The engine does no I/O of its own: a [`transport::Transport`] moves its messages, so the
//! same protocol code runs in-process, over mutual TLS between sites, and over one-time-pad
//! channels keyed from the QKD network.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bits;
pub mod circuits;
mod error;
pub mod its;
pub mod party;
pub mod prg;
pub mod query;
pub mod ring;
pub mod shares;
pub mod sim;
pub mod table;
pub mod transport;
pub mod verify;

pub use error::{MpcError, Result};
pub use party::{Party, Security, Seeds};
pub use ring::{Ring, Z2, Z64};
pub use shares::Shares;
pub use transport::{LinkStats, Peer, Transport};
