//! The blocks of one half of a link key (or of the grants either way), with their free bytes
//! counted as they change.
//!
//! A link buffer holds thousands of blocks, and the relay asks how much it may spend on every
//! hop, the refill tick on every tick: summing every block per question made that O(blocks).
//! [`Blocks`] keeps the sums up to date on each change instead, so the questions are O(1). Every
//! change goes through its methods; none hands out a `&mut KeyBuf` whose change it would miss.

use std::collections::BTreeMap;
use std::ops::RangeBounds;

use kagi_keymat::Key;

use crate::keybuf::{take_sequential_from, KeyBuf};
use crate::msgs::Span;

/// Block id → buffer, plus running sums of its unspent bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Blocks {
    map: BTreeMap<u64, KeyBuf>,
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
                self.tail_free_upto += sum_tail(self.map.range(old + 1..=new));
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
        self.map.get(id)
    }

    /// True when block `id` is held.
    pub(crate) fn contains_key(&self, id: &u64) -> bool {
        self.map.contains_key(id)
    }

    /// Every block, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &KeyBuf)> {
        self.map.iter()
    }

    /// Every block id, oldest first.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &u64> {
        self.map.keys()
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
        let buf = self.map.remove(id)?;
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
            .iter()
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
        let mut buf = self.map.remove(&id)?;
        self.uncount(id, &buf);
        let r = f(&mut buf);
        self.count(id, &buf);
        self.map.insert(id, buf);
        Some(r)
    }

    /// Spends `n` bytes sequentially from the oldest blocks (all of them, or those up to
    /// `upto` when given); the caller has checked that enough is free.
    pub(crate) fn take_sequential(&mut self, upto: Option<u64>, n: u32) -> (Vec<Span>, Key) {
        let taken = match upto {
            Some(u) => take_sequential_from(self.map.range_mut(..=u), n),
            None => take_sequential_from(self.map.iter_mut(), n),
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

fn sum_tail<'a>(it: impl Iterator<Item = (&'a u64, &'a KeyBuf)>) -> u64 {
    it.map(|(_, b)| u64::from(b.tail_free())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sums, recomputed from every block.
    fn recount(b: &Blocks) -> (u64, u64, u64) {
        let free = b.map.values().map(|x| u64::from(x.free())).sum();
        let tail = sum_tail(b.map.iter());
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
