//! Operator commands on a node's seal (`kagi seal status`, `kagi seal rewrap`).
//!
//! Both work on the files while the node runs: status reads metadata only (no KEK needed), and
//! a rewrap changes only the wrapped data key in each file, in one transaction per file; the
//! running node keeps its unwrapped data key in memory, so there is no downtime, and its next
//! start uses the new KEK. A rewrap rotates a key file, a token key or a passphrase, or moves a
//! node between a key file and a passphrase ([`rewrap_to`]).

use std::path::{Path, PathBuf};

use rusqlite::OptionalExtension;
use serde::Serialize;

use super::kek::{self, KekKind};
use super::node::PHOTON_LABEL;
use super::{has_dek, meta_get, rewrap_db};
use crate::config::NodeConfig;
use crate::store::{open_db, STORE_LABEL};

/// What `kagi seal status` reports about one sealed file.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    /// The database file.
    pub path: PathBuf,
    /// Whether it exists.
    pub exists: bool,
    /// Whether it holds a wrapped data key.
    pub sealed: bool,
    /// The KEK kind recorded when the data key was last wrapped.
    pub kek_kind: Option<String>,
    /// Records quarantined after failing authentication (store only).
    pub quarantined: Option<u64>,
}

/// What `kagi seal status` reports about a node.
#[derive(Debug, Clone, Serialize)]
pub struct SealStatus {
    /// The node.
    pub node_id: String,
    /// `file`, `passphrase` or `pkcs11`, as configured.
    pub kek_source: String,
    /// For `pkcs11`: the module, token label and key label (status never logs in).
    pub token: Option<String>,
    /// The key file, for `file`.
    pub key_file: Option<PathBuf>,
    /// Whether the key file passes the permission check (`None` when not a file KEK or absent).
    pub key_file_ok: Option<Result<(), String>>,
    /// The key store.
    pub store: FileStatus,
    /// The photon ledger.
    pub photon_ledger: FileStatus,
    /// Fingerprint of the audit signing key (`<node>-audit.pub`).
    pub audit_key: Option<String>,
    /// Entries, checkpoints and first problem of the audit trail.
    pub audit_trail: Option<String>,
}

fn file_status(path: &Path, cfg: &NodeConfig, store: bool) -> anyhow::Result<FileStatus> {
    if !path.exists() {
        return Ok(FileStatus {
            path: path.to_owned(),
            exists: false,
            sealed: false,
            kek_kind: None,
            quarantined: None,
        });
    }
    let conn = open_db(path, cfg.store.synchronous)?;
    let quarantined = if store {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .filter(|n| *n > 0)
        .and_then(|_| {
            conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .ok()
            .flatten()
        })
        .map(|n| n as u64)
    } else {
        None
    };
    Ok(FileStatus {
        path: path.to_owned(),
        exists: true,
        sealed: has_dek(&conn)?,
        kek_kind: meta_get(&conn, "kek_kind")?.map(|v| String::from_utf8_lossy(&v).into_owned()),
        quarantined,
    })
}

/// The node's paths: key store, photon ledger.
pub fn db_paths(cfg: &NodeConfig) -> (PathBuf, PathBuf) {
    (
        cfg.data_dir.join(format!("{}.db", cfg.node_id)),
        cfg.data_dir.join(format!("{}-photon.db", cfg.node_id)),
    )
}

/// Reports the node's seal without unsealing it.
pub fn status(cfg: &NodeConfig) -> anyhow::Result<SealStatus> {
    let (db, photon) = db_paths(cfg);
    let seal = &cfg.store.seal;
    let (kek_source, key_file, key_file_ok) = match seal.kek {
        KekKind::File => {
            let p = kek::key_file_path(seal, &cfg.data_dir, &cfg.node_id);
            let ok = p.exists().then(|| {
                kek::read_key_file(&p)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            ("file", Some(p), ok)
        }
        KekKind::Passphrase => ("passphrase", None, None),
        KekKind::Pkcs11 => ("pkcs11", None, None),
    };
    let pub_path = crate::audit::signer::public_key_path(&cfg.data_dir, &cfg.node_id);
    let audit_key = crate::audit::signer::read_public_key(&pub_path)
        .ok()
        .map(|k| crate::audit::signer::fingerprint(&k));
    let trail = crate::audit::trail_path(&cfg.data_dir, &cfg.node_id);
    let audit_trail = trail.exists().then(|| {
        let r = crate::audit::verify::check_file(&trail);
        match r.problem {
            None => format!(
                "{} entries, {} signed checkpoints, verifies",
                r.entries, r.checkpoints
            ),
            Some(p) => format!("does not verify at entry {}: {}", p.line, p.why),
        }
    });
    let token = seal
        .pkcs11
        .as_ref()
        .filter(|_| seal.kek == KekKind::Pkcs11)
        .map(|p| {
            format!(
                "module {}, token {:?}, key {:?}",
                p.module.display(),
                p.token,
                p.key_label(&cfg.node_id)
            )
        });
    Ok(SealStatus {
        node_id: cfg.node_id.clone(),
        kek_source: kek_source.into(),
        token,
        key_file,
        key_file_ok,
        store: file_status(&db, cfg, true)?,
        photon_ledger: file_status(&photon, cfg, false)?,
        audit_key,
        audit_trail,
    })
}

/// What a rewrap did.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrapped {
    /// The KEK now in use: the key file (same path as before) or the token key (same label).
    pub kek: String,
    /// Where the previous KEK was kept: a renamed key file or token key (delete it once the node
    /// started with the new one).
    pub previous: String,
    /// The files whose data key was rewrapped.
    pub files: Vec<PathBuf>,
    /// What the operator must change in `node.toml` before the node's next start, if anything.
    pub config_change: Option<String>,
}

/// Rotates a node's key-file KEK: a new key file is created beside the old one, every sealed
/// file's data key is rewrapped under it (one transaction per file), then the old file is
/// renamed to `<key_file>.old-<unix time>` and the new one takes its place. A crash midway leaves
/// both keys on disk (`.new` and the old name), so nothing is lost. Passphrase KEKs are not
/// rotated by this function.
pub fn rewrap_key_file(cfg: &NodeConfig) -> anyhow::Result<Rewrapped> {
    let seal = &cfg.store.seal;
    anyhow::ensure!(
        seal.kek == KekKind::File,
        "only a key-file KEK can be rotated here (this node uses a passphrase)"
    );
    let path = kek::key_file_path(seal, &cfg.data_dir, &cfg.node_id);
    anyhow::ensure!(path.exists(), "no key file at {}", path.display());
    let old = kek::read_key_file(&path)?;
    let targets = sealed_files(cfg, &old)?;
    let new_path = path.with_extension("kek.new");
    anyhow::ensure!(
        !new_path.exists(),
        "{} exists (an earlier rotation did not finish): check which key unseals the store \
         with `kagi seal status`, keep that one, remove the other",
        new_path.display()
    );
    let new = kek::create_key_file(&new_path)?;
    let mut files = Vec::new();
    for (p, label, conn) in &targets {
        rewrap_db(conn, &old, &new, label).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        files.push(p.clone());
    }
    let previous = path.with_extension(format!("kek.old-{}", unix_now()));
    std::fs::rename(&path, &previous)?;
    std::fs::rename(&new_path, &path)?;
    Ok(Rewrapped {
        kek: path.display().to_string(),
        previous: previous.display().to_string(),
        files,
        config_change: None,
    })
}

/// The node's sealed files, each checked to unwrap under `old` first, so that a failure leaves
/// nothing half-done.
fn sealed_files(
    cfg: &NodeConfig,
    old: &kek::Kek,
) -> anyhow::Result<Vec<(PathBuf, &'static str, rusqlite::Connection)>> {
    let (db, photon) = db_paths(cfg);
    let mut targets = Vec::new();
    for (p, label) in [(&db, STORE_LABEL), (&photon, PHOTON_LABEL)] {
        if p.exists() {
            let conn = open_db(p, cfg.store.synchronous)?;
            if has_dek(&conn)? {
                let wrapped = meta_get(&conn, "dek")?.unwrap_or_default();
                anyhow::ensure!(
                    old.unwrap(label, &wrapped).is_some(),
                    "{}: the current KEK does not unseal it",
                    p.display()
                );
                targets.push((p.clone(), label, conn));
            }
        }
    }
    anyhow::ensure!(!targets.is_empty(), "no sealed file to rewrap");
    Ok(targets)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Rotates the node's KEK, whatever its kind: see [`rewrap_key_file`] and [`rewrap_token`].
pub fn rewrap(cfg: &NodeConfig) -> anyhow::Result<Rewrapped> {
    match cfg.store.seal.kek {
        KekKind::File => rewrap_key_file(cfg),
        KekKind::Pkcs11 => rewrap_token(cfg),
        KekKind::Passphrase => rewrap_passphrase(cfg, KekKind::Passphrase, None),
    }
}

/// Rotates the node's KEK to one of kind `to`: the same kind (a new key file, token key or
/// passphrase), or between a key file and a passphrase. `new_pass_env` names the environment
/// variable holding a new passphrase; without it the passphrase is asked for twice on the
/// terminal. The current passphrase comes from `[store.seal] passphrase_env` (default
/// `KAGI_SEAL_PASSPHRASE`) or the terminal, as at a start.
///
/// # Errors
/// A move onto or off a token, a KEK that does not unseal the files, a new passphrase equal to
/// the old one, or a file or token failure.
pub fn rewrap_to(
    cfg: &NodeConfig,
    to: KekKind,
    new_pass_env: Option<&str>,
) -> anyhow::Result<Rewrapped> {
    match (cfg.store.seal.kek, to) {
        (KekKind::File, KekKind::File) => rewrap_key_file(cfg),
        (KekKind::Pkcs11, KekKind::Pkcs11) => rewrap_token(cfg),
        (KekKind::Pkcs11, _) | (_, KekKind::Pkcs11) => anyhow::bail!(
            "moving a KEK onto or off a PKCS#11 token is not supported: seal a new store on the \
             token instead"
        ),
        _ => rewrap_passphrase(cfg, to, new_pass_env),
    }
}

/// `seal_meta` name of the salt a passphrase rotation derives its new KEK with until the store
/// itself is rewrapped (so that a rotation cut short can be run again to the end).
const NEXT_SALT: &str = "kek_salt_next";

fn new_passphrase(env: Option<&str>) -> anyhow::Result<kagi_keymat::Key> {
    if let Some(var) = env {
        return kek::read_passphrase(var, "")
            .map_err(|_| anyhow::anyhow!("the new passphrase's variable {var} is not set"));
    }
    let var = "KAGI_SEAL_NEW_PASSPHRASE_UNSET_";
    let a = kek::read_passphrase(var, "new passphrase: ").map_err(|_| {
        anyhow::anyhow!("no new passphrase: pass --new-passphrase-env VAR or run on a terminal")
    })?;
    let b = kek::read_passphrase(var, "new passphrase again: ")?;
    anyhow::ensure!(a == b, "the two new passphrases differ");
    Ok(a)
}

/// Rotates a passphrase KEK, or moves between a key file and a passphrase. The files are
/// rewrapped photon ledger first, store last; the store's transaction also makes the new salt
/// the current one, so until it commits the old KEK still opens the store, and a run cut short
/// is finished by running it again (a file already under the new KEK is skipped).
fn rewrap_passphrase(
    cfg: &NodeConfig,
    to: KekKind,
    new_pass_env: Option<&str>,
) -> anyhow::Result<Rewrapped> {
    let seal = &cfg.store.seal;
    let (db, photon) = db_paths(cfg);
    anyhow::ensure!(db.exists(), "no store at {}", db.display());
    let conn = open_db(&db, cfg.store.synchronous)?;
    anyhow::ensure!(has_dek(&conn)?, "{}: not sealed yet", db.display());
    let key_path = kek::key_file_path(seal, &cfg.data_dir, &cfg.node_id);
    // The current KEK.
    let (old, old_pass) = match seal.kek {
        KekKind::File => (kek::read_key_file(&key_path)?, None),
        KekKind::Passphrase => {
            let var = seal
                .passphrase_env
                .clone()
                .unwrap_or_else(|| kek::DEFAULT_PASSPHRASE_ENV.to_string());
            let pass = kek::read_passphrase(&var, "current passphrase: ")?;
            let salt = meta_get(&conn, "kek_salt")?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no passphrase salt: not sealed by a passphrase",
                    db.display()
                )
            })?;
            (
                kek::derive_from_passphrase(pass.expose(), &salt)?,
                Some(pass),
            )
        }
        KekKind::Pkcs11 => anyhow::bail!("this node's KEK is on a token"),
    };
    // The new KEK.
    let new_key_path = key_path.with_extension("kek.new");
    let (new, salt) = match to {
        KekKind::Passphrase => {
            let pass = new_passphrase(new_pass_env)?;
            anyhow::ensure!(
                old_pass.as_ref() != Some(&pass),
                "the new passphrase is the current one"
            );
            let salt = match meta_get(&conn, NEXT_SALT)? {
                Some(s) => s,
                None => {
                    let mut s = vec![0u8; 16];
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
                    super::meta_put(&conn, NEXT_SALT, &s)?;
                    s
                }
            };
            (
                kek::derive_from_passphrase(pass.expose(), &salt)?,
                Some(salt),
            )
        }
        KekKind::File => {
            anyhow::ensure!(
                !key_path.exists(),
                "a key file exists at {}: move it away first (or set key_file elsewhere)",
                key_path.display()
            );
            // A run cut short left its new key file: finish with it.
            let k = if new_key_path.exists() {
                kek::read_key_file(&new_key_path)?
            } else {
                kek::create_key_file(&new_key_path)?
            };
            (k, None)
        }
        KekKind::Pkcs11 => anyhow::bail!("moving a KEK onto a token is not supported"),
    };
    drop(conn);
    let mut files = Vec::new();
    for (p, label) in [(&photon, PHOTON_LABEL), (&db, STORE_LABEL)] {
        if !p.exists() {
            continue;
        }
        let conn = open_db(p, cfg.store.synchronous)?;
        let Some(wrapped) = meta_get(&conn, "dek")? else {
            continue;
        };
        let is_store = label == STORE_LABEL;
        let done = new.unwrap(label, &wrapped).is_some();
        anyhow::ensure!(
            done || old.unwrap(label, &wrapped).is_some(),
            "{}: the current KEK does not unseal it",
            p.display()
        );
        if done && !is_store {
            continue;
        }
        let tx = conn.unchecked_transaction()?;
        if !done {
            // In this file's one transaction (rewrap_db opens its own).
            let dek = old.unwrap(label, &wrapped).ok_or_else(|| {
                anyhow::anyhow!("{}: the current KEK does not unseal it", p.display())
            })?;
            super::meta_put(&tx, "dek", &new.wrap(label, dek.expose())?)?;
            super::meta_put(&tx, "kek_kind", new.kind().as_bytes())?;
        }
        if is_store {
            match &salt {
                Some(s) => super::meta_put(&tx, "kek_salt", s)?,
                None => {
                    tx.execute("DELETE FROM seal_meta WHERE name = 'kek_salt'", [])?;
                }
            }
            tx.execute("DELETE FROM seal_meta WHERE name = ?1", [NEXT_SALT])?;
        }
        tx.commit()?;
        files.push(p.clone());
    }
    let (kek_desc, previous) = match (seal.kek, to) {
        (KekKind::File, _) => {
            let prev = key_path.with_extension(format!("kek.old-{}", unix_now()));
            std::fs::rename(&key_path, &prev)?;
            (String::new(), prev.display().to_string())
        }
        _ => (
            String::new(),
            "the previous passphrase (it no longer opens the store)".into(),
        ),
    };
    let kek_desc = match to {
        KekKind::File => {
            std::fs::rename(&new_key_path, &key_path)?;
            format!("key file {}", key_path.display())
        }
        _ if kek_desc.is_empty() => "the new passphrase".to_string(),
        _ => kek_desc,
    };
    let config_change = (seal.kek != to).then(|| {
        format!(
            "set `kek = \"{}\"` under [store.seal] in the node's node.toml before its next start",
            match to {
                KekKind::File => "file",
                KekKind::Passphrase => "passphrase",
                KekKind::Pkcs11 => "pkcs11",
            }
        )
    });
    Ok(Rewrapped {
        kek: kek_desc,
        previous,
        files,
        config_change,
    })
}

/// Rotates a PKCS#11 KEK: a new non-extractable key is generated on the token (labelled
/// `<label>.new`), every sealed file's data key is rewrapped under it (one transaction per
/// file), then the old key is relabelled `<label>.old-<unix time>` and the new one takes the
/// label. A crash midway leaves both keys on the token, so nothing is lost.
pub fn rewrap_token(cfg: &NodeConfig) -> anyhow::Result<Rewrapped> {
    let seal = &cfg.store.seal;
    anyhow::ensure!(
        seal.kek == KekKind::Pkcs11,
        "this node's KEK is not on a token"
    );
    let (db, _) = db_paths(cfg);
    anyhow::ensure!(db.exists(), "no store at {}", db.display());
    let conn = open_db(&db, cfg.store.synchronous)?;
    anyhow::ensure!(has_dek(&conn)?, "{}: not sealed yet", db.display());
    let mut old = kek::resolve(seal, &cfg.data_dir, &cfg.node_id, &conn, &db)?;
    let targets = sealed_files(cfg, &old)?;
    let old_token = old
        .token_mut()
        .ok_or_else(|| anyhow::anyhow!("not a token KEK"))?;
    let label = old_token.label.clone();
    let mut new = kek::Kek::from_token(old_token.create_next()?, true);
    let mut files = Vec::new();
    for (p, flabel, conn) in &targets {
        rewrap_db(conn, &old, &new, flabel).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        files.push(p.clone());
    }
    let previous = format!("{label}.old-{}", unix_now());
    if let Some(t) = old.token_mut() {
        t.relabel(&previous)?;
    }
    if let Some(t) = new.token_mut() {
        t.relabel(&label)?;
    }
    Ok(Rewrapped {
        kek: label,
        previous,
        files,
        config_change: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrases_rotate_and_move_to_and_from_a_key_file_and_the_old_one_no_longer_opens() {
        const CUR: &str = "KAGI_TEST_REWRAP_CURRENT";
        const NEW: &str = "KAGI_TEST_REWRAP_NEW";
        std::env::set_var(CUR, "old horse battery");
        let d = crate::loopback::scratch_dir("rewrap-pass").unwrap();
        let mut topo =
            kagi_control::Topology::line("p", &["a", "b"], 5.0, |n| vec![format!("sae-{n}")]);
        let cfg = crate::loopback::prepare(&d, &mut topo, |c| {
            c.store.seal.kek = KekKind::Passphrase;
            c.store.seal.passphrase_env = Some(CUR.into());
        })
        .unwrap()
        .remove(0);
        let (db, photon) = db_paths(&cfg);
        let unseal = |c: &NodeConfig| super::super::node::unseal_node(c, &db, Some(&photon));
        let seals = unseal(&cfg).unwrap();
        assert_eq!(seals.kek_kind, "passphrase");
        let v = seals.store.seal("counter", "Relay", b"7");
        drop(seals);
        let opens = |c: &NodeConfig| {
            let s = unseal(c).unwrap();
            assert_eq!(&*s.store.open("counter", "Relay", &v).unwrap(), b"7");
        };

        // Passphrase to a new passphrase: both files move, the old one opens nothing.
        std::env::set_var(NEW, "new staple");
        let r = rewrap_to(&cfg, KekKind::Passphrase, Some(NEW)).unwrap();
        assert_eq!(r.files.len(), 2, "{r:?}");
        assert!(r.config_change.is_none());
        let e = unseal(&cfg).unwrap_err().to_string();
        assert!(e.contains("does not unseal"), "{e}");
        std::env::set_var(CUR, "new staple");
        opens(&cfg);
        let e = rewrap_to(&cfg, KekKind::Passphrase, Some(NEW)).unwrap_err();
        assert!(e.to_string().contains("is the current one"), "{e}");

        // Passphrase to a key file.
        let r = rewrap_to(&cfg, KekKind::File, None).unwrap();
        assert!(r
            .config_change
            .as_deref()
            .unwrap()
            .contains("kek = \"file\""));
        let mut fcfg = cfg.clone();
        fcfg.store.seal.kek = KekKind::File;
        opens(&fcfg);
        assert!(
            unseal(&cfg).is_err(),
            "the passphrase still opens the store"
        );

        // And back to a passphrase: the key file goes aside and opens nothing.
        std::env::set_var(NEW, "third time");
        let r = rewrap_to(&fcfg, KekKind::Passphrase, Some(NEW)).unwrap();
        assert_eq!(r.files.len(), 2, "{r:?}");
        assert!(!kek::key_file_path(&fcfg.store.seal, &fcfg.data_dir, "a").exists());
        let old = kek::read_key_file(std::path::Path::new(&r.previous)).unwrap();
        let conn = open_db(&db, cfg.store.synchronous).unwrap();
        assert!(super::super::unseal_db(&conn, &old, STORE_LABEL).is_err());
        drop(conn);
        std::env::set_var(CUR, "third time");
        opens(&cfg);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rewrap_moves_the_store_to_a_new_key_and_the_old_one_no_longer_opens_it() {
        let d = crate::loopback::scratch_dir("rewrap").unwrap();
        let mut topo =
            kagi_control::Topology::line("p", &["a", "b"], 5.0, |n| vec![format!("sae-{n}")]);
        let cfg = crate::loopback::prepare(&d, &mut topo, |_| {})
            .unwrap()
            .remove(0);
        let (db, photon) = db_paths(&cfg);
        std::fs::create_dir_all(&cfg.data_dir).unwrap();
        let seals = super::super::node::unseal_node(&cfg, &db, Some(&photon)).unwrap();
        let v = seals.store.seal("counter", "Relay", b"7");
        drop(seals);
        let st = status(&cfg).unwrap();
        assert!(st.store.sealed && st.photon_ledger.sealed, "{st:?}");
        assert_eq!(st.key_file_ok, Some(Ok(())));

        let r = rewrap_key_file(&cfg).unwrap();
        assert_eq!(r.files.len(), 2);
        // The new key unseals both files and opens what the old data key sealed.
        let seals = super::super::node::unseal_node(&cfg, &db, Some(&photon)).unwrap();
        assert_eq!(&*seals.store.open("counter", "Relay", &v).unwrap(), b"7");
        drop(seals);
        // The old key does not.
        let old = kek::read_key_file(std::path::Path::new(&r.previous)).unwrap();
        let conn = open_db(&db, cfg.store.synchronous).unwrap();
        assert!(super::super::unseal_db(&conn, &old, STORE_LABEL).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
