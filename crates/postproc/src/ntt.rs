//! Toeplitz hashing by a number-theoretic transform over the Goldilocks prime
//! p = 2^64 − 2^32 + 1: the algorithm of the GPU path (feature `gpu`), run on the CPU.
//!
//! Every bit becomes one element of GF(p). The cyclic convolution of the seed `t` (n + r − 1
//! bits) and the input `x` (n bits) over a transform of length L ≥ n + r − 1 has, at positions
//! n − 1 … n + r − 2, exactly the integer counts Σ_j t[n−1+i−j]·x_j: products that wrap around
//! land below n − 1, and each count is at most n < p, so nothing is reduced. Their parities are
//! the Toeplitz hash `y = T·x`. So the result is bit for bit the one of
//! [`crate::toeplitz::toeplitz_hash`] (the tests compare them).
//!
//! Transforms: forward decimation in frequency (natural order in, bit-reversed out), pointwise
//! product in bit-reversed order, inverse decimation in time (bit-reversed in, natural out): no
//! bit reversal pass. The butterflies are done in *groups* of up to 2^[`GROUP_LOG`] elements ×
//! as many layers, one group per GPU thread held in registers; [`dif_grouped`] and
//! [`dit_grouped`] are line-for-line the CUDA kernels of the `gpu` module, so these tests check
//! the kernels' index arithmetic on any machine.

use crate::bits::BitVec;
use crate::toeplitz::{seed_len, ToeplitzError};

/// The Goldilocks prime.
pub const P: u64 = 0xffff_ffff_0000_0001;
/// 2^64 mod p = 2^32 − 1.
const EPS: u64 = 0xffff_ffff;
/// Layers done per pass over memory (2^GROUP_LOG elements per group).
pub const GROUP_LOG: u32 = 5;
/// Largest transform: 2^32 (the 2-adicity of p − 1).
pub const MAX_LOG: u32 = 32;

/// a + b mod p, for a, b < p.
#[inline]
pub fn add(a: u64, b: u64) -> u64 {
    let (s, c) = a.overflowing_add(b);
    // s + 2^64 ≡ s + EPS; either way the true sum is below 2p.
    let s = if c { s.wrapping_add(EPS) } else { s };
    if s >= P {
        s - P
    } else {
        s
    }
}

/// a − b mod p, for a, b < p.
#[inline]
pub fn sub(a: u64, b: u64) -> u64 {
    if a >= b {
        a - b
    } else {
        a.wrapping_sub(b).wrapping_add(P)
    }
}

/// a · b mod p (128-bit product reduced with 2^64 ≡ 2^32 − 1, 2^96 ≡ −1).
#[inline]
pub fn mul(a: u64, b: u64) -> u64 {
    let x = u128::from(a) * u128::from(b);
    reduce128(x as u64, (x >> 64) as u64)
}

/// (hi·2^64 + lo) mod p, canonical.
#[inline]
fn reduce128(lo: u64, hi: u64) -> u64 {
    let hi_hi = hi >> 32;
    let hi_lo = hi & EPS;
    let (mut t0, borrow) = lo.overflowing_sub(hi_hi);
    if borrow {
        t0 = t0.wrapping_sub(EPS);
    }
    let t1 = hi_lo * EPS;
    let (mut t2, carry) = t0.overflowing_add(t1);
    if carry {
        t2 = t2.wrapping_add(EPS);
    }
    if t2 >= P {
        t2 - P
    } else {
        t2
    }
}

/// a^e mod p.
pub fn pow(mut a: u64, mut e: u64) -> u64 {
    let mut r = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, a);
        }
        a = mul(a, a);
        e >>= 1;
    }
    r
}

/// A primitive 2^log-th root of unity (7 generates the multiplicative group).
pub fn root_of_unity(log: u32) -> u64 {
    debug_assert!(log <= MAX_LOG);
    pow(pow(7, (P - 1) >> MAX_LOG), 1u64 << (MAX_LOG - log))
}

/// Twiddles ω^i, i < L/2, for the transform of length L = 2^log.
pub fn twiddles(log: u32) -> Vec<u64> {
    let half = (1usize << log) / 2;
    let w = root_of_unity(log);
    let mut t = Vec::with_capacity(half.max(1));
    let mut x = 1;
    for _ in 0..half.max(1) {
        t.push(x);
        x = mul(x, w);
    }
    t
}

/// ω^{−i} from the table of ω^i (L/2 entries): ω^{−i} = −ω^{L/2−i} because ω^{L/2} = −1.
#[inline]
pub fn inv_twiddle(tw: &[u64], i: usize) -> u64 {
    if i == 0 {
        1
    } else {
        sub(0, tw[tw.len() - i])
    }
}

/// Layers of one pass: the largest half-length `h_top` and the number of layers `k`, from the
/// top of the forward transform down (the inverse runs the same passes in reverse order).
pub fn passes(log: u32) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    let mut top = log; // half-length of the next layer is 2^(top − 1)
    while top > 0 {
        let k = top.min(GROUP_LOG);
        out.push((1usize << (top - 1), k));
        top -= k;
    }
    out
}

/// One forward (decimation-in-frequency) pass: `k` layers with half-lengths h_top, h_top/2,
/// …, done group by group. The body of the loop over `g` is the CUDA kernel `dif_pass` for
/// thread `g`.
pub fn dif_grouped(a: &mut [u64], tw: &[u64], h_top: usize, k: u32) {
    let l = a.len();
    let lo = h_top >> (k - 1);
    let groups = l >> k;
    let mut x = [0u64; 1 << GROUP_LOG];
    for g in 0..groups {
        let blk = g / lo;
        let j = g % lo;
        let base = blk * 2 * h_top + j;
        for (m, v) in x.iter_mut().enumerate().take(1 << k) {
            *v = a[base + m * lo];
        }
        for s in 0..k {
            let h = h_top >> s;
            let step = h / lo;
            let scale = l / (2 * h);
            for m in 0..(1usize << k) {
                if m & step == 0 {
                    let p = (base + m * lo) % (2 * h);
                    let u = x[m];
                    let v = x[m + step];
                    x[m] = add(u, v);
                    x[m + step] = mul(sub(u, v), tw[p * scale]);
                }
            }
        }
        for (m, v) in x.iter().enumerate().take(1 << k) {
            a[base + m * lo] = *v;
        }
    }
}

/// One inverse (decimation-in-time) pass, the mirror of [`dif_grouped`]: layers with
/// half-lengths h_top/2^(k−1), …, h_top. The CUDA kernel `dit_pass`.
pub fn dit_grouped(a: &mut [u64], tw: &[u64], h_top: usize, k: u32) {
    let l = a.len();
    let lo = h_top >> (k - 1);
    let groups = l >> k;
    let mut x = [0u64; 1 << GROUP_LOG];
    for g in 0..groups {
        let blk = g / lo;
        let j = g % lo;
        let base = blk * 2 * h_top + j;
        for (m, v) in x.iter_mut().enumerate().take(1 << k) {
            *v = a[base + m * lo];
        }
        for s in (0..k).rev() {
            let h = h_top >> s;
            let step = h / lo;
            let scale = l / (2 * h);
            for m in 0..(1usize << k) {
                if m & step == 0 {
                    let p = (base + m * lo) % (2 * h);
                    let u = x[m];
                    let v = mul(x[m + step], inv_twiddle(tw, p * scale));
                    x[m] = add(u, v);
                    x[m + step] = sub(u, v);
                }
            }
        }
        for (m, v) in x.iter().enumerate().take(1 << k) {
            a[base + m * lo] = *v;
        }
    }
}

/// Forward transform (natural order in, bit-reversed order out).
pub fn forward(a: &mut [u64], tw: &[u64]) {
    for (h, k) in passes(a.len().trailing_zeros()) {
        dif_grouped(a, tw, h, k);
    }
}

/// Inverse transform without the 1/L factor (bit-reversed in, natural out).
pub fn inverse(a: &mut [u64], tw: &[u64]) {
    for (h, k) in passes(a.len().trailing_zeros()).into_iter().rev() {
        dit_grouped(a, tw, h, k);
    }
}

/// Transform length (log2) for an `n`-bit input and an `r`-bit output.
///
/// # Errors
/// [`ToeplitzError::OutputTooLong`] when the transform would exceed 2^32.
pub fn transform_log(n: usize, r: usize) -> Result<u32, ToeplitzError> {
    let need = seed_len(n, r).max(2);
    let log = need.next_power_of_two().trailing_zeros();
    if log > MAX_LOG {
        return Err(ToeplitzError::OutputTooLong { out: r, input: n });
    }
    Ok(log)
}

/// Checks the arguments as [`crate::toeplitz::toeplitz_hash`] does.
pub(crate) fn check(seed: &BitVec, input: &BitVec, r: usize) -> Result<(), ToeplitzError> {
    let n = input.len();
    if r > n {
        return Err(ToeplitzError::OutputTooLong { out: r, input: n });
    }
    if r > 0 && seed.len() != seed_len(n, r) {
        return Err(ToeplitzError::SeedLength {
            got: seed.len(),
            expected: seed_len(n, r),
        });
    }
    Ok(())
}

/// The Toeplitz hash by the Goldilocks NTT on the CPU (one thread; a reference for the GPU
/// path, slower than the additive FFT of [`crate::toeplitz`]).
///
/// # Errors
/// As [`crate::toeplitz::toeplitz_hash`].
pub fn toeplitz_hash_ntt(seed: &BitVec, input: &BitVec, r: usize) -> Result<BitVec, ToeplitzError> {
    check(seed, input, r)?;
    let n = input.len();
    if r == 0 {
        return Ok(BitVec::zeros(0));
    }
    let log = transform_log(n, r)?;
    let l = 1usize << log;
    let tw = twiddles(log);
    let expand = |b: &BitVec| {
        let mut v = vec![0u64; l];
        for (i, e) in v.iter_mut().enumerate().take(b.len()) {
            *e = u64::from(b.get(i));
        }
        v
    };
    let mut a = expand(seed);
    let mut b = expand(input);
    forward(&mut a, &tw);
    forward(&mut b, &tw);
    for (x, y) in a.iter_mut().zip(&b) {
        *x = mul(*x, *y);
    }
    inverse(&mut a, &tw);
    let l_inv = pow(l as u64, P - 2);
    // Pack parities of coefficients n−1 … n+r−2 (the kernel `pack` does 64 per thread).
    let mut words = vec![0u64; r.div_ceil(64)];
    for (i, w) in words.iter_mut().enumerate() {
        for bit in 0..64.min(r - 64 * i) {
            let c = mul(a[n - 1 + 64 * i + bit], l_inv);
            *w |= (c & 1) << bit;
        }
    }
    Ok(BitVec::from_words(words, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toeplitz::{toeplitz_direct, toeplitz_hash_with, Method};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn field_arithmetic_matches_u128() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let edge = [0, 1, 2, EPS, P - 1, P - 2, 1 << 63, P >> 1];
        for i in 0..20_000 {
            let (a, b) = if i < 64 {
                (edge[i % 8], edge[i / 8])
            } else {
                (rng.gen::<u64>() % P, rng.gen::<u64>() % P)
            };
            let m = ((u128::from(a) * u128::from(b)) % u128::from(P)) as u64;
            assert_eq!(mul(a, b), m, "{a} * {b}");
            assert_eq!(
                add(a, b),
                ((u128::from(a) + u128::from(b)) % u128::from(P)) as u64
            );
            assert_eq!(
                sub(a, b),
                ((u128::from(a) + u128::from(P) - u128::from(b)) % u128::from(P)) as u64
            );
        }
    }

    #[test]
    fn roots_have_exact_order() {
        for log in [1u32, 5, 20, 32] {
            let w = root_of_unity(log);
            assert_eq!(pow(w, 1u64 << log), 1, "log {log}");
            assert_eq!(pow(w, 1u64 << (log - 1)), P - 1, "log {log}");
        }
    }

    #[test]
    fn grouped_transforms_are_the_dft_and_invert() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for log in [1u32, 2, 3, 5, 6, 7, 11] {
            let l = 1usize << log;
            let tw = twiddles(log);
            let w = root_of_unity(log);
            let v: Vec<u64> = (0..l).map(|_| rng.gen::<u64>() % P).collect();
            let mut f = v.clone();
            forward(&mut f, &tw);
            // Output index i holds the DFT at bit-reversed frequency.
            for (i, &fi) in f.iter().enumerate() {
                let k = i.reverse_bits() >> (usize::BITS - log);
                let want = v
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (j, &x)| add(acc, mul(x, pow(w, (j * k) as u64))));
                assert_eq!(fi, want, "log {log} i {i}");
            }
            inverse(&mut f, &tw);
            let l_inv = pow(l as u64, P - 2);
            let back: Vec<u64> = f.iter().map(|&x| mul(x, l_inv)).collect();
            assert_eq!(back, v, "log {log}");
        }
    }

    #[test]
    fn ntt_hash_equals_the_matrix_product_and_the_fft() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for &(n, r) in &[
            (1usize, 1usize),
            (2, 1),
            (65, 33),
            (200, 199),
            (1000, 640),
            (2049, 1024),
        ] {
            let x = BitVec::random(n, &mut rng);
            let t = BitVec::random(seed_len(n, r), &mut rng);
            assert_eq!(
                toeplitz_hash_ntt(&t, &x, r).unwrap(),
                toeplitz_direct(&t, &x, r).unwrap(),
                "n={n} r={r}"
            );
        }
        for &(n, r) in &[(300_000usize, 150_000usize), (1 << 20, 100_000)] {
            let x = BitVec::random(n, &mut rng);
            let t = BitVec::random(seed_len(n, r), &mut rng);
            assert_eq!(
                toeplitz_hash_ntt(&t, &x, r).unwrap(),
                toeplitz_hash_with(&t, &x, r, Method::Fft, 2).unwrap(),
                "n={n} r={r}"
            );
        }
    }
}
