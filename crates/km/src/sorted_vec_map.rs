//! A map kept as a vector sorted by key, for the handful of entries a node keeps per neighbour:
//! a binary search over a few adjacent entries beats a B-tree's hops from node to node, and
//! iteration stays in key order (what the node's adverts and records are built in).

/// A map over few keys, in key order.
#[derive(Debug, Clone)]
pub(crate) struct SortedVecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SortedVecMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> SortedVecMap<K, V> {
    fn position(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.position(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, to change.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.position(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` has a value.
    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_ok()
    }

    /// The value of `key`, inserted as the default first if there was none.
    pub(crate) fn get_or_insert_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.position(&key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key, V::default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

/// As a `BTreeMap` collects: in key order, the last value of a repeated key kept.
impl<K: Ord, V> FromIterator<(K, V)> for SortedVecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        // Stable: of equal keys the last collected stays last, and is the one kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for e in entries {
            match kept.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => kept.push(e),
            }
        }
        Self { entries: kept }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #[test]
        fn behaves_as_a_btree_map(
            start in proptest::collection::vec((0u8..12, any::<u16>()), 0..12),
            ops in proptest::collection::vec((0u8..3, 0u8..14, any::<u16>()), 0..40),
        ) {
            let mut ours: SortedVecMap<u8, u16> = start.iter().copied().collect();
            let mut model: BTreeMap<u8, u16> = start.iter().copied().collect();
            for (op, k, v) in ops {
                match op {
                    0 => {
                        *ours.get_or_insert_default(k) += v % 7;
                        *model.entry(k).or_default() += v % 7;
                    }
                    1 => {
                        if let Some(x) = ours.get_mut(&k) {
                            *x = v;
                        }
                        if let Some(x) = model.get_mut(&k) {
                            *x = v;
                        }
                    }
                    _ => {
                        prop_assert_eq!(ours.get(&k), model.get(&k));
                        prop_assert_eq!(ours.contains_key(&k), model.contains_key(&k));
                    }
                }
            }
            let got: Vec<(u8, u16)> = ours.iter().map(|(k, v)| (*k, *v)).collect();
            let want: Vec<(u8, u16)> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}
