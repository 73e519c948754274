//! Privacy amplification by Toeplitz hashing, computed exactly and fast.
//!
//! For an input `x` of `n` bits, an output length `r` and a seed `t` of `n + r − 1` bits, the
//! Toeplitz matrix is `T[i][j] = t[n − 1 + i − j]` (`i < r`, `j < n`) and the hash is
//! `y = T·x` over GF(2): `y_i = ⊕_j t[n−1+i−j]·x_j`. That is exactly coefficients
//! `n−1 .. n−1+r` of the product `t(z)·x(z)` in GF(2)\[z\], which is computed by
//! - schoolbook carry-less multiplication for small sizes, or
//! - an additive FFT over GF(2^64) (the crate-private `additive_fft` module) for large ones: O(N log N) field
//!   operations with PCLMULQDQ, all exact (no floating point).
//!
//! The family {x ↦ T·x} over uniformly random seeds is 2-universal, so by the leftover hash
//! lemma it extracts `r` bits ε-close to uniform from an input with enough smooth min-entropy.

use crate::additive_fft::{self, Kernels};
use crate::bits::{extract_bits, BitVec};
use crate::gf64;

/// Problems with the arguments of a Toeplitz hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToeplitzError {
    /// The seed must have exactly `n + r − 1` bits.
    #[error("Toeplitz seed has {got} bits, expected input + output − 1 = {expected}")]
    SeedLength {
        /// Bits given.
        got: usize,
        /// Bits needed.
        expected: usize,
    },
    /// Output longer than the input (privacy amplification only shortens).
    #[error("output length {out} exceeds input length {input}")]
    OutputTooLong {
        /// Requested output bits.
        out: usize,
        /// Input bits.
        input: usize,
    },
}

/// How the product is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Pick by size.
    Auto,
    /// Word-wise schoolbook carry-less multiplication, O(n·r/64²) word products.
    Schoolbook,
    /// Additive FFT over GF(2^64), O(N log N).
    Fft,
}

/// Seed bits needed for an `input_len`-bit input and an `out_len`-bit output.
pub fn seed_len(input_len: usize, out_len: usize) -> usize {
    (input_len + out_len).saturating_sub(1)
}

/// Toeplitz hash of `input` to `out_len` bits with `seed` (see the module doc for the matrix),
/// picking the fastest exact method and using all available cores.
///
/// # Errors
/// [`ToeplitzError`] if the seed length is not `input.len() + out_len − 1` or `out_len` exceeds
/// the input length.
pub fn toeplitz_hash(
    seed: &BitVec,
    input: &BitVec,
    out_len: usize,
) -> Result<BitVec, ToeplitzError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    toeplitz_hash_with(seed, input, out_len, Method::Auto, threads)
}

/// [`toeplitz_hash`] with an explicit method and thread count.
///
/// # Errors
/// As [`toeplitz_hash`].
pub fn toeplitz_hash_with(
    seed: &BitVec,
    input: &BitVec,
    out_len: usize,
    method: Method,
    threads: usize,
) -> Result<BitVec, ToeplitzError> {
    let n = input.len();
    if out_len > n {
        return Err(ToeplitzError::OutputTooLong {
            out: out_len,
            input: n,
        });
    }
    if out_len == 0 {
        return Ok(BitVec::zeros(0));
    }
    let expected = seed_len(n, out_len);
    if seed.len() != expected {
        return Err(ToeplitzError::SeedLength {
            got: seed.len(),
            expected,
        });
    }
    let method = match method {
        Method::Auto => {
            // Schoolbook costs about n·(n+r)/4096 word products; the FFT about 35·N log N.
            let wa = seed.words().len() as f64;
            let wb = input.words().len() as f64;
            if wa * wb < 40_000.0 {
                Method::Schoolbook
            } else {
                Method::Fft
            }
        }
        m => m,
    };
    let product = match method {
        Method::Schoolbook => schoolbook(seed.words(), input.words()),
        _ => fft_product(seed.words(), input.words(), Kernels::best(), threads.max(1)),
    };
    Ok(BitVec::from_words(
        extract_bits(&product, n - 1, out_len),
        out_len,
    ))
}

/// Schoolbook product of two packed binary polynomials (word arrays), `a.len() + b.len()` words.
pub(crate) fn schoolbook(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; a.len() + b.len()];
    for (i, &x) in a.iter().enumerate() {
        if x == 0 {
            continue;
        }
        for (j, &y) in b.iter().enumerate() {
            let (lo, hi) = gf64::clmul(x, y);
            out[i + j] ^= lo;
            out[i + j + 1] ^= hi;
        }
    }
    out
}

/// Number of 32-bit chunks that hold the non-zero part of a packed polynomial.
fn chunk_len(words: &[u64]) -> usize {
    let mut n = 2 * words.len();
    while n > 1 && (words[(n - 1) / 2] >> (32 * ((n - 1) % 2))) & 0xffff_ffff == 0 {
        n -= 1;
    }
    n.max(1)
}

/// Splits packed words into 32-bit chunks (GF(2^64) coefficients) in a zeroed buffer.
fn fill_chunks(words: &[u64], buf: &mut [u64], threads: usize) {
    let n = chunk_len(words).min(buf.len());
    let fill = |dst: &mut [u64], first: usize| {
        for (i, d) in dst.iter_mut().enumerate() {
            let m = first + i;
            *d = (words[m / 2] >> (32 * (m % 2))) & 0xffff_ffff;
        }
    };
    if threads > 1 && n > 1 << 16 {
        let (d0, d1) = buf[..n].split_at_mut(n / 2);
        std::thread::scope(|s| {
            s.spawn(|| fill(d0, 0));
            fill(d1, n / 2);
        });
    } else {
        fill(&mut buf[..n], 0);
    }
}

/// Product via the additive FFT; returns packed words (at least enough for the product).
pub(crate) fn fft_product(a: &[u64], b: &[u64], kern: Kernels, threads: usize) -> Vec<u64> {
    let (ea, eb) = (chunk_len(a), chunk_len(b));
    let l = additive_fft::transform_len(ea + eb - 1);
    let mut pa = additive_fft::take_zeroed(l);
    let mut pb = additive_fft::take_zeroed(l);
    fill_chunks(a, &mut pa, threads);
    fill_chunks(b, &mut pb, threads);
    let prod = additive_fft::mul_padded(pa, ea, pb, eb, kern, threads);
    // Coefficient m (≤ 63 bits) sits at bit 32·m.
    let used = ea + eb - 1;
    let mut out = vec![0u64; used / 2 + 2];
    for (w, o) in out.iter_mut().enumerate() {
        let even = prod.get(2 * w).copied().unwrap_or(0);
        let odd_here = if 2 * w + 1 < used {
            prod[2 * w + 1] << 32
        } else {
            0
        };
        let odd_prev = if w > 0 && 2 * w - 1 < used {
            prod[2 * w - 1] >> 32
        } else {
            0
        };
        *o = even ^ odd_here ^ odd_prev;
    }
    additive_fft::recycle(prod);
    out
}

/// The Toeplitz hash straight from the matrix definition, bit by bit: O(n·r). A reference for
/// tests and for anyone checking the fast methods; far too slow for real blocks.
pub fn toeplitz_direct(
    seed: &BitVec,
    input: &BitVec,
    out_len: usize,
) -> Result<BitVec, ToeplitzError> {
    let n = input.len();
    if out_len > n {
        return Err(ToeplitzError::OutputTooLong {
            out: out_len,
            input: n,
        });
    }
    if out_len == 0 {
        return Ok(BitVec::zeros(0));
    }
    if seed.len() != seed_len(n, out_len) {
        return Err(ToeplitzError::SeedLength {
            got: seed.len(),
            expected: seed_len(n, out_len),
        });
    }
    let mut y = BitVec::zeros(out_len);
    for i in 0..out_len {
        let mut acc = false;
        for j in 0..n {
            acc ^= seed.get(n - 1 + i - j) & input.get(j);
        }
        y.set(i, acc);
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn all_methods_equal_the_matrix_product_on_many_sizes() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let sizes: &[(usize, usize)] = &[
            (1, 1),
            (2, 1),
            (5, 3),
            (63, 1),
            (64, 64),
            (65, 33),
            (127, 100),
            (128, 1),
            (200, 199),
            (333, 77),
            (1000, 640),
            (1500, 1),
            (2049, 1024),
        ];
        for &(n, r) in sizes {
            let x = BitVec::random(n, &mut rng);
            let t = BitVec::random(seed_len(n, r), &mut rng);
            let want = toeplitz_direct(&t, &x, r).unwrap();
            for m in [Method::Schoolbook, Method::Fft, Method::Auto] {
                for th in [1, 2] {
                    let got = toeplitz_hash_with(&t, &x, r, m, th).unwrap();
                    assert_eq!(got, want, "n={n} r={r} {m:?} threads={th}");
                }
            }
        }
    }

    #[test]
    fn fft_equals_schoolbook_on_large_sizes_both_kernels() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for &(n, r) in &[
            (40_000usize, 17_000usize),
            (70_001, 70_001),
            (150_000, 60_000),
        ] {
            let x = BitVec::random(n, &mut rng);
            let t = BitVec::random(seed_len(n, r), &mut rng);
            let want = toeplitz_hash_with(&t, &x, r, Method::Schoolbook, 1).unwrap();
            let got = toeplitz_hash_with(&t, &x, r, Method::Fft, 2).unwrap();
            assert_eq!(got, want, "n={n} r={r}");
            let p = fft_product(t.words(), x.words(), Kernels::portable(), 1);
            let b = BitVec::from_words(extract_bits(&p, n - 1, r), r);
            assert_eq!(b, want, "portable kernels n={n}");
        }
    }

    #[test]
    fn hash_is_linear_in_the_input() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let (n, r) = (100_000, 40_000);
        let t = BitVec::random(seed_len(n, r), &mut rng);
        let a = BitVec::random(n, &mut rng);
        let b = BitVec::random(n, &mut rng);
        let ab = BitVec::from_words(
            a.words()
                .iter()
                .zip(b.words())
                .map(|(x, y)| x ^ y)
                .collect(),
            n,
        );
        let ha = toeplitz_hash(&t, &a, r).unwrap();
        let hb = toeplitz_hash(&t, &b, r).unwrap();
        let hab = toeplitz_hash(&t, &ab, r).unwrap();
        let x: Vec<u64> = ha
            .words()
            .iter()
            .zip(hb.words())
            .map(|(x, y)| x ^ y)
            .collect();
        assert_eq!(hab.words(), &x[..]);
        assert!(ha.count_ones() > r / 3 && ha.count_ones() < 2 * r / 3);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let x = BitVec::zeros(10);
        assert_eq!(
            toeplitz_hash(&BitVec::zeros(5), &x, 4),
            Err(ToeplitzError::SeedLength {
                got: 5,
                expected: 13
            })
        );
        assert_eq!(
            toeplitz_hash(&BitVec::zeros(30), &x, 11),
            Err(ToeplitzError::OutputTooLong { out: 11, input: 10 })
        );
    }
}
