//! The bytes of the simulated QKD links' key blocks: ChaCha8 seeded per link and block, handed
//! to both ends either as bytes or as a lazy key ([`Key::lazy`]) that produces them only if a
//! node reads them. A day of 1 Mb/s links is terabytes of key, almost none of which is ever
//! read (blocks are split, stored and evicted unread), so `kagi sim` runs lazy; both ways give
//! the same bytes, which the `lazy_link_key` test checks event for event. ChaCha8, not ChaCha20:
//! this is simulated key, it only has to look random, and producing the pads that relay hops
//! read was a thirtieth of a simulated day.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kagi_keymat::{Key, LazyKeySource};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One link block's key stream (secret: it generates the block's key; simulator only).
pub(super) struct BlockSource {
    /// The block's ChaCha8 seed.
    seed: u64,
    /// Link key bytes produced so far by every block of the run (see
    /// [`Sim::link_key_produced`](crate::Sim::link_key_produced)).
    produced: Arc<AtomicU64>,
}

impl BlockSource {
    /// Block `block` of the link whose seed is `link_seed`, adding the bytes it produces to
    /// `produced`.
    pub(super) fn new(link_seed: u64, block: u64, produced: Arc<AtomicU64>) -> Self {
        Self {
            seed: link_seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            produced,
        }
    }

    /// The block's first `len` bytes, as bytes.
    pub(super) fn bytes(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(0, &mut v);
        v
    }

    /// The block's first `len` bytes as a key: lazy, or produced now.
    pub(super) fn key(self, len: usize, lazy: bool) -> Key {
        if lazy {
            Key::lazy(Arc::new(self), 0, len)
        } else {
            Key::from_vec(self.bytes(len))
        }
    }
}

impl LazyKeySource for BlockSource {
    fn fill(&self, offset: u64, out: &mut [u8]) {
        self.produced.fetch_add(out.len() as u64, Ordering::Relaxed);
        let mut r = ChaCha8Rng::seed_from_u64(self.seed);
        // The stream is read in 32-bit words: start at the word holding `offset` and skip the
        // bytes before it.
        let skip = (offset % 4) as usize;
        r.set_word_pos(u128::from(offset / 4));
        if skip == 0 {
            r.fill_bytes(out);
            return;
        }
        let mut head = [0u8; 4];
        r.fill_bytes(&mut head);
        let n = (4 - skip).min(out.len());
        out[..n].copy_from_slice(&head[skip..skip + n]);
        r.fill_bytes(&mut out[n..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any range of a block, at any offset, is the same slice of the whole block as one
    /// ChaCha8 stream from its seed (what the materialised path delivered before lazy keys).
    #[test]
    fn any_range_is_that_slice_of_the_block() {
        let produced = Arc::new(AtomicU64::new(0));
        let src = BlockSource::new(0x1234_5678, 9, produced.clone());
        let mut whole = vec![0u8; 300];
        ChaCha8Rng::seed_from_u64(src.seed).fill_bytes(&mut whole);
        assert_eq!(src.bytes(300), whole);
        for start in [0usize, 1, 2, 3, 4, 5, 63, 64, 65, 127, 130] {
            for len in [0usize, 1, 2, 3, 5, 64, 100] {
                let mut out = vec![0u8; len];
                src.fill(start as u64, &mut out);
                assert_eq!(out, whole[start..start + len], "{start}+{len}");
            }
        }
        let counted = produced.load(Ordering::Relaxed);
        let lazy = src.key(300, true);
        let part = lazy.copy_range(7..250);
        assert_eq!(
            produced.load(Ordering::Relaxed),
            counted,
            "nothing read yet"
        );
        assert_eq!(part.expose(), &whole[7..250]);
        assert_eq!(produced.load(Ordering::Relaxed), counted + 243);
        assert_ne!(
            BlockSource::new(0x1234_5678, 10, produced).bytes(300),
            whole
        );
    }
}
