//! The safety oracle: watches every answer the applications get and checks the key invariants.
//!
//! * A key ID always carries the same bytes, wherever and to whoever it is served (so a master
//!   and each of its slaves get identical bytes).
//! * A key is served at most once to its master and at most once to each slave.
//! * Two different key IDs never carry the same bytes (a one-time pad spent twice).
//! * Every key answered to a master stays fetchable by each of its slaves until that slave
//!   fetched it ([`Oracle::unfetched`], checked at the end of a run). A slave whose `dec_keys`
//!   reply was lost (with its crashed node) may fetch the same keys again within the grace
//!   ([`Policy::slave_grace`](kagi_km::Policy::slave_grace)); only once the grace may have
//!   ended is "not found" allowed for it ([`Oracle::may_be_gone`], counted in
//!   [`Oracle::grace_lost`]). Keys lost with a wiped or restored database are allowed and
//!   counted too; any other refusal is a lost key.
//!
//! A violation panics with the seed, so the failing run can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kagi_keymat::Key;
use kagi_km::{AppReply, Instant, NodeId, Refusal, SaeId};
use uuid::Uuid;

/// What an application asked, as far as the oracle cares.
#[derive(Debug, Clone)]
pub enum Asked {
    /// `enc_keys` by `master` for `slaves` (each with the node that serves it).
    Enc {
        /// The master SAE.
        master: SaeId,
        /// Every slave with its node.
        slaves: Vec<(SaeId, NodeId)>,
    },
    /// `dec_keys` by `slave` for these IDs.
    Dec {
        /// The slave SAE.
        slave: SaeId,
        /// The key IDs asked for.
        ids: Vec<Uuid>,
    },
    /// Anything else (status).
    Other,
}

struct Served {
    key: Key,
    master: u32,
    slaves: BTreeMap<SaeId, u32>,
}

/// Tracks served keys across a whole run.
pub struct Oracle {
    seed: u64,
    served: BTreeMap<Uuid, Served>,
    /// Fingerprint of each served key's bytes → its ID (collisions are then compared in full).
    by_bytes: BTreeMap<u64, Vec<Uuid>>,
    /// Keys a master got, with the slaves that have not fetched them yet.
    owed: BTreeMap<Uuid, (SaeId, Vec<(SaeId, NodeId)>)>,
    /// (key, slave) pairs whose `dec_keys` reply was lost in a crash, with when the first such
    /// request was made (its grace cannot have started earlier).
    window: BTreeMap<(Uuid, SaeId), Instant>,
    /// Every (key, slave) pair whose reply was ever lost (fetched again or not).
    ever_lost: BTreeSet<(Uuid, SaeId)>,
    /// Of those, pairs refused once their grace may have ended (allowed, counted).
    grace_lost: BTreeSet<(Uuid, SaeId)>,
    /// The slaves' grace after a fetch.
    grace: Duration,
    /// (key, slave) pairs lost with their node's database (wiped or replaced by an old copy).
    store_lost: BTreeSet<(Uuid, SaeId)>,
}

impl Oracle {
    /// An oracle for the run with this seed.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            served: BTreeMap::new(),
            by_bytes: BTreeMap::new(),
            owed: BTreeMap::new(),
            window: BTreeMap::new(),
            ever_lost: BTreeSet::new(),
            grace_lost: BTreeSet::new(),
            grace: Duration::ZERO,
            store_lost: BTreeSet::new(),
        }
    }

    /// The nodes give each slave this grace to fetch a key again after a lost reply.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// `node` lost its database (wiped or rolled back): keys its slaves had not fetched may be
    /// gone. They must still never be served twice or with other bytes.
    pub fn store_lost(&mut self, node: &str) {
        for (id, (_, slaves)) in self.owed.iter_mut() {
            slaves.retain(|(s, n)| {
                let lost = n == node;
                if lost {
                    self.store_lost.insert((*id, s.clone()));
                }
                !lost
            });
        }
        self.owed.retain(|_, (_, s)| !s.is_empty());
    }

    /// Keys `ids` were answered to their master after `node`, which serves some of their
    /// slaves, lost its database while the request was in progress: those slaves may never get
    /// them (allowed, counted as lost with the store).
    pub fn lost_with(&mut self, ids: &[Uuid], node: &str) {
        for id in ids {
            if let Some((_, slaves)) = self.owed.get_mut(id) {
                slaves.retain(|(s, n)| {
                    let lost = n == node;
                    if lost {
                        self.store_lost.insert((*id, s.clone()));
                    }
                    !lost
                });
            }
        }
        self.owed.retain(|_, (_, s)| !s.is_empty());
    }

    /// Whether `(id, slave)` was lost with its node's database.
    pub fn in_lost_store(&self, id: &Uuid, slave: &str) -> bool {
        self.store_lost.contains(&(*id, slave.to_string()))
    }

    /// How many (key, slave) pairs were lost with a database.
    pub fn lost_with_store(&self) -> usize {
        self.store_lost.len()
    }

    /// An answer reached the application that asked `asked` at `node`.
    pub fn answered(&mut self, node: &str, asked: &Asked, reply: &Result<AppReply, Refusal>) {
        let seed = self.seed;
        if let Ok(AppReply::Status(s)) = reply {
            assert!(
                s.stored_key_count <= s.max_key_count,
                "seed {seed}: status at {node} counts {} stored keys over its maximum {}",
                s.stored_key_count,
                s.max_key_count
            );
        }
        let Ok(AppReply::Keys(keys)) = reply else {
            return;
        };
        for k in keys {
            self.check_bytes(node, k.id, &k.key);
            let e = self.served.get_mut(&k.id).expect("recorded by check_bytes");
            match asked {
                Asked::Enc { master, slaves } => {
                    e.master += 1;
                    assert!(
                        e.master == 1,
                        "seed {seed}: key {} served twice to its master (at {node})",
                        k.id
                    );
                    // A key for no slave owes nothing (kept out rather than swept later).
                    if !slaves.is_empty() {
                        self.owed.insert(k.id, (master.clone(), slaves.clone()));
                    }
                }
                Asked::Dec { slave, ids } => {
                    assert!(
                        ids.contains(&k.id),
                        "seed {seed}: dec_keys at {node} answered key {} nobody asked for",
                        k.id
                    );
                    let c = e.slaves.entry(slave.clone()).or_insert(0);
                    *c += 1;
                    assert!(
                        *c == 1,
                        "seed {seed}: key {} served twice to slave {slave} (at {node})",
                        k.id
                    );
                    // Only this key's entry can have emptied: drop it here, not by a sweep
                    // of every key owed (that sweep made each answer cost O(keys owed)).
                    if let Some((_, owed)) = self.owed.get_mut(&k.id) {
                        owed.retain(|(s, _)| s != slave);
                        if owed.is_empty() {
                            self.owed.remove(&k.id);
                        }
                    }
                    self.window.remove(&(k.id, slave.clone()));
                    self.grace_lost.remove(&(k.id, slave.clone()));
                }
                Asked::Other => {}
            }
        }
    }

    /// The reply to `asked`, made at `at`, never reached the application (a crash between
    /// commit and reply, or a client gone).
    pub fn lost(&mut self, asked: &Asked, at: Instant) {
        if let Asked::Dec { slave, ids } = asked {
            for id in ids {
                self.window.entry((*id, slave.clone())).or_insert(at);
                self.ever_lost.insert((*id, slave.clone()));
            }
        }
    }

    /// Same ID → same bytes; different IDs → different bytes.
    fn check_bytes(&mut self, node: &str, id: Uuid, key: &Key) {
        let seed = self.seed;
        if let Some(e) = self.served.get(&id) {
            assert!(
                e.key == *key,
                "seed {seed}: key {id} served with two different values (at {node})"
            );
            return;
        }
        let fp = fingerprint(key.expose());
        let same = self.by_bytes.entry(fp).or_default();
        for other in same.iter() {
            assert!(
                self.served[other].key != *key,
                "seed {seed}: keys {other} and {id} carry the same bytes (at {node}): key reused"
            );
        }
        same.push(id);
        self.served.insert(
            id,
            Served {
                key: key.clone(),
                master: 0,
                slaves: BTreeMap::new(),
            },
        );
    }

    /// Keys a master got that some slave has not fetched yet: `(id, master, slave, node)`.
    pub fn unfetched(&self) -> Vec<(Uuid, SaeId, SaeId, NodeId)> {
        let mut out = Vec::new();
        for (id, (master, slaves)) in &self.owed {
            for (s, n) in slaves {
                out.push((*id, master.clone(), s.clone(), n.clone()));
            }
        }
        out
    }

    /// Whether the reply of a `dec_keys` for `(id, slave)` was lost.
    pub fn in_window(&self, id: &Uuid, slave: &str) -> bool {
        self.window.contains_key(&(*id, slave.to_string()))
    }

    /// Whether "not found" is allowed at `now` for `(id, slave)`: lost with its node's
    /// database, or fetched by a request whose reply was lost and whose grace may have ended.
    /// Anything else refused is a lost key. A grace allowance is counted in
    /// [`grace_lost`](Self::grace_lost).
    pub fn may_be_gone(&mut self, id: &Uuid, slave: &str, now: Instant) -> bool {
        if self.in_lost_store(id, slave) {
            return true;
        }
        let k = (*id, slave.to_string());
        match self.window.get(&k) {
            Some(at) if now >= *at + self.grace => {
                self.grace_lost.insert(k);
                true
            }
            _ => false,
        }
    }

    /// How many (key, slave) pairs had a `dec_keys` reply lost (fetched again since or not).
    pub fn window(&self) -> usize {
        self.ever_lost.len()
    }

    /// How many (key, slave) pairs were refused after a lost reply, once the grace may have
    /// ended (allowed, counted).
    pub fn grace_lost(&self) -> usize {
        self.grace_lost.len()
    }

    /// Keys served to a master so far.
    pub fn delivered(&self) -> usize {
        self.served.values().filter(|s| s.master > 0).count()
    }

    /// (key, slave) fetches so far.
    pub fn fetched(&self) -> usize {
        self.served.values().map(|s| s.slaves.len()).sum()
    }
}

/// FNV-1a over the key bytes (an index only; equal fingerprints are compared in full).
fn fingerprint(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
