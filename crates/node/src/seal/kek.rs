//! Where the key-encryption key comes from: a key file (default; `kagi up` generates one per
//! node), a passphrase stretched with Argon2id, or a PKCS#11 token ([`super::pkcs11`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use kagi_keymat::Key;
use rand::RngCore;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::{has_dek, meta_get, meta_put, SealError};

/// Environment variable read for the passphrase when the config names none.
pub const DEFAULT_PASSPHRASE_ENV: &str = "KAGI_SEAL_PASSPHRASE";
const KEY_FILE_TAG: &str = "kagi-kek-v1:";
/// Version byte of a data key wrapped by a token (a key wrapped in software starts with the
/// sealed-value version 1).
const TOKEN_WRAP_V: u8 = 2;

fn token_aad(label: &str) -> Vec<u8> {
    format!("kagi-kek-wraps-dek-v1\0{label}").into_bytes()
}

/// Which KEK source a node uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KekKind {
    /// A 32-byte key in a file only the node's user may read (`chmod 600`).
    #[default]
    File,
    /// A passphrase from the environment or typed at a prompt, stretched with Argon2id.
    Passphrase,
    /// A non-extractable AES key on a PKCS#11 token (`[store.seal.pkcs11]`).
    Pkcs11,
}

/// `[store.seal]` in `node.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SealConfig {
    /// `"file"` (default), `"passphrase"` or `"pkcs11"`.
    pub kek: KekKind,
    /// The key file (default `<data_dir>/<node_id>.kek`, created on a new store's first start).
    /// Keep it on other media than the data directory (a USB key, a tmpfs filled at boot) to
    /// protect a copied disk.
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the passphrase (default `KAGI_SEAL_PASSPHRASE`); when it is
    /// unset and standard input is a terminal, the node asks.
    pub passphrase_env: Option<String>,
    /// The token, for `kek = "pkcs11"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<super::pkcs11::Pkcs11Config>,
    /// Benchmarks only: store values in the clear to measure what sealing costs. Cannot be set
    /// from a config file.
    #[serde(skip)]
    pub unsealed_for_benchmarks: bool,
}

/// KEK failures; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The key file is readable by others or owned by another user.
    #[error("key file {path}: {why}; run `chmod 600 {path}` as the node's user")]
    Permissions {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The store is sealed but its key file is gone.
    #[error("the store in {store} is sealed, but its key file {path} is missing: restore the key file (or the store cannot be opened)")]
    Missing {
        /// The key file.
        path: String,
        /// The store.
        store: String,
    },
    /// The key file is not a kagi KEK.
    #[error("key file {0} is not a kagi key-encryption key")]
    Malformed(String),
    /// No passphrase available.
    #[error("no passphrase: set {0} or start the node on a terminal")]
    NoPassphrase(String),
    /// I/O.
    #[error("key file {path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        err: std::io::Error,
    },
    /// No PIN for the token.
    #[error("no PKCS#11 PIN: set {0} or `pin_file` in [store.seal.pkcs11]")]
    NoPin(String),
    /// The token or its module failed.
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
    /// `kek = "pkcs11"` without `[store.seal.pkcs11]`.
    #[error("kek = \"pkcs11\" needs a [store.seal.pkcs11] section (module, token)")]
    NoPkcs11Config,
    /// Argon2 failed.
    #[error("argon2id: {0}")]
    Argon2(String),
    /// The store's metadata.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// A key-encryption key, ready to wrap and unwrap data keys: key bytes in memory (zeroized on
/// drop: keep it only while DEKs are unwrapped) or a handle to a key that stays on a token.
pub struct Kek {
    inner: Inner,
    kind: &'static str,
    fresh: bool,
}

enum Inner {
    Local(Key),
    Token(super::pkcs11::TokenKek),
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({}, <redacted>)", self.kind)
    }
}

impl Kek {
    /// A KEK from 32 key bytes (`kind` says where they came from, for status).
    pub fn from_key(key: Key, kind: &'static str) -> Self {
        Self {
            inner: Inner::Local(key),
            kind,
            fresh: false,
        }
    }

    /// A KEK on a PKCS#11 token.
    pub fn from_token(t: super::pkcs11::TokenKek, fresh: bool) -> Self {
        Self {
            inner: Inner::Token(t),
            kind: "pkcs11",
            fresh,
        }
    }

    /// The token key, for a token KEK.
    pub fn token_mut(&mut self) -> Option<&mut super::pkcs11::TokenKek> {
        match &mut self.inner {
            Inner::Token(t) => Some(t),
            Inner::Local(_) => None,
        }
    }

    fn local_wrapper(key: &Key, label: &str) -> super::Sealer {
        super::Sealer::new(key, &format!("kek-wraps-dek/{label}"))
    }

    /// Wraps the data key `dek` of the database labelled `label`.
    ///
    /// # Errors
    /// The token fails.
    pub fn wrap(&self, label: &str, dek: &[u8]) -> Result<Vec<u8>, KekError> {
        match &self.inner {
            Inner::Local(k) => Ok(Self::local_wrapper(k, label).seal("dek", label, dek)),
            Inner::Token(t) => {
                let mut v = vec![TOKEN_WRAP_V];
                v.extend_from_slice(&t.encrypt(&token_aad(label), dek)?);
                Ok(v)
            }
        }
    }

    /// Unwraps the data key of the database labelled `label`; `None` when this KEK did not wrap
    /// it (or the wrapped key was altered).
    pub fn unwrap(&self, label: &str, wrapped: &[u8]) -> Option<Key> {
        match &self.inner {
            Inner::Local(k) => Self::local_wrapper(k, label)
                .open("dek", label, wrapped)
                .ok()
                .map(|d| Key::from_slice(&d)),
            Inner::Token(t) => {
                let (&v, rest) = wrapped.split_first()?;
                if v != TOKEN_WRAP_V {
                    return None;
                }
                t.decrypt(&token_aad(label), rest)
                    .map(|d| Key::from_slice(&d))
            }
        }
    }

    /// True when the KEK was created by this start (new key file or new passphrase salt).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// The key bytes (`None` for a token key, which never leaves the token).
    pub fn key(&self) -> Option<&Key> {
        match &self.inner {
            Inner::Local(k) => Some(k),
            Inner::Token(_) => None,
        }
    }

    /// Where it came from: `file`, `passphrase` or `pkcs11`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// The key file a node uses: the configured one or `<data_dir>/<node_id>.kek`.
pub fn key_file_path(cfg: &SealConfig, data_dir: &Path, node_id: &str) -> PathBuf {
    cfg.key_file
        .clone()
        .unwrap_or_else(|| data_dir.join(format!("{node_id}.kek")))
}

/// Obtains the node's KEK as configured. `store` is the node's main database (it says whether
/// the store is sealed already and keeps the passphrase salt).
pub fn resolve(
    cfg: &SealConfig,
    data_dir: &Path,
    node_id: &str,
    store: &Connection,
    store_path: &Path,
) -> Result<Kek, KekError> {
    match cfg.kek {
        KekKind::File => {
            let path = key_file_path(cfg, data_dir, node_id);
            if path.exists() {
                read_key_file(&path)
            } else if has_dek(store)? {
                Err(KekError::Missing {
                    path: path.display().to_string(),
                    store: store_path.display().to_string(),
                })
            } else {
                let mut k = create_key_file(&path)?;
                k.fresh = true;
                Ok(k)
            }
        }
        KekKind::Passphrase => {
            let var = cfg
                .passphrase_env
                .clone()
                .unwrap_or_else(|| DEFAULT_PASSPHRASE_ENV.to_string());
            let pass = passphrase(&var, node_id)?;
            let (salt, fresh) = match meta_get(store, "kek_salt")? {
                Some(s) => (s, false),
                None => {
                    let mut s = vec![0u8; 16];
                    rand::rngs::OsRng.fill_bytes(&mut s);
                    meta_put(store, "kek_salt", &s)?;
                    (s, true)
                }
            };
            let mut k = derive_from_passphrase(pass.expose(), &salt)?;
            k.fresh = fresh;
            Ok(k)
        }
        KekKind::Pkcs11 => {
            let p = cfg.pkcs11.as_ref().ok_or(KekError::NoPkcs11Config)?;
            // A new key only for a store that has no wrapped data key yet.
            let (t, fresh) = super::pkcs11::TokenKek::open(p, node_id, !has_dek(store)?)?;
            Ok(Kek::from_token(t, fresh))
        }
    }
}

/// Argon2id (m = 19 MiB, t = 2, p = 1: OWASP's minimum) of `pass` with `salt`.
pub fn derive_from_passphrase(pass: &[u8], salt: &[u8]) -> Result<Kek, KekError> {
    let params = argon2::Params::new(19 * 1024, 2, 1, Some(32))
        .map_err(|e| KekError::Argon2(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Key::zeroed(32);
    a.hash_password_into(pass, salt, out.expose_mut())
        .map_err(|e| KekError::Argon2(e.to_string()))?;
    Ok(Kek::from_key(out, "passphrase"))
}

fn passphrase(var: &str, node_id: &str) -> Result<Key, KekError> {
    read_passphrase(var, &format!("passphrase to unseal node {node_id}: "))
}

/// A passphrase from the environment variable `var`, else typed at a terminal after `prompt`.
///
/// # Errors
/// Neither is available, or the terminal cannot be read.
pub fn read_passphrase(var: &str, prompt: &str) -> Result<Key, KekError> {
    if let Some(v) = std::env::var_os(var) {
        return Ok(Key::from_vec(v.into_encoded_bytes()));
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(KekError::NoPassphrase(var.to_string()));
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|err| KekError::Io {
            path: "stdin".into(),
            err,
        })?;
    let k = Key::from_slice(line.trim_end_matches(['\r', '\n']).as_bytes());
    zeroize::Zeroize::zeroize(&mut line);
    Ok(k)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> KekError + '_ {
    move |err| KekError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// Reads a key file after checking that only its owner — this process's user — can read it.
pub fn read_key_file(path: &Path) -> Result<Kek, KekError> {
    check_permissions(path)?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
    let b64 = text
        .trim()
        .strip_prefix(KEY_FILE_TAG)
        .ok_or_else(|| KekError::Malformed(path.display().to_string()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| KekError::Malformed(path.display().to_string()))?;
    let key = Key::from_vec(bytes);
    if key.len() != 32 {
        return Err(KekError::Malformed(path.display().to_string()));
    }
    Ok(Kek::from_key(key, "file"))
}

/// Writes a new random key file readable only by its owner.
pub fn create_key_file(path: &Path) -> Result<Kek, KekError> {
    let mut key = Key::zeroed(32);
    rand::rngs::OsRng.fill_bytes(key.expose_mut());
    write_key_file(path, &key)?;
    Ok(Kek::from_key(key, "file"))
}

/// Writes `key` as a key file (mode 0600, created new: an existing file is never overwritten).
pub fn write_key_file(path: &Path, key: &Key) -> Result<(), KekError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(path))?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).map_err(io(path))?;
    let text = zeroize::Zeroizing::new(format!(
        "{KEY_FILE_TAG}{}\n",
        base64::engine::general_purpose::STANDARD.encode(key.expose())
    ));
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

pub(crate) fn check_permissions(path: &Path) -> Result<(), KekError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(io(path))?;
        let mode = m.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KekError::Permissions {
                path: path.display().to_string(),
                why: format!("mode {mode:04o} lets group or others read it"),
            });
        }
        if let Some(me) = effective_uid() {
            if m.uid() != me {
                return Err(KekError::Permissions {
                    path: path.display().to_string(),
                    why: format!("owned by uid {}, not by this process's uid {me}", m.uid()),
                });
            }
        }
    }
    Ok(())
}

/// This process's effective uid, from `/proc/self/status` (no `unsafe` libc call).
fn effective_uid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_refused_when_readable_by_others() {
        let dir = crate::loopback::scratch_dir("kek").unwrap();
        let p = dir.join("n.kek");
        let k = create_key_file(&p).unwrap();
        assert_eq!(read_key_file(&p).unwrap().key(), k.key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = read_key_file(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        }
        // Never overwritten.
        assert!(create_key_file(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sealed_store_without_its_key_file_refuses_and_says_why() {
        let dir = crate::loopback::scratch_dir("kek").unwrap();
        let conn = Connection::open(dir.join("n.db")).unwrap();
        let cfg = SealConfig::default();
        let kek = resolve(&cfg, &dir, "n", &conn, &dir.join("n.db")).unwrap();
        super::super::unseal_db(&conn, &kek, "n").unwrap();
        std::fs::remove_file(dir.join("n.kek")).unwrap();
        let e = resolve(&cfg, &dir, "n", &conn, &dir.join("n.db"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passphrase_kek_is_stable_per_salt() {
        let a = derive_from_passphrase(b"correct horse", b"0123456789abcdef").unwrap();
        let b = derive_from_passphrase(b"correct horse", b"0123456789abcdef").unwrap();
        let c = derive_from_passphrase(b"correct horsf", b"0123456789abcdef").unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
    }
}
