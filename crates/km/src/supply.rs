//! Key supply: ETSI GS QKD 014 semantics without HTTP, and the assignment exchange between the
//! master's node and the slaves' nodes.
//!
//! On `enc_keys` the master's node takes keys from its pool for the slave's node, persists the
//! spend, tells every slave node which key IDs now belong to (master, slaves) — each persists that
//! before acknowledging — and only then answers the master. A key is served once to its master
//! and once to each slave, then erased.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::fixed_hash::FixedMap;

use kagi_keymat::its_mac::MAC_KEY_LEN;
use kagi_keymat::Key;
use uuid::Uuid;

use crate::app::{AppCall, AppReply, DeliveredKey, KeyPaths, Refusal, SaeId, StatusInfo};
use crate::manager::KeyManager;
use crate::msgs::{AssignedKey, KeySource, NodeId, PeerMsg};
use crate::outbox::{Action, After, ReqId, WriteId};
use crate::record::{Counter, Record, SlaveKey};
use crate::relay::otp_tag;
use crate::route::{RouteConstraint, RouteRequest};
use crate::time::Instant;

/// An `enc_keys` answer waiting for every slave node to confirm its keys.
#[derive(Debug, Clone)]
pub(crate) struct MasterAssign {
    pub(crate) req: ReqId,
    pub(crate) keys: Vec<DeliveredKey>,
    pub(crate) nodes: Vec<NodeId>,
    pub(crate) waiting: BTreeSet<NodeId>,
    pub(crate) msgs: BTreeMap<NodeId, PeerMsg>,
    pub(crate) durable: bool,
    pub(crate) deadline: Instant,
    pub(crate) next_retry: Instant,
}

/// Supply state: assignments in progress here as master node, keys held here for slaves.
#[derive(Debug, Clone)]
pub(crate) struct Supply {
    /// Keys held here for slaves. Hashed: looked up on every assignment and fetch, and walked
    /// only where the walk's order cannot matter (or is sorted first).
    pub(crate) slave_keys: FixedMap<Uuid, SlaveKey>,
    pub(crate) assigns: BTreeMap<u64, MasterAssign>,
    /// Assignments applied here as a slave node; `Some(write)` while not yet durable. Kept for
    /// [`APPLIED_KEPT_ASSIGN_TIMEOUTS`] assignment timeouts, to tell a retransmission from a new
    /// assignment: the origin retransmits only until its timeout.
    pub(crate) applied_assigns: FixedMap<(NodeId, u64), Option<WriteId>>,
    /// `applied_assigns` in the order they were applied, with when (for forgetting them).
    applied_order: VecDeque<(Instant, NodeId, u64)>,
    pub(crate) next_assign: u64,
}

/// How many assignment timeouts a slave node remembers an applied assignment. The origin
/// retransmits an assignment only until its timeout, so a copy arriving later still was
/// delayed that many times over. Without a bound the memory grew by one entry per assignment
/// for as long as a node ran (1.1 GB over a simulated day of a 100-node mesh).
pub(crate) const APPLIED_KEPT_ASSIGN_TIMEOUTS: u32 = 12;

impl Default for Supply {
    fn default() -> Self {
        Self {
            slave_keys: FixedMap::default(),
            assigns: BTreeMap::new(),
            applied_assigns: FixedMap::default(),
            applied_order: VecDeque::new(),
            next_assign: 1,
        }
    }
}

impl Supply {
    /// Restores a key held for slaves (and marks its assignment applied and durable, as of
    /// `now`).
    pub(crate) fn restore_slave_key(&mut self, id: Uuid, key: SlaveKey, now: Instant) {
        self.note_applied(now, key.origin.clone(), key.assign_seq, None);
        self.slave_keys.insert(id, key);
    }

    /// Notes the slave-side assignment `(origin, seq)` applied at `now` (`write`: the store
    /// write that makes it durable, `None` if it is).
    pub(crate) fn note_applied(
        &mut self,
        now: Instant,
        origin: NodeId,
        seq: u64,
        write: Option<WriteId>,
    ) {
        if self
            .applied_assigns
            .insert((origin.clone(), seq), write)
            .is_none()
        {
            self.applied_order.push_back((now, origin, seq));
        }
    }

    /// Forgets durable applied assignments older than `kept` (oldest first; one not yet
    /// durable stops the walk, and with it every later one is kept).
    pub(crate) fn forget_applied(&mut self, now: Instant, kept: std::time::Duration) {
        while let Some((at, origin, seq)) = self.applied_order.front() {
            if now.saturating_since(*at) < kept {
                break;
            }
            let key = (origin.clone(), *seq);
            match self.applied_assigns.get(&key) {
                Some(Some(_)) => break,
                Some(None) => {
                    self.applied_assigns.remove(&key);
                }
                None => {}
            }
            self.applied_order.pop_front();
        }
    }

    /// Restores the assignment counter (it only moves forward).
    pub(crate) fn restore_counter(&mut self, next: u64) {
        self.next_assign = self.next_assign.max(next);
    }

    /// The earliest assignment deadline or retry.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.assigns
            .values()
            .map(|a| {
                if a.durable {
                    a.deadline.min(a.next_retry)
                } else {
                    a.deadline
                }
            })
            .min()
    }

    /// This node's spend for master assignment `seq` is durable: it may be re-sent.
    pub(crate) fn assign_durable(&mut self, seq: u64) {
        if let Some(a) = self.assigns.get_mut(&seq) {
            a.durable = true;
        }
    }

    /// The slave-side assignment `(origin, seq)` is durable: retransmissions are acked at once.
    pub(crate) fn slave_assign_durable(&mut self, origin: NodeId, seq: u64) {
        if let Some(w) = self.applied_assigns.get_mut(&(origin, seq)) {
            *w = None;
        }
    }

    /// Drops every master assignment in progress; returns their requests (to be refused).
    pub(crate) fn drop_assigns(&mut self) -> Vec<ReqId> {
        std::mem::take(&mut self.assigns)
            .into_values()
            .map(|a| a.req)
            .collect()
    }
}

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

/// How long refill keeps relaying under a route constraint after a request asked for it.
const ROUTE_DEMAND_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// A `kagi_route` extension judged for one request.
#[derive(Debug, Clone)]
struct Routed {
    c: RouteConstraint,
    mandatory: bool,
}

impl KeyManager {
    pub(crate) fn on_app(&mut self, now: Instant, req: ReqId, call: AppCall) {
        let reply = match call {
            AppCall::Status { master, slave } => {
                self.status(now, &master, &slave).map(AppReply::Status)
            }
            AppCall::EncKeys {
                master,
                slave,
                number,
                size_bits,
                additional_slaves,
                route,
            } => {
                match self.enc_keys(
                    now,
                    req,
                    master,
                    slave,
                    number,
                    size_bits,
                    additional_slaves,
                    route,
                ) {
                    Ok(()) => return, // answered later (or already)
                    Err(r) => Err(r),
                }
            }
            AppCall::DecKeys {
                slave,
                master,
                key_ids,
            } => match self.dec_keys(now, req, &slave, &master, key_ids) {
                Ok(()) => return,
                Err(r) => Err(r),
            },
        };
        self.out.answer(req, reply);
    }

    fn sae_node(&self, sae: &str) -> Option<NodeId> {
        self.sae_index.node_id(sae).cloned()
    }

    fn require_local(&self, sae: &str, role: &str) -> Result<(), Refusal> {
        match self.sae_node(sae) {
            Some(n) if n == *self.me() => Ok(()),
            Some(n) => Err(Refusal::Unauthorized(format!(
                "{role} SAE {sae} is attached to KME {n}, not to this KME"
            ))),
            None => Err(Refusal::Unauthorized(format!(
                "SAE {sae} is not known to this network"
            ))),
        }
    }

    /// The priority of `master`'s requests for `slave`, and the bytes of the pool towards
    /// `node` they may not take (its share of the pool's current target, `[quotas.reserve]`).
    fn priority_reserve(
        &self,
        now: Instant,
        master: &str,
        slave: &str,
        node: &NodeId,
    ) -> (crate::quota::Priority, u64) {
        let q = self.quotas.config();
        let p = q.priority_of(master, slave);
        let target = self.demand.target(node, now, &self.cfg.policy);
        (p, q.reserve_bytes(p, target))
    }

    fn status(&self, now: Instant, master: &str, slave: &str) -> Result<StatusInfo, Refusal> {
        self.require_local(master, "master")?;
        let target = self
            .sae_node(slave)
            .ok_or_else(|| bad(format!("unknown slave SAE ID {slave}")))?;
        let l = &self.cfg.limits;
        let unit = (l.key_size / 8).max(1);
        let max_key_count = self.cfg.policy.pool_target_bytes / unit;
        let stored = if target == *self.me() {
            max_key_count
        } else {
            // A refill overshoots a target that is not a whole number of relay chunks; the
            // standard's count of stored keys never exceeds its maximum. Key held back from
            // this master's priority is not counted: it could not be served to it.
            let (_, reserve) = self.priority_reserve(now, master, slave, &target);
            (self.pools.out_free(&target).saturating_sub(reserve) / unit).min(max_key_count)
        };
        Ok(StatusInfo {
            source_kme_id: self.me().to_string(),
            target_kme_id: target.to_string(),
            master_sae_id: master.to_string(),
            slave_sae_id: slave.to_string(),
            key_size: l.key_size,
            stored_key_count: stored,
            max_key_count,
            max_key_per_request: l.max_key_per_request,
            max_key_size: l.max_key_size,
            min_key_size: l.min_key_size,
            max_sae_id_count: l.max_sae_id_count,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn enc_keys(
        &mut self,
        now: Instant,
        req: ReqId,
        master: SaeId,
        slave: SaeId,
        number: Option<u64>,
        size_bits: Option<u64>,
        additional: Vec<SaeId>,
        route: Option<RouteRequest>,
    ) -> Result<(), Refusal> {
        self.require_local(&master, "master")?;
        let shape = self
            .cfg
            .limits
            .check_enc_keys(number, size_bits, additional.len())?;
        let (number, size) = (shape.number, shape.size_bits);
        let mut slaves = vec![slave.clone()];
        for s in additional {
            if slaves.contains(&s) {
                return Err(bad(format!("slave SAE ID {s} is named twice")));
            }
            slaves.push(s);
        }
        if slaves.contains(&master) {
            return Err(bad("the master SAE cannot be its own slave"));
        }
        // Group slaves by the node that serves them; the main slave's node comes first.
        let mut by_node: BTreeMap<NodeId, Vec<SaeId>> = BTreeMap::new();
        let mut order: Vec<NodeId> = Vec::new();
        for s in &slaves {
            let n = self
                .sae_node(s)
                .ok_or_else(|| bad(format!("unknown slave SAE ID {s}")))?;
            if !by_node.contains_key(&n) {
                order.push(n.clone());
            }
            by_node.entry(n).or_default().push(s.clone());
        }
        let bytes = (size / 8) as usize;
        let n = number as usize;
        let primary = order[0].clone();
        let me = self.me().clone();
        // Demand sizes the pools (served or not: a refused request is demand too).
        for (i, node) in order.iter().enumerate() {
            if *node != me {
                let per_key = if i == 0 { bytes } else { bytes + MAC_KEY_LEN };
                let policy = &self.cfg.policy;
                self.demand.note(node, (n * per_key) as u64, now, policy);
            }
        }
        let route = match route {
            Some(r) => Some(self.judge_route(now, &r, &primary, order.len() > 1)?),
            None => None,
        };
        // Check every pool first, so a refusal spends nothing.
        for (i, node) in order.iter().enumerate() {
            if *node == me {
                continue;
            }
            let need = if i == 0 {
                n * bytes
            } else {
                n * (bytes + MAC_KEY_LEN)
            };
            if let Some(Routed {
                c, mandatory: true, ..
            }) = route.as_ref().filter(|_| i == 0)
            {
                let have = self.pools.out_free_where(node, |r| c.admits(r));
                if (have as usize) < need {
                    self.stats.refused_no_key += 1;
                    let now_why = match self.routing.constrained_plan(
                        node,
                        c,
                        self.cfg.policy.routing.for_dest(node),
                    ) {
                        Ok(_) => "relays under them have been started".to_string(),
                        Err(why) => format!("no relay can meet them now: {why}"),
                    };
                    return Err(Refusal::Unavailable(format!(
                        "not enough key relayed under the kagi_route constraints ({}) for slave \
                         KME {node} right now ({have} of {need} bytes ready); {now_why}; retry \
                         shortly",
                        c.describe()
                    )));
                }
            }
            if (self.pools.out_free(node) as usize) < need {
                self.stats.refused_no_key += 1;
                return Err(Refusal::Unavailable(format!(
                    "not enough key material for slave KME {node} right now ({} of {} bytes ready); retry shortly",
                    self.pools.out_free(node),
                    need
                )));
            }
            // Priorities: a request may not take the pool below its priority's reserve, so a
            // flood from low-priority applications leaves key for high-priority ones.
            let (priority, reserve) = self.priority_reserve(now, &master, &slave, node);
            let free = self.pools.out_free(node);
            if free.saturating_sub(need as u64) < reserve {
                self.stats.refused_for_priority += 1;
                let pct = self.quotas.config().reserve.percent(priority);
                return Err(Refusal::Unavailable(format!(
                    "the key pool for slave KME {node} is low ({free} bytes ready) and the \
                     priority of SAE {master} for SAE {slave} ({priority}) may not take it \
                     below {reserve} bytes ({pct} % of its current target, [quotas.reserve] \
                     {priority}_percent): that key is kept for higher-priority applications; \
                     retry shortly"
                )));
            }
            if !self.is_reconciled(node) {
                return Err(Refusal::Unavailable(format!(
                    "this KME has not yet reconciled its state with slave KME {node} since one \
                     of them (re)started; retry shortly"
                )));
            }
        }
        // The master's and its pairs' key rate limits, charged only for a request that is
        // served.
        self.quotas
            .charge(now, &master, &slaves, (n * bytes) as u64)?;
        let mut batch = Vec::new();
        let mut keys = Vec::with_capacity(n);
        let mut per_node: BTreeMap<NodeId, Vec<AssignedKey>> = BTreeMap::new();
        for _ in 0..n {
            let id = self.new_uuid();
            let mut paths = route.as_ref().map(|_| KeyPaths { relays: Vec::new() });
            let key = if primary == me {
                self.fresh_key(bytes)
            } else {
                // Key relayed under the constraints first (only such key when mandatory, as
                // checked above), then any.
                let routed = route.as_ref().and_then(|r| {
                    self.pools
                        .take_out_where(&primary, bytes, |x| r.c.admits(x))
                });
                let (spans, k) = match routed {
                    Some(t) => t,
                    None => self.pools.take_out(&primary, bytes).expect("checked"),
                };
                if let Some(p) = &mut paths {
                    for s in &spans {
                        let r = self.pools.route_of(&primary, s.id).cloned();
                        if !p.relays.contains(&r) {
                            p.relays.push(r);
                        }
                    }
                }
                per_node
                    .entry(primary.clone())
                    .or_default()
                    .push(AssignedKey {
                        id,
                        source: KeySource::Pool(spans),
                    });
                k
            };
            for node in order.iter().skip(1) {
                if *node == me {
                    continue;
                }
                let (spans, mut material) = self
                    .pools
                    .take_out(node, MAC_KEY_LEN + bytes)
                    .expect("checked");
                let mac_key = material.take_front(MAC_KEY_LEN);
                let mut ct = key.clone();
                ct.xor_in_place(material.expose());
                let ct = ct.expose().to_vec();
                let tag = otp_tag(&mac_key, &id, &ct);
                per_node.entry(node.clone()).or_default().push(AssignedKey {
                    id,
                    source: KeySource::Otp {
                        pad: spans,
                        ct,
                        tag,
                    },
                });
            }
            keys.push(DeliveredKey { id, key, paths });
        }
        self.pools.flush_touched(&mut batch);
        let seq = self.supply.next_assign;
        self.supply.next_assign += 1;
        batch.push(Record::Counter {
            name: Counter::Assign,
            next: self.supply.next_assign,
        });
        // Slaves attached to this very node: hold the keys here.
        if let Some(local) = by_node.get(&me) {
            for k in &keys {
                let sk = SlaveKey {
                    master: master.clone(),
                    slaves: local.clone(),
                    pending: local.clone(),
                    origin: me.clone(),
                    assign_seq: seq,
                    key: k.key.clone(),
                    run: self.reconcile.run,
                    graced: Vec::new(),
                };
                batch.push(Record::slave_key(k.id, sk.clone()));
                self.supply.slave_keys.insert(k.id, sk);
            }
            let ids: Vec<Uuid> = keys.iter().map(|k| k.id).collect();
            for id in ids {
                self.start_lifetime(now, id);
            }
        }
        let remote: Vec<NodeId> = order.iter().filter(|n| **n != me).cloned().collect();
        if remote.is_empty() {
            self.stats.keys_served_master += n as u64;
            self.out.store(
                batch,
                vec![After::Act(Action::Answer {
                    req,
                    reply: Ok(AppReply::Keys(keys)),
                })],
            );
            return Ok(());
        }
        let mut msgs = BTreeMap::new();
        let mut after = vec![After::AssignDurable(seq)];
        for node in &remote {
            let msg = PeerMsg::Assign {
                epoch: self.reconcile.epoch,
                seq,
                master: master.clone(),
                slaves: by_node[node].clone(),
                keys: per_node.remove(node).unwrap_or_default(),
            };
            after.push(After::Act(Action::Send {
                to: node.clone(),
                msg: msg.clone(),
            }));
            msgs.insert(node.clone(), msg);
        }
        let p = &self.cfg.policy;
        self.supply.assigns.insert(
            seq,
            MasterAssign {
                req,
                keys,
                nodes: remote.clone(),
                waiting: remote.into_iter().collect(),
                msgs,
                durable: false,
                deadline: now + p.assign_timeout,
                next_retry: now + p.assign_retry,
            },
        );
        self.out.store(batch, after);
        Ok(())
    }

    /// Judges a `kagi_route` extension for key to `dest`: malformed → 400; when mandatory, a
    /// multicast request, or constraints no set of paths on the whole network can meet → 400
    /// with the standard's "could not be met" and why. Refill then relays to `dest` under the
    /// constraints for a while, so key that meets them builds up.
    fn judge_route(
        &mut self,
        now: Instant,
        r: &RouteRequest,
        dest: &NodeId,
        multicast: bool,
    ) -> Result<Routed, Refusal> {
        let c = r
            .check(&self.cfg.topology, self.me(), dest)
            .map_err(Refusal::BadRequest)?;
        if dest == self.me() {
            // Master and slave share this KME: the key never travels.
            return Ok(Routed {
                c,
                mandatory: r.mandatory,
            });
        }
        if r.mandatory && multicast {
            return Err(Refusal::unmet(
                "kagi_route constrains the key's route to one slave KME; it cannot be combined \
                 with additional_slave_SAE_IDs on other KMEs",
            ));
        }
        match self.routing.feasible(dest, &c) {
            Err(why) if r.mandatory => return Err(Refusal::unmet(why)),
            Err(_) => {} // optional: honoured where possible
            Ok(()) => self.routing.note_demand(dest, &c, now + ROUTE_DEMAND_HOLD),
        }
        Ok(Routed {
            c,
            mandatory: r.mandatory,
        })
    }

    fn dec_keys(
        &mut self,
        now: Instant,
        req: ReqId,
        slave: &str,
        master: &str,
        ids: Vec<Uuid>,
    ) -> Result<(), Refusal> {
        self.require_local(slave, "slave")?;
        if self.sae_node(master).is_none() {
            return Err(bad(format!("unknown master SAE ID {master}")));
        }
        self.cfg.limits.check_key_ids(ids.len())?;
        let unique: BTreeSet<&Uuid> = ids.iter().collect();
        if unique.len() != ids.len() {
            return Err(bad("a key ID is repeated in the request"));
        }
        // Unknown → 400; not a named slave of the key, or the wrong master → 401; a named slave
        // that already fetched it and whose grace ended → 400 (the key is gone for that slave).
        if ids
            .iter()
            .any(|id| !self.supply.slave_keys.contains_key(id))
        {
            return Err(bad(Refusal::KEYS_NOT_FOUND));
        }
        if ids.iter().any(|id| {
            let k = &self.supply.slave_keys[id];
            k.master != master || !k.slaves.iter().any(|s| s == slave)
        }) {
            return Err(Refusal::Unauthorized(
                "the caller is not a slave of one or more of these keys for this master".into(),
            ));
        }
        if ids.iter().any(|id| {
            let k = &self.supply.slave_keys[id];
            !k.pending.iter().any(|s| s == slave) && !k.graced.iter().any(|s| s == slave)
        }) {
            return Err(bad(Refusal::KEYS_NOT_FOUND));
        }
        let peers = self.cfg.topology.nodes.len().saturating_sub(1);
        if ids.iter().any(|id| self.reconcile.is_unproven(id, peers)) {
            self.stats.refused_unreconciled += 1;
            return Err(Refusal::Unavailable(
                "this KME restarted and has not yet reconciled its state with every other KME: \
                 keys it held from before the restart are served once it has; retry shortly"
                    .into(),
            ));
        }
        let mut batch = Vec::new();
        let mut out = Vec::with_capacity(ids.len());
        let mut first = 0;
        for id in ids {
            let k = &self.supply.slave_keys[&id];
            out.push(DeliveredKey {
                id,
                key: k.key.clone(),
                paths: None,
            });
            if !k.pending.iter().any(|s| s == slave) {
                // Fetched before, within this slave's grace: the same bytes again, nothing
                // changes.
                continue;
            }
            first += 1;
            let graced = self.start_grace(now, id, slave);
            let k = self.supply.slave_keys.get_mut(&id).expect("checked");
            k.pending.retain(|s| s != slave);
            if graced {
                k.graced.push(slave.to_string());
            }
            if k.pending.is_empty() && k.graced.is_empty() {
                self.supply.slave_keys.remove(&id);
                batch.push(Record::SlaveKeyGone { id });
            } else {
                batch.push(Record::slave_key(id, k.clone()));
            }
        }
        self.stats.keys_served_slave += first;
        self.stats.slave_refetches += out.len() as u64 - first;
        let answer = After::Act(Action::Answer {
            req,
            reply: Ok(AppReply::Keys(out)),
        });
        if batch.is_empty() {
            // Only keys fetched before: answer once the write that delivered them (or any
            // earlier one still in flight) is durable, never ahead of it.
            self.out.hold_after(self.out.peek_write() - 1, answer);
        } else {
            self.out.store(batch, vec![answer]);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_assign(
        &mut self,
        now: Instant,
        origin: NodeId,
        epoch: u64,
        seq: u64,
        master: SaeId,
        slaves: Vec<SaeId>,
        keys: Vec<AssignedKey>,
    ) {
        let ack_ok = |ok| Action::Send {
            to: origin.clone(),
            msg: PeerMsg::AssignAck { seq, ok },
        };
        if !self.reconcile.is_current(&origin, epoch) {
            // From an earlier run of the origin (its counter may be reused), or before its
            // `Hello` reached this run: no answer (the origin times it out), but tell the
            // origin which of its runs this node takes for current.
            self.stale_from(&origin);
            return;
        }
        if self.revokes.was_revoked(&origin, seq) {
            // A retransmission that crossed the origin's revoke: the assignment is over.
            self.out.push(ack_ok(false));
            return;
        }
        if let Some(state) = self.supply.applied_assigns.get(&(origin.clone(), seq)) {
            // A retransmission: acknowledge once the original is durable.
            match *state {
                None => self.out.push(ack_ok(true)),
                Some(w) => self.out.hold_after(w, After::Act(ack_ok(true))),
            }
            return;
        }
        let me = self.me().clone();
        let valid = !keys.is_empty()
            && !slaves.is_empty()
            && self.sae_node(&master).is_some_and(|n| n == origin)
            && slaves
                .iter()
                .all(|s| self.sae_node(s).as_deref() == Some(me.as_str()))
            && keys
                .iter()
                .all(|k| !self.supply.slave_keys.contains_key(&k.id));
        if !valid {
            self.out.push(ack_ok(false));
            return;
        }
        let missing = self.pools.in_missing(
            &origin,
            keys.iter().flat_map(|k| match &k.source {
                KeySource::Pool(spans) => spans.iter(),
                KeySource::Otp { pad, .. } => pad.iter(),
            }),
        );
        if !missing.is_empty() {
            // Key the origin relayed here that this store no longer holds (lost or restored from
            // an older copy): tell it to drop those chunks, or it would offer them again and
            // again. Nothing is spent here.
            self.stats.pool_chunks_missing += missing.len() as u64;
            self.out
                .send(origin.clone(), PeerMsg::PoolMissing { chunks: missing });
            self.out.push(ack_ok(false));
            return;
        }
        let mut batch = Vec::new();
        let mut got: Vec<(Uuid, Key)> = Vec::new();
        for k in &keys {
            let key = match &k.source {
                KeySource::Pool(spans) => self.pools.take_in(&origin, spans),
                KeySource::Otp { pad, ct, tag } => {
                    let total: u64 = pad.iter().map(|s| u64::from(s.len)).sum();
                    if total != (MAC_KEY_LEN + ct.len()) as u64 {
                        None
                    } else {
                        self.pools.take_in(&origin, pad).and_then(|mut m| {
                            let mac_key = m.take_front(MAC_KEY_LEN);
                            if !otp_tag(&mac_key, &k.id, ct).ct_eq(tag) {
                                self.stats.bad_tags += 1;
                                return None;
                            }
                            let mut key = Key::from_slice(ct);
                            key.xor_in_place(m.expose());
                            Some(key)
                        })
                    }
                }
            };
            match key {
                Some(key) => got.push((k.id, key)),
                None => {
                    // Whatever was spent stays spent; the assignment is refused as a whole.
                    self.pools.flush_touched(&mut batch);
                    if !batch.is_empty() {
                        self.out.store(batch, vec![After::Act(ack_ok(false))]);
                    } else {
                        self.out.push(ack_ok(false));
                    }
                    return;
                }
            }
        }
        for (id, key) in got {
            let sk = SlaveKey {
                master: master.clone(),
                slaves: slaves.clone(),
                pending: slaves.clone(),
                origin: origin.clone(),
                assign_seq: seq,
                key,
                run: self.reconcile.run,
                graced: Vec::new(),
            };
            batch.push(Record::slave_key(id, sk.clone()));
            self.supply.slave_keys.insert(id, sk);
            self.start_lifetime(now, id);
        }
        self.pools.flush_touched(&mut batch);
        self.saw_assign(&origin, seq, &mut batch);
        let next_w = self.out.peek_write();
        let kept = self.cfg.policy.assign_timeout * APPLIED_KEPT_ASSIGN_TIMEOUTS;
        self.supply.forget_applied(now, kept);
        self.supply
            .note_applied(now, origin.clone(), seq, Some(next_w));
        self.out.store(
            batch,
            vec![
                After::SlaveAssignDurable(origin.clone(), seq),
                After::Act(ack_ok(true)),
            ],
        );
    }

    pub(crate) fn on_assign_ack(&mut self, from: NodeId, seq: u64, ok: bool) {
        let Some(a) = self.supply.assigns.get_mut(&seq) else {
            return;
        };
        if !a.waiting.contains(&from) || !a.durable {
            return;
        }
        if !ok {
            self.fail_assign(seq, format!("slave KME {from} refused the keys; retry"));
            return;
        }
        a.waiting.remove(&from);
        if a.waiting.is_empty() {
            let a = self.supply.assigns.remove(&seq).expect("present");
            self.stats.keys_served_master += a.keys.len() as u64;
            // Every slave node holds the keys durably and this node's spend is durable: the
            // master may have them. At this node the keys exist only in the answer. No record
            // marks the assignment open until then: a store restored from a copy taken before
            // this answer could not tell it from one never answered, and revoking it after a
            // restart lost keys the master had (chaos seeds 954 and 3380); an assignment a
            // crash left unanswered is an orphan that the slave key's lifetime ends.
            self.out.answer(a.req, Ok(AppReply::Keys(a.keys)));
        }
    }

    pub(crate) fn fail_assign(&mut self, seq: u64, why: String) {
        let Some(a) = self.supply.assigns.remove(&seq) else {
            return;
        };
        self.start_revoke(seq, &a.nodes);
        // Local slave copies of these keys go too.
        let ids: Vec<Uuid> = a.keys.iter().map(|k| k.id).collect();
        let mut batch = Vec::new();
        for id in ids {
            if self.supply.slave_keys.remove(&id).is_some() {
                batch.push(Record::SlaveKeyGone { id });
            }
        }
        if !batch.is_empty() {
            self.out.store(batch, vec![]);
        }
        self.out.answer(a.req, Err(Refusal::Unavailable(why)));
    }

    /// `from` lacks these chunks of our out-pool for it: drop them (see [`PeerMsg::PoolMissing`]).
    pub(crate) fn on_pool_missing(&mut self, from: NodeId, chunks: Vec<u64>) {
        let mut batch = Vec::new();
        self.stats.pool_key_discarded += self.pools.drop_missing_out(&from, &chunks, &mut batch);
        if !batch.is_empty() {
            self.out.store(batch, vec![]);
        }
    }

    pub(crate) fn expire_assigns(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .supply
            .assigns
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            self.fail_assign(
                seq,
                "a slave KME did not confirm the keys in time; retry".into(),
            );
        }
        let retry = self.cfg.policy.assign_retry;
        let mut resend = Vec::new();
        for a in self.supply.assigns.values_mut() {
            if a.durable && a.next_retry <= now {
                a.next_retry = now + retry;
                for n in &a.waiting {
                    resend.push((n.clone(), a.msgs[n].clone()));
                }
            }
        }
        for (to, msg) in resend {
            self.out.send(to, msg);
        }
    }
}

#[cfg(test)]
mod tests {

    use kagi_control::Topology;
    use kagi_keymat::Key;

    use super::*;
    use crate::config::{KmConfig, Policy};
    use crate::quota::{Priority, QuotaConfig, SaeLimit};
    use crate::record::Snapshot;

    /// A slave node forgets applied assignments once they are durable and older than the
    /// window, oldest first; one not yet durable holds back every later one.
    #[test]
    fn applied_assignments_are_forgotten_after_the_window() {
        let kept = std::time::Duration::from_secs(60);
        let at = |s: u64| Instant(s * 1_000_000_000);
        let mut sup = Supply::default();
        sup.note_applied(at(0), "a".into(), 1, None);
        sup.note_applied(at(10), "a".into(), 2, Some(7));
        sup.note_applied(at(20), "b".into(), 1, None);
        sup.forget_applied(at(59), kept);
        assert_eq!(sup.applied_assigns.len(), 3, "nothing is old enough");
        sup.forget_applied(at(85), kept);
        // ("a", 1) went; ("a", 2) is not durable yet and keeps ("b", 1) with it.
        assert_eq!(sup.applied_assigns.len(), 2);
        assert!(!sup.applied_assigns.contains_key(&(NodeId::from("a"), 1)));
        sup.slave_assign_durable("a".into(), 2);
        sup.forget_applied(at(85), kept);
        assert!(sup.applied_assigns.is_empty());
        assert!(sup.applied_order.is_empty());
        // A long run keeps only the last window's worth.
        for s in 0..10_000u64 {
            sup.forget_applied(at(s), kept);
            sup.note_applied(at(s), "c".into(), s, None);
        }
        assert_eq!(sup.applied_assigns.len(), 60);
    }

    /// Node a (SAEs `hi`, `lo`, `plain`) with 4096 bytes of key ready for node b (`sae-b`),
    /// whose pool target is 4096 bytes.
    fn node_a() -> KeyManager {
        let topo = Topology::line("prio", &["a", "b"], 10.0, |n| {
            if n == "a" {
                vec!["hi".into(), "lo".into(), "plain".into()]
            } else {
                vec!["sae-b".into()]
            }
        });
        let mut quotas = QuotaConfig::default();
        for (sae, p) in [("hi", Priority::High), ("lo", Priority::Low)] {
            quotas.sae.insert(
                sae.into(),
                SaeLimit {
                    priority: Some(p),
                    ..SaeLimit::default()
                },
            );
        }
        let cfg = KmConfig::for_test(
            "a",
            topo,
            Policy {
                pool_target_bytes: 4096,
                idle_floor_bytes: 4096,
                quotas,
                ..Policy::default()
            },
        );
        let mut km = KeyManager::restore(cfg, Snapshot::default(), [7; 32], Instant(0));
        km.pools
            .add_out(&NodeId::from("b"), 1, Key::from_slice(&[9; 4096]), None);
        km.reconcile.mark_reconciled(&NodeId::from("b"));
        km
    }

    /// Asks for 8 keys of 256 bits (256 bytes) as `master`.
    fn ask(km: &mut KeyManager, req: ReqId, master: &str) -> Result<(), Refusal> {
        let (m, s) = (master.to_string(), "sae-b".to_string());
        km.enc_keys(Instant(1), req, m, s, Some(8), Some(256), vec![], None)
    }

    fn stored(km: &KeyManager, master: &str) -> u64 {
        km.status(Instant(1), master, "sae-b")
            .unwrap()
            .stored_key_count
    }

    /// A low-priority flood stops at its reserve (a quarter of the pool's target by default),
    /// which a high-priority SAE then gets; ETSI status shows each what it may take.
    #[test]
    fn a_low_priority_flood_leaves_the_reserve_to_high_priority() {
        let mut km = node_a();
        assert_eq!((stored(&km, "hi"), stored(&km, "lo")), (128, 96));
        let mut lo_served = 0;
        let refusal = loop {
            match ask(&mut km, lo_served, "lo") {
                Ok(()) => lo_served += 1,
                Err(r) => break r,
            }
        };
        assert_eq!(lo_served, 12, "lo may take 3072 of 4096 bytes");
        assert_eq!(refusal.http_status(), 503);
        let m = refusal.message();
        assert!(
            m.contains("SAE lo") && m.contains("(low)") && m.contains("1024 bytes"),
            "{m}"
        );
        assert_eq!(km.pools.out_free(&NodeId::from("b")), 1024);
        assert_eq!(km.stats.refused_for_priority, 1);
        assert_eq!((stored(&km, "hi"), stored(&km, "lo")), (32, 0));
        // The refusal charged nothing and spent nothing; high takes the reserve down to empty.
        for req in 100..104 {
            ask(&mut km, req, "hi").unwrap();
        }
        assert_eq!(km.pools.out_free(&NodeId::from("b")), 0);
        let r = ask(&mut km, 200, "hi").unwrap_err();
        assert!(r.message().contains("not enough key"), "{}", r.message());
    }

    /// `normal` (an SAE without an entry) keeps `normal_percent` back for `high`.
    #[test]
    fn normal_keeps_its_reserve_when_one_is_configured() {
        let mut km = node_a();
        let mut q = km.quotas.config().clone();
        q.reserve.normal_percent = 50;
        q.reserve.low_percent = 75;
        km.set_quotas(q).unwrap();
        let served = (0..100)
            .take_while(|r| ask(&mut km, *r, "plain").is_ok())
            .count();
        assert_eq!(served, 8, "plain may take 2048 of 4096 bytes");
        assert!(ask(&mut km, 300, "lo").is_err());
        assert!(ask(&mut km, 301, "hi").is_ok());
    }
}
