//! Packed bit vectors for raw, sifted and reconciled key material.

use rand::RngCore;
use zeroize::Zeroize;

/// A packed bit vector: bit `i` is bit `i % 64` of word `i / 64`; bits past `len` are zero.
///
/// Raw and reconciled key bits are secret, so the words are zeroized on drop and `Debug` shows
/// only the length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BitVec {
    words: Vec<u64>,
    len: usize,
}

impl Drop for BitVec {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

impl std::fmt::Debug for BitVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BitVec(<{} bits>)", self.len)
    }
}

impl BitVec {
    /// `len` zero bits.
    pub fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Takes packed words; bits past `len` are cleared, missing words are zero.
    pub fn from_words(mut words: Vec<u64>, len: usize) -> Self {
        words.resize(len.div_ceil(64), 0);
        let mut v = Self { words, len };
        v.clear_tail();
        v
    }

    /// From booleans.
    pub fn from_bools(bits: &[bool]) -> Self {
        let mut v = Self::zeros(bits.len());
        for (i, &b) in bits.iter().enumerate() {
            if b {
                v.words[i / 64] |= 1 << (i % 64);
            }
        }
        v
    }

    /// From bytes, least significant bit first, `len` bits (≤ 8 × bytes.len()).
    pub fn from_bytes(bytes: &[u8], len: usize) -> Self {
        let mut words = vec![0u64; len.div_ceil(64)];
        for (i, &b) in bytes.iter().take(len.div_ceil(8)).enumerate() {
            words[i / 8] |= (b as u64) << (8 * (i % 8));
        }
        Self::from_words(words, len)
    }

    /// Uniformly random bits.
    pub fn random<R: RngCore + ?Sized>(len: usize, rng: &mut R) -> Self {
        let words = (0..len.div_ceil(64)).map(|_| rng.next_u64()).collect();
        Self::from_words(words, len)
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i` (panics if out of range: an internal indexing bug, never input-dependent).
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        debug_assert!(i < self.len);
        (self.words[i / 64] >> (i % 64)) & 1 == 1
    }

    /// Sets bit `i`.
    #[inline]
    pub fn set(&mut self, i: usize, v: bool) {
        debug_assert!(i < self.len);
        let m = 1u64 << (i % 64);
        if v {
            self.words[i / 64] |= m;
        } else {
            self.words[i / 64] &= !m;
        }
    }

    /// Flips bit `i`.
    #[inline]
    pub fn flip(&mut self, i: usize) {
        debug_assert!(i < self.len);
        self.words[i / 64] ^= 1 << (i % 64);
    }

    /// Appends one bit.
    pub fn push(&mut self, v: bool) {
        if self.len.is_multiple_of(64) {
            self.words.push(0);
        }
        self.len += 1;
        self.set(self.len - 1, v);
    }

    /// The packed words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Number of positions where `self` and `other` differ (over the shorter length).
    pub fn hamming(&self, other: &BitVec) -> usize {
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| (a ^ b).count_ones() as usize)
            .sum()
    }

    /// Parity of bits `start..end`.
    pub fn parity_range(&self, start: usize, end: usize) -> bool {
        if start >= end {
            return false;
        }
        let (ws, we) = (start / 64, (end - 1) / 64);
        let lo_mask = !0u64 << (start % 64);
        let hi_mask = !0u64 >> (63 - (end - 1) % 64);
        if ws == we {
            return (self.words[ws] & lo_mask & hi_mask).count_ones() & 1 == 1;
        }
        let mut acc = (self.words[ws] & lo_mask) ^ (self.words[we] & hi_mask);
        for w in &self.words[ws + 1..we] {
            acc ^= w;
        }
        acc.count_ones() & 1 == 1
    }

    /// Bits `start..start + len` as a new vector (`start + len ≤ self.len()`).
    pub fn slice(&self, start: usize, len: usize) -> BitVec {
        debug_assert!(start + len <= self.len);
        BitVec::from_words(extract_bits(&self.words, start, len), len)
    }

    /// Packed little-endian bytes (bit 0 of byte 0 first), `⌈len/8⌉` of them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len.div_ceil(8));
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.truncate(self.len.div_ceil(8));
        out
    }

    fn clear_tail(&mut self) {
        let r = self.len % 64;
        if r != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << r) - 1;
            }
        }
    }
}

/// Bits `start..start+len` of a packed word array (missing words read as zero).
pub(crate) fn extract_bits(words: &[u64], start: usize, len: usize) -> Vec<u64> {
    let n = len.div_ceil(64);
    let (w0, sh) = (start / 64, start % 64);
    let get = |i: usize| words.get(i).copied().unwrap_or(0);
    let mut out: Vec<u64> = (0..n)
        .map(|q| {
            if sh == 0 {
                get(w0 + q)
            } else {
                (get(w0 + q) >> sh) | (get(w0 + q + 1) << (64 - sh))
            }
        })
        .collect();
    if !len.is_multiple_of(64) {
        if let Some(last) = out.last_mut() {
            *last &= (1u64 << (len % 64)) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_and_slice_match_bitwise() {
        let mut x = 0x1234_5678u64;
        let bits: Vec<bool> = (0..300)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x >> 63 == 1
            })
            .collect();
        let v = BitVec::from_bools(&bits);
        for s in [0usize, 1, 63, 64, 65, 127, 200] {
            for e in [s, s + 1, s + 63, s + 64, s + 65, 300] {
                if e > 300 || e < s {
                    continue;
                }
                let p = bits[s..e].iter().filter(|&&b| b).count() % 2 == 1;
                assert_eq!(v.parity_range(s, e), p, "{s}..{e}");
                let sl = v.slice(s, e - s);
                for i in 0..e - s {
                    assert_eq!(sl.get(i), bits[s + i]);
                }
            }
        }
        assert_eq!(BitVec::from_bytes(&v.to_bytes(), 300), v);
        assert_eq!(format!("{v:?}"), "BitVec(<300 bits>)");
    }
}
