//! One-time-pad transfers with a Wegman–Carter tag: every byte that leaves a party (a share on
//! its way to a site, a share on its way back, refresh and repair pieces between sites) travels
//! as an [`Envelope`]. The sender draws `32 + len` bytes of fresh QKD key shared with the
//! receiver (`enc_keys`): 32 bytes key the one-time MAC, `len` bytes are the pad. The receiver
//! fetches the same bytes by ID (`dec_keys`), checks the tag over header and ciphertext, and only
//! then decrypts. Security is information-theoretic: no computational assumption, and every key
//! byte is used once.

use kagi_keymat::its_mac::{Mac, MacKey, Tag, MAC_KEY_LEN, TAG_LEN};
use kagi_keymat::Key;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, VaultError};
use crate::keys::KeySupply;

const MAGIC: &[u8; 4] = b"KGV1";

/// The authenticated (not encrypted) part of a transfer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// What the payload is (`"put-share"`, `"get-share"`, `"refresh"`, `"repair-piece"`, …).
    pub kind: String,
    /// Object ID.
    pub object: String,
    /// Sender SAE.
    pub from: String,
    /// Receiver SAE.
    pub to: String,
    /// IDs of the keys that pad and authenticate this transfer.
    pub key_ids: Vec<Uuid>,
    /// Payload length in bytes.
    pub len: u64,
    /// Kind-specific public metadata.
    #[serde(default)]
    pub info: serde_json::Value,
}

/// A sealed transfer in wire form.
#[derive(Clone, Debug)]
pub struct Envelope(pub Vec<u8>);

/// Seals `plaintext` for `to`, spending `32 + len` bytes of key shared with it.
pub fn seal(
    keys: &mut impl KeySupply,
    to: &str,
    kind: &str,
    object: &str,
    info: serde_json::Value,
    plaintext: &[u8],
) -> Result<Envelope> {
    let mut batch = keys.enc_keys(to, MAC_KEY_LEN + plaintext.len())?;
    if batch.key.len() < MAC_KEY_LEN + plaintext.len() {
        return Err(VaultError::Keys(
            "key supply returned too little key".into(),
        ));
    }
    let mac_key = batch.key.take_front(MAC_KEY_LEN);
    let header = Header {
        kind: kind.to_string(),
        object: object.to_string(),
        from: keys.sae().to_string(),
        to: to.to_string(),
        key_ids: batch.ids,
        len: plaintext.len() as u64,
        info,
    };
    let hbytes = serde_json::to_vec(&header).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(8 + hbytes.len() + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(hbytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&hbytes);
    let body_at = out.len();
    out.extend_from_slice(plaintext);
    for (c, p) in out[body_at..].iter_mut().zip(batch.key.expose()) {
        *c ^= p;
    }
    let mut mac =
        Mac::new(MacKey::from_key(&mac_key).map_err(|e| VaultError::Keys(e.to_string()))?);
    mac.update(&out[8..]);
    let tag = mac.finalize();
    out.extend_from_slice(&tag.0);
    Ok(Envelope(out))
}

/// Reads the header of a sealed transfer without opening it.
pub fn peek(wire: &[u8]) -> Result<Header> {
    parse(wire).map(|(h, _, _, _)| h)
}

fn parse(wire: &[u8]) -> Result<(Header, usize, usize, Tag)> {
    let bad = |m: &str| VaultError::Malformed(m.to_string());
    if wire.len() < 8 + TAG_LEN || &wire[..4] != MAGIC {
        return Err(bad("not a kagi vault transfer"));
    }
    let hlen = u32::from_le_bytes([wire[4], wire[5], wire[6], wire[7]]) as usize;
    let body_at = 8usize
        .checked_add(hlen)
        .ok_or_else(|| bad("header length"))?;
    if body_at > wire.len() - TAG_LEN {
        return Err(bad("truncated header"));
    }
    let header: Header =
        serde_json::from_slice(&wire[8..body_at]).map_err(|e| bad(&format!("header: {e}")))?;
    let body_len = wire.len() - TAG_LEN - body_at;
    if header.len != body_len as u64 {
        return Err(bad("payload length does not match header"));
    }
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&wire[wire.len() - TAG_LEN..]);
    Ok((header, body_at, body_len, Tag(t)))
}

/// Opens a transfer addressed to this party: fetches its keys, checks the tag, decrypts.
pub fn open(keys: &mut impl KeySupply, wire: &[u8]) -> Result<(Header, Key)> {
    let (header, body_at, body_len, tag) = parse(wire)?;
    if header.to != keys.sae() {
        return Err(VaultError::Malformed(format!(
            "transfer for {} delivered to {}",
            header.to,
            keys.sae()
        )));
    }
    let mut key = keys.dec_keys(&header.from, &header.key_ids)?;
    if key.len() < MAC_KEY_LEN + body_len {
        return Err(VaultError::BadTransfer { from: header.from });
    }
    let mac_key = key.take_front(MAC_KEY_LEN);
    let mut mac =
        Mac::new(MacKey::from_key(&mac_key).map_err(|e| VaultError::Keys(e.to_string()))?);
    mac.update(&wire[8..body_at + body_len]);
    if !mac.finalize().ct_eq(&tag) {
        return Err(VaultError::BadTransfer { from: header.from });
    }
    let mut plain = Key::from_slice(&wire[body_at..body_at + body_len]);
    for (p, k) in plain.expose_mut().iter_mut().zip(key.expose()) {
        *p ^= k;
    }
    Ok((header, plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MemoryKms;

    #[test]
    fn round_trip_tamper_and_misdelivery() {
        let kms = MemoryKms::new(128, None);
        let mut a = kms.party("alice");
        let mut b = kms.party("bob");
        let mut c = kms.party("carol");
        let msg = b"share bytes of site 2".to_vec();
        let env = seal(
            &mut a,
            "bob",
            "put-share",
            "obj",
            serde_json::json!({"i": 2}),
            &msg,
        )
        .unwrap();
        // The ciphertext does not contain the plaintext.
        assert!(!env.0.windows(msg.len()).any(|w| w == msg));
        assert!(
            open(&mut c, &env.0).is_err(),
            "carol cannot open bob's transfer"
        );
        let mut tampered = env.0.clone();
        let n = tampered.len();
        tampered[n - 20] ^= 1;
        assert!(matches!(
            open(&mut b, &tampered),
            Err(VaultError::BadTransfer { .. })
        ));
        // The keys were spent by the failed attempt: a replay of the good envelope fails too
        // (ETSI 014 serves a key once).
        assert!(open(&mut b, &env.0).is_err());

        let env = seal(
            &mut a,
            "bob",
            "put-share",
            "obj",
            serde_json::Value::Null,
            &msg,
        )
        .unwrap();
        let (h, plain) = open(&mut b, &env.0).unwrap();
        assert_eq!(plain.expose(), &msg[..]);
        assert_eq!(h.from, "alice");
        assert_eq!(a.key_bytes_used(), 2 * 128); // 32 + 21 bytes rounded up to one 128-byte key, twice
        assert!(open(&mut b, &env.0[..10]).is_err());
    }

    #[test]
    fn key_shortage_is_an_error_not_a_downgrade() {
        let kms = MemoryKms::new(32, Some(64));
        let mut a = kms.party("alice");
        let e = seal(
            &mut a,
            "bob",
            "x",
            "o",
            serde_json::Value::Null,
            &[0u8; 100],
        )
        .unwrap_err();
        assert!(matches!(
            e,
            VaultError::KeyShortage {
                needed: 160,
                available: 64
            }
        ));
    }
}
