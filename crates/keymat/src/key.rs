//! The key type.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes held by every live [`Key`] in this process.
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by all [`Key`]s alive in this process now: what a tamper response must bring to
/// zero (a key's bytes are wiped before its count is released). A lazy key
/// ([`Key::lazy`]) counts only once its bytes have been produced.
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// A deterministic generator of key bytes, addressed by byte offset: what a lazy key
/// ([`Key::lazy`]) reads its bytes from when, and only when, someone reads or writes them.
///
/// **For the simulator only.** A source generates key, so it is as secret as the key it stands
/// for; a node never constructs lazy keys (its key comes from QKD devices, peers and its store,
/// always as bytes). The simulator uses it to hand out terabytes of link key that is mostly
/// never read without producing the bytes.
pub trait LazyKeySource: Send + Sync {
    /// Writes the source's bytes `offset..offset + out.len()` into `out`. The same offset must
    /// always give the same bytes, and a byte's value must not depend on where a range starts.
    fn fill(&self, offset: u64, out: &mut [u8]);
}

/// Secret key bytes. Zeroized on drop, redacted in `Debug`/`Display`, compared in constant time.
///
/// `Key` deliberately implements neither `Serialize` nor `Clone`-free copying tricks: to move key
/// bytes into a wire message or a store record, call [`Key::expose`] at the single place that
/// needs it, so every exposure is greppable.
///
/// Clones share one allocation until one of them writes (copy on write): a store record made
/// from a link block costs no copy of its bytes. A write to a shared key first gives that key a
/// private copy, so every clone behaves as an independent copy; the shared bytes are wiped when
/// the last key holding them drops.
///
/// A key may also be lazy ([`Key::lazy`], simulator only): a range of a [`LazyKeySource`] whose
/// bytes are produced the first time they are read or written. Lengths, clones, sub-ranges
/// ([`Key::copy_range`], [`Key::take_front`]) and drops stay lazy; every operation gives exactly
/// the bytes it would give on the materialised key.
pub struct Key {
    buf: Arc<Store>,
}

/// What a key's bytes are: bytes, or a range of a source not necessarily produced yet.
enum Store {
    Bytes(Bytes),
    Lazy(Lazy),
}

/// A range of a [`LazyKeySource`], materialised at most once (then read-only: a write gives the
/// writing key its own [`Bytes`]).
struct Lazy {
    source: Arc<dyn LazyKeySource>,
    offset: u64,
    len: usize,
    bytes: OnceLock<Bytes>,
}

impl Lazy {
    /// The range's bytes, produced (and counted in [`live_bytes`]) on first use.
    fn get(&self) -> &[u8] {
        &self
            .bytes
            .get_or_init(|| {
                let mut v = vec![0; self.len];
                self.source.fill(self.offset, &mut v);
                Bytes::new(v)
            })
            .v
    }

    /// Writes the range's bytes into `out` (as long as the range) without materialising them
    /// here.
    fn fill(&self, out: &mut [u8]) {
        match self.bytes.get() {
            Some(b) => out.copy_from_slice(&b.v),
            None => self.source.fill(self.offset, out),
        }
    }

    /// The sub-range `start..end` (within `0..len`), not materialised.
    fn sub(&self, start: usize, end: usize) -> Lazy {
        Lazy {
            source: Arc::clone(&self.source),
            offset: self.offset + start as u64,
            len: end - start,
            bytes: OnceLock::new(),
        }
    }
}

/// One allocation of key bytes: wiped when freed, counted in [`live_bytes`] once however many
/// keys share it.
struct Bytes {
    v: Vec<u8>,
    /// Bytes this allocation added to [`live_bytes`].
    counted: usize,
}

impl Bytes {
    fn new(v: Vec<u8>) -> Self {
        LIVE_BYTES.fetch_add(v.len(), Ordering::Relaxed);
        Self {
            counted: v.len(),
            v,
        }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        // Zeroize clears the whole capacity of a Vec, including stale bytes left in spare
        // capacity by `take_front`.
        self.v.zeroize();
        LIVE_BYTES.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

impl Default for Key {
    fn default() -> Self {
        Self::from_vec(Vec::new())
    }
}

impl Zeroize for Key {
    /// Wipes this key's bytes and leaves it empty. Bytes shared with clones are theirs as much as
    /// this key's: this key lets go of them (they are wiped when the last holder drops).
    fn zeroize(&mut self) {
        match Arc::get_mut(&mut self.buf) {
            Some(Store::Bytes(b)) => b.v.zeroize(),
            // A lazy range (materialised or not), or shared bytes: let go (produced bytes are
            // wiped when their last holder drops).
            _ => *self = Key::default(),
        }
    }
}

impl ZeroizeOnDrop for Key {}

impl Clone for Key {
    /// Shares the bytes (no copy until one of the keys writes).
    fn clone(&self) -> Self {
        Self {
            buf: Arc::clone(&self.buf),
        }
    }
}

impl Key {
    /// Takes ownership of `bytes` (the vector is zeroized when the key drops).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self {
            buf: Arc::new(Store::Bytes(Bytes::new(bytes))),
        }
    }

    /// Copies `bytes` into a new key. The caller remains responsible for its own copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::from_vec(bytes.to_vec())
    }

    /// A key of `len` zero bytes, to be filled in place.
    pub fn zeroed(len: usize) -> Self {
        Self::from_vec(vec![0; len])
    }

    /// A lazy key: bytes `offset..offset + len` of `source`, produced only when first read or
    /// written. **Simulator only** (see [`LazyKeySource`]): a node never constructs one.
    pub fn lazy(source: Arc<dyn LazyKeySource>, offset: u64, len: usize) -> Self {
        Self {
            buf: Arc::new(Store::Lazy(Lazy {
                source,
                offset,
                len,
                bytes: OnceLock::new(),
            })),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match &*self.buf {
            Store::Bytes(b) => b.v.len(),
            Store::Lazy(l) => l.len,
        }
    }

    /// True when the key holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The secret bytes. Every call site is an exposure point: keep them few and never log them.
    /// A lazy key produces its bytes here (once).
    pub fn expose(&self) -> &[u8] {
        match &*self.buf {
            Store::Bytes(b) => &b.v,
            Store::Lazy(l) => l.get(),
        }
    }

    /// This key's own bytes, to write to: a key that shares its bytes with clones gets a private
    /// copy first; a lazy key takes its produced bytes if it is their only holder, or else
    /// produces a private copy.
    fn own(&mut self) -> &mut Bytes {
        let owned = match Arc::get_mut(&mut self.buf) {
            Some(Store::Bytes(_)) => None,
            Some(Store::Lazy(l)) => Some(match l.bytes.take() {
                Some(b) => b,
                None => {
                    let mut v = vec![0; l.len];
                    l.fill(&mut v);
                    Bytes::new(v)
                }
            }),
            None => Some(Bytes::new(self.to_vec())),
        };
        if let Some(b) = owned {
            self.buf = Arc::new(Store::Bytes(b));
        }
        match Arc::get_mut(&mut self.buf) {
            Some(Store::Bytes(b)) => b,
            _ => unreachable!("made unique bytes above"),
        }
    }

    /// A copy of the bytes in a new vector (a lazy key's are produced into it, not kept).
    fn to_vec(&self) -> Vec<u8> {
        match &*self.buf {
            Store::Bytes(b) => b.v.clone(),
            Store::Lazy(l) => {
                let mut v = vec![0; l.len];
                l.fill(&mut v);
                v
            }
        }
    }

    /// Mutable access to the secret bytes (for XOR-ing pads in place). A key that shares its
    /// bytes with clones gets a private copy first.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.own().v
    }

    /// A new key holding a copy of the bytes in `range` (clamped to the length); `self` is
    /// unchanged. Splitting a block into halves this way copies each byte once, where
    /// [`Key::take_front`] also shifts the rest of the buffer down. On a lazy key the copy is a
    /// lazy sub-range: nothing is produced.
    pub fn copy_range(&self, range: std::ops::Range<usize>) -> Key {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        match &*self.buf {
            Store::Bytes(b) => Key::from_slice(&b.v[start..end]),
            Store::Lazy(l) => Key {
                buf: Arc::new(Store::Lazy(l.sub(start, end))),
            },
        }
    }

    /// Splits off and returns the first `n` bytes as a new key (`n` is clamped to the length).
    /// The remaining bytes stay in `self`; the moved-out bytes are wiped from the old buffer.
    /// On a lazy key both parts stay lazy.
    pub fn take_front(&mut self, n: usize) -> Key {
        let n = n.min(self.len());
        if let Store::Lazy(l) = &*self.buf {
            let front = Key {
                buf: Arc::new(Store::Lazy(l.sub(0, n))),
            };
            // Produced bytes of the whole range, if any, are wiped when their last holder
            // drops.
            self.buf = Arc::new(Store::Lazy(l.sub(n, l.len)));
            return front;
        }
        let front = self.copy_range(0..n);
        match Arc::get_mut(&mut self.buf) {
            Some(Store::Bytes(b)) => {
                // Shift the rest down in place; the stale tail left in spare capacity is wiped
                // on drop (zeroize clears the whole capacity of a Vec).
                b.v.drain(..n);
                b.counted -= n;
                LIVE_BYTES.fetch_sub(n, Ordering::Relaxed);
            }
            // Shared: the clones keep the whole buffer; this key takes a copy of the rest.
            _ => self.buf = Arc::new(Store::Bytes(Bytes::new(self.expose()[n..].to_vec()))),
        }
        front
    }

    /// XORs `pad` into the key in place. Panics only if the lengths differ, which is a caller bug.
    pub fn xor_in_place(&mut self, pad: &[u8]) {
        assert_eq!(self.len(), pad.len(), "pad length must equal key length");
        for (b, p) in self.expose_mut().iter_mut().zip(pad) {
            *b ^= p;
        }
    }

    /// Appends the bytes of `other`. When the buffer must grow, the new one is allocated here and
    /// the old one wiped, so no copy of the key is left behind in freed memory. A lazy `other`
    /// is produced straight into this key's buffer (not kept in `other`).
    pub fn extend_from(&mut self, other: &Key) {
        let add = other.len();
        if !matches!(Arc::get_mut(&mut self.buf), Some(Store::Bytes(_))) {
            // Shared or lazy: build this key's own buffer (the clones keep theirs).
            let mut own = vec![0; self.len() + add];
            let (head, tail) = own.split_at_mut(self.len());
            self.write_to(head);
            other.write_to(tail);
            self.buf = Arc::new(Store::Bytes(Bytes::new(own)));
            return;
        }
        let b = self.own();
        let old_len = b.v.len();
        let need = old_len + add;
        if need > b.v.capacity() {
            let mut grown = Vec::with_capacity(need.max(2 * b.v.capacity()));
            grown.extend_from_slice(&b.v);
            let mut old = std::mem::replace(&mut b.v, grown);
            old.zeroize();
        }
        b.v.resize(need, 0);
        b.counted += add;
        LIVE_BYTES.fetch_add(add, Ordering::Relaxed);
        other.write_to(&mut b.v[old_len..]);
    }

    /// Writes the key's bytes into `out` (as long as the key); a lazy key's are produced into
    /// it without being kept.
    fn write_to(&self, out: &mut [u8]) {
        match &*self.buf {
            Store::Bytes(b) => out.copy_from_slice(&b.v),
            Store::Lazy(l) => l.fill(out),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && bool::from(self.expose().ct_eq(other.expose()))
    }
}
impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<redacted {} bytes>)", self.len())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_bytes() {
        let k = Key::from_slice(&[0xAB, 0xCD, 0xEF]);
        let d = format!("{k:?} {k} {:#?}", k);
        assert!(!d.to_lowercase().contains("ab"), "{d}");
        assert!(!d.contains("171"), "{d}");
        assert!(d.contains("redacted 3 bytes"));
    }

    #[test]
    fn equality_is_by_content_and_length() {
        assert_eq!(Key::from_slice(b"abc"), Key::from_slice(b"abc"));
        assert_ne!(Key::from_slice(b"abc"), Key::from_slice(b"abd"));
        assert_ne!(Key::from_slice(b"abc"), Key::from_slice(b"ab"));
    }

    #[test]
    fn take_front_splits() {
        let mut k = Key::from_slice(&[1, 2, 3, 4, 5]);
        let f = k.take_front(2);
        assert_eq!(f.expose(), &[1, 2]);
        assert_eq!(k.expose(), &[3, 4, 5]);
        let g = k.take_front(10);
        assert_eq!(g.expose(), &[3, 4, 5]);
        assert!(k.is_empty());
    }

    #[test]
    fn xor_round_trips() {
        let mut k = Key::from_slice(&[1, 2, 3]);
        k.xor_in_place(&[9, 9, 9]);
        assert_eq!(k.expose(), &[8, 11, 10]);
        k.xor_in_place(&[9, 9, 9]);
        assert_eq!(k.expose(), &[1, 2, 3]);
    }

    #[test]
    fn copy_range_copies_and_clamps() {
        let k = Key::from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(k.copy_range(0..2).expose(), &[1, 2]);
        assert_eq!(k.copy_range(2..4).expose(), &[3, 4]);
        assert_eq!(k.copy_range(3..9).expose(), &[4, 5]);
        assert!(k.copy_range(7..9).is_empty());
        assert_eq!(k.expose(), &[1, 2, 3, 4, 5]);
    }

    /// Every way of writing to a key that shares its bytes with a clone leaves the clone's bytes
    /// as they were: clones behave as independent copies.
    #[test]
    fn writes_to_a_clone_leave_the_others_alone() {
        let orig = Key::from_slice(&[1, 2, 3, 4]);
        let same = |k: &Key| assert_eq!(k.expose(), &[1, 2, 3, 4]);

        let mut c = orig.clone();
        c.expose_mut()[0] = 9;
        assert_eq!(c.expose(), &[9, 2, 3, 4]);
        same(&orig);

        let mut c = orig.clone();
        c.xor_in_place(&[1, 1, 1, 1]);
        assert_eq!(c.expose(), &[0, 3, 2, 5]);
        same(&orig);

        let mut c = orig.clone();
        assert_eq!(c.take_front(1).expose(), &[1]);
        assert_eq!(c.expose(), &[2, 3, 4]);
        same(&orig);

        let mut c = orig.clone();
        c.extend_from(&Key::from_slice(&[5]));
        assert_eq!(c.expose(), &[1, 2, 3, 4, 5]);
        same(&orig);

        let mut c = orig.clone();
        c.zeroize();
        assert!(c.is_empty());
        same(&orig);

        // The original, written to while a clone exists, leaves the clone alone too.
        let mut o = orig.clone();
        let c = o.clone();
        o.expose_mut().fill(0);
        assert_eq!(c.expose(), &[1, 2, 3, 4]);
    }

    /// A source whose byte at offset `o` is a mix of `o` (no two nearby bytes alike), counting
    /// the bytes it produces.
    #[derive(Default)]
    struct Mix(std::sync::atomic::AtomicUsize);

    impl LazyKeySource for Mix {
        fn fill(&self, offset: u64, out: &mut [u8]) {
            self.0.fetch_add(out.len(), Ordering::Relaxed);
            for (i, b) in out.iter_mut().enumerate() {
                let o = offset + i as u64;
                *b = (o.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
            }
        }
    }

    fn mix_bytes(offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Mix::default().fill(offset, &mut v);
        v
    }

    #[test]
    fn a_lazy_key_produces_nothing_until_read_and_then_once() {
        let src = Arc::new(Mix::default());
        let k = Key::lazy(src.clone(), 5, 100);
        let c = k.clone();
        let half = k.copy_range(3..53);
        let mut rest = k.clone();
        let front = rest.take_front(7);
        assert_eq!(
            (k.len(), half.len(), front.len(), rest.len()),
            (100, 50, 7, 93)
        );
        assert!(!k.is_empty());
        assert!(format!("{k:?}").contains("redacted 100 bytes"));
        drop((c, front));
        assert_eq!(src.0.load(Ordering::Relaxed), 0, "nothing read yet");
        assert_eq!(half.expose(), &mix_bytes(8, 50)[..]);
        assert_eq!(half.expose(), &mix_bytes(8, 50)[..]);
        assert_eq!(src.0.load(Ordering::Relaxed), 50, "produced once");
        assert_eq!(rest.expose(), &mix_bytes(12, 93)[..]);
    }

    /// One step applied alike to a list of lazy keys and to a list of the same keys as bytes.
    #[derive(Debug, Clone)]
    enum Op {
        CopyRange(usize, usize, usize),
        TakeFront(usize, usize),
        Clone(usize),
        Write(usize, usize, u8),
        Xor(usize, u8),
        Extend(usize, usize),
        Zeroize(usize),
        Read(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let i = 0usize..8;
        prop_oneof![
            (i.clone(), 0usize..80, 0usize..80).prop_map(|(k, a, b)| Op::CopyRange(k, a, b)),
            (i.clone(), 0usize..80).prop_map(|(k, n)| Op::TakeFront(k, n)),
            i.clone().prop_map(Op::Clone),
            (i.clone(), 0usize..80, any::<u8>()).prop_map(|(k, at, v)| Op::Write(k, at, v)),
            (i.clone(), any::<u8>()).prop_map(|(k, v)| Op::Xor(k, v)),
            (i.clone(), i.clone()).prop_map(|(k, o)| Op::Extend(k, o)),
            i.clone().prop_map(Op::Zeroize),
            i.prop_map(Op::Read),
        ]
    }

    fn apply(keys: &mut Vec<Key>, op: &Op) {
        let at = |keys: &Vec<Key>, i: usize| i % keys.len();
        match *op {
            Op::CopyRange(k, a, b) => {
                let k = at(keys, k);
                let c = keys[k].copy_range(a.min(b)..a.max(b));
                keys.push(c);
            }
            Op::TakeFront(k, n) => {
                let k = at(keys, k);
                let f = keys[k].take_front(n);
                keys.push(f);
            }
            Op::Clone(k) => {
                let k = at(keys, k);
                keys.push(keys[k].clone());
            }
            Op::Write(k, i, v) => {
                let k = at(keys, k);
                if let Some(b) = keys[k].expose_mut().get_mut(i) {
                    *b = v;
                }
            }
            Op::Xor(k, v) => {
                let k = at(keys, k);
                let pad: Vec<u8> = (0..keys[k].len()).map(|i| v ^ i as u8).collect();
                keys[k].xor_in_place(&pad);
            }
            Op::Extend(k, o) => {
                let (k, o) = (at(keys, k), at(keys, o));
                let other = keys[o].clone();
                keys[k].extend_from(&other);
            }
            Op::Zeroize(k) => {
                let k = at(keys, k);
                keys[k].zeroize();
            }
            Op::Read(k) => {
                let k = at(keys, k);
                let _ = keys[k].expose();
            }
        }
    }

    proptest::proptest! {
        /// Every operation on lazy keys (ranges at unaligned offsets, splits, clones then
        /// writes, extends, xor, zeroize, reads in between) gives exactly the bytes it gives on
        /// the same keys as bytes, and they compare equal to them.
        #[test]
        fn lazy_keys_act_as_their_bytes(
            start in 0u64..1000,
            lens in proptest::collection::vec(0usize..70, 1..4),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let src: Arc<dyn LazyKeySource> = Arc::new(Mix::default());
            let mut lazy = Vec::new();
            let mut eager = Vec::new();
            let mut off = start;
            for len in lens {
                lazy.push(Key::lazy(src.clone(), off, len));
                eager.push(Key::from_vec(mix_bytes(off, len)));
                off += len as u64 + 3;
            }
            for op in &ops {
                apply(&mut lazy, op);
                apply(&mut eager, op);
                proptest::prop_assert_eq!(lazy.len(), eager.len());
                for (l, e) in lazy.iter().zip(&eager) {
                    proptest::prop_assert_eq!(l.len(), e.len());
                    proptest::prop_assert_eq!(l.expose(), e.expose(), "after {:?}", op);
                    proptest::prop_assert!(l == e);
                }
            }
            for (i, (l, e)) in lazy.iter().zip(&eager).enumerate() {
                if !e.is_empty() {
                    let mut differ = e.clone();
                    differ.expose_mut()[0] ^= 1;
                    proptest::prop_assert!(*l != differ, "key {}", i);
                }
            }
        }
    }

    #[test]
    fn zeroize_clears_bytes() {
        let mut k = Key::from_slice(&[7; 16]);
        k.zeroize();
        assert!(k.expose().iter().all(|&b| b == 0));
    }
}
