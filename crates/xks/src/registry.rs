//! The external keys the proxy knows: a JSON file of key records (no key bytes — the material
//! lives as shares at the vault sites). `kagi xks key …` writes it atomically; the proxy re-reads
//! it when it changes, so a disable or revoke takes effect in a running proxy within its poll
//! interval, and the proxy drops any cached material of a key that is no longer enabled.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyStatus {
    /// Usable.
    Enabled,
    /// Metadata answers `DISABLED`; encrypt and decrypt get `InvalidStateException`.
    Disabled,
    /// Shares destroyed: every operation gets `KeyNotFoundException`, forever.
    Revoked,
}

impl KeyStatus {
    /// Lower-case name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
        }
    }
}

/// One external key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The `externalKeyId` KMS uses.
    pub id: String,
    /// The vault object holding the material's shares.
    pub object: String,
    /// State.
    pub status: KeyStatus,
    /// Creation time (unix seconds).
    pub created_unix: i64,
    /// Last status change (unix seconds).
    pub changed_unix: i64,
    /// Shares needed to rebuild.
    pub k: u8,
    /// Shares stored.
    pub n: u8,
    /// Sites holding shares.
    pub sites: Vec<String>,
    /// QKD key spent creating the key (material plus share transfers).
    pub qkd_key_bytes: u64,
}

/// The registry file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Every key ever created (revoked ones stay, as a record).
    pub keys: Vec<KeyRecord>,
}

/// Checks an `externalKeyId`: 1–128 characters of `A-Z a-z 0-9 - . _`.
pub fn check_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl Registry {
    /// Parses the file's text.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let r: Self = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        for k in &r.keys {
            if !check_key_id(&k.id) {
                return Err(format!("bad key ID {:?}", k.id));
            }
        }
        Ok(r)
    }

    /// Reads the file; a missing file is an empty registry.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(t) => Self::parse(&t).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The record of `id`.
    pub fn get(&self, id: &str) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The record of `id`, mutable.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut KeyRecord> {
        self.keys.iter_mut().find(|k| k.id == id)
    }
}
