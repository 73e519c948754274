//! Rebuilt key material, in memory only: an entry lives while it is used and is dropped (and so
//! zeroized: [`kagi_keymat::Key`]) once it has been idle longer than the configured time, or at
//! once when its key is disabled or revoked. Concurrent requests for a key that is not cached
//! wait on one rebuild instead of each rebuilding it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kagi_keymat::Key;

struct Entry {
    key: Arc<Key>,
    object: String,
    last_used: Instant,
}

/// The cache.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, Entry>>,
    rebuilding: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyCache {
    /// The cached material of key `id` built from `object`, marking it used.
    pub fn get(&self, id: &str, object: &str, now: Instant) -> Option<Arc<Key>> {
        let mut e = self.entries.lock().ok()?;
        let entry = e.get_mut(id)?;
        if entry.object != object {
            return None;
        }
        entry.last_used = now;
        Some(entry.key.clone())
    }

    /// Stores rebuilt material.
    pub fn put(&self, id: &str, object: &str, key: Key, now: Instant) -> Arc<Key> {
        let key = Arc::new(key);
        if let Ok(mut e) = self.entries.lock() {
            e.insert(
                id.to_string(),
                Entry {
                    key: key.clone(),
                    object: object.to_string(),
                    last_used: now,
                },
            );
        }
        key
    }

    /// The lock that serialises rebuilds of `id`.
    pub fn rebuild_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.rebuilding.lock() {
            Ok(mut m) => m.entry(id.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Drops `id` now.
    pub fn evict(&self, id: &str) -> bool {
        self.entries
            .lock()
            .map(|mut e| e.remove(id).is_some())
            .unwrap_or(false)
    }

    /// Drops every entry not used for `idle`; returns the IDs dropped.
    pub fn sweep(&self, now: Instant, idle: Duration) -> Vec<String> {
        let Ok(mut e) = self.entries.lock() else {
            return Vec::new();
        };
        let old: Vec<String> = e
            .iter()
            .filter(|(_, v)| now.saturating_duration_since(v.last_used) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            e.remove(k);
        }
        old
    }

    /// Keys held now.
    pub fn held(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .lock()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}
