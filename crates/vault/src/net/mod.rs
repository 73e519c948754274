//! Storage sites as separate processes: each site serves the [`crate::api::SiteApi`] steps over
//! HTTP/1.1 on mutual TLS ([`server::serve_site`]), and the owner reaches it with
//! [`RemoteSite`]. The TLS is kagi's node-to-node profile (`kagi_node::tls`): TLS 1.3 only,
//! X25519MLKEM768 only, certificates from the network CA. The site's server certificate names
//! its SAE ID, which the owner checks; the owner's client certificate is its SAE certificate,
//! whose CN the site takes as the caller's identity (only an object's owner may read, commit,
//! roll back, refresh or repair it).
//!
//! TLS guards the control steps; the shares themselves never depend on it: every share-carrying
//! body is a sealed envelope (one-time pad + Wegman–Carter tag with QKD keys).
//!
//! Routes (all `POST` unless noted; bodies are envelope lists, see [`wire`]):
//!
//! ```text
//! GET  /v1/health                          {"site": ID}
//! GET  /v1/objects                         the caller's committed manifests (JSON)
//! GET  /v1/objects/{id}                    ObjectState (JSON)
//! /v1/put                                  one envelope: a share, stored pending
//! /v1/objects/{id}/commit | abort
//! /v1/objects/{id}/share                   -> one envelope sealed for the caller
//! /v1/objects/{id}/refresh/deal            -> envelopes for the other sites
//! /v1/objects/{id}/refresh/apply           envelopes from the other sites
//! /v1/objects/{id}/refresh/commit | abort
//! /v1/objects/{id}/repair/contribute?target=T&helpers=1,2,3   -> envelopes
//! /v1/objects/{id}/repair/aggregate        envelopes -> one envelope
//! /v1/repair/receive                       manifest + envelopes
//! ```
//!
//! Every answer carries `x-kagi-key-bytes`: QKD key the site drew for it. Errors are JSON
//! `{"error": KIND, "message": ...}`; a key shortage is 503 with `needed`/`available`, and the
//! owner asks again (with progress) until its own deadline.

mod etsi;
pub mod mpc;
mod remote;
mod server;
pub mod table_refresh;
pub mod wire;

use std::path::{Path, PathBuf};

use kagi_node::pki::{CertPaths, Pki};
use serde::{Deserialize, Serialize};

pub use etsi::{EtsiKeys, Progress};
pub use remote::RemoteSite;
pub use server::{serve_site, SiteServer};

use crate::error::{Result, VaultError};

/// HTTP header with the QKD key bytes a site drew to answer a request.
pub const KEY_BYTES_HEADER: &str = "x-kagi-key-bytes";

/// Largest request or response body (bytes): a share of a 1 GiB object and its envelope.
pub const MAX_BODY_BYTES: usize = (1 << 30) + (1 << 20);

/// What a site process needs, written by `kagi up --vault` as `vault/<ID>.json` in the data
/// directory. Paths are relative to the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteConfig {
    /// The site's SAE ID.
    pub id: String,
    /// The trusted node it sits beside.
    pub node: String,
    /// That node's ETSI 014 endpoint.
    pub etsi014_url: String,
    /// Where the site listens (`127.0.0.1:PORT`).
    pub listen: String,
    /// Where its shares live.
    pub data_dir: PathBuf,
    /// Network CA.
    pub ca: PathBuf,
    /// SAE client certificate and key (ETSI 014 calls to its node).
    pub cert: PathBuf,
    /// SAE private key.
    pub key: PathBuf,
    /// Server certificate (CN and DNS SAN = the SAE ID) and key.
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// How long one request may wait for key before answering 503 (milliseconds).
    #[serde(default = "default_wait_ms")]
    pub key_wait_ms: u64,
}

fn default_wait_ms() -> u64 {
    3000
}

impl SiteConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text)
            .map_err(|e| VaultError::Malformed(format!("{}: {e}", path.display())))
    }
}

/// Issues (every time: cheap, and always signed by the current CA) the server certificate of
/// site `sae` into `PKI/vault/<sae>.pem` and `<sae>-key.pem` (0600).
pub fn issue_site_cert(pki: &Pki, sae: &str) -> Result<CertPaths> {
    let issued = pki
        .issue_node(sae)
        .map_err(|e| VaultError::Malformed(format!("site certificate for {sae}: {e}")))?;
    let dir = pki.dir().join("vault");
    std::fs::create_dir_all(&dir)?;
    let paths = CertPaths {
        cert: dir.join(format!("{sae}.pem")),
        key: dir.join(format!("{sae}-key.pem")),
    };
    write_private(&paths.key, issued.key_pem.as_bytes())?;
    std::fs::write(&paths.cert, issued.cert_pem.as_bytes())?;
    Ok(paths)
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
