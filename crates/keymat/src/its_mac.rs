//! Wegman–Carter one-time MAC: a polynomial hash over GF(2^128) (POLYVAL, carry-less multiply on
//! x86) whose output is one-time-padded.
//!
//! A [`MacKey`] is 32 bytes of fresh shared key (QKD link key, relayed key, or produced secret key):
//! 16 bytes of hash key `h` and 16 bytes of pad `s`. The tag of a message `m` of `L` bytes is
//! `POLYVAL_h(m ‖ 0-padding ‖ len64(L)) ⊕ s`. For messages of at most `L` bytes the forgery
//! probability is at most `(⌈L/16⌉ + 1) / 2^128` per attempt (the hash is ε-almost-XOR-universal),
//! whatever the attacker's computing power. **Each `MacKey` must be used for one message only**;
//! the type is consumed by [`Mac::new`] to make reuse awkward.

use polyval::universal_hash::{KeyInit, UniversalHash};
use polyval::Polyval;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Key;

/// Bytes of key one tag consumes.
pub const MAC_KEY_LEN: usize = 32;
/// Bytes in a tag.
pub const TAG_LEN: usize = 16;

/// A one-time MAC key (hash key ‖ pad).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MacKey {
    h: [u8; 16],
    s: [u8; 16],
}

/// Wrong amount of key material for a MAC key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a Wegman-Carter MAC key needs exactly {MAC_KEY_LEN} bytes, got {0}")]
pub struct BadMacKeyLength(pub usize);

impl MacKey {
    /// Builds a MAC key from exactly [`MAC_KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BadMacKeyLength> {
        if bytes.len() != MAC_KEY_LEN {
            return Err(BadMacKeyLength(bytes.len()));
        }
        let mut h = [0u8; 16];
        let mut s = [0u8; 16];
        h.copy_from_slice(&bytes[..16]);
        s.copy_from_slice(&bytes[16..]);
        Ok(Self { h, s })
    }

    /// Builds a MAC key from a [`Key`] of exactly [`MAC_KEY_LEN`] bytes.
    pub fn from_key(key: &Key) -> Result<Self, BadMacKeyLength> {
        Self::from_bytes(key.expose())
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

/// A 16-byte authentication tag (not secret once sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tag(pub [u8; TAG_LEN]);

impl Tag {
    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &Tag) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

/// Incremental MAC computation over a message given in pieces.
pub struct Mac {
    hash: Polyval,
    buf: [u8; 16],
    buf_len: usize,
    total: u64,
    key: MacKey,
}

impl Mac {
    /// Starts a MAC with a one-time key (consumed).
    pub fn new(key: MacKey) -> Self {
        let hash = Polyval::new(&key.h.into());
        Self {
            hash,
            buf: [0; 16],
            buf_len: 0,
            total: 0,
            key,
        }
    }

    /// Feeds more message bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buf_len > 0 {
            let n = (16 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len < 16 {
                return;
            }
            self.hash.update(&[self.buf.into()]);
            self.buf_len = 0;
        }
        let whole = data.len() / 16 * 16;
        if whole > 0 {
            self.hash.update_padded(&data[..whole]);
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// Finishes and returns the tag.
    pub fn finalize(mut self) -> Tag {
        if self.buf_len > 0 {
            for b in &mut self.buf[self.buf_len..] {
                *b = 0;
            }
            self.hash.update(&[self.buf.into()]);
        }
        let mut len_block = [0u8; 16];
        len_block[..8].copy_from_slice(&self.total.to_le_bytes());
        len_block[8] = 0x80; // domain byte: distinguishes the length block from data blocks
        self.hash.update(&[len_block.into()]);
        let out = self.hash.clone().finalize();
        let mut tag = [0u8; 16];
        for (i, t) in tag.iter_mut().enumerate() {
            *t = out[i] ^ self.key.s[i];
        }
        self.buf.zeroize();
        Tag(tag)
    }
}

/// Tags `msg` with a one-time key.
pub fn tag(key: MacKey, msg: &[u8]) -> Tag {
    let mut m = Mac::new(key);
    m.update(msg);
    m.finalize()
}

/// Checks `expected` against the tag of `msg` in constant time.
pub fn verify(key: MacKey, msg: &[u8], expected: &Tag) -> bool {
    tag(key, msg).ct_eq(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> MacKey {
        let b: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(seed))
            .collect();
        MacKey::from_bytes(&b).unwrap()
    }

    #[test]
    fn verifies_own_tag_and_rejects_changes() {
        let msg = b"relay 42: ciphertext bytes";
        let t = tag(key(1), msg);
        assert!(verify(key(1), msg, &t));
        let mut altered = msg.to_vec();
        altered[3] ^= 1;
        assert!(!verify(key(1), &altered, &t));
        assert!(!verify(key(2), msg, &t));
    }

    #[test]
    fn trailing_zero_extension_changes_tag() {
        // Without the length block, m and m‖0 would collide.
        let t1 = tag(key(3), b"abc");
        let t2 = tag(key(3), b"abc\0");
        assert_ne!(t1, t2);
    }

    #[test]
    fn bad_key_length_is_an_error() {
        assert_eq!(
            MacKey::from_bytes(&[0; 31]).unwrap_err(),
            BadMacKeyLength(31)
        );
    }

    proptest! {
        #[test]
        fn incremental_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..300), cuts in proptest::collection::vec(0usize..300, 0..5)) {
            let one = tag(key(9), &data);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut m = Mac::new(key(9));
            let mut prev = 0;
            for c in cuts { m.update(&data[prev..c]); prev = c; }
            m.update(&data[prev..]);
            prop_assert_eq!(m.finalize(), one);
        }
    }
}
