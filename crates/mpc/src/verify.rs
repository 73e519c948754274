//! Malicious security with abort: verifying multiplications with multiplication triples, after
//! Araki et al., "Optimized honest-majority MPC for malicious adversaries — breaking the 1
//! billion-gate per second barrier" (IEEE S&P 2017) and Furukawa et al. (Eurocrypt 2017); the
//! same checks work over Z_2^64 (ABY3, Mohassel–Rindal CCS 2018) because they only open
//! differences and test for zero — no division, no random challenge.
//!
//! For `N` recorded products (words):
//! 1. generate `N·B + C` random triples `(a, b, c = a·b)` with the semi-honest multiplication
//!    (a cheating party can only add a fixed error to `c`);
//! 2. toss a joint coin (open a random sharing and check it at once), and shuffle the triples
//!    with it — the cheater committed its errors before the coin existed;
//! 3. open the first `C` triples and check `c = a·b` in the clear;
//! 4. cut the rest into `N` buckets of `B`; check the first triple of each bucket against each
//!    other one ("sacrifice": open `ρ = a − a'`, `σ = b − b'`, test
//!    `c − c' − σ·a' − ρ·b' − ρσ = 0`), which passes only if both carry the same error;
//! 5. check each recorded product `(x, y, z)` against its bucket's first triple the same way;
//! 6. compare the hashes of everything opened and every zero test ([`crate::Party::check`]).
//!
//! With `B − 1 ≥ 40 / log2 N` the cheater passes with probability below `2^-40`
//! (Furukawa et al., Thm. 5.3: about `N^{1−B}`); `N` is padded to at least 2^10.
//! In [`crate::ring::Z2`] a word is 64 triples that share one bucket assignment, which only
//! makes a cheater's errors more likely to collide with honest triples, not less.

use crate::error::{MpcError, Result};
use crate::party::{MulLog, Party};
use crate::prg::Prg;
use crate::ring::{Ring, Z2, Z64};
use crate::shares::Shares;
use crate::transport::Transport;
use kagi_keymat::Key;

/// Statistical security parameter (bits).
pub const STAT_SEC: u32 = 40;

/// Bucket size `B` for `n` products (`n` already padded).
pub fn bucket_size(n: usize) -> usize {
    let log = (usize::BITS - n.max(2).leading_zeros() - 1).max(1);
    (1 + STAT_SEC.div_ceil(log) as usize).max(3)
}

/// Verifies both rings' recorded products, then checks the views.
pub(crate) fn verify_all<T: Transport>(p: &mut Party<T>) -> Result<()> {
    let log64 = std::mem::take(&mut p.logs[Z64::INDEX]);
    let log2 = std::mem::take(&mut p.logs[Z2::INDEX]);
    if log64.len() > 0 {
        verify_ring::<Z64, T>(p, log64)?;
    }
    if log2.len() > 0 {
        verify_ring::<Z2, T>(p, log2)?;
    }
    p.check()
}

fn verify_ring<R: Ring, T: Transport>(p: &mut Party<T>, log: MulLog) -> Result<()> {
    let n = log.len();
    let padded = n.max(1 << 10);
    let b = bucket_size(padded);
    let c = b;
    let m = n * b + c;
    // 1. Triples.
    let ta = p.random::<R>(m);
    let tb = p.random::<R>(m);
    let tc = p.mul_unchecked(&ta, &tb)?;
    // 2. The coin: 2 words of a fresh random sharing, opened and checked before use.
    let coin = p.random::<Z64>(2);
    let coin = p.open(&coin)?;
    p.check()?;
    let mut seed = Vec::with_capacity(16);
    seed.extend_from_slice(&coin[0].to_le_bytes());
    seed.extend_from_slice(&coin[1].to_le_bytes());
    let mut prg = Prg::new(&Key::from_vec(seed))?;
    let perm = shuffle(m, &mut prg);
    let (ta, tb, tc) = (ta.gather(&perm), tb.gather(&perm), tc.gather(&perm));
    // Index helpers: opened triples are 0..c; bucket k's j-th triple is c + k*b + j.
    let first: Vec<usize> = (0..n).map(|k| c + k * b).collect();
    let mut others = Vec::with_capacity(n * (b - 1));
    let mut firsts_rep = Vec::with_capacity(n * (b - 1));
    for k in 0..n {
        for j in 1..b {
            others.push(c + k * b + j);
            firsts_rep.push(c + k * b);
        }
    }
    let (a0, b0, c0) = (
        ta.gather(&firsts_rep),
        tb.gather(&firsts_rep),
        tc.gather(&firsts_rep),
    );
    let (a1, b1, c1) = (ta.gather(&others), tb.gather(&others), tc.gather(&others));
    let (fa, fb, fc) = (ta.gather(&first), tb.gather(&first), tc.gather(&first));
    let x = Shares::<R>::from_parts(log.x.0, log.x.1);
    let y = Shares::<R>::from_parts(log.y.0, log.y.1);
    let z = Shares::<R>::from_parts(log.z.0, log.z.1);
    // 3–5 in one round of openings: the C opened triples, ρ/σ of the sacrifices, ρ/σ of the
    // products.
    let opened_idx: Vec<usize> = (0..c).collect();
    let rho_s = a0.sub(&a1);
    let sig_s = b0.sub(&b1);
    let rho_p = x.sub(&fa);
    let sig_p = y.sub(&fb);
    let all = Shares::concat(&[
        &ta.gather(&opened_idx),
        &tb.gather(&opened_idx),
        &tc.gather(&opened_idx),
        &rho_s,
        &sig_s,
        &rho_p,
        &sig_p,
    ]);
    let open = p.open(&all)?;
    let (oa, rest) = open.split_at(c);
    let (ob, rest) = rest.split_at(c);
    let (oc, rest) = rest.split_at(c);
    let (rs, rest) = rest.split_at(rho_s.len());
    let (ss, rest) = rest.split_at(sig_s.len());
    let (rp, sp) = rest.split_at(rho_p.len());
    for k in 0..c {
        if R::mul(oa[k], ob[k]) != oc[k] {
            return Err(MpcError::CheatingDetected(format!(
                "an opened {} triple is wrong",
                R::NAME
            )));
        }
    }
    let id = p.id();
    let sacrifice = zero_test::<R>(id, &c0, &c1, &a1, &b1, rs, ss);
    let products = zero_test::<R>(id, &z, &fc, &fa, &fb, rp, sp);
    p.assert_zero(&sacrifice);
    p.assert_zero(&products);
    Ok(())
}

/// `z − c − σ·a − ρ·b − ρσ`, zero when `(x, y, z)` and `(a, b, c)` are both correct products and
/// `ρ = x − a`, `σ = y − b`.
fn zero_test<R: Ring>(
    party: usize,
    z: &Shares<R>,
    c: &Shares<R>,
    a: &Shares<R>,
    b: &Shares<R>,
    rho: &[u64],
    sigma: &[u64],
) -> Shares<R> {
    let rs: Vec<u64> = rho.iter().zip(sigma).map(|(&r, &s)| R::mul(r, s)).collect();
    z.sub(c)
        .sub(&a.mul_public(sigma))
        .sub(&b.mul_public(rho))
        .add_public(party, &rs.iter().map(|&v| R::neg(v)).collect::<Vec<_>>())
}

/// A uniformly random permutation of `0..m` (Fisher–Yates) from the coin's stream.
fn shuffle(m: usize, prg: &mut Prg) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..m).collect();
    let r = prg.words(m);
    for i in (1..m).rev() {
        // Multiply-shift reduction; its bias (< m / 2^64) is negligible.
        let j = ((r[i] as u128 * (i as u128 + 1)) >> 64) as usize;
        perm.swap(i, j);
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_sizes_follow_the_bound() {
        assert_eq!(bucket_size(1 << 20), 3);
        assert_eq!(bucket_size(1 << 10), 5);
        assert_eq!(bucket_size(1 << 14), 4);
        assert!(bucket_size(1 << 40) >= 3);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut prg = Prg::new(&Key::from_slice(&[3; 16])).unwrap();
        let mut p = shuffle(1000, &mut prg);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
