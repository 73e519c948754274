//! The SQLite store: one table of records keyed by entity, written in atomic batches by a
//! single writer thread with group commit.
//!
//! WAL journal, `synchronous=FULL` (a committed batch survives `kill -9` and power loss) and
//! `secure_delete=ON` (deleted key bytes are overwritten in the file, not just unlinked).

use std::path::Path;
use std::sync::mpsc;

use kagi_km::{Input, Record, Snapshot, WriteId};
use rusqlite::{params, Connection};

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
}

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// fsync the WAL at every commit: a committed batch survives process crash and power loss.
    #[default]
    Full,
    /// WAL without fsync per commit: survives `kill -9` (the OS has the pages) but a power loss
    /// may roll back the latest commits.
    Normal,
}

/// An open key store.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with `synchronous=FULL`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Sync::Full)
    }

    /// Opens the store with a chosen durability.
    pub fn open_with(path: &Path, sync: Sync) -> Result<Self, StoreError> {
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
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                kind TEXT NOT NULL,
                k TEXT NOT NULL,
                v BLOB NOT NULL,
                PRIMARY KEY (kind, k)
            ) WITHOUT ROWID;",
        )?;
        Ok(Self { conn })
    }

    /// Everything durable.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut stmt = self.conn.prepare("SELECT kind, k, v FROM records")?;
        let mut rows = stmt.query([])?;
        let mut records = Vec::new();
        while let Some(row) = rows.next()? {
            let v: Vec<u8> = row.get(2)?;
            let r = Record::decode(&v).map_err(|why| StoreError::Corrupt {
                kind: row.get(0).unwrap_or_default(),
                key: row.get(1).unwrap_or_default(),
                why,
            })?;
            records.push(r);
        }
        Ok(Snapshot { records })
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
                        put.execute(params![kind, key, r.encode()])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Runs the writer loop on the current (dedicated) thread: takes batches from `rx`, commits as
/// many as are waiting in one transaction, and reports each as [`Input::Stored`] in order.
pub fn writer_loop(
    mut store: SqliteStore,
    rx: mpsc::Receiver<(WriteId, Vec<Record>)>,
    done: impl Fn(Input),
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
            if group.len() >= 256 {
                break;
            }
        }
        let refs: Vec<&[Record]> = group.iter().map(|(_, b)| b.as_slice()).collect();
        let ok = match store.write(&refs) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "store write failed");
                false
            }
        };
        for (write, _) in group {
            done(Input::Stored { write, ok });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_km::record::Counter;

    #[test]
    fn batches_survive_reopen_and_deletes_apply() {
        let dir = std::env::temp_dir().join(format!("kagi-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let mut s = SqliteStore::open(&path).unwrap();
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
        let s = SqliteStore::open(&path).unwrap();
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
}
