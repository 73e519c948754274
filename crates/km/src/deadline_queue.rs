//! An ordered set for deadlines that almost always arrive in order.
//!
//! A slave's grace and a key's lifetime each end a fixed span after the moment they start, and
//! time only moves on, so each new entry sorts at or near the end. A deque kept sorted takes
//! them at the back and hands out the earliest from the front, where a B-tree walks its levels
//! (a cache miss each in a tree of hundreds of thousands) for both. It keeps exactly a
//! `BTreeSet`'s order and semantics, so nothing downstream can tell them apart.

use std::collections::VecDeque;

/// A set of `T` in ascending order, for entries that mostly arrive in order.
#[derive(Debug, Clone)]
pub(crate) struct DeadlineQueue<T>(VecDeque<T>);

impl<T> Default for DeadlineQueue<T> {
    fn default() -> Self {
        Self(VecDeque::new())
    }
}

impl<T: Ord> DeadlineQueue<T> {
    /// Adds `x`; false (and nothing changes) if it is already held.
    pub(crate) fn insert(&mut self, x: T) -> bool {
        if self.0.back().is_none_or(|b| *b < x) {
            self.0.push_back(x);
            return true;
        }
        match self.0.binary_search(&x) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, x);
                true
            }
        }
    }

    /// The smallest entry.
    pub(crate) fn first(&self) -> Option<&T> {
        self.0.front()
    }

    /// Removes and returns the smallest entry.
    pub(crate) fn pop_first(&mut self) -> Option<T> {
        self.0.pop_front()
    }

    /// How many entries are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::DeadlineQueue;

    proptest! {
        /// Any mix of inserts (in order, out of order, repeated) and pops behaves exactly as a
        /// `BTreeSet` does.
        #[test]
        fn behaves_as_an_ordered_set(ops in proptest::collection::vec((0u8..4, 0u16..200), 0..400)) {
            let mut q = DeadlineQueue::default();
            let mut s = BTreeSet::new();
            let mut clock = 0u16;
            for (op, x) in ops {
                match op {
                    // Mostly in order, as deadlines arrive; sometimes anywhere.
                    0 | 1 => {
                        clock = clock.saturating_add(x % 3);
                        prop_assert_eq!(q.insert(clock), s.insert(clock));
                    }
                    2 => prop_assert_eq!(q.insert(x), s.insert(x)),
                    _ => prop_assert_eq!(q.pop_first(), s.pop_first()),
                }
                prop_assert_eq!(q.first(), s.first());
                prop_assert_eq!(q.len(), s.len());
            }
        }
    }
}
