//! Crypto-erase (`POST /api/v1/erase`): the node destroys what unseals its stored keys, so that
//! nothing it stored can be recovered — not even by someone who copied its key-encryption key
//! beforehand.
//!
//! Every table of the key store and of the photon ledger is emptied with `secure_delete` on
//! (freed pages are zeroed), the files are vacuumed and their WAL truncated, so the wrapped data
//! keys, the link secrets, the audit signing key and every sealed record are gone from the files;
//! the key file is overwritten and removed; a PKCS#11 key is destroyed on the token only when
//! `[store.seal.pkcs11] destroy_on_erase = true` (a token key may be shared policy, so by default
//! the operator destroys it). The wrapped data key alone is what the KEK unlocks: once it is gone,
//! a copy of the KEK opens nothing, so the overwrite of the key file is belt and braces (file
//! systems do not promise that an overwrite reaches the same blocks).
//!
//! The store keeps one plaintext `seal_meta` entry, `erased`, saying when, by whom and why; a
//! start on an erased store is refused naming it ([`check_not_erased`]).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::kek::{self, KekKind};
use super::pkcs11::Pkcs11Config;
use crate::config::NodeConfig;
use crate::store::{checkpoint_truncate, open_db, Sync};

/// The `seal_meta` entry that marks an erased store.
const MARKER: &str = "erased";

/// What a node erases: its two database files and its KEK.
#[derive(Debug, Clone)]
pub struct EraseTargets {
    node_id: String,
    store: PathBuf,
    photon: PathBuf,
    sync: Sync,
    key_file: Option<PathBuf>,
    token: Option<Pkcs11Config>,
}

impl EraseTargets {
    /// The files and key of the node `cfg` describes.
    pub fn for_node(cfg: &NodeConfig) -> Self {
        let (store, photon) = super::admin::db_paths(cfg);
        let seal = &cfg.store.seal;
        Self {
            node_id: cfg.node_id.clone(),
            store,
            photon,
            sync: cfg.store.synchronous,
            key_file: (seal.kek == KekKind::File && !seal.unsealed_for_benchmarks)
                .then(|| kek::key_file_path(seal, &cfg.data_dir, &cfg.node_id)),
            token: seal
                .pkcs11
                .clone()
                .filter(|p| seal.kek == KekKind::Pkcs11 && p.destroy_on_erase),
        }
    }
}

/// Erase failures.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// A database could not be emptied.
    #[error("{path}: {err}")]
    Db {
        /// The file.
        path: String,
        /// What SQLite said.
        err: rusqlite::Error,
    },
    /// The key file could not be destroyed.
    #[error("key file {path}: {err}")]
    KeyFile {
        /// The file.
        path: String,
        /// The error.
        err: std::io::Error,
    },
    /// The token refused to destroy the key.
    #[error("{0}")]
    Token(String),
}

/// Erases everything `t` names; `note` (time, operator, reason) is kept as the erase marker.
/// Returns what was destroyed, for the audit trail and the operator.
///
/// The store goes first: its wrapped data key is the one thing a copied KEK could still open.
///
/// # Errors
/// A step fails; the steps before it stay done (erasing is never undone), and the caller reports
/// which step failed.
pub fn erase(t: &EraseTargets, note: &str) -> Result<Vec<String>, EraseError> {
    let mut done = Vec::new();
    let rows = erase_db(&t.store, t.sync, Some(note))?;
    done.push(format!(
        "store {}: data key, link secrets, audit signing key and {rows} rows destroyed",
        t.store.display()
    ));
    if t.photon.exists() {
        let rows = erase_db(&t.photon, t.sync, None)?;
        done.push(format!(
            "photon ledger {}: data key and {rows} rows destroyed",
            t.photon.display()
        ));
    }
    if let Some(p) = &t.key_file {
        if p.exists() {
            destroy_key_file(p).map_err(|err| EraseError::KeyFile {
                path: p.display().to_string(),
                err,
            })?;
            done.push(format!("key file {} overwritten and removed", p.display()));
        }
    }
    if let Some(p) = &t.token {
        let label = p.key_label(&t.node_id);
        super::pkcs11::TokenKek::destroy(p, &label)
            .map_err(|e| EraseError::Token(e.to_string()))?;
        done.push(format!(
            "token key {label:?} destroyed on token {:?}",
            p.token
        ));
    }
    Ok(done)
}

/// Empties every table of the database at `path` (zeroing freed pages), keeps `marker` as the
/// erase marker, vacuums, and truncates the WAL. Returns the rows deleted.
fn erase_db(path: &Path, sync: Sync, marker: Option<&str>) -> Result<usize, EraseError> {
    let db = |err| EraseError::Db {
        path: path.display().to_string(),
        err,
    };
    let conn = open_db(path, sync).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    let rows = empty_tables(&conn, marker).map_err(db)?;
    // VACUUM rewrites the file from the (now empty) tables, so no freed page keeps old bytes,
    // then the WAL that carried the rewrite is folded in and truncated to zero.
    conn.execute_batch("VACUUM").map_err(db)?;
    checkpoint_truncate(&conn).map_err(db)?;
    Ok(rows)
}

fn empty_tables(conn: &Connection, marker: Option<&str>) -> Result<usize, rusqlite::Error> {
    conn.pragma_update(None, "secure_delete", "ON")?;
    let tables: Vec<String> = {
        let mut st = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?;
        let r = st.query_map([], |r| r.get(0))?;
        r.collect::<Result<_, _>>()?
    };
    let tx = conn.unchecked_transaction()?;
    let mut rows = 0;
    for t in &tables {
        // Names from sqlite_master, quoted: no input reaches this statement.
        rows += tx.execute(&format!("DELETE FROM \"{}\"", t.replace('"', "\"\"")), [])?;
    }
    if let Some(m) = marker {
        tx.execute_batch(super::META_DDL)?;
        tx.execute(
            "INSERT OR REPLACE INTO seal_meta (name, v) VALUES (?1, ?2)",
            params![MARKER, m.as_bytes()],
        )?;
    }
    tx.commit()?;
    Ok(rows)
}

/// Overwrites the key file with zeros (synced), then removes it.
fn destroy_key_file(p: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let len = std::fs::metadata(p)?.len() as usize;
    let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
    f.write_all(&vec![0u8; len])?;
    f.sync_all()?;
    drop(f);
    std::fs::remove_file(p)
}

/// The erase marker of the store at `conn`, if it was erased.
pub fn marker(conn: &Connection) -> Result<Option<String>, rusqlite::Error> {
    let has_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seal_meta'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_meta {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT v FROM seal_meta WHERE name = ?1",
            params![MARKER],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .optional()?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Refuses a start on a store that was crypto-erased, naming the erase.
///
/// # Errors
/// The store was erased, or SQLite fails.
pub fn check_not_erased(node_id: &str, db: &Path, conn: &Connection) -> anyhow::Result<()> {
    if let Some(m) = marker(conn)? {
        anyhow::bail!(
            "node {node_id} was crypto-erased ({m}); its store {} holds no keys and its \
             key-encryption key was destroyed, so it will not start: remove the node's data \
             directory and provision it again (`kagi up` on a fresh directory)",
            db.display()
        );
    }
    Ok(())
}

/// The note kept as the erase marker: when, who, why.
pub fn note(who: &str, reason: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("erased at unix time {secs} by {who}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    #[test]
    fn erase_leaves_no_wrapped_key_or_sealed_value_and_the_store_refuses_to_start() {
        let d = crate::loopback::scratch_dir("erase").unwrap();
        let mut topo =
            kagi_control::Topology::line("p", &["a", "b"], 5.0, |n| vec![format!("sae-{n}")]);
        let cfg = crate::loopback::prepare(&d, &mut topo, |_| {})
            .unwrap()
            .remove(0);
        let (db, photon) = super::super::admin::db_paths(&cfg);
        std::fs::create_dir_all(&cfg.data_dir).unwrap();
        let seals = super::super::node::unseal_node(&cfg, &db, Some(&photon)).unwrap();
        // A record as the node writes it, and the wrapped data keys and link secret as stored.
        let sealed = {
            let mut s = crate::store::SqliteStore::open_sealed(
                &db,
                cfg.store.synchronous,
                seals.store.clone(),
            )
            .unwrap();
            s.write(&[&crate::store::tests::one_of_each()]).unwrap();
            let conn = open_db(&db, cfg.store.synchronous).unwrap();
            let mut st = conn.prepare("SELECT v FROM records").unwrap();
            let mut v: Vec<Vec<u8>> = st
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            v.extend(
                conn.prepare("SELECT v FROM seal_meta")
                    .unwrap()
                    .query_map([], |r| r.get::<_, Vec<u8>>(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .filter(|v| v.len() >= 32),
            );
            let pconn = open_db(&photon, cfg.store.synchronous).unwrap();
            v.push(super::super::meta_get(&pconn, "dek").unwrap().unwrap());
            v
        };
        assert!(sealed.len() > 8, "{}", sealed.len());
        drop(seals);
        let kek_copy = std::fs::read(kek::key_file_path(
            &cfg.store.seal,
            &cfg.data_dir,
            &cfg.node_id,
        ))
        .unwrap();

        let done = erase(&EraseTargets::for_node(&cfg), &note("op", "decommissioned")).unwrap();
        assert_eq!(done.len(), 3, "{done:?}");
        for (p, bytes) in all_files(&d) {
            for v in &sealed {
                assert!(
                    !contains(&bytes, v),
                    "{} still holds a sealed value",
                    p.display()
                );
            }
            assert!(
                !contains(&bytes, &kek_copy),
                "{} holds the key file",
                p.display()
            );
        }
        assert!(!kek::key_file_path(&cfg.store.seal, &cfg.data_dir, &cfg.node_id).exists());
        let e = super::super::node::unseal_node(&cfg, &db, Some(&photon))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("crypto-erased") && e.contains("decommissioned"),
            "{e}"
        );
        // No new key file was made by the refused start.
        assert!(!kek::key_file_path(&cfg.store.seal, &cfg.data_dir, &cfg.node_id).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
