//! The proxy's audit trail: kagi's signed audit trail ([`kagi_node::audit`], X.1712 ACC.1–3),
//! the same format the nodes write. One JSON line per operation (every XKS call, allowed or
//! refused, every key-material rebuild and zeroization, every key lifecycle change), each
//! carrying the SHA-256 of the line before it, with ML-DSA-65 signed checkpoints every 1,000
//! entries or 10 s and at a clean stop. `kagi audit verify` (and `kagi xks audit-verify`) checks
//! the chain and the signatures and names the first bad entry.
//!
//! Trails sit in the proxy's directory as `<name>-audit.jsonl` with the public key beside them
//! (`<name>-audit.pub`): `proxy` for the server, `keys` for the `kagi xks key` commands. The
//! signing key is kept sealed (AES-256-GCM-SIV under a data key wrapped by a key-encryption key)
//! in `xks-seal.db` beside them, the KEK in the 0600 key file `xks.kek`, exactly as a node keeps
//! its own; whoever can read the directory without the KEK cannot sign a checkpoint.
//!
//! Never plaintext, ciphertext or key bytes: the operation, key ID, outcome, `kmsRequestId`,
//! principal and timing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kagi_node::audit::{verify::TrailReport, AuditTrail, Event, Policy, Signer};
use serde_json::Value;

/// Name of the sealed database holding the trails' signing key.
pub const SEAL_DB: &str = "xks-seal.db";
/// Label of that database's data key, and the stem of its KEK file (`xks.kek`).
const SEAL_ID: &str = "xks";

/// Why a trail cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("XKS audit trail {path}: {why}")]
pub struct AuditOpenError {
    /// The trail.
    pub path: String,
    /// Why.
    pub why: String,
}

/// An open trail (or only the log, in tests).
pub struct Audit {
    trail: Option<Arc<AuditTrail>>,
}

/// The trail name of a file `<name>-audit.jsonl`.
fn name_of(path: &Path) -> Option<&str> {
    path.file_name()?
        .to_str()?
        .strip_suffix("-audit.jsonl")
        .filter(|n| !n.is_empty())
}

impl Audit {
    /// Opens (creating) the signed trail at `path`, which must be named `<name>-audit.jsonl`.
    /// The signing key is loaded from (or created in) the sealed store beside it. A trail that
    /// does not verify is refused.
    pub fn open(path: &Path) -> Result<Self, AuditOpenError> {
        let err = |why: String| AuditOpenError {
            path: path.display().to_string(),
            why,
        };
        let name = name_of(path).ok_or_else(|| {
            err(
                "the file name must be <name>-audit.jsonl (kagi's signed trail format; \
                 re-run `kagi xks init` to update an older configuration)"
                    .into(),
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let signer = Arc::new(signer(dir, name).map_err(err)?);
        let trail = AuditTrail::open(path, name, signer, Policy::default())
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            trail: Some(Arc::new(trail)),
        })
    }

    /// A trail that only logs (tests).
    pub fn log_only() -> Self {
        Self { trail: None }
    }

    /// Where the trail is written.
    pub fn path(&self) -> Option<&Path> {
        self.trail.as_ref().map(|t| t.path())
    }

    /// Appends one event, a JSON object with `op` and optionally `key`, `outcome` and the
    /// principal (`awsPrincipalArn`, else `accessKeyId`); its other fields go into the entry's
    /// detail. Fails, and stays failed, once the trail cannot be written.
    pub fn record(&self, event: Value) -> Result<(), String> {
        let Value::Object(mut o) = event else {
            return Err("an audit event is a JSON object".into());
        };
        let mut take = |k: &str| match o.remove(k) {
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(v) => Some(v.to_string()),
        };
        let op = format!("xks.{}", take("op").unwrap_or_default());
        let key = take("key").unwrap_or_default();
        let outcome = take("outcome").unwrap_or_else(|| "ok".into());
        let actor = o
            .get("awsPrincipalArn")
            .or_else(|| o.get("accessKeyId"))
            .and_then(Value::as_str)
            .unwrap_or("proxy")
            .to_owned();
        o.retain(|_, v| !v.is_null());
        let detail = Value::Object(o).to_string();
        let ev = Event {
            event: &op,
            actor: &actor,
            target: &key,
            outcome: &outcome,
            detail: &detail,
        };
        match &self.trail {
            Some(t) => t.record(ev).map(|_| ()).map_err(|e| e.to_string()),
            None => {
                tracing::info!(target: "kagi::audit", event = ev.event, actor = ev.actor, target_id = ev.target, outcome = ev.outcome, detail = ev.detail, "audit");
                Ok(())
            }
        }
    }

    /// Writes a checkpoint when one is due by time (call it about once a second).
    pub fn tick(&self) {
        if let Some(Err(e)) = self.trail.as_ref().map(|t| t.tick()) {
            tracing::error!(error = %e, "XKS audit trail checkpoint failed");
        }
    }

    /// Makes every later write fail (tests of the fail-closed path).
    #[cfg(test)]
    pub(crate) fn inject_write_fault(&self) {
        if let Some(t) = &self.trail {
            t.inject_write_fault();
        }
    }

    /// Ends the trail with a signed checkpoint (a clean stop, or the end of a `kagi xks key`
    /// command).
    pub fn close(&self) -> Result<(), String> {
        match &self.trail {
            Some(t) => t.close().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// The signing key of trail `name` in `dir`, from the sealed store there (created with its KEK
/// on first use; every trail in `dir` is signed by the same key). Writes or checks the trail's
/// public key file.
fn signer(dir: &Path, name: &str) -> Result<Signer, String> {
    let db = dir.join(SEAL_DB);
    let conn = kagi_node::store::open_db(&db, kagi_node::store::Sync::default())
        .map_err(|e| format!("{}: {e}", db.display()))?;
    let kek = kagi_node::seal::kek::resolve(&Default::default(), dir, SEAL_ID, &conn, &db)
        .map_err(|e| e.to_string())?;
    let (sealer, _) = kagi_node::seal::unseal_db(&conn, &kek, SEAL_ID)
        .map_err(|e| format!("{}: {e}", db.display()))?;
    drop(kek);
    let pub_path = kagi_node::audit::signer::public_key_path(dir, name);
    Signer::load_or_create(&conn, &sealer, &pub_path).map_err(|e| e.to_string())
}

/// Checks every trail in `dir` (chain, sequence, checkpoint signatures).
pub fn verify(dir: &Path) -> Vec<TrailReport> {
    kagi_node::audit::verify::verify_path(dir)
}

/// The trail file of `name` in `dir`.
pub fn trail_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-audit.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trails_are_signed_survive_reopen_and_catch_edits() {
        let dir = std::env::temp_dir().join(format!("kagi-xks-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = trail_path(&dir, "proxy");
        let a = Audit::open(&p).unwrap();
        a.record(
            json!({"op": "Encrypt", "key": "k1", "outcome": "ok", "kmsRequestId": "r-1",
                        "awsPrincipalArn": "arn:aws:iam::1:role/x"}),
        )
        .unwrap();
        a.record(json!({"op": "Decrypt", "key": "k1", "outcome": "ok"}))
            .unwrap();
        a.close().unwrap();
        drop(a);
        let k = Audit::open(&trail_path(&dir, "keys")).unwrap();
        k.record(json!({"op": "key.revoke", "key": "k1"})).unwrap();
        k.close().unwrap();
        let a = Audit::open(&p).unwrap();
        a.record(json!({"op": "Encrypt", "key": "k1", "outcome": "KeyNotFoundException"}))
            .unwrap();
        a.close().unwrap();
        let reports = verify(&dir);
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(reports.iter().all(|r| r.problem.is_none()), "{reports:?}");
        let text = std::fs::read_to_string(&p).unwrap();
        let first: kagi_node::audit::Entry =
            serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            (
                first.event.as_str(),
                first.actor.as_str(),
                first.target.as_str()
            ),
            ("xks.Encrypt", "arn:aws:iam::1:role/x", "k1")
        );
        assert!(first.detail.contains("r-1"), "{}", first.detail);
        assert!(text.lines().filter(|l| l.contains("ML-DSA-65")).count() >= 2);
        // An edited entry is named.
        std::fs::write(&p, text.replacen("xks.Decrypt", "xks.Encrypt", 1)).unwrap();
        let bad: Vec<_> = verify(&dir).into_iter().filter_map(|r| r.problem).collect();
        assert_eq!(bad.len(), 1);
        assert!((2..=3).contains(&bad[0].line), "{bad:?}");
        assert!(Audit::open(&p).is_err(), "a broken trail is not continued");
        // Without the KEK no signer: the trail cannot be extended by whoever copies the files.
        std::fs::write(&p, &text).unwrap();
        std::fs::remove_file(dir.join("xks.kek")).unwrap();
        assert!(Audit::open(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_trail_must_be_named_for_its_public_key() {
        let e = Audit::open(Path::new("/tmp/audit.jsonl")).err().unwrap();
        assert!(e.why.contains("-audit.jsonl"), "{e}");
    }
}
