//! Names of nodes and SAEs, stored inline when short.
//!
//! The core keys a dozen maps by node (links, pools, liveness, adverts, reconciliation) and
//! looks an SAE's node up on every request, and a simulated network does so millions of times
//! a second. A name of at most [`INLINE_LEN`] bytes (every name in the shipped topologies)
//! lives inside the value: comparing two is three word comparisons and cloning one is a copy,
//! with no heap pointer to follow (a cache miss per probe of a large map) and no allocation. Longer names (topologies allow up to 128 bytes) fall back to a shared heap string.
//! Either way the order is exactly the order of the names as strings, so maps iterate as they
//! would with `String` keys, and the wire form is the plain string.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest name kept inline.
pub const INLINE_LEN: usize = 24;

/// A node's or an SAE's name, as the topology spells it.
#[derive(Clone)]
pub struct Name(Repr);

/// A node ID: the node's name in the topology.
pub type NodeId = Name;

/// Names of at most [`INLINE_LEN`] bytes are always inline and longer ones always on the heap,
/// so equal names have equal representations.
#[derive(Clone)]
enum Repr {
    /// The name's bytes, zero padded, and its length.
    Inline { bytes: [u8; INLINE_LEN], len: u8 },
    /// A name longer than [`INLINE_LEN`] bytes.
    Heap(Arc<str>),
}

impl Name {
    /// The ID named `name`.
    pub fn new(name: &str) -> Self {
        if name.len() <= INLINE_LEN {
            let mut bytes = [0; INLINE_LEN];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            // The length fits: it is at most INLINE_LEN.
            let len = name.len() as u8;
            Name(Repr::Inline { bytes, len })
        } else {
            Name(Repr::Heap(Arc::from(name)))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid: the bytes were copied whole from a `&str`.
            Repr::Inline { bytes, len } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Heap(name) => name,
        }
    }
}

/// The inline bytes as big-endian words, whose order is the bytes' lexicographic order.
fn words(bytes: &[u8; INLINE_LEN]) -> [u64; INLINE_LEN / 8] {
    let mut out = [0; INLINE_LEN / 8];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0; 8];
        b.copy_from_slice(chunk);
        *word = u64::from_be_bytes(b);
    }
    out
}

impl Default for Name {
    fn default() -> Self {
        Name::new("")
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Inline { bytes: a, len: la }, Repr::Inline { bytes: b, len: lb }) => {
                la == lb && a == b
            }
            (Repr::Heap(a), Repr::Heap(b)) => a == b,
            // Names of different lengths.
            _ => false,
        }
    }
}

impl Eq for Name {}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // Zero padding sorts a prefix first, and the lengths break the tie of a name and
            // the same name followed by NULs: exactly `str`'s order.
            (Repr::Inline { bytes: a, len: la }, Repr::Inline { bytes: b, len: lb }) => {
                words(a).cmp(&words(b)).then(la.cmp(lb))
            }
            _ => self.as_str().cmp(other.as_str()),
        }
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Hashes as the name's `str` does, so that maps keyed by ID can be looked up by `&str`.
impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            // What `str`'s hash writes (its bytes, then 0xff), without re-checking the UTF-8.
            Repr::Inline { bytes, len } => {
                state.write(&bytes[..usize::from(*len)]);
                state.write_u8(0xff);
            }
            Repr::Heap(name) => name.hash(state),
        }
    }
}

/// Lookups by `&str` work, but compare as strings: the core's hot paths look up by `&Name`.
impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Self {
        Name::new(name)
    }
}

impl From<&String> for Name {
    fn from(name: &String) -> Self {
        Name::new(name)
    }
}

impl From<String> for Name {
    fn from(name: String) -> Self {
        Name::new(&name)
    }
}

impl From<&Name> for Name {
    fn from(id: &Name) -> Self {
        id.clone()
    }
}

impl From<Name> for String {
    fn from(id: Name) -> Self {
        id.as_str().to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl Visitor<'_> for NameVisitor {
            type Value = Name;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node ID string")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Name, E> {
                Ok(Name::new(name))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of(id: &Name) -> u64 {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    #[test]
    fn short_and_long_names_round_trip() {
        for name in [
            "",
            "a",
            "n0-0",
            "tokyo-otemachi-backbone1",
            &"x".repeat(128),
        ] {
            let id = Name::from(name);
            assert_eq!(id.as_str(), name);
            assert_eq!(id, name);
            let wire = postcard::to_allocvec(&id).unwrap();
            assert_eq!(wire, postcard::to_allocvec(name).unwrap());
            let back: Name = postcard::from_bytes(&wire).unwrap();
            assert_eq!(back, id);
        }
    }

    #[test]
    fn a_name_is_four_words() {
        // What a clone copies and what every map key of the core costs.
        assert_eq!(std::mem::size_of::<Name>(), 32);
    }

    #[test]
    fn order_breaks_ties_of_trailing_nuls_by_length() {
        let a = Name::from("a");
        let b = Name::from("a\0");
        assert_eq!(a.cmp(&b), Ordering::Less);
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn order_equality_and_hash_follow_the_names(
            a in "[a-c\\x00]{0,30}",
            b in "[a-c\\x00]{0,30}",
        ) {
            let (x, y) = (Name::from(a.as_str()), Name::from(b.as_str()));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
            if a == b {
                prop_assert_eq!(hash_of(&x), hash_of(&y));
            }
            let mut h = DefaultHasher::new();
            a.as_str().hash(&mut h);
            prop_assert_eq!(hash_of(&x), h.finish());
        }
    }
}
