//! Conversions and comparisons built from the engine's primitives.
//!
//! * [`msb`]: the sign bit of arithmetic shares, as boolean shares, one bit per row packed 64
//!   rows per word: the three additive shares become three bit-sliced summands (no messages),
//!   a carry-save layer reduces them to two (63 ANDs per row), and a log-depth carry tree
//!   (Kogge–Stone style, generate/propagate pairs) gives the carry into bit 63: about 250 ANDs
//!   per row in 8 rounds, whatever the number of rows.
//! * [`less_than`]: `x < c` as `msb(x − c)` (values and constants within ±2^62).
//! * [`b2a`]: boolean shares of bits to arithmetic shares of 0/1, in two rounds of two
//!   multiplications per row (`b = b0 ⊕ b1 ⊕ b2` with `u ⊕ v = u + v − 2uv`).

use crate::bits::{plane_words, to_planes, unpack};
use crate::error::Result;
use crate::party::Party;
use crate::ring::{Z2, Z64};
use crate::shares::Shares;
use crate::transport::Transport;

/// The three summands `x_0, x_1, x_2` of arithmetic shares as boolean sharings of their bit
/// planes (party `i` knows `x_i` and `x_{i+1}`, so this is local).
fn summands(party: usize, planes_a: &[u64], planes_b: &[u64]) -> [Shares<Z2>; 3] {
    let n = planes_a.len();
    let zero = || vec![0u64; n];
    let mut out: [Shares<Z2>; 3] = Default::default();
    for (j, s) in out.iter_mut().enumerate() {
        *s = if j == party {
            Shares::from_parts(planes_a.to_vec(), zero())
        } else if j == (party + 1) % 3 {
            Shares::from_parts(zero(), planes_b.to_vec())
        } else {
            Shares::from_parts(zero(), zero())
        };
    }
    out
}

fn plane(s: &Shares<Z2>, p: usize, w: usize) -> Shares<Z2> {
    s.slice(p * w..(p + 1) * w)
}

/// Boolean shares of the sign bit (bit 63) of each element of `x`: a plane of `⌈n/64⌉` words.
pub fn msb<T: Transport>(p: &mut Party<T>, x: &Shares<Z64>) -> Result<Shares<Z2>> {
    let n = x.len();
    let w = plane_words(n);
    let [s0, s1, s2] = summands(p.id(), &to_planes(&x.a), &to_planes(&x.b));
    // Carry-save: s = s0 ⊕ s1 ⊕ s2, maj = ((s0 ⊕ s1) ∧ (s0 ⊕ s2)) ⊕ s0, planes 0..=62 only.
    let sum = s0.add(&s1).add(&s2);
    let l = s0.add(&s1).slice(0..63 * w);
    let r = s0.add(&s2).slice(0..63 * w);
    let maj = p.mul(&l, &r)?.add(&s0.slice(0..63 * w));
    // u = sum, v = maj << 1 (plane p of v is plane p−1 of maj; plane 0 is zero).
    // Generate g_p = u_p ∧ v_p for p in 1..=62; propagate p_p = u_p ⊕ v_p.
    let u_hi = sum.slice(w..63 * w);
    let v_hi = maj.slice(0..62 * w);
    let g_hi = p.mul(&u_hi, &v_hi)?;
    let prop_hi = u_hi.add(&v_hi);
    // Groups from low to high: (G, P); the lowest group's P is never needed.
    // Position 0: G = 0 (v_0 = 0), P unused.
    let mut groups: Vec<(Shares<Z2>, Option<Shares<Z2>>)> = Vec::with_capacity(63);
    groups.push((Shares::zeros(w), None));
    for q in 0..62 {
        groups.push((plane(&g_hi, q, w), Some(plane(&prop_hi, q, w))));
    }
    while groups.len() > 1 {
        let mut lefts: Vec<Shares<Z2>> = Vec::new();
        let mut rights: Vec<Shares<Z2>> = Vec::new();
        let pairs = groups.len() / 2;
        for k in 0..pairs {
            let (lo, hi) = (&groups[2 * k], &groups[2 * k + 1]);
            let hp = hi.1.as_ref().cloned().unwrap_or_else(|| Shares::zeros(w));
            lefts.push(hp.clone());
            rights.push(lo.0.clone());
            if let Some(lp) = &lo.1 {
                lefts.push(hp);
                rights.push(lp.clone());
            }
        }
        let lrefs: Vec<&Shares<Z2>> = lefts.iter().collect();
        let rrefs: Vec<&Shares<Z2>> = rights.iter().collect();
        let prod = p.mul(&Shares::concat(&lrefs), &Shares::concat(&rrefs))?;
        let mut at = 0;
        let mut next = Vec::with_capacity(groups.len().div_ceil(2));
        for k in 0..pairs {
            let (lo, hi) = (&groups[2 * k], &groups[2 * k + 1]);
            let g = hi.0.add(&prod.slice(at * w..(at + 1) * w));
            at += 1;
            let pp = if lo.1.is_some() {
                let v = prod.slice(at * w..(at + 1) * w);
                at += 1;
                Some(v)
            } else {
                None
            };
            next.push((g, pp));
        }
        if groups.len() % 2 == 1 {
            next.push(groups[groups.len() - 1].clone());
        }
        groups = next;
    }
    let carry = &groups[0].0;
    Ok(plane(&sum, 63, w).add(&plane(&maj, 62, w)).add(carry))
}

/// Boolean shares of `x[k] < c[k]` (signed; `|x − c| < 2^63`).
pub fn less_than<T: Transport>(p: &mut Party<T>, x: &Shares<Z64>, c: &[u64]) -> Result<Shares<Z2>> {
    let neg: Vec<u64> = c.iter().map(|v| v.wrapping_neg()).collect();
    let d = x.add_public(p.id(), &neg);
    msb(p, &d)
}

/// Arithmetic shares (0 or 1 per row) of the `n` boolean-shared bits in `plane`.
pub fn b2a<T: Transport>(p: &mut Party<T>, plane: &Shares<Z2>, n: usize) -> Result<Shares<Z64>> {
    let id = p.id();
    let ba = unpack(&plane.a, n);
    let bb = unpack(&plane.b, n);
    let zero = vec![0u64; n];
    let term = |j: usize| -> Shares<Z64> {
        if j == id {
            Shares::from_parts(ba.clone(), zero.clone())
        } else if j == (id + 1) % 3 {
            Shares::from_parts(zero.clone(), bb.clone())
        } else {
            Shares::zeros(n)
        }
    };
    let (t0, t1, t2) = (term(0), term(1), term(2));
    let xor = |p: &mut Party<T>, u: &Shares<Z64>, v: &Shares<Z64>| -> Result<Shares<Z64>> {
        let uv = p.mul(u, v)?;
        Ok(u.add(v).sub(&uv.scale(2)))
    };
    let u = xor(p, &t0, &t1)?;
    xor(p, &u, &t2)
}

/// `plane_words` re-exported for callers sizing planes.
pub fn words_for_rows(n: usize) -> usize {
    plane_words(n)
}
