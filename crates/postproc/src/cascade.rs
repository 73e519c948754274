//! Cascade error reconciliation (Brassard–Salvail 1993) with the block-size schedule and
//! parity reuse recommended by Martinez-Mateo, Pacher, Peev, Ciurana, Martin, "Demystifying the
//! information reconciliation protocol Cascade" (QIC 15, 2015): first block size from the
//! estimated QBER, then a doubled block, then passes with two blocks of n/2; sub-block parities
//! already learned are never asked twice.
//!
//! Sans-I/O and batched: [`CascadeAlice`] answers parity queries on her key; [`CascadeBob`]
//! drives the binary searches of all odd blocks of a round at once, so one message pair serves
//! every search in progress. Both derive the per-pass permutations from a public seed.
//! Reconciliation alone never guarantees equality: the protocol verifies with a universal hash
//! afterwards and aborts on mismatch.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

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
type LayoutCache = Mutex<Vec<(usize, Vec<usize>, u64, Arc<Layout>)>>;

use crate::bits::BitVec;

/// Tunable Cascade parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeParams {
    /// First-pass block size is `alpha / qber` rounded (at least 4, at most n/2).
    pub alpha: f64,
    /// Total number of passes (the first two with small blocks, the rest with two blocks).
    pub passes: usize,
}

impl Default for CascadeParams {
    fn default() -> Self {
        Self {
            alpha: 1.4,
            passes: 12,
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
#[derive(Debug)]
pub struct Layout {
    n: usize,
    ks: Vec<usize>,
    /// `perm[p][pos]` = original index at position `pos` of pass `p` (pass 0: identity, empty).
    perm: Vec<Vec<u32>>,
    /// The bijections behind `perm` (for the inverse direction).
    bij: Vec<Option<Bijection>>,
}

impl Layout {
    fn build(n: usize, ks: &[usize], seed: u64) -> Self {
        let bij: Vec<Option<Bijection>> = (0..ks.len())
            .map(|p| {
                (p > 0).then(|| {
                    Bijection::new(n, seed ^ (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                })
            })
            .collect();
        let perm = par_map(&bij, |b| match b {
            None => Vec::new(),
            Some(b) => (0..n).map(|pos| b.forward(pos) as u32).collect(),
        });
        Self {
            n,
            ks: ks.to_vec(),
            perm,
            bij,
        }
    }

    /// The layout for `n` bits, block sizes `ks` and permutation `seed` (cached: the two ends
    /// of a link simulated in one process build it once; only the latest layout is kept).
    pub fn get(n: usize, ks: &[usize], seed: u64) -> Arc<Layout> {
        static CACHE: LayoutCache = Mutex::new(Vec::new());
        if let Ok(c) = CACHE.lock() {
            if let Some(e) = c.iter().find(|e| e.0 == n && e.1 == ks && e.2 == seed) {
                return e.3.clone();
            }
        }
        let l = Arc::new(Self::build(n, ks, seed));
        if let Ok(mut c) = CACHE.lock() {
            if !c.is_empty() {
                c.remove(0);
            }
            c.push((n, ks.to_vec(), seed, l.clone()));
        }
        l
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

    fn permuted(&self, key: &BitVec, p: usize) -> BitVec {
        if p == 0 {
            return key.clone();
        }
        let mut words = vec![0u64; self.n.div_ceil(64)];
        for (w, chunk) in words.iter_mut().zip(self.perm[p].chunks(64)) {
            let mut acc = 0u64;
            for (i, &o) in chunk.iter().enumerate() {
                acc |= (key.get(o as usize) as u64) << i;
            }
            *w = acc;
        }
        BitVec::from_words(words, self.n)
    }

    fn pos(&self, p: usize, orig: usize) -> usize {
        match &self.bij[p] {
            None => orig,
            Some(b) => b.backward(orig),
        }
    }

    fn orig(&self, p: usize, pos: usize) -> usize {
        if p == 0 {
            pos
        } else {
            self.perm[p][pos] as usize
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
        let keys = (0..layout.passes())
            .map(|p| layout.permuted(key, p))
            .collect();
        Self { layout, keys }
    }

    /// Top-level block parities of every pass, concatenated pass by pass.
    pub fn top_parities(&self) -> BitVec {
        let mut out = BitVec::zeros(0);
        for p in 0..self.layout.passes() {
            for b in 0..self.layout.blocks(p) {
                let (lo, hi) = self.layout.block_range(p, b);
                out.push(self.keys[p].parity_range(lo, hi));
            }
        }
        out
    }

    /// Parities of the queried ranges.
    ///
    /// # Errors
    /// [`CascadeError::BadQuery`] for a pass or range outside the layout.
    pub fn answer(&self, queries: &[Query]) -> Result<BitVec, CascadeError> {
        let mut out = BitVec::zeros(queries.len());
        for (i, q) in queries.iter().enumerate() {
            let p = q.pass as usize;
            if p >= self.keys.len() || q.lo >= q.hi || q.hi as usize > self.layout.n {
                return Err(CascadeError::BadQuery);
            }
            out.set(i, self.keys[p].parity_range(q.lo as usize, q.hi as usize));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy)]
struct Search {
    pass: usize,
    lo: usize,
    hi: usize,
    alice: bool,
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
#[derive(Debug)]
pub struct CascadeBob {
    layout: Arc<Layout>,
    key: BitVec,
    keys: Vec<BitVec>,
    alice_top: Vec<BitVec>,
    known: FastMap<(usize, usize, usize), bool>,
    searches: FastMap<(usize, usize), Search>,
    pending: Vec<(usize, usize)>,
    dirty: Vec<(usize, usize)>,
    pass: usize,
    asked: Vec<Query>,
    stats: CascadeStats,
}

impl CascadeBob {
    /// Starts Bob's side with Alice's top-level parities (as from [`CascadeAlice::top_parities`]).
    ///
    /// # Errors
    /// [`CascadeError::Count`] if the number of parities does not match the layout.
    pub fn new(key: BitVec, layout: Arc<Layout>, top: &BitVec) -> Result<Self, CascadeError> {
        let expected: usize = (0..layout.passes()).map(|p| layout.blocks(p)).sum();
        if top.len() != expected {
            return Err(CascadeError::Count {
                expected,
                got: top.len(),
            });
        }
        let keys: Vec<BitVec> = (0..layout.passes())
            .map(|p| layout.permuted(&key, p))
            .collect();
        let mut alice_top = Vec::new();
        let mut off = 0;
        for p in 0..layout.passes() {
            let nb = layout.blocks(p);
            alice_top.push(top.slice(off, nb));
            off += nb;
        }
        let mut bob = Self {
            layout,
            key,
            keys,
            alice_top,
            known: FastMap::default(),
            searches: FastMap::default(),
            pending: Vec::new(),
            dirty: Vec::new(),
            pass: 0,
            asked: Vec::new(),
            stats: CascadeStats {
                leaked_bits: expected,
                ..Default::default()
            },
        };
        bob.start_pass(0);
        Ok(bob)
    }

    fn start_pass(&mut self, p: usize) {
        for b in 0..self.layout.blocks(p) {
            self.dirty.push((p, b));
        }
    }

    fn bob_parity(&self, p: usize, lo: usize, hi: usize) -> bool {
        self.keys[p].parity_range(lo, hi)
    }

    fn flip(&mut self, orig: usize) {
        self.key.flip(orig);
        self.stats.corrected += 1;
        for p in 0..self.layout.passes() {
            let pos = self.layout.pos(p, orig);
            self.keys[p].flip(pos);
            if p <= self.pass {
                self.dirty.push((p, pos / self.layout.ks[p]));
            }
        }
    }

    /// The next batch of parity queries for Alice, or `None` when reconciliation is finished.
    pub fn next_queries(&mut self) -> Option<Vec<Query>> {
        loop {
            // Work list: searches to advance as far as known parities allow.
            while let Some(key) = self.pending.pop() {
                let Some(mut s) = self.searches.get(&key).copied() else {
                    continue;
                };
                if self.bob_parity(s.pass, s.lo, s.hi) == s.alice {
                    // A flip found elsewhere made this range even; re-examine the whole block.
                    self.searches.remove(&key);
                    self.dirty.push(key);
                    continue;
                }
                let mut waiting = false;
                while s.hi - s.lo > 1 {
                    let mid = s.lo + (s.hi - s.lo) / 2;
                    let Some(&a) = self.known.get(&(s.pass, s.lo, mid)) else {
                        waiting = true;
                        break;
                    };
                    if a != self.bob_parity(s.pass, s.lo, mid) {
                        s.hi = mid;
                        s.alice = a;
                    } else {
                        s.lo = mid;
                        s.alice ^= a;
                    }
                }
                if waiting {
                    self.searches.insert(key, s);
                } else {
                    self.searches.remove(&key);
                    let orig = self.layout.orig(s.pass, s.lo);
                    self.flip(orig);
                }
                if self.pending.is_empty() {
                    self.process_dirty();
                }
            }
            self.process_dirty();
            if !self.pending.is_empty() {
                continue;
            }
            if !self.searches.is_empty() {
                let queries: Vec<Query> = self
                    .searches
                    .values()
                    .map(|s| Query {
                        pass: s.pass as u8,
                        lo: s.lo as u32,
                        hi: (s.lo + (s.hi - s.lo) / 2) as u32,
                    })
                    .collect();
                self.asked = queries.clone();
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

    /// Blocks touched by flips (or a new pass): re-check searches in them, open searches on
    /// blocks that became odd.
    fn process_dirty(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            if self.searches.contains_key(&key) {
                self.pending.push(key);
                continue;
            }
            let (p, b) = key;
            let (lo, hi) = self.layout.block_range(p, b);
            let alice = self.alice_top[p].get(b);
            if self.bob_parity(p, lo, hi) != alice {
                self.searches.insert(
                    key,
                    Search {
                        pass: p,
                        lo,
                        hi,
                        alice,
                    },
                );
                self.pending.push(key);
            }
        }
    }

    /// Records Alice's answers to the last batch of queries.
    ///
    /// # Errors
    /// [`CascadeError::Count`] if the number of answers differs from the number of queries.
    pub fn answer(&mut self, answers: &BitVec) -> Result<(), CascadeError> {
        if answers.len() != self.asked.len() {
            return Err(CascadeError::Count {
                expected: self.asked.len(),
                got: answers.len(),
            });
        }
        for (i, q) in std::mem::take(&mut self.asked).iter().enumerate() {
            self.known.insert(
                (q.pass as usize, q.lo as usize, q.hi as usize),
                answers.get(i),
            );
            self.stats.leaked_bits += 1;
        }
        self.pending.extend(self.searches.keys().copied());
        Ok(())
    }

    /// Bob's corrected key and the statistics.
    pub fn finish(self) -> (BitVec, CascadeStats) {
        (self.key.clone(), self.stats)
    }
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
    let mut b =
        CascadeBob::new(bob.clone(), layout, &a.top_parities()).expect("parity count matches");
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
