//! Shamir k-of-n secret sharing over GF(2^8), byte by byte.
//!
//! Byte `b` of the secret is the constant term of a polynomial `f_b(x) = s_b + c_1 x + … +
//! c_{k-1} x^{k-1}` whose coefficients are uniformly random bytes — zero included, as uniformity
//! requires (a coefficient that is never zero makes some share values impossible and leaks
//! information). Share `i` (`i` in `1..=n`) holds `f_b(i)` for every byte. Any `k` shares determine
//! every `f_b` and hence the secret; any `k − 1` shares are uniformly distributed whatever the
//! secret is.
//!
//! Because sharing is byte-wise, the shares of a concatenation are the concatenations of the
//! shares: a large object can be shared chunk by chunk with the same parameters.

use kagi_keymat::Key;

use crate::error::{Result, SharingError};
use crate::gf256;
use crate::kernel::{mat_mul, Backend, MatTables};
use crate::rng::RandomSource;

/// Bytes of secret processed per block while splitting: the random coefficients of one block stay
/// in cache while all `n` shares of the block are computed.
const SPLIT_BLOCK: usize = 4 * 1024;
/// Padding between coefficient rows (three cache lines).
const ROW_PAD: usize = 192;

/// Validated sharing parameters: threshold `k` and share count `n`, `1 <= k <= n <= 255`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Params {
    k: u8,
    n: u8,
}

impl Params {
    /// Checks `k` and `n`: `k = 0`, `k > n` and `n > 255` are errors.
    pub fn new(k: usize, n: usize) -> Result<Self> {
        if k == 0 {
            return Err(SharingError::ZeroThreshold);
        }
        if n > 255 {
            return Err(SharingError::TooManyShares(n));
        }
        if k > n {
            return Err(SharingError::ThresholdExceedsShares { k, n });
        }
        Ok(Self {
            k: k as u8,
            n: n as u8,
        })
    }

    /// The threshold: shares needed to recover.
    pub fn k(&self) -> usize {
        self.k as usize
    }

    /// The number of shares.
    pub fn n(&self) -> usize {
        self.n as usize
    }

    /// Checks that `index` names a share of this sharing (`1..=n`).
    pub fn check_index(&self, index: usize) -> Result<u8> {
        if index == 0 || index > self.n as usize {
            Err(SharingError::UnknownIndex { index, n: self.n })
        } else {
            Ok(index as u8)
        }
    }

    /// The number of Reed–Solomon errors correctable with `m` shares: ⌊(m − k)/2⌋.
    pub fn correctable(&self, m: usize) -> usize {
        m.saturating_sub(self.k as usize) / 2
    }
}

/// One share: its index (the evaluation point, `1..=n`), the sharing parameters and the share
/// bytes (held in a [`Key`], so they are wiped on drop and never printed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    index: u8,
    params: Params,
    data: Key,
}

/// Magic bytes of a serialized share.
const MAGIC: &[u8; 4] = b"KGSH";
/// Encoding version.
const VERSION: u8 = 1;
/// Header bytes before the share data: magic, version, k, n, index, length (u64 LE).
pub const SHARE_HEADER_LEN: usize = 16;

impl Share {
    /// A share with the given index and bytes. The index must be in `1..=n`.
    pub fn new(index: usize, params: Params, data: Key) -> Result<Self> {
        let index = params.check_index(index)?;
        Ok(Self {
            index,
            params,
            data,
        })
    }

    /// The evaluation point of this share, `1..=n`.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The sharing parameters.
    pub fn params(&self) -> Params {
        self.params
    }

    /// Length of the share (equal to the secret's length).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True for the share of an empty secret.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The share bytes (an exposure point: a share is secret material).
    pub fn data(&self) -> &[u8] {
        self.data.expose()
    }

    /// Mutable share bytes (used by refresh; also lets tests simulate tampering).
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.data.expose_mut()
    }

    /// The share bytes as a key, consuming the share.
    pub fn into_key(self) -> Key {
        self.data
    }

    /// Serializes the share: `"KGSH"`, version, k, n, index, length (u64 little-endian), bytes.
    pub fn to_bytes(&self) -> Key {
        let mut out = Key::zeroed(SHARE_HEADER_LEN + self.len());
        let buf = out.expose_mut();
        buf[..4].copy_from_slice(MAGIC);
        buf[4] = VERSION;
        buf[5] = self.params.k;
        buf[6] = self.params.n;
        buf[7] = self.index;
        buf[8..16].copy_from_slice(&(self.len() as u64).to_le_bytes());
        buf[16..].copy_from_slice(self.data());
        out
    }

    /// Parses [`Share::to_bytes`] output, checking header fields and length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < SHARE_HEADER_LEN {
            return Err(SharingError::Truncated {
                needed: SHARE_HEADER_LEN,
                got: bytes.len(),
            });
        }
        if &bytes[..4] != MAGIC {
            return Err(SharingError::BadEncoding("bad magic"));
        }
        if bytes[4] != VERSION {
            return Err(SharingError::BadEncoding("unsupported version"));
        }
        let params = Params::new(bytes[5] as usize, bytes[6] as usize)?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[8..16]);
        let len = u64::from_le_bytes(len);
        let needed = (len as u128 + SHARE_HEADER_LEN as u128).min(usize::MAX as u128) as usize;
        if bytes.len() < needed {
            return Err(SharingError::Truncated {
                needed,
                got: bytes.len(),
            });
        }
        if bytes.len() > needed {
            return Err(SharingError::BadEncoding("trailing bytes after share"));
        }
        Share::new(
            bytes[7] as usize,
            params,
            Key::from_slice(&bytes[SHARE_HEADER_LEN..]),
        )
    }
}

/// The Vandermonde row `[1, x, x², …, x^{k-1}]` for each share index `1..=n`, row-major.
fn vandermonde(params: Params, indices: impl Iterator<Item = u8>) -> Vec<u8> {
    let k = params.k();
    let mut m = Vec::new();
    for x in indices {
        let mut p = 1u8;
        for _ in 0..k {
            m.push(p);
            p = gf256::mul(p, x);
        }
    }
    m
}

/// Splits `secret` into `n` shares, any `k` of which recover it.
pub fn split(secret: &[u8], params: Params, rng: &mut impl RandomSource) -> Result<Vec<Share>> {
    split_with(Backend::detect(), secret, params, rng)
}

/// [`split`] with a chosen kernel backend (falls back to scalar if the CPU lacks it).
pub fn split_with(
    backend: Backend,
    secret: &[u8],
    params: Params,
    rng: &mut impl RandomSource,
) -> Result<Vec<Share>> {
    let mut bufs: Vec<Key> = (0..params.n()).map(|_| Key::zeroed(secret.len())).collect();
    {
        let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.expose_mut()).collect();
        split_into_with(backend, secret, params, rng, &mut outs)?;
    }
    Ok(bufs
        .into_iter()
        .enumerate()
        .map(|(i, data)| Share {
            index: (i + 1) as u8,
            params,
            data,
        })
        .collect())
}

/// Splits `secret` into caller-provided buffers: `outputs[i]` receives the bytes of share `i + 1`.
/// There must be exactly `n` outputs, each exactly as long as the secret. Lets callers reuse
/// memory (and benchmarks measure the kernel rather than the allocator).
pub fn split_into(
    secret: &[u8],
    params: Params,
    rng: &mut impl RandomSource,
    outputs: &mut [&mut [u8]],
) -> Result<()> {
    split_into_with(Backend::detect(), secret, params, rng, outputs)
}

/// [`split_into`] with a chosen kernel backend.
pub fn split_into_with(
    backend: Backend,
    secret: &[u8],
    params: Params,
    rng: &mut impl RandomSource,
    outputs: &mut [&mut [u8]],
) -> Result<()> {
    let backend = backend.or_supported();
    if outputs.len() != params.n() {
        return Err(SharingError::NotEnoughShares {
            needed: params.n(),
            got: outputs.len(),
        });
    }
    for (i, o) in outputs.iter().enumerate() {
        if o.len() != secret.len() {
            return Err(SharingError::LengthMismatch {
                index: (i + 1) as u8,
                expected: secret.len(),
                got: o.len(),
            });
        }
    }
    let k = params.k();
    let tables = MatTables::new(&vandermonde(params, 1..=params.n), params.n(), k);
    let block = SPLIT_BLOCK.min(secret.len().max(1));
    // Random coefficients for one block: (k − 1) rows, each `stride` bytes apart. The padding
    // puts the rows in different L1 cache sets (rows exactly 8 KiB apart would all compete for
    // the same sets). Wiped on drop: with the shares they reveal the secret.
    let stride = block + ROW_PAD;
    let mut coeffs = Key::zeroed((k - 1) * stride);
    let mut start = 0;
    while start < secret.len() {
        let end = (start + block).min(secret.len());
        let len = end - start;
        let cbuf = coeffs.expose_mut();
        let mut inputs: Vec<&[u8]> = Vec::with_capacity(k);
        inputs.push(&secret[start..end]);
        for row in cbuf.chunks_exact_mut(stride) {
            rng.fill(&mut row[..len])?;
            inputs.push(&row[..len]);
        }
        let mut outs: Vec<&mut [u8]> = outputs.iter_mut().map(|o| &mut o[start..end]).collect();
        mat_mul(backend, &tables, &inputs, &mut outs, len);
        start = end;
    }
    Ok(())
}

/// Checks that `shares` belong to one sharing: non-empty, same parameters, same length,
/// distinct indices. Returns the common parameters and length.
pub(crate) fn check_shares(shares: &[Share]) -> Result<(Params, usize)> {
    let first = shares
        .first()
        .ok_or(SharingError::NotEnoughShares { needed: 1, got: 0 })?;
    let params = first.params;
    let len = first.len();
    let mut seen = [false; 256];
    for s in shares {
        if s.params != params {
            return Err(SharingError::ParameterMismatch {
                k1: params.k,
                n1: params.n,
                k2: s.params.k,
                n2: s.params.n,
            });
        }
        if s.len() != len {
            return Err(SharingError::LengthMismatch {
                index: s.index,
                expected: len,
                got: s.len(),
            });
        }
        if seen[s.index as usize] {
            return Err(SharingError::DuplicateIndex(s.index));
        }
        seen[s.index as usize] = true;
    }
    if shares.len() < params.k() {
        return Err(SharingError::NotEnoughShares {
            needed: params.k(),
            got: shares.len(),
        });
    }
    Ok((params, len))
}

/// Recovers the secret from at least `k` shares of one sharing (the first `k` are used; see
/// [`crate::recover_correcting`] to use the rest to find and correct corrupted shares).
pub fn recover(shares: &[Share]) -> Result<Key> {
    recover_with(Backend::detect(), shares)
}

/// [`recover`] with a chosen kernel backend.
pub fn recover_with(backend: Backend, shares: &[Share]) -> Result<Key> {
    let (_, len) = check_shares(shares)?;
    let mut out = Key::zeroed(len);
    recover_into_with(backend, shares, out.expose_mut())?;
    Ok(out)
}

/// Recovers the secret into `out`, which must be exactly as long as the shares.
pub fn recover_into(shares: &[Share], out: &mut [u8]) -> Result<()> {
    recover_into_with(Backend::detect(), shares, out)
}

/// [`recover_into`] with a chosen kernel backend.
pub fn recover_into_with(backend: Backend, shares: &[Share], out: &mut [u8]) -> Result<()> {
    let (params, len) = check_shares(shares)?;
    if out.len() != len {
        return Err(SharingError::LengthMismatch {
            index: 0,
            expected: len,
            got: out.len(),
        });
    }
    let basis: Vec<&Share> = shares[..params.k()].iter().collect();
    interpolate_at(backend.or_supported(), &basis, 0, out);
    Ok(())
}

/// Evaluates the sharing polynomial at `at` from exactly the given (distinct, checked) shares:
/// `out = Σ λ_i(at) · y_i`.
pub(crate) fn interpolate_at(backend: Backend, shares: &[&Share], at: u8, out: &mut [u8]) {
    let xs: Vec<u8> = shares.iter().map(|s| s.index).collect();
    let w = gf256::lagrange_weights(&xs, at);
    let tables = MatTables::new(&w, 1, w.len());
    let inputs: Vec<&[u8]> = shares.iter().map(|s| s.data()).collect();
    let len = out.len();
    mat_mul(backend, &tables, &inputs, &mut [out], len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::SeedableRng;

    fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(seed)
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert_eq!(Params::new(0, 5), Err(SharingError::ZeroThreshold));
        assert_eq!(
            Params::new(6, 5),
            Err(SharingError::ThresholdExceedsShares { k: 6, n: 5 })
        );
        assert_eq!(Params::new(3, 256), Err(SharingError::TooManyShares(256)));
        assert_eq!(Params::new(300, 256), Err(SharingError::TooManyShares(256)));
        assert!(Params::new(255, 255).is_ok());
        assert!(Params::new(1, 1).is_ok());
    }

    #[test]
    fn too_few_mixed_or_duplicate_shares_are_errors() {
        let p = Params::new(3, 5).unwrap();
        let shares = split(b"hello world", p, &mut rng(1)).unwrap();
        assert_eq!(
            recover(&shares[..2]),
            Err(SharingError::NotEnoughShares { needed: 3, got: 2 })
        );
        assert_eq!(
            recover(&[]),
            Err(SharingError::NotEnoughShares { needed: 1, got: 0 })
        );
        let dup = vec![shares[0].clone(), shares[1].clone(), shares[0].clone()];
        assert_eq!(recover(&dup), Err(SharingError::DuplicateIndex(1)));
        let other = split(b"hello world", Params::new(2, 5).unwrap(), &mut rng(2)).unwrap();
        let mixed = vec![shares[0].clone(), other[1].clone(), shares[2].clone()];
        assert!(matches!(
            recover(&mixed),
            Err(SharingError::ParameterMismatch { .. })
        ));
        let mut short = shares[1].clone();
        short.data = Key::from_slice(&short.data()[..5]);
        let trunc = vec![shares[0].clone(), short, shares[2].clone()];
        assert_eq!(
            recover(&trunc),
            Err(SharingError::LengthMismatch {
                index: 2,
                expected: 11,
                got: 5
            })
        );
        assert_eq!(
            Share::new(6, p, Key::zeroed(1)),
            Err(SharingError::UnknownIndex { index: 6, n: 5 })
        );
        assert_eq!(
            Share::new(0, p, Key::zeroed(1)),
            Err(SharingError::UnknownIndex { index: 0, n: 5 })
        );
    }

    #[test]
    fn encoding_round_trips_and_rejects_truncation() {
        let p = Params::new(2, 3).unwrap();
        let shares = split(b"0123456789", p, &mut rng(3)).unwrap();
        let enc = shares[1].to_bytes();
        assert_eq!(Share::from_bytes(enc.expose()).unwrap(), shares[1]);
        let b = enc.expose();
        assert_eq!(
            Share::from_bytes(&b[..b.len() - 1]),
            Err(SharingError::Truncated {
                needed: b.len(),
                got: b.len() - 1
            })
        );
        assert_eq!(
            Share::from_bytes(&b[..10]),
            Err(SharingError::Truncated {
                needed: SHARE_HEADER_LEN,
                got: 10
            })
        );
        let mut bad = b.to_vec();
        bad[0] = b'X';
        assert_eq!(
            Share::from_bytes(&bad),
            Err(SharingError::BadEncoding("bad magic"))
        );
        let mut bad = b.to_vec();
        bad[7] = 9; // index 9 of a 3-share sharing
        assert_eq!(
            Share::from_bytes(&bad),
            Err(SharingError::UnknownIndex { index: 9, n: 3 })
        );
        let mut bad = b.to_vec();
        bad[5] = 0;
        assert_eq!(Share::from_bytes(&bad), Err(SharingError::ZeroThreshold));
        let mut long = b.to_vec();
        long.push(0);
        assert!(matches!(
            Share::from_bytes(&long),
            Err(SharingError::BadEncoding(_))
        ));
    }

    #[test]
    fn shares_match_polynomial_definition() {
        // Independent check of the layout: share i byte b = s_b + Σ c_j i^j, with the
        // coefficients as drawn from the RNG block by block.
        let p = Params::new(3, 4).unwrap();
        let secret: Vec<u8> = (0..100u8).collect();
        let shares = split(&secret, p, &mut rng(7)).unwrap();
        let mut coeffs = vec![0u8; 2 * secret.len()];
        rng(7).fill(&mut coeffs).unwrap();
        for s in &shares {
            for (b, &sb) in secret.iter().enumerate() {
                let poly = [sb, coeffs[b], coeffs[secret.len() + b]];
                assert_eq!(s.data()[b], gf256::eval_poly(&poly, s.index()));
            }
        }
    }

    #[test]
    fn scalar_and_simd_agree_on_large_input() {
        let p = Params::new(5, 9).unwrap();
        let secret: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 255) as u8).collect();
        let a = split_with(Backend::Scalar, &secret, p, &mut rng(9)).unwrap();
        let b = split_with(Backend::Avx2, &secret, p, &mut rng(9)).unwrap();
        let c = split_with(Backend::Gfni, &secret, p, &mut rng(9)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(
            recover_with(Backend::Gfni, &a[1..6]).unwrap().expose(),
            &secret[..]
        );
        assert_eq!(
            recover_with(Backend::Scalar, &a[2..7]).unwrap().expose(),
            &secret[..]
        );
        assert_eq!(
            recover_with(Backend::Avx2, &a[4..9]).unwrap().expose(),
            &secret[..]
        );
    }

    #[test]
    fn empty_secret() {
        let p = Params::new(2, 3).unwrap();
        let shares = split(b"", p, &mut rng(1)).unwrap();
        assert!(shares.iter().all(|s| s.is_empty()));
        assert!(recover(&shares).unwrap().is_empty());
    }

    /// Feeds the coefficient bytes of a 1-byte (k = 3) split from a counter, so that a test can
    /// run the real `split` over every possible coefficient pair.
    struct Enumerate(u32);
    impl RandomSource for Enumerate {
        fn fill(&mut self, dest: &mut [u8]) -> Result<()> {
            // Byte stream: lo(0), hi(0), lo(1), hi(1), … — consecutive splits see every pair.
            for d in dest {
                let i = (self.0 / 2) as u16;
                *d = i.to_le_bytes()[(self.0 % 2) as usize];
                self.0 += 1;
            }
            Ok(())
        }
    }

    #[test]
    fn any_two_of_a_3_of_5_sharing_are_exactly_uniform() {
        // Perfect secrecy, checked exhaustively: over all 65536 coefficient choices, every pair of
        // shares takes every value pair exactly once, for every secret tried. A scheme that never
        // drew a zero coefficient (or any other biased coefficient) fails this.
        let p = Params::new(3, 5).unwrap();
        let pairs: Vec<(usize, usize)> = (0..5)
            .flat_map(|a| (a + 1..5).map(move |b| (a, b)))
            .collect();
        for secret in [0x00u8, 0x01, 0xAB] {
            let mut seen = vec![vec![0u8; 65536]; pairs.len()];
            let mut rng = Enumerate(0);
            for _ in 0..65536 {
                let sh = split(&[secret], p, &mut rng).unwrap();
                for (c, &(a, b)) in pairs.iter().enumerate() {
                    let cell = (sh[a].data()[0] as usize) << 8 | sh[b].data()[0] as usize;
                    seen[c][cell] += 1;
                }
            }
            for (c, counts) in seen.iter().enumerate() {
                assert!(
                    counts.iter().all(|&x| x == 1),
                    "secret {secret} pair {:?}",
                    pairs[c]
                );
            }
        }
    }

    #[test]
    fn single_share_statistics_do_not_depend_on_secret() {
        // Chi-square test of one share of a 2-of-3 sharing, for two very different secrets.
        let p = Params::new(2, 3).unwrap();
        let mut r = rng(77);
        for secret in [0x00u8, 0xFF] {
            let mut counts = [0u32; 256];
            let samples = 256 * 200;
            for _ in 0..samples / 64 {
                let sh = split(&[secret; 64], p, &mut r).unwrap();
                for &b in sh[1].data() {
                    counts[b as usize] += 1;
                }
            }
            let expect = samples as f64 / 256.0;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expect).powi(2) / expect)
                .sum();
            // 255 degrees of freedom: the 99.99th percentile is about 343.
            assert!(chi2 < 343.0, "secret {secret}: chi2 = {chi2}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_k_of_n_rebuild(
            secret in proptest::collection::vec(any::<u8>(), 0..2000),
            n in 1usize..12,
            kk in 0usize..12,
            pick in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let k = kk % n + 1;
            let p = Params::new(k, n).unwrap();
            let shares = split(&secret, p, &mut rng(seed)).unwrap();
            prop_assert_eq!(shares.len(), n);
            // A pseudo-random subset of size k (and another of size > k), in shuffled order.
            let mut order: Vec<usize> = (0..n).collect();
            let mut st = pick;
            for i in (1..n).rev() {
                st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (st >> 33) as usize % (i + 1));
            }
            for m in [k, n] {
                let subset: Vec<Share> = order[..m].iter().map(|&i| shares[i].clone()).collect();
                let got = recover(&subset).unwrap();
                prop_assert_eq!(got.expose(), &secret[..]);
            }
        }
    }
}
