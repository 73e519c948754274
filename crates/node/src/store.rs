//! The SQLite store: one table of records keyed by entity, written in atomic batches by a
//! single writer thread with group commit.
//!
//! Every value is sealed ([`crate::seal`]): AES-256-GCM-SIV under the store's DEK, with the
//! record's kind and key as associated data. A value that fails authentication at start is
//! *quarantined* — moved to the `quarantine` table, logged and counted, never served or spent —
//! unless losing it could make the node reuse key (a counter or a link's high-water mark): then
//! the node refuses to start and says which record.
//!
//! WAL journal, `synchronous=FULL` (a committed batch survives `kill -9` and power loss),
//! `secure_delete=ON` (deleted and overwritten cells are zeroed in the file) and a
//! `wal_checkpoint(TRUNCATE)` shortly after writes, so old frames of changed records do not
//! linger in the `-wal` file (see SECURITY.md, "Sealed store").

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kagi_km::{Input, Record, Snapshot, WriteId};
use rusqlite::{params, Connection};
use zeroize::Zeroizing;

use crate::seal::{SealError, Sealer};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record could not be decoded (corruption).
    #[error("corrupt record {kind}/{key}: {why}")]
    Corrupt {
        /// Entity kind.
        kind: String,
        /// Entity key.
        key: String,
        /// Decoder message.
        why: String,
    },
    /// Sealing failed (wrong KEK, or a value failed authentication).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A record the node's consistency depends on failed authentication: starting could reuse
    /// key, so the node refuses.
    #[error("refusing to start: {what} failed authentication ({why}); losing it could make this node reuse key. The record was left in place for inspection; restore the store from a backup or re-provision the node")]
    Unsafe {
        /// Which record.
        what: String,
        /// Why it failed.
        why: String,
    },
}

/// How hard a commit is pushed to disk (`[store] synchronous`).
///
/// Only `"full"` is safe for a key store: the core answers a request only after its commit, so a
/// commit that a power loss rolls back can be a key already handed out, which the node would then
/// hand out again. `"normal"` is therefore refused with that reason; `"unsafe-normal"` keeps it
/// for benchmarks and test rigs, and the node warns at every start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub enum Sync {
    /// fsync the WAL at every commit: a committed batch survives process crash and power loss.
    #[default]
    #[serde(rename = "full")]
    Full,
    /// WAL without fsync per commit: survives `kill -9` (the OS has the pages) but a power loss
    /// may roll back the latest commits. Unsafe for keys.
    #[serde(rename = "unsafe-normal")]
    Normal,
}

impl Sync {
    /// Whether a power loss can make the node serve a key twice.
    pub fn is_unsafe(self) -> bool {
        self == Sync::Normal
    }
}

impl<'de> serde::Deserialize<'de> for Sync {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "full" => Ok(Sync::Full),
            "unsafe-normal" => Ok(Sync::Normal),
            "normal" => Err(serde::de::Error::custom(
                "synchronous = \"normal\" is refused for key stores: a power loss can roll back \
                 commits whose keys were already delivered, and the node would deliver them again; \
                 use \"full\" (the default), or \"unsafe-normal\" on a test rig where that is \
                 acceptable",
            )),
            other => Err(serde::de::Error::custom(format!(
                "synchronous = {other:?}: expected \"full\" or \"unsafe-normal\""
            ))),
        }
    }
}

/// Record kinds whose loss could make the node reuse key: a failed authentication there stops
/// the start instead of quarantining. (`peer_seen` tells restarted peers which counters they
/// used; `identity` tells them this store is the one they know.)
const CONSISTENCY_KINDS: &[&str] = &["counter", "link_hw", "peer_seen", "identity"];

/// Checkpoint the WAL at most this often while writes keep coming.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Label of the node store's DEK (part of every value's associated data).
pub const STORE_LABEL: &str = "kagi-store";

/// A stored value that failed authentication and was moved to the `quarantine` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The record kind (`link_block`, `slave_key`, ...).
    pub kind: String,
    /// The record's key within its kind (a peer and block, a key ID: never key bytes).
    pub key: String,
    /// Why it failed.
    pub why: String,
}

/// An open key store.
pub struct SqliteStore {
    conn: Connection,
    sealer: Arc<Sealer>,
}

/// Opens `path` as a SQLite database with kagi's pragmas (WAL, `synchronous`, `secure_delete`).
pub fn open_db(path: &Path, sync: Sync) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// Moves the WAL's content into the database file and truncates the WAL to zero bytes, so
/// frames holding earlier versions of changed records do not stay on disk.
pub fn checkpoint_truncate(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, sealing values with `sealer`.
    pub fn open_sealed(path: &Path, sync: Sync, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        let conn = open_db(path, sync)?;
        Self::with_conn(conn, sealer)
    }

    /// A store on an open connection (see [`open_db`]).
    pub fn with_conn(conn: Connection, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                kind TEXT NOT NULL,
                k TEXT NOT NULL,
                v BLOB NOT NULL,
                PRIMARY KEY (kind, k)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS quarantine (
                kind TEXT NOT NULL, k TEXT NOT NULL, v BLOB NOT NULL,
                reason TEXT NOT NULL, at_unix INTEGER NOT NULL);",
        )?;
        Ok(Self { conn, sealer })
    }

    /// Seals the records of a store written before sealing existed (values in the clear), in
    /// one transaction, then vacuums so no plaintext stays in free pages. Call only right after
    /// the store's DEK was created.
    pub fn seal_legacy_records(&self) -> Result<usize, StoreError> {
        let rows: Vec<(String, String, Vec<u8>)> = {
            let mut st = self.conn.prepare("SELECT kind, k, v FROM records")?;
            let r = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            r.collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.unchecked_transaction()?;
        for (kind, k, v) in &rows {
            let v = Zeroizing::new(v.clone());
            tx.execute(
                "UPDATE records SET v = ?3 WHERE kind = ?1 AND k = ?2",
                params![kind, k, self.sealer.seal(kind, k, &v)],
            )?;
        }
        tx.commit()?;
        self.conn.execute_batch("VACUUM")?;
        checkpoint_truncate(&self.conn)?;
        Ok(rows.len())
    }

    /// Everything durable that authenticates. Values that fail authentication are moved to the
    /// `quarantine` table (logged); one whose loss could make the node reuse key stops the start
    /// with [`StoreError::Unsafe`] and is left in place.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.snapshot_reporting().map(|(snap, _)| snap)
    }

    /// [`Self::snapshot`], also naming the values it quarantined just now (for the audit trail
    /// and the tamper threshold; values quarantined by earlier starts are not named again).
    pub fn snapshot_reporting(&self) -> Result<(Snapshot, Vec<Quarantined>), StoreError> {
        let mut records = Vec::new();
        let mut bad: Vec<(String, String, Vec<u8>, String)> = Vec::new();
        {
            let mut stmt = self.conn.prepare("SELECT kind, k, v FROM records")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let kind: String = row.get(0)?;
                let k: String = row.get(1)?;
                let v: Vec<u8> = row.get(2)?;
                let why = match self.sealer.open(&kind, &k, &v) {
                    Ok(plain) => match Record::decode(&plain) {
                        Ok(r) if r.entity() == (kind.as_str(), k.clone()) => {
                            records.push(r);
                            continue;
                        }
                        Ok(_) => "record names another entity".to_string(),
                        Err(e) => format!("undecodable: {e}"),
                    },
                    Err(e) => e.to_string(),
                };
                bad.push((kind, k, v, why));
            }
        }
        if let Some((kind, k, _, why)) = bad
            .iter()
            .find(|(kind, ..)| CONSISTENCY_KINDS.contains(&kind.as_str()))
        {
            return Err(StoreError::Unsafe {
                what: format!("record {kind}/{k}"),
                why: why.clone(),
            });
        }
        if !bad.is_empty() {
            let now = unix_now();
            let tx = self.conn.unchecked_transaction()?;
            for (kind, k, v, why) in &bad {
                tracing::error!(kind = %kind, key = %k, reason = %why, "quarantined a stored record that failed authentication; it will never be served or spent");
                tx.execute(
                    "INSERT INTO quarantine (kind, k, v, reason, at_unix) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![kind, k, v, why, now],
                )?;
                tx.execute(
                    "DELETE FROM records WHERE kind = ?1 AND k = ?2",
                    params![kind, k],
                )?;
            }
            tx.commit()?;
        }
        let found = bad
            .into_iter()
            .map(|(kind, key, _, why)| Quarantined { kind, key, why })
            .collect();
        Ok((Snapshot { records }, found))
    }

    /// Records quarantined so far (over the store's life).
    pub fn quarantined(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM quarantine", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Applies several batches in one transaction (all or nothing).
    pub fn write(&mut self, batches: &[&[Record]]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO records (kind, k, v) VALUES (?1, ?2, ?3)",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM records WHERE kind = ?1 AND k = ?2")?;
            for batch in batches {
                for r in batch.iter() {
                    let (kind, key) = r.entity();
                    if r.is_delete() {
                        del.execute(params![kind, key])?;
                    } else {
                        // The encoding holds key bytes in the clear: wiped when dropped.
                        let plain = Zeroizing::new(r.encode());
                        put.execute(params![kind, key, self.sealer.seal(kind, &key, &plain)])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// See [`checkpoint_truncate`].
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(checkpoint_truncate(&self.conn)?)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs the writer loop on the current (dedicated) thread: takes batches from `rx`, commits as
/// many as are waiting in one transaction, and reports each as [`Input::Stored`] in order.
/// After writes it truncates the WAL when the queue is empty (at most every 250 ms under
/// constant load), and once more when the loop ends.
///
/// After a failed write nothing more is written: every later batch is reported failed until `rx`
/// closes. The core that emitted them is fenced and will be restarted from this store; a later
/// batch written without the failed one would leave a state no core ever held (a `dec_keys`
/// spend whose reply was never given, for one).
pub fn writer_loop(
    mut store: SqliteStore,
    rx: mpsc::Receiver<(WriteId, Vec<Record>)>,
    done: impl Fn(Input),
) {
    let mut dirty = false;
    let mut failed = false;
    let mut last_checkpoint = Instant::now();
    loop {
        let first = if dirty {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(b) => b,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    checkpoint(&store, &mut dirty, &mut last_checkpoint);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(b) => b,
                Err(_) => break,
            }
        };
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
            if group.len() >= 256 {
                break;
            }
        }
        let refs: Vec<&[Record]> = group.iter().map(|(_, b)| b.as_slice()).collect();
        let ok = !failed
            && match store.write(&refs) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "store write failed; writing nothing more until the key manager restarts");
                    false
                }
            };
        failed |= !ok;
        dirty = true;
        for (write, _) in group {
            done(Input::Stored { write, ok });
        }
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            checkpoint(&store, &mut dirty, &mut last_checkpoint);
        }
    }
    if dirty {
        checkpoint(&store, &mut dirty, &mut last_checkpoint);
    }
}

fn checkpoint(store: &SqliteStore, dirty: &mut bool, last: &mut Instant) {
    if let Err(e) = store.checkpoint() {
        // Busy (a reader holds the WAL): the next write tries again.
        tracing::debug!(error = %e, "WAL checkpoint deferred");
        return;
    }
    *dirty = false;
    *last = Instant::now();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kagi_keymat::Key;
    use kagi_km::keybuf::KeyBufParts;
    use kagi_km::record::{Counter, Half, Pool, SlaveKey};

    fn sealer() -> Arc<Sealer> {
        Arc::new(Sealer::new(&Key::from_slice(&[5; 32]), STORE_LABEL))
    }

    fn open(path: &Path) -> SqliteStore {
        SqliteStore::open_sealed(path, Sync::Full, sealer()).unwrap()
    }

    #[test]
    fn batches_survive_reopen_and_deletes_apply() {
        let dir = crate::loopback::scratch_dir("store").unwrap();
        let path = dir.join("t.db");
        {
            let mut s = open(&path);
            s.write(&[&[
                Record::Counter {
                    name: Counter::Relay,
                    next: 5,
                },
                Record::PendingRelay {
                    seq: 3,
                    dest: "b".into(),
                    key: kagi_keymat::Key::from_slice(&[7; 32]),
                },
            ]])
            .unwrap();
            s.write(&[&[
                Record::PendingRelayGone { seq: 3 },
                Record::Counter {
                    name: Counter::Relay,
                    next: 9,
                },
            ]])
            .unwrap();
        }
        let s = open(&path);
        let snap = s.snapshot().unwrap();
        assert_eq!(
            snap.records,
            vec![Record::Counter {
                name: Counter::Relay,
                next: 9
            }]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_is_written_after_a_failed_write() {
        let dir = crate::loopback::scratch_dir("store-fail").unwrap();
        let path = dir.join("t.db");
        let store = open(&path);
        let poison = Record::PendingRelay {
            seq: 3,
            dest: "b".into(),
            key: kagi_keymat::Key::from_slice(&[7; 32]),
        };
        // This one record cannot be written (as if the disk were full just then).
        let (kind, k) = poison.entity();
        store
            .conn
            .execute_batch(&format!(
                "CREATE TEMP TRIGGER full BEFORE INSERT ON records WHEN NEW.kind = '{kind}' \
                 AND NEW.k = '{k}' BEGIN SELECT RAISE(ABORT, 'disk full'); END;"
            ))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            writer_loop(store, rx, move |i| {
                if let Input::Stored { write, ok } = i {
                    done_tx.send((write, ok)).unwrap();
                }
            })
        });
        let counter = |next| Record::Counter {
            name: Counter::Relay,
            next,
        };
        // One batch at a time, so each is its own transaction.
        let mut acks = Vec::new();
        for (write, batch) in [(1, counter(5)), (2, poison), (3, counter(9))] {
            tx.send((write, vec![batch])).unwrap();
            acks.push(done_rx.recv().unwrap());
        }
        drop(tx);
        writer.join().unwrap();
        assert_eq!(acks, vec![(1, true), (2, false), (3, false)]);
        let snap = open(&path).snapshot().unwrap();
        assert_eq!(snap.records, vec![counter(5)], "batch 3 was written");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One record of every kind, each holding recognisable key bytes.
    pub(crate) fn one_of_each() -> Vec<Record> {
        let buf = |b: u8| KeyBufParts {
            data: Key::from_slice(&[b; 48]),
            spent: vec![(0, 4)],
        };
        vec![
            Record::LinkBlock {
                peer: "b".into(),
                half: Half::Tx,
                block: 7,
                buf: buf(0xA1),
            },
            Record::LinkHighWater {
                peer: "b".into(),
                block: 7,
            },
            Record::Chunk {
                pool: Pool::Out("c".into()),
                chunk: 3,
                buf: buf(0xA2),
            },
            Record::PendingRelay {
                seq: 4,
                dest: "c".into(),
                key: Key::from_slice(&[0xA3; 40]),
            },
            Record::slave_key(
                uuid::Uuid::from_u128(42),
                SlaveKey {
                    master: "sae-a".into(),
                    slaves: vec!["sae-c".into()],
                    pending: vec!["sae-c".into()],
                    origin: "a".into(),
                    assign_seq: 1,
                    key: Key::from_slice(&[0xA4; 32]),
                    run: 3,
                    graced: vec![],
                },
            ),
            Record::Counter {
                name: Counter::Assign,
                next: 2,
            },
            Record::Identity { store: 0x5eed },
            Record::PeerSeen {
                peer: "c".into(),
                seen: kagi_km::record::PeerMarks {
                    store: 9,
                    relay_hw: 3,
                    assign_hw: 1,
                    link_rx_hw: Some(7),
                    relay_floor: 0,
                    assign_floor: 0,
                },
            },
        ]
    }

    fn raw_values(path: &Path) -> Vec<(String, String)> {
        let c = Connection::open(path).unwrap();
        let mut st = c.prepare("SELECT kind, k FROM records").unwrap();
        let rows = st
            .query_map([], |r| Ok((r.get(0).unwrap(), r.get(1).unwrap())))
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn flip(path: &Path, kind: &str, k: &str, at: usize) {
        let c = Connection::open(path).unwrap();
        let mut v: Vec<u8> = c
            .query_row(
                "SELECT v FROM records WHERE kind = ?1 AND k = ?2",
                params![kind, k],
                |r| r.get(0),
            )
            .unwrap();
        let at = at % v.len();
        v[at] ^= 0x01;
        c.execute(
            "UPDATE records SET v = ?3 WHERE kind = ?1 AND k = ?2",
            params![kind, k, v],
        )
        .unwrap();
    }

    #[test]
    fn stored_values_hold_no_key_bytes_in_the_clear() {
        let dir = crate::loopback::scratch_dir("store").unwrap();
        let path = dir.join("t.db");
        let mut s = open(&path);
        s.write(&[&one_of_each()]).unwrap();
        s.checkpoint().unwrap();
        drop(s);
        for f in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            for b in [0xA1u8, 0xA2, 0xA3, 0xA4] {
                assert!(!bytes.windows(16).any(|w| w.iter().all(|&x| x == b)));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flipped_byte_in_any_record_kind_is_caught() {
        for at in [0usize, 1, 13, 20, 1000] {
            for victim in one_of_each() {
                let dir = crate::loopback::scratch_dir("store").unwrap();
                let path = dir.join("t.db");
                open(&path).write(&[&one_of_each()]).unwrap();
                let (kind, k) = victim.entity();
                flip(&path, kind, &k, at);
                let s = open(&path);
                match s.snapshot() {
                    Ok(snap) => {
                        assert!(
                            !CONSISTENCY_KINDS.contains(&kind),
                            "{kind} must stop the start"
                        );
                        assert!(!snap.records.contains(&victim), "{kind} was served");
                        assert_eq!(snap.records.len(), one_of_each().len() - 1);
                        assert_eq!(s.quarantined().unwrap(), 1, "{kind}");
                        // Quarantined for good: a restart neither serves nor re-counts it.
                        drop(s);
                        let s = open(&path);
                        assert_eq!(s.snapshot().unwrap().records.len(), one_of_each().len() - 1);
                        assert_eq!(s.quarantined().unwrap(), 1);
                    }
                    Err(e) => {
                        assert!(CONSISTENCY_KINDS.contains(&kind), "{kind}: {e}");
                        let m = e.to_string();
                        assert!(m.contains("refusing to start") && m.contains(kind), "{m}");
                        assert_eq!(
                            raw_values(&path).len(),
                            one_of_each().len(),
                            "left in place"
                        );
                    }
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    #[test]
    fn swapped_values_and_plaintext_downgrades_are_caught() {
        let dir = crate::loopback::scratch_dir("store").unwrap();
        let path = dir.join("t.db");
        let mut s = open(&path);
        let a = Record::PendingRelay {
            seq: 1,
            dest: "c".into(),
            key: Key::from_slice(&[1; 32]),
        };
        let b = Record::PendingRelay {
            seq: 2,
            dest: "c".into(),
            key: Key::from_slice(&[2; 32]),
        };
        s.write(&[&[a.clone(), b.clone()]]).unwrap();
        drop(s);
        let c = Connection::open(&path).unwrap();
        // Swap the two values (same kind, different keys).
        c.execute_batch(
            "UPDATE records SET k = 'x' WHERE k = '00000000000000000001';
             UPDATE records SET k = '00000000000000000001' WHERE k = '00000000000000000002';
             UPDATE records SET k = '00000000000000000002' WHERE k = 'x';",
        )
        .unwrap();
        // And write a forged record in the clear (version byte 0, as an unsealed store would).
        let mut forged_relay = vec![0u8];
        forged_relay.extend_from_slice(&a.encode());
        c.execute(
            "INSERT INTO records (kind, k, v) VALUES ('pending_relay', '00000000000000000009', ?1)",
            params![forged_relay],
        )
        .unwrap();
        drop(c);
        let s = open(&path);
        assert!(s.snapshot().unwrap().records.is_empty());
        assert_eq!(s.quarantined().unwrap(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn legacy_plaintext_records_are_sealed_in_place() {
        let dir = crate::loopback::scratch_dir("store").unwrap();
        let path = dir.join("t.db");
        {
            let c = open_db(&path, Sync::Full).unwrap();
            c.execute_batch(
                "CREATE TABLE records (kind TEXT NOT NULL, k TEXT NOT NULL, v BLOB NOT NULL,
                 PRIMARY KEY (kind, k)) WITHOUT ROWID;",
            )
            .unwrap();
            for r in one_of_each() {
                let (kind, k) = r.entity();
                c.execute(
                    "INSERT INTO records (kind, k, v) VALUES (?1, ?2, ?3)",
                    params![kind, k, r.encode()],
                )
                .unwrap();
            }
        }
        let s = open(&path);
        let n = one_of_each().len();
        assert_eq!(s.seal_legacy_records().unwrap(), n);
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.records.len(), n);
        drop(s);
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(16).any(|w| w.iter().all(|&x| x == 0xA4)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
