//! Runtime adapters around kagi's key manager core (`kagi-km`): the tokio driver, mutual TLS,
//! the ETSI GS QKD 014 HTTP server, ETSI GS QKD 004 key streams, Cisco SKIP, the SQLite store, peer connections and simulated link sources.
#![forbid(unsafe_code)]

pub mod admission;
pub mod advert_keys;
pub mod audit;
pub mod client;
pub mod config;
pub mod config_check;
pub mod dash;
pub mod device;
pub mod device_link;
pub mod driver;
pub mod etsi004;
pub mod etsi014;
pub mod link_secret;
pub mod link_source;
pub mod loopback;
pub mod mgmt;
pub mod peer;
pub mod photon_link;
pub mod pki;
pub mod revocation;
pub mod run;
pub mod seal;
pub mod service;
pub mod skip;
pub mod store;
pub mod tls;

pub use run::run_node;
