//! The tokio driver: one task owns the [`KeyManager`]; HTTP handlers, peer readers, link sources
//! and the store writer talk to it through one inbox.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kagi_km::{
    Action, AppCall, AppReply, Input, KeyManager, KmConfig, NodeStats, PeerMsg, Refusal, ReqId,
};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::peer::Peers;
use crate::service::KeyService;
use crate::store::{writer_loop, Quarantined, SqliteStore, StoreError};
use kagi_km::NodeId;

/// Wait before restarting the core after a storage fault, doubled on each fault in a row.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between restarts while the store keeps failing.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// The channel to the store writer.
type StoreTx = std::sync::mpsc::Sender<(kagi_km::WriteId, Vec<kagi_km::Record>)>;

/// What the driver's inbox carries.
pub enum DriverMsg {
    /// An input for the core.
    Input(Input),
    /// A store acknowledgement from the writer of core `generation` (dropped when that core has
    /// since been restarted).
    Stored {
        /// Which core's writer.
        generation: u64,
        /// The acknowledgement.
        input: Input,
    },
    /// An application call and where to send its answer.
    App(AppCall, oneshot::Sender<Result<AppReply, Refusal>>),
    /// A request for the core's counters.
    Stats(oneshot::Sender<NodeStats>),
    /// A request for the operator's snapshot of the core.
    Status(oneshot::Sender<kagi_km::KmStatus>),
    /// A tamper signal: zeroize every key, stop the store, wipe the data key, refuse everything.
    Tamper(TamperSignal),
    /// Take the link to a neighbour out of service or back; answers whether it is a neighbour.
    LinkService {
        /// The neighbour.
        peer: String,
        /// `false` takes the link out of service.
        in_service: bool,
        /// Whether `peer` is a neighbour.
        reply: oneshot::Sender<bool>,
    },
    /// Replace the per-SAE key rate limits; answers the validation result.
    SetQuotas {
        /// The new limits.
        quotas: kagi_km::QuotaConfig,
        /// `Err` (limits unchanged) when they are invalid.
        reply: oneshot::Sender<Result<(), kagi_km::QuotaError>>,
    },
}

/// A tamper signal for the driver ([`DriverHandle::tamper`]).
pub struct TamperSignal {
    /// Where it came from (`management`, `watch_path`, ...).
    pub source: String,
    /// What it said.
    pub reason: String,
    /// Also crypto-erase the stored keys ([`crate::seal::erase`]) once fenced.
    pub erase: bool,
    /// Answered once the keys are gone and the node is fenced: what an erase destroyed (empty
    /// for a plain tamper signal), or why the erase failed.
    pub reply: oneshot::Sender<Result<Vec<String>, String>>,
}

/// Peer messages queued for the core. A peer that sends faster than the core handles them
/// waits: its connection task blocks on the full queue and stops reading, so TCP flow control
/// slows the sender and memory stays bounded (`PEER_INBOX` × [`kagi_km::msgs::MAX_MSG_LEN`] at
/// worst, far less in practice).
pub const PEER_INBOX: usize = 1024;

/// Application calls (ETSI 014, ETSI 004, vault, management) in flight in the core at once;
/// beyond this a call is refused at once with 503 instead of queueing.
pub const MAX_APP_CALLS: usize = 4096;

/// A peer message for the core, with the authenticated sender's node ID.
pub type PeerInput = (String, PeerMsg);

/// The core's peer queue, bounded at [`PEER_INBOX`] (one constructor, so the flood test checks
/// the queue the driver really uses).
pub fn peer_queue() -> (mpsc::Sender<PeerInput>, mpsc::Receiver<PeerInput>) {
    mpsc::channel(PEER_INBOX)
}

/// A cloneable handle to a running driver; implements [`KeyService`].
#[derive(Clone)]
pub struct DriverHandle {
    inbox: mpsc::UnboundedSender<DriverMsg>,
    peers: mpsc::Sender<PeerInput>,
    app_slots: Arc<Semaphore>,
}

impl DriverHandle {
    /// The inbox, for trusted adapters that feed inputs (links, peer up/down, the store).
    pub fn inbox(&self) -> mpsc::UnboundedSender<DriverMsg> {
        self.inbox.clone()
    }

    /// The bounded queue of peer messages ([`PEER_INBOX`]); senders wait when it is full.
    pub fn peer_inbox(&self) -> mpsc::Sender<PeerInput> {
        self.peers.clone()
    }

    /// The core's counters.
    pub async fn stats(&self) -> Option<NodeStats> {
        let (tx, rx) = oneshot::channel();
        self.inbox.send(DriverMsg::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// The operator's snapshot of the core (`None` when the driver is gone).
    pub async fn status(&self) -> Option<kagi_km::KmStatus> {
        let (tx, rx) = oneshot::channel();
        self.inbox.send(DriverMsg::Status(tx)).ok()?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()?
            .ok()
    }

    /// Delivers a tamper signal and waits until the node is fenced: the key manager (every link,
    /// pool and waiting key) is dropped and zeroized, the store writer stopped, the data key
    /// wiped, and every later call refused with 503. False when the driver did not confirm.
    pub async fn tamper(&self, source: &str, reason: &str) -> bool {
        matches!(self.signal(source, reason, false).await, Some(Ok(_)))
    }

    /// Fences the node as [`Self::tamper`] does, then crypto-erases its stored keys (see
    /// [`crate::seal::erase`]); the audit trail records the erase, and is checkpointed, before
    /// any key is destroyed. Answers what was destroyed, or why the erase failed (the node stays
    /// fenced either way); `None` when the driver did not answer.
    pub async fn erase(&self, who: &str, reason: &str) -> Option<Result<Vec<String>, String>> {
        self.signal(who, reason, true).await
    }

    async fn signal(
        &self,
        source: &str,
        reason: &str,
        erase: bool,
    ) -> Option<Result<Vec<String>, String>> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(DriverMsg::Tamper(TamperSignal {
                source: source.to_owned(),
                reason: reason.to_owned(),
                erase,
                reply: tx,
            }))
            .ok()?;
        // An erase vacuums the store: allow it longer than the fence alone.
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .ok()?
            .ok()
    }

    /// Takes the link to neighbour `peer` out of service (`false`) or back (`true`). `None` when
    /// the driver is gone, `Some(false)` when `peer` is not a neighbour.
    pub async fn set_link_in_service(&self, peer: &str, in_service: bool) -> Option<bool> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(DriverMsg::LinkService {
                peer: peer.to_owned(),
                in_service,
                reply: tx,
            })
            .ok()?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()?
            .ok()
    }
}

impl DriverHandle {
    /// Replaces the per-SAE key rate limits without a restart (SIGHUP reload and the management
    /// API). `None` when the driver is gone or fenced.
    pub async fn set_quotas(
        &self,
        quotas: kagi_km::QuotaConfig,
    ) -> Option<Result<(), kagi_km::QuotaError>> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(DriverMsg::SetQuotas { quotas, reply: tx })
            .ok()?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()?
            .ok()
    }
}

impl KeyService for DriverHandle {
    async fn call(&self, call: AppCall) -> Result<AppReply, Refusal> {
        // Each call holds a slot until answered, so a flood of callers cannot grow the queue.
        let Ok(_slot) = self.app_slots.try_acquire() else {
            return Err(Refusal::Unavailable(format!(
                "key manager busy: {MAX_APP_CALLS} requests in flight; retry shortly"
            )));
        };
        let (tx, rx) = oneshot::channel();
        let unavailable = || Refusal::Unavailable("key manager is not running".into());
        self.inbox
            .send(DriverMsg::App(call, tx))
            .map_err(|_| unavailable())?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            _ => Err(unavailable()),
        }
    }
}

/// Everything the driver needs at start.
pub struct Driver {
    cfg: KmConfig,
    db_path: std::path::PathBuf,
    sync: crate::store::Sync,
    sealer: Arc<crate::seal::Sealer>,
    inbox_tx: mpsc::UnboundedSender<DriverMsg>,
    inbox_rx: mpsc::UnboundedReceiver<DriverMsg>,
    peer_tx: mpsc::Sender<PeerInput>,
    peer_rx: mpsc::Receiver<PeerInput>,
    app_slots: Arc<Semaphore>,
    ops: Option<Arc<crate::mgmt::Ops>>,
    audit: Option<Arc<crate::audit::AuditTrail>>,
    erase: Option<crate::seal::erase::EraseTargets>,
    /// Records failing authentication in one run that count as tampering (0: never).
    integrity_threshold: u64,
    /// Records quarantined by [`Self::snapshot`], not yet audited and counted.
    found_bad: Vec<Quarantined>,
    /// Records quarantined in this run so far.
    integrity_failures: u64,
}

impl Driver {
    /// A driver for `cfg` with its store at `db_path`, committed with `sync` and sealed with
    /// `sealer` (see [`crate::seal::node::unseal_node`]).
    pub fn new(
        cfg: KmConfig,
        db_path: &Path,
        sync: crate::store::Sync,
        sealer: Arc<crate::seal::Sealer>,
    ) -> Self {
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let (peer_tx, peer_rx) = peer_queue();
        Self {
            cfg,
            db_path: db_path.to_path_buf(),
            sync,
            sealer,
            inbox_tx,
            inbox_rx,
            peer_tx,
            peer_rx,
            app_slots: Arc::new(Semaphore::new(MAX_APP_CALLS)),
            ops: None,
            audit: None,
            erase: None,
            integrity_threshold: 0,
            found_bad: Vec::new(),
            integrity_failures: 0,
        }
    }

    /// Treats `n` stored records failing authentication in this run (start and core restarts
    /// together) as a tamper signal from the source `integrity` (`[tamper] integrity_failures`;
    /// 0, the default of a bare driver, never).
    pub fn with_integrity_threshold(mut self, n: u64) -> Self {
        self.integrity_threshold = n;
        self
    }

    /// What an erase signal destroys ([`DriverHandle::erase`]); without it an erase is refused.
    pub fn with_erase(mut self, targets: crate::seal::erase::EraseTargets) -> Self {
        self.erase = Some(targets);
        self
    }

    /// Records key events (link blocks in, keys served, refusals) in `trail`, and fails closed:
    /// once the trail cannot be written, every application call is refused with 503.
    pub fn with_audit(mut self, trail: Arc<crate::audit::AuditTrail>) -> Self {
        self.audit = Some(trail);
        self
    }

    /// Reports link intake, peer reachability and store commit latency to `ops`, and applies
    /// its links-out-of-service set whenever the core (re)starts.
    pub fn with_ops(mut self, ops: Arc<crate::mgmt::Ops>) -> Self {
        self.ops = Some(ops);
        self
    }

    /// A handle for HTTP handlers and adapters.
    pub fn handle(&self) -> DriverHandle {
        DriverHandle {
            inbox: self.inbox_tx.clone(),
            peers: self.peer_tx.clone(),
            app_slots: self.app_slots.clone(),
        }
    }

    /// The store's snapshot, read before the core starts (link sources need the high-water marks).
    /// Records it quarantines are audited and counted when [`Self::run`] starts.
    pub fn snapshot(&mut self) -> Result<kagi_km::Snapshot, StoreError> {
        let (snap, found) = self.open_store()?.snapshot_reporting()?;
        self.found_bad.extend(found);
        Ok(snap)
    }

    /// Audits the records just quarantined (`store.quarantine`) and counts them; once this run
    /// reaches the threshold, the tamper signal to act on.
    fn note_quarantined(&mut self, found: Vec<Quarantined>) -> Option<TamperSignal> {
        if found.is_empty() {
            return None;
        }
        for q in &found {
            if let Some(trail) = &self.audit {
                // A failure closes the trail; the next application call is refused.
                let _ = trail.record(crate::audit::Event {
                    event: "store.quarantine",
                    actor: "node",
                    target: &format!("{}/{}", q.kind, q.key),
                    outcome: "quarantined",
                    detail: &q.why,
                });
            }
        }
        self.integrity_failures += found.len() as u64;
        let (n, t) = (self.integrity_failures, self.integrity_threshold);
        (t > 0 && n >= t).then(|| TamperSignal {
            source: "integrity".into(),
            reason: format!(
                "{n} stored records failed authentication in this run (threshold {t}): the store \
                 was altered"
            ),
            erase: false,
            reply: oneshot::channel().0,
        })
    }

    fn open_store(&self) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_sealed(&self.db_path, self.sync, self.sealer.clone())
    }

    /// Starts a store writer thread whose acknowledgements carry `generation`.
    fn spawn_writer(
        &self,
        store: SqliteStore,
        generation: u64,
    ) -> std::io::Result<(StoreTx, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let inbox = self.inbox_tx.clone();
        let writer = std::thread::Builder::new()
            .name("kagi-store".into())
            .spawn(move || {
                writer_loop(store, rx, move |input| {
                    let _ = inbox.send(DriverMsg::Stored { generation, input });
                })
            })?;
        Ok((tx, writer))
    }

    /// The core's configuration for one start: its link-state adverts numbered from the wall
    /// clock in milliseconds, so they outrank every advert of an earlier start even when the
    /// store was restored from an older copy or wiped (which sets the store's run counter
    /// back), and above `last` (the previous start of this process) if the clock went back.
    fn start_cfg(&self, last: &mut u64) -> KmConfig {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        *last = next_advert_run(*last, wall);
        tracing::info!(
            advert_run = *last,
            "link-state adverts of this start numbered from the wall clock"
        );
        KmConfig {
            advert_run_base: *last,
            ..self.cfg.clone()
        }
    }

    /// Runs the core until `shutdown` resolves.
    pub async fn run(
        mut self,
        peers: Peers,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let origin = std::time::Instant::now();
        let now = move || kagi_km::Instant(origin.elapsed().as_nanos() as u64);
        let store = self.open_store()?;
        let (snap, mut found) = store.snapshot_reporting()?;
        found.splice(0..0, std::mem::take(&mut self.found_bad));
        // Fewer than the threshold are quarantined and the node runs on; more fence it at once.
        let mut tamper: Option<TamperSignal> = self.note_quarantined(found);
        let mut relay_summary = crate::audit::relay_summary::RelaySummary::default();
        let mut next_summary = now() + crate::audit::relay_summary::EVERY;
        // Each core gets its own writer; acknowledgements carry the generation, so a restarted
        // core never sees those meant for the one before it.
        let mut generation = 0;
        let (mut store_tx, mut writer) = self.spawn_writer(store, generation)?;
        let mut restart_delay = FIRST_RESTART_DELAY;
        let mut hooks = Hooks {
            ops: self.ops.clone(),
            stores: BTreeMap::new(),
            audit: self.audit.clone(),
            quotas: None,
        };
        let mut advert_run = 0;
        let mut km = KeyManager::restore(self.start_cfg(&mut advert_run), snap, os_seed(), now());
        hooks.reapply(&mut km);
        let mut waiting: BTreeMap<ReqId, Waiting> = BTreeMap::new();
        let mut next_req: ReqId = 1;
        tokio::pin!(shutdown);
        let mut next_report = now() + Duration::from_secs(5);
        loop {
            if tamper.is_some() {
                break;
            }
            if now() >= next_summary {
                next_summary = now() + crate::audit::relay_summary::EVERY;
                self.audit_relays(&mut relay_summary, &km);
            }
            if now() >= next_report {
                next_report = now() + Duration::from_secs(5);
                let s = km.stats();
                tracing::info!(
                    link_key_in = s.link_key_in,
                    link_bytes = s.link_bytes,
                    pool_bytes = s.pool_bytes,
                    relays_started = s.relays_started,
                    relays_acked = s.relays_acked,
                    relays_abandoned = s.relays_abandoned,
                    relays_aborted = s.relays_aborted,
                    abandoned_key_bytes = s.abandoned_key_bytes,
                    multipath_relays = s.multipath_relays_started,
                    shares_lost = s.shares_lost,
                    shares_manipulated = s.shares_manipulated,
                    manipulation_aborts = s.manipulation_aborts,
                    hops_forwarded = s.hops_forwarded,
                    replays_rejected = s.replays_rejected,
                    bad_tags = s.bad_tags,
                    served_master = s.keys_served_master,
                    served_slave = s.keys_served_slave,
                    "key manager stats"
                );
            }
            flush(&mut km, &peers, &store_tx, &mut waiting, &mut hooks);
            if km.is_fenced() {
                // Restart the core from what the store acknowledged.
                tracing::error!(
                    retry_in_ms = restart_delay.as_millis() as u64,
                    "storage fault: restarting the key manager from the store"
                );
                for (_, w) in std::mem::take(&mut waiting) {
                    let _ = w.tx.send(Err(Refusal::Unavailable(
                        "key manager restarted after a storage fault; retry".into(),
                    )));
                }
                // The writer fails whatever the fenced core still queued and ends: the snapshot
                // below is then exactly what was acknowledged, and nothing lands after it.
                drop(store_tx);
                let old = writer;
                let _ = tokio::task::spawn_blocking(move || old.join()).await;
                tokio::time::sleep(restart_delay).await;
                // A disk that stays full fails again at once: back off instead of spinning.
                restart_delay = (restart_delay * 2).min(MAX_RESTART_DELAY);
                generation += 1;
                let store = self.open_store()?;
                let (snap, found) = store.snapshot_reporting()?;
                (store_tx, writer) = self.spawn_writer(store, generation)?;
                self.audit_relays(&mut relay_summary, &km);
                relay_summary.restarted();
                km = KeyManager::restore(self.start_cfg(&mut advert_run), snap, os_seed(), now());
                hooks.stores.clear();
                hooks.reapply(&mut km);
                tamper = self.note_quarantined(found);
                continue;
            }
            let deadline = km.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(t) => {
                        let wait = t.saturating_since(now());
                        tokio::time::sleep(wait).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                msg = self.inbox_rx.recv() => {
                    let Some(msg) = msg else { break };
                    let t = now();
                    let mut ctx = Ctx {
                        waiting: &mut waiting,
                        next_req: &mut next_req,
                        hooks: &mut hooks,
                        generation,
                        restart_delay: &mut restart_delay,
                    };
                    tamper = deliver(&mut km, t, msg, &mut ctx);
                    // Take whatever else is queued before draining actions.
                    for _ in 0..1024 {
                        if tamper.is_some() {
                            break;
                        }
                        match self.inbox_rx.try_recv() {
                            Ok(m) => tamper = deliver(&mut km, t, m, &mut ctx),
                            Err(_) => break,
                        }
                    }
                }
                msg = self.peer_rx.recv() => {
                    let Some((from, msg)) = msg else { break };
                    let t = now();
                    let mut ctx = Ctx {
                        waiting: &mut waiting,
                        next_req: &mut next_req,
                        hooks: &mut hooks,
                        generation,
                        restart_delay: &mut restart_delay,
                    };
                    let mut msg = Some((from, msg));
                    // A batch at a time; the control inbox goes first on the next turn.
                    for _ in 0..256 {
                        let Some((from, m)) = msg.take().or_else(|| self.peer_rx.try_recv().ok())
                        else {
                            break;
                        };
                        deliver(&mut km, t, DriverMsg::Input(Input::Peer { from: NodeId::from(from), msg: m }), &mut ctx);
                    }
                }
                _ = sleep => {}
            }
            if tamper.is_some() {
                break;
            }
            // Compare with the clock rather than trusting the sleep (quinn's drive_timer).
            if km.poll_timeout().is_some_and(|t| t <= now()) {
                km.handle_timeout(now());
            }
        }
        // What the core relayed since the last summary, before it goes.
        self.audit_relays(&mut relay_summary, &km);
        let why = tamper.as_ref().map(|t| {
            if t.erase {
                format!(
                    "node {} is fenced and crypto-erased (by {}: {}); its keys were destroyed \
                     in memory and on disk, and it will not start again",
                    self.cfg.node_id, t.source, t.reason
                )
            } else {
                format!(
                    "node {} is fenced after a tamper signal ({}: {}); its keys were erased \
                     from memory; an operator must restart and unseal it",
                    self.cfg.node_id, t.source, t.reason
                )
            }
        });
        if let Some(why) = &why {
            // Every link, pool and waiting key lives in the core: dropping it zeroizes them.
            drop(km);
            for (_, w) in std::mem::take(&mut waiting) {
                let _ = w.tx.send(Err(Refusal::Unavailable(why.clone())));
            }
            tracing::error!(reason = %why, "tamper signal: key material erased, node fenced");
        }
        drop(store_tx);
        // Let the writer finish its last commits and truncate the WAL before the node counts as
        // stopped.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        if let (Some(t), Some(why)) = (tamper, why) {
            self.sealer.wipe();
            if let Some(trail) = &self.audit {
                let _ = trail.record(crate::audit::Event {
                    event: if t.erase { "node.erase" } else { "node.tamper" },
                    actor: &t.source,
                    target: &self.cfg.node_id,
                    outcome: "fenced",
                    detail: &t.reason,
                });
                let _ = trail.checkpoint();
            }
            if let Some(ops) = &self.ops {
                // Stops the link sources and wipes the photon ledger's key before an erase.
                let source = if t.erase { "erase" } else { t.source.as_str() };
                ops.set_tampered(source, &t.reason);
            }
            let answer = if t.erase {
                self.crypto_erase(&t.source, &t.reason)
            } else {
                Ok(Vec::new())
            };
            let _ = t.reply.send(answer);
            self.fenced(&why, shutdown).await;
        }
        Ok(())
    }

    /// Writes a `relay.summary` line when the core's relay counters moved (see
    /// [`crate::audit::relay_summary`]).
    fn audit_relays(
        &self,
        summary: &mut crate::audit::relay_summary::RelaySummary,
        km: &KeyManager,
    ) {
        let Some(trail) = &self.audit else { return };
        if let Some((outcome, detail)) = summary.next(&km.stats()) {
            // A failure closes the trail; the next application call is refused.
            let _ = trail.record(crate::audit::Event {
                event: "relay.summary",
                actor: "node",
                target: &self.cfg.node_id,
                outcome,
                detail: &detail,
            });
        }
    }

    /// Crypto-erases the fenced node's store (see [`crate::seal::erase`]). The trail records the
    /// erase and signs a checkpoint first, so the record survives what it describes; a trail that
    /// cannot be written refuses the erase (nothing is destroyed unaudited; the node stays
    /// fenced, with its keys gone from memory).
    fn crypto_erase(&self, who: &str, reason: &str) -> Result<Vec<String>, String> {
        let Some(targets) = &self.erase else {
            return Err("this node was started without erase targets".into());
        };
        let node = &self.cfg.node_id;
        let ev = |outcome, detail| crate::audit::Event {
            event: "node.erase",
            actor: who,
            target: node,
            outcome,
            detail,
        };
        if let Some(trail) = &self.audit {
            trail
                .record(ev("erasing", reason))
                .and_then(|_| trail.checkpoint())
                .map_err(|e| {
                    format!(
                        "{e}; nothing was erased (the node stays fenced, its keys gone from \
                         memory)"
                    )
                })?;
        }
        let result = crate::seal::erase::erase(targets, &crate::seal::erase::note(who, reason));
        match &result {
            Ok(done) => tracing::error!(destroyed = ?done, "node crypto-erased"),
            Err(e) => tracing::error!(error = %e, "crypto-erase failed"),
        }
        if let Some(trail) = &self.audit {
            let (outcome, detail) = match &result {
                Ok(done) => ("erased", done.join("; ")),
                Err(e) => ("failed", e.to_string()),
            };
            // Signed with the key still in memory; its stored copy is gone.
            let r = trail
                .record(ev(outcome, &detail))
                .and_then(|_| trail.checkpoint());
            if let Err(e) = r {
                tracing::error!(error = %e, "audit record of the erase failed");
            }
        }
        result.map_err(|e| format!("erase failed: {e}"))
    }

    /// After a tamper signal: refuses every call with `why` until `shutdown`. Link key that still
    /// arrives is dropped (zeroized) unread.
    async fn fenced(
        &mut self,
        why: &str,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                // Peer messages are read and dropped, so peers never wait on a fenced node.
                Some(_) = self.peer_rx.recv() => {}
                msg = self.inbox_rx.recv() => match msg {
                    None => return,
                    Some(DriverMsg::App(_, tx)) => {
                        let _ = tx.send(Err(Refusal::Unavailable(why.to_owned())));
                    }
                    Some(DriverMsg::Tamper(t)) => {
                        let answer = if t.erase {
                            self.crypto_erase(&t.source, &t.reason)
                        } else {
                            Ok(Vec::new())
                        };
                        let _ = t.reply.send(answer);
                    }
                    Some(DriverMsg::LinkService { reply, .. }) => {
                        let _ = reply.send(false);
                    }
                    // Stats and status go unanswered (the management API reports the fence).
                    Some(_) => {}
                }
            }
        }
    }
}

/// An application call waiting for the core's answer.
struct Waiting {
    tx: oneshot::Sender<Result<AppReply, Refusal>>,
    /// `keys.enc`, `keys.dec` or `keys.status` (the audit event).
    event: &'static str,
    /// The calling SAE.
    caller: String,
    /// The other SAE.
    other: String,
}

impl Waiting {
    fn new(call: &AppCall, tx: oneshot::Sender<Result<AppReply, Refusal>>) -> Self {
        let (event, caller, other) = match call {
            AppCall::Status { master, slave } => ("keys.status", master, slave),
            AppCall::EncKeys { master, slave, .. } => ("keys.enc", master, slave),
            AppCall::DecKeys { slave, master, .. } => ("keys.dec", slave, master),
        };
        Self {
            tx,
            event,
            caller: caller.to_string(),
            other: other.to_string(),
        }
    }

    /// Audits the answer, then sends it; when the trail cannot take the event, a key answer
    /// becomes a 503 (fail closed: no key leaves unaudited).
    fn answer(self, audit: Option<&crate::audit::AuditTrail>, reply: Result<AppReply, Refusal>) {
        let reply = match audit {
            None => reply,
            Some(trail) => {
                let (outcome, detail) = match &reply {
                    Ok(AppReply::Keys(keys)) => {
                        let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
                        ("ok", format!("n={} ids={}", keys.len(), ids.join(",")))
                    }
                    Ok(AppReply::Status(_)) => ("ok", String::new()),
                    Err(r) => ("refused", format!("{} {}", r.http_status(), r.message())),
                };
                let ev = crate::audit::Event {
                    event: self.event,
                    actor: &self.caller,
                    target: &self.other,
                    outcome,
                    detail: &detail,
                };
                match trail.record(ev) {
                    Ok(_) => reply,
                    Err(e) if reply.is_ok() => Err(Refusal::Unavailable(e.to_string())),
                    Err(_) => reply,
                }
            }
        };
        let _ = self.tx.send(reply);
    }
}

/// What the driver reports to the operator's state (see [`Driver::with_ops`]) and the audit
/// trail (see [`Driver::with_audit`]).
struct Hooks {
    ops: Option<Arc<crate::mgmt::Ops>>,
    /// When each unacknowledged store batch was handed to the writer.
    stores: BTreeMap<kagi_km::WriteId, std::time::Instant>,
    audit: Option<Arc<crate::audit::AuditTrail>>,
    /// Per-SAE limits set at run time, applied again to a core restarted from the store.
    quotas: Option<kagi_km::QuotaConfig>,
}

impl Hooks {
    fn observe(&mut self, input: &Input) {
        if let (Some(trail), Input::LinkKeys { peer, block, key }) = (&self.audit, input) {
            // A failure closes the trail; the next application call is refused.
            let _ = trail.record(crate::audit::Event::node(
                "link.block_in",
                peer,
                &format!("block={block} bytes={}", key.len()),
            ));
        }
        let Some(ops) = &self.ops else { return };
        match input {
            Input::LinkKeys { peer, key, .. } => ops.link_key_in(peer, key.len() as u64),
            Input::PeerUp { peer } => ops.peer(peer, true),
            Input::PeerDown { peer } => ops.peer(peer, false),
            Input::Stored { write, .. } => {
                if let Some(t) = self.stores.remove(write) {
                    ops.metrics.store_commit(t.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    fn reapply(&self, km: &mut KeyManager) {
        if let Some(q) = &self.quotas {
            // Validated when it was set.
            let _ = km.set_quotas(q.clone());
        }
        if let Some(ops) = &self.ops {
            for peer in ops.links_out() {
                km.set_link_in_service(&peer, false);
            }
        }
    }
}

/// The driver's state that [`deliver`] touches.
struct Ctx<'a> {
    waiting: &'a mut BTreeMap<ReqId, Waiting>,
    next_req: &'a mut ReqId,
    hooks: &'a mut Hooks,
    /// The running core's generation.
    generation: u64,
    /// Reset once the running core's writes succeed again.
    restart_delay: &'a mut Duration,
}

fn deliver(
    km: &mut KeyManager,
    now: kagi_km::Instant,
    msg: DriverMsg,
    ctx: &mut Ctx<'_>,
) -> Option<TamperSignal> {
    let (waiting, next_req, hooks) = (&mut *ctx.waiting, &mut *ctx.next_req, &mut *ctx.hooks);
    match msg {
        DriverMsg::Tamper(t) => return Some(t),
        DriverMsg::Input(i) => {
            hooks.observe(&i);
            km.handle(now, i)
        }
        DriverMsg::Stored { generation, input } => {
            // An earlier core's writer: its acknowledgements would fence this core.
            if generation != ctx.generation {
                return None;
            }
            if matches!(input, Input::Stored { ok: true, .. }) {
                *ctx.restart_delay = FIRST_RESTART_DELAY;
            }
            hooks.observe(&input);
            km.handle(now, input)
        }
        DriverMsg::Status(tx) => {
            let _ = tx.send(km.km_status());
        }
        DriverMsg::LinkService {
            peer,
            in_service,
            reply,
        } => {
            let ok = km.set_link_in_service(&peer, in_service);
            if ok {
                if let Some(ops) = &hooks.ops {
                    ops.set_link_out(&peer, !in_service);
                }
            }
            let _ = reply.send(ok);
        }
        DriverMsg::SetQuotas { quotas, reply } => {
            let r = km.set_quotas(quotas.clone());
            if r.is_ok() {
                // Kept for a core restarted from the store.
                hooks.quotas = Some(quotas);
            }
            let _ = reply.send(r);
        }
        DriverMsg::App(call, tx) => {
            let w = Waiting::new(&call, tx);
            if let Some(fault) = hooks.audit.as_ref().and_then(|a| a.fault()) {
                // Fail closed: nothing is served while the trail cannot record it.
                let _ = w.tx.send(Err(Refusal::Unavailable(format!(
                    "audit trail cannot be written ({fault}); key delivery is stopped"
                ))));
                return None;
            }
            let req = *next_req;
            *next_req += 1;
            waiting.insert(req, w);
            km.handle(now, Input::App { req, call });
        }
        DriverMsg::Stats(tx) => {
            let _ = tx.send(km.stats());
        }
    }
    None
}

fn flush(
    km: &mut KeyManager,
    peers: &Peers,
    store: &StoreTx,
    waiting: &mut BTreeMap<ReqId, Waiting>,
    hooks: &mut Hooks,
) {
    while let Some(a) = km.poll_action() {
        match a {
            Action::Send { to, msg } => peers.send(&to, msg),
            Action::Store { write, batch } => {
                if hooks.ops.is_some() {
                    hooks.stores.insert(write, std::time::Instant::now());
                }
                if store.send((write, batch)).is_err() {
                    tracing::error!("store writer is gone");
                }
            }
            Action::Answer { req, reply } => {
                if let Some(w) = waiting.remove(&req) {
                    w.answer(hooks.audit.as_deref(), reply);
                }
            }
        }
    }
}

fn os_seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// The advert run base of a start at wall-clock `wall_ms` after one at `last` in this process:
/// the clock, or just above `last` if the clock went back (or did not move).
fn next_advert_run(last: u64, wall_ms: u64) -> u64 {
    wall_ms.max(last.saturating_add(1))
}

/// The core's configuration from a node config and topology.
pub fn km_config(cfg: &crate::config::NodeConfig, topo: Arc<kagi_control::Topology>) -> KmConfig {
    let e = &cfg.etsi014;
    let p = &cfg.pool;
    KmConfig {
        node_id: NodeId::from(&cfg.node_id),
        topology: topo,
        limits: e.limits.clone(),
        policy: kagi_km::Policy {
            pool_target_bytes: p.target_bytes,
            pool_low_water: p.low_water,
            relay_chunk_bytes: p.relay_chunk_bytes.clamp(32, 1 << 20) as u32,
            max_relays_in_flight: p.max_in_flight.max(1),
            link_grants: p.link_grant_policy(),
            routing: cfg.routing.to_policy(),
            peers: match cfg.peers.connect {
                crate::config::PeerConnect::All => kagi_km::PeerScope::All,
                crate::config::PeerConnect::Neighbours => kagi_km::PeerScope::Neighbours,
            },
            quotas: cfg.quotas.clone(),
            slave_grace: Duration::from_secs(cfg.delivery.grace_s).min(kagi_km::MAX_SLAVE_GRACE),
            slave_key_lifetime: Duration::from_secs(cfg.delivery.slave_key_lifetime_s)
                .min(kagi_km::MAX_SLAVE_KEY_LIFETIME),
            ..kagi_km::Policy::default()
        },
        // Loading the keys reads files: the caller sets it (`crate::advert_keys::from_config`).
        advert_auth: None,
        // Set at each start of the core (`advert_run_base`).
        advert_run_base: 0,
    }
}

#[cfg(test)]
mod advert_run_tests {
    use super::next_advert_run;

    /// Each start of the core in one process numbers its adverts above the one before, even
    /// when the wall clock went back or two starts fall in one millisecond.
    #[test]
    fn advert_runs_grow_with_every_start() {
        assert_eq!(next_advert_run(0, 1_700_000_000_000), 1_700_000_000_000);
        assert_eq!(
            next_advert_run(1_700_000_000_000, 1_700_000_000_000),
            1_700_000_000_001
        );
        assert_eq!(
            next_advert_run(1_700_000_000_000, 1_600_000_000_000),
            1_700_000_000_001
        );
        assert_eq!(next_advert_run(u64::MAX, 5), u64::MAX);
    }
}
