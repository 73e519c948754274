//! Bulk GF(2^8) kernels: `out_r = Σ_j M[r][j] · in_j`, byte by byte, over long buffers.
//!
//! Splitting (Vandermonde rows times `[secret, c_1, …, c_{k-1}]`), recovery (Lagrange weights times
//! shares), repair, refresh and error checking are all this one matrix–vector product over byte
//! streams. Multiplication by a constant `c` uses the split-nibble method: `c·b = L[b & 15] ⊕
//! H[b >> 4]` with two 16-entry tables per constant, which AVX2's `vpshufb` looks up 32 bytes at
//! a time ([`crate::simd_unsafe_avx2`]); a portable scalar loop does the same byte by byte.
//! The backend is chosen at run time.

use crate::gf256;

/// Which implementation of the bulk kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Portable byte-at-a-time split-nibble lookups.
    Scalar,
    /// AVX2 `vpshufb` split-nibble lookups, 32 bytes per instruction (x86-64 only).
    Avx2,
    /// GFNI `vgf2p8mulb` on 256-bit vectors: one instruction multiplies 32 byte pairs in this
    /// very field (the AES polynomial), on CPUs that have it (x86-64 only).
    Gfni,
}

impl Backend {
    /// The fastest backend this CPU supports (detected at run time).
    pub fn detect() -> Backend {
        if gfni_available() {
            Backend::Gfni
        } else if avx2_available() {
            Backend::Avx2
        } else {
            Backend::Scalar
        }
    }

    /// `self` if this CPU supports it, otherwise [`Backend::Scalar`].
    pub fn or_supported(self) -> Backend {
        match self {
            Backend::Gfni if gfni_available() => Backend::Gfni,
            Backend::Gfni | Backend::Avx2 if avx2_available() => Backend::Avx2,
            _ => Backend::Scalar,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    crate::simd_unsafe_avx2::available()
}

#[cfg(target_arch = "x86_64")]
fn gfni_available() -> bool {
    crate::simd_unsafe_avx2::gfni_available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn gfni_available() -> bool {
    false
}

/// Split-nibble tables for a `rows × cols` coefficient matrix.
pub(crate) struct MatTables {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// `nib[r * cols + j] = [L, H]` for coefficient `M[r][j]`.
    pub(crate) nib: Vec<[[u8; 16]; 2]>,
    /// The same tables repeated in both 128-bit lanes, for 256-bit shuffles.
    pub(crate) wide: Vec<[[u8; 32]; 2]>,
    /// The coefficient repeated 32 times, for GFNI multiplies.
    pub(crate) bcast: Vec<[u8; 32]>,
    /// 0 for a zero coefficient (skip), 1 for a one (plain XOR), 2 otherwise (multiply).
    pub(crate) kind: Vec<u8>,
}

impl MatTables {
    /// Tables for `matrix` (row-major, `rows * cols` entries).
    pub(crate) fn new(matrix: &[u8], rows: usize, cols: usize) -> Self {
        assert_eq!(matrix.len(), rows * cols, "matrix shape");
        let mut nib = Vec::with_capacity(matrix.len());
        let mut wide = Vec::with_capacity(matrix.len());
        let bcast = matrix.iter().map(|&c| [c; 32]).collect();
        let kind = matrix.iter().map(|&c| c.min(2)).collect();
        for &c in matrix {
            let mut lo = [0u8; 16];
            let mut hi = [0u8; 16];
            for t in 0..16u8 {
                lo[t as usize] = gf256::mul(c, t);
                hi[t as usize] = gf256::mul(c, t << 4);
            }
            let mut wlo = [0u8; 32];
            let mut whi = [0u8; 32];
            wlo[..16].copy_from_slice(&lo);
            wlo[16..].copy_from_slice(&lo);
            whi[..16].copy_from_slice(&hi);
            whi[16..].copy_from_slice(&hi);
            nib.push([lo, hi]);
            wide.push([wlo, whi]);
        }
        Self {
            rows,
            cols,
            nib,
            wide,
            bcast,
            kind,
        }
    }
}

/// `outputs[r] = Σ_j M[r][j] · inputs[j]` over the first `len` bytes, with the given backend.
///
/// Every input and output must hold at least `len` bytes (checked; a violation is a bug in this
/// crate, never a consequence of user input, because callers validate lengths first).
pub(crate) fn mat_mul(
    backend: Backend,
    t: &MatTables,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    len: usize,
) {
    assert_eq!(inputs.len(), t.cols, "input count");
    assert_eq!(outputs.len(), t.rows, "output count");
    assert!(inputs.iter().all(|i| i.len() >= len), "input length");
    assert!(outputs.iter().all(|o| o.len() >= len), "output length");
    if t.cols == 0 {
        for o in outputs.iter_mut() {
            o[..len].fill(0);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if backend != Backend::Scalar
        && crate::simd_unsafe_avx2::mat_mul(backend == Backend::Gfni, t, inputs, outputs, len)
    {
        return;
    }
    let _ = backend;
    let mut col = 0;
    while col < t.cols {
        let k = (t.cols - col).min(8);
        scalar_group(t, col, k, inputs, outputs, 0, len, col > 0);
        col += k;
    }
}

/// Scalar kernel over bytes `start..end` for input columns `col0..col0 + k`; with `accumulate`
/// the result is XOR-ed into the outputs instead of overwriting them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scalar_group(
    t: &MatTables,
    col0: usize,
    k: usize,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    start: usize,
    end: usize,
    accumulate: bool,
) {
    if start >= end {
        return;
    }
    for (r, out) in outputs.iter_mut().enumerate() {
        let out = &mut out[start..end];
        if !accumulate {
            out.fill(0);
        }
        for (j, input) in inputs.iter().enumerate().skip(col0).take(k) {
            let [lo, hi] = &t.nib[r * t.cols + j];
            let inp = &input[start..end];
            for (o, &b) in out.iter_mut().zip(inp) {
                *o ^= lo[(b & 15) as usize] ^ hi[(b >> 4) as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};

    fn reference(matrix: &[u8], cols: usize, inputs: &[Vec<u8>], len: usize) -> Vec<Vec<u8>> {
        let rows = matrix.len() / cols.max(1);
        (0..rows)
            .map(|r| {
                (0..len)
                    .map(|b| {
                        (0..cols).fold(0u8, |acc, j| {
                            acc ^ gf256::mul_slow(matrix[r * cols + j], inputs[j][b])
                        })
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn backends_match_reference_for_many_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for &(rows, cols) in &[
            (1, 1),
            (1, 3),
            (5, 3),
            (9, 5),
            (2, 8),
            (3, 9),
            (4, 17),
            (1, 20),
        ] {
            for &len in &[0usize, 1, 31, 32, 33, 64, 100, 1000] {
                let mut matrix = vec![0u8; rows * cols];
                rng.fill_bytes(&mut matrix);
                let inputs: Vec<Vec<u8>> = (0..cols)
                    .map(|_| {
                        let mut v = vec![0u8; len];
                        rng.fill_bytes(&mut v);
                        v
                    })
                    .collect();
                let want = reference(&matrix, cols, &inputs, len);
                let t = MatTables::new(&matrix, rows, cols);
                for backend in [
                    Backend::Scalar,
                    Backend::Avx2.or_supported(),
                    Backend::Gfni.or_supported(),
                ] {
                    // Pre-fill outputs with garbage: the kernel must overwrite, not accumulate.
                    let mut outs: Vec<Vec<u8>> = (0..rows).map(|_| vec![0xA5; len]).collect();
                    let ins: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
                    let mut outs_ref: Vec<&mut [u8]> =
                        outs.iter_mut().map(|v| v.as_mut_slice()).collect();
                    mat_mul(backend, &t, &ins, &mut outs_ref, len);
                    assert_eq!(outs, want, "{backend:?} rows={rows} cols={cols} len={len}");
                }
            }
        }
    }

    #[test]
    fn detection_is_consistent() {
        let b = Backend::detect();
        assert_eq!(b, b.or_supported());
        assert_eq!(Backend::Scalar.or_supported(), Backend::Scalar);
    }
}
