//! Bit-slicing: turning 64 values into 64 bit-planes and back (a 64×64 bit-matrix transpose),
//! so that boolean circuits on integers run 64 rows per word operation.

/// Transposes a 64×64 bit matrix in place (Hacker's Delight, §7-3, widened to 64 bits): bit
/// `63 − c` of row `r` moves to bit `63 − r` of row `c`.
pub fn transpose64(a: &mut [u64; 64]) {
    let mut j = 32usize;
    let mut m: u64 = 0x0000_0000_FFFF_FFFF;
    while j != 0 {
        let mut k = 0usize;
        while k < 64 {
            let t = (a[k] ^ (a[k + j] >> j)) & m;
            a[k] ^= t;
            a[k + j] ^= t << j;
            k = (k + j + 1) & !j;
        }
        j >>= 1;
        m ^= m << j;
    }
}

/// Words per bit-plane for `n` rows.
pub fn plane_words(n: usize) -> usize {
    n.div_ceil(64)
}

/// Bit-planes of `values`: plane `p` (words `p·W .. (p+1)·W`, `W = ⌈n/64⌉`) has bit `r % 64` of
/// word `r / 64` equal to bit `p` of `values[r]`. Missing rows of the last word are zero.
pub fn to_planes(values: &[u64]) -> Vec<u64> {
    let w = plane_words(values.len());
    let mut out = vec![0u64; 64 * w];
    let mut block = [0u64; 64];
    for g in 0..w {
        block.fill(0);
        for (r, &v) in values[g * 64..values.len().min(g * 64 + 64)]
            .iter()
            .enumerate()
        {
            block[63 - r] = v;
        }
        transpose64(&mut block);
        for p in 0..64 {
            out[p * w + g] = block[63 - p];
        }
    }
    out
}

/// The inverse of [`to_planes`] for `n` rows.
pub fn from_planes(planes: &[u64], n: usize) -> Vec<u64> {
    let w = plane_words(n);
    let mut out = Vec::with_capacity(n);
    let mut block = [0u64; 64];
    for g in 0..w {
        for p in 0..64 {
            block[63 - p] = planes[p * w + g];
        }
        transpose64(&mut block);
        for r in 0..(n - g * 64).min(64) {
            out.push(block[63 - r]);
        }
    }
    out
}

/// The bits of one plane as 0/1 words, one per row.
pub fn unpack(plane: &[u64], n: usize) -> Vec<u64> {
    (0..n).map(|r| (plane[r / 64] >> (r % 64)) & 1).collect()
}

/// Packs 0/1 (low bit) words into one plane.
pub fn pack(bits: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; plane_words(bits.len())];
    for (r, &b) in bits.iter().enumerate() {
        out[r / 64] |= (b & 1) << (r % 64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_match_the_naive_definition_and_round_trip() {
        let vals: Vec<u64> = (0..150u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 7))
            .collect();
        let planes = to_planes(&vals);
        let w = plane_words(vals.len());
        for (r, v) in vals.iter().enumerate() {
            for p in 0..64 {
                assert_eq!((planes[p * w + r / 64] >> (r % 64)) & 1, (v >> p) & 1);
            }
        }
        assert_eq!(from_planes(&planes, vals.len()), vals);
        let bits: Vec<u64> = vals.iter().map(|v| v & 1).collect();
        assert_eq!(unpack(&pack(&bits), bits.len()), bits);
    }
}
