//! Multiplication in GF(2)[z] of very long polynomials by an additive FFT over GF(2^64).
//!
//! Method (Kronecker segmentation + Lin–Chung–Han novel-basis FFT on the Cantor basis):
//! 1. The binary polynomials are cut into 32-bit chunks; chunk `i` becomes coefficient `i` of a
//!    polynomial over GF(2^64) (its bits are the coefficients of z^0..z^31). The product of two
//!    chunks has degree ≤ 62 < 64, so sums of chunk products are never reduced modulo the field
//!    polynomial: the product over GF(2^64)[y] equals the binary product with y = z^32.
//! 2. Coefficients are converted from the monomial basis to the LCH novel basis
//!    X_j = Π_{bit i of j} s_i(x), where s_i = ψ^i, ψ(x) = x² + x (Cantor basis: the subspace
//!    polynomials are the iterates of ψ and need no normalisation). The conversion uses only
//!    XORs: a Taylor expansion in y = s_{2^d}(x) = x^(2^(2^d)) + x followed by recursive
//!    conversion of the digits and of the columns (s_m(y) = s_{m+2^d}(x)).
//! 3. The LCH FFT evaluates at all points of span(β_0..β_{k−1}) with butterflies
//!    `a += t·b; b += a`, one multiplication per pair and layer; the constant of block `c` is
//!    `t[c] = Σ_b c_b β_{b+1}` at every layer.
//! 4. Pointwise products, inverse FFT, inverse basis conversion.
//!
//! Everything is exact (finite-field arithmetic); the tests compare with schoolbook products.

use crate::clmul_unsafe;
use crate::gf64;

/// Elements (u64) per block handled with all its remaining layers in one cache-resident call.
const LEAF: usize = 1 << 15;
/// Minimum slice length (u64 words) worth splitting across threads.
const PAR_MIN: usize = 1 << 16;

/// Which butterfly kernels to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kernels {
    simd: bool,
    wide: bool,
}

impl Kernels {
    /// The fastest kernels available on this CPU.
    pub(crate) fn best() -> Self {
        Self {
            simd: clmul_unsafe::available(),
            wide: true,
        }
    }

    /// Portable kernels only (reference for tests).
    #[cfg(test)]
    pub(crate) fn portable() -> Self {
        Self {
            simd: false,
            wide: false,
        }
    }

    /// 128-bit PCLMULQDQ kernels only (no AVX-512), for tests.
    #[cfg(test)]
    pub(crate) fn narrow() -> Self {
        Self {
            simd: clmul_unsafe::available(),
            wide: false,
        }
    }

    fn bfly_fwd(self, a: &mut [u64], b: &mut [u64], s: u64) {
        if self.simd && clmul_unsafe::bfly_fwd(a, b, s, self.wide) {
            return;
        }
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            *x ^= gf64::mul(*y, s);
            *y ^= *x;
        }
    }

    fn bfly_inv(self, a: &mut [u64], b: &mut [u64], s: u64) {
        if self.simd && clmul_unsafe::bfly_inv(a, b, s, self.wide) {
            return;
        }
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            *y ^= *x;
            *x ^= gf64::mul(*y, s);
        }
    }

    fn leaf_fwd(self, data: &mut [u64], tw: &[u64], c0: usize) {
        if self.simd && clmul_unsafe::fft_block_fwd(data, tw, c0, self.wide) {
            return;
        }
        let m = data.len().trailing_zeros();
        for i in (0..m).rev() {
            let half = 1usize << i;
            let base = c0 << (m - 1 - i);
            for (cc, blk) in data.chunks_exact_mut(2 * half).enumerate() {
                let (a, b) = blk.split_at_mut(half);
                self.bfly_fwd(a, b, tw[base + cc]);
            }
        }
    }

    fn leaf_inv(self, data: &mut [u64], tw: &[u64], c0: usize) {
        if self.simd && clmul_unsafe::fft_block_inv(data, tw, c0, self.wide) {
            return;
        }
        let m = data.len().trailing_zeros();
        for i in 0..m {
            let half = 1usize << i;
            let base = c0 << (m - 1 - i);
            for (cc, blk) in data.chunks_exact_mut(2 * half).enumerate() {
                let (a, b) = blk.split_at_mut(half);
                self.bfly_inv(a, b, tw[base + cc]);
            }
        }
    }

    fn pointwise(self, a: &mut [u64], b: &[u64]) {
        if self.simd && clmul_unsafe::pointwise(a, b, self.wide) {
            return;
        }
        for (x, y) in a.iter_mut().zip(b) {
            *x = gf64::mul(*x, *y);
        }
    }
}

/// Runs `f(a_part, b_part)` on matching pieces of two equal slices, in up to `threads` threads.
fn par_pairs<F>(a: &mut [u64], b: &mut [u64], threads: usize, f: &F)
where
    F: Fn(&mut [u64], &mut [u64]) + Sync,
{
    if threads <= 1 || a.len() < PAR_MIN {
        f(a, b);
        return;
    }
    let mid = a.len() / 2;
    let (a0, a1) = a.split_at_mut(mid);
    let (b0, b1) = b.split_at_mut(mid);
    std::thread::scope(|s| {
        s.spawn(|| par_pairs(a0, b0, threads / 2, f));
        par_pairs(a1, b1, threads - threads / 2, f);
    });
}

/// `a[j] *= b[j]` in GF(2^64), split across threads when long.
fn par_pointwise(a: &mut [u64], b: &[u64], threads: usize, kern: Kernels) {
    if threads <= 1 || a.len() < PAR_MIN {
        kern.pointwise(a, b);
        return;
    }
    let mid = a.len() / 2;
    let (a0, a1) = a.split_at_mut(mid);
    let (b0, b1) = b.split_at(mid);
    std::thread::scope(|s| {
        s.spawn(|| par_pointwise(a0, b0, threads / 2, kern));
        par_pointwise(a1, b1, threads - threads / 2, kern);
    });
}

/// `dst ^= src`, split across threads when long.
fn xor_into(dst: &mut [u64], src: &[u64], threads: usize) {
    if threads <= 1 || dst.len() < PAR_MIN {
        for (d, s) in dst.iter_mut().zip(src) {
            *d ^= *s;
        }
        return;
    }
    let mid = dst.len() / 2;
    let (d0, d1) = dst.split_at_mut(mid);
    let (s0, s1) = src.split_at(mid);
    std::thread::scope(|s| {
        s.spawn(|| xor_into(d0, s0, threads / 2));
        xor_into(d1, s1, threads - threads / 2);
    });
}

/// Applies `f(chunk, index, inner_threads)` to consecutive chunks of `chunk` words, spreading
/// the chunks over up to `threads` threads.
fn par_chunks<F>(data: &mut [u64], chunk: usize, first: usize, threads: usize, f: &F)
where
    F: Fn(&mut [u64], usize, usize) + Sync,
{
    let n = data.len() / chunk;
    if n == 1 {
        f(data, first, threads);
        return;
    }
    if threads <= 1 || n == 0 {
        for (i, c) in data.chunks_exact_mut(chunk).enumerate() {
            f(c, first + i, 1);
        }
        return;
    }
    let left = n / 2;
    let (d0, d1) = data.split_at_mut(left * chunk);
    std::thread::scope(|s| {
        s.spawn(|| par_chunks(d0, chunk, first, threads / 2, f));
        par_chunks(d1, chunk, first + left, threads - threads / 2, f);
    });
}

/// Largest power of two strictly below `k` (k ≥ 2).
fn split_point(k: u32) -> u32 {
    1 << (31 - (k - 1).leading_zeros())
}

/// Step 1 of the conversion: Taylor expansion in y = x^T + x (T = 2^D) of a polynomial of
/// 2^k coefficients, each an element of `w` words; in place, digits g_i in blocks of T.
/// Sequential; see [`taylor_par`] for the threaded version.
fn taylor(data: &mut [u64], k: u32, d: u32, w: usize, inverse: bool) {
    let t = 1usize << d;
    for step in 0..k - d {
        let lv = if inverse { step } else { k - d - 1 - step };
        let sigma = 1usize << lv;
        let blk = 2 * t * sigma * w;
        for b in data.chunks_exact_mut(blk) {
            taylor_block(b, t, sigma, w, inverse, 1);
        }
    }
}

/// One split `f = A + y^σ·B` of a block of 2Tσ elements (or its inverse).
#[inline]
fn taylor_block(b: &mut [u64], t: usize, sigma: usize, w: usize, inverse: bool, th: usize) {
    let (lo, hi) = b.split_at_mut(t * sigma * w);
    let n = (t * sigma - sigma) * w;
    let xor = |dst: &mut [u64], src: &[u64]| {
        if th > 1 {
            xor_into(dst, src, th);
        } else {
            for (x, y) in dst.iter_mut().zip(src) {
                *x ^= *y;
            }
        }
    };
    if inverse {
        xor(&mut lo[sigma * w..sigma * w + n], &hi[..n]);
        let (h, top) = hi.split_at_mut(n);
        xor(&mut h[..sigma * w], top);
    } else {
        let (h, top) = hi.split_at_mut(n);
        // B[j] ^= h1[j] (j < σ), h1 = top σ elements of the upper half
        xor(&mut h[..sigma * w], top);
        // A[σ + j] ^= B[j] (j < Tσ − σ)
        xor(&mut lo[sigma * w..sigma * w + n], &hi[..n]);
    }
}

/// Threaded [`taylor`]: blocks spread over threads, or one block's XORs split.
fn taylor_par(data: &mut [u64], k: u32, d: u32, w: usize, threads: usize, inverse: bool) {
    if threads <= 1 {
        taylor(data, k, d, w, inverse);
        return;
    }
    let t = 1usize << d;
    for step in 0..k - d {
        let lv = if inverse { step } else { k - d - 1 - step };
        let sigma = 1usize << lv;
        let blk = 2 * t * sigma * w;
        par_chunks(data, blk, 0, threads, &|b: &mut [u64], _, th| {
            taylor_block(b, t, sigma, w, inverse, th)
        });
    }
}

/// Monomial → novel basis for 2^k elements of 1 word, k ≤ 2 (hand-unrolled leaves).
#[inline]
fn small_w1(e: &mut [u64], inverse: bool) {
    if e.len() == 4 {
        if inverse {
            e[1] ^= e[2];
            e[2] ^= e[3];
        } else {
            e[2] ^= e[3];
            e[1] ^= e[2];
        }
    }
}

/// Monomial → novel basis, in place, for 2^k elements of `w` words each (sequential).
fn to_novel_seq(data: &mut [u64], k: u32, w: usize) {
    if k <= 1 {
        return;
    }
    if k == 2 && w == 1 {
        small_w1(data, false);
        return;
    }
    let d = split_point(k);
    taylor(data, k, d, w, false);
    let t = 1usize << d;
    for blk in data.chunks_exact_mut(t * w) {
        to_novel_seq(blk, d, w);
    }
    to_novel_seq(data, k - d, t * w);
}

/// Novel → monomial basis (inverse of [`to_novel_seq`]).
fn from_novel_seq(data: &mut [u64], k: u32, w: usize) {
    if k <= 1 {
        return;
    }
    if k == 2 && w == 1 {
        small_w1(data, true);
        return;
    }
    let d = split_point(k);
    let t = 1usize << d;
    from_novel_seq(data, k - d, t * w);
    for blk in data.chunks_exact_mut(t * w) {
        from_novel_seq(blk, d, w);
    }
    taylor(data, k, d, w, true);
}

/// Monomial → novel basis, in place, for 2^k elements of `w` words each.
pub(crate) fn to_novel(data: &mut [u64], k: u32, w: usize, threads: usize) {
    if k <= 1 {
        return;
    }
    if threads <= 1 || data.len() < PAR_MIN {
        to_novel_seq(data, k, w);
        return;
    }
    let d = split_point(k);
    taylor_par(data, k, d, w, threads, false);
    let t = 1usize << d;
    par_chunks(data, t * w, 0, threads, &|blk: &mut [u64], _, th| {
        to_novel(blk, d, w, th)
    });
    to_novel(data, k - d, t * w, threads);
}

/// Novel → monomial basis, in place (inverse of [`to_novel`]).
pub(crate) fn from_novel(data: &mut [u64], k: u32, w: usize, threads: usize) {
    if k <= 1 {
        return;
    }
    if threads <= 1 || data.len() < PAR_MIN {
        from_novel_seq(data, k, w);
        return;
    }
    let d = split_point(k);
    let t = 1usize << d;
    from_novel(data, k - d, t * w, threads);
    par_chunks(data, t * w, 0, threads, &|blk: &mut [u64], _, th| {
        from_novel(blk, d, w, th)
    });
    taylor_par(data, k, d, w, threads, true);
}

/// Forward LCH FFT of a block (length a power of two) whose index at its top layer is `c`.
pub(crate) fn fft_fwd(data: &mut [u64], tw: &[u64], c: usize, kern: Kernels, threads: usize) {
    let n = data.len();
    if n < 2 {
        return;
    }
    if n <= LEAF {
        kern.leaf_fwd(data, tw, c);
        return;
    }
    let (a, b) = data.split_at_mut(n / 2);
    let s = tw[c];
    par_pairs(a, b, threads, &|x: &mut [u64], y: &mut [u64]| {
        kern.bfly_fwd(x, y, s)
    });
    if threads > 1 {
        std::thread::scope(|sc| {
            sc.spawn(|| fft_fwd(a, tw, 2 * c, kern, threads / 2));
            fft_fwd(b, tw, 2 * c + 1, kern, threads - threads / 2);
        });
    } else {
        fft_fwd(a, tw, 2 * c, kern, 1);
        fft_fwd(b, tw, 2 * c + 1, kern, 1);
    }
}

/// Inverse of [`fft_fwd`].
pub(crate) fn fft_inv(data: &mut [u64], tw: &[u64], c: usize, kern: Kernels, threads: usize) {
    let n = data.len();
    if n < 2 {
        return;
    }
    if n <= LEAF {
        kern.leaf_inv(data, tw, c);
        return;
    }
    let (a, b) = data.split_at_mut(n / 2);
    if threads > 1 {
        std::thread::scope(|sc| {
            sc.spawn(|| fft_inv(a, tw, 2 * c, kern, threads / 2));
            fft_inv(b, tw, 2 * c + 1, kern, threads - threads / 2);
        });
    } else {
        fft_inv(a, tw, 2 * c, kern, 1);
        fft_inv(b, tw, 2 * c + 1, kern, 1);
    }
    let s = tw[c];
    par_pairs(a, b, threads, &|x: &mut [u64], y: &mut [u64]| {
        kern.bfly_inv(x, y, s)
    });
}

/// u64 words a cache tile may hold (half of a 1 MiB L2).
const TILE_WORDS: usize = 1 << 16;

/// Monomial → novel basis for 2^k one-word elements of which only the first `ext` may be
/// non-zero; cache-blocked and threaded for large k.
fn novel_fwd_big(data: &mut [u64], k: u32, threads: usize, ext: usize) {
    if data.len() <= 2 * TILE_WORDS || k <= 2 {
        to_novel(data, k, 1, threads);
        return;
    }
    let d = split_point(k);
    let t = 1usize << d;
    // Step 1: Taylor expansion in y = x^T + x; blocks whose upper half is zero are no-ops.
    for lv in (0..k - d).rev() {
        let sigma = 1usize << lv;
        let blk = 2 * t * sigma;
        let live = ext.div_ceil(blk).min(data.len() / blk);
        par_chunks(
            &mut data[..live * blk],
            blk,
            0,
            threads,
            &|b: &mut [u64], idx, th| {
                if idx * blk + t * sigma < ext {
                    taylor_block(b, t, sigma, 1, false, th);
                }
            },
        );
    }
    // Step 2a: the digits g_i (rows of T elements); rows past the extent are zero.
    let rows = ext.div_ceil(t).min(data.len() / t);
    par_chunks(
        &mut data[..rows * t],
        t,
        0,
        threads,
        &|blk: &mut [u64], _, _| to_novel_seq(blk, d, 1),
    );
    // Step 2b: the columns, in slabs that fit in cache.
    columns(data, k - d, t, threads, false);
}

/// Converts the columns of a row-major matrix of 2^kr rows × `t` words (each column a
/// polynomial in y), in cache-sized slabs of columns, spread over threads.
fn columns(data: &mut [u64], kr: u32, t: usize, threads: usize, inverse: bool) {
    let nrows = 1usize << kr;
    let cw = (TILE_WORDS / nrows).clamp(8, t);
    let slabs = t / cw;
    let run = |first: usize, count: usize, rows: &mut [&mut [u64]]| {
        let mut buf = vec![0u64; nrows * cw];
        for sl in first..first + count {
            let c0 = (sl - first) * cw;
            for (r, row) in rows.iter().enumerate() {
                buf[r * cw..(r + 1) * cw].copy_from_slice(&row[c0..c0 + cw]);
            }
            if inverse {
                from_novel_seq(&mut buf, kr, cw);
            } else {
                to_novel_seq(&mut buf, kr, cw);
            }
            for (r, row) in rows.iter_mut().enumerate() {
                row[c0..c0 + cw].copy_from_slice(&buf[r * cw..(r + 1) * cw]);
            }
        }
    };
    let th = threads.clamp(1, slabs);
    if th == 1 {
        let mut rows: Vec<&mut [u64]> = data.chunks_exact_mut(t).collect();
        run(0, slabs, &mut rows);
        return;
    }
    // Column ranges per thread: split every row at the same column boundaries.
    let per = slabs.div_ceil(th);
    let mut parts: Vec<Vec<&mut [u64]>> = (0..th).map(|_| Vec::with_capacity(nrows)).collect();
    for row in data.chunks_exact_mut(t) {
        let mut rest = row;
        for (p, part) in parts.iter_mut().enumerate() {
            let width = (per * cw).min(rest.len());
            let (head, tail) = rest.split_at_mut(if p + 1 == th { rest.len() } else { width });
            part.push(head);
            rest = tail;
        }
    }
    std::thread::scope(|s| {
        for (p, mut part) in parts.into_iter().enumerate() {
            let first = p * per;
            let count = per.min(slabs.saturating_sub(first));
            let run = &run;
            s.spawn(move || run(first, count, &mut part));
        }
    });
}

/// Novel → monomial basis for 2^k one-word elements; cache-blocked and threaded.
fn novel_inv_big(data: &mut [u64], k: u32, threads: usize) {
    if data.len() <= 2 * TILE_WORDS || k <= 2 {
        from_novel(data, k, 1, threads);
        return;
    }
    let d = split_point(k);
    let t = 1usize << d;
    columns(data, k - d, t, threads, true);
    par_chunks(data, t, 0, threads, &|blk: &mut [u64], _, _| {
        from_novel_seq(blk, d, 1)
    });
    taylor_par(data, k, d, 1, threads, true);
}

/// The layers above the leaves of a forward (or inverse) FFT, for the column range this
/// thread owns: `segs[q]` is that range of leaf segment `q`.
fn top_layers(
    segs: &mut [&mut [u64]],
    k: u32,
    tw: &[u64],
    kern: Kernels,
    inverse: bool,
    ext: usize,
) {
    let lk = LEAF.trailing_zeros();
    let nseg = segs.len();
    let width = segs.first().map_or(0, |s| s.len());
    let cw = (TILE_WORDS / nseg).clamp(2, width.max(2));
    let layers: Vec<u32> = if inverse {
        (lk..k).collect()
    } else {
        (lk..k).rev().collect()
    };
    let mut j0 = 0;
    while j0 < width {
        let j1 = (j0 + cw).min(width);
        for &i in &layers {
            let half_segs = 1usize << (i - lk);
            for (c, &s) in tw.iter().enumerate().take(nseg / (2 * half_segs)) {
                for q in 0..half_segs {
                    let sa = c * 2 * half_segs + q;
                    let sb = sa + half_segs;
                    let (l, r) = segs.split_at_mut(sb);
                    let a = &mut l[sa][j0..j1];
                    let b = &mut r[0][j0..j1];
                    if inverse {
                        kern.bfly_inv(a, b, s);
                    } else if i + 1 == k && ext <= (1usize << i) {
                        b.copy_from_slice(a); // upper half of the input is zero
                    } else {
                        kern.bfly_fwd(a, b, s);
                    }
                }
            }
        }
        j0 = j1;
    }
}

/// Splits `data` into leaf segments, each cut into `th` column ranges, and runs
/// [`top_layers`] on each range in its own thread.
fn top_layers_par(
    data: &mut [u64],
    tw: &[u64],
    kern: Kernels,
    threads: usize,
    inverse: bool,
    ext: usize,
) {
    let k = data.len().trailing_zeros();
    let th = threads.clamp(1, LEAF / 2);
    let part = LEAF / th;
    let mut parts: Vec<Vec<&mut [u64]>> = (0..th).map(|_| Vec::new()).collect();
    for seg in data.chunks_exact_mut(LEAF) {
        let mut rest = seg;
        for (i, p) in parts.iter_mut().enumerate() {
            let take = if i + 1 == th { rest.len() } else { part };
            let (h, t) = rest.split_at_mut(take);
            p.push(h);
            rest = t;
        }
    }
    if th == 1 {
        top_layers(&mut parts[0], k, tw, kern, inverse, ext);
        return;
    }
    std::thread::scope(|s| {
        for mut p in parts {
            s.spawn(move || top_layers(&mut p, k, tw, kern, inverse, ext));
        }
    });
}

/// Forward FFT of a power-of-two array (only the first `ext` elements non-zero), tiled.
fn fft_fwd_big(data: &mut [u64], tw: &[u64], kern: Kernels, threads: usize, ext: usize) {
    if data.len() <= LEAF {
        fft_fwd(data, tw, 0, kern, threads);
        return;
    }
    top_layers_par(data, tw, kern, threads, false, ext);
    par_chunks(data, LEAF, 0, threads, &|blk: &mut [u64], idx, _| {
        kern.leaf_fwd(blk, tw, idx)
    });
}

/// Inverse of [`fft_fwd_big`].
fn fft_inv_big(data: &mut [u64], tw: &[u64], kern: Kernels, threads: usize) {
    if data.len() <= LEAF {
        fft_inv(data, tw, 0, kern, threads);
        return;
    }
    par_chunks(data, LEAF, 0, threads, &|blk: &mut [u64], idx, _| {
        kern.leaf_inv(blk, tw, idx)
    });
    top_layers_par(data, tw, kern, threads, true, data.len());
}

/// Reusable big buffers: fresh 64 MiB allocations cost more in page faults than the memset.
static POOL: std::sync::Mutex<Vec<Vec<u64>>> = std::sync::Mutex::new(Vec::new());

/// A zero-filled buffer of `len` words, reused from the pool when possible.
pub(crate) fn take_zeroed(len: usize) -> Vec<u64> {
    if len >= PAR_MIN {
        if let Ok(mut p) = POOL.lock() {
            if let Some(i) = p.iter().position(|v| v.capacity() >= len) {
                let mut v = p.swap_remove(i);
                v.clear();
                v.resize(len, 0);
                return v;
            }
        }
    }
    vec![0; len]
}

/// Wipes a buffer (it held key-derived data) and returns it to the pool.
pub(crate) fn recycle(mut v: Vec<u64>) {
    use zeroize::Zeroize;
    v.zeroize();
    if v.capacity() >= PAR_MIN {
        if let Ok(mut p) = POOL.lock() {
            if p.len() < 3 {
                p.push(v);
            }
        }
    }
}

/// Transform length (power of two ≥ 2) for a product with `out_len` coefficients.
pub(crate) fn transform_len(out_len: usize) -> usize {
    out_len.next_power_of_two().max(2)
}

/// Multiplies two polynomials over GF(2^64) held zero-padded in buffers of the transform length
/// `l` (see [`transform_len`]), with `ext_a`/`ext_b` leading coefficients possibly non-zero and
/// `ext_a + ext_b − 1 ≤ l`. The products must not need reduction to be meaningful as binary
/// products (see the module doc). Consumes both buffers; returns the `l` product coefficients.
pub(crate) fn mul_padded(
    a: Vec<u64>,
    ext_a: usize,
    b: Vec<u64>,
    ext_b: usize,
    kern: Kernels,
    threads: usize,
) -> Vec<u64> {
    let l = a.len();
    debug_assert!(l.is_power_of_two() && b.len() == l && ext_a + ext_b <= l + 1);
    let k = l.trailing_zeros();
    let tw = gf64::twiddles(l / 2);
    let transform = |mut v: Vec<u64>, ext: usize, th: usize| {
        novel_fwd_big(&mut v, k, th, ext);
        fft_fwd_big(&mut v, &tw, kern, th, ext);
        v
    };
    let (mut fa, fb) = if threads > 1 {
        std::thread::scope(|s| {
            let h = s.spawn(|| transform(a, ext_a, threads / 2));
            let fb = transform(b, ext_b, threads - threads / 2);
            (h.join().expect("transform thread panicked"), fb)
        })
    } else {
        (transform(a, ext_a, 1), transform(b, ext_b, 1))
    };
    par_pointwise(&mut fa, &fb, threads, kern);
    recycle(fb);
    fft_inv_big(&mut fa, &tw, kern, threads);
    novel_inv_big(&mut fa, k, threads);
    fa
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Evaluates a novel-basis polynomial at a point, directly from the definition.
    fn eval_novel(coeffs: &[u64], x: u64) -> u64 {
        let k = coeffs.len().trailing_zeros() as usize;
        let mut s = vec![x; k.max(1)];
        for i in 1..k {
            s[i] = gf64::psi(s[i - 1]);
        }
        let mut acc = 0;
        for (j, &c) in coeffs.iter().enumerate() {
            let mut xj = 1u64;
            for (i, si) in s.iter().enumerate().take(k) {
                if (j >> i) & 1 == 1 {
                    xj = gf64::mul(xj, *si);
                }
            }
            acc ^= gf64::mul(c, xj);
        }
        acc
    }

    fn eval_monomial(coeffs: &[u64], x: u64) -> u64 {
        coeffs.iter().rev().fold(0, |acc, &c| gf64::mul(acc, x) ^ c)
    }

    fn point(u: usize) -> u64 {
        let b = gf64::cantor_basis();
        (0..usize::BITS as usize)
            .filter(|&i| (u >> i) & 1 == 1)
            .fold(0, |acc, i| acc ^ b[i])
    }

    #[test]
    fn conversion_preserves_the_polynomial_and_inverts() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for k in 0..=9u32 {
            let n = 1usize << k;
            let mono: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
            let mut nov = mono.clone();
            to_novel(&mut nov, k, 1, 1);
            for _ in 0..4 {
                let x: u64 = rng.gen();
                assert_eq!(eval_novel(&nov, x), eval_monomial(&mono, x), "k={k}");
            }
            let mut back = nov.clone();
            from_novel(&mut back, k, 1, 1);
            assert_eq!(back, mono, "k={k}");
        }
    }

    #[test]
    fn fft_evaluates_at_the_cantor_subspace() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for k in 1..=8u32 {
            let n = 1usize << k;
            let nov: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
            let tw = gf64::twiddles(n / 2);
            for kern in [Kernels::portable(), Kernels::narrow(), Kernels::best()] {
                let mut v = nov.clone();
                fft_fwd(&mut v, &tw, 0, kern, 1);
                for (u, &val) in v.iter().enumerate() {
                    assert_eq!(val, eval_novel(&nov, point(u)), "k={k} u={u}");
                }
                fft_inv(&mut v, &tw, 0, kern, 1);
                assert_eq!(v, nov);
            }
        }
    }

    #[test]
    fn simd_and_portable_kernels_agree_on_large_transforms() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 1usize << 14; // above LEAF, exercises the recursive layers and threads
        let data: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
        let tw = gf64::twiddles(n / 2);
        let mut a = data.clone();
        let mut b = data.clone();
        fft_fwd(&mut a, &tw, 0, Kernels::portable(), 1);
        fft_fwd(&mut b, &tw, 0, Kernels::best(), 2);
        assert_eq!(a, b);
        let mut n2 = data.clone();
        fft_fwd(&mut n2, &tw, 0, Kernels::narrow(), 1);
        assert_eq!(a, n2);
        let mut p = a.clone();
        Kernels::portable().pointwise(&mut p, &data);
        let mut w = a.clone();
        Kernels::best().pointwise(&mut w, &data);
        assert_eq!(p, w);
        let mut c = data.clone();
        to_novel(&mut c, 14, 1, 2);
        let mut d = data;
        to_novel(&mut d, 14, 1, 1);
        assert_eq!(c, d);
    }

    #[test]
    fn cache_blocked_threaded_paths_equal_the_simple_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let k = 18u32;
        let n = 1usize << k;
        let tw = gf64::twiddles(n / 2);
        for ext in [n / 3, n / 2, n] {
            let mut data: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
            data[ext..].iter_mut().for_each(|x| *x = 0);
            let mut simple = data.clone();
            to_novel_seq(&mut simple, k, 1);
            fft_fwd(&mut simple, &tw, 0, Kernels::best(), 1);
            for th in [1, 2, 3] {
                let mut big = data.clone();
                novel_fwd_big(&mut big, k, th, ext);
                fft_fwd_big(&mut big, &tw, Kernels::best(), th, ext);
                assert!(big == simple, "forward ext={ext} threads={th}");
                fft_inv_big(&mut big, &tw, Kernels::best(), th);
                novel_inv_big(&mut big, k, th);
                assert!(big == data, "inverse ext={ext} threads={th}");
            }
        }
    }
}
