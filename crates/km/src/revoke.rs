//! Revocations retried until acknowledged, also across restarts, and what a restart does with
//! assignments it may have left unanswered (issue 10, item 6).
//!
//! An assignment given up by its origin (a slave node refused or timed out, a node lost its
//! database) was answered to its master with a refusal: the keys its slave nodes applied are
//! orphans. So:
//!
//! * It is revoked at every slave node: a durable [`Record::OpenAssign`] first, then
//!   [`PeerMsg::Revoke`], again with doubling back-off up to [`MAX_REVOKE_BACKOFF`], and at once
//!   when a slave node answers this run's `Hello` (it came back or reconnected), until that node
//!   answers [`PeerMsg::RevokeAck`]; then the record goes.
//! * A start that finds such a record revokes the same way. Even a store restored from an
//!   older copy may: the original gave the assignment up too, and a given-up assignment is
//!   never answered with keys.
//! * An assignment whose master's node stopped before answering is *not* revoked at the next
//!   start. Nothing tells that store from a copy taken between the slaves' acknowledgements and
//!   the answer, whose original did answer: no peer saw anything of the original after the copy
//!   (chaos seeds 954 and 3380). Its orphans end with the slave key's lifetime
//!   (`slave_key_lifetime`), and a slave SAE that holds their IDs (its master was answered)
//!   still gets them until then.
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
    pub(crate) fn was_revoked(&self, origin: &NodeId, seq: u64) -> bool {
        self.revoked_here.contains(&(origin.clone(), seq))
    }

    /// Assignments being revoked (for status and tests).
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }
}

impl KeyManager {
    /// A revocation found in the store at start (an assignment given up by an earlier run):
    /// go on revoking it at `nodes`, to each when it answers this run's `Hello`, and on the
    /// back-off.
    pub(crate) fn restore_open_assign(&mut self, now: Instant, seq: u64, nodes: Vec<NodeId>) {
        let backoff = self.cfg.policy.assign_retry;
        self.revokes.open.insert(
            seq,
            Revoking {
                nodes: nodes.into_iter().collect(),
                next: now + backoff,
                backoff,
            },
        );
    }

    /// The assignment `seq` was given up (its master answered with a refusal): revoke it at
    /// `nodes` once the revocation is durable, and until each acknowledges.
    pub(crate) fn start_revoke(&mut self, seq: u64, nodes: &[NodeId]) {
        let sends = nodes
            .iter()
            .map(|n| {
                After::Act(Action::Send {
                    to: n.clone(),
                    msg: PeerMsg::Revoke { seq },
                })
            })
            .collect();
        self.out.store(
            vec![Record::OpenAssign {
                seq,
                nodes: nodes.to_vec(),
            }],
            sends,
        );
        let backoff = self.cfg.policy.assign_retry;
        self.revokes.open.insert(
            seq,
            Revoking {
                nodes: nodes.iter().cloned().collect(),
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

    /// Re-sends every revoke that is due, with doubling back-off.
    pub(crate) fn retry_revokes(&mut self, now: Instant) {
        let mut sends = Vec::new();
        for (seq, r) in self.revokes.open.iter_mut() {
            if r.next > now {
                continue;
            }
            sends.extend(r.nodes.iter().map(|n| (n.clone(), *seq)));
            r.backoff = (r.backoff * 2).min(MAX_REVOKE_BACKOFF);
            r.next = now + r.backoff;
        }
        self.stats.revokes_resent += sends.len() as u64;
        for (to, seq) in sends {
            self.out.send(to, PeerMsg::Revoke { seq });
        }
    }

    /// `peer` answered this run's `Hello` (it started, or its channel came back): send it every
    /// revoke it owes an answer to at once.
    pub(crate) fn revokes_on_reconciled(&mut self, peer: &NodeId) {
        let seqs: Vec<u64> = self
            .revokes
            .open
            .iter()
            .filter(|(_, r)| r.nodes.contains(peer))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            self.out.send(peer.clone(), PeerMsg::Revoke { seq });
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
        let mut ids: Vec<Uuid> = self
            .supply
            .slave_keys
            .iter()
            .filter(|(_, k)| k.origin == origin && k.assign_seq == seq)
            .map(|(id, _)| *id)
            .collect();
        // The records that erase them are written in order of ID.
        ids.sort_unstable();
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
