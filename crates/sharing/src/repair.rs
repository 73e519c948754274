//! Share repair: rebuild a lost share from `k` (or more) others without reconstructing the secret
//! (or any helper's share) in one place.
//!
//! The new share is `y_r = Σ_{h ∈ H} λ_h(r) · y_h` (Lagrange weights at the lost index `r` over the
//! helper set `H`). Sending `λ_h(r) · y_h` straight to the new site would hand it `|H| >= k` scaled
//! shares, hence the secret. Instead:
//!
//! 1. [`repair_contribute`]: each helper `h` splits `λ_h(r) · y_h` into `|H|` XOR pieces
//!    (uniformly random but for one) and sends piece `h → j` to every helper `j` (keeping its own);
//! 2. [`repair_aggregate`]: each helper `j` XORs the `|H|` pieces it received and sends the sum to
//!    the new site;
//! 3. [`repair_finish`]: the new site XORs the `|H|` sums and obtains `y_r`.
//!
//! Each helper sees only uniformly random pieces of the others' contributions; the new site sees
//! `|H|` sums that are uniformly random subject to adding up to its own share. (As with any such
//! protocol, the new site colluding with a helper learns that helper's pieces; channels between
//! parties are one-time-pad encrypted and authenticated by the caller.)

use kagi_keymat::Key;

use crate::error::{Result, SharingError};
use crate::gf256;
use crate::kernel::{mat_mul, Backend, MatTables};
use crate::rng::RandomSource;
use crate::shamir::{Params, Share};
use crate::xor::xor_into;

/// A message of the repair protocol: a piece from helper `from` to party `to` (another helper in
/// step 1, the new site in step 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPiece {
    /// Sender's share index.
    pub from: u8,
    /// Receiver's index (a helper, or the target).
    pub to: u8,
    /// The index of the share being rebuilt.
    pub target: u8,
    /// The helper set, ascending.
    pub helpers: Vec<u8>,
    /// Sharing parameters.
    pub params: Params,
    /// The piece (secret material).
    pub data: Key,
}

fn check_helper_set(params: Params, target: usize, helpers: &[u8]) -> Result<(u8, Vec<u8>)> {
    let target = params.check_index(target)?;
    let mut hs = helpers.to_vec();
    hs.sort_unstable();
    for w in hs.windows(2) {
        if w[0] == w[1] {
            return Err(SharingError::DuplicateIndex(w[0]));
        }
    }
    for &h in &hs {
        params.check_index(h as usize)?;
        if h == target {
            return Err(SharingError::MessageMismatch(
                "the lost share cannot be its own helper",
            ));
        }
    }
    if hs.len() < params.k() {
        return Err(SharingError::NotEnoughShares {
            needed: params.k(),
            got: hs.len(),
        });
    }
    Ok((target, hs))
}

/// Step 1, at helper `share.index()`: returns one piece for each helper in `helpers` (its own
/// included; it keeps that one). `helpers` must hold at least `k` distinct valid indices, include
/// this share's index and exclude `target`.
pub fn repair_contribute(
    share: &Share,
    target: usize,
    helpers: &[u8],
    rng: &mut impl RandomSource,
) -> Result<Vec<RepairPiece>> {
    let params = share.params();
    let (target, hs) = check_helper_set(params, target, helpers)?;
    let me = share.index();
    let pos = hs
        .iter()
        .position(|&h| h == me)
        .ok_or(SharingError::MessageMismatch(
            "this share is not in the helper set",
        ))?;
    let w = gf256::lagrange_weights(&hs, target)[pos];
    let len = share.len();
    let mut contribution = Key::zeroed(len);
    let tables = MatTables::new(&[w], 1, 1);
    mat_mul(
        Backend::detect(),
        &tables,
        &[share.data()],
        &mut [contribution.expose_mut()],
        len,
    );

    let mut pieces = Vec::with_capacity(hs.len());
    for (i, &to) in hs.iter().enumerate() {
        let data = if i + 1 == hs.len() {
            std::mem::take(&mut contribution)
        } else {
            let mut p = Key::zeroed(len);
            rng.fill(p.expose_mut())?;
            xor_into(contribution.expose_mut(), p.expose());
            p
        };
        pieces.push(RepairPiece {
            from: me,
            to,
            target,
            helpers: hs.clone(),
            params,
            data,
        });
    }
    Ok(pieces)
}

/// Step 2, at helper `me`: XORs the pieces addressed to it (exactly one from every helper) into
/// one piece for the new site.
pub fn repair_aggregate(me: u8, pieces: &[RepairPiece]) -> Result<RepairPiece> {
    let first = pieces
        .first()
        .ok_or(SharingError::NotEnoughShares { needed: 1, got: 0 })?;
    let (target, hs, params) = (first.target, first.helpers.clone(), first.params);
    check_same_round(pieces, target, &hs, params, Some(me))?;
    if !hs.contains(&me) {
        return Err(SharingError::MessageMismatch("aggregator is not a helper"));
    }
    let data = xor_all(pieces)?;
    Ok(RepairPiece {
        from: me,
        to: target,
        target,
        helpers: hs,
        params,
        data,
    })
}

/// Step 3, at the new site: XORs the sums from all helpers into the rebuilt share.
pub fn repair_finish(sums: &[RepairPiece]) -> Result<Share> {
    let first = sums
        .first()
        .ok_or(SharingError::NotEnoughShares { needed: 1, got: 0 })?;
    let (target, hs, params) = (first.target, first.helpers.clone(), first.params);
    check_same_round(sums, target, &hs, params, Some(target))?;
    let data = xor_all(sums)?;
    Share::new(target as usize, params, data)
}

/// Checks that `msgs` come from every helper exactly once, all for the same round and receiver.
fn check_same_round(
    msgs: &[RepairPiece],
    target: u8,
    hs: &[u8],
    params: Params,
    to: Option<u8>,
) -> Result<()> {
    check_helper_set(params, target as usize, hs)?;
    let mut from: Vec<u8> = Vec::with_capacity(msgs.len());
    for m in msgs {
        if m.target != target || m.helpers != hs || m.params != params {
            return Err(SharingError::MessageMismatch(
                "pieces from different repair rounds",
            ));
        }
        if to.is_some_and(|t| t != m.to) {
            return Err(SharingError::MessageMismatch(
                "piece addressed to another party",
            ));
        }
        from.push(m.from);
    }
    from.sort_unstable();
    for w in from.windows(2) {
        if w[0] == w[1] {
            return Err(SharingError::DuplicateIndex(w[0]));
        }
    }
    if from != hs {
        return Err(SharingError::NotEnoughShares {
            needed: hs.len(),
            got: msgs.len(),
        });
    }
    Ok(())
}

fn xor_all(msgs: &[RepairPiece]) -> Result<Key> {
    let len = msgs[0].data.len();
    let mut out = Key::zeroed(len);
    for m in msgs {
        if m.data.len() != len {
            return Err(SharingError::LengthMismatch {
                index: m.from,
                expected: len,
                got: m.data.len(),
            });
        }
        xor_into(out.expose_mut(), m.data.expose());
    }
    Ok(out)
}

/// Runs the whole protocol in one process (for tests and demos; a deployment runs each step at
/// its own site): rebuilds share `target` from `helpers`.
pub fn repair_local(
    helpers: &[Share],
    target: usize,
    rng: &mut impl RandomSource,
) -> Result<Share> {
    let hs: Vec<u8> = helpers.iter().map(|s| s.index()).collect();
    let mut inbox: Vec<Vec<RepairPiece>> = vec![Vec::new(); hs.len()];
    for s in helpers {
        for p in repair_contribute(s, target, &hs, rng)? {
            let j = hs.iter().position(|&h| h == p.to).unwrap_or(0);
            inbox[j].push(p);
        }
    }
    let sums = hs
        .iter()
        .zip(&inbox)
        .map(|(&h, pieces)| repair_aggregate(h, pieces))
        .collect::<Result<Vec<_>>>()?;
    repair_finish(&sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{recover, split};
    use rand_core::SeedableRng;

    #[test]
    fn repaired_share_equals_lost_share() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let p = Params::new(3, 5).unwrap();
        let secret: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
        let shares = split(&secret, p, &mut rng).unwrap();
        for lost in 1..=5usize {
            let helpers: Vec<Share> = shares
                .iter()
                .filter(|s| s.index() as usize != lost)
                .take(3)
                .cloned()
                .collect();
            let rebuilt = repair_local(&helpers, lost, &mut rng).unwrap();
            assert_eq!(rebuilt, shares[lost - 1]);
            // And with all four remaining helpers.
            let all: Vec<Share> = shares
                .iter()
                .filter(|s| s.index() as usize != lost)
                .cloned()
                .collect();
            assert_eq!(
                repair_local(&all, lost, &mut rng).unwrap(),
                shares[lost - 1]
            );
        }
        let rebuilt = repair_local(&shares[1..4], 1, &mut rng).unwrap();
        let again = vec![rebuilt, shares[3].clone(), shares[4].clone()];
        assert_eq!(recover(&again).unwrap().expose(), &secret[..]);
    }

    #[test]
    fn messages_are_masked() {
        // No single piece or sum equals the helper's weighted share or the target share.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        let p = Params::new(2, 3).unwrap();
        let shares = split(&[9u8; 64], p, &mut rng).unwrap();
        let hs = [1u8, 2];
        let pieces = repair_contribute(&shares[0], 3, &hs, &mut rng).unwrap();
        assert_eq!(pieces.len(), 2);
        for piece in &pieces {
            assert_ne!(piece.data.expose(), shares[2].data());
            assert_ne!(piece.data.expose(), shares[0].data());
        }
    }

    #[test]
    fn bad_repair_requests_are_errors() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
        let p = Params::new(3, 5).unwrap();
        let shares = split(b"abcdef", p, &mut rng).unwrap();
        assert_eq!(
            repair_local(&shares[..2], 5, &mut rng),
            Err(SharingError::NotEnoughShares { needed: 3, got: 2 })
        );
        assert_eq!(
            repair_local(&shares[..3], 6, &mut rng),
            Err(SharingError::UnknownIndex { index: 6, n: 5 })
        );
        assert!(matches!(
            repair_local(&shares[..3], 2, &mut rng),
            Err(SharingError::MessageMismatch(_))
        ));
        assert!(matches!(
            repair_contribute(&shares[0], 5, &[2, 3, 4], &mut rng),
            Err(SharingError::MessageMismatch(_))
        ));
        // A missing sum is detected rather than producing a wrong share.
        let hs = [1u8, 2, 3];
        let mut inbox: Vec<Vec<RepairPiece>> = vec![Vec::new(); 3];
        for s in &shares[..3] {
            for piece in repair_contribute(s, 5, &hs, &mut rng).unwrap() {
                inbox[(piece.to - 1) as usize].push(piece);
            }
        }
        let sums: Vec<RepairPiece> = (0..3)
            .map(|j| repair_aggregate(j as u8 + 1, &inbox[j]).unwrap())
            .collect();
        assert!(repair_finish(&sums[..2]).is_err());
        assert!(repair_aggregate(1, &inbox[1]).is_err()); // addressed to 2
        assert_eq!(repair_finish(&sums).unwrap(), shares[4]);
    }
}
