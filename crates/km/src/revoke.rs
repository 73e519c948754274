//! Revocations retried until acknowledged, and open assignments resolved after a restart
//! (issue 10, item 6).
//!
//! An assignment is *open* from the batch that spends its key (which also writes its
//! [`Record::OpenAssign`], before any `Assign` goes) until its master is answered (the record is
//! deleted durably first) or, once the origin gave it up, until every slave node acknowledged
//! its revoke. The keys of an open assignment at a slave node are orphans: their master never
//! got them. So:
//!
//! * An assignment given up (a slave node refused or timed out, a node lost its database) is
//!   revoked at every slave node: [`PeerMsg::Revoke`] at once, again with doubling back-off up
//!   to [`MAX_REVOKE_BACKOFF`], and at once when a slave node answers this run's `Hello` (it came
//!   back or reconnected), until that node answers [`PeerMsg::RevokeAck`].
//! * A start that finds open assignments of an earlier run revokes them the same way: the
//!   master was never answered. They go only once every other node has answered this run's
//!   `Hello` without proving this store older than what it said: a store restored from a copy
//!   may still hold the record of an assignment answered after the copy was taken, whose keys
//!   must stay (a detected rollback drops these revocations).
//! * A slave node acknowledges a revoke once nothing of the assignment is left in its store, also
//!   when it never applied it, and refuses a later `Assign` with that counter (a retransmission
//!   that crossed the revoke).
//! * At most [`MAX_OPEN_REVOKES`] revocations are kept; beyond that the oldest is given up
//!   (counted): the slave key's lifetime (`slave_key_lifetime`) still ends such orphans.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use uuid::Uuid;

use crate::manager::KeyManager;
use crate::msgs::{NodeId, PeerMsg};
use crate::outbox::{Action, After};
use crate::record::Record;
use crate::time::Instant;

/// Longest wait between two revokes of one assignment to a node that does not answer.
pub const MAX_REVOKE_BACKOFF: Duration = Duration::from_secs(30);

/// Most revocations waiting for acknowledgement at once (each holds one small record).
pub const MAX_OPEN_REVOKES: usize = 4096;

/// Most revoked assignments a slave node remembers, to refuse their late `Assign`s.
const MAX_REVOKED_HERE: usize = 4096;

/// One assignment being revoked.
#[derive(Debug, Clone)]
pub(crate) struct Revoking {
    /// Slave nodes that have not acknowledged.
    nodes: BTreeSet<NodeId>,
    /// Found open at start (from an earlier run): waits until every node answered `Hello`.
    restored: bool,
    /// Next re-send.
    next: Instant,
    /// Wait after the next re-send.
    backoff: Duration,
}

/// Revocation state: as origin (open revocations) and as slave node (revoked assignments).
#[derive(Debug, Clone, Default)]
pub(crate) struct Revokes {
    open: BTreeMap<u64, Revoking>,
    /// `(origin, seq)` of assignments revoked here, oldest dropped first beyond the bound.
    revoked_here: BTreeSet<(NodeId, u64)>,
    revoked_order: std::collections::VecDeque<(NodeId, u64)>,
}

impl Revokes {
    /// The earliest re-send due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|r| r.next).min()
    }

    /// Whether the assignment `(origin, seq)` was revoked here.
    pub(crate) fn was_revoked(&self, origin: &str, seq: u64) -> bool {
        self.revoked_here.contains(&(origin.to_string(), seq))
    }

    /// Assignments being revoked (for status and tests).
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }
}

impl KeyManager {
    /// An open assignment found in the store at start: revoke it at `nodes` once every node
    /// answered this run's `Hello`.
    pub(crate) fn restore_open_assign(&mut self, now: Instant, seq: u64, nodes: Vec<NodeId>) {
        let backoff = self.cfg.policy.assign_retry;
        self.revokes.open.insert(
            seq,
            Revoking {
                nodes: nodes.into_iter().collect(),
                restored: true,
                next: now + backoff,
                backoff,
            },
        );
    }

    /// The assignment `seq` (open, its record written) was given up: revoke it at `nodes` now
    /// and until each acknowledges.
    pub(crate) fn start_revoke(&mut self, seq: u64, nodes: &[NodeId]) {
        for n in nodes {
            self.out.send(n.clone(), PeerMsg::Revoke { seq });
        }
        let backoff = self.cfg.policy.assign_retry;
        self.revokes.open.insert(
            seq,
            Revoking {
                nodes: nodes.iter().cloned().collect(),
                restored: false,
                next: self.now + backoff,
                backoff,
            },
        );
        if self.revokes.open.len() > MAX_OPEN_REVOKES {
            if let Some((old, _)) = self.revokes.open.pop_first() {
                self.stats.revokes_given_up += 1;
                self.out
                    .store(vec![Record::OpenAssignGone { seq: old }], vec![]);
            }
        }
    }

    fn all_reconciled(&self) -> bool {
        self.other_nodes()
            .iter()
            .all(|n| self.reconcile.is_reconciled(n))
    }

    /// Re-sends every revoke that is due, with doubling back-off.
    pub(crate) fn retry_revokes(&mut self, now: Instant) {
        // Asked only when a restored revoke is due: it visits every node of the topology, and
        // this runs on every timer tick.
        let due_restored = self
            .revokes
            .open
            .values()
            .any(|r| r.restored && r.next <= now);
        let ready = due_restored && self.all_reconciled();
        let mut sends = Vec::new();
        for (seq, r) in self.revokes.open.iter_mut() {
            if r.next > now {
                continue;
            }
            if !r.restored || ready {
                sends.extend(r.nodes.iter().map(|n| (n.clone(), *seq)));
                r.backoff = (r.backoff * 2).min(MAX_REVOKE_BACKOFF);
            }
            r.next = now + r.backoff;
        }
        self.stats.revokes_resent += sends.len() as u64;
        for (to, seq) in sends {
            self.out.send(to, PeerMsg::Revoke { seq });
        }
    }

    /// `peer` answered this run's `Hello` (it started, or its channel came back): send it every
    /// revoke it owes an answer to at once, and, once every node has answered, the revokes found
    /// open at start.
    pub(crate) fn revokes_on_reconciled(&mut self, peer: &str) {
        let ready = self.all_reconciled();
        let mut sends = Vec::new();
        for (seq, r) in &self.revokes.open {
            if r.restored && !ready {
                continue;
            }
            if r.restored {
                sends.extend(r.nodes.iter().map(|n| (n.clone(), *seq)));
            } else if r.nodes.contains(peer) {
                sends.push((peer.to_string(), *seq));
            }
        }
        for (to, seq) in sends {
            self.out.send(to, PeerMsg::Revoke { seq });
        }
    }

    /// This store was found older than what it said (restored from a copy): its open
    /// assignments from before may have been answered after the copy, so they are not revoked.
    pub(crate) fn drop_restored_revokes(&mut self, batch: &mut Vec<Record>) {
        let old: Vec<u64> = self
            .revokes
            .open
            .iter()
            .filter(|(_, r)| r.restored)
            .map(|(s, _)| *s)
            .collect();
        for seq in old {
            self.revokes.open.remove(&seq);
            batch.push(Record::OpenAssignGone { seq });
        }
    }

    /// `from` holds nothing of assignment `seq` any more.
    pub(crate) fn on_revoke_ack(&mut self, from: NodeId, seq: u64) {
        let Some(r) = self.revokes.open.get_mut(&seq) else {
            return;
        };
        if !r.nodes.remove(&from) || !r.nodes.is_empty() {
            return;
        }
        self.revokes.open.remove(&seq);
        self.out.store(vec![Record::OpenAssignGone { seq }], vec![]);
    }

    /// As a slave node: the origin gave up on assignment `seq`; drop its keys and acknowledge
    /// once that is durable (at once if nothing of it is here, after any write in flight).
    pub(crate) fn on_revoke(&mut self, origin: NodeId, seq: u64) {
        let key = (origin.clone(), seq);
        if self.revokes.revoked_here.insert(key.clone()) {
            self.revokes.revoked_order.push_back(key);
            if self.revokes.revoked_order.len() > MAX_REVOKED_HERE {
                if let Some(old) = self.revokes.revoked_order.pop_front() {
                    self.revokes.revoked_here.remove(&old);
                }
            }
        }
        let ids: Vec<Uuid> = self
            .supply
            .slave_keys
            .iter()
            .filter(|(_, k)| k.origin == origin && k.assign_seq == seq)
            .map(|(id, _)| *id)
            .collect();
        let ack = After::Act(Action::Send {
            to: origin,
            msg: PeerMsg::RevokeAck { seq },
        });
        if ids.is_empty() {
            self.out.hold_after(self.out.peek_write() - 1, ack);
            return;
        }
        let mut batch = Vec::new();
        for id in ids {
            self.supply.slave_keys.remove(&id);
            self.stats.slave_keys_revoked += 1;
            batch.push(Record::SlaveKeyGone { id });
        }
        self.out.store(batch, vec![ack]);
    }

    /// Assignments this node is revoking and waiting on (for status and tests).
    pub fn revokes_open(&self) -> usize {
        self.revokes.open_count()
    }

    /// Keys held here for slaves now (for status and tests).
    pub fn slave_keys_held(&self) -> usize {
        self.supply.slave_keys.len()
    }
}
