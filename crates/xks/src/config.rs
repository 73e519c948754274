//! The proxy's configuration file (`xks/proxy.json` in a network's data directory, written by
//! `kagi xks init` / `kagi up --xks`). Relative paths are relative to the data directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Optional mutual TLS: client certificates must chain to `ca` and carry one of `subjects` as
/// their subject CN (KMS presents `cks.kms.<region>.amazonaws.com`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsConfig {
    /// CA certificate(s) (PEM).
    pub ca: PathBuf,
    /// Accepted subject common names.
    pub subjects: Vec<String>,
}

/// A storage site the key shares go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRef {
    /// The site's SAE ID.
    pub id: String,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

/// How the proxy reaches kagi: as an SAE of a node (ETSI 014) and as the owner of vault objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultConfig {
    /// The proxy's SAE ID (owner of the key objects).
    pub owner_sae: String,
    /// Its node's ETSI 014 URL.
    pub etsi014_url: String,
    /// Network CA.
    pub ca: PathBuf,
    /// SAE certificate.
    pub cert: PathBuf,
    /// SAE private key.
    pub key: PathBuf,
    /// Storage sites.
    pub sites: Vec<SiteRef>,
    /// Shares needed to rebuild a key.
    pub k: u8,
    /// Shares per key (≤ number of sites).
    pub n: u8,
    /// How long a vault call may wait for QKD key (milliseconds).
    #[serde(default = "default_wait")]
    pub key_wait_ms: u64,
}

fn default_wait() -> u64 {
    3000
}

fn default_idle() -> u64 {
    300
}

fn default_region() -> String {
    "us-east-1".into()
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// `127.0.0.1:PORT`.
    pub listen: String,
    /// Region of the credential scope (KMS's region; `kagi up` uses us-east-1).
    #[serde(default = "default_region")]
    pub region: String,
    /// Credentials file (see [`crate::creds`]).
    pub credentials: PathBuf,
    /// Key registry (see [`crate::registry`]).
    pub registry: PathBuf,
    /// Audit trail (see [`crate::audit`]).
    pub audit: PathBuf,
    /// Server certificate (PEM; names the proxy's host).
    pub tls_cert: PathBuf,
    /// Server private key.
    pub tls_key: PathBuf,
    /// Mutual TLS, when wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsConfig>,
    /// Seconds a rebuilt key stays in memory unused before it is zeroized.
    #[serde(default = "default_idle")]
    pub idle_zeroize_secs: u64,
    /// The kagi network behind the proxy.
    pub vault: VaultConfig,
}

impl ProxyConfig {
    /// Reads the file and makes its paths absolute against `base`.
    pub fn load(path: &Path, base: &Path) -> anyhow::Result<Self> {
        let t = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut c: Self = serde_json::from_slice(&t)
            .map_err(|e| anyhow::anyhow!("{} is not valid: {e}", path.display()))?;
        for p in [
            &mut c.credentials,
            &mut c.registry,
            &mut c.audit,
            &mut c.tls_cert,
            &mut c.tls_key,
            &mut c.vault.ca,
            &mut c.vault.cert,
            &mut c.vault.key,
        ] {
            *p = base.join(&*p);
        }
        if let Some(m) = c.mtls.as_mut() {
            m.ca = base.join(&m.ca);
        }
        if c.vault.k == 0 || c.vault.k > c.vault.n || usize::from(c.vault.n) > c.vault.sites.len() {
            anyhow::bail!(
                "{}: need 1 <= k <= n <= sites ({} sites, k = {}, n = {})",
                path.display(),
                c.vault.sites.len(),
                c.vault.k,
                c.vault.n
            );
        }
        Ok(c)
    }
}
