//! The node's audit trail (X.1712 ACC.1–3): an append-only, hash-chained JSON-lines file of
//! security-relevant events, with ML-DSA-65 signed checkpoints.
//!
//! * One line per event (`<data_dir>/<node>-audit.jsonl`): seq, wall-clock time, event, actor,
//!   target, outcome, detail, and `prev`, the SHA-256 of the previous line's exact bytes (the
//!   first line names a genesis value derived from the node ID). Editing, deleting or reordering
//!   a line breaks the chain at the next line; the seq numbers name the gap.
//! * Every [`Policy::every_entries`] entries or [`Policy::every`] (and at a clean stop) a
//!   **checkpoint** line is appended and signed with the node's ML-DSA-65 key ([`signer`]),
//!   whose private half lives only in the sealed store. The signature covers the checkpoint
//!   line, hence `prev`, hence everything before it, and the file is synced.
//! * Checkpoints are sent to the node's neighbours ([`witness`]), which record them in their own
//!   trails: a node's administrator who cuts or rewrites its trail cannot also rewrite the
//!   neighbours' copies, and `kagi audit verify` over the data directory compares them.
//! * **Fail closed**: once a line cannot be written the trail stays broken and the driver
//!   refuses every key request with 503 naming the reason ([`AuditTrail::fault`]).
//! * Never key bytes: events carry names, counts, key IDs and reasons.
//!
//! [`verify`] checks a trail offline and names the first bad entry.

pub mod relay_summary;
pub mod signer;
pub mod verify;
pub mod witness;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

pub use signer::Signer;

/// Entries kept in memory for the management API.
pub const RECENT: usize = 200;

/// Audit trail failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O on the trail or key file.
    #[error("audit trail {path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        err: std::io::Error,
    },
    /// The existing trail does not verify: tampering (or a torn write after a power loss).
    #[error("audit trail {path} does not verify at line {line}: {why}; refusing to start (keep the file as evidence, check it with `kagi audit verify`, and move it aside to start a new trail)")]
    Broken {
        /// The file.
        path: String,
        /// First bad line (1-based).
        line: u64,
        /// Why.
        why: String,
    },
    /// The trail failed earlier and stays closed.
    #[error("audit trail cannot be written ({0}); key delivery is stopped until it can")]
    Closed(String),
    /// The signing key.
    #[error("audit signing key: {0}")]
    Key(String),
}

/// One event to record (no key bytes in any field).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// What happened (`keys.served`, `node.start`, `link.out_of_service`, ...).
    pub event: &'a str,
    /// Who did it: an SAE, an operator's certificate CN, a peer node, or `node`.
    pub actor: &'a str,
    /// What it concerned: a peer, an SAE, the node.
    pub target: &'a str,
    /// `ok`, `refused`, `failed`, ...
    pub outcome: &'a str,
    /// Counts, key IDs, reasons.
    pub detail: &'a str,
}

impl<'a> Event<'a> {
    /// An event done by the node itself, concerning `target`, that succeeded.
    pub fn node(event: &'a str, target: &'a str, detail: &'a str) -> Self {
        Self {
            event,
            actor: "node",
            target,
            outcome: "ok",
            detail,
        }
    }
}

/// A checkpoint's signature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// `ML-DSA-65`.
    pub alg: String,
    /// SHA-256 fingerprint (hex) of the signing public key.
    pub key: String,
    /// Base64 signature over the line written without this field.
    pub sig: String,
}

/// One line of the trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1, 2, 3, ... with no gap.
    pub seq: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node writing the trail.
    pub node: String,
    /// See [`Event::event`].
    pub event: String,
    /// See [`Event::actor`].
    pub actor: String,
    /// See [`Event::target`].
    pub target: String,
    /// See [`Event::outcome`].
    pub outcome: String,
    /// See [`Event::detail`].
    pub detail: String,
    /// SHA-256 (hex) of the previous line.
    pub prev: String,
    /// Present on checkpoint lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

/// When checkpoints are written.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// After this many entries.
    pub every_entries: u64,
    /// After this much time with new entries.
    pub every: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            every_entries: 1000,
            every: Duration::from_secs(10),
        }
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// SHA-256 (hex) of a line's bytes: what the next line's `prev` must be.
pub fn line_hash(line: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line.as_bytes()).as_ref())
}

/// The `prev` of a trail's first line.
pub fn genesis(node: &str) -> String {
    line_hash(&format!("kagi-audit-genesis\0{node}"))
}

/// Where a node's trail is written.
pub fn trail_path(data_dir: &Path, node_id: &str) -> PathBuf {
    data_dir.join(format!("{node_id}-audit.jsonl"))
}

/// Called with each checkpoint line after it is durable (sends it to the neighbours).
pub type CheckpointHook = Box<dyn Fn(&str) + Send + Sync>;

struct Inner {
    file: std::fs::File,
    seq: u64,
    head: String,
    since_checkpoint: u64,
    /// An entry other than a witness arrived since the last checkpoint (witness entries alone
    /// do not start a timed checkpoint, or two idle neighbours would checkpoint each other
    /// forever).
    dirty: bool,
    last_checkpoint: Instant,
    fault: Option<String>,
    recent: VecDeque<(Entry, String)>,
}

/// A node's open audit trail. Cheap to share (`Arc`); every method takes `&self`.
pub struct AuditTrail {
    node: String,
    path: PathBuf,
    signer: Arc<Signer>,
    policy: Policy,
    inner: Mutex<Inner>,
    inject_fault: AtomicBool,
    on_checkpoint: Mutex<Option<CheckpointHook>>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("node", &self.node)
            .field("path", &self.path)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AuditTrail {
    /// Opens (creating) `node`'s trail at `path`. An existing trail is verified first with
    /// `signer`'s public key: one that does not verify refuses the open ([`AuditError::Broken`]).
    pub fn open(
        path: &Path,
        node: &str,
        signer: Arc<Signer>,
        policy: Policy,
    ) -> Result<Self, AuditError> {
        let io = |err| AuditError::Io {
            path: path.display().to_string(),
            err,
        };
        let (mut seq, mut head) = (0, genesis(node));
        let mut recent = VecDeque::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let r = verify::check_text(&text, node, Some(signer.public()));
                if let Some(p) = r.problem {
                    return Err(AuditError::Broken {
                        path: path.display().to_string(),
                        line: p.line,
                        why: p.why,
                    });
                }
                for line in text.lines() {
                    if let Ok(e) = serde_json::from_str::<Entry>(line) {
                        seq = e.seq;
                        head = line_hash(line);
                        if recent.len() >= RECENT {
                            recent.pop_front();
                        }
                        recent.push_back((e, head.clone()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let file = o.open(path).map_err(io)?;
        Ok(Self {
            node: node.to_owned(),
            path: path.to_owned(),
            signer,
            policy,
            inner: Mutex::new(Inner {
                file,
                seq,
                head,
                since_checkpoint: 0,
                dirty: false,
                last_checkpoint: Instant::now(),
                fault: None,
                recent,
            }),
            inject_fault: AtomicBool::new(false),
            on_checkpoint: Mutex::new(None),
        })
    }

    /// The node writing this trail.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The trail file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The signing key's public half.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Sets what is called with every checkpoint line (witnesses).
    pub fn on_checkpoint(&self, hook: CheckpointHook) {
        if let Ok(mut h) = self.on_checkpoint.lock() {
            *h = Some(hook);
        }
    }

    /// Why the trail cannot be written, once it failed (it never recovers in this process).
    pub fn fault(&self) -> Option<String> {
        match self.inner.lock() {
            Ok(i) => i.fault.clone(),
            Err(_) => Some("audit trail lock poisoned".into()),
        }
    }

    /// The last entry's seq and hash.
    pub fn head(&self) -> (u64, String) {
        self.inner
            .lock()
            .map(|i| (i.seq, i.head.clone()))
            .unwrap_or_default()
    }

    /// The most recent entries with their line hashes, oldest first.
    pub fn recent(&self) -> Vec<(Entry, String)> {
        self.inner
            .lock()
            .map(|i| i.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes every later write fail as a full or failed disk would (fault-injection for the
    /// fail-closed tests; nothing in the node calls it).
    #[doc(hidden)]
    pub fn inject_write_fault(&self) {
        self.inject_fault.store(true, Ordering::SeqCst);
    }

    /// Appends `ev`; writes a checkpoint when one is due by count. Fails, and stays failed,
    /// when the line cannot be written.
    pub fn record(&self, ev: Event<'_>) -> Result<u64, AuditError> {
        self.record_inner(ev, true)
    }

    /// Like [`Self::record`], but the entry alone does not make a timed checkpoint due (witness
    /// entries: covered by the next checkpoint that something else causes, or at stop).
    pub fn record_quiet(&self, ev: Event<'_>) -> Result<u64, AuditError> {
        self.record_inner(ev, false)
    }

    fn record_inner(&self, ev: Event<'_>, dirty: bool) -> Result<u64, AuditError> {
        tracing::info!(
            target: "kagi::audit",
            node = %self.node,
            event = ev.event,
            actor = ev.actor,
            target_id = ev.target,
            outcome = ev.outcome,
            detail = ev.detail,
            "audit"
        );
        let mut hook_line = None;
        let seq = {
            let mut i = self
                .inner
                .lock()
                .map_err(|_| AuditError::Closed("lock poisoned".into()))?;
            let (seq, _) = self.append(&mut i, ev, false)?;
            i.dirty |= dirty;
            if i.since_checkpoint >= self.policy.every_entries {
                hook_line = Some(self.checkpoint_locked(&mut i)?);
            }
            seq
        };
        if let Some(l) = hook_line {
            self.call_hook(&l);
        }
        Ok(seq)
    }

    /// Writes a checkpoint when entries arrived since the last one and [`Policy::every`] has
    /// passed (called about once a second).
    pub fn tick(&self) -> Result<(), AuditError> {
        let line = {
            let mut i = self
                .inner
                .lock()
                .map_err(|_| AuditError::Closed("lock poisoned".into()))?;
            if !i.dirty || i.last_checkpoint.elapsed() < self.policy.every {
                return Ok(());
            }
            self.checkpoint_locked(&mut i)?
        };
        self.call_hook(&line);
        Ok(())
    }

    /// Ends the trail at a clean stop: a `node.stop` entry and a signed checkpoint; later
    /// records (a neighbour's late checkpoint) are refused, so the file ends on the signature.
    pub fn close(&self) -> Result<(), AuditError> {
        tracing::info!(target: "kagi::audit", node = %self.node, event = "node.stop", "audit");
        // One lock for the stop entry, the checkpoint and the closing, so that no record from
        // another task slips in after the final signature.
        let line = {
            let mut i = self
                .inner
                .lock()
                .map_err(|_| AuditError::Closed("lock poisoned".into()))?;
            self.append(&mut i, Event::node("node.stop", &self.node, ""), false)?;
            let line = self.checkpoint_locked(&mut i)?;
            i.fault.get_or_insert_with(|| "closed at stop".into());
            line
        };
        self.call_hook(&line);
        Ok(())
    }

    /// Writes a checkpoint now if any entry is not covered by one.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        let line = {
            let mut i = self
                .inner
                .lock()
                .map_err(|_| AuditError::Closed("lock poisoned".into()))?;
            if i.since_checkpoint == 0 {
                return Ok(());
            }
            self.checkpoint_locked(&mut i)?
        };
        self.call_hook(&line);
        Ok(())
    }

    fn call_hook(&self, line: &str) {
        if let Ok(h) = self.on_checkpoint.lock() {
            if let Some(h) = h.as_ref() {
                h(line);
            }
        }
    }

    fn checkpoint_locked(&self, i: &mut Inner) -> Result<String, AuditError> {
        let detail = format!("covers seq 1..={}", i.seq);
        let ev = Event::node("audit.checkpoint", &self.node, &detail);
        let (_, line) = self.append(i, ev, true)?;
        let sync = if self.inject_fault.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected write fault"))
        } else {
            i.file.sync_data()
        };
        if let Err(e) = sync {
            return Err(self.fail(i, &e));
        }
        i.since_checkpoint = 0;
        i.dirty = false;
        i.last_checkpoint = Instant::now();
        Ok(line)
    }

    fn fail(&self, i: &mut Inner, e: &std::io::Error) -> AuditError {
        let why = format!("{}: {e}", self.path.display());
        tracing::error!(node = %self.node, error = %why, "audit trail cannot be written: key delivery stops");
        i.fault = Some(why.clone());
        AuditError::Closed(why)
    }

    fn append(
        &self,
        i: &mut Inner,
        ev: Event<'_>,
        sign: bool,
    ) -> Result<(u64, String), AuditError> {
        if let Some(f) = &i.fault {
            return Err(AuditError::Closed(f.clone()));
        }
        let mut e = Entry {
            seq: i.seq + 1,
            time_ms: now_ms(),
            node: self.node.clone(),
            event: ev.event.to_owned(),
            actor: ev.actor.to_owned(),
            target: ev.target.to_owned(),
            outcome: ev.outcome.to_owned(),
            detail: ev.detail.to_owned(),
            prev: i.head.clone(),
            checkpoint: None,
        };
        if sign {
            let body = serde_json::to_string(&e).map_err(|e| AuditError::Closed(e.to_string()))?;
            let sig = self.signer.sign(body.as_bytes())?;
            e.checkpoint = Some(Checkpoint {
                alg: signer::ALG.into(),
                key: self.signer.fingerprint().to_owned(),
                sig: base64::engine::general_purpose::STANDARD.encode(sig),
            });
        }
        let line = serde_json::to_string(&e).map_err(|e| AuditError::Closed(e.to_string()))?;
        let res = if self.inject_fault.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected write fault"))
        } else {
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            i.file.write_all(&buf)
        };
        if let Err(err) = res {
            return Err(self.fail(i, &err));
        }
        i.seq = e.seq;
        i.head = line_hash(&line);
        i.since_checkpoint += 1;
        if i.recent.len() >= RECENT {
            i.recent.pop_front();
        }
        let h = i.head.clone();
        i.recent.push_back((e, h));
        Ok((i.seq, line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(dir: &Path, policy: Policy) -> (AuditTrail, Arc<Signer>) {
        let s = Arc::new(Signer::generate().unwrap());
        (
            AuditTrail::open(&trail_path(dir, "a"), "a", s.clone(), policy).unwrap(),
            s,
        )
    }

    #[test]
    fn entries_chain_checkpoints_sign_and_a_reopen_continues() {
        let d = crate::loopback::scratch_dir("audit").unwrap();
        let policy = Policy {
            every_entries: 3,
            every: Duration::from_secs(3600),
        };
        let (t, s) = trail(&d, policy);
        for i in 0..7 {
            t.record(Event::node("test.event", "x", &i.to_string()))
                .unwrap();
        }
        // 7 events + checkpoints after 3 and 6.
        assert_eq!(t.head().0, 9);
        t.checkpoint().unwrap();
        drop(t);
        let text = std::fs::read_to_string(trail_path(&d, "a")).unwrap();
        let r = verify::check_text(&text, "a", Some(s.public()));
        assert!(r.problem.is_none(), "{r:?}");
        assert_eq!((r.entries, r.checkpoints, r.uncovered), (10, 3, 0));
        let t = AuditTrail::open(&trail_path(&d, "a"), "a", s.clone(), policy).unwrap();
        assert_eq!(t.record(Event::node("again", "x", "")).unwrap(), 11);
        // Another key cannot continue it: the checkpoints do not verify.
        drop(t);
        let other = Arc::new(Signer::generate().unwrap());
        assert!(matches!(
            AuditTrail::open(&trail_path(&d, "a"), "a", other, policy),
            Err(AuditError::Broken { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_closes_the_trail_for_good() {
        let d = crate::loopback::scratch_dir("audit-fail").unwrap();
        let (t, _) = trail(&d, Policy::default());
        t.record(Event::node("ok", "x", "")).unwrap();
        assert!(t.fault().is_none());
        t.inject_write_fault();
        assert!(matches!(
            t.record(Event::node("lost", "x", "")),
            Err(AuditError::Closed(_))
        ));
        assert!(t.fault().is_some());
        assert!(t.record(Event::node("later", "x", "")).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
