//! Node-wide operational state shared by the driver, the ETSI 014 server and the management
//! listener: administrative switches (drain, links out of service), recent refusals, the
//! management audit events, peer reachability and link intake meters.
//!
//! Everything here is counts, names and times: never key bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::metrics::Metrics;

/// How many recent refusals and audit events are kept in memory.
pub const RECENT: usize = 200;
/// Window over which link key rates are measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A request the node refused (ETSI 014 or management), for operators.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RefusalEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Which interface and endpoint (`etsi014/enc_keys`, `management/...`).
    pub endpoint: String,
    /// HTTP status answered.
    pub status: u16,
    /// Reason class: `bad_request`, `unauthorized`, `no_key`, `draining`, `unavailable`,
    /// `forbidden`.
    pub reason: String,
    /// The caller's identity (SAE or certificate CN), when known.
    pub caller: Option<String>,
    /// The message answered.
    pub message: String,
}

/// One management action, as audited.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEvent {
    /// Sequence number on this node since start.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Certificate CN of the operator.
    pub actor: String,
    /// The role the certificate carries.
    pub role: String,
    /// What was asked (`link.out_of_service`, `node.drain`, ...).
    pub action: String,
    /// What it was asked of (a peer, an SAE, the node).
    pub target: String,
    /// `ok`, `refused`, `not_implemented` or `error`.
    pub outcome: String,
    /// Free text (the operator's reason, or why it failed).
    pub detail: String,
}

/// Why and when the node was fenced by a tamper signal.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TamperState {
    /// Where the signal came from (`management`, `watch_path`, ...).
    pub source: String,
    /// What it said.
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

#[derive(Debug, Default)]
struct LinkMeter {
    total: u64,
    window: VecDeque<(Instant, u64)>,
}

/// Shared operational state of one node.
#[derive(Debug)]
pub struct Ops {
    node_id: String,
    started: Instant,
    draining: AtomicBool,
    links_out: Mutex<BTreeSet<String>>,
    refusals: Mutex<VecDeque<RefusalEvent>>,
    audit: Mutex<VecDeque<AuditEvent>>,
    audit_seq: AtomicU64,
    peers: Mutex<BTreeMap<String, bool>>,
    link_in: Mutex<BTreeMap<String, LinkMeter>>,
    link_source: Mutex<BTreeMap<String, String>>,
    trail: std::sync::OnceLock<std::sync::Arc<crate::audit::AuditTrail>>,
    tamper: Mutex<Option<TamperState>>,
    tamper_tx: tokio::sync::watch::Sender<bool>,
    admin: std::sync::OnceLock<super::admin_store::AdminStore>,
    /// `[quotas]` as `node.toml` has it (at start and at each SIGHUP).
    file_quotas: Mutex<kagi_km::QuotaConfig>,
    /// Limits set through the management API, on top of `file_quotas`.
    limit_overrides: Mutex<kagi_km::QuotaOverrides>,
    /// Prometheus metrics maintained as events happen.
    pub metrics: Metrics,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn push_bounded<T>(q: &Mutex<VecDeque<T>>, item: T) {
    if let Ok(mut q) = q.lock() {
        if q.len() >= RECENT {
            q.pop_front();
        }
        q.push_back(item);
    }
}

impl Ops {
    /// Fresh state for `node_id`.
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            links_out: Mutex::new(BTreeSet::new()),
            refusals: Mutex::new(VecDeque::new()),
            audit: Mutex::new(VecDeque::new()),
            audit_seq: AtomicU64::new(1),
            peers: Mutex::new(BTreeMap::new()),
            link_in: Mutex::new(BTreeMap::new()),
            link_source: Mutex::new(BTreeMap::new()),
            trail: std::sync::OnceLock::new(),
            tamper: Mutex::new(None),
            tamper_tx: tokio::sync::watch::channel(false).0,
            admin: std::sync::OnceLock::new(),
            file_quotas: Mutex::new(kagi_km::QuotaConfig::default()),
            limit_overrides: Mutex::new(kagi_km::QuotaOverrides::default()),
            metrics: Metrics::new(),
        }
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Time since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the node is draining: new `enc_keys` requests are refused with 503 while keys
    /// already handed out can still be fetched with `dec_keys`.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts (`true`) or ends draining; returns the previous value.
    pub fn set_draining(&self, on: bool) -> bool {
        self.draining.swap(on, Ordering::SeqCst)
    }

    /// Takes the operator's switches saved in `store` (links out of service, draining) and
    /// saves every later change there; returns what was restored.
    pub fn restore_admin(
        &self,
        store: super::admin_store::AdminStore,
    ) -> Result<super::admin_store::AdminState, super::admin_store::AdminStoreError> {
        let state = store.load()?;
        self.draining.store(state.draining, Ordering::SeqCst);
        if let Ok(mut s) = self.links_out.lock() {
            s.clone_from(&state.links_out);
        }
        if let Ok(mut o) = self.limit_overrides.lock() {
            o.clone_from(&state.limits);
        }
        let _ = self.admin.set(store);
        Ok(state)
    }

    /// Saves the current switches, if a store was given to [`Ops::restore_admin`]. An
    /// operator action is acknowledged only once this succeeded.
    pub fn save_admin(&self) -> Result<(), super::admin_store::AdminStoreError> {
        let Some(store) = self.admin.get() else {
            return Ok(());
        };
        store.save(&super::admin_store::AdminState {
            links_out: self.links_out(),
            draining: self.draining(),
            limits: self.limit_overrides(),
        })
    }

    /// Records `[quotas]` as `node.toml` has it now; returns the limits that apply (it with the
    /// management API's overrides on top).
    pub fn set_file_quotas(&self, q: kagi_km::QuotaConfig) -> kagi_km::QuotaConfig {
        if let Ok(mut f) = self.file_quotas.lock() {
            *f = q;
        }
        self.quotas()
    }

    /// The limits that apply: `node.toml`'s `[quotas]` with the management API's overrides
    /// replacing the entries they name.
    pub fn quotas(&self) -> kagi_km::QuotaConfig {
        let file = self
            .file_quotas
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        file.with_overrides(&self.limit_overrides())
    }

    /// The limits set through the management API.
    pub fn limit_overrides(&self) -> kagi_km::QuotaOverrides {
        self.limit_overrides
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default()
    }

    /// Sets (`Some`) or drops (`None`, back to `node.toml`) the override of master `sae`, or of
    /// the pair (`sae`, `slave`); returns the limits that now apply, or why they cannot.
    pub fn set_limit_override(
        &self,
        sae: &str,
        slave: Option<&str>,
        limit: Option<kagi_km::SaeLimit>,
    ) -> Result<kagi_km::QuotaConfig, kagi_km::QuotaError> {
        let Ok(mut o) = self.limit_overrides.lock() else {
            return Ok(self.quotas());
        };
        let mut next = o.clone();
        match (slave, limit) {
            (None, Some(l)) => {
                next.sae.insert(sae.to_owned(), l);
            }
            (None, None) => {
                next.sae.remove(sae);
            }
            (Some(s), Some(l)) => {
                next.pair
                    .entry(sae.to_owned())
                    .or_default()
                    .insert(s.to_owned(), l);
            }
            (Some(s), None) => {
                if let Some(m) = next.pair.get_mut(sae) {
                    m.remove(s);
                    if m.is_empty() {
                        next.pair.remove(sae);
                    }
                }
            }
        }
        let file = self
            .file_quotas
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        let effective = file.with_overrides(&next);
        effective.validate()?;
        *o = next;
        Ok(effective)
    }

    /// Neighbours whose link the operator took out of service (re-applied when the core
    /// restarts).
    pub fn links_out(&self) -> BTreeSet<String> {
        self.links_out.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Records the operator's choice for the link to `peer`.
    pub fn set_link_out(&self, peer: &str, out: bool) {
        if let Ok(mut s) = self.links_out.lock() {
            if out {
                s.insert(peer.to_owned());
            } else {
                s.remove(peer);
            }
        }
    }

    /// Records a refusal (kept in a bounded list and counted by reason).
    pub fn refusal(&self, mut ev: RefusalEvent) {
        if ev.time_ms == 0 {
            ev.time_ms = now_ms();
        }
        self.metrics.refusal(&ev.reason);
        tracing::debug!(endpoint = %ev.endpoint, status = ev.status, reason = %ev.reason, "refused");
        push_bounded(&self.refusals, ev);
    }

    /// Recent refusals, oldest first.
    pub fn recent_refusals(&self) -> Vec<RefusalEvent> {
        self.refusals
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records that a tamper signal fenced the node (the first one is kept) and wakes
    /// [`Self::tamper_signal`] watchers.
    pub fn set_tampered(&self, source: &str, reason: &str) {
        if let Ok(mut t) = self.tamper.lock() {
            t.get_or_insert_with(|| TamperState {
                source: source.to_owned(),
                reason: reason.to_owned(),
                time_ms: now_ms(),
            });
        }
        self.tamper_tx.send_replace(true);
    }

    /// Why the node is fenced, once a tamper signal arrived.
    pub fn tampered(&self) -> Option<TamperState> {
        self.tamper.lock().ok().and_then(|t| t.clone())
    }

    /// Becomes `true` when the node is fenced by a tamper signal.
    pub fn tamper_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tamper_tx.subscribe()
    }

    /// Sets the node's audit trail (once): management actions are recorded there too.
    pub fn set_trail(&self, trail: std::sync::Arc<crate::audit::AuditTrail>) {
        let _ = self.trail.set(trail);
    }

    /// The node's audit trail, when it has one.
    pub fn trail(&self) -> Option<&std::sync::Arc<crate::audit::AuditTrail>> {
        self.trail.get()
    }

    /// Audits a management action: a structured log line on target `kagi::audit`, a counter,
    /// the bounded in-memory list the management API and dashboard show, and an entry in the
    /// node's audit trail.
    pub fn audit(
        &self,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> AuditEvent {
        let ev = AuditEvent {
            seq: self.audit_seq.fetch_add(1, Ordering::SeqCst),
            time_ms: now_ms(),
            actor: actor.to_owned(),
            role: role.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        };
        tracing::info!(
            target: "kagi::audit",
            node = %self.node_id,
            seq = ev.seq,
            actor = %ev.actor,
            role = %ev.role,
            action = %ev.action,
            target_id = %ev.target,
            outcome = %ev.outcome,
            detail = %ev.detail,
            "management action"
        );
        self.metrics.audit_event(action, outcome);
        if let Some(t) = self.trail.get() {
            let detail = format!("role={role} {detail}");
            // A failure closes the trail (and with it key delivery); the action itself is done.
            let _ = t.record(crate::audit::Event {
                event: action,
                actor,
                target,
                outcome,
                detail: detail.trim_end(),
            });
        }
        push_bounded(&self.audit, ev.clone());
        ev
    }

    /// Recent audit events, oldest first.
    pub fn recent_audit(&self) -> Vec<AuditEvent> {
        self.audit
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The peer channel to `peer` went up or down.
    pub fn peer(&self, peer: &str, up: bool) {
        if let Ok(mut m) = self.peers.lock() {
            m.insert(peer.to_owned(), up);
        }
    }

    /// Peers whose channel is up now.
    pub fn peers_up(&self) -> BTreeSet<String> {
        self.peers
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, u)| **u)
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The key source of the link to `peer` (a QKD device link) is now in `state` (`up`,
    /// `device_down`, `keys_differ`, ...); returns whether that is a change.
    pub fn set_link_source_state(&self, peer: &str, state: &str) -> bool {
        let Ok(mut m) = self.link_source.lock() else {
            return false;
        };
        if m.get(peer).map(String::as_str) == Some(state) {
            return false;
        }
        m.insert(peer.to_owned(), state.to_owned());
        true
    }

    /// The key source state of the link to `peer`, when its source reports one.
    pub fn link_source_state(&self, peer: &str) -> Option<String> {
        self.link_source.lock().ok()?.get(peer).cloned()
    }

    /// `bytes` of link key arrived from the link to `peer`.
    pub fn link_key_in(&self, peer: &str, bytes: u64) {
        self.metrics.link_key_in(peer, bytes);
        let now = Instant::now();
        if let Ok(mut m) = self.link_in.lock() {
            let meter = m.entry(peer.to_owned()).or_default();
            meter.total += bytes;
            meter.window.push_back((now, bytes));
            while meter
                .window
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
            {
                meter.window.pop_front();
            }
        }
    }

    /// Link key received from `peer` since start (bytes) and the rate over the last
    /// [`RATE_WINDOW`] (bytes per second).
    pub fn link_intake(&self, peer: &str) -> (u64, f64) {
        let now = Instant::now();
        let Ok(m) = self.link_in.lock() else {
            return (0, 0.0);
        };
        let Some(meter) = m.get(peer) else {
            return (0, 0.0);
        };
        let recent: u64 = meter
            .window
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .map(|(_, b)| b)
            .sum();
        // Before a full window has passed, divide by the time actually covered.
        let span = self
            .started
            .elapsed()
            .min(RATE_WINDOW)
            .as_secs_f64()
            .max(1.0);
        (meter.total, recent as f64 / span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_lists_are_bounded() {
        let ops = Ops::new("n");
        for i in 0..(RECENT + 50) {
            ops.audit("op", "operator", "node.drain", "n", "ok", &i.to_string());
            ops.refusal(RefusalEvent {
                time_ms: 0,
                endpoint: "etsi014/enc_keys".into(),
                status: 503,
                reason: "no_key".into(),
                caller: None,
                message: "m".into(),
            });
        }
        assert_eq!(ops.recent_audit().len(), RECENT);
        assert_eq!(ops.recent_refusals().len(), RECENT);
        assert_eq!(
            ops.recent_audit().last().unwrap().detail,
            (RECENT + 49).to_string()
        );
    }

    #[test]
    fn link_intake_counts_and_rates() {
        let ops = Ops::new("n");
        ops.link_key_in("p", 1000);
        ops.link_key_in("p", 500);
        let (total, rate) = ops.link_intake("p");
        assert_eq!(total, 1500);
        assert!(rate > 0.0 && rate <= 1500.0, "{rate}");
        assert_eq!(ops.link_intake("q"), (0, 0.0));
    }
}
