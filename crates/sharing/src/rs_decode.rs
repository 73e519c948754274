//! Reed–Solomon error correction for Shamir shares (Berlekamp–Welch).
//!
//! Shamir shares of one byte position are a Reed–Solomon codeword of dimension `k`; with `m >= k`
//! shares up to `⌊(m − k)/2⌋` wrong ones can be named and corrected. Decoding works share-wise
//! rather than byte-wise, so it stays fast on large objects:
//!
//! 1. take `k` presumed-good shares as a basis and predict every other presumed-good share from
//!    them with the SIMD kernel, block by block, until the first byte position where a prediction
//!    fails (none: done, nothing was corrupted beyond what is already excluded);
//! 2. at that position run Berlekamp–Welch on all `m` values: it returns the true polynomial, and
//!    the shares disagreeing with it there are corrupt; exclude them and continue from that
//!    position (earlier positions were consistent for a superset, so stay consistent).
//!
//! Each round names at least one new bad share, so there are at most `⌊(m − k)/2⌋ + 1` rounds.

use kagi_keymat::Key;

use crate::error::{Result, SharingError};
use crate::gf256;
use crate::kernel::{mat_mul, Backend, MatTables};
use crate::shamir::{check_shares, interpolate_at, Share};

/// Bytes compared per block while looking for inconsistencies.
const CHECK_BLOCK: usize = 64 * 1024;

/// The result of [`recover_correcting`].
#[derive(Debug, PartialEq, Eq)]
pub struct Corrected {
    /// The secret.
    pub secret: Key,
    /// Indices of the shares found to be corrupted, ascending.
    pub bad: Vec<u8>,
}

/// Recovers the secret from `m >= k` shares of which up to `⌊(m − k)/2⌋` may be corrupted, and
/// names the corrupted ones. More corruption than that gives [`SharingError::TooManyErrors`]
/// when it is detectable (it always is while fewer than `m − k + 1` shares are bad).
pub fn recover_correcting(shares: &[Share]) -> Result<Corrected> {
    let (params, len) = check_shares(shares)?;
    let (k, m) = (params.k(), shares.len());
    let max = params.correctable(m);
    let too_many = SharingError::TooManyErrors { m, k, max };
    let backend = Backend::detect();
    let mut bad: Vec<u8> = Vec::new();
    let mut from = 0usize;
    loop {
        let good: Vec<&Share> = shares
            .iter()
            .filter(|s| !bad.contains(&s.index()))
            .collect();
        match first_inconsistency(backend, &good, k, from, len) {
            None => break,
            Some(pos) => {
                let xs: Vec<u8> = shares.iter().map(|s| s.index()).collect();
                let ys: Vec<u8> = shares.iter().map(|s| s.data()[pos]).collect();
                let poly = berlekamp_welch(&xs, &ys, k, max).ok_or(too_many.clone())?;
                let before = bad.len();
                for (x, y) in xs.iter().zip(&ys) {
                    if gf256::eval_poly(&poly, *x) != *y && !bad.contains(x) {
                        bad.push(*x);
                    }
                }
                if bad.len() > max || bad.len() == before {
                    return Err(too_many);
                }
                from = pos;
            }
        }
    }
    bad.sort_unstable();
    let good: Vec<&Share> = shares
        .iter()
        .filter(|s| !bad.contains(&s.index()))
        .take(k)
        .collect();
    let mut secret = Key::zeroed(len);
    interpolate_at(backend, &good, 0, secret.expose_mut());
    Ok(Corrected { secret, bad })
}

/// First byte position `>= from` where the shares in `good` do not all lie on one polynomial of
/// degree `< k`, or `None`.
fn first_inconsistency(
    backend: Backend,
    good: &[&Share],
    k: usize,
    from: usize,
    len: usize,
) -> Option<usize> {
    if good.len() <= k {
        return None;
    }
    let (basis, rest) = good.split_at(k);
    let xs: Vec<u8> = basis.iter().map(|s| s.index()).collect();
    let matrix: Vec<u8> = rest
        .iter()
        .flat_map(|s| gf256::lagrange_weights(&xs, s.index()))
        .collect();
    let tables = MatTables::new(&matrix, rest.len(), k);
    let block = CHECK_BLOCK.min(len.max(1));
    let mut predicted: Vec<Vec<u8>> = vec![vec![0u8; block]; rest.len()];
    let mut start = from;
    while start < len {
        let end = (start + block).min(len);
        let n = end - start;
        let inputs: Vec<&[u8]> = basis.iter().map(|s| &s.data()[start..end]).collect();
        let mut outs: Vec<&mut [u8]> = predicted.iter_mut().map(|p| &mut p[..n]).collect();
        mat_mul(backend, &tables, &inputs, &mut outs, n);
        let mut first: Option<usize> = None;
        for (p, s) in predicted.iter().zip(rest) {
            if p[..n] != s.data()[start..end] {
                let i = p[..n]
                    .iter()
                    .zip(&s.data()[start..end])
                    .position(|(a, b)| a != b);
                if let Some(i) = i {
                    first = Some(first.map_or(i, |f: usize| f.min(i)));
                }
            }
        }
        if let Some(i) = first {
            for p in &mut predicted {
                p.fill(0);
            }
            return Some(start + i);
        }
        start = end;
    }
    for p in &mut predicted {
        p.fill(0);
    }
    None
}

/// Berlekamp–Welch: the polynomial `P` of degree `< k` (coefficients, lowest first) that agrees
/// with `(xs[i], ys[i])` at all but at most `e` points, if the linear system has a solution that
/// divides exactly. Callers check the number of disagreements.
pub fn berlekamp_welch(xs: &[u8], ys: &[u8], k: usize, e: usize) -> Option<Vec<u8>> {
    let m = xs.len();
    if m < k + 2 * e || ys.len() != m || k == 0 {
        return None;
    }
    // Unknowns: q_0..q_{k+e-1}, then e_0..e_{e-1}; E(x) = x^e + Σ e_t x^t.
    // Equation i: Σ q_t x_i^t + y_i Σ e_t x_i^t = y_i x_i^e.
    let cols = k + 2 * e;
    let mut a: Vec<Vec<u8>> = Vec::with_capacity(m);
    for (&x, &y) in xs.iter().zip(ys) {
        let mut row = Vec::with_capacity(cols + 1);
        for t in 0..k + e {
            row.push(gf256::pow(x, t));
        }
        for t in 0..e {
            row.push(gf256::mul(y, gf256::pow(x, t)));
        }
        row.push(gf256::mul(y, gf256::pow(x, e)));
        a.push(row);
    }
    let sol = solve(&mut a, cols)?;
    let q = &sol[..k + e];
    let mut ev = sol[k + e..].to_vec();
    ev.push(1);
    let (p, rem) = poly_divmod(q, &ev);
    if rem.iter().any(|&r| r != 0) {
        return None;
    }
    let mut p = p;
    p.resize(k, 0);
    Some(p)
}

/// Gaussian elimination on an augmented matrix with `cols` unknowns; free unknowns are set to 0.
fn solve(a: &mut [Vec<u8>], cols: usize) -> Option<Vec<u8>> {
    let rows = a.len();
    let mut pivots: Vec<(usize, usize)> = Vec::new();
    let mut r = 0;
    for c in 0..cols {
        if r == rows {
            break;
        }
        let Some(p) = (r..rows).find(|&i| a[i][c] != 0) else {
            continue;
        };
        a.swap(r, p);
        let inv = gf256::inv(a[r][c])?;
        for v in a[r].iter_mut() {
            *v = gf256::mul(*v, inv);
        }
        for i in 0..rows {
            if i != r && a[i][c] != 0 {
                let f = a[i][c];
                let (src, dst) = if i < r {
                    let (lo, hi) = a.split_at_mut(r);
                    (&hi[0], &mut lo[i])
                } else {
                    let (lo, hi) = a.split_at_mut(i);
                    (&lo[r], &mut hi[0])
                };
                for (d, s) in dst.iter_mut().zip(src.iter()) {
                    *d ^= gf256::mul(f, *s);
                }
            }
        }
        pivots.push((r, c));
        r += 1;
    }
    // Inconsistent if a zero row has a non-zero right-hand side.
    if a[r..].iter().any(|row| row[cols] != 0) {
        return None;
    }
    let mut x = vec![0u8; cols];
    for (r, c) in pivots {
        x[c] = a[r][cols];
    }
    Some(x)
}

/// Quotient and remainder of `num / den` (`den` monic), coefficients lowest first.
fn poly_divmod(num: &[u8], den: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let dd = den.len() - 1;
    let mut rem = num.to_vec();
    if num.len() <= dd {
        return (vec![0], rem);
    }
    let mut quot = vec![0u8; num.len() - dd];
    for i in (0..quot.len()).rev() {
        let coef = rem[i + dd];
        quot[i] = coef;
        if coef != 0 {
            for (j, &d) in den.iter().enumerate() {
                rem[i + j] ^= gf256::mul(coef, d);
            }
        }
    }
    rem.truncate(dd);
    (quot, rem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{recover, split, Params};
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn berlekamp_welch_corrects_a_column() {
        let coeffs = [42u8, 7, 250];
        let xs: Vec<u8> = (1..=7).collect();
        let mut ys: Vec<u8> = xs.iter().map(|&x| gf256::eval_poly(&coeffs, x)).collect();
        ys[1] ^= 0x10;
        ys[5] ^= 0xff;
        assert_eq!(berlekamp_welch(&xs, &ys, 3, 2).unwrap(), coeffs);
        // Fewer errors than the budget still decode.
        ys[5] ^= 0xff;
        assert_eq!(berlekamp_welch(&xs, &ys, 3, 2).unwrap(), coeffs);
    }

    #[test]
    fn corrupted_shares_are_named_and_corrected() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(41);
        let secret: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let p = Params::new(3, 9).unwrap(); // m = 9 corrects 3
        let clean = split(&secret, p, &mut rng).unwrap();

        let ok = recover_correcting(&clean).unwrap();
        assert!(ok.bad.is_empty());
        assert_eq!(ok.secret.expose(), &secret[..]);

        // Share 1 (in the basis) fully garbled, share 5 with one byte near the end changed,
        // share 8 with a few scattered bytes changed.
        let mut shares = clean.clone();
        rng.fill_bytes(shares[0].data_mut());
        shares[4].data_mut()[199_990] ^= 1;
        for pos in [10usize, 70_000, 150_000] {
            shares[7].data_mut()[pos] ^= 0x80;
        }
        // Plain recovery from the first k is wrong …
        assert_ne!(recover(&shares).unwrap().expose(), &secret[..]);
        // … error decoding names exactly the bad ones and recovers.
        let c = recover_correcting(&shares).unwrap();
        assert_eq!(c.bad, vec![1, 5, 8]);
        assert_eq!(c.secret.expose(), &secret[..]);

        // A fourth bad share exceeds ⌊(9 − 3)/2⌋ = 3.
        shares[2].data_mut()[5] ^= 3;
        // Every column still has at most 3 errors, so each is named correctly; four names in
        // total exceed the budget and decoding refuses instead of guessing.
        assert_eq!(
            recover_correcting(&shares),
            Err(SharingError::TooManyErrors { m: 9, k: 3, max: 3 })
        );
    }

    #[test]
    fn detection_without_correction_capacity() {
        // m = k + 1: one error is detectable but not correctable.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(42);
        let p = Params::new(3, 4).unwrap();
        let mut shares = split(b"some record bytes", p, &mut rng).unwrap();
        shares[3].data_mut()[2] ^= 9;
        assert_eq!(
            recover_correcting(&shares),
            Err(SharingError::TooManyErrors { m: 4, k: 3, max: 0 })
        );
    }

    #[test]
    fn random_error_patterns_within_capacity() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(43);
        for trial in 0..40 {
            let k = 1 + (rng.next_u32() % 5) as usize;
            let n = k + (rng.next_u32() % 7) as usize;
            let p = Params::new(k, n).unwrap();
            let len = 1 + (rng.next_u32() % 3000) as usize;
            let mut secret = vec![0u8; len];
            rng.fill_bytes(&mut secret);
            let mut shares = split(&secret, p, &mut rng).unwrap();
            let t = p.correctable(n);
            let mut idx: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                idx.swap(i, rng.next_u32() as usize % (i + 1));
            }
            let mut want: Vec<u8> = Vec::new();
            for &i in &idx[..t] {
                let pos = rng.next_u32() as usize % len;
                let flip = 1 + (rng.next_u32() % 255) as u8;
                shares[i].data_mut()[pos] ^= flip;
                want.push(shares[i].index());
            }
            want.sort_unstable();
            let c = recover_correcting(&shares).unwrap();
            assert_eq!(c.bad, want, "trial {trial} k={k} n={n}");
            assert_eq!(c.secret.expose(), &secret[..], "trial {trial}");
        }
    }
}
