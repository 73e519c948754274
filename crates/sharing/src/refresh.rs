//! Proactive refresh: every holder deals a fresh Shamir sharing of zero and each holder adds the
//! sub-shares it receives to its share. The secret (the value at 0) is unchanged; every share is
//! re-randomised, so shares stolen before the refresh cannot be combined with shares taken after
//! it. (With `k = 1` every share *is* the secret and refresh cannot change it.)

use kagi_keymat::Key;

use crate::error::{Result, SharingError};
use crate::rng::RandomSource;
use crate::shamir::{split, Params, Share};
use crate::xor::xor_into;

/// One holder's dealing: a sharing of the all-zero secret of `len` bytes, one update per share
/// index (`result[i]` is for index `i + 1`).
pub fn refresh_deal(params: Params, len: usize, rng: &mut impl RandomSource) -> Result<Vec<Share>> {
    let zero = Key::zeroed(len);
    split(zero.expose(), params, rng)
}

/// Adds the updates received from the dealers (one from each; each for this share's index) to
/// `share`.
pub fn refresh_apply(share: &mut Share, updates: &[Share]) -> Result<()> {
    if updates.is_empty() {
        return Err(SharingError::NotEnoughShares { needed: 1, got: 0 });
    }
    for u in updates {
        if u.params() != share.params() {
            return Err(SharingError::ParameterMismatch {
                k1: share.params().k() as u8,
                n1: share.params().n() as u8,
                k2: u.params().k() as u8,
                n2: u.params().n() as u8,
            });
        }
        if u.index() != share.index() {
            return Err(SharingError::MessageMismatch(
                "refresh update for another share index",
            ));
        }
        if u.len() != share.len() {
            return Err(SharingError::LengthMismatch {
                index: u.index(),
                expected: share.len(),
                got: u.len(),
            });
        }
    }
    for u in updates {
        xor_into(share.data_mut(), u.data());
    }
    Ok(())
}

/// Runs one refresh round in one process (for tests and demos): every holder of `shares` deals,
/// every holder applies what it received.
pub fn refresh_local(shares: &mut [Share], rng: &mut impl RandomSource) -> Result<()> {
    let (params, len) = crate::shamir::check_shares(shares)?;
    let dealings = (0..shares.len())
        .map(|_| refresh_deal(params, len, rng))
        .collect::<Result<Vec<_>>>()?;
    for s in shares.iter_mut() {
        let mine: Vec<Share> = dealings
            .iter()
            .map(|d| d[s.index() as usize - 1].clone())
            .collect();
        refresh_apply(s, &mine)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recover;
    use rand_core::SeedableRng;

    #[test]
    fn refresh_keeps_secret_and_changes_every_share() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
        for (k, n) in [(2, 2), (3, 5), (5, 9)] {
            let p = Params::new(k, n).unwrap();
            let secret: Vec<u8> = (0..777u32).map(|i| (i ^ 0x5a) as u8).collect();
            let before = split(&secret, p, &mut rng).unwrap();
            let mut after = before.clone();
            refresh_local(&mut after, &mut rng).unwrap();
            for (a, b) in after.iter().zip(&before) {
                assert_eq!(a.index(), b.index());
                assert_ne!(a.data(), b.data(), "share {} unchanged", a.index());
            }
            assert_eq!(recover(&after[n - k..]).unwrap().expose(), &secret[..]);
            // Old and new shares do not mix: k − 1 old plus one new give garbage.
            let mut mixed: Vec<Share> = before[..k - 1].to_vec();
            mixed.push(after[k - 1].clone());
            assert_ne!(recover(&mixed).unwrap().expose(), &secret[..]);
        }
    }

    #[test]
    fn dealing_is_a_sharing_of_zero() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(22);
        let p = Params::new(3, 4).unwrap();
        let d = refresh_deal(p, 100, &mut rng).unwrap();
        assert!(recover(&d).unwrap().expose().iter().all(|&b| b == 0));
        assert!(d.iter().all(|s| s.data().iter().any(|&b| b != 0)));
    }

    #[test]
    fn mismatched_updates_are_errors() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(23);
        let p = Params::new(2, 3).unwrap();
        let mut s = split(b"abc", p, &mut rng).unwrap();
        let d = refresh_deal(p, 3, &mut rng).unwrap();
        let original = s[0].clone();
        assert!(refresh_apply(&mut s[0], &[d[1].clone()]).is_err());
        let short = refresh_deal(p, 2, &mut rng).unwrap();
        assert!(refresh_apply(&mut s[0], &[d[0].clone(), short[0].clone()]).is_err());
        assert_eq!(
            s[0], original,
            "a rejected update must not change the share"
        );
        assert!(refresh_apply(&mut s[0], &[]).is_err());
    }
}
