//! The key type.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes held by every live [`Key`] in this process.
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by all [`Key`]s alive in this process now: what a tamper response must bring to
/// zero (a key's bytes are wiped before its count is released).
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
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
pub struct Key {
    buf: Arc<Bytes>,
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

impl Clone for Bytes {
    /// A private copy, for a key about to write to bytes it shares.
    fn clone(&self) -> Self {
        Self::new(self.v.clone())
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
            Some(b) => b.v.zeroize(),
            None => self.buf = Arc::new(Bytes::new(Vec::new())),
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
            buf: Arc::new(Bytes::new(bytes)),
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

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.v.len()
    }

    /// True when the key holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.buf.v.is_empty()
    }

    /// The secret bytes. Every call site is an exposure point: keep them few and never log them.
    pub fn expose(&self) -> &[u8] {
        &self.buf.v
    }

    /// Mutable access to the secret bytes (for XOR-ing pads in place). A key that shares its
    /// bytes with clones gets a private copy first.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut Arc::make_mut(&mut self.buf).v
    }

    /// A new key holding a copy of the bytes in `range` (clamped to the length); `self` is
    /// unchanged. Splitting a block into halves this way copies each byte once, where
    /// [`Key::take_front`] also shifts the rest of the buffer down.
    pub fn copy_range(&self, range: std::ops::Range<usize>) -> Key {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        Key::from_slice(&self.buf.v[start..end])
    }

    /// Splits off and returns the first `n` bytes as a new key (`n` is clamped to the length).
    /// The remaining bytes stay in `self`; the moved-out bytes are wiped from the old buffer.
    pub fn take_front(&mut self, n: usize) -> Key {
        let n = n.min(self.len());
        let front = Key::from_slice(&self.buf.v[..n]);
        match Arc::get_mut(&mut self.buf) {
            Some(b) => {
                // Shift the rest down in place; the stale tail left in spare capacity is wiped
                // on drop (zeroize clears the whole capacity of a Vec).
                b.v.drain(..n);
                b.counted -= n;
                LIVE_BYTES.fetch_sub(n, Ordering::Relaxed);
            }
            // Shared: the clones keep the whole buffer; this key takes a copy of the rest.
            None => self.buf = Arc::new(Bytes::new(self.buf.v[n..].to_vec())),
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
    /// the old one wiped, so no copy of the key is left behind in freed memory.
    pub fn extend_from(&mut self, other: &Key) {
        let add = other.len();
        if Arc::get_mut(&mut self.buf).is_none() {
            // Shared: build this key's own buffer (the clones keep theirs).
            let mut own = Vec::with_capacity(self.len() + add);
            own.extend_from_slice(&self.buf.v);
            own.extend_from_slice(&other.buf.v);
            self.buf = Arc::new(Bytes::new(own));
            return;
        }
        let b = Arc::get_mut(&mut self.buf).expect("checked unique above");
        let need = b.v.len() + add;
        if need > b.v.capacity() {
            let mut grown = Vec::with_capacity(need.max(2 * b.v.capacity()));
            grown.extend_from_slice(&b.v);
            let mut old = std::mem::replace(&mut b.v, grown);
            old.zeroize();
        }
        b.v.extend_from_slice(&other.buf.v);
        b.counted += add;
        LIVE_BYTES.fetch_add(add, Ordering::Relaxed);
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

    #[test]
    fn zeroize_clears_bytes() {
        let mut k = Key::from_slice(&[7; 16]);
        k.zeroize();
        assert!(k.expose().iter().all(|&b| b == 0));
    }
}
