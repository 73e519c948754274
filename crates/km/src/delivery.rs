//! Delivery windows: a key held for slaves between the `dec_keys` that delivers it and its
//! erasure.
//!
//! The core answers `dec_keys` only once the delivery is durable, so a reply that never reaches
//! the slave (its client gave up, the connection broke, the node crashed between the commit and
//! the reply) would otherwise leave the key delivered to nobody. Each slave that fetched a key
//! keeps a grace ([`Policy::slave_grace`](crate::Policy::slave_grace)): within it, the same SAE
//! may fetch the same key IDs again and gets the same bytes; any other SAE is refused as before.
//! The key is erased once the grace of every slave that fetched it has ended. The slaves in
//! their grace are persisted with the key ([`Record::GracedSlaveKey`]); monotonic time is not,
//! so a restart counts each grace again from the start (a crash between commit and reply then
//! still leaves the slave a whole grace after the node is back).
//!
//! A key that some slave never fetches (an orphan: its master's node crashed mid-assignment and
//! its revoke never arrived, or the slave application never came) is erased for those slaves
//! after [`Policy::slave_key_lifetime`](crate::Policy::slave_key_lifetime), counted per origin
//! node; the lifetime too counts again from each start.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::app::SaeId;
use crate::deadline_queue::DeadlineQueue;
use crate::manager::KeyManager;
use crate::msgs::NodeId;
use crate::record::Record;
use crate::time::Instant;

/// When each slave's grace ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Delivery {
    /// `(end, key, slave)`, earliest first. Entries whose key or slave went otherwise (revoked,
    /// discarded) are skipped when they come due.
    graces: DeadlineQueue<(Instant, Uuid, SaeId)>,
    /// `(end, key)` of each key held for slaves, earliest first.
    lifetimes: DeadlineQueue<(Instant, Uuid)>,
    /// Keys expired unfetched, per node that assigned them (since the core started).
    pub(crate) expired_from: BTreeMap<NodeId, u64>,
}

impl Delivery {
    /// The earliest end of a grace or lifetime, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let g = self.graces.first().map(|(t, _, _)| *t);
        let l = self.lifetimes.first().map(|(t, _)| *t);
        match (g, l) {
            (Some(g), Some(l)) => Some(g.min(l)),
            (g, l) => g.or(l),
        }
    }
}

impl KeyManager {
    /// `slave` just fetched key `id` for the first time: it may fetch it again until its grace
    /// ends. Returns false (nothing to keep) when the grace is zero.
    pub(crate) fn start_grace(&mut self, now: Instant, id: Uuid, slave: &str) -> bool {
        let grace = self.cfg.policy.slave_grace;
        if grace.is_zero() {
            return false;
        }
        self.delivery
            .graces
            .insert((now + grace, id, slave.to_string()));
        true
    }

    /// A key for slaves here was just stored: it expires for the slaves that have not fetched
    /// it by the end of its lifetime (if the lifetime is not zero).
    pub(crate) fn start_lifetime(&mut self, now: Instant, id: Uuid) {
        let life = self.cfg.policy.slave_key_lifetime;
        if !life.is_zero() {
            self.delivery.lifetimes.insert((now + life, id));
        }
    }

    /// At start: every slave restored in its grace gets a whole grace from now, and every key
    /// still owed to a slave a whole lifetime.
    pub(crate) fn restart_windows(&mut self, now: Instant) {
        let mut owed: Vec<Uuid> = self
            .supply
            .slave_keys
            .iter()
            .filter(|(_, k)| !k.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        // In order, so that each goes to the back of the deadline queue.
        owed.sort_unstable();
        for id in owed {
            self.start_lifetime(now, id);
        }
        let end = now + self.cfg.policy.slave_grace;
        let mut graced: Vec<(Uuid, SaeId)> = self
            .supply
            .slave_keys
            .iter()
            .flat_map(|(id, k)| k.graced.iter().map(move |s| (*id, s.clone())))
            .collect();
        graced.sort_unstable();
        for (id, s) in graced {
            self.delivery.graces.insert((end, id, s));
        }
    }

    /// Ends the graces due by `now`; erases keys no slave may fetch any more.
    pub(crate) fn end_graces(&mut self, now: Instant) {
        let mut batch = Vec::new();
        while let Some((t, _, _)) = self.delivery.graces.first() {
            if *t > now {
                break;
            }
            let (_, id, slave) = self.delivery.graces.pop_first().expect("present");
            let Some(k) = self.supply.slave_keys.get_mut(&id) else {
                continue;
            };
            let before = k.graced.len();
            k.graced.retain(|s| *s != slave);
            if k.graced.len() == before {
                continue;
            }
            if k.pending.is_empty() && k.graced.is_empty() {
                self.supply.slave_keys.remove(&id);
                self.stats.graces_ended += 1;
                batch.push(Record::SlaveKeyGone { id });
            } else {
                batch.push(Record::slave_key(id, k.clone()));
            }
        }
        if !batch.is_empty() {
            self.out.store(batch, vec![]);
        }
    }

    /// Erases, for the slaves that never fetched them, the keys whose lifetime ended by `now`.
    pub(crate) fn expire_slave_keys(&mut self, now: Instant) {
        let mut batch = Vec::new();
        while let Some((t, _)) = self.delivery.lifetimes.first() {
            if *t > now {
                break;
            }
            let (_, id) = self.delivery.lifetimes.pop_first().expect("present");
            let Some(k) = self.supply.slave_keys.get_mut(&id) else {
                continue;
            };
            if k.pending.is_empty() {
                continue;
            }
            k.pending.clear();
            self.stats.slave_keys_expired += 1;
            *self
                .delivery
                .expired_from
                .entry(k.origin.clone())
                .or_default() += 1;
            tracing::debug!(origin = %k.origin, master = %k.master, "a key held for slaves expired unfetched");
            if k.graced.is_empty() {
                self.supply.slave_keys.remove(&id);
                batch.push(Record::SlaveKeyGone { id });
            } else {
                batch.push(Record::slave_key(id, k.clone()));
            }
        }
        if !batch.is_empty() {
            self.out.store(batch, vec![]);
        }
    }
}
