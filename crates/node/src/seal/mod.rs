//! Sealing: every stored value is encrypted and authenticated, so whoever holds the disk learns
//! no key and cannot edit, move or swap a record unnoticed.
//!
//! * A **data-encryption key** (DEK, 32 random bytes) per database file seals every value with
//!   AES-256-GCM-SIV (RustCrypto `aes-gcm-siv`: nonce-misuse resistant, so even a repeated random
//!   nonce leaks only equality). The associated data names the database, the record's kind and
//!   its key, so a value moved to another row, kind or file fails authentication.
//! * The DEK is stored only **wrapped** by a key-encryption key (KEK) in the file's `seal_meta`
//!   table. The KEK comes from a key file, a passphrase (Argon2id) or a PKCS#11 token
//!   ([`kek`]); it is dropped (zeroized) as soon as the DEKs are unwrapped.
//! * A sealed value is `0x01 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`. Version `0x00` marks a
//!   plaintext value, accepted only by an explicitly unsealed store (benchmarks): a sealed store
//!   treats it as an authentication failure, so nobody can downgrade a record by writing it in
//!   the clear.

pub mod admin;
pub mod erase;
pub mod kek;
pub mod links;
pub mod node;
pub mod pkcs11;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use kagi_keymat::Key;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

pub use kek::{Kek, KekError};

/// Sealing work done by this process: values sealed or opened by a sealing [`Sealer`], their
/// plaintext bytes, and the nanoseconds spent (nonce, associated data, AEAD, copies). Read by
/// `kagi bench etsi` to tell what the seal itself costs per delivered key.
static WORK: [std::sync::atomic::AtomicU64; 3] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 3];

/// Values, plaintext bytes and nanoseconds of sealing work so far (see [`Sealer::seal`],
/// [`Sealer::open`]); process-wide.
pub fn work() -> (u64, u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (
        WORK[0].load(Relaxed),
        WORK[1].load(Relaxed),
        WORK[2].load(Relaxed),
    )
}

fn count_work(bytes: usize, since: std::time::Instant) {
    use std::sync::atomic::Ordering::Relaxed;
    WORK[0].fetch_add(1, Relaxed);
    WORK[1].fetch_add(bytes as u64, Relaxed);
    WORK[2].fetch_add(since.elapsed().as_nanos() as u64, Relaxed);
}

const SEALED_V1: u8 = 1;
const PLAIN_V0: u8 = 0;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Sealing failures.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A value failed authentication (edited, moved, swapped, truncated, or written in the clear).
    #[error("{kind}/{key}: failed authentication ({why})")]
    Auth {
        /// Record kind.
        kind: String,
        /// Record key.
        key: String,
        /// What was wrong.
        why: &'static str,
    },
    /// The KEK does not unwrap this database's DEK.
    #[error("{0}: the key-encryption key does not unseal this store (wrong key file, passphrase or token, or the wrapped key was altered)")]
    WrongKek(String),
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The KEK could not wrap a data key (a token failed).
    #[error("{0}")]
    Wrap(String),
}

impl From<KekError> for SealError {
    fn from(e: KekError) -> Self {
        SealError::Wrap(e.to_string())
    }
}

/// The DEK of one database file, ready to seal and open values.
pub struct Sealer {
    /// `None` for a plaintext (benchmark) sealer.
    aead: Option<std::sync::RwLock<Option<Aes256GcmSiv>>>,
    label: String,
}

/// Version byte of values sealed after [`Sealer::wipe`]: they open nowhere.
const WIPED: u8 = 0xff;

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("label", &self.label)
            .field("sealed", &self.aead.is_some())
            .field("wiped", &self.is_wiped())
            .finish()
    }
}

impl Sealer {
    /// A sealer with `dek` for the database labelled `label` (the label is part of every
    /// value's associated data).
    pub fn new(dek: &Key, label: &str) -> Self {
        Self {
            aead: Some(std::sync::RwLock::new(Some(
                Aes256GcmSiv::new_from_slice(dek.expose()).expect("DEK is 32 bytes"),
            ))),
            label: label.to_string(),
        }
    }

    /// A sealer that stores values in the clear: only for benchmarks measuring what sealing
    /// costs. It refuses to open sealed values and a sealed store refuses its values.
    pub fn plaintext(label: &str) -> Self {
        Self {
            aead: None,
            label: label.to_string(),
        }
    }

    /// True when values are encrypted.
    pub fn is_sealed(&self) -> bool {
        self.aead.is_some()
    }

    /// Drops the DEK (its AES key schedule is zeroized on drop): the tamper response. Values
    /// opened afterwards fail; values sealed afterwards are marked so that they never open.
    pub fn wipe(&self) {
        if let Some(l) = &self.aead {
            let old = match l.write() {
                Ok(mut g) => g.take(),
                Err(p) => p.into_inner().take(),
            };
            drop(old);
        }
    }

    /// True once [`Self::wipe`] ran on a sealing sealer.
    pub fn is_wiped(&self) -> bool {
        self.aead
            .as_ref()
            .is_some_and(|l| l.read().map(|g| g.is_none()).unwrap_or(true))
    }

    fn aad(&self, kind: &str, key: &str) -> Vec<u8> {
        let mut a = Vec::with_capacity(16 + self.label.len() + kind.len() + key.len());
        a.extend_from_slice(b"kagi-seal-v1\0");
        a.extend_from_slice(self.label.as_bytes());
        a.push(0);
        a.extend_from_slice(kind.as_bytes());
        a.push(0);
        a.extend_from_slice(key.as_bytes());
        a
    }

    /// Seals `plain` as the value of record `kind`/`key`.
    pub fn seal(&self, kind: &str, key: &str, plain: &[u8]) -> Vec<u8> {
        let Some(lock) = &self.aead else {
            let mut v = Vec::with_capacity(1 + plain.len());
            v.push(PLAIN_V0);
            v.extend_from_slice(plain);
            return v;
        };
        let guard = lock.read().unwrap_or_else(|p| p.into_inner());
        let Some(aead) = guard.as_ref() else {
            // Wiped: no key to seal with, and never the plaintext.
            return vec![WIPED];
        };
        let t0 = std::time::Instant::now();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = self.aad(kind, key);
        let ct = aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .expect("AES-GCM-SIV encrypts any length we store");
        let mut v = Vec::with_capacity(OVERHEAD + plain.len());
        v.push(SEALED_V1);
        v.extend_from_slice(&nonce);
        v.extend_from_slice(&ct);
        count_work(plain.len(), t0);
        v
    }

    /// Opens the value of record `kind`/`key`; the plaintext is wiped when dropped.
    pub fn open(
        &self,
        kind: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let fail = |why| SealError::Auth {
            kind: kind.to_string(),
            key: key.to_string(),
            why,
        };
        let (&version, rest) = sealed.split_first().ok_or_else(|| fail("empty value"))?;
        let guard = self
            .aead
            .as_ref()
            .map(|l| l.read().unwrap_or_else(|p| p.into_inner()));
        let aead = match &guard {
            None => None,
            Some(g) => Some(g.as_ref().ok_or_else(|| fail("the data key was wiped"))?),
        };
        match (aead, version) {
            (None, PLAIN_V0) => Ok(Zeroizing::new(rest.to_vec())),
            (None, _) => Err(fail("sealed value in an unsealed store")),
            (Some(_), PLAIN_V0) => Err(fail("plaintext value in a sealed store")),
            (Some(aead), SEALED_V1) => {
                if rest.len() < NONCE_LEN + TAG_LEN {
                    return Err(fail("truncated"));
                }
                let t0 = std::time::Instant::now();
                let (nonce, ct) = rest.split_at(NONCE_LEN);
                let aad = self.aad(kind, key);
                let r = aead
                    .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                    .map(Zeroizing::new)
                    .map_err(|_| fail("tag mismatch"));
                count_work(ct.len(), t0);
                r
            }
            (Some(_), _) => Err(fail("unknown seal version")),
        }
    }
}

/// The `seal_meta` table every sealed database carries.
const META_DDL: &str =
    "CREATE TABLE IF NOT EXISTS seal_meta (name TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;";

/// Reads a `seal_meta` entry.
pub fn meta_get(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>, SealError> {
    conn.execute_batch(META_DDL)?;
    Ok(conn
        .query_row(
            "SELECT v FROM seal_meta WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?)
}

/// Writes a `seal_meta` entry.
pub fn meta_put(conn: &Connection, name: &str, v: &[u8]) -> Result<(), SealError> {
    conn.execute_batch(META_DDL)?;
    conn.execute(
        "INSERT OR REPLACE INTO seal_meta (name, v) VALUES (?1, ?2)",
        params![name, v],
    )?;
    Ok(())
}

/// True when the database at `conn` already holds a wrapped DEK (it was sealed before).
pub fn has_dek(conn: &Connection) -> Result<bool, SealError> {
    Ok(meta_get(conn, "dek")?.is_some())
}

/// Unwraps the DEK of the database at `conn` with `kek`, or creates and stores one when the
/// database has none yet. Returns the sealer and whether the DEK is new.
pub fn unseal_db(conn: &Connection, kek: &Kek, label: &str) -> Result<(Sealer, bool), SealError> {
    if let Some(wrapped) = meta_get(conn, "dek")? {
        let dek = kek
            .unwrap(label, &wrapped)
            .ok_or_else(|| SealError::WrongKek(label.to_string()))?;
        return Ok((Sealer::new(&dek, label), false));
    }
    let mut dek = Key::zeroed(32);
    rand::rngs::OsRng.fill_bytes(dek.expose_mut());
    meta_put(conn, "dek", &kek.wrap(label, dek.expose())?)?;
    meta_put(conn, "kek_kind", kek.kind().as_bytes())?;
    Ok((Sealer::new(&dek, label), true))
}

/// Re-wraps the DEK of the database at `conn` under `new` (KEK rotation): the records stay as
/// they are, only the wrapped DEK changes, in one statement.
pub fn rewrap_db(conn: &Connection, old: &Kek, new: &Kek, label: &str) -> Result<(), SealError> {
    let wrapped = meta_get(conn, "dek")?.ok_or_else(|| SealError::WrongKek(label.to_string()))?;
    let dek = old
        .unwrap(label, &wrapped)
        .ok_or_else(|| SealError::WrongKek(label.to_string()))?;
    let tx = conn.unchecked_transaction()?;
    meta_put(&tx, "dek", &new.wrap(label, dek.expose())?)?;
    meta_put(&tx, "kek_kind", new.kind().as_bytes())?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&Key::from_slice(&[9; 32]), "t")
    }

    #[test]
    fn round_trips_and_binds_kind_key_and_label() {
        let s = sealer();
        let v = s.seal("chunk", "out/b/1", b"secret bytes");
        assert!(!v.windows(6).any(|w| w == b"secret"));
        assert_eq!(&*s.open("chunk", "out/b/1", &v).unwrap(), b"secret bytes");
        assert!(
            s.open("chunk", "out/b/2", &v).is_err(),
            "moved to another key"
        );
        assert!(
            s.open("slave_key", "out/b/1", &v).is_err(),
            "moved to another kind"
        );
        let other = Sealer::new(&Key::from_slice(&[9; 32]), "u");
        assert!(
            other.open("chunk", "out/b/1", &v).is_err(),
            "moved to another file"
        );
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 1;
            assert!(
                s.open("chunk", "out/b/1", &bad).is_err(),
                "byte {i} flipped"
            );
        }
    }

    #[test]
    fn plaintext_values_are_refused_by_a_sealed_store_and_vice_versa() {
        let p = Sealer::plaintext("t");
        let v = p.seal("chunk", "k", b"abc");
        assert_eq!(&*p.open("chunk", "k", &v).unwrap(), b"abc");
        assert!(sealer().open("chunk", "k", &v).is_err());
        assert!(p
            .open("chunk", "k", &sealer().seal("chunk", "k", b"abc"))
            .is_err());
    }

    #[test]
    fn a_wiped_sealer_opens_nothing_and_seals_nothing_readable() {
        let s = sealer();
        let v = s.seal("chunk", "k", b"abc");
        s.wipe();
        assert!(s.is_wiped());
        assert!(s.open("chunk", "k", &v).is_err());
        let after = s.seal("chunk", "k", b"abc");
        assert!(!after.windows(3).any(|w| w == b"abc"));
        assert!(sealer().open("chunk", "k", &after).is_err());
    }

    #[test]
    fn dek_unwraps_only_with_its_kek_and_survives_rewrap() {
        let conn = Connection::open_in_memory().unwrap();
        let k1 = Kek::from_key(Key::from_slice(&[1; 32]), "file");
        let k2 = Kek::from_key(Key::from_slice(&[2; 32]), "passphrase");
        let (s, new) = unseal_db(&conn, &k1, "n").unwrap();
        assert!(new);
        let v = s.seal("counter", "Relay", b"7");
        assert!(matches!(
            unseal_db(&conn, &k2, "n"),
            Err(SealError::WrongKek(_))
        ));
        rewrap_db(&conn, &k1, &k2, "n").unwrap();
        assert!(unseal_db(&conn, &k1, "n").is_err());
        let (s2, new) = unseal_db(&conn, &k2, "n").unwrap();
        assert!(!new);
        assert_eq!(&*s2.open("counter", "Relay", &v).unwrap(), b"7");
    }
}
