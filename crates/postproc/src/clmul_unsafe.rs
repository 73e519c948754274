//! PCLMULQDQ kernels for GF(2^64) butterflies (x86-64 only).
//!
//! `unsafe` is needed for two reasons only: calling functions compiled with
//! `#[target_feature(enable = "pclmulqdq")]` (sound because every entry point here is reached
//! only after [`available`] confirmed the CPU has the feature) and unaligned 128-bit loads and
//! stores through raw pointers (sound because every access is inside the slice bounds checked
//! in the loop conditions). Results are bit-identical to the portable [`crate::gf64`] code; the
//! tests compare both.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    /// Reduces two 128-bit products (lanes of `lo`/`hi`) modulo z^64+z^4+z^3+z+1.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    fn reduce2(lo: __m128i, hi: __m128i) -> __m128i {
        let g = _mm_xor_si128(
            _mm_xor_si128(_mm_srli_epi64(hi, 63), _mm_srli_epi64(hi, 61)),
            _mm_srli_epi64(hi, 60),
        );
        let h = _mm_xor_si128(hi, g);
        let t = _mm_xor_si128(
            _mm_xor_si128(h, _mm_slli_epi64(h, 1)),
            _mm_xor_si128(_mm_slli_epi64(h, 3), _mm_slli_epi64(h, 4)),
        );
        _mm_xor_si128(lo, t)
    }

    /// Both lanes of `b` times the low lane of `s`.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    fn mul2_const(b: __m128i, s: __m128i) -> __m128i {
        let p0 = _mm_clmulepi64_si128(b, s, 0x00);
        let p1 = _mm_clmulepi64_si128(b, s, 0x01);
        reduce2(_mm_unpacklo_epi64(p0, p1), _mm_unpackhi_epi64(p0, p1))
    }

    /// Lane-wise product of `a` and `b`.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    fn mul2(a: __m128i, b: __m128i) -> __m128i {
        let p0 = _mm_clmulepi64_si128(a, b, 0x00);
        let p1 = _mm_clmulepi64_si128(a, b, 0x11);
        reduce2(_mm_unpacklo_epi64(p0, p1), _mm_unpackhi_epi64(p0, p1))
    }

    /// One product in GF(2^64).
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    fn mul1(a: u64, s: u64) -> u64 {
        let p = _mm_clmulepi64_si128(_mm_cvtsi64_si128(a as i64), _mm_cvtsi64_si128(s as i64), 0);
        let lo = _mm_cvtsi128_si64(p) as u64;
        let hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(p, p)) as u64;
        crate::gf64::reduce(lo, hi)
    }

    /// Forward butterflies `a ^= s·b; b ^= a` over equal-length slices.
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn bfly_fwd(a: &mut [u64], b: &mut [u64], s: u64) {
        let n = a.len().min(b.len());
        if s == 0 {
            for (x, y) in a[..n].iter().zip(b[..n].iter_mut()) {
                *y ^= *x;
            }
            return;
        }
        let sv = _mm_cvtsi64_si128(s as i64);
        let mut j = 0;
        while j + 2 <= n {
            // SAFETY: j + 2 <= n <= len of both slices; loadu/storeu accept any alignment.
            unsafe {
                let pa = a.as_mut_ptr().add(j) as *mut __m128i;
                let pb = b.as_mut_ptr().add(j) as *mut __m128i;
                let va = _mm_loadu_si128(pa);
                let vb = _mm_loadu_si128(pb);
                let na = _mm_xor_si128(va, mul2_const(vb, sv));
                _mm_storeu_si128(pa, na);
                _mm_storeu_si128(pb, _mm_xor_si128(vb, na));
            }
            j += 2;
        }
        if j < n {
            a[j] ^= mul1(b[j], s);
            b[j] ^= a[j];
        }
    }

    /// Inverse butterflies `b ^= a; a ^= s·b` over equal-length slices.
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn bfly_inv(a: &mut [u64], b: &mut [u64], s: u64) {
        let n = a.len().min(b.len());
        if s == 0 {
            for (x, y) in a[..n].iter().zip(b[..n].iter_mut()) {
                *y ^= *x;
            }
            return;
        }
        let sv = _mm_cvtsi64_si128(s as i64);
        let mut j = 0;
        while j + 2 <= n {
            // SAFETY: j + 2 <= n <= len of both slices; loadu/storeu accept any alignment.
            unsafe {
                let pa = a.as_mut_ptr().add(j) as *mut __m128i;
                let pb = b.as_mut_ptr().add(j) as *mut __m128i;
                let va = _mm_loadu_si128(pa);
                let nb = _mm_xor_si128(_mm_loadu_si128(pb), va);
                _mm_storeu_si128(pb, nb);
                _mm_storeu_si128(pa, _mm_xor_si128(va, mul2_const(nb, sv)));
            }
            j += 2;
        }
        if j < n {
            b[j] ^= a[j];
            a[j] ^= mul1(b[j], s);
        }
    }

    /// All layers of the forward transform inside one block of `data.len()` (a power of two
    /// ≥ 2) elements whose block index at the top layer is `c0`.
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn fft_block_fwd(data: &mut [u64], tw: &[u64], c0: usize) {
        let m = data.len().trailing_zeros();
        for i in (0..m).rev() {
            let half = 1usize << i;
            let base = c0 << (m - 1 - i);
            if half == 1 {
                for (cc, pair) in data.chunks_exact_mut(2).enumerate() {
                    let s = tw[base + cc];
                    pair[0] ^= mul1(pair[1], s);
                    pair[1] ^= pair[0];
                }
            } else {
                for (cc, blk) in data.chunks_exact_mut(2 * half).enumerate() {
                    let (a, b) = blk.split_at_mut(half);
                    bfly_fwd(a, b, tw[base + cc]);
                }
            }
        }
    }

    /// Inverse of [`fft_block_fwd`].
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn fft_block_inv(data: &mut [u64], tw: &[u64], c0: usize) {
        let m = data.len().trailing_zeros();
        for i in 0..m {
            let half = 1usize << i;
            let base = c0 << (m - 1 - i);
            if half == 1 {
                for (cc, pair) in data.chunks_exact_mut(2).enumerate() {
                    let s = tw[base + cc];
                    pair[1] ^= pair[0];
                    pair[0] ^= mul1(pair[1], s);
                }
            } else {
                for (cc, blk) in data.chunks_exact_mut(2 * half).enumerate() {
                    let (a, b) = blk.split_at_mut(half);
                    bfly_inv(a, b, tw[base + cc]);
                }
            }
        }
    }

    /// `a[j] = a[j]·b[j]`.
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn pointwise(a: &mut [u64], b: &[u64]) {
        let n = a.len().min(b.len());
        let mut j = 0;
        while j + 2 <= n {
            // SAFETY: j + 2 <= n <= len of both slices; loadu/storeu accept any alignment.
            unsafe {
                let pa = a.as_mut_ptr().add(j) as *mut __m128i;
                let pb = b.as_ptr().add(j) as *const __m128i;
                _mm_storeu_si128(pa, mul2(_mm_loadu_si128(pa), _mm_loadu_si128(pb)));
            }
            j += 2;
        }
        if j < n {
            a[j] = mul1(a[j], b[j]);
        }
    }
}

/// Whether the PCLMULQDQ kernels can run on this CPU.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Forward butterflies; `false` when the kernel is unavailable (caller falls back).
pub(crate) fn bfly_fwd(a: &mut [u64], b: &mut [u64], s: u64) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::bfly_fwd(a, b, s) };
        return true;
    }
    let _ = (a, b, s);
    false
}

/// Inverse butterflies; `false` when the kernel is unavailable.
pub(crate) fn bfly_inv(a: &mut [u64], b: &mut [u64], s: u64) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::bfly_inv(a, b, s) };
        return true;
    }
    let _ = (a, b, s);
    false
}

/// All forward layers inside one block; `false` when unavailable.
pub(crate) fn fft_block_fwd(data: &mut [u64], tw: &[u64], c0: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::fft_block_fwd(data, tw, c0) };
        return true;
    }
    let _ = (data, tw, c0);
    false
}

/// All inverse layers inside one block; `false` when unavailable.
pub(crate) fn fft_block_inv(data: &mut [u64], tw: &[u64], c0: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::fft_block_inv(data, tw, c0) };
        return true;
    }
    let _ = (data, tw, c0);
    false
}

/// Pointwise product; `false` when unavailable.
pub(crate) fn pointwise(a: &mut [u64], b: &[u64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::pointwise(a, b) };
        return true;
    }
    let _ = (a, b);
    false
}
