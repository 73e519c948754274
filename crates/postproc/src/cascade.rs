//! Cascade error reconciliation (Brassard–Salvail 1993) with the block-size schedule and
//! parity reuse recommended by Martinez-Mateo, Pacher, Peev, Ciurana, Martin, "Demystifying the
//! information reconciliation protocol Cascade" (QIC 15, 2015): first block size from the
//! estimated QBER, then a doubled block, then passes with two blocks of n/2; sub-block parities
//! already learned are never asked twice.
//!
//! Sans-I/O and batched: [`CascadeAlice`] answers parity queries on her key; [`CascadeBob`]
//! drives the binary searches of all odd blocks of a round at once, so one message pair serves
//! every search in progress. Both derive the per-pass permutations from a public seed.
//!
//! Rounds: a correction in one pass makes a block of another pass odd, so corrections form
//! chains (trails in the graph whose vertices are the blocks of the first two passes and
//! whose edges are the errors), walked one binary search after another; at 10^6 bits and QBER
//! 3 % the longest chains take ~150 rounds of one search level each. Two of Bob's choices
//! shorten them at a small cost in disclosed bits (Alice answers any range and counts what she
//! answered): when few searches are open he asks several levels of each at once
//! ([`CascadeParams::round_bits`]), and the two-block passes start while the second pass's
//! tail still runs ([`CascadeParams::late_overlap`]), so their searches start new chains
//! mid-trail.
//! Reconciliation alone never guarantees equality: the protocol verifies with a universal hash
//! afterwards and aborts on mismatch.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A fast multiplicative hasher for small integer keys (not DoS-resistant; keys come from our
/// own search state, not from the peer).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // SplitMix64 finaliser: hashbrown uses both the low and the high bits.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

use crate::bits::BitVec;
use crate::simd_unsafe::{gather_bits, Rounds};

/// Tunable Cascade parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeParams {
    /// First-pass block size is `alpha / qber` rounded (at least 4, at most n/2).
    pub alpha: f64,
    /// Total number of passes (the first two with small blocks, the rest with two blocks).
    pub passes: usize,
    /// Extra parity bits Bob may ask per round to settle several levels of his binary searches
    /// in one round (Bob's choice only: Alice answers any range). With `s` searches open, each
    /// asks the whole subtree of the deepest `b` levels that fits: `s·(2^b − 1 − b) ≤ round_bits`
    /// (and all such extra parities stay under 1/32 of the bits disclosed so far).
    /// 0 is the plain one-level-per-round search. The default, 64, is a quarter of the
    /// authentication key a round costs (two 128-bit tags).
    pub round_bits: usize,
    /// Bob starts the two-block passes (the third on) once the second pass's open searches
    /// number at most this many (and at most 1/128 of those of its first round, so that small
    /// blocks, whose tails are relatively longer, are not charged the two-block searches early),
    /// instead of after the last one: their searches then run alongside the long tail of the
    /// second pass's cascades. 0 runs them strictly after.
    pub late_overlap: usize,
}

impl Default for CascadeParams {
    fn default() -> Self {
        Self {
            alpha: 1.4,
            passes: 12,
            round_bits: 64,
            late_overlap: 32,
        }
    }
}

/// Block sizes per pass for `n` bits at estimated error rate `qber`.
pub fn block_sizes(n: usize, qber: f64, params: &CascadeParams) -> Vec<usize> {
    let n = n.max(2);
    let q = qber.clamp(1e-4, 0.25);
    let k1 = (params.alpha / q).round().clamp(4.0, (n / 2).max(4) as f64) as usize;
    let mut ks = vec![k1.min(n), (2 * k1).min(n)];
    while ks.len() < params.passes.max(2) {
        ks.push(n.div_ceil(2).max(1));
    }
    ks.truncate(params.passes.max(1));
    ks
}

/// A keyed bijection on `0..n`: a few rounds of odd multiplication, xorshift and addition
/// modulo 2^m (each invertible), with cycle walking into `0..n`. Cheap to evaluate in both
/// directions, so no inverse table is needed.
#[derive(Debug, Clone)]
struct Bijection {
    n: u64,
    m: u32,
    mask: u64,
    mul: [u64; 3],
    inv_mul: [u64; 3],
    add: [u64; 3],
}

impl Bijection {
    fn new(n: usize, seed: u64) -> Self {
        let n = n.max(1) as u64;
        let m = (64 - (n - 1).leading_zeros()).max(2);
        let mask = if m == 64 { !0 } else { (1u64 << m) - 1 };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut mul = [0; 3];
        let mut inv_mul = [0; 3];
        let mut add = [0; 3];
        for r in 0..3 {
            let c = rng.next_u64() | 1;
            // Inverse of an odd number modulo 2^64 by Newton iteration (exact in 6 steps).
            let mut x = c;
            for _ in 0..6 {
                x = x.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(x)));
            }
            mul[r] = c & mask;
            inv_mul[r] = x & mask;
            add[r] = rng.next_u64() & mask;
        }
        Self {
            n,
            m,
            mask,
            mul,
            inv_mul,
            add,
        }
    }

    #[inline]
    fn round_trip(&self, mut x: u64) -> u64 {
        let s = self.m.div_ceil(2);
        for r in 0..3 {
            x = x.wrapping_mul(self.mul[r]) & self.mask;
            x ^= x >> s;
            x = x.wrapping_add(self.add[r]) & self.mask;
        }
        x
    }

    #[inline]
    fn round_back(&self, mut x: u64) -> u64 {
        let s = self.m.div_ceil(2);
        for r in (0..3).rev() {
            x = x.wrapping_sub(self.add[r]) & self.mask;
            x ^= x >> s; // s ≥ m/2: xorshift by s is its own inverse on m bits
            x = x.wrapping_mul(self.inv_mul[r]) & self.mask;
        }
        x
    }

    #[inline]
    fn forward(&self, x: usize) -> usize {
        let mut y = self.round_trip(x as u64);
        while y >= self.n {
            y = self.round_trip(y);
        }
        y as usize
    }

    /// The bits of `src` in this permutation's order: bit `pos` of the result is bit
    /// `forward(pos)` of `src`. The rounds of 64 positions at a time run in 32-bit lanes
    /// (identical values: only the low `m ≤ 31` bits matter), then one gather per bit.
    fn permute(&self, src: &[u64]) -> Vec<u64> {
        let n = self.n as usize;
        let mut out = vec![0u64; n.div_ceil(64)];
        let bit = |v: usize| (src[v / 64] >> (v % 64)) & 1;
        if self.m > 31 {
            for (w, o) in out.iter_mut().enumerate() {
                let len = (n - 64 * w).min(64);
                *o = (0..len).fold(0, |acc, i| acc | bit(self.forward(64 * w + i)) << i);
            }
            return out;
        }
        let rounds = Rounds {
            mask: self.mask as u32,
            shift: self.m.div_ceil(2),
            mul: self.mul.map(|c| c as u32),
            add: self.add.map(|c| c as u32),
        };
        let n32 = self.n as u32;
        let round = |x: u32| rounds.apply(x);
        let mut y = [0u32; 64];
        for (w, o) in out.iter_mut().enumerate() {
            let base = (64 * w) as u32;
            rounds.block(base, &mut y);
            // Cycle walking for the few values past n (about one in ten at most), found
            // with a branch-free scan.
            // Only lanes of real positions (< n): a lane past n may sit on a cycle that never
            // comes back below n.
            let len = (n - 64 * w).min(64);
            let mut past = y[..len]
                .iter()
                .enumerate()
                .fold(0u64, |m, (i, &v)| m | ((v >= n32) as u64) << i);
            while past != 0 {
                let i = past.trailing_zeros() as usize;
                past &= past - 1;
                let mut v = round(y[i]);
                while v >= n32 {
                    v = round(v);
                }
                y[i] = v;
            }
            *o = gather_bits(src, &y, len);
        }
        out
    }

    #[inline]
    fn backward(&self, y: usize) -> usize {
        let mut x = self.round_back(y as u64);
        while x >= self.n {
            x = self.round_back(x);
        }
        x as usize
    }
}

/// The public structure shared by both sides: block sizes and per-pass permutations.
///
/// Holds no tables: each pass's permutation is a [`Bijection`] evaluated on the fly (a few
/// multiply/xorshift rounds per position), which is cheaper than reading tens of MB of
/// position tables and makes a layout free to build.
#[derive(Debug)]
pub struct Layout {
    n: usize,
    ks: Vec<usize>,
    /// The bijection of each pass (`None` for pass 0: the identity). Position `pos` of pass
    /// `p` holds original bit `bij[p].forward(pos)`.
    bij: Vec<Option<Bijection>>,
}

impl Layout {
    /// The layout for `n` bits, block sizes `ks` and permutation `seed`.
    pub fn get(n: usize, ks: &[usize], seed: u64) -> Arc<Layout> {
        let bij = (0..ks.len())
            .map(|p| {
                (p > 0).then(|| {
                    Bijection::new(n, seed ^ (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                })
            })
            .collect();
        Arc::new(Self {
            n,
            ks: ks.to_vec(),
            bij,
        })
    }

    /// Number of passes.
    pub fn passes(&self) -> usize {
        self.ks.len()
    }

    /// Number of top-level blocks in pass `p`.
    pub fn blocks(&self, p: usize) -> usize {
        self.n.div_ceil(self.ks[p])
    }

    fn block_range(&self, p: usize, b: usize) -> (usize, usize) {
        (b * self.ks[p], ((b + 1) * self.ks[p]).min(self.n))
    }

    /// The key in the order of every pass (pass 0 is the key itself), passes spread over the
    /// available cores.
    fn permuted_all(&self, key: &BitVec) -> Vec<BitVec> {
        par_map(&self.bij, |b| match b {
            None => key.clone(),
            Some(b) => BitVec::from_words(b.permute(key.words()), self.n),
        })
    }

    /// Top-level block parities of pass `p` for a key in that pass's order.
    fn top(&self, p: usize, key: &BitVec) -> BitVec {
        let nb = self.blocks(p);
        let mut words = vec![0u64; nb.div_ceil(64)];
        for b in 0..nb {
            let (lo, hi) = self.block_range(p, b);
            words[b / 64] |= (key.parity_range(lo, hi) as u64) << (b % 64);
        }
        BitVec::from_words(words, nb)
    }

    fn pos(&self, p: usize, orig: usize) -> usize {
        match &self.bij[p] {
            None => orig,
            Some(b) => b.backward(orig),
        }
    }

    fn orig(&self, p: usize, pos: usize) -> usize {
        match &self.bij[p] {
            None => pos,
            Some(b) => b.forward(pos),
        }
    }
}

/// Maps `f` over `items` using up to the available cores (order preserved).
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    })
}

/// A parity question: Alice's parity of positions `lo..hi` of pass `pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Query {
    /// Pass number.
    pub pass: u8,
    /// First position (in the pass's permuted order).
    pub lo: u32,
    /// One past the last position.
    pub hi: u32,
}

/// Malformed Cascade input from the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CascadeError {
    /// A query names a pass or range outside the layout.
    #[error("parity query out of range")]
    BadQuery,
    /// The number of answers or top-level parities does not match.
    #[error("expected {expected} parities, got {got}")]
    Count {
        /// Expected.
        expected: usize,
        /// Received.
        got: usize,
    },
}

/// Alice's side: holds her key in each pass's order and answers parity queries.
#[derive(Debug)]
pub struct CascadeAlice {
    layout: Arc<Layout>,
    keys: Vec<BitVec>,
}

impl CascadeAlice {
    /// Prepares Alice's permuted keys.
    pub fn new(key: &BitVec, layout: Arc<Layout>) -> Self {
        let keys = layout.permuted_all(key);
        Self { layout, keys }
    }

    /// Top-level block parities of every pass, concatenated pass by pass.
    pub fn top_parities(&self) -> BitVec {
        let mut words = Vec::new();
        let mut len = 0;
        for (p, key) in self.keys.iter().enumerate() {
            let t = self.layout.top(p, key);
            append_bits(&mut words, len, t.words(), t.len());
            len += t.len();
        }
        BitVec::from_words(words, len)
    }

    /// Parities of the queried ranges.
    ///
    /// # Errors
    /// [`CascadeError::BadQuery`] for a pass or range outside the layout.
    pub fn answer(&self, queries: &[Query]) -> Result<BitVec, CascadeError> {
        let mut words = vec![0u64; queries.len().div_ceil(64)];
        for (i, q) in queries.iter().enumerate() {
            let p = q.pass as usize;
            if p >= self.keys.len() || q.lo >= q.hi || q.hi as usize > self.layout.n {
                return Err(CascadeError::BadQuery);
            }
            let v = self.keys[p].parity_range(q.lo as usize, q.hi as usize);
            words[i / 64] |= (v as u64) << (i % 64);
        }
        Ok(BitVec::from_words(words, queries.len()))
    }
}

/// Appends the first `n` bits of `src` to a packed array holding `len` bits.
fn append_bits(dst: &mut Vec<u64>, len: usize, src: &[u64], n: usize) {
    dst.resize((len + n).div_ceil(64), 0);
    let sh = len % 64;
    for (i, &w) in src.iter().enumerate().take(n.div_ceil(64)) {
        let at = len / 64 + i;
        dst[at] |= w << sh;
        if sh != 0 && at + 1 < dst.len() {
            dst[at + 1] |= w >> (64 - sh);
        }
    }
}

/// An open binary search (one per top-level block at most).
#[derive(Debug, Clone, Copy, Default)]
struct Search {
    lo: u32,
    hi: u32,
    /// Heap index of `lo..hi` in the block's binary-search tree (the block is node 1; the
    /// halves of node v are 2v and 2v + 1).
    node: u32,
    pass: u8,
    /// Alice's parity of `lo..hi`.
    alice: bool,
    /// The search is in progress.
    active: bool,
    /// The block is in `CascadeBob::listed`.
    listed: bool,
}

/// Alice's parities learned so far, by pass, block and tree node: a dense bit array per block
/// for small blocks (one cache line or two per block), a hash map for the few big ones.
#[derive(Debug)]
struct Known {
    /// Per pass: words per block for the "known" bits (as many again for the values);
    /// 0 when the pass's blocks use `sparse`.
    stride: Vec<usize>,
    /// Per pass: index in `dense` of its first block.
    base: Vec<usize>,
    dense: Vec<u64>,
    sparse: FastMap<u64, bool>,
}

/// Largest tree (heap indices) stored densely.
const DENSE_NODES: usize = 4096;

impl Known {
    fn new(layout: &Layout) -> Self {
        let mut stride = Vec::with_capacity(layout.passes());
        let mut base = Vec::with_capacity(layout.passes());
        let mut total = 0;
        for p in 0..layout.passes() {
            // Node indices of a block of k bits are below 2^(⌈log2 k⌉ + 1).
            let nodes = 2 * layout.ks[p].max(1).next_power_of_two();
            let s = if nodes <= DENSE_NODES {
                nodes.div_ceil(64)
            } else {
                0
            };
            stride.push(s);
            base.push(total);
            total += 2 * s * layout.blocks(p);
        }
        Self {
            stride,
            base,
            dense: vec![0; total],
            sparse: FastMap::default(),
        }
    }

    /// Word of the "known" bit of `node` of block `b` of pass `p`, or `None` if sparse.
    #[inline]
    fn word(&self, p: usize, b: usize, node: u32) -> Option<usize> {
        let s = self.stride[p];
        (s != 0).then(|| self.base[p] + 2 * s * b + node as usize / 64)
    }

    #[inline]
    fn get(&self, p: usize, b: usize, g: usize, node: u32) -> Option<bool> {
        match self.word(p, b, node) {
            Some(w) => {
                let bit = 1u64 << (node % 64);
                (self.dense[w] & bit != 0).then(|| self.dense[w + self.stride[p]] & bit != 0)
            }
            None => self.sparse.get(&((g as u64) << 32 | node as u64)).copied(),
        }
    }

    #[inline]
    fn set(&mut self, p: usize, b: usize, g: usize, node: u32, v: bool) {
        match self.word(p, b, node) {
            Some(w) => {
                let bit = 1u64 << (node % 64);
                self.dense[w] |= bit;
                if v {
                    self.dense[w + self.stride[p]] |= bit;
                }
            }
            None => {
                self.sparse.insert((g as u64) << 32 | node as u64, v);
            }
        }
    }
}

/// Statistics of one reconciliation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CascadeStats {
    /// Parity bits disclosed (top-level and binary-search answers).
    pub leaked_bits: usize,
    /// Bits Bob flipped.
    pub corrected: usize,
    /// Query/answer rounds (message pairs) after the top-level parities.
    pub rounds: usize,
}

/// Bob's side: corrects his key by binary searches on blocks whose parity differs from Alice's.
///
/// Blocks are numbered globally (pass 0's first, then pass 1's, …); per block there is at most
/// one search, kept in a flat array, and Bob's top-level parities are updated on every flip.
#[derive(Debug)]
pub struct CascadeBob {
    layout: Arc<Layout>,
    key: BitVec,
    keys: Vec<BitVec>,
    alice_top: Vec<BitVec>,
    bob_top: Vec<BitVec>,
    /// Global index of the first block of each pass, then the total.
    goff: Vec<usize>,
    known: Known,
    search: Vec<Search>,
    /// Blocks with a search (possibly finished: pruned when the next queries are collected).
    listed: Vec<u32>,
    pending: Vec<u32>,
    dirty: Vec<u32>,
    spare: Vec<u32>,
    pass: usize,
    /// Searches that asked in the last round.
    asked: Vec<u32>,
    /// Block and tree node (a left child) of each query of the last round.
    asked_nodes: Vec<(u32, u32)>,
    /// See [`CascadeParams::round_bits`].
    round_bits: usize,
    /// See [`CascadeParams::late_overlap`].
    late_overlap: usize,
    /// Parities asked beyond one per search and round so far.
    extra_bits: usize,
    /// Searches open in the first round of the second pass (0 before it).
    pass1_start: usize,
    stats: CascadeStats,
}

impl CascadeBob {
    /// Starts Bob's side with Alice's top-level parities (as from [`CascadeAlice::top_parities`]).
    ///
    /// # Errors
    /// [`CascadeError::Count`] if the number of parities does not match the layout.
    pub fn new(
        key: BitVec,
        layout: Arc<Layout>,
        top: &BitVec,
        params: &CascadeParams,
    ) -> Result<Self, CascadeError> {
        let mut goff = vec![0];
        for p in 0..layout.passes() {
            goff.push(goff[p] + layout.blocks(p));
        }
        let expected = goff[layout.passes()];
        if top.len() != expected {
            return Err(CascadeError::Count {
                expected,
                got: top.len(),
            });
        }
        let keys = layout.permuted_all(&key);
        let bob_top = keys
            .iter()
            .enumerate()
            .map(|(p, k)| layout.top(p, k))
            .collect();
        let alice_top = (0..layout.passes())
            .map(|p| top.slice(goff[p], goff[p + 1] - goff[p]))
            .collect();
        let known = Known::new(&layout);
        let mut bob = Self {
            layout,
            key,
            keys,
            alice_top,
            bob_top,
            goff,
            known,
            search: vec![Search::default(); expected],
            listed: Vec::new(),
            pending: Vec::new(),
            dirty: Vec::new(),
            spare: Vec::new(),
            pass: 0,
            asked: Vec::new(),
            asked_nodes: Vec::new(),
            round_bits: params.round_bits,
            late_overlap: params.late_overlap,
            extra_bits: 0,
            pass1_start: 0,
            stats: CascadeStats {
                leaked_bits: expected,
                ..Default::default()
            },
        };
        bob.start_pass(0);
        Ok(bob)
    }

    fn start_pass(&mut self, p: usize) {
        self.dirty
            .extend(self.goff[p] as u32..self.goff[p + 1] as u32);
    }

    fn flip(&mut self, orig: usize) {
        self.key.flip(orig);
        self.stats.corrected += 1;
        for p in 0..self.layout.passes() {
            let pos = self.layout.pos(p, orig);
            self.keys[p].flip(pos);
            let b = pos / self.layout.ks[p];
            self.bob_top[p].flip(b);
            if p <= self.pass {
                self.dirty.push((self.goff[p] + b) as u32);
            }
        }
    }

    /// Advances the search of global block `g` as far as known parities allow; flips the
    /// error it finds, or puts the block back on the dirty list if its range became even.
    fn advance(&mut self, g: usize) {
        let mut s = self.search[g];
        if !s.active {
            return;
        }
        let p = s.pass as usize;
        let b = g - self.goff[p];
        let key = &self.keys[p];
        if key.parity_range(s.lo as usize, s.hi as usize) == s.alice {
            // A flip found elsewhere made this range even; re-examine the whole block.
            self.search[g].active = false;
            self.dirty.push(g as u32);
            return;
        }
        while s.hi - s.lo > 1 {
            let mid = s.lo + (s.hi - s.lo) / 2;
            let Some(a) = self.known.get(p, b, g, 2 * s.node) else {
                self.search[g] = s;
                return;
            };
            if a != key.parity_range(s.lo as usize, mid as usize) {
                s.hi = mid;
                s.alice = a;
                s.node *= 2;
            } else {
                s.lo = mid;
                s.alice ^= a;
                s.node = 2 * s.node + 1;
            }
        }
        s.active = false;
        self.search[g] = s;
        let orig = self.layout.orig(p, s.lo as usize);
        self.flip(orig);
    }

    /// The next batch of parity queries for Alice, or `None` when reconciliation is finished.
    pub fn next_queries(&mut self) -> Option<Vec<Query>> {
        loop {
            // Work list: searches to advance as far as known parities allow.
            while let Some(g) = self.pending.pop() {
                self.advance(g as usize);
                if self.pending.is_empty() {
                    self.process_dirty();
                }
            }
            self.process_dirty();
            if !self.pending.is_empty() {
                continue;
            }
            let search = &mut self.search;
            self.listed.retain(|&g| {
                let s = &mut search[g as usize];
                s.listed = s.active;
                s.active
            });
            // The two-block passes join the second pass's tail (`CascadeParams::late_overlap`).
            if self.pass == 1 && self.pass1_start == 0 {
                self.pass1_start = self.listed.len();
            }
            if self.pass == 1
                && self.layout.passes() > 2
                && self.listed.len() <= self.late_overlap.min(self.pass1_start / 128)
            {
                self.pass = self.layout.passes() - 1;
                for p in 2..=self.pass {
                    self.start_pass(p);
                }
                self.process_dirty();
                continue;
            }
            if !self.listed.is_empty() {
                // The extra parities of all rounds stay under 1/EXTRA_SHARE of the disclosure.
                let room = (self.stats.leaked_bits / EXTRA_SHARE).saturating_sub(self.extra_bits);
                let levels = levels_per_round(self.listed.len(), self.round_bits.min(room));
                let mut queries = Vec::with_capacity(self.listed.len());
                self.asked_nodes.clear();
                let listed = std::mem::take(&mut self.listed);
                for &g in &listed {
                    let s = self.search[g as usize];
                    self.subtree_queries(g as usize, &s, s.lo, s.hi, s.node, levels, &mut queries);
                }
                self.listed = listed;
                self.extra_bits += queries.len().saturating_sub(self.listed.len());
                self.asked.clone_from(&self.listed);
                self.stats.rounds += 1;

                return Some(queries);
            }
            if self.pass + 1 >= self.layout.passes() {
                return None;
            }
            // Passes 0 and 1 run one after the other; the two-block passes after them all run
            // at once (their searches proceed in the same rounds: far fewer message pairs).
            let next = self.pass + 1;
            self.pass = if next >= 2 {
                self.layout.passes() - 1
            } else {
                next
            };
            for p in next..=self.pass {
                self.start_pass(p);
            }
            self.process_dirty();
        }
    }

    /// Queries for the left children of the nodes of `node`'s subtree down to `levels` levels.
    ///
    /// None of them is known yet: a search stops at the first node whose left child is
    /// unknown, and every earlier query asked whole subtrees from a search's node down, so a
    /// known node below this one would make this node's left child known too.
    #[allow(clippy::too_many_arguments)]
    fn subtree_queries(
        &mut self,
        g: usize,
        s: &Search,
        lo: u32,
        hi: u32,
        node: u32,
        levels: u32,
        out: &mut Vec<Query>,
    ) {
        if levels == 0 || hi - lo <= 1 {
            return;
        }
        let mid = lo + (hi - lo) / 2;
        out.push(Query {
            pass: s.pass,
            lo,
            hi: mid,
        });
        self.asked_nodes.push((g as u32, 2 * node));
        self.subtree_queries(g, s, lo, mid, 2 * node, levels - 1, out);
        self.subtree_queries(g, s, mid, hi, 2 * node + 1, levels - 1, out);
    }

    /// Blocks touched by flips (or a new pass): re-check searches in them, open searches on
    /// blocks that became odd.
    fn process_dirty(&mut self) {
        let mut dirty = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.spare));
        for &g in &dirty {
            let g = g as usize;
            if self.search[g].active {
                self.pending.push(g as u32);
                continue;
            }
            let p = self.goff.partition_point(|&o| o <= g) - 1;
            let b = g - self.goff[p];
            let alice = self.alice_top[p].get(b);
            if self.bob_top[p].get(b) != alice {
                let (lo, hi) = self.layout.block_range(p, b);
                let s = &mut self.search[g];
                if !s.listed {
                    self.listed.push(g as u32);
                }
                *s = Search {
                    lo: lo as u32,
                    hi: hi as u32,
                    node: 1,
                    pass: p as u8,
                    alice,
                    active: true,
                    listed: true,
                };
                self.pending.push(g as u32);
            }
        }
        dirty.clear();
        self.spare = dirty;
    }

    /// Records Alice's answers to the last batch of queries.
    ///
    /// # Errors
    /// [`CascadeError::Count`] if the number of answers differs from the number of queries.
    pub fn answer(&mut self, answers: &BitVec) -> Result<(), CascadeError> {
        if answers.len() != self.asked_nodes.len() {
            return Err(CascadeError::Count {
                expected: self.asked_nodes.len(),
                got: answers.len(),
            });
        }
        for (i, &(g, node)) in self.asked_nodes.iter().enumerate() {
            let g = g as usize;
            let p = self.search[g].pass as usize;
            self.known.set(p, g - self.goff[p], g, node, answers.get(i));
        }
        self.stats.leaked_bits += self.asked_nodes.len();
        self.pending.append(&mut self.asked);
        Ok(())
    }

    /// Bob's corrected key and the statistics.
    pub fn finish(self) -> (BitVec, CascadeStats) {
        (self.key, self.stats)
    }
}

/// The parities Bob asks beyond one per search and round never exceed this fraction (1/n) of
/// all the bits disclosed so far, so that [`CascadeParams::round_bits`] costs at most ≈ 3 % of
/// efficiency even on small blocks, where a round's fixed budget would weigh more.
const EXTRA_SHARE: usize = 32;

/// Levels of the binary searches settled per round when `searches` are open and Bob may ask
/// `round_bits` extra parities: the largest `b` with `searches · (2^b − 1 − b) ≤ round_bits`.
fn levels_per_round(searches: usize, round_bits: usize) -> u32 {
    let mut b = 1u32;
    while b < 24 && searches.saturating_mul((1usize << (b + 1)) - 2 - b as usize) <= round_bits {
        b += 1;
    }
    b
}

/// Runs both sides in memory (for tests and benchmarks): returns Bob's corrected key.
pub fn reconcile_local(
    alice: &BitVec,
    bob: &BitVec,
    qber_est: f64,
    params: &CascadeParams,
    seed: u64,
) -> (BitVec, CascadeStats) {
    let ks = block_sizes(alice.len(), qber_est, params);
    let layout = Layout::get(alice.len(), &ks, seed);
    let a = CascadeAlice::new(alice, layout.clone());
    let mut b = CascadeBob::new(bob.clone(), layout, &a.top_parities(), params)
        .expect("parity count matches");
    while let Some(q) = b.next_queries() {
        let ans = a.answer(&q).expect("queries from Bob are in range");
        b.answer(&ans).expect("answer count matches");
    }
    b.finish()
}

/// Binary entropy h(x) in bits.
pub fn h2(x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        0.0
    } else {
        -x * x.log2() - (1.0 - x) * (1.0 - x).log2()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::Rng;

    fn noisy(n: usize, q: f64, seed: u64) -> (BitVec, BitVec) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = BitVec::random(n, &mut rng);
        let mut b = a.clone();
        for i in 0..n {
            if rng.gen_bool(q) {
                b.flip(i);
            }
        }
        (a, b)
    }

    #[test]
    fn bijection_is_a_permutation_with_its_inverse() {
        for n in [1usize, 2, 3, 1000, 4096, 5000] {
            let b = Bijection::new(n, 7);
            let mut seen = vec![false; n];
            for x in 0..n {
                let y = b.forward(x);
                assert!(y < n && !seen[y]);
                seen[y] = true;
                assert_eq!(b.backward(y), x);
            }
        }
    }

    #[test]
    fn permute_matches_forward_bit_by_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for n in [1usize, 2, 63, 64, 65, 1000, 4097, 100_003] {
            let key = BitVec::random(n, &mut rng);
            let b = Bijection::new(n, n as u64 ^ 5);
            let got = BitVec::from_words(b.permute(key.words()), n);
            for pos in 0..n {
                assert_eq!(got.get(pos), key.get(b.forward(pos)), "n={n} pos={pos}");
            }
        }
    }

    /// Runs both sides, recording every query; returns Bob's key, stats and the queries.
    fn run_recorded(
        a: &BitVec,
        b: &BitVec,
        q: f64,
        params: &CascadeParams,
        seed: u64,
    ) -> (BitVec, CascadeStats, Vec<Query>, usize) {
        let ks = block_sizes(a.len(), q, params);
        let layout = Layout::get(a.len(), &ks, seed);
        let alice = CascadeAlice::new(a, layout.clone());
        let top = alice.top_parities();
        let mut bob = CascadeBob::new(b.clone(), layout, &top, params).unwrap();
        let mut all = Vec::new();
        while let Some(qs) = bob.next_queries() {
            let ans = alice.answer(&qs).unwrap();
            bob.answer(&ans).unwrap();
            all.extend(qs);
        }
        let (key, st) = bob.finish();
        (key, st, all, top.len())
    }

    #[test]
    fn levels_per_round_spends_at_most_the_round_budget() {
        assert_eq!(levels_per_round(1, 0), 1);
        assert_eq!(levels_per_round(1000, 64), 1);
        // 2 levels cost 1 extra bit per search, 3 levels 4, 4 levels 11.
        assert_eq!(levels_per_round(64, 64), 2);
        assert_eq!(levels_per_round(16, 64), 3);
        assert_eq!(levels_per_round(5, 64), 4);
        assert_eq!(levels_per_round(1, 64), 6);
        for s in 1..300 {
            let b = levels_per_round(s, 64) as usize;
            assert!(b == 1 || s * ((1 << b) - 1 - b) <= 64, "s={s} b={b}");
        }
    }

    #[test]
    fn several_levels_per_round_and_overlap_fix_the_key_in_fewer_rounds() {
        // Long chains of corrections need a block of realistic size.
        let n = 1 << 20;
        for (q, seed) in [(0.01, 11u64), (0.03, 12), (0.06, 13)] {
            let (a, b) = noisy(n, q, seed);
            let plain = CascadeParams {
                round_bits: 0,
                late_overlap: 0,
                ..CascadeParams::default()
            };
            let (k0, s0, q0, top) = run_recorded(&a, &b, q, &plain, seed);
            let (k1, s1, q1, _) = run_recorded(&a, &b, q, &CascadeParams::default(), seed);
            assert_eq!(k0, a, "q={q}");
            assert_eq!(k1, a, "q={q}");
            // Every disclosed bit is counted, and none is asked twice.
            for (st, qs) in [(s0, &q0), (s1, &q1)] {
                assert_eq!(st.leaked_bits, top + qs.len());
                let distinct: std::collections::HashSet<_> = qs.iter().collect();
                assert_eq!(distinct.len(), qs.len(), "q={q}: a parity asked twice");
            }
            assert!(
                s1.rounds * 4 < s0.rounds * 3,
                "q={q}: {} rounds against {}",
                s1.rounds,
                s0.rounds
            );
            // The extra parities stay a small share of the disclosure.
            assert!(
                (s1.leaked_bits as f64) < 1.04 * s0.leaked_bits as f64,
                "q={q}: {} bits against {}",
                s1.leaked_bits,
                s0.leaked_bits
            );
        }
    }

    #[test]
    fn corrects_and_reports_efficiency() {
        for (q, seed) in [(0.01, 1u64), (0.03, 2), (0.05, 3)] {
            let n = 1 << 16;
            let (a, b) = noisy(n, q, seed);
            let errors = a.hamming(&b);
            let (fixed, st) = reconcile_local(&a, &b, q, &CascadeParams::default(), seed);
            assert_eq!(fixed, a, "q={q}");
            assert_eq!(st.corrected, errors);
            let f = st.leaked_bits as f64 / (n as f64 * h2(errors as f64 / n as f64));
            assert!(f > 1.0 && f < 1.25, "q={q} f={f}");
        }
    }
}
