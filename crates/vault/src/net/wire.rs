//! Body encodings between owner and site: a list of sealed envelopes is
//! `u32 count ‖ (u64 length ‖ bytes)*` (little-endian); the repair hand-over is
//! `u32 manifest length ‖ manifest JSON ‖ envelope list`.

use crate::envelope::Envelope;
use crate::error::{Result, VaultError};
use crate::site::Manifest;

fn bad(what: &str) -> VaultError {
    VaultError::Malformed(format!("truncated or malformed {what}"))
}

/// Encodes envelopes.
pub fn encode_envelopes(envs: &[Envelope]) -> Vec<u8> {
    let total: usize = envs.iter().map(|e| 8 + e.0.len()).sum();
    let mut out = Vec::with_capacity(4 + total);
    out.extend_from_slice(&(envs.len() as u32).to_le_bytes());
    for e in envs {
        out.extend_from_slice(&(e.0.len() as u64).to_le_bytes());
        out.extend_from_slice(&e.0);
    }
    out
}

/// Decodes what [`encode_envelopes`] wrote; anything left over or missing is an error.
pub fn decode_envelopes(mut b: &[u8]) -> Result<Vec<Envelope>> {
    let count = take_u32(&mut b).ok_or_else(|| bad("envelope list"))? as usize;
    let mut out = Vec::with_capacity(count.min(256));
    for _ in 0..count {
        let len = take_u64(&mut b).ok_or_else(|| bad("envelope list"))?;
        let len = usize::try_from(len).map_err(|_| bad("envelope list"))?;
        if b.len() < len {
            return Err(bad("envelope list"));
        }
        out.push(Envelope(b[..len].to_vec()));
        b = &b[len..];
    }
    if !b.is_empty() {
        return Err(bad("envelope list"));
    }
    Ok(out)
}

/// Encodes the repair hand-over to the rebuilt site.
pub fn encode_repair(manifest: &Manifest, sums: &[Envelope]) -> Result<Vec<u8>> {
    let m = serde_json::to_vec(manifest).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(&encode_envelopes(sums));
    Ok(out)
}

/// Decodes what [`encode_repair`] wrote.
pub fn decode_repair(mut b: &[u8]) -> Result<(Manifest, Vec<Envelope>)> {
    let len = take_u32(&mut b).ok_or_else(|| bad("repair hand-over"))? as usize;
    if b.len() < len {
        return Err(bad("repair hand-over"));
    }
    let m: Manifest =
        serde_json::from_slice(&b[..len]).map_err(|e| VaultError::Malformed(e.to_string()))?;
    Ok((m, decode_envelopes(&b[len..])?))
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    let (h, t) = b.split_first_chunk::<4>()?;
    *b = t;
    Some(u32::from_le_bytes(*h))
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    let (h, t) = b.split_first_chunk::<8>()?;
    *b = t;
    Some(u64::from_le_bytes(*h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_lists_round_trip_and_truncation_is_refused() {
        let envs = vec![
            Envelope(vec![1, 2, 3]),
            Envelope(vec![]),
            Envelope(vec![9; 70]),
        ];
        let b = encode_envelopes(&envs);
        let back = decode_envelopes(&b).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].0, vec![9; 70]);
        for cut in 0..b.len() {
            assert!(decode_envelopes(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode_envelopes(&longer).is_err());
    }
}
