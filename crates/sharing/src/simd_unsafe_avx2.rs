//! The 256-bit x86 GF(2^8) kernels: AVX2 split-nibble lookups and, where the CPU has it, GFNI.
//! This module holds the crate's only `unsafe` code: calls into `#[target_feature]` functions
//! (sound only after run-time detection) and unaligned 32-byte loads and stores through raw
//! pointers (sound because every pointer stays inside a slice whose length was checked first).
//!
//! For 32 bytes `v` of an input and a constant `c` with nibble tables `L`, `H` (see
//! [`crate::kernel`]): `c·v = vpshufb(L, v & 0x0f) ⊕ vpshufb(H, (v >> 4) & 0x0f)`. With GFNI,
//! `c·v = vgf2p8mulb(v, [c; 32])` (GFNI multiplies modulo the AES polynomial, which is this
//! crate's field). Inputs are processed in groups of up to eight (a const-generic `K`). With a
//! single output (recovery, repair) all constants stay in registers and the inputs stream past.
//! With several outputs (splitting) the caller hands over cache-sized blocks and each output is
//! computed in turn over the whole block, 64 bytes per step: one sequential store stream at a
//! time is much faster than `n` interleaved ones. Coefficients 0 and 1 (the whole first
//! Vandermonde column and row when splitting) skip the multiply.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use crate::kernel::{scalar_group, MatTables};

/// Whether this CPU has AVX2 (std caches the CPUID answer).
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Whether this CPU has AVX2 and GFNI.
pub(crate) fn gfni_available() -> bool {
    available() && std::is_x86_feature_detected!("gfni")
}

/// Runs `outputs = M · inputs` over `len` bytes with GFNI (`gfni = true`) or AVX2 split-nibble
/// lookups. Returns `false` (doing nothing) when the CPU lacks the features. The caller
/// guarantees `inputs.len() == t.cols`, `outputs.len() == t.rows` and at least `len` bytes in
/// every slice; they are re-checked here because the raw-pointer loops below rely on them.
pub(crate) fn mat_mul(
    gfni: bool,
    t: &MatTables,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    len: usize,
) -> bool {
    if !(if gfni { gfni_available() } else { available() }) {
        return false;
    }
    assert!(inputs.len() == t.cols && outputs.len() == t.rows);
    assert!(inputs.iter().all(|s| s.len() >= len) && outputs.iter().all(|s| s.len() >= len));
    let mut col = 0;
    while col < t.cols {
        let k = (t.cols - col).min(8);
        let acc = col > 0;
        // SAFETY: the required CPU features are present (checked above). The group functions
        // read `len` bytes from inputs `col..col + k` and read/write `len` bytes of every
        // output; all of these slices were checked above to hold at least `len` bytes, and `k`
        // columns starting at `col` exist because `col + k <= t.cols == inputs.len()`.
        unsafe {
            macro_rules! dispatch {
                ($($n:literal)*) => {
                    match (gfni, k) {
                        $( (true, $n) => group_gfni::<$n>(t, col, inputs, outputs, len, acc),
                           (false, $n) => group_avx2::<$n>(t, col, inputs, outputs, len, acc), )*
                        _ => unreachable!("group size is 1..=8"),
                    }
                };
            }
            dispatch!(1 2 3 4 5 6 7 8);
        }
        col += k;
    }
    true
}

/// Loads 32 bytes from a table entry.
#[inline(always)]
fn load32(t: &[u8; 32]) -> __m256i {
    // SAFETY: `t` refers to exactly 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(t.as_ptr().cast()) }
}

/// One group of `K` input columns starting at `col0`, split-nibble lookups.
///
/// # Safety
/// AVX2 must be available; `inputs[col0..col0 + K]` must exist and, like every output, hold at
/// least `len` bytes.
#[target_feature(enable = "avx2")]
unsafe fn group_avx2<const K: usize>(
    t: &MatTables,
    col0: usize,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    len: usize,
    accumulate: bool,
) {
    let mask = _mm256_set1_epi8(0x0f);
    let inp: [*const u8; K] = core::array::from_fn(|j| inputs[col0 + j].as_ptr());
    let vec_end = len / 32 * 32;

    if outputs.len() == 1 {
        // Single output (recovery, repair): keep all 2K tables in registers.
        let tl: [__m256i; K] = core::array::from_fn(|j| load32(&t.wide[col0 + j][0]));
        let th: [__m256i; K] = core::array::from_fn(|j| load32(&t.wide[col0 + j][1]));
        let out = outputs[0].as_mut_ptr();
        let mut pos = 0;
        while pos < vec_end {
            // SAFETY (all loads/stores in this loop): pos + 32 <= vec_end <= len, and every input
            // and the output hold at least len bytes.
            let mut a = if accumulate {
                unsafe { _mm256_loadu_si256(out.add(pos).cast()) }
            } else {
                _mm256_setzero_si256()
            };
            for j in 0..K {
                let v = unsafe { _mm256_loadu_si256(inp[j].add(pos).cast()) };
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                a = _mm256_xor_si256(a, _mm256_shuffle_epi8(tl[j], lo));
                a = _mm256_xor_si256(a, _mm256_shuffle_epi8(th[j], hi));
            }
            unsafe { _mm256_storeu_si256(out.add(pos).cast(), a) };
            pos += 32;
        }
        // The last len % 32 bytes go through the scalar loop.
        scalar_group(t, col0, K, inputs, outputs, vec_end, len, accumulate);
    } else {
        // Several outputs (splitting, error checking): one output at a time over the whole
        // (cache-sized) block, 64 bytes per iteration. A single sequential store stream runs
        // much faster than n interleaved ones; the K inputs are re-read from L1 for each output.
        let end64 = len / 64 * 64;
        for (r, o) in outputs.iter_mut().enumerate() {
            let o = o.as_mut_ptr();
            let base = r * t.cols + col0;
            let kinds = &t.kind[base..base + K];
            let tl: [__m256i; K] = core::array::from_fn(|j| load32(&t.wide[base + j][0]));
            let th: [__m256i; K] = core::array::from_fn(|j| load32(&t.wide[base + j][1]));
            let mut pos = 0;
            while pos < end64 {
                // SAFETY (all loads/stores in this loop): pos + 64 <= len and every input and
                // output holds at least len bytes.
                let mut a = if accumulate {
                    unsafe {
                        [
                            _mm256_loadu_si256(o.add(pos).cast()),
                            _mm256_loadu_si256(o.add(pos + 32).cast()),
                        ]
                    }
                } else {
                    [_mm256_setzero_si256(); 2]
                };
                for j in 0..K {
                    let v = unsafe {
                        [
                            _mm256_loadu_si256(inp[j].add(pos).cast()),
                            _mm256_loadu_si256(inp[j].add(pos + 32).cast()),
                        ]
                    };
                    match kinds[j] {
                        0 => {}
                        1 => {
                            a[0] = _mm256_xor_si256(a[0], v[0]);
                            a[1] = _mm256_xor_si256(a[1], v[1]);
                        }
                        _ => {
                            for h in 0..2 {
                                let lo = _mm256_and_si256(v[h], mask);
                                let hi = _mm256_and_si256(_mm256_srli_epi16(v[h], 4), mask);
                                let p = _mm256_xor_si256(
                                    _mm256_shuffle_epi8(tl[j], lo),
                                    _mm256_shuffle_epi8(th[j], hi),
                                );
                                a[h] = _mm256_xor_si256(a[h], p);
                            }
                        }
                    }
                }
                unsafe {
                    _mm256_storeu_si256(o.add(pos).cast(), a[0]);
                    _mm256_storeu_si256(o.add(pos + 32).cast(), a[1]);
                }
                pos += 64;
            }
        }
        scalar_group(t, col0, K, inputs, outputs, end64, len, accumulate);
    }
}

/// One group of `K` input columns starting at `col0`, GFNI multiplies.
///
/// # Safety
/// AVX2 and GFNI must be available; `inputs[col0..col0 + K]` must exist and, like every output,
/// hold at least `len` bytes.
#[target_feature(enable = "avx2,gfni")]
unsafe fn group_gfni<const K: usize>(
    t: &MatTables,
    col0: usize,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    len: usize,
    accumulate: bool,
) {
    let inp: [*const u8; K] = core::array::from_fn(|j| inputs[col0 + j].as_ptr());
    let vec_end = len / 32 * 32;

    if outputs.len() == 1 {
        let c: [__m256i; K] = core::array::from_fn(|j| load32(&t.bcast[col0 + j]));
        let out = outputs[0].as_mut_ptr();
        let mut pos = 0;
        while pos < vec_end {
            // SAFETY (all loads/stores in this loop): pos + 32 <= vec_end <= len, and every input
            // and the output hold at least len bytes.
            let mut a = if accumulate {
                unsafe { _mm256_loadu_si256(out.add(pos).cast()) }
            } else {
                _mm256_setzero_si256()
            };
            for j in 0..K {
                let v = unsafe { _mm256_loadu_si256(inp[j].add(pos).cast()) };
                a = _mm256_xor_si256(a, _mm256_gf2p8mul_epi8(v, c[j]));
            }
            unsafe { _mm256_storeu_si256(out.add(pos).cast(), a) };
            pos += 32;
        }
        // The last len % 32 bytes go through the scalar loop.
        scalar_group(t, col0, K, inputs, outputs, vec_end, len, accumulate);
    } else {
        // One output at a time over the whole (cache-sized) block: a single sequential store
        // stream, with the K inputs re-read from L1.
        let end64 = len / 64 * 64;
        for (r, o) in outputs.iter_mut().enumerate() {
            let o = o.as_mut_ptr();
            let base = r * t.cols + col0;
            let kinds = &t.kind[base..base + K];
            let c: [__m256i; K] = core::array::from_fn(|j| load32(&t.bcast[base + j]));
            let mut pos = 0;
            while pos < end64 {
                // SAFETY (all loads/stores in this loop): pos + 64 <= len and every input and
                // output holds at least len bytes.
                let mut a = if accumulate {
                    unsafe {
                        [
                            _mm256_loadu_si256(o.add(pos).cast()),
                            _mm256_loadu_si256(o.add(pos + 32).cast()),
                        ]
                    }
                } else {
                    [_mm256_setzero_si256(); 2]
                };
                for j in 0..K {
                    let (v0, v1) = unsafe {
                        (
                            _mm256_loadu_si256(inp[j].add(pos).cast()),
                            _mm256_loadu_si256(inp[j].add(pos + 32).cast()),
                        )
                    };
                    match kinds[j] {
                        0 => {}
                        1 => {
                            a[0] = _mm256_xor_si256(a[0], v0);
                            a[1] = _mm256_xor_si256(a[1], v1);
                        }
                        _ => {
                            a[0] = _mm256_xor_si256(a[0], _mm256_gf2p8mul_epi8(v0, c[j]));
                            a[1] = _mm256_xor_si256(a[1], _mm256_gf2p8mul_epi8(v1, c[j]));
                        }
                    }
                }
                unsafe {
                    _mm256_storeu_si256(o.add(pos).cast(), a[0]);
                    _mm256_storeu_si256(o.add(pos + 32).cast(), a[1]);
                }
                pos += 64;
            }
        }
        scalar_group(t, col0, K, inputs, outputs, end64, len, accumulate);
    }
}
