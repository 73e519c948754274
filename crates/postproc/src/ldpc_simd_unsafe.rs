//! The LDPC decoder kernel compiled for AVX2 and AVX-512BW, chosen at run time.
//!
//! `unsafe` is needed only to call functions compiled with `#[target_feature]`; each call is
//! sound because it happens only after `is_x86_feature_detected!` confirmed the features.
//! The kernel itself is the safe, portable [`crate::ldpc::decoder`] code (integer only), so
//! every path gives bit-identical results; the tests compare them.
#![allow(unsafe_code)]

use crate::ldpc::code::QcCode;
use crate::ldpc::decoder::{decode_impl, Bufs, CheckRule};

/// Instruction set for the decoder kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    /// The best the CPU offers.
    Auto,
    /// Portable code (baseline target features).
    Portable,
    /// AVX2 (16 lanes of i16).
    Avx2,
    /// AVX-512BW (32 lanes of i16).
    Avx512,
}

impl Simd {
    /// Whether this CPU can run `self`.
    pub(crate) fn available(self) -> bool {
        match self {
            Simd::Auto | Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn resolve(self) -> Simd {
        match self {
            Simd::Auto if Simd::Avx512.available() => Simd::Avx512,
            Simd::Auto if Simd::Avx2.available() => Simd::Avx2,
            Simd::Auto => Simd::Portable,
            s if s.available() => s,
            _ => Simd::Portable,
        }
    }
}

/// Runs [`decode_impl`] with the requested kernel (falls back to portable code).
pub(crate) fn decode(
    simd: Simd,
    code: &QcCode,
    b: Bufs<'_>,
    max_iter: usize,
    rule: CheckRule,
) -> Option<usize> {
    match simd.resolve() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `resolve` returned Avx512 only after detecting avx512f and avx512bw.
        Simd::Avx512 => unsafe { decode_avx512(code, b, max_iter, rule) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `resolve` returned Avx2 only after detecting avx2.
        Simd::Avx2 => unsafe { decode_avx2(code, b, max_iter, rule) },
        _ => decode_impl(code, b, max_iter, rule),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_avx2(code: &QcCode, b: Bufs<'_>, max_iter: usize, rule: CheckRule) -> Option<usize> {
    decode_impl(code, b, max_iter, rule)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn decode_avx512(code: &QcCode, b: Bufs<'_>, max_iter: usize, rule: CheckRule) -> Option<usize> {
    decode_impl(code, b, max_iter, rule)
}
