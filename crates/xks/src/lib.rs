//! An AWS KMS external key store backed by kagi: an XKS proxy API v1 server
//! (`aws/aws-kms-xksproxy-api-spec`) whose keys are AES-256 keys made from QKD key, kept only as
//! (k, n) Shamir shares at kagi vault sites, and rebuilt in this process's memory when used.
//!
//! * [`sigv4`]: SigV4 verification (service `kms-xks-proxy`, ±5 min);
//! * [`wire`]: bodies and the spec's error names;
//! * [`aead`]: AES-256-GCM with the spec's AAD binding and CDIV;
//! * [`creds`], [`registry`], [`config`]: the files an operator edits (credentials and the key
//!   registry are re-read while the proxy runs);
//! * [`backend`], [`vault_backend`]: where material lives;
//! * [`cache`]: rebuilt material, zeroized when idle or no longer enabled;
//! * [`proxy`]: request handling; [`server`]: HTTPS;
//! * [`audit`]: the signed audit trail (kagi's node format, ML-DSA-65 checkpoints).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod aead;
pub mod audit;
pub mod backend;
pub mod cache;
pub mod client;
pub mod config;
pub mod creds;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod sigv4;
pub mod time;
pub mod vault_backend;
pub mod wire;
