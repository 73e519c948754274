//! The link one-time-pad ledger: every byte of link key that an honest node sends a relay hop
//! with is recorded under the node whose half of the block it lies in, and spending one twice
//! (by either end of the link, whatever grants moved between them) is a violation.
//!
//! Bytes count as spent when the hop is sent, lost or not: its ciphertext may have been seen.
//! Links to hostile nodes are not checked: the hostile end holds the link key anyway.

use std::collections::BTreeMap;

use kagi_km::msgs::Span;

/// Spent byte ranges per (owner of the half, other end, block).
#[derive(Debug, Default)]
pub struct PadLedger {
    spent: BTreeMap<(String, String, u64), Vec<(u32, u32)>>,
    /// Bytes recorded so far.
    pub bytes: u64,
}

impl PadLedger {
    /// `from` sent a hop to `to` with `pad`: spans flagged granted lie in `to`'s half. Returns
    /// what was spent twice, if anything.
    pub fn spend(&mut self, from: &str, to: &str, pad: &[Span]) -> Result<(), String> {
        for s in pad {
            let (owner, other) = if s.is_granted() {
                (to, from)
            } else {
                (from, to)
            };
            let (start, end) = (s.start, s.start.saturating_add(s.len));
            let r = self
                .spent
                .entry((owner.to_string(), other.to_string(), s.block()))
                .or_default();
            if let Some((a, b)) = r.iter().find(|(a, b)| *a < end && start < *b) {
                return Err(format!(
                    "link pad spent twice: {from}→{to} spent {start}..{end} of {owner}'s half of block {} of link {owner}–{other}, already spent {a}..{b}",
                    s.block()
                ));
            }
            r.push((start, end));
            self.bytes += u64::from(s.len);
        }
        Ok(())
    }
}
