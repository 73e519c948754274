//! The blocks of one half of a link key (or of the grants either way), with their free bytes
//! counted as they change.
//!
//! A link buffer holds thousands of blocks, and the relay asks how much it may spend on every
//! hop, the refill tick on every tick: summing every block per question made that O(blocks).
//! [`Blocks`] keeps the sums up to date on each change instead, so the questions are O(1). Every
//! change goes through its methods; none hands out a `&mut KeyBuf` whose change it would miss.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use kagi_keymat::Key;

use crate::keybuf::{take_sequential_from, KeyBuf};
use crate::msgs::Span;

/// Block id → buffer, plus running sums of its unspent bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Blocks {
    map: ById,
    /// Sum of [`KeyBuf::free`] over every block.
    free: u64,
    /// Sum of [`KeyBuf::tail_free`] over every block.
    tail_free: u64,
    /// Blocks up to this id are counted in `tail_free_upto` (a link's reservation).
    upto: Option<u64>,
    /// Sum of [`KeyBuf::tail_free`] over the blocks with id `<= upto`.
    tail_free_upto: u64,
}

impl Blocks {
    /// Unspent bytes of every block.
    pub(crate) fn free(&self) -> u64 {
        self.free
    }

    /// Bytes a sequential spender can still take from every block.
    pub(crate) fn tail_free(&self) -> u64 {
        self.tail_free
    }

    /// Bytes a sequential spender can still take from the blocks up to [`Self::set_upto`]'s id.
    pub(crate) fn tail_free_upto(&self) -> u64 {
        self.tail_free_upto
    }

    /// Counts the blocks up to `upto` in [`Self::tail_free_upto`] from now on.
    pub(crate) fn set_upto(&mut self, upto: Option<u64>) {
        if upto == self.upto {
            return;
        }
        // A reservation only grows (or is cleared): add the blocks it now covers.
        match (self.upto, upto) {
            (Some(old), Some(new)) if new > old => {
                self.tail_free_upto +=
                    sum_tail(self.map.range((Bound::Excluded(old), Bound::Included(new))));
            }
            (_, Some(new)) => self.tail_free_upto = sum_tail(self.map.range(..=new)),
            (_, None) => self.tail_free_upto = 0,
        }
        self.upto = upto;
    }

    fn covered(&self, id: u64) -> bool {
        self.upto.is_some_and(|u| id <= u)
    }

    fn count(&mut self, id: u64, buf: &KeyBuf) {
        self.free += u64::from(buf.free());
        self.tail_free += u64::from(buf.tail_free());
        if self.covered(id) {
            self.tail_free_upto += u64::from(buf.tail_free());
        }
    }

    fn uncount(&mut self, id: u64, buf: &KeyBuf) {
        self.free -= u64::from(buf.free());
        self.tail_free -= u64::from(buf.tail_free());
        if self.covered(id) {
            self.tail_free_upto -= u64::from(buf.tail_free());
        }
    }

    /// The block `id`.
    pub(crate) fn get(&self, id: &u64) -> Option<&KeyBuf> {
        self.map.get(*id)
    }

    /// True when block `id` is held.
    pub(crate) fn contains_key(&self, id: &u64) -> bool {
        self.map.get(*id).is_some()
    }

    /// Every block, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &KeyBuf)> {
        self.map.range(..)
    }

    /// Every block id, oldest first.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &u64> {
        self.map.range(..).map(|(id, _)| id)
    }

    /// The blocks with ids in `r`, oldest first.
    pub(crate) fn range(&self, r: impl RangeBounds<u64>) -> impl Iterator<Item = (&u64, &KeyBuf)> {
        self.map.range(r)
    }

    /// How many blocks are held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Stores block `id` (replacing one of the same id).
    pub(crate) fn insert(&mut self, id: u64, buf: KeyBuf) {
        self.count(id, &buf);
        if let Some(old) = self.map.insert(id, buf) {
            self.uncount(id, &old);
        }
    }

    /// Removes block `id`.
    pub(crate) fn remove(&mut self, id: &u64) -> Option<KeyBuf> {
        let buf = self.map.remove(*id)?;
        self.uncount(*id, &buf);
        Some(buf)
    }

    /// Removes the oldest block.
    pub(crate) fn pop_first(&mut self) -> Option<(u64, KeyBuf)> {
        let (id, buf) = self.map.pop_first()?;
        self.uncount(id, &buf);
        Some((id, buf))
    }

    /// Keeps the blocks for which `keep` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64, &KeyBuf) -> bool) {
        let gone: Vec<u64> = self
            .map
            .range(..)
            .filter(|(id, b)| !keep(**id, b))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// Drops every block.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.free = 0;
        self.tail_free = 0;
        self.tail_free_upto = 0;
    }

    /// Changes block `id` with `f` (e.g. takes bytes from it), keeping the sums right.
    pub(crate) fn update<R>(&mut self, id: u64, f: impl FnOnce(&mut KeyBuf) -> R) -> Option<R> {
        let covered = self.covered(id);
        let buf = self.map.get_mut(id)?;
        let (free, tail) = (buf.free(), buf.tail_free());
        let r = f(buf);
        let (new_free, new_tail) = (buf.free(), buf.tail_free());
        self.free = self.free - u64::from(free) + u64::from(new_free);
        self.tail_free = self.tail_free - u64::from(tail) + u64::from(new_tail);
        if covered {
            self.tail_free_upto = self.tail_free_upto - u64::from(tail) + u64::from(new_tail);
        }
        Some(r)
    }

    /// Spends `n` bytes sequentially from the oldest blocks (all of them, or those up to
    /// `upto` when given); the caller has checked that enough is free.
    pub(crate) fn take_sequential(&mut self, upto: Option<u64>, n: u32) -> (Vec<Span>, Key) {
        let taken = match upto {
            Some(u) => take_sequential_from(self.map.range_mut(..=u), n),
            None => take_sequential_from(self.map.range_mut(..), n),
        };
        // Each span was taken from its block's tail: the sums fall by exactly its length.
        for s in &taken.0 {
            let len = u64::from(s.len);
            self.free -= len;
            self.tail_free -= len;
            if self.covered(s.id) {
                self.tail_free_upto -= len;
            }
        }
        taken
    }
}

/// Blocks sorted by id in a ring buffer. Ids arrive in increasing order and the oldest leave
/// first, so inserting and evicting are O(1) at the ends and a lookup is a binary search over
/// contiguous memory: a B-tree of thousands of blocks walked several nodes for each, and
/// `update` took a block out and put it back.
#[derive(Debug, Clone, Default)]
struct ById(VecDeque<(u64, KeyBuf)>);

impl ById {
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(i, _)| *i)
    }

    fn get(&self, id: u64) -> Option<&KeyBuf> {
        self.find(id).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut KeyBuf> {
        let i = self.find(id).ok()?;
        Some(&mut self.0[i].1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Stores `buf` as block `id`; returns the block it replaced.
    fn insert(&mut self, id: u64, buf: KeyBuf) -> Option<KeyBuf> {
        if self.0.back().is_none_or(|(last, _)| *last < id) {
            self.0.push_back((id, buf));
            return None;
        }
        match self.find(id) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, buf)),
            Err(i) => {
                self.0.insert(i, (id, buf));
                None
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<KeyBuf> {
        let i = self.find(id).ok()?;
        self.0.remove(i).map(|(_, b)| b)
    }

    fn pop_first(&mut self) -> Option<(u64, KeyBuf)> {
        self.0.pop_front()
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// The positions of the blocks with ids in `r`.
    fn positions(&self, r: &impl RangeBounds<u64>) -> std::ops::Range<usize> {
        let start = match r.start_bound() {
            Bound::Included(s) => self.0.partition_point(|(i, _)| i < s),
            Bound::Excluded(s) => self.0.partition_point(|(i, _)| i <= s),
            Bound::Unbounded => 0,
        };
        let end = match r.end_bound() {
            Bound::Included(e) => self.0.partition_point(|(i, _)| i <= e),
            Bound::Excluded(e) => self.0.partition_point(|(i, _)| i < e),
            Bound::Unbounded => self.0.len(),
        };
        start..end.max(start)
    }

    fn range(&self, r: impl RangeBounds<u64>) -> impl Iterator<Item = (&u64, &KeyBuf)> {
        self.0.range(self.positions(&r)).map(|(i, b)| (i, b))
    }

    fn range_mut(&mut self, r: impl RangeBounds<u64>) -> impl Iterator<Item = (&u64, &mut KeyBuf)> {
        let p = self.positions(&r);
        self.0.range_mut(p).map(|(i, b)| (&*i, b))
    }
}

fn sum_tail<'a>(it: impl Iterator<Item = (&'a u64, &'a KeyBuf)>) -> u64 {
    it.map(|(_, b)| u64::from(b.tail_free())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sums, recomputed from every block.
    fn recount(b: &Blocks) -> (u64, u64, u64) {
        let free = b.map.range(..).map(|(_, x)| u64::from(x.free())).sum();
        let tail = sum_tail(b.map.range(..));
        let upto = b.upto.map_or(0, |u| sum_tail(b.map.range(..=u)));
        (free, tail, upto)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u8),
        Remove(u64),
        PopFirst,
        RetainAbove(u64),
        Clear,
        Take(u64, u8, u8),
        Sequential(Option<u64>, u8),
        Upto(Option<u64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..12u64, 1..40u8).prop_map(|(i, n)| Op::Insert(i, n)),
            (0..12u64).prop_map(Op::Remove),
            Just(Op::PopFirst),
            (0..12u64).prop_map(Op::RetainAbove),
            Just(Op::Clear),
            (0..12u64, 0..40u8, 1..10u8).prop_map(|(i, s, l)| Op::Take(i, s, l)),
            (proptest::option::of(0..12u64), 0..60u8).prop_map(|(u, n)| Op::Sequential(u, n)),
            proptest::option::of(0..12u64).prop_map(Op::Upto),
        ]
    }

    proptest! {
        /// Whatever happens to the blocks, the kept sums equal the sums over every block.
        #[test]
        fn sums_follow_every_change(ops in proptest::collection::vec(op(), 1..60)) {
            let mut b = Blocks::default();
            for o in ops {
                match o {
                    Op::Insert(i, n) => b.insert(i, KeyBuf::new(Key::zeroed(usize::from(n)))),
                    Op::Remove(i) => { b.remove(&i); }
                    Op::PopFirst => { b.pop_first(); }
                    Op::RetainAbove(i) => b.retain(|id, _| id > i),
                    Op::Clear => b.clear(),
                    Op::Take(i, s, l) => { b.update(i, |x| x.take(u32::from(s), u32::from(l)).ok()); }
                    Op::Sequential(u, n) => {
                        let free = match u {
                            Some(u) => sum_tail(b.map.range(..=u)),
                            None => b.tail_free(),
                        };
                        let n = u32::from(n).min(free as u32);
                        let (spans, key) = b.take_sequential(u, n);
                        prop_assert_eq!(key.len() as u32, n);
                        prop_assert_eq!(spans.iter().map(|s| s.len).sum::<u32>(), n);
                    }
                    Op::Upto(u) => {
                        // A reservation only grows, or is cleared.
                        let u = match (b.upto, u) {
                            (Some(old), Some(new)) => Some(old.max(new)),
                            (_, u) => u,
                        };
                        b.set_upto(u);
                    }
                }
                prop_assert_eq!((b.free(), b.tail_free(), b.tail_free_upto()), recount(&b));
            }
        }
    }
}

#[cfg(test)]
mod by_id_tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// The ring buffer answers as an ordered map would, whatever order ids come in.
        #[test]
        fn by_id_agrees_with_an_ordered_map(
            ops in proptest::collection::vec((0..4u8, 0..40u64, 0..40u64), 1..120),
        ) {
            let mut b = ById::default();
            let mut m: BTreeMap<u64, u32> = BTreeMap::new();
            for (op, x, y) in ops {
                match op {
                    0 => {
                        let len = (x + y) as usize % 7 + 1;
                        let old = b.insert(x, KeyBuf::new(Key::zeroed(len))).map(|k| k.free());
                        prop_assert_eq!(old, m.insert(x, len as u32));
                    }
                    1 => prop_assert_eq!(b.remove(x).map(|k| k.free()), m.remove(&x)),
                    2 => prop_assert_eq!(
                        b.pop_first().map(|(i, k)| (i, k.free())),
                        m.pop_first()
                    ),
                    _ => {
                        let (lo, hi) = (x.min(y), x.max(y));
                        let got: Vec<(u64, u32)> =
                            b.range(lo..=hi).map(|(i, k)| (*i, k.free())).collect();
                        let want: Vec<(u64, u32)> = m.range(lo..=hi).map(|(i, n)| (*i, *n)).collect();
                        prop_assert_eq!(got, want);
                        let got: Vec<u64> = b
                            .range((Bound::Excluded(lo), Bound::Excluded(hi)))
                            .map(|(i, _)| *i)
                            .collect();
                        let want: Vec<u64> = m
                            .range((Bound::Excluded(lo), Bound::Unbounded))
                            .map(|(i, _)| *i)
                            .filter(|i| *i < hi)
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(b.len(), m.len());
                prop_assert_eq!(b.get(x).map(KeyBuf::free), m.get(&x).copied());
            }
        }
    }
}
