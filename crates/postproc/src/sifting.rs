//! Sifting on packed bits: the `Sift` message (Bob's detections, bases and test-basis bits),
//! Alice's view of the detections, the counts per intensity and both sifted keys.
//!
//! Everything after decoding the detection indices works on 64 detections at a time: Alice
//! gathers her basis, bit and intensity class of each detected pulse into words once, then
//! sifting masks, per-intensity counts (popcount), test-basis errors (Bob's test bits spread
//! back with `pdep`) and the sifted key (`pext`) are word operations.

use crate::bits::BitVec;
use crate::finite_key::BlockCounts;
use crate::protocol::{AliceRaw, BobRaw};
use crate::simd_unsafe::{pdep, pext};
use crate::wire::{DecodeError, Reader, Writer};

/// Appends bits to a packed array.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    words: Vec<u64>,
    len: usize,
}

impl BitWriter {
    pub(crate) fn with_capacity(bits: usize) -> Self {
        Self {
            words: Vec::with_capacity(bits.div_ceil(64) + 1),
            len: 0,
        }
    }

    /// Appends the low `k ≤ 64` bits of `v` (higher bits must be zero).
    #[inline]
    pub(crate) fn push(&mut self, v: u64, k: u32) {
        if k == 0 {
            return;
        }
        let sh = (self.len % 64) as u32;
        if sh == 0 {
            self.words.push(v);
        } else {
            if let Some(last) = self.words.last_mut() {
                *last |= v << sh;
            }
            if sh + k > 64 {
                self.words.push(v >> (64 - sh));
            }
        }
        self.len += k as usize;
    }

    pub(crate) fn finish(self) -> BitVec {
        BitVec::from_words(self.words, self.len)
    }
}

/// Reads consecutive bits of a packed array (missing bits read as zero).
#[derive(Debug)]
pub(crate) struct BitReader<'a> {
    words: &'a [u64],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(words: &'a [u64]) -> Self {
        Self { words, pos: 0 }
    }

    /// The next `k ≤ 64` bits, as the low bits of the result.
    #[inline]
    pub(crate) fn take(&mut self, k: u32) -> u64 {
        if k == 0 {
            return 0;
        }
        let (w, sh) = (self.pos / 64, (self.pos % 64) as u32);
        let get = |i: usize| self.words.get(i).copied().unwrap_or(0);
        let mut v = get(w) >> sh;
        if sh != 0 && sh + k > 64 {
            v |= get(w + 1) << (64 - sh);
        }
        self.pos += k as usize;
        if k == 64 {
            v
        } else {
            v & ((1u64 << k) - 1)
        }
    }
}

/// Mask of the valid detections in word `w` of `nd`.
#[inline]
fn valid(nd: usize, w: usize) -> u64 {
    let left = nd - 64 * w;
    if left >= 64 {
        !0
    } else {
        (1u64 << left) - 1
    }
}

/// The bits of `src` where `mask` is set (both packed, `mask` no longer than `src`), in order.
pub(crate) fn compress(src: &[u64], mask: &[u64]) -> BitVec {
    let total = mask.iter().map(|m| m.count_ones() as usize).sum();
    let mut out = BitWriter::with_capacity(total);
    for (&s, &m) in src.iter().zip(mask) {
        out.push(pext(s, m), m.count_ones());
    }
    out.finish()
}

/// Bob's part of the `Sift` payload: pulses, detection gaps (LEB128), bases, test-basis bits.
pub(crate) fn write_sift(w: &mut Writer, raw: &BobRaw) {
    w.var(raw.pulses as u64);
    w.var(raw.detected.len() as u64);
    w.buf.reserve(raw.detected.len() + 16);
    let mut next = 0u32; // smallest index the next detection can have
    for &d in &raw.detected {
        let gap = d - next;
        if gap < 0x80 {
            w.buf.push(gap as u8);
        } else {
            w.var(gap as u64);
        }
        next = d + 1;
    }
    w.bits(&raw.basis);
    w.bits(&compress(raw.bit.words(), raw.basis.words()));
}

/// Alice's view of a `Sift` message: her bases of the detections, the counts per intensity
/// (with test-basis errors) and her sifted key.
pub(crate) struct AliceSift {
    pub(crate) basis: BitVec,
    pub(crate) counts: BlockCounts,
    pub(crate) key: BitVec,
}

/// Decodes Bob's `Sift` payload against Alice's records.
pub(crate) fn alice_sift(r: &mut Reader<'_>, raw: &AliceRaw) -> Result<AliceSift, DecodeError> {
    let pulses = raw.intensity.len();
    if r.var()? as usize != pulses {
        return Err(DecodeError("block length differs from Alice's records"));
    }
    let nd = r.var()? as usize;
    if nd > pulses {
        return Err(DecodeError("more detections than pulses"));
    }
    let nw = nd.div_ceil(64);
    // Alice's basis, bit and intensity class (masks of classes 0 and 1) per detection.
    let (mut basis, mut bit) = (vec![0u64; nw], vec![0u64; nw]);
    let (mut is0, mut is1) = (vec![0u64; nw], vec![0u64; nw]);
    let (ab, abit) = (raw.basis.words(), raw.bit.words());
    let mut next = 0u64;
    let mut bad_class = false;
    for w in 0..nw {
        let (mut b, mut x, mut k0, mut k1) = (0u64, 0u64, 0u64, 0u64);
        for j in 0..(nd - 64 * w).min(64) {
            let p = next + r.var()?;
            if p >= pulses as u64 {
                return Err(DecodeError("detection index"));
            }
            next = p + 1;
            let p = p as usize;
            let (pw, pb) = (p / 64, p % 64);
            b |= ((ab[pw] >> pb) & 1) << j;
            x |= ((abit[pw] >> pb) & 1) << j;
            let k = raw.intensity[p];
            k0 |= ((k == 0) as u64) << j;
            k1 |= ((k == 1) as u64) << j;
            bad_class |= k > 2;
        }
        (basis[w], bit[w], is0[w], is1[w]) = (b, x, k0, k1);
    }
    if bad_class {
        return Err(DecodeError("intensity class"));
    }
    let bob_basis = r.bits(nd)?;
    let test_bits = r.bits(nd)?;
    r.finish()?;
    if bob_basis.len() != nd || test_bits.len() != bob_basis.count_ones() {
        return Err(DecodeError("sift lengths"));
    }
    let mut counts = BlockCounts::default();
    let n_key_est = nd / 2 + 64;
    let mut key = BitWriter::with_capacity(n_key_est);
    let mut tests = BitReader::new(test_bits.words());
    for (w, &bb) in bob_basis.words().iter().enumerate() {
        let v = valid(nd, w);
        let (a, m0, m1) = (basis[w], is0[w], is1[w]);
        let m2 = v & !m0 & !m1;
        let kmask = !a & !bb & v;
        let tmask = a & bb & v;
        // Bob's test-basis bits of this word, back at their detection positions.
        let bt = pdep(tests.take(bb.count_ones()), bb);
        let err = (bit[w] ^ bt) & tmask;
        for (c, m) in [m0, m1, m2].into_iter().enumerate() {
            counts.n_key[c] += (kmask & m).count_ones() as u64;
            counts.n_test[c] += (tmask & m).count_ones() as u64;
            counts.m_test[c] += (err & m).count_ones() as u64;
        }
        key.push(pext(bit[w], kmask), kmask.count_ones());
    }
    Ok(AliceSift {
        basis: BitVec::from_words(basis, nd),
        counts,
        key: key.finish(),
    })
}

/// Bob's sifted key from Alice's bases of his detections, and the number of test-basis
/// coincidences.
pub(crate) fn bob_sift(raw: &BobRaw, alice_basis: &BitVec) -> (BitVec, u64) {
    let nd = raw.detected.len();
    let mut n_test = 0u64;
    let mut key = BitWriter::with_capacity(nd / 2 + 64);
    for (w, (&a, &b)) in alice_basis
        .words()
        .iter()
        .zip(raw.basis.words())
        .enumerate()
    {
        let v = valid(nd, w);
        let kmask = !a & !b & v;
        n_test += (a & b & v).count_ones() as u64;
        key.push(pext(raw.bit.words()[w], kmask), kmask.count_ones());
    }
    (key.finish(), n_test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::ToyChannel;

    /// Sifting bit by bit, straight from the definitions.
    fn reference(a: &AliceRaw, b: &BobRaw) -> (BlockCounts, BitVec, BitVec) {
        let mut c = BlockCounts::default();
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        for (i, &p) in b.detected.iter().enumerate() {
            let p = p as usize;
            let k = a.intensity[p] as usize;
            match (a.basis.get(p), b.basis.get(i)) {
                (false, false) => {
                    c.n_key[k] += 1;
                    ka.push(a.bit.get(p));
                    kb.push(b.bit.get(i));
                }
                (true, true) => {
                    c.n_test[k] += 1;
                    c.m_test[k] += (a.bit.get(p) != b.bit.get(i)) as u64;
                }
                _ => {}
            }
        }
        (c, BitVec::from_bools(&ka), BitVec::from_bools(&kb))
    }

    #[test]
    fn word_parallel_sifting_equals_the_bitwise_definition() {
        for (pulses, seed) in [(0usize, 1u64), (1, 2), (200, 3), (5_000, 4), (300_001, 5)] {
            let ch = ToyChannel {
                eta: 0.5,
                e_d: 0.05,
                ..ToyChannel::default()
            };
            let (a, b) = ch.generate(pulses, seed);
            let (c, ka, kb) = reference(&a, &b);
            let mut w = Writer::default();
            write_sift(&mut w, &b);
            let s = alice_sift(&mut Reader::new(&w.buf), &a).unwrap();
            assert_eq!(s.counts, c, "pulses={pulses}");
            assert_eq!(s.key, ka);
            let (kb2, n_test) = bob_sift(&b, &s.basis);
            assert_eq!(kb2, kb);
            assert_eq!(n_test, c.n_test.iter().sum::<u64>());
        }
    }

    #[test]
    fn bit_writer_and_reader_round_trip() {
        let mut w = BitWriter::default();
        let mut items = Vec::new();
        let mut x = 7u64;
        for i in 0..500u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 58) as u32 + (i % 2); // 0..=64
            let v = if k == 64 { x } else { x & ((1u64 << k) - 1) };
            w.push(v, k);
            items.push((v, k));
        }
        let bv = w.finish();
        let mut r = BitReader::new(bv.words());
        for (v, k) in items {
            assert_eq!(r.take(k), v);
        }
    }
}
