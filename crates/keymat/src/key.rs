//! The key type.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
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
#[derive(Default, Zeroize)]
pub struct Key {
    bytes: Vec<u8>,
    /// Bytes this key added to [`live_bytes`].
    #[zeroize(skip)]
    counted: usize,
}

impl Drop for Key {
    fn drop(&mut self) {
        self.bytes.zeroize();
        LIVE_BYTES.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

impl ZeroizeOnDrop for Key {}

impl Clone for Key {
    fn clone(&self) -> Self {
        Self::from_slice(&self.bytes)
    }
}

impl Key {
    /// Takes ownership of `bytes` (the vector is zeroized when the key drops).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        LIVE_BYTES.fetch_add(bytes.len(), Ordering::Relaxed);
        Self {
            counted: bytes.len(),
            bytes,
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
        self.bytes.len()
    }

    /// True when the key holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The secret bytes. Every call site is an exposure point: keep them few and never log them.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// Mutable access to the secret bytes (for XOR-ing pads in place).
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Splits off and returns the first `n` bytes as a new key (`n` is clamped to the length).
    /// The remaining bytes stay in `self`; the moved-out bytes are wiped from the old buffer.
    pub fn take_front(&mut self, n: usize) -> Key {
        let n = n.min(self.bytes.len());
        let front = Key::from_slice(&self.bytes[..n]);
        // Shift the rest down in place; the stale tail left in spare capacity is wiped on drop
        // (zeroize clears the whole capacity of a Vec).
        self.bytes.drain(..n);
        self.counted -= n;
        LIVE_BYTES.fetch_sub(n, Ordering::Relaxed);
        front
    }

    /// XORs `pad` into the key in place. Panics only if the lengths differ, which is a caller bug.
    pub fn xor_in_place(&mut self, pad: &[u8]) {
        assert_eq!(
            self.bytes.len(),
            pad.len(),
            "pad length must equal key length"
        );
        for (b, p) in self.bytes.iter_mut().zip(pad) {
            *b ^= p;
        }
    }

    /// Appends the bytes of `other`. When the buffer must grow, the new one is allocated here and
    /// the old one wiped, so no copy of the key is left behind in freed memory.
    pub fn extend_from(&mut self, other: &Key) {
        let need = self.bytes.len() + other.bytes.len();
        if need > self.bytes.capacity() {
            let mut grown = Vec::with_capacity(need.max(2 * self.bytes.capacity()));
            grown.extend_from_slice(&self.bytes);
            let mut old = std::mem::replace(&mut self.bytes, grown);
            old.zeroize();
        }
        self.bytes.extend_from_slice(&other.bytes);
        self.counted += other.bytes.len();
        LIVE_BYTES.fetch_add(other.bytes.len(), Ordering::Relaxed);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.bytes.len() == other.bytes.len() && bool::from(self.bytes.ct_eq(&other.bytes))
    }
}
impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<redacted {} bytes>)", self.bytes.len())
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
    fn zeroize_clears_bytes() {
        let mut k = Key::from_slice(&[7; 16]);
        k.zeroize();
        assert!(k.expose().iter().all(|&b| b == 0));
    }
}
