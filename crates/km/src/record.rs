//! What the key manager persists: records without SQL. The store adapter writes each
//! [`Store`](crate::Action::Store) batch atomically and hands back a [`Snapshot`] at restart.

use std::collections::BTreeMap;

use kagi_keymat::Key;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::SaeId;
use crate::keybuf::KeyBufParts;
use crate::msgs::NodeId;

/// Which half of a link's key a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Half {
    /// This node spends it for messages it sends on the link.
    Tx,
    /// The neighbour spends it for messages it sends to us.
    Rx,
}

/// Which end-to-end pool a chunk belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Pool {
    /// Keys this node made and relayed to `dest` (for masters here).
    Out(NodeId),
    /// Keys `origin` made and relayed to this node (for slaves here).
    In(NodeId),
}

/// A key held at a slave's node, waiting for its slaves to fetch it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaveKey {
    /// The master SAE.
    pub master: SaeId,
    /// Every slave served by this node (named in the `enc_keys` call).
    pub slaves: Vec<SaeId>,
    /// Slaves here that have not fetched it yet.
    pub pending: Vec<SaeId>,
    /// The node that assigned it.
    pub origin: NodeId,
    /// The origin's assignment counter.
    pub assign_seq: u64,
    /// Key bytes.
    #[serde(with = "key_serde")]
    pub key: Key,
    /// The run of the key manager (`Counter::Run`) that applied it: a node that finds its
    /// store restored from an older copy discards the keys of runs before the copy's fork and
    /// keeps those applied since (see `reconcile`). Persisted by [`Record::TaggedSlaveKey`];
    /// 0 for keys of stores that did not record it.
    #[serde(skip)]
    pub run: u64,
    /// Slaves here that fetched it and may fetch it again while their grace lasts (their reply
    /// may have been lost: see `delivery`). Persisted by [`Record::GracedSlaveKey`]; the grace
    /// itself is counted again from each start, since monotonic time is never persisted.
    #[serde(skip)]
    pub graced: Vec<SaeId>,
}

impl std::fmt::Debug for SlaveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlaveKey")
            .field("master", &self.master)
            .field("slaves", &self.slaves)
            .field("pending", &self.pending)
            .field("origin", &self.origin)
            .field("assign_seq", &self.assign_seq)
            .field("run", &self.run)
            .field("graced", &self.graced)
            .field("key", &self.key)
            .finish()
    }
}

/// One persisted change. `*Gone` variants delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A link key block half (upsert).
    LinkBlock {
        /// Neighbour.
        peer: NodeId,
        /// Which half.
        half: Half,
        /// Block id.
        block: u64,
        /// Bytes and spent ranges.
        buf: KeyBufParts,
    },
    /// A link key block half fully spent (delete).
    LinkBlockGone {
        /// Neighbour.
        peer: NodeId,
        /// Which half.
        half: Half,
        /// Block id.
        block: u64,
    },
    /// Highest link key block ingested from a link (upsert).
    LinkHighWater {
        /// Neighbour.
        peer: NodeId,
        /// Block id.
        block: u64,
    },
    /// A pool chunk (upsert).
    Chunk {
        /// Which pool.
        pool: Pool,
        /// Chunk id (the relay counter of the origin).
        chunk: u64,
        /// Bytes and spent ranges.
        buf: KeyBufParts,
    },
    /// A pool chunk fully spent or abandoned (delete).
    ChunkGone {
        /// Which pool.
        pool: Pool,
        /// Chunk id.
        chunk: u64,
    },
    /// A relay this node started and that is not acknowledged yet (upsert).
    PendingRelay {
        /// Relay counter.
        seq: u64,
        /// Destination node.
        dest: NodeId,
        /// The relayed key.
        #[serde(with = "key_serde")]
        key: Key,
    },
    /// The relay ended (acknowledged or abandoned) (delete).
    PendingRelayGone {
        /// Relay counter.
        seq: u64,
    },
    /// A key held for slaves here (upsert).
    SlaveKey {
        /// Key ID.
        id: Uuid,
        /// The key and who may fetch it.
        key: SlaveKey,
    },
    /// A key fetched by all its slaves here, or revoked (delete).
    SlaveKeyGone {
        /// Key ID.
        id: Uuid,
    },
    /// A counter's high-water mark (upsert): ids are never reused after a restart.
    Counter {
        /// Which counter.
        name: Counter,
        /// Next value to use.
        next: u64,
    },
    /// The store's identity, drawn when the database is created (upsert, written once).
    Identity {
        /// Random store id, announced to peers in `Hello`.
        store: u64,
    },
    /// What this node has seen of another node's state (upsert): reported back to it in `Seen`
    /// after it restarts, so it never reuses what it already used.
    PeerSeen {
        /// The other node.
        peer: NodeId,
        /// The marks.
        seen: PeerMarks,
    },
    /// A pool chunk with the paths its relay travelled over (upsert; same entity as
    /// [`Record::Chunk`], which older stores hold and which restores as "paths unknown").
    /// New variants go last: records are encoded by variant index.
    RoutedChunk {
        /// Which pool.
        pool: Pool,
        /// Chunk id (the relay counter of the origin).
        chunk: u64,
        /// Bytes and spent ranges.
        buf: KeyBufParts,
        /// The paths its relay travelled over.
        route: RelayRoute,
    },
    /// A key held for slaves here, with the run that applied it (upsert; same entity as
    /// [`Record::SlaveKey`], which older stores hold and which restores as run 0).
    TaggedSlaveKey {
        /// Key ID.
        id: Uuid,
        /// The key and who may fetch it.
        key: SlaveKey,
        /// [`SlaveKey::run`].
        run: u64,
    },
    /// What this node judged of another node's store from its `Hello`s (upsert): the first run
    /// of that store whose `Hello` showed counters at or below what this node had already seen
    /// from earlier runs (the store was restored from an older copy at or before that run).
    /// Reported back in `Seen` so the restored node discards only what came from the copy,
    /// even when it restarts before its own detection is durable.
    PeerFork {
        /// The other node.
        peer: NodeId,
        /// Its store identity these fields are about.
        store: u64,
        /// The epoch of that node's run whose messages last raised the [`PeerMarks`] here
        /// (marks raised by the run that says `Hello` prove nothing about it).
        marks_epoch: u64,
        /// The first forked run seen (0: none).
        fork_run: u64,
    },
    /// [`Record::PeerFork`] with the run number of the peer's run whose messages last raised
    /// the marks here (same entity; written from now on, and the old form restores with run 0).
    /// A store behind those marks was copied during that run or before, so every run after it
    /// may hold keys applied after the restore: the fork is at most that run + 1, even when the
    /// first runs after the restore never greeted this node.
    PeerForkRun {
        /// The other node.
        peer: NodeId,
        /// Its store identity these fields are about.
        store: u64,
        /// As in [`Record::PeerFork`].
        marks_epoch: u64,
        /// The run number of the run with epoch `marks_epoch` (0: unknown).
        marks_run: u64,
        /// The first forked run seen (0: none).
        fork_run: u64,
    },
    /// A key held here with slaves in their grace after fetching it (upsert; same entity as
    /// [`Record::TaggedSlaveKey`], written instead of it while some slave is in its grace).
    GracedSlaveKey {
        /// Key ID.
        id: Uuid,
        /// The key and who may fetch it.
        key: SlaveKey,
        /// [`SlaveKey::run`].
        run: u64,
        /// [`SlaveKey::graced`].
        graced: Vec<SaeId>,
    },
    /// An assignment from here that was given up (its master answered with a refusal) and whose
    /// revoke some slave node has not acknowledged (upsert): written before the first `Revoke`
    /// goes. A start that finds one goes on revoking the assignment at `nodes` (see `revoke`).
    OpenAssign {
        /// Assignment counter.
        seq: u64,
        /// Slave nodes that may hold its keys and have not acknowledged a revoke.
        nodes: Vec<NodeId>,
    },
    /// Every slave node acknowledged the assignment's revoke (delete).
    OpenAssignGone {
        /// Assignment counter.
        seq: u64,
    },
    /// The neighbour `peer` may have spent its half of our link up to block `block` (upsert;
    /// only ever raised): it asked before spending past its previous reservation
    /// ([`PeerMsg::LinkReserve`](crate::PeerMsg::LinkReserve)), and every `Seen` to it reports
    /// this, so a copy of its store restored from before those spends drops them.
    PeerLinkReserved {
        /// The neighbour.
        peer: NodeId,
        /// Highest block of its half it may have spent.
        block: u64,
    },
    /// The epochs of this store's latest runs, `(run, epoch)`, at most
    /// [`RUN_EPOCHS_KEPT`] (upsert; written with `Counter::Run` at every start, so a copy holds
    /// the epoch of every run it was taken during). A peer's `Seen` names the run (and its
    /// epoch) that last raised its marks of this store: if this store's run of that number had
    /// another epoch, the copy was taken before that run began and a restored run reused the
    /// number.
    RunEpochs {
        /// `(run, epoch)`, oldest first.
        runs: Vec<(u64, u64)>,
    },
}

/// How many runs' epochs [`Record::RunEpochs`] keeps.
pub const RUN_EPOCHS_KEPT: usize = 32;

/// The node-disjoint paths one relay's shares travelled over: what a pool chunk records so that
/// `enc_keys` can serve key relayed under path constraints (the `kagi_route` extension) and say
/// over which paths it came.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelayRoute {
    /// Each share's path `[origin, ..., dest]` (one path: the whole key on a single path).
    pub paths: Vec<Vec<NodeId>>,
    /// Shares that rebuild the key (1 for single-path relay).
    pub threshold: u8,
}

/// What one node has seen of another node's state, kept across restarts of either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMarks {
    /// The peer's store identity (0: never heard from it); the marks below are of this store.
    pub store: u64,
    /// Highest relay counter of the peer received here as destination.
    pub relay_hw: u64,
    /// Highest assignment counter of the peer applied here.
    pub assign_hw: u64,
    /// Highest block of the peer's transmit half of our link seen spent here.
    pub link_rx_hw: Option<u64>,
    /// Highest relay counter received from the peer's earlier stores.
    pub relay_floor: u64,
    /// Highest assignment counter applied from the peer's earlier stores.
    pub assign_floor: u64,
}

/// Persisted counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Counter {
    /// Relay ids.
    Relay,
    /// Assignment ids.
    Assign,
    /// Starts of the key manager on this store (tags slave keys with the run that applied
    /// them).
    Run,
}

impl Record {
    /// The store key of the entity this record writes or deletes: upserts and deletes of the same
    /// entity share it, so a key-value store can apply records in order.
    pub fn entity(&self) -> (&'static str, String) {
        fn hk(h: &Half) -> &'static str {
            match h {
                Half::Tx => "tx",
                Half::Rx => "rx",
            }
        }
        fn pk(p: &Pool) -> String {
            match p {
                Pool::Out(n) => format!("out/{n}"),
                Pool::In(n) => format!("in/{n}"),
            }
        }
        match self {
            Record::LinkBlock {
                peer, half, block, ..
            }
            | Record::LinkBlockGone { peer, half, block } => {
                ("link_block", format!("{peer}/{}/{block:020}", hk(half)))
            }
            Record::LinkHighWater { peer, .. } => ("link_hw", peer.to_string()),
            Record::Chunk { pool, chunk, .. }
            | Record::RoutedChunk { pool, chunk, .. }
            | Record::ChunkGone { pool, chunk } => ("chunk", format!("{}/{chunk:020}", pk(pool))),
            Record::PendingRelay { seq, .. } | Record::PendingRelayGone { seq } => {
                ("pending_relay", format!("{seq:020}"))
            }
            Record::SlaveKey { id, .. }
            | Record::TaggedSlaveKey { id, .. }
            | Record::GracedSlaveKey { id, .. }
            | Record::SlaveKeyGone { id } => ("slave_key", id.to_string()),
            Record::Counter { name, .. } => ("counter", format!("{name:?}")),
            Record::Identity { .. } => ("identity", String::new()),
            Record::PeerSeen { peer, .. } => ("peer_seen", peer.to_string()),
            Record::PeerFork { peer, .. } | Record::PeerForkRun { peer, .. } => {
                ("peer_fork", peer.to_string())
            }
            Record::OpenAssign { seq, .. } | Record::OpenAssignGone { seq } => {
                ("open_assign", format!("{seq:020}"))
            }
            Record::PeerLinkReserved { peer, .. } => ("peer_link_reserved", peer.to_string()),
            Record::RunEpochs { .. } => ("run_epochs", String::new()),
        }
    }

    /// True for records that delete their entity.
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Record::LinkBlockGone { .. }
                | Record::ChunkGone { .. }
                | Record::PendingRelayGone { .. }
                | Record::SlaveKeyGone { .. }
                | Record::OpenAssignGone { .. }
        )
    }

    /// The record that stores a key held for slaves, with its run (and the slaves in their
    /// grace, if any).
    pub fn slave_key(id: Uuid, key: SlaveKey) -> Self {
        let run = key.run;
        if key.graced.is_empty() {
            Record::TaggedSlaveKey { id, key, run }
        } else {
            let graced = key.graced.clone();
            Record::GracedSlaveKey {
                id,
                key,
                run,
                graced,
            }
        }
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("records always encode")
    }

    /// Decodes from storage.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// Everything durable, as the store hands it back at restart: the latest upsert of every entity
/// that has not been deleted.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The records, in any order.
    pub records: Vec<Record>,
}

/// A record's entity key ([`Record::entity`]).
pub type EntityKey = (&'static str, String);

/// An in-memory key-value store of records: the latest record of each entity (the simulator's
/// virtual store, and tests' stores).
pub trait EntityMap {
    /// Puts `r` as the latest record of entity `k`.
    fn upsert(&mut self, k: EntityKey, r: Record);
    /// Forgets entity `k`.
    fn delete(&mut self, k: &EntityKey);
}

impl EntityMap for BTreeMap<EntityKey, Record> {
    fn upsert(&mut self, k: EntityKey, r: Record) {
        self.insert(k, r);
    }
    fn delete(&mut self, k: &EntityKey) {
        self.remove(k);
    }
}

impl<S: std::hash::BuildHasher> EntityMap for std::collections::HashMap<EntityKey, Record, S> {
    fn upsert(&mut self, k: EntityKey, r: Record) {
        self.insert(k, r);
    }
    fn delete(&mut self, k: &EntityKey) {
        self.remove(k);
    }
}

impl Snapshot {
    /// Applies a batch the way a key-value store would (used by the simulator's virtual store).
    pub fn apply(map: &mut impl EntityMap, batch: &[Record]) {
        Self::apply_owned(map, batch.iter().cloned());
    }

    /// [`Snapshot::apply`] for a batch the caller no longer needs: its records move into the map
    /// instead of being cloned.
    pub fn apply_owned(map: &mut impl EntityMap, batch: impl IntoIterator<Item = Record>) {
        for r in batch {
            let k = r.entity();
            if r.is_delete() {
                map.delete(&k);
            } else {
                map.upsert(k, r);
            }
        }
    }
}

/// Serde for [`Key`] inside records: the only place key bytes are serialized (for the store).
pub mod key_serde {
    use kagi_keymat::Key;
    use serde::{Deserializer, Serializer};

    /// Serializes the key bytes.
    pub fn serialize<S: Serializer>(k: &Key, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(k.expose())
    }

    /// Deserializes key bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let v: Vec<u8> = serde_bytes_vec(d)?;
        Ok(Key::from_vec(v))
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's store: upserts replace, deletes remove, and a batch moved in leaves the
    /// same map as the same batch applied by reference.
    #[test]
    fn store_batches_upsert_and_delete_whether_moved_or_cloned() {
        let block = |b: u8| Record::LinkBlock {
            peer: "p".into(),
            half: Half::Tx,
            block: 1,
            buf: KeyBufParts {
                data: Key::from_slice(&[b; 4]),
                spent: vec![],
            },
        };
        let hw = Record::LinkHighWater {
            peer: "p".into(),
            block: 1,
        };
        let gone = Record::LinkBlockGone {
            peer: "p".into(),
            half: Half::Tx,
            block: 1,
        };
        for batches in [
            vec![vec![block(1), hw.clone()], vec![block(2)]],
            vec![vec![block(1), hw.clone(), block(2)], vec![gone.clone()]],
        ] {
            let (mut moved, mut cloned) = (BTreeMap::new(), BTreeMap::new());
            for b in &batches {
                Snapshot::apply(&mut cloned, b);
                Snapshot::apply_owned(&mut moved, b.clone());
            }
            assert_eq!(moved, cloned);
            let expect: Vec<Record> = if batches[1] == vec![gone.clone()] {
                vec![hw.clone()]
            } else {
                vec![block(2), hw.clone()]
            };
            let mut got: Vec<Record> = moved.into_values().collect();
            got.sort_by_key(|r| r.entity());
            let mut expect = expect;
            expect.sort_by_key(|r| r.entity());
            assert_eq!(got, expect);
        }
    }

    /// A pool chunk as stores written before paths were recorded hold it (postcard, variant
    /// index 3). It must keep decoding to a chunk, read as "paths unknown": new variants go last.
    #[test]
    fn chunks_stored_before_paths_were_recorded_still_decode() {
        let old: &[u8] = &[3, 0, 1, b'z', 7, 3, 1, 2, 3, 1, 0, 1];
        let r = Record::decode(old).unwrap();
        let Record::Chunk { pool, chunk, buf } = &r else {
            panic!("{r:?}")
        };
        assert_eq!((pool, *chunk), (&Pool::Out("z".into()), 7));
        assert_eq!(
            (buf.data.expose(), &buf.spent[..]),
            (&[1u8, 2, 3][..], &[(0, 1)][..])
        );
        assert_eq!(r.encode(), old);
        let routed = Record::RoutedChunk {
            pool: pool.clone(),
            chunk: 7,
            buf: buf.clone(),
            route: RelayRoute {
                paths: vec![vec!["a".into(), "z".into()]],
                threshold: 1,
            },
        };
        assert_eq!(routed.entity(), r.entity(), "an upsert of the same chunk");
        assert_eq!(Record::decode(&routed.encode()).unwrap(), routed);
    }

    /// A key with slaves in their grace is stored with them (and restores them); without any
    /// it is stored as before, so stores written by earlier versions read the same.
    #[test]
    fn slaves_in_their_grace_are_stored_with_the_key() {
        let mut k = SlaveKey {
            master: "sae-a".into(),
            slaves: vec!["sae-c".into(), "sae-c2".into()],
            pending: vec!["sae-c2".into()],
            origin: "a".into(),
            assign_seq: 4,
            key: Key::from_slice(&[7; 32]),
            run: 2,
            graced: vec![],
        };
        let id = Uuid::from_u128(9);
        let plain = Record::slave_key(id, k.clone());
        assert!(matches!(plain, Record::TaggedSlaveKey { .. }), "{plain:?}");
        k.graced = vec!["sae-c".into()];
        let graced = Record::slave_key(id, k.clone());
        assert_eq!(graced.entity(), plain.entity(), "an upsert of the same key");
        let back = Record::decode(&graced.encode()).unwrap();
        let Record::GracedSlaveKey {
            graced: g,
            run,
            key,
            ..
        } = back
        else {
            panic!("{back:?}")
        };
        assert_eq!((g, run), (vec!["sae-c".to_string()], 2));
        assert_eq!(key.pending, vec!["sae-c2".to_string()]);
        assert!(format!("{key:?}").contains("graced"));
        assert!(
            !format!("{key:?}").contains("7, 7"),
            "no key bytes in Debug"
        );
    }
}
