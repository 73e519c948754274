//! Pseudorandom streams for correlated randomness: AES-128 in counter mode (AES-NI / VAES
//! through aws-lc), keyed by a 16-byte seed shared by two parties. Two parties holding the same
//! seed and drawing the same lengths in the same order get the same words.

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
use aws_lc_rs::iv::FixedLength;
use kagi_keymat::Key;
use zerocopy::IntoBytes;

use crate::error::{MpcError, Result};

/// Bytes in a seed.
pub const SEED_LEN: usize = 16;

/// One AES-CTR keystream.
pub struct Prg {
    key: EncryptingKey,
    /// Next counter block.
    block: u128,
}

impl std::fmt::Debug for Prg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prg(<redacted>)")
    }
}

impl Prg {
    /// A stream keyed by `seed` (exactly [`SEED_LEN`] bytes).
    pub fn new(seed: &Key) -> Result<Self> {
        if seed.len() != SEED_LEN {
            return Err(MpcError::ApiMisuse(format!(
                "a PRG seed is {SEED_LEN} bytes, got {}",
                seed.len()
            )));
        }
        let unbound = UnboundCipherKey::new(&AES_128, seed.expose())
            .map_err(|_| MpcError::ApiMisuse("AES key".into()))?;
        let key = EncryptingKey::ctr(unbound).map_err(|_| MpcError::ApiMisuse("AES-CTR".into()))?;
        Ok(Self { key, block: 0 })
    }

    /// XORs the next `out.len()` words of the stream into `out`.
    pub fn xor_into(&mut self, out: &mut [u64]) {
        if out.is_empty() {
            return;
        }
        let iv = FixedLength::from(self.block.to_be_bytes());
        // A CTR encryption cannot fail for a valid key and IV; an error here would be a bug in
        // the provider, and silently continuing would break correlation, so the words are
        // poisoned instead (the peers' checks then fail loudly).
        if self
            .key
            .less_safe_encrypt(out.as_mut_bytes(), EncryptionContext::Iv128(iv))
            .is_err()
        {
            out.fill(0x5a5a_5a5a_5a5a_5a5a);
        }
        // Every call starts on a fresh block: a partial block's tail is skipped.
        self.block = self
            .block
            .wrapping_add((out.len() as u128 * 8).div_ceil(16));
    }

    /// The next `n` words of the stream.
    pub fn words(&mut self, n: usize) -> Vec<u64> {
        let mut v = vec![0u64; n];
        self.xor_into(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let s = Key::from_slice(&[7; 16]);
        let mut a = Prg::new(&s).unwrap();
        let mut b = Prg::new(&s).unwrap();
        let mut c = Prg::new(&Key::from_slice(&[8; 16])).unwrap();
        let (x, y, z) = (a.words(33), b.words(33), c.words(33));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(a.words(4), x[..4].to_vec(), "the stream moves on");
        assert!(Prg::new(&Key::from_slice(&[1; 15])).is_err());
    }
}
