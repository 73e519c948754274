//! Algebraic manipulation detection (AMD) codes, after Cramer, Dodis, Fehr, Padró and Wichs,
//! "Detection of algebraic manipulation with applications to robust secret sharing and fuzzy
//! extractors" (EUROCRYPT 2008).
//!
//! A message `s` of `d` field elements is encoded as `s ‖ x ‖ f(x, s)` with `x` uniform and
//! `f(x, s) = x^(d+2) + Σ s_i·x^i` over GF(2^128) (POLYVAL's field; `d` is made odd by a zero
//! block, since `d + 2` must not be divisible by the field's characteristic 2). Whatever offset
//! `Δ ≠ 0` is added to a codeword, if `Δ` does not depend on `x` the result passes the check with
//! probability at most `(d + 1) / 2^128`, whatever the attacker's computing power.
//!
//! Why it matters for secret sharing: with XOR or Shamir sharing, whoever alters fewer than `k`
//! shares adds to the rebuilt secret an offset that is a function of the shares it saw, which
//! are independent of the secret (and of `x`). So a dealer that shares `encode(s)` instead of `s`
//! lets the receiver detect any alteration at the cost of [`AMD_OVERHEAD`] bytes per share. This
//! holds only when the evaluation point of each share is the one the dealer used (the receiver
//! must know which share is which; a relabelled share changes the combination, not just adds).

use kagi_keymat::Key;
use polyval::universal_hash::{KeyInit, UniversalHash};
use polyval::Polyval;
use subtle::ConstantTimeEq;

use crate::error::{Result, SharingError};
use crate::rng::RandomSource;

/// Bytes an AMD codeword adds to its message: the point `x` and the check value `f(x, s)`.
pub const AMD_OVERHEAD: usize = 32;

const BLOCK: usize = 16;

/// The multiplicative identity of POLYVAL's field (its "dot" product is `a·b·x^-128`, so the
/// identity is `x^128` reduced: `x^127 + x^126 + x^121 + 1`, little-endian bit order).
const ONE: [u8; BLOCK] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc2];

/// `f(x, s) = x^(d+2) + Σ_{i=1..d} s_i·x^(d+1-i)` with `d` odd: POLYVAL over the blocks
/// `ONE, 0, s_1, …, s_d` (`s` zero-padded, plus a zero block when its block count is even).
fn check_value(x: &[u8], msg: &[u8]) -> [u8; BLOCK] {
    let key = polyval::Key::from_slice(x);
    let mut h = Polyval::new(key);
    let mut lead = [0u8; 2 * BLOCK];
    lead[..BLOCK].copy_from_slice(&ONE);
    h.update_padded(&lead);
    h.update_padded(msg);
    if msg.len().div_ceil(BLOCK).is_multiple_of(2) {
        h.update_padded(&[0u8; BLOCK]);
    }
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(&h.finalize());
    out
}

/// Encodes `msg` as `msg ‖ x ‖ f(x, msg)` with a fresh uniform `x` ([`AMD_OVERHEAD`] bytes more).
pub fn encode(msg: &[u8], rng: &mut impl RandomSource) -> Result<Key> {
    let n = msg.len();
    let mut cw = vec![0u8; n + AMD_OVERHEAD];
    cw[..n].copy_from_slice(msg);
    rng.fill(&mut cw[n..n + BLOCK])?;
    let t = check_value(&cw[n..n + BLOCK], msg);
    cw[n + BLOCK..].copy_from_slice(&t);
    Ok(Key::from_vec(cw))
}

/// Checks a codeword and returns its message, or [`SharingError::Manipulated`] if it was
/// altered (the comparison is constant-time).
pub fn decode(codeword: &[u8]) -> Result<Key> {
    if codeword.len() < AMD_OVERHEAD {
        return Err(SharingError::Truncated {
            needed: AMD_OVERHEAD,
            got: codeword.len(),
        });
    }
    let n = codeword.len() - AMD_OVERHEAD;
    let (msg, rest) = codeword.split_at(n);
    let (x, t) = rest.split_at(BLOCK);
    if bool::from(check_value(x, msg).ct_eq(t)) {
        Ok(Key::from_slice(msg))
    } else {
        Err(SharingError::Manipulated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{recover, split, xor_combine, xor_split, Params, Share};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn one_is_the_identity_of_polyvals_field() {
        // POLYVAL of the single block ONE under hash key h is ONE·h = h.
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for _ in 0..8 {
            let mut h = [0u8; 16];
            rng.fill_bytes(&mut h);
            let mut p = Polyval::new(polyval::Key::from_slice(&h));
            p.update_padded(&ONE);
            assert_eq!(p.finalize().as_slice(), &h);
        }
    }

    #[test]
    fn round_trips_every_length() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 48, 4096] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let cw = encode(&msg, &mut rng).unwrap();
            assert_eq!(cw.len(), len + AMD_OVERHEAD);
            assert_eq!(decode(cw.expose()).unwrap().expose(), &msg[..]);
        }
        assert!(matches!(
            decode(&[0u8; 31]),
            Err(SharingError::Truncated { .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for len in [1usize, 16, 40] {
            let cw = encode(&vec![0x5a; len], &mut rng).unwrap();
            for bit in 0..cw.len() * 8 {
                let mut bad = cw.expose().to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(decode(&bad), Err(SharingError::Manipulated), "bit {bit}");
            }
        }
    }

    #[test]
    fn an_altered_share_is_caught_when_it_is_used_and_harmless_when_not() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let secret = vec![0x42u8; 128];
        let cw = encode(&secret, &mut rng).unwrap();
        // Shamir 2-of-3: share 1 is altered by any offset.
        let p = Params::new(2, 3).unwrap();
        let mut shares = split(cw.expose(), p, &mut rng).unwrap();
        shares[0].data_mut()[5] ^= 0x80;
        let with_bad = recover(&[shares[0].clone(), shares[1].clone()]).unwrap();
        assert_eq!(decode(with_bad.expose()), Err(SharingError::Manipulated));
        let good = recover(&[shares[1].clone(), shares[2].clone()]).unwrap();
        assert_eq!(decode(good.expose()).unwrap().expose(), &secret[..]);
        // XOR 3-of-3: any change to one share is caught.
        let mut parts = xor_split(cw.expose(), 3, &mut rng).unwrap();
        let mut b = parts[2].expose().to_vec();
        b[130] ^= 1;
        parts[2] = Key::from_vec(b);
        let all = xor_combine(&parts).unwrap();
        assert_eq!(decode(all.expose()), Err(SharingError::Manipulated));
        let _ = Share::new(1, p, Key::from_vec(vec![0; 4])).unwrap();
    }
}
