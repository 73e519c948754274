//! Offline verification of audit trails (`kagi audit verify PATH`): the chain, the seq numbers,
//! the checkpoint signatures, and the neighbours' witnessed copies of each node's checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::{genesis, line_hash, signer, Entry};

/// The first thing wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Line (1-based; equal to the entry's seq in an intact trail), 0 for the file as a whole.
    pub line: u64,
    /// Why.
    pub why: String,
}

/// A checkpoint another node witnessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    /// The node whose checkpoint it is.
    pub origin: String,
    /// Its seq in the origin's trail.
    pub seq: u64,
    /// The hash of the origin's checkpoint line.
    pub hash: String,
    /// The fingerprint of the origin's signing key.
    pub key: String,
}

/// What checking one trail found.
#[derive(Debug, Clone, Default)]
pub struct TrailReport {
    /// The node.
    pub node: String,
    /// The file, when read from disk.
    pub path: Option<PathBuf>,
    /// Entries read.
    pub entries: u64,
    /// Signed checkpoints among them.
    pub checkpoints: u64,
    /// Entries after the last checkpoint (a running or crashed node; not covered by a signature).
    pub uncovered: u64,
    /// Fingerprint of the key the checkpoints were checked against.
    pub key: Option<String>,
    /// The first problem, if any.
    pub problem: Option<Problem>,
    /// Checkpoint seq → line hash.
    pub checkpoint_hashes: BTreeMap<u64, String>,
    /// Other nodes' checkpoints this trail witnessed.
    pub witnessed: Vec<Witnessed>,
}

impl TrailReport {
    fn fail(&mut self, line: u64, why: impl Into<String>) {
        if self.problem.is_none() {
            self.problem = Some(Problem {
                line,
                why: why.into(),
            });
        }
    }
}

/// Parses the detail of an `audit.witness` entry (`seq=N hash=H key=K`).
pub fn parse_witness(detail: &str) -> Option<(u64, String, String)> {
    let mut seq = None;
    let mut hash = None;
    let mut key = None;
    for part in detail.split_whitespace() {
        match part.split_once('=') {
            Some(("seq", v)) => seq = v.parse().ok(),
            Some(("hash", v)) => hash = Some(v.to_owned()),
            Some(("key", v)) => key = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((seq?, hash?, key?))
}

/// Checks the checkpoint signature of `e` (a parsed line) against `public`.
pub fn checkpoint_signature_ok(e: &Entry, public: &[u8]) -> Result<(), String> {
    let Some(c) = &e.checkpoint else {
        return Err("not a checkpoint".into());
    };
    if c.alg != signer::ALG {
        return Err(format!("unknown signature algorithm {:?}", c.alg));
    }
    if c.key != signer::fingerprint(public) {
        return Err(format!(
            "signed by key {} while this node's key is {}",
            c.key,
            signer::fingerprint(public)
        ));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&c.sig)
        .map_err(|_| "signature is not base64".to_string())?;
    let mut body = e.clone();
    body.checkpoint = None;
    let body = serde_json::to_string(&body).map_err(|e| e.to_string())?;
    if signer::verify(public, body.as_bytes(), &sig) {
        Ok(())
    } else {
        Err("ML-DSA-65 signature does not verify (checkpoint forged, swapped or edited)".into())
    }
}

/// Checks the text of `node`'s trail; signatures are checked when `public` is given.
pub fn check_text(text: &str, node: &str, public: Option<&[u8]>) -> TrailReport {
    let mut r = TrailReport {
        node: node.to_owned(),
        key: public.map(signer::fingerprint),
        ..Default::default()
    };
    let mut prev = genesis(node);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, raw) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        // Every earlier line checked out, so this one must carry seq n.
        let expected = n;
        let Some(line) = raw.strip_suffix('\n') else {
            r.fail(
                n,
                "the last line is incomplete (torn write, or the file was cut)",
            );
            break;
        };
        let e: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(err) => {
                r.fail(n, format!("not an audit entry (edited?): {err}"));
                break;
            }
        };
        r.entries += 1;
        if e.node != node {
            r.fail(
                n,
                format!("entry of node {:?} in {node}'s trail (moved)", e.node),
            );
            break;
        }
        if e.seq != expected {
            let why = if e.seq > expected {
                format!(
                    "seq {} where {expected} was expected: entries {expected}..{} were deleted",
                    e.seq,
                    e.seq - 1
                )
            } else {
                format!(
                    "seq {} where {expected} was expected: entries were reordered or duplicated",
                    e.seq
                )
            };
            r.fail(n, why);
            break;
        }
        if e.prev != prev {
            // The line before was changed after this one was written.
            r.fail(
                n - 1,
                format!(
                    "entry {} was altered: entry {n} does not chain to it",
                    n - 1
                ),
            );
            break;
        }
        prev = line_hash(line);
        r.uncovered += 1;
        if e.checkpoint.is_some() {
            if let Some(p) = public {
                if let Err(why) = checkpoint_signature_ok(&e, p) {
                    r.fail(n, format!("checkpoint {n}: {why}"));
                    break;
                }
            }
            r.checkpoints += 1;
            r.uncovered = 0;
            r.checkpoint_hashes.insert(e.seq, prev.clone());
        }
        if e.event == super::witness::EVENT && e.outcome == "ok" {
            if let Some((seq, hash, key)) = parse_witness(&e.detail) {
                r.witnessed.push(Witnessed {
                    origin: e.target.clone(),
                    seq,
                    hash,
                    key,
                });
            }
        }
    }
    r
}

/// Checks one trail file; its public key is read from `<node>-audit.pub` beside it.
pub fn check_file(path: &Path) -> TrailReport {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let node = name.strip_suffix("-audit.jsonl").unwrap_or(name).to_owned();
    let dir = path.parent().unwrap_or(Path::new("."));
    let public = signer::read_public_key(&signer::public_key_path(dir, &node));
    let mut r = match std::fs::read_to_string(path) {
        Ok(text) => check_text(&text, &node, public.as_ref().ok().map(|p| &p[..])),
        Err(e) => {
            let mut r = TrailReport {
                node: node.clone(),
                ..Default::default()
            };
            r.fail(0, format!("cannot read: {e}"));
            r
        }
    };
    if let Err(e) = public {
        r.fail(0, format!("no usable public key to check signatures: {e}"));
    }
    r.path = Some(path.to_owned());
    r
}

fn find_trails(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut items: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    items.sort();
    for p in items {
        if p.is_dir() {
            if depth > 0 {
                find_trails(&p, depth - 1, out);
            }
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("-audit.jsonl"))
        {
            out.push(p);
        }
    }
}

/// Checks every trail at `path` (a trail file, a node's directory, or a whole data directory),
/// then compares each node's checkpoints with the copies its neighbours witnessed: a checkpoint a
/// neighbour holds that the node's trail no longer has means the trail was cut or rewritten.
pub fn verify_path(path: &Path) -> Vec<TrailReport> {
    let mut files = Vec::new();
    if path.is_dir() {
        find_trails(path, 4, &mut files);
    } else {
        files.push(path.to_owned());
    }
    let mut reports: Vec<TrailReport> = files.iter().map(|f| check_file(f)).collect();
    let witnessed: Vec<(String, Witnessed)> = reports
        .iter()
        .flat_map(|r| r.witnessed.iter().map(|w| (r.node.clone(), w.clone())))
        .collect();
    for (by, w) in witnessed {
        let Some(r) = reports.iter_mut().find(|r| r.node == w.origin) else {
            continue;
        };
        if r.key.as_deref().is_some_and(|k| k != w.key) {
            r.fail(
                0,
                format!(
                    "{by} witnessed checkpoints signed by key {}, but {}'s public key is now {} \
                     (key replaced and trail re-signed?)",
                    w.key,
                    w.origin,
                    r.key.as_deref().unwrap_or("?")
                ),
            );
        }
        // A trail already broken earlier reports that first problem.
        match r.checkpoint_hashes.get(&w.seq) {
            Some(h) if *h == w.hash => {}
            Some(_) => r.fail(
                w.seq,
                format!(
                    "checkpoint {} differs from the copy {by} witnessed (trail rewritten)",
                    w.seq
                ),
            ),
            None => r.fail(
                w.seq,
                format!(
                    "{by} witnessed checkpoint {} but the trail holds no such checkpoint \
                     (truncated or rewritten)",
                    w.seq
                ),
            ),
        }
    }
    reports
}
