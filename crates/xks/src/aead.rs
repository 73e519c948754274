//! AES-256-GCM as the XKS spec asks: a fresh 96-bit IV per encryption, a 128-bit tag returned
//! apart from the ciphertext, and the GCM AAD bound to both the caller's AAD and the
//! `ciphertextMetadata` with explicit lengths:
//!
//! ```text
//! u16_be(len(aad)) || aad || u8(len(metadata)) || metadata
//! ```
//!
//! so that moving bytes between the two fields cannot make a ciphertext decrypt. The
//! ciphertext data-integrity value (CDIV) is `SHA-256(aad || metadata || iv || ct || tag)`
//! (spec Appendix C), computed before the proxy checks its own output by decrypting it.
//!
//! kagi returns one byte of metadata, its ciphertext format version ([`FORMAT_V1`]).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;
use kagi_keymat::Key;

use crate::wire::XksError;

/// kagi's ciphertext format version, returned as `ciphertextMetadata`.
pub const FORMAT_V1: u8 = 1;
/// Tag length (bytes).
pub const TAG_LEN: usize = 16;

/// One encryption's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Ciphertext (same length as the plaintext).
    pub ciphertext: Vec<u8>,
    /// 12-byte IV.
    pub iv: [u8; NONCE_LEN],
    /// 16-byte tag.
    pub tag: [u8; TAG_LEN],
    /// The metadata bound into the AAD.
    pub metadata: Vec<u8>,
}

/// The GCM AAD for the caller's AAD and the ciphertext metadata.
pub fn gcm_aad(aad: &[u8], metadata: &[u8]) -> Result<Vec<u8>, XksError> {
    let al = u16::try_from(aad.len())
        .map_err(|_| XksError::validation("AAD is longer than 65535 bytes"))?;
    let ml = u8::try_from(metadata.len())
        .map_err(|_| XksError::ciphertext("ciphertextMetadata too long"))?;
    let mut out = Vec::with_capacity(3 + aad.len() + metadata.len());
    out.extend_from_slice(&al.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(ml);
    out.extend_from_slice(metadata);
    Ok(out)
}

fn cipher(key: &Key) -> Result<LessSafeKey, XksError> {
    let k = UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|_| {
        XksError::new(
            crate::wire::ErrorName::Internal,
            "key material is not 256 bits",
        )
    })?;
    Ok(LessSafeKey::new(k))
}

/// Encrypts `plaintext` under `key` with a random IV.
pub fn encrypt(key: &Key, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, XksError> {
    let mut iv = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut iv)
        .map_err(|_| XksError::new(crate::wire::ErrorName::Internal, "no randomness for the IV"))?;
    encrypt_with_iv(key, plaintext, aad, iv)
}

/// [`encrypt`] with a given IV (tests and known-answer checks only: an IV must never repeat
/// under one key).
pub fn encrypt_with_iv(
    key: &Key,
    plaintext: &[u8],
    aad: &[u8],
    iv: [u8; NONCE_LEN],
) -> Result<Sealed, XksError> {
    let metadata = vec![FORMAT_V1];
    let full_aad = gcm_aad(aad, &metadata)?;
    let mut buf = plaintext.to_vec();
    let tag = cipher(key)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(&full_aad),
            &mut buf,
        )
        .map_err(|_| XksError::new(crate::wire::ErrorName::Internal, "encryption failed"))?;
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag.as_ref());
    Ok(Sealed {
        ciphertext: buf,
        iv,
        tag: t,
        metadata,
    })
}

/// Decrypts; any mismatch of key, IV, AAD, metadata, ciphertext or tag is
/// `InvalidCiphertextException`.
pub fn decrypt(
    key: &Key,
    ciphertext: &[u8],
    iv: &[u8],
    tag: &[u8],
    aad: &[u8],
    metadata: &[u8],
) -> Result<Key, XksError> {
    let bad = || {
        XksError::ciphertext("the ciphertext, IV, AAD, ciphertext metadata or authentication tag is invalid for this key")
    };
    // kagi only ever makes 12-byte IVs; a 16-byte IV is well-formed but cannot be one of ours.
    let iv: [u8; NONCE_LEN] = iv.try_into().map_err(|_| bad())?;
    if tag.len() != TAG_LEN {
        return Err(bad());
    }
    let full_aad = gcm_aad(aad, metadata).map_err(|_| bad())?;
    let mut buf = Key::zeroed(ciphertext.len() + TAG_LEN);
    buf.expose_mut()[..ciphertext.len()].copy_from_slice(ciphertext);
    buf.expose_mut()[ciphertext.len()..].copy_from_slice(tag);
    let n = cipher(key)?
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(&full_aad),
            buf.expose_mut(),
        )
        .map_err(|_| bad())?
        .len();
    Ok(buf.take_front(n))
}

/// The ciphertext data-integrity value (SHA-256 over the decoded fields, in the spec's order).
pub fn cdiv(aad: &[u8], sealed: &Sealed) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(aad);
    ctx.update(&sealed.metadata);
    ctx.update(&sealed.iv);
    ctx.update(&sealed.ciphertext);
    ctx.update(&sealed.tag);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn spec_appendix_c_cdiv_example() {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let sealed = Sealed {
            ciphertext: b("ghxkK1txeDNn3q8Y"),
            iv: b("HMrlRw85cAJUd5Ax").try_into().unwrap(),
            tag: b("vBxN2ncH1oEkR8WVXpmyYQ==").try_into().unwrap(),
            metadata: b("a2V5X3ZlcnNpb249MQ=="),
        };
        let v = cdiv(&b("cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n"), &sealed);
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(v),
            "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
        );
    }

    #[test]
    fn every_field_is_bound() {
        let key = Key::from_slice(&[7u8; 32]);
        let s = encrypt(&key, b"data key bytes", b"ctx").unwrap();
        assert_eq!(s.ciphertext.len(), 14);
        let ok = decrypt(&key, &s.ciphertext, &s.iv, &s.tag, b"ctx", &s.metadata).unwrap();
        assert_eq!(ok.expose(), b"data key bytes");
        let other = Key::from_slice(&[8u8; 32]);
        assert!(decrypt(&other, &s.ciphertext, &s.iv, &s.tag, b"ctx", &s.metadata).is_err());
        let mut ct = s.ciphertext.clone();
        ct[0] ^= 1;
        assert!(decrypt(&key, &ct, &s.iv, &s.tag, b"ctx", &s.metadata).is_err());
        let mut iv = s.iv;
        iv[0] ^= 1;
        assert!(decrypt(&key, &s.ciphertext, &iv, &s.tag, b"ctx", &s.metadata).is_err());
        let mut tag = s.tag;
        tag[15] ^= 1;
        assert!(decrypt(&key, &s.ciphertext, &s.iv, &tag, b"ctx", &s.metadata).is_err());
        assert!(decrypt(&key, &s.ciphertext, &s.iv, &s.tag, b"ctx2", &s.metadata).is_err());
        assert!(decrypt(&key, &s.ciphertext, &s.iv, &s.tag, b"", &s.metadata).is_err());
        // Moving the metadata into the AAD (the spec's example of why lengths are bound).
        let moved: Vec<u8> = [b"ctx".as_slice(), &s.metadata].concat();
        assert!(decrypt(&key, &s.ciphertext, &s.iv, &s.tag, &moved, b"").is_err());
        assert!(decrypt(&key, &s.ciphertext, &[0u8; 16], &s.tag, b"ctx", &s.metadata).is_err());
        assert!(decrypt(
            &key,
            &s.ciphertext,
            &s.iv,
            &s.tag[..12],
            b"ctx",
            &s.metadata
        )
        .is_err());
        // Two encryptions never share an IV.
        assert_ne!(
            encrypt(&key, b"x", b"").unwrap().iv,
            encrypt(&key, b"x", b"").unwrap().iv
        );
    }
}
