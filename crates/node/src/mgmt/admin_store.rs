//! The operator's switches that must outlive a restart: links taken out of service, draining,
//! and key rate limits set through the management API. A node restarted for maintenance comes
//! back the way the operator left it, not routing over a link someone took out because its
//! fibre is being repaired, nor serving an application the limit someone lowered at run time.
//!
//! Kept in its own small SQLite database, `<data_dir>/<node>-admin.db`, apart from the sealed
//! key store: the switches and limits are not secret, and the key manager core does not own
//! them. Whoever can write this file can also write `node.toml`, which sets the same limits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// The persisted switches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminState {
    /// Neighbours whose link is out of service.
    #[serde(default)]
    pub links_out: BTreeSet<String>,
    /// Whether new `enc_keys` requests are refused for maintenance.
    #[serde(default)]
    pub draining: bool,
    /// Key rate limits and priorities set through the management API; they replace
    /// `node.toml`'s entries for the same SAE or pair.
    #[serde(default, skip_serializing_if = "kagi_km::QuotaOverrides::is_empty")]
    pub limits: kagi_km::QuotaOverrides,
}

/// Why the switches could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum AdminStoreError {
    /// SQLite failed.
    #[error("operator state {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The stored state is not valid.
    #[error("operator state {path} is not valid ({why}); fix or delete it")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// The database holding one node's [`AdminState`].
pub struct AdminStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// Where node `node_id` keeps its operator state.
pub fn admin_db_path(data_dir: &Path, node_id: &str) -> PathBuf {
    data_dir.join(format!("{node_id}-admin.db"))
}

impl std::fmt::Debug for AdminStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminStore")
            .field("path", &self.path)
            .finish()
    }
}

impl AdminStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, AdminStoreError> {
        let db = |source| AdminStoreError::Db {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(db)?;
        // An acknowledged operator action survives a power loss.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS admin_state (
                 name TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             )",
        )
        .map_err(db)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// The saved switches; the defaults when none were ever saved.
    pub fn load(&self) -> Result<AdminState, AdminStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let text: Option<String> = conn
            .query_row(
                "SELECT value FROM admin_state WHERE name = 'switches'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|source| AdminStoreError::Db {
                path: self.path.clone(),
                source,
            })?;
        let corrupt = |why: String| AdminStoreError::Corrupt {
            path: self.path.clone(),
            why,
        };
        let state: AdminState = match text {
            None => return Ok(AdminState::default()),
            Some(t) => serde_json::from_str(&t).map_err(|e| corrupt(e.to_string()))?,
        };
        state
            .limits
            .validate()
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(state)
    }

    /// Saves `state`, durably, before returning.
    pub fn save(&self, state: &AdminState) -> Result<(), AdminStoreError> {
        let text = serde_json::to_string(state).map_err(|e| AdminStoreError::Corrupt {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO admin_state (name, value) VALUES ('switches', ?1)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![text],
        )
        .map(drop)
        .map_err(|source| AdminStoreError::Db {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_survive_reopening_and_garbage_is_named() {
        let dir = crate::tls::tests::tempdir::Dir::new("admin");
        let path = admin_db_path(dir.path(), "a");
        let s = AdminStore::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), AdminState::default());
        let mut want = AdminState {
            links_out: ["b".to_owned()].into(),
            draining: true,
            ..AdminState::default()
        };
        want.limits
            .sae
            .insert("sae-a".into(), kagi_km::SaeLimit::rate(10, 20));
        s.save(&want).unwrap();
        drop(s);
        let s = AdminStore::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), want);
        s.conn
            .lock()
            .unwrap()
            .execute("UPDATE admin_state SET value = '{\"draining\": 3}'", [])
            .unwrap();
        let err = s.load().unwrap_err().to_string();
        assert!(err.contains("a-admin.db is not valid"), "{err}");
        // A stored limit that cannot work is refused too, not applied.
        s.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE admin_state SET value = '{\"limits\": {\"sae\": {\"x\": {\"bytes_per_second\": 0}}}}'",
                [],
            )
            .unwrap();
        let err = s.load().unwrap_err().to_string();
        assert!(
            err.contains("not valid") && err.contains("burst_bytes"),
            "{err}"
        );
    }
}
