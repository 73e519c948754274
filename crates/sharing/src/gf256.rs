//! Arithmetic in GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B).
//!
//! Addition is XOR. Multiplication uses log/exp tables built at compile time (generator 0x03).
//! These scalar routines are used for coefficients (Lagrange weights, Vandermonde rows, solving
//! small linear systems); bulk data goes through the kernels in [`crate::kernel`].

/// The reduction polynomial (without the x^8 bit it is 0x1B).
pub const POLY: u16 = 0x11B;

const fn build_tables() -> ([u8; 512], [u8; 256]) {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        log[x as usize] = i as u8;
        // multiply by the generator 3 = x + 1
        let mut x2 = x << 1;
        if x2 & 0x100 != 0 {
            x2 ^= POLY;
        }
        x = x2 ^ x;
        i += 1;
    }
    // exp is doubled so that exp[log a + log b] needs no reduction mod 255.
    let mut j = 255;
    while j < 512 {
        exp[j] = exp[j - 255];
        j += 1;
    }
    (exp, log)
}

const TABLES: ([u8; 512], [u8; 256]) = build_tables();
static EXP: [u8; 512] = TABLES.0;
static LOG: [u8; 256] = TABLES.1;

/// Product of `a` and `b` in GF(2^8).
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// Multiplicative inverse of `a`; `None` for zero.
#[inline]
pub fn inv(a: u8) -> Option<u8> {
    if a == 0 {
        None
    } else {
        Some(EXP[255 - LOG[a as usize] as usize])
    }
}

/// `a / b`; `None` when `b` is zero.
#[inline]
pub fn div(a: u8, b: u8) -> Option<u8> {
    inv(b).map(|ib| mul(a, ib))
}

/// `a^e` in GF(2^8).
pub fn pow(a: u8, e: usize) -> u8 {
    if e == 0 {
        return 1;
    }
    if a == 0 {
        return 0;
    }
    EXP[(LOG[a as usize] as usize * e) % 255]
}

/// Reference multiplication by shift-and-add (no tables), used to check the tables in tests.
pub fn mul_slow(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1B;
        }
        b >>= 1;
    }
    p
}

/// Lagrange weights `w_i` with `f(at) = Σ w_i f(xs[i])` for every polynomial `f` of degree
/// `< xs.len()`. The `xs` must be distinct; `at` may equal one of them.
pub fn lagrange_weights(xs: &[u8], at: u8) -> Vec<u8> {
    xs.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let mut num = 1u8;
            let mut den = 1u8;
            for (j, &xj) in xs.iter().enumerate() {
                if i != j {
                    num = mul(num, at ^ xj);
                    den = mul(den, xi ^ xj);
                }
            }
            // den != 0 because the xs are distinct.
            div(num, den).unwrap_or(0)
        })
        .collect()
}

/// Evaluates the polynomial with coefficients `coeffs` (lowest degree first) at `x`.
pub fn eval_poly(coeffs: &[u8], x: u8) -> u8 {
    coeffs.iter().rev().fold(0u8, |acc, &c| mul(acc, x) ^ c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_agree_with_shift_and_add() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), mul_slow(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn inverses() {
        assert_eq!(inv(0), None);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a).unwrap()), 1, "{a}");
        }
        // Known AES value: 0x53 * 0xCA = 1.
        assert_eq!(inv(0x53), Some(0xCA));
    }

    #[test]
    fn generator_has_full_order() {
        let mut seen = [false; 256];
        for e in 0..255 {
            let v = pow(3, e);
            assert!(!seen[v as usize]);
            seen[v as usize] = true;
        }
        assert!(!seen[0]);
    }

    #[test]
    fn lagrange_reproduces_polynomial() {
        let coeffs = [7u8, 200, 13, 99];
        let xs = [1u8, 5, 9, 250];
        let ys: Vec<u8> = xs.iter().map(|&x| eval_poly(&coeffs, x)).collect();
        for at in [0u8, 2, 5, 77] {
            let w = lagrange_weights(&xs, at);
            let v = w.iter().zip(&ys).fold(0u8, |a, (&w, &y)| a ^ mul(w, y));
            assert_eq!(v, eval_poly(&coeffs, at));
        }
    }
}
