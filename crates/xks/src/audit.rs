//! The proxy's audit trail: one JSON line per operation (every XKS call, allowed or refused, and
//! every key lifecycle change), each carrying the SHA-256 of the line before it, so that a line
//! removed or edited breaks the chain ([`verify`]). Never plaintext, ciphertext or key bytes:
//! the operation, key ID, outcome, `kmsRequestId`, principal and timing.
//!
//! kagi's network-wide signed audit trail (the hardening work) was not on main when this was
//! written; this file-level chain is the XKS proxy's own until it can append there.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::digest;
use serde_json::{json, Value};

use crate::sigv4::hex;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

struct State {
    file: Option<std::fs::File>,
    seq: u64,
    prev: String,
}

/// An append-only, hash-chained JSON-lines file (or only the log, without a path).
pub struct Audit {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

fn line_hash(line_without_hash: &str) -> String {
    hex(digest::digest(&digest::SHA256, line_without_hash.as_bytes()).as_ref())
}

impl Audit {
    /// Opens (creating) the trail at `path`, continuing its chain.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let (mut seq, mut prev) = (0u64, GENESIS.to_string());
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                let line = line?;
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    seq = v["seq"].as_u64().unwrap_or(seq);
                    prev = v["hash"].as_str().unwrap_or(&prev).to_string();
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            state: Mutex::new(State {
                file: Some(file),
                seq,
                prev,
            }),
        })
    }

    /// A trail that only logs (tests).
    pub fn log_only() -> Self {
        Self {
            path: None,
            state: Mutex::new(State {
                file: None,
                seq: 0,
                prev: GENESIS.into(),
            }),
        }
    }

    /// Where the trail is written.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends one event (`event` is a JSON object of plain fields) and logs it.
    pub fn record(&self, event: Value) {
        tracing::info!(target: "kagi_xks::audit", "{event}");
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.seq += 1;
        let mut v = json!({
            "seq": st.seq,
            "time": crate::time::format_rfc3339(crate::time::now_unix()),
            "prev": st.prev,
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), event) {
            for (k, x) in e {
                o.entry(k).or_insert(x);
            }
        }
        let body = v.to_string();
        let hash = line_hash(&body);
        if let Some(o) = v.as_object_mut() {
            o.insert("hash".into(), Value::String(hash.clone()));
        }
        st.prev = hash;
        if let Some(f) = st.file.as_mut() {
            if let Err(e) = writeln!(f, "{v}") {
                tracing::error!(error = %e, "cannot append to the XKS audit trail");
            }
        }
    }
}

/// Checks a trail: every line's hash is the SHA-256 of the line without it, and names the line
/// before. Returns the number of lines, or the first broken line (1-based) and why.
pub fn verify(path: &Path) -> Result<u64, (u64, String)> {
    let f = std::fs::File::open(path).map_err(|e| (0, e.to_string()))?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    for line in std::io::BufReader::new(f).lines() {
        n += 1;
        let line = line.map_err(|e| (n, e.to_string()))?;
        let mut v: Value = serde_json::from_str(&line).map_err(|e| (n, e.to_string()))?;
        let o = v.as_object_mut().ok_or((n, "not an object".to_string()))?;
        let hash = o
            .remove("hash")
            .and_then(|h| h.as_str().map(str::to_owned))
            .ok_or((n, "no hash".to_string()))?;
        if o.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err((n, "does not follow the line before it".into()));
        }
        if o.get("seq").and_then(Value::as_u64) != Some(n) {
            return Err((n, "sequence number out of order".into()));
        }
        if line_hash(&v.to_string()) != hash {
            return Err((n, "hash does not match the line".into()));
        }
        prev = hash;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_survives_reopen_and_catches_edits() {
        let dir = std::env::temp_dir().join(format!("kagi-xks-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&p);
        let a = Audit::open(&p).unwrap();
        a.record(json!({"op": "Encrypt", "key": "k1", "outcome": "ok"}));
        a.record(json!({"op": "Decrypt", "key": "k1", "outcome": "ok"}));
        drop(a);
        let a = Audit::open(&p).unwrap();
        a.record(json!({"op": "key.revoke", "key": "k1"}));
        assert_eq!(verify(&p), Ok(3));
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replacen("Decrypt", "Encrypt", 1)).unwrap();
        assert_eq!(verify(&p).unwrap_err().0, 2);
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&p, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert_eq!(verify(&p).unwrap_err().0, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
