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
    // 1. Triples, generated in chunks and kept as one record each (`[a, a', b, b', c, c']`,
    // this party's two shares of each), so that the shuffle moves one record per swap instead
    // of touching six arrays: at millions of triples the random accesses are the cost.
    let mut trip: Vec<Triple> = Vec::with_capacity(m);
    let mut at = 0;
    while at < m {
        let k = TRIPLE_CHUNK.min(m - at);
        let ta = p.random::<R>(k);
        let tb = p.random::<R>(k);
        let tc = p.mul_unchecked(&ta, &tb)?;
        for i in 0..k {
            trip.push([ta.a[i], ta.b[i], tb.a[i], tb.b[i], tc.a[i], tc.b[i]]);
        }
        at += k;
    }
    // 2. The coin: 2 words of a fresh random sharing, opened and checked before use; the
    // triples are shuffled with it in place.
    let coin = p.random::<Z64>(2);
    let coin = p.open(&coin)?;
    p.check()?;
    let mut seed = Vec::with_capacity(16);
    seed.extend_from_slice(&coin[0].to_le_bytes());
    seed.extend_from_slice(&coin[1].to_le_bytes());
    let mut prg = Prg::new(&Key::from_vec(seed))?;
    shuffle(&mut trip, &mut prg);
    // Triples 0..c are opened; bucket k is triples c + k·b .. c + (k+1)·b, its first one is
    // checked against the others and against product k.
    // Everything opened, in one vector and one round:
    //   [0, 3c)            a, b, c of the C opened triples;
    //   [3c, 3c+s)         ρ of the sacrifices (bucket k, triple j ≥ 1: a_first − a_j);
    //   [3c+s, 3c+2s)      σ of the sacrifices (b_first − b_j);
    //   [3c+2s, 3c+2s+n)   ρ of the products (x − a_first);
    //   [3c+2s+n, end)     σ of the products (y − b_first).
    let s_len = n * (b - 1);
    let (o_rs, o_ss, o_rp) = (3 * c, 3 * c + s_len, 3 * c + 2 * s_len);
    let o_sp = o_rp + n;
    let total = o_sp + n;
    let mut all_a = vec![0u64; total];
    let mut all_b = vec![0u64; total];
    for (k, t) in trip[..c].iter().enumerate() {
        for (part, off) in [(0, 0), (2, c), (4, 2 * c)] {
            all_a[off + k] = t[part];
            all_b[off + k] = t[part + 1];
        }
    }
    let (x, y, z) = (&log.x, &log.y, &log.z);
    for k in 0..n {
        let bucket = &trip[c + k * b..c + (k + 1) * b];
        let f = &bucket[0];
        for (j, o) in bucket[1..].iter().enumerate() {
            let at = k * (b - 1) + j;
            all_a[o_rs + at] = R::sub(f[0], o[0]);
            all_b[o_rs + at] = R::sub(f[1], o[1]);
            all_a[o_ss + at] = R::sub(f[2], o[2]);
            all_b[o_ss + at] = R::sub(f[3], o[3]);
        }
        all_a[o_rp + k] = R::sub(x.0[k], f[0]);
        all_b[o_rp + k] = R::sub(x.1[k], f[1]);
        all_a[o_sp + k] = R::sub(y.0[k], f[2]);
        all_b[o_sp + k] = R::sub(y.1[k], f[3]);
    }
    // 3. One round of openings; the opened triples are checked in the clear.
    let open = p.open_owned(Shares::<R>::from_parts(all_a, all_b))?;
    let (oa, rest) = open.split_at(c);
    let (ob, oc) = rest.split_at(c);
    for k in 0..c {
        if R::mul(oa[k], ob[k]) != oc[k] {
            return Err(MpcError::CheatingDetected(format!(
                "an opened {} triple is wrong",
                R::NAME
            )));
        }
    }
    // 4–5. The zero tests `z − c − σ·a − ρ·b − ρσ`, streamed into the view hashes a chunk at a
    // time: for the sacrifices `(z, c, a, b) = (c_first, c_j, a_j, b_j)`, for the products
    // `(z, c, a, b) = (z, c_first, a_first, b_first)`.
    let mut zt = ZeroTests::<R>::new(p.id());
    for k in 0..n {
        let bucket = &trip[c + k * b..c + (k + 1) * b];
        let f = &bucket[0];
        for (j, o) in bucket[1..].iter().enumerate() {
            let at = k * (b - 1) + j;
            zt.push(
                (f[4], f[5]),
                (o[4], o[5]),
                (o[0], o[1]),
                (o[2], o[3]),
                open[o_rs + at],
                open[o_ss + at],
            );
            if zt.full() {
                zt.flush(p);
            }
        }
    }
    for k in 0..n {
        let f = &trip[c + k * b];
        zt.push(
            (z.0[k], z.1[k]),
            (f[4], f[5]),
            (f[0], f[1]),
            (f[2], f[3]),
            open[o_rp + k],
            open[o_sp + k],
        );
        if zt.full() {
            zt.flush(p);
        }
    }
    zt.flush(p);
    Ok(())
}

/// One party's shares of a triple `(a, b, c = a·b)`: `[a_i, a_{i+1}, b_i, b_{i+1}, c_i, c_{i+1}]`.
type Triple = [u64; 6];

/// Triples generated per multiplication round (bounds the temporaries; large, because each
/// call is a network round trip).
const TRIPLE_CHUNK: usize = 1 << 20;

/// Zero tests gathered a chunk at a time and handed to [`Party::assert_zero`], so that the
/// values never exist as one big vector.
struct ZeroTests<R: Ring> {
    party: usize,
    w: Shares<R>,
}

/// Zero tests per chunk.
const ZT_CHUNK: usize = 4096;

impl<R: Ring> ZeroTests<R> {
    fn new(party: usize) -> Self {
        Self {
            party,
            w: Shares::from_parts(Vec::with_capacity(ZT_CHUNK), Vec::with_capacity(ZT_CHUNK)),
        }
    }

    /// Adds `z − c − σ·a − ρ·b − ρσ` (pairs are this party's two shares).
    #[inline]
    fn push(
        &mut self,
        z: (u64, u64),
        c: (u64, u64),
        a: (u64, u64),
        b: (u64, u64),
        rho: u64,
        sigma: u64,
    ) {
        let wa = R::sub(
            R::sub(R::sub(z.0, c.0), R::mul(sigma, a.0)),
            R::mul(rho, b.0),
        );
        let wb = R::sub(
            R::sub(R::sub(z.1, c.1), R::mul(sigma, a.1)),
            R::mul(rho, b.1),
        );
        // The public ρσ is carried by share 0: party 0's `a`, party 2's `b`.
        let rs = R::mul(rho, sigma);
        let (wa, wb) = match self.party {
            0 => (R::sub(wa, rs), wb),
            2 => (wa, R::sub(wb, rs)),
            _ => (wa, wb),
        };
        self.w.a.push(wa);
        self.w.b.push(wb);
    }

    fn full(&self) -> bool {
        self.w.len() >= ZT_CHUNK
    }

    fn flush<T: Transport>(&mut self, p: &mut Party<T>) {
        if !self.w.is_empty() {
            p.assert_zero(&self.w);
            self.w.a.clear();
            self.w.b.clear();
        }
    }
}

/// Shuffles `v` uniformly at random (Fisher–Yates) with the coin's stream.
fn shuffle<X>(v: &mut [X], prg: &mut Prg) {
    let m = v.len();
    let mut r = vec![0u64; RAND_CHUNK.min(m)];
    let mut used = r.len();
    for i in (1..m).rev() {
        if used == r.len() {
            r.fill(0);
            prg.xor_into(&mut r);
            used = 0;
        }
        // Multiply-shift reduction; its bias (< m / 2^64) is negligible.
        let j = ((r[used] as u128 * (i as u128 + 1)) >> 64) as usize;
        used += 1;
        v.swap(i, j);
    }
}

/// Random words drawn at a time while shuffling.
const RAND_CHUNK: usize = 1 << 14;

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
        let mut p: Vec<usize> = (0..100_000).collect();
        shuffle(&mut p, &mut prg);
        assert_ne!(p, (0..100_000).collect::<Vec<_>>());
        // Uniform enough that no tenth of the positions keeps a tenth of its own values.
        let kept = p[..10_000].iter().filter(|&&v| v < 10_000).count();
        assert!((800..1200).contains(&kept), "{kept}");
        p.sort();
        assert_eq!(p, (0..100_000).collect::<Vec<_>>());
    }
}
