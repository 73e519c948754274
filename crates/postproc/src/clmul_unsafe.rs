//! PCLMULQDQ (128-bit) and VPCLMULQDQ (AVX-512) kernels for GF(2^64) butterflies (x86-64 only).
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
    pub(super) fn mul1(a: u64, s: u64) -> u64 {
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

#[cfg(target_arch = "x86_64")]
mod imp512 {
    use std::arch::x86_64::*;

    /// a ^ b ^ c in one instruction.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn xor3(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64(a, b, c, 0x96)
    }

    /// Eight lanes of `b` times the constant in every lane of `s`, in GF(2^64).
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn mul8_const(b: __m512i, s: __m512i) -> __m512i {
        let p0 = _mm512_clmulepi64_epi128(b, s, 0x00);
        let p1 = _mm512_clmulepi64_epi128(b, s, 0x01);
        reduce8(_mm512_unpacklo_epi64(p0, p1), _mm512_unpackhi_epi64(p0, p1))
    }

    /// Lane-wise products of eight pairs.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn mul8(a: __m512i, b: __m512i) -> __m512i {
        let p0 = _mm512_clmulepi64_epi128(a, b, 0x00);
        let p1 = _mm512_clmulepi64_epi128(a, b, 0x11);
        reduce8(_mm512_unpacklo_epi64(p0, p1), _mm512_unpackhi_epi64(p0, p1))
    }

    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn reduce8(lo: __m512i, hi: __m512i) -> __m512i {
        let g = xor3(
            _mm512_srli_epi64(hi, 63),
            _mm512_srli_epi64(hi, 61),
            _mm512_srli_epi64(hi, 60),
        );
        let h = _mm512_xor_si512(hi, g);
        let t = xor3(
            _mm512_slli_epi64(h, 1),
            _mm512_slli_epi64(h, 3),
            _mm512_slli_epi64(h, 4),
        );
        xor3(lo, h, t)
    }

    /// Forward butterflies `a ^= s·b; b ^= a`; returns how many leading elements were done
    /// (a multiple of 8), the caller finishes the tail.
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    pub(super) fn bfly_fwd(a: &mut [u64], b: &mut [u64], s: u64) -> usize {
        let n = a.len().min(b.len()) / 8 * 8;
        let sv = _mm512_set1_epi64(s as i64);
        let mut j = 0;
        while j < n {
            // SAFETY: j + 8 <= n <= len of both slices; loadu/storeu accept any alignment.
            unsafe {
                let pa = a.as_mut_ptr().add(j) as *mut __m512i;
                let pb = b.as_mut_ptr().add(j) as *mut __m512i;
                let va = _mm512_loadu_si512(pa as *const __m512i);
                let vb = _mm512_loadu_si512(pb as *const __m512i);
                let na = _mm512_xor_si512(va, mul8_const(vb, sv));
                _mm512_storeu_si512(pa, na);
                _mm512_storeu_si512(pb, _mm512_xor_si512(vb, na));
            }
            j += 8;
        }
        n
    }

    /// Inverse butterflies `b ^= a; a ^= s·b`; returns the number of leading elements done.
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    pub(super) fn bfly_inv(a: &mut [u64], b: &mut [u64], s: u64) -> usize {
        let n = a.len().min(b.len()) / 8 * 8;
        let sv = _mm512_set1_epi64(s as i64);
        let mut j = 0;
        while j < n {
            // SAFETY: j + 8 <= n <= len of both slices; loadu/storeu accept any alignment.
            unsafe {
                let pa = a.as_mut_ptr().add(j) as *mut __m512i;
                let pb = b.as_mut_ptr().add(j) as *mut __m512i;
                let va = _mm512_loadu_si512(pa as *const __m512i);
                let nb = _mm512_xor_si512(_mm512_loadu_si512(pb as *const __m512i), va);
                _mm512_storeu_si512(pb, nb);
                _mm512_storeu_si512(pa, _mm512_xor_si512(va, mul8_const(nb, sv)));
            }
            j += 8;
        }
        n
    }

    /// `a[j] *= b[j]`; returns the number of leading elements done.
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    pub(super) fn pointwise(a: &mut [u64], b: &[u64]) -> usize {
        let n = a.len().min(b.len()) / 8 * 8;
        let mut j = 0;
        while j < n {
            // SAFETY: j + 8 <= n <= len of both slices; loadu/storeu accept any alignment.
            unsafe {
                let pa = a.as_mut_ptr().add(j) as *mut __m512i;
                let pb = b.as_ptr().add(j) as *const __m512i;
                let r = mul8(
                    _mm512_loadu_si512(pa as *const __m512i),
                    _mm512_loadu_si512(pb),
                );
                _mm512_storeu_si512(pa, r);
            }
            j += 8;
        }
        n
    }

    /// All forward layers of one block (as [`super::imp::fft_block_fwd`]), 8 lanes at a time
    /// where the half-block allows.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse2")]
    pub(super) fn fft_block_fwd(data: &mut [u64], tw: &[u64], c0: usize) {
        use super::imp;
        let m = data.len().trailing_zeros();
        for i in (0..m).rev() {
            let half = 1usize << i;
            let base = c0 << (m - 1 - i);
            for (cc, blk) in data.chunks_exact_mut(2 * half).enumerate() {
                let s = tw[base + cc];
                let (a, b) = blk.split_at_mut(half);
                if half >= 8 {
                    bfly_fwd(a, b, s);
                } else if half >= 2 {
                    imp::bfly_fwd(a, b, s);
                } else {
                    a[0] ^= imp::mul1(b[0], s);
                    b[0] ^= a[0];
                }
            }
        }
    }

    /// Inverse of [`fft_block_fwd`].
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse2")]
    pub(super) fn fft_block_inv(data: &mut [u64], tw: &[u64], c0: usize) {
        use super::imp;
        let m = data.len().trailing_zeros();
        for i in 0..m {
            let half = 1usize << i;
            let base = c0 << (m - 1 - i);
            for (cc, blk) in data.chunks_exact_mut(2 * half).enumerate() {
                let s = tw[base + cc];
                let (a, b) = blk.split_at_mut(half);
                if half >= 8 {
                    bfly_inv(a, b, s);
                } else if half >= 2 {
                    imp::bfly_inv(a, b, s);
                } else {
                    b[0] ^= a[0];
                    a[0] ^= imp::mul1(b[0], s);
                }
            }
        }
    }
}

/// Whether the AVX-512 VPCLMULQDQ kernels can run on this CPU.
pub(crate) fn available_512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("vpclmulqdq")
                && std::env::var_os("KAGI_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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
pub(crate) fn bfly_fwd(a: &mut [u64], b: &mut [u64], s: u64, wide: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let done = if wide && available_512() && a.len() >= 8 {
            // SAFETY: the CPU supports avx512f and vpclmulqdq (checked by available_512).
            unsafe { imp512::bfly_fwd(a, b, s) }
        } else {
            0
        };
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::bfly_fwd(&mut a[done..], &mut b[done..], s) };
        return true;
    }
    let _ = (a, b, s, wide);
    false
}

/// Inverse butterflies; `false` when the kernel is unavailable.
pub(crate) fn bfly_inv(a: &mut [u64], b: &mut [u64], s: u64, wide: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let done = if wide && available_512() && a.len() >= 8 {
            // SAFETY: the CPU supports avx512f and vpclmulqdq (checked by available_512).
            unsafe { imp512::bfly_inv(a, b, s) }
        } else {
            0
        };
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::bfly_inv(&mut a[done..], &mut b[done..], s) };
        return true;
    }
    let _ = (a, b, s, wide);
    false
}

/// All forward layers inside one block; `false` when unavailable.
pub(crate) fn fft_block_fwd(data: &mut [u64], tw: &[u64], c0: usize, wide: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        if wide && available_512() {
            // SAFETY: the CPU supports avx512f, vpclmulqdq, pclmulqdq and sse2 (checked).
            unsafe { imp512::fft_block_fwd(data, tw, c0) };
        } else {
            // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
            unsafe { imp::fft_block_fwd(data, tw, c0) };
        }
        return true;
    }
    let _ = (data, tw, c0, wide);
    false
}

/// All inverse layers inside one block; `false` when unavailable.
pub(crate) fn fft_block_inv(data: &mut [u64], tw: &[u64], c0: usize, wide: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        if wide && available_512() {
            // SAFETY: the CPU supports avx512f, vpclmulqdq, pclmulqdq and sse2 (checked).
            unsafe { imp512::fft_block_inv(data, tw, c0) };
        } else {
            // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
            unsafe { imp::fft_block_inv(data, tw, c0) };
        }
        return true;
    }
    let _ = (data, tw, c0, wide);
    false
}

/// Pointwise product; `false` when unavailable.
pub(crate) fn pointwise(a: &mut [u64], b: &[u64], wide: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let done = if wide && available_512() {
            // SAFETY: the CPU supports avx512f and vpclmulqdq (checked by available_512).
            unsafe { imp512::pointwise(a, b) }
        } else {
            0
        };
        // SAFETY: the CPU supports pclmulqdq and sse2 (checked just above).
        unsafe { imp::pointwise(&mut a[done..], &b[done..]) };
        return true;
    }
    let _ = (a, b, wide);
    false
}
