//! The AVX2 split-nibble GF(2^8) kernel. This module holds the crate's only `unsafe` code: calls
//! into `#[target_feature(enable = "avx2")]` functions (sound only after run-time detection) and
//! unaligned 32-byte loads and stores through raw pointers (sound because every pointer stays
//! inside a slice whose length was checked first).
//!
//! For 32 bytes `v` of an input and a constant `c` with nibble tables `L`, `H` (see
//! [`crate::kernel`]): `c·v = vpshufb(L, v & 0x0f) ⊕ vpshufb(H, (v >> 4) & 0x0f)`. Inputs are
//! processed in groups of up to eight (a const-generic `K`, so that the nibble vectors of one group
//! stay in registers); each output row accumulates its group's products and is stored once per
//! 32-byte column.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use crate::kernel::{scalar_group, MatTables};

/// Whether this CPU has AVX2 (std caches the CPUID answer).
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Runs `outputs = M · inputs` over `len` bytes with AVX2. Returns `false` (doing nothing) when
/// the CPU lacks AVX2. The caller guarantees that `inputs.len() == t.cols`, `outputs.len() ==
/// t.rows` and that every slice holds at least `len` bytes; they are re-checked here because
/// the raw-pointer loops below rely on them.
pub(crate) fn mat_mul(
    t: &MatTables,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    len: usize,
) -> bool {
    if !available() {
        return false;
    }
    assert!(inputs.len() == t.cols && outputs.len() == t.rows);
    assert!(inputs.iter().all(|s| s.len() >= len) && outputs.iter().all(|s| s.len() >= len));
    let mut col = 0;
    while col < t.cols {
        let k = (t.cols - col).min(8);
        let acc = col > 0;
        // SAFETY: AVX2 is present (checked by `available` above). The group functions read
        // `len` bytes from inputs `col..col + k` and read/write `len` bytes of every output;
        // all of these slices were checked above to hold at least `len` bytes, and `k` columns
        // starting at `col` exist because `col + k <= t.cols == inputs.len()`.
        unsafe {
            match k {
                1 => group::<1>(t, col, inputs, outputs, len, acc),
                2 => group::<2>(t, col, inputs, outputs, len, acc),
                3 => group::<3>(t, col, inputs, outputs, len, acc),
                4 => group::<4>(t, col, inputs, outputs, len, acc),
                5 => group::<5>(t, col, inputs, outputs, len, acc),
                6 => group::<6>(t, col, inputs, outputs, len, acc),
                7 => group::<7>(t, col, inputs, outputs, len, acc),
                _ => group::<8>(t, col, inputs, outputs, len, acc),
            }
        }
        col += k;
    }
    true
}

/// Loads a 32-byte table.
#[inline(always)]
fn load_table(t: &[u8; 32]) -> __m256i {
    // SAFETY: `t` is a reference to exactly 32 readable bytes; `loadu` has no alignment need.
    unsafe { _mm256_loadu_si256(t.as_ptr().cast()) }
}

/// One group of `K` input columns starting at `col0`.
///
/// # Safety
/// AVX2 must be available; `inputs[col0..col0 + K]` must exist and, like every output, hold at
/// least `len` bytes.
#[target_feature(enable = "avx2")]
unsafe fn group<const K: usize>(
    t: &MatTables,
    col0: usize,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    len: usize,
    accumulate: bool,
) {
    let mask = _mm256_set1_epi8(0x0f);
    let mut inp = [core::ptr::null::<u8>(); K];
    for (j, p) in inp.iter_mut().enumerate() {
        *p = inputs[col0 + j].as_ptr();
    }
    let rows = outputs.len();
    let vec_end = len / 32 * 32;

    if rows == 1 {
        // Single output (recovery, repair): keep all 2K tables in registers.
        let mut tl = [_mm256_setzero_si256(); K];
        let mut th = [_mm256_setzero_si256(); K];
        for j in 0..K {
            let [lo, hi] = &t.wide[col0 + j];
            tl[j] = load_table(lo);
            th[j] = load_table(hi);
        }
        let out = outputs[0].as_mut_ptr();
        let mut pos = 0;
        while pos < vec_end {
            // SAFETY: pos + 32 <= vec_end <= len, and every input and the output hold >= len bytes.
            let mut a = if accumulate {
                unsafe { _mm256_loadu_si256(out.add(pos).cast()) }
            } else {
                _mm256_setzero_si256()
            };
            for j in 0..K {
                // SAFETY: as above.
                let v = unsafe { _mm256_loadu_si256(inp[j].add(pos).cast()) };
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                a = _mm256_xor_si256(a, _mm256_shuffle_epi8(tl[j], lo));
                a = _mm256_xor_si256(a, _mm256_shuffle_epi8(th[j], hi));
            }
            // SAFETY: as above.
            unsafe { _mm256_storeu_si256(out.add(pos).cast(), a) };
            pos += 32;
        }
    } else {
        let mut outp: Vec<*mut u8> = outputs.iter_mut().map(|o| o.as_mut_ptr()).collect();
        let mut pos = 0;
        while pos < vec_end {
            let mut lo = [_mm256_setzero_si256(); K];
            let mut hi = [_mm256_setzero_si256(); K];
            for j in 0..K {
                // SAFETY: pos + 32 <= len and every input holds >= len bytes.
                let v = unsafe { _mm256_loadu_si256(inp[j].add(pos).cast()) };
                lo[j] = _mm256_and_si256(v, mask);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
            }
            for (r, o) in outp.iter_mut().enumerate() {
                let row = &t.wide[r * t.cols + col0..r * t.cols + col0 + K];
                // SAFETY: pos + 32 <= len and every output holds >= len bytes.
                let mut a = if accumulate {
                    unsafe { _mm256_loadu_si256(o.add(pos).cast()) }
                } else {
                    _mm256_setzero_si256()
                };
                for j in 0..K {
                    let [tlo, thi] = &row[j];
                    a = _mm256_xor_si256(a, _mm256_shuffle_epi8(load_table(tlo), lo[j]));
                    a = _mm256_xor_si256(a, _mm256_shuffle_epi8(load_table(thi), hi[j]));
                }
                // SAFETY: as above.
                unsafe { _mm256_storeu_si256(o.add(pos).cast(), a) };
            }
            pos += 32;
        }
    }
    // The last len % 32 bytes go through the scalar loop.
    scalar_group(t, col0, K, inputs, outputs, vec_end, len, accumulate);
}
