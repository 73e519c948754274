//! Safe kernels compiled for wider instruction sets (AVX2, AVX-512, BMI2) and dispatched after
//! run-time CPU detection.
//!
//! `unsafe` is needed only to call functions compiled with `#[target_feature]`: sound because
//! every call is guarded by a cached `is_x86_feature_detected!` check of the same features. The
//! kernel bodies are the portable ones (inlined into the feature-enabled wrappers), so the
//! results are identical by construction; the tests compare them anyway.
#![allow(unsafe_code)]

/// Parameters of the three multiply/xorshift/add rounds of a Cascade permutation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rounds {
    pub(crate) mask: u32,
    pub(crate) shift: u32,
    pub(crate) mul: [u32; 3],
    pub(crate) add: [u32; 3],
}

impl Rounds {
    /// One evaluation.
    #[inline(always)]
    pub(crate) fn apply(&self, mut x: u32) -> u32 {
        for r in 0..3 {
            x = x.wrapping_mul(self.mul[r]) & self.mask;
            x ^= x >> self.shift;
            x = x.wrapping_add(self.add[r]) & self.mask;
        }
        x
    }

    /// `out[i] = apply(base + i)`: the portable body (auto-vectorised with whatever the
    /// enclosing function's target features allow).
    #[inline(always)]
    fn block_body(&self, base: u32, out: &mut [u32; 64]) {
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.apply(base.wrapping_add(i as u32));
        }
    }

    /// `out[i] = apply(base + i)` for 64 consecutive inputs, with the widest vector unit.
    pub(crate) fn block(&self, base: u32, out: &mut [u32; 64]) {
        #[cfg(target_arch = "x86_64")]
        match level() {
            // SAFETY: level() saw avx512f on this CPU.
            Level::Avx512 => return unsafe { x86::block_avx512(self, base, out) },
            // SAFETY: level() saw avx2 on this CPU.
            Level::Avx2 => return unsafe { x86::block_avx2(self, base, out) },
            Level::Portable => {}
        }
        self.block_body(base, out)
    }
}

/// `Σ_i bit(src, idx[i]) << i` for the first `len ≤ 64` indices: bit `idx[i]` of the packed
/// array `src` becomes bit `i` of the result.
pub(crate) fn gather_bits(src: &[u64], idx: &[u32; 64], len: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if len == 64 && level() == Level::Avx512 {
        // SAFETY: level() saw avx512f on this CPU.
        if let Some(v) = unsafe { x86::gather_avx512(src, idx) } {
            return v;
        }
    }
    gather_bits_portable(src, idx, len)
}

/// Reference for [`gather_bits`].
pub(crate) fn gather_bits_portable(src: &[u64], idx: &[u32; 64], len: usize) -> u64 {
    idx[..len].iter().enumerate().fold(0u64, |acc, (i, &v)| {
        acc | ((src[v as usize / 64] >> (v % 64)) & 1) << i
    })
}

/// Instruction-set level for the vector kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Portable,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

/// The widest level this CPU supports (`KAGI_NO_AVX512` caps it at AVX2, `KAGI_PORTABLE` at
/// the portable code), detected once.
pub(crate) fn level() -> Level {
    static L: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        if std::env::var_os("KAGI_PORTABLE").is_some() {
            return Level::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::env::var_os("KAGI_NO_AVX512").is_none()
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// Whether BMI2 (`pext`/`pdep`) is available.
pub(crate) fn has_bmi2() -> bool {
    static B: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("bmi2")
                && std::env::var_os("KAGI_PORTABLE").is_none()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Bits of `x` where `m` is set, packed to the low end (`pext`).
#[inline]
pub(crate) fn pext(x: u64, m: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if has_bmi2() {
        // SAFETY: has_bmi2() saw bmi2 on this CPU.
        return unsafe { x86::pext(x, m) };
    }
    pext_portable(x, m)
}

/// Low bits of `x` spread to the positions set in `m` (`pdep`).
#[inline]
pub(crate) fn pdep(x: u64, m: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if has_bmi2() {
        // SAFETY: has_bmi2() saw bmi2 on this CPU.
        return unsafe { x86::pdep(x, m) };
    }
    pdep_portable(x, m)
}

/// Reference `pext`, one set bit of the mask at a time.
pub(crate) fn pext_portable(x: u64, mut m: u64) -> u64 {
    let mut out = 0;
    let mut k = 0;
    while m != 0 {
        let b = m.trailing_zeros();
        out |= ((x >> b) & 1) << k;
        k += 1;
        m &= m - 1;
    }
    out
}

/// Reference `pdep`.
pub(crate) fn pdep_portable(x: u64, mut m: u64) -> u64 {
    let mut out = 0;
    let mut k = 0;
    while m != 0 {
        let b = m.trailing_zeros();
        out |= ((x >> k) & 1) << b;
        k += 1;
        m &= m - 1;
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Rounds;

    #[target_feature(enable = "avx2")]
    pub(super) fn block_avx2(r: &Rounds, base: u32, out: &mut [u32; 64]) {
        r.block_body(base, out)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn block_avx512(r: &Rounds, base: u32, out: &mut [u32; 64]) {
        r.block_body(base, out)
    }

    /// 64 single-bit gathers, 16 per `vpgatherdd`; `None` (nothing read) if an index is out
    /// of range.
    #[target_feature(enable = "avx512f")]
    pub(super) fn gather_avx512(src: &[u64], idx: &[u32; 64]) -> Option<u64> {
        use std::arch::x86_64::*;
        let limit = src.len().saturating_mul(64).min(u32::MAX as usize) as u32;
        let lim = _mm512_set1_epi32(limit as i32);
        let one = _mm512_set1_epi32(1);
        let low5 = _mm512_set1_epi32(31);
        let mut out = 0u64;
        for q in 0..4 {
            // SAFETY: idx has 64 elements, q·16 + 16 ≤ 64; loadu accepts any alignment.
            let v = unsafe { _mm512_loadu_si512(idx.as_ptr().add(16 * q) as *const __m512i) };
            if _mm512_cmpge_epu32_mask(v, lim) != 0 {
                return None;
            }
            let word = _mm512_srli_epi32::<5>(v);
            // SAFETY: every index is below 64·src.len() (checked just above), so every 32-bit
            // word read, at byte offset 4·(index / 32), lies inside `src`.
            let g = unsafe { _mm512_i32gather_epi32::<4>(word, src.as_ptr() as *const i32) };
            let bits = _mm512_srlv_epi32(g, _mm512_and_si512(v, low5));
            out |= (_mm512_test_epi32_mask(bits, one) as u64) << (16 * q);
        }
        Some(out)
    }

    #[target_feature(enable = "bmi2")]
    pub(super) fn pext(x: u64, m: u64) -> u64 {
        std::arch::x86_64::_pext_u64(x, m)
    }

    #[target_feature(enable = "bmi2")]
    pub(super) fn pdep(x: u64, m: u64) -> u64 {
        std::arch::x86_64::_pdep_u64(x, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_rounds_and_bmi2_equal_the_portable_code() {
        let r = Rounds {
            mask: (1 << 20) - 1,
            shift: 10,
            mul: [0x9_e377, 0x8_5ebd, 0xc_2b2f],
            add: [0x2_7d4e, 0x1_6566, 0xd_3a26],
        };
        let mut fast = [0u32; 64];
        let mut slow = [0u32; 64];
        for base in [0u32, 64, 1 << 19, (1 << 20) - 10] {
            r.block(base, &mut fast);
            r.block_body(base, &mut slow);
            assert_eq!(fast, slow);
        }
        let src: Vec<u64> = (0..100u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut idx = [0u32; 64];
        for (i, v) in idx.iter_mut().enumerate() {
            *v = (i as u32).wrapping_mul(2_654_435_761) % 6400;
        }
        for len in [1, 17, 63, 64] {
            assert_eq!(
                gather_bits(&src, &idx, len),
                gather_bits_portable(&src, &idx, len)
            );
        }
        idx[5] = 6400; // out of range: the fast path must refuse, not read
        #[cfg(target_arch = "x86_64")]
        if level() == Level::Avx512 {
            // SAFETY: level() saw avx512f.
            assert_eq!(unsafe { x86::gather_avx512(&src, &idx) }, None);
        }
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..1000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let m = x.rotate_left(17) ^ (x >> 3);
            assert_eq!(pext(x, m), pext_portable(x, m));
            assert_eq!(pdep(x, m), pdep_portable(x, m));
            let k = m.count_ones();
            let low = if k == 64 { !0 } else { (1u64 << k) - 1 };
            assert_eq!(pext(pdep(x, m), m), x & low);
        }
    }
}
