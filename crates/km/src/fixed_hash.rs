//! Hashed maps and sets for the core's hot lookups by node name or store entity.
//!
//! The hasher has fixed keys: no OS entropy in the core, and the same run every time. Maps
//! built on it are for lookups; where their order could reach behaviour, callers sort first.
//! Their keys are names from the topology or the node's own records, never chosen freely by a
//! peer, so a fixed-key hash is no flooding risk.

/// The fixed-key hasher builder (foldhash's fast hash: far cheaper than SipHash on short names).
pub type FixedState = foldhash::fast::FixedState;

/// A hash map with [`FixedState`].
pub type FixedMap<K, V> = std::collections::HashMap<K, V, FixedState>;

/// A hash set with [`FixedState`].
pub type FixedSet<K> = std::collections::HashSet<K, FixedState>;
