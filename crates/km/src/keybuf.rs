//! A buffer of key bytes that is spent by ranges, each byte at most once.
//!
//! Used for both halves of a link key block and for end-to-end pool chunks. Spent bytes are
//! zeroized in place immediately, and the spent ranges are remembered so that a replayed or
//! duplicated reference is refused instead of spending the same key twice.

use kagi_keymat::Key;
use serde::{Deserialize, Serialize};

/// Why a range could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// The range reaches beyond the buffer.
    #[error("range beyond buffer")]
    OutOfBounds,
    /// Part of the range was already spent.
    #[error("range already spent")]
    AlreadySpent,
}

/// Key bytes plus the sorted, disjoint ranges already spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBuf {
    data: Key,
    /// Sorted, disjoint, non-adjacent `[start, end)` ranges.
    spent: Vec<(u32, u32)>,
}

impl KeyBuf {
    /// A fresh buffer with nothing spent.
    pub fn new(data: Key) -> Self {
        Self {
            data,
            spent: Vec::new(),
        }
    }

    /// Rebuilds a buffer from stored parts (spent bytes are expected to be zero already).
    pub fn from_parts(data: Key, spent: Vec<(u32, u32)>) -> Self {
        let mut b = Self {
            data,
            spent: Vec::new(),
        };
        for (s, e) in spent {
            // Tolerate stored overlaps by merging; bounds are clamped.
            let e = e.min(b.len());
            if s < e {
                b.mark(s, e);
            }
        }
        b
    }

    /// The stored parts: bytes (spent ones zeroed) and spent ranges.
    pub fn parts(&self) -> (&Key, &[(u32, u32)]) {
        (&self.data, &self.spent)
    }

    /// Total length in bytes.
    pub fn len(&self) -> u32 {
        self.data.len() as u32
    }

    /// True when the buffer has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Unspent bytes.
    pub fn free(&self) -> u32 {
        self.len() - self.spent.iter().map(|(s, e)| e - s).sum::<u32>()
    }

    /// True when every byte has been spent.
    pub fn exhausted(&self) -> bool {
        self.free() == 0
    }

    /// Where sequential spending continues: the end of the last spent range.
    pub fn tail(&self) -> u32 {
        self.spent.last().map_or(0, |r| r.1)
    }

    /// Bytes available after [`Self::tail`] (what a sequential spender can still take).
    pub fn tail_free(&self) -> u32 {
        self.len() - self.tail()
    }

    /// Takes `len` bytes at `start`, zeroizing them here. Refuses ranges already (partly) spent.
    pub fn take(&mut self, start: u32, len: u32) -> Result<Key, TakeError> {
        let end = start.checked_add(len).ok_or(TakeError::OutOfBounds)?;
        if end > self.len() {
            return Err(TakeError::OutOfBounds);
        }
        if self.spent.iter().any(|&(s, e)| s < end && start < e) {
            return Err(TakeError::AlreadySpent);
        }
        let range = start as usize..end as usize;
        let out = Key::from_slice(&self.data.expose()[range.clone()]);
        self.data.expose_mut()[range].fill(0);
        self.mark(start, end);
        Ok(out)
    }

    /// Checks that a range could be taken, without taking it.
    pub fn can_take(&self, start: u32, len: u32) -> Result<(), TakeError> {
        let end = start.checked_add(len).ok_or(TakeError::OutOfBounds)?;
        if end > self.len() {
            return Err(TakeError::OutOfBounds);
        }
        if self.spent.iter().any(|&(s, e)| s < end && start < e) {
            return Err(TakeError::AlreadySpent);
        }
        Ok(())
    }

    fn mark(&mut self, start: u32, end: u32) {
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.spent.len() + 1);
        let (mut s, mut e) = (start, end);
        for &(a, b) in &self.spent {
            if b < s || a > e {
                merged.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        merged.push((s, e));
        merged.sort_unstable();
        self.spent = merged;
    }
}

/// Serialized form of a [`KeyBuf`] inside store records.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBufParts {
    /// Bytes (spent ones zeroed).
    #[serde(with = "crate::record::key_serde")]
    pub data: Key,
    /// Spent ranges.
    pub spent: Vec<(u32, u32)>,
}

impl std::fmt::Debug for KeyBufParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyBufParts({:?}, spent {:?})", self.data, self.spent)
    }
}

impl From<&KeyBuf> for KeyBufParts {
    fn from(b: &KeyBuf) -> Self {
        Self {
            data: b.data.clone(),
            spent: b.spent.clone(),
        }
    }
}

impl From<KeyBufParts> for KeyBuf {
    fn from(p: KeyBufParts) -> Self {
        KeyBuf::from_parts(p.data, p.spent)
    }
}

/// Spends `n` bytes from the front of a sequentially spent buffer map (link half or out-pool),
/// oldest entry first; the caller has checked that enough is free. Returns the spans taken.
pub(crate) fn take_sequential(
    m: &mut std::collections::BTreeMap<u64, KeyBuf>,
    n: u32,
) -> (Vec<crate::msgs::Span>, Key) {
    take_sequential_from(m.iter_mut(), n)
}

/// [`take_sequential`] over some of a map's buffers (e.g. a range of block ids), in the
/// iterator's order.
pub(crate) fn take_sequential_from<'a>(
    bufs: impl Iterator<Item = (&'a u64, &'a mut KeyBuf)>,
    n: u32,
) -> (Vec<crate::msgs::Span>, Key) {
    let mut spans = Vec::new();
    let mut out = Key::zeroed(0);
    let mut need = n;
    for (&id, buf) in bufs {
        if need == 0 {
            break;
        }
        let take = buf.tail_free().min(need);
        if take == 0 {
            continue;
        }
        let start = buf.tail();
        out.extend_from(&buf.take(start, take).expect("tail range is free"));
        spans.push(crate::msgs::Span {
            id,
            start,
            len: take,
        });
        need -= take;
    }
    (spans, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_each_byte_once() {
        let mut b = KeyBuf::new(Key::from_slice(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(b.take(1, 2).unwrap().expose(), &[2, 3]);
        assert_eq!(b.take(2, 2), Err(TakeError::AlreadySpent));
        assert_eq!(b.take(5, 2), Err(TakeError::OutOfBounds));
        assert_eq!(b.free(), 4);
        assert_eq!(b.tail(), 3);
        assert_eq!(b.take(0, 1).unwrap().expose(), &[1]);
        assert_eq!(b.parts().1, &[(0, 3)]);
        assert_eq!(b.parts().0.expose(), &[0, 0, 0, 4, 5, 6]);
        assert_eq!(b.take(3, 3).unwrap().expose(), &[4, 5, 6]);
        assert!(b.exhausted());
        assert_eq!(b.take(u32::MAX, 2), Err(TakeError::OutOfBounds));
    }

    #[test]
    fn restores_from_parts() {
        let mut b = KeyBuf::new(Key::from_slice(&[9; 8]));
        b.take(2, 2).unwrap();
        let p = KeyBufParts::from(&b);
        let mut c: KeyBuf = p.into();
        assert_eq!(c.take(3, 1), Err(TakeError::AlreadySpent));
        assert_eq!(c.free(), 6);
    }
}
