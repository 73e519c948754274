//! n-of-n XOR sharing: `n − 1` uniformly random shares and one share equal to the secret XOR all
//! of them. All `n` shares are needed; any `n − 1` are uniformly random and independent of the
//! secret. This is what a multi-path relay uses to split a key over node-disjoint paths.

use kagi_keymat::Key;

use crate::error::{Result, SharingError};
use crate::rng::RandomSource;

/// Splits `secret` into `n >= 1` XOR shares.
pub fn xor_split(secret: &[u8], n: usize, rng: &mut impl RandomSource) -> Result<Vec<Key>> {
    if n == 0 {
        return Err(SharingError::NoShares);
    }
    let mut last = Key::from_slice(secret);
    let mut shares = Vec::with_capacity(n);
    for _ in 1..n {
        let mut s = Key::zeroed(secret.len());
        rng.fill(s.expose_mut())?;
        xor_into(last.expose_mut(), s.expose());
        shares.push(s);
    }
    shares.push(last);
    Ok(shares)
}

/// XORs all shares together. All must have the same length.
pub fn xor_combine(shares: &[Key]) -> Result<Key> {
    let first = shares.first().ok_or(SharingError::NoShares)?;
    let mut out = first.clone();
    for (i, s) in shares.iter().enumerate().skip(1) {
        if s.len() != out.len() {
            return Err(SharingError::LengthMismatch {
                index: (i + 1).min(255) as u8,
                expected: out.len(),
                got: s.len(),
            });
        }
        xor_into(out.expose_mut(), s.expose());
    }
    Ok(out)
}

/// `dst ^= src` (equal lengths; the compiler vectorises this loop).
pub(crate) fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn round_trip_and_errors() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        for n in 1..6 {
            let shares = xor_split(b"relay key material", n, &mut rng).unwrap();
            assert_eq!(shares.len(), n);
            assert_eq!(
                xor_combine(&shares).unwrap().expose(),
                b"relay key material"
            );
            if n > 1 {
                // Missing one share gives something else.
                assert_ne!(
                    xor_combine(&shares[1..]).unwrap().expose(),
                    b"relay key material"
                );
            }
        }
        assert_eq!(xor_split(b"x", 0, &mut rng), Err(SharingError::NoShares));
        assert_eq!(xor_combine(&[]), Err(SharingError::NoShares));
        let bad = [Key::from_slice(b"abc"), Key::from_slice(b"ab")];
        assert_eq!(
            xor_combine(&bad),
            Err(SharingError::LengthMismatch {
                index: 2,
                expected: 3,
                got: 2
            })
        );
    }

    #[test]
    fn single_share_of_two_is_uniform() {
        // Every value of the first share appears about equally often for a fixed secret.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let mut counts = [0u32; 256];
        for _ in 0..256 * 64 {
            let s = xor_split(&[0x42], 2, &mut rng).unwrap();
            counts[s[1].expose()[0] as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (24..=112).contains(&c)),
            "{counts:?}"
        );
    }
}
