//! Arithmetic in GF(2^64) = GF(2)\[z\]/(z^64 + z^4 + z^3 + z + 1) and its Cantor basis.
//!
//! Elements are `u64`s: bit `i` is the coefficient of `z^i`. Addition is XOR. This module is the
//! portable (safe) reference; the crate-private `clmul_unsafe` module has the PCLMULQDQ kernels used on x86-64.

use std::sync::OnceLock;

/// Carry-less product of two 64-bit polynomials as (low, high) words. Portable, constant time.
#[inline]
pub fn clmul(a: u64, b: u64) -> (u64, u64) {
    let mut lo = 0u64;
    let mut hi = 0u64;
    for i in 0..64 {
        let m = 0u64.wrapping_sub((b >> i) & 1);
        lo ^= (a << i) & m;
        if i > 0 {
            hi ^= (a >> (64 - i)) & m;
        }
    }
    (lo, hi)
}

/// Reduces a 128-bit carry-less product modulo z^64 + z^4 + z^3 + z + 1.
#[inline]
pub fn reduce(lo: u64, hi: u64) -> u64 {
    // hi·z^64 ≡ hi·(z^4 + z^3 + z + 1); the bits of that pushed past z^63 are g, folded again.
    let g = (hi >> 63) ^ (hi >> 61) ^ (hi >> 60);
    let h = hi ^ g;
    lo ^ h ^ (h << 1) ^ (h << 3) ^ (h << 4)
}

/// Product in GF(2^64) (portable).
#[inline]
pub fn mul(a: u64, b: u64) -> u64 {
    let (lo, hi) = clmul(a, b);
    reduce(lo, hi)
}

/// ψ(x) = x² + x, the GF(2)-linear map whose iterates are the Cantor subspace polynomials.
#[inline]
pub fn psi(x: u64) -> u64 {
    mul(x, x) ^ x
}

/// Solves x² + x = c; returns the solution with bit 0 clear, or `None` when Tr(c) = 1.
fn solve_psi(c: u64) -> Option<u64> {
    // Rows: equation for bit r of ψ(x): Σ_j M[r][j] x_j = c_r. Row = (mask over j, rhs bit).
    let mut rows = [(0u64, 0u8); 64];
    for j in 0..64 {
        let col = psi(1u64 << j);
        for (r, row) in rows.iter_mut().enumerate() {
            if (col >> r) & 1 == 1 {
                row.0 |= 1u64 << j;
            }
        }
    }
    for (r, row) in rows.iter_mut().enumerate() {
        row.1 = ((c >> r) & 1) as u8;
    }
    // Gauss–Jordan elimination.
    let mut pivot_row_of_col = [usize::MAX; 64];
    let mut next = 0usize;
    #[allow(clippy::needless_range_loop)]
    for col in 0..64 {
        let Some(p) = (next..64).find(|&r| (rows[r].0 >> col) & 1 == 1) else {
            continue;
        };
        rows.swap(next, p);
        let pr = rows[next];
        for (r, row) in rows.iter_mut().enumerate() {
            if r != next && (row.0 >> col) & 1 == 1 {
                row.0 ^= pr.0;
                row.1 ^= pr.1;
            }
        }
        pivot_row_of_col[col] = next;
        next += 1;
    }
    if rows[next..].iter().any(|r| r.1 == 1) {
        return None;
    }
    let mut x = 0u64;
    for (col, &r) in pivot_row_of_col.iter().enumerate() {
        if r != usize::MAX && rows[r].1 == 1 {
            x |= 1u64 << col;
        }
    }
    // Free variables are 0; normalise so that bit 0 is clear (x and x+1 both solve it).
    if x & 1 == 1 {
        x ^= 1;
    }
    (psi(x) == c).then_some(x)
}

/// Number of Cantor basis elements computed (transforms up to 2^(CANTOR_DIM) points).
pub const CANTOR_DIM: usize = 40;

/// The Cantor basis β_0 = 1, β_i² + β_i = β_{i−1}: ψ maps span(β_0..β_{k−1}) onto
/// span(β_0..β_{k−2}), so the subspace polynomials are the iterates ψ^i and
/// ψ^i(β_i) = 1 (no normalisation constants in the novel-basis FFT).
pub fn cantor_basis() -> &'static [u64; CANTOR_DIM] {
    static BASIS: OnceLock<[u64; CANTOR_DIM]> = OnceLock::new();
    BASIS.get_or_init(|| {
        let mut b = [0u64; CANTOR_DIM];
        b[0] = 1;
        for i in 1..CANTOR_DIM {
            // Tr(β_{i-1}) = 0 for every i < 64 in GF(2^64) (64 is a power of two).
            b[i] = solve_psi(b[i - 1]).expect("Cantor basis exists in GF(2^64)");
        }
        b
    })
}

/// Twiddle table: `t[c] = Σ_b c_b β_{b+1}` for `c < n` (n a power of two). In the novel-basis
/// FFT over span(β_0..β_{k−1}), the butterfly constant of block `c` at every layer is `t[c]`.
pub fn twiddles(n: usize) -> Vec<u64> {
    let beta = cantor_basis();
    let mut t = vec![0u64; n.max(1)];
    let mut size = 1usize;
    let mut b = 0usize;
    while size < n {
        let add = beta[b + 1];
        let (lo, hi) = t.split_at_mut(size);
        for (h, l) in hi[..size].iter_mut().zip(lo.iter()) {
            *h = *l ^ add;
        }
        size *= 2;
        b += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_matches_bitwise_long_division() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..200 {
            x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x55;
            let y = x.rotate_left(29).wrapping_add(0x1357);
            let (mut lo, mut hi) = clmul(x, y);
            let r = reduce(lo, hi);
            // Long division, bit by bit from the top.
            for bit in (64..128).rev() {
                if (hi >> (bit - 64)) & 1 == 1 {
                    hi ^= 1 << (bit - 64);
                    let s = bit - 64; // subtract z^s·(z^4+z^3+z+1)
                    for t in [0usize, 1, 3, 4] {
                        let p = s + t;
                        if p >= 64 {
                            hi ^= 1 << (p - 64);
                        } else {
                            lo ^= 1 << p;
                        }
                    }
                }
            }
            assert_eq!(hi, 0);
            assert_eq!(r, lo);
        }
    }

    #[test]
    fn field_laws() {
        let a = 0xdead_beef_0123_4567u64;
        let b = 0x0f0f_1234_8888_aaaau64;
        let c = 0x7777_0000_ffff_1111u64;
        assert_eq!(mul(a, b), mul(b, a));
        assert_eq!(mul(mul(a, b), c), mul(a, mul(b, c)));
        assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
        assert_eq!(mul(a, 1), a);
        // a^(2^64) = a (Frobenius has order 64).
        let mut p = a;
        for _ in 0..64 {
            p = mul(p, p);
        }
        assert_eq!(p, a);
    }

    #[test]
    fn cantor_basis_is_a_chain_of_independent_elements() {
        let b = cantor_basis();
        assert_eq!(b[0], 1);
        for i in 1..CANTOR_DIM {
            assert_eq!(psi(b[i]), b[i - 1]);
        }
        // Independence: Gaussian elimination over GF(2) keeps full rank.
        let mut basis: Vec<u64> = Vec::new();
        for &v in b.iter() {
            let mut x = v;
            for &e in &basis {
                x = x.min(x ^ e);
            }
            assert_ne!(x, 0);
            basis.push(x);
            basis.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    #[test]
    fn twiddle_table_is_linear_span() {
        let t = twiddles(64);
        let b = cantor_basis();
        for (c, &tc) in t.iter().enumerate() {
            let mut e = 0;
            for bit in 0..6 {
                if (c >> bit) & 1 == 1 {
                    e ^= b[bit + 1];
                }
            }
            assert_eq!(tc, e);
        }
    }
}
