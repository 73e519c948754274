//! kagi's long-term secure storage ("vault"), after Fujiwara et al., Sci. Rep. 6:28988 (2016):
//! an object is split into Shamir shares ([`kagi_sharing`]), each share is stored at a
//! different site, and every transfer — owner to site, site to owner, site to site during
//! refresh and repair — is one-time-pad encrypted with QKD keys and authenticated with a
//! Wegman–Carter MAC ([`envelope`]). Any `k` sites rebuild the object; fewer learn nothing,
//! whatever their computing power.
//!
//! * [`client`]: the owner's put / get / list / refresh / repair;
//! * [`site`]: a storage site's durable store and protocol steps;
//! * [`keys`]: the ETSI 014 key calls as a trait, with an in-memory network for tests;
//! * [`api`]: the site steps as a trait, implemented by [`site::Site`] in this process and by
//!   [`net::RemoteSite`] for a site process;
//! * [`tables`]: tables in three-party replicated shares, for computation on shares
//!   ([`kagi_mpc`]);
//! * [`net`]: sites as separate processes (mutual TLS, HTTP/1.1) and the ETSI 014 key supply.
//!
//! The protocol logic is transport-agnostic: [`site::Site`] methods take and return sealed
//! envelopes, so the same code runs in one process (library tests) and behind the site server
//! (`kagi up --vault`, `kagi vault`).
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod envelope;
mod error;
pub mod keys;
pub mod net;
pub mod site;
pub mod tables;

pub use error::{Result, VaultError};
