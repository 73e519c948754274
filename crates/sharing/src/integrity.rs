//! Per-share information-theoretic integrity tags.
//!
//! The dealer tags each share once for every party that may later need to check it — the other
//! holders (so sites can check each other during repair and refresh) and the owner (verifier
//! index [`OWNER`]) — each tag with its own one-time Wegman–Carter key from
//! [`kagi_keymat::its_mac`] that only the dealer and that verifier hold. A holder that alters its
//! share cannot produce a tag that a verifier accepts except with probability about
//! `(len/16 + 1) / 2^128`, whatever its computing power. Tags bind the share's index and
//! parameters as well as its bytes. Each tag spends [`MAC_KEY_LEN`] bytes of key; refresh
//! invalidates tags, so they are re-issued with fresh keys after each refresh.

use kagi_keymat::its_mac::{Mac, MacKey, Tag, MAC_KEY_LEN};

use crate::error::{Result, SharingError};
use crate::shamir::Share;

/// Verifier index of the data owner (shares use `1..=n`).
pub const OWNER: u8 = 0;

/// Domain separation for share tags.
const DOMAIN: &[u8; 16] = b"kagi-share-tag/1";

/// A tag on share `holder` that party `verifier` can check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareTag {
    /// Index of the tagged share.
    pub holder: u8,
    /// Index of the verifying party ([`OWNER`] for the owner).
    pub verifier: u8,
    /// The tag.
    pub tag: Tag,
}

fn mac_share(share: &Share, verifier: u8, key: MacKey) -> Tag {
    let mut m = Mac::new(key);
    m.update(DOMAIN);
    let p = share.params();
    m.update(&[p.k() as u8, p.n() as u8, share.index(), verifier]);
    m.update(&(share.len() as u64).to_le_bytes());
    m.update(share.data());
    m.finalize()
}

/// Tags `share` for `verifier` with a fresh one-time key.
pub fn tag_share(share: &Share, verifier: u8, key: MacKey) -> ShareTag {
    ShareTag {
        holder: share.index(),
        verifier,
        tag: mac_share(share, verifier, key),
    }
}

/// Checks `tag` on `share` with the verifier's copy of the one-time key.
pub fn verify_share(share: &Share, tag: &ShareTag, key: MacKey) -> Result<()> {
    let bad = SharingError::BadTag {
        holder: tag.holder,
        verifier: tag.verifier,
    };
    if tag.holder != share.index() {
        return Err(bad);
    }
    if mac_share(share, tag.verifier, key).ct_eq(&tag.tag) {
        Ok(())
    } else {
        Err(bad)
    }
}

/// Tags every share for every verifier in `verifiers` other than its own holder. `key_for(holder,
/// verifier)` supplies each one-time key (e.g. cut from QKD key shared with that verifier).
pub fn tag_all(
    shares: &[Share],
    verifiers: &[u8],
    mut key_for: impl FnMut(u8, u8) -> Result<MacKey>,
) -> Result<Vec<ShareTag>> {
    let mut out = Vec::new();
    for s in shares {
        for &v in verifiers {
            if v != s.index() {
                out.push(tag_share(s, v, key_for(s.index(), v)?));
            }
        }
    }
    Ok(out)
}

/// Bytes of one-time key that [`tag_all`] spends for `n` shares and the given verifier count
/// (a share is not tagged for its own holder when the holder is among the verifiers).
pub fn tag_key_bytes(shares: &[u8], verifiers: &[u8]) -> usize {
    shares
        .iter()
        .map(|s| verifiers.iter().filter(|v| *v != s).count())
        .sum::<usize>()
        * MAC_KEY_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{split, Params};
    use rand_core::{RngCore, SeedableRng};
    use std::collections::HashMap;

    #[test]
    fn sites_check_each_other_and_catch_tampering() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(31);
        let p = Params::new(3, 5).unwrap();
        let mut shares = split(&[0x11; 300], p, &mut rng).unwrap();
        let verifiers = [OWNER, 1, 2, 3, 4, 5];
        // The dealer draws one key per (holder, verifier) and gives the verifier a copy.
        let mut keys: HashMap<(u8, u8), [u8; 32]> = HashMap::new();
        let tags = tag_all(&shares, &verifiers, |h, v| {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            keys.insert((h, v), k);
            Ok(MacKey::from_bytes(&k).unwrap())
        })
        .unwrap();
        assert_eq!(tags.len(), 5 * 5);
        assert_eq!(tag_key_bytes(&[1, 2, 3, 4, 5], &verifiers), 25 * 32);
        let key = |h: u8, v: u8| MacKey::from_bytes(&keys[&(h, v)]).unwrap();
        for t in &tags {
            verify_share(&shares[t.holder as usize - 1], t, key(t.holder, t.verifier)).unwrap();
        }
        // Share 2 flips one bit: every verifier notices.
        shares[1].data_mut()[123] ^= 0x04;
        for t in tags.iter().filter(|t| t.holder == 2) {
            assert_eq!(
                verify_share(&shares[1], t, key(2, t.verifier)),
                Err(SharingError::BadTag {
                    holder: 2,
                    verifier: t.verifier
                })
            );
        }
        // A tag presented for another share is rejected.
        let t3 = tags
            .iter()
            .find(|t| t.holder == 3 && t.verifier == 1)
            .unwrap();
        assert!(verify_share(&shares[3], t3, key(3, 1)).is_err());
        // The wrong verifier's key fails.
        assert!(verify_share(&shares[2], t3, key(3, 2)).is_err());
    }
}
