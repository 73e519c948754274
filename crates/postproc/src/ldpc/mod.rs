//! Rate-adaptive LDPC error reconciliation (syndrome coding for the BSC), sans-I/O.
//!
//! The sifted key is cut into frames of a quasi-cyclic mother code of n = 2^14, 2^15 or 2^16
//! bits (a family of 12 rates from 0.5 to 0.95, built deterministically from a fixed seed;
//! see [`LdpcParams::frame_bits`]). Alice sends the syndrome of each frame; Bob decodes with
//! layered belief propagation, normalized min-sum or sum-product ([`CheckRule`]; 16-bit fixed
//! point, channel LLRs from the estimated QBER) and checks the result against the syndrome.
//!
//! **Rate adaptation** (Elkouss, Martinez-Mateo, Martin, "Information reconciliation for
//! quantum key distribution", QIC 11, 2011): the mother code with the most checks that can
//! still reach the target leakage f·h(QBER) per key bit is chosen, and each frame holds
//! `key` key bits, `shortened` bits known to both (zero) and `punctured` bits unknown to Bob.
//! Punctured symbols are one-step recoverable, each with a *survivor* check that no other
//! punctured symbol touches, and Alice sets each punctured symbol to the parity of the other
//! bits of its survivor check: that check's syndrome bit is then 0 and is not sent. The
//! message is therefore m − p bits per frame, all functions of the key, and Alice needs no
//! secret randomness for padding.
//!
//! **Blind reconciliation** (Martinez-Mateo, Elkouss, Martin, "Blind reconciliation", QIC 12,
//! 2012): with `blind_rounds > 0` frames start with more puncturing (a higher rate); when a
//! frame fails, Bob says so and Alice reveals the next bits of the frame's public schedule,
//! first the punctured symbols (last punctured first), then key bits, raising the frame's
//! disclosure by about `blind_step`·h(QBER) per key bit each round. All failing frames of a
//! block are served by one message pair per round.
//!
//! **Leakage** counted for f and for the finite-key length: every syndrome bit sent
//! (m − p per frame) plus every revealed bit. A frame that does not decode after the last
//! round is reported as [`LdpcError::DecodeFailed`]; the protocol then aborts the block (it
//! cannot drop frames without changing the counts the finite-key bound is computed from).
//! A decoded frame always satisfies the full syndrome and its known symbols; the protocol's
//! verification hash catches the rare decoding to a different word of the same coset.

pub(crate) mod code;
pub(crate) mod decoder;

use std::sync::{Arc, Mutex, OnceLock};

use crate::bits::BitVec;
use crate::cascade::h2;
use crate::ldpc_simd_unsafe::Simd;
use code::{QcCode, NB};
pub use decoder::CheckRule;
use decoder::{Decoder, LLR_KNOWN, LLR_SCALE};

/// Base rows of the mother codes (rate 1 − mb/256), lowest rate first.
const FAMILY_MB: [usize; 12] = [128, 115, 102, 90, 77, 64, 51, 38, 31, 26, 20, 13];
/// Seed of the code family (both ends must build identical codes).
const CODE_SEED: u64 = 0x6b61_6769_6c64_7063;
/// With [`LdpcParams::warm_start`]: iterations without progress after which an attempt that
/// can still be resumed stops.
pub const STALL_ITERATIONS: usize = 12;
/// Most punctured symbols per frame, as a fraction of the frame.
const MAX_PUNCTURED: f64 = 0.08;

/// Tunable LDPC reconciliation parameters (both ends must use the same).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LdpcParams {
    /// Frame (codeword) length: 16384, 32768 or 65536.
    pub frame_bits: usize,
    /// Target efficiency f of the first decoding attempt: each frame discloses about
    /// f·h(QBER) bits per key bit.
    pub efficiency: f64,
    /// Reveal rounds after the first attempt (0: one attempt, a failing frame aborts).
    pub blind_rounds: usize,
    /// Disclosure added per reveal round, in units of h(QBER) per key bit.
    pub blind_step: f64,
    /// Belief-propagation iterations per attempt.
    pub max_iterations: usize,
    /// Bob's check-node update (his choice only; Alice's messages do not depend on it).
    pub check_rule: CheckRule,
    /// Bob keeps each failing frame's decoder state (check messages and a-posteriori LLRs)
    /// and continues from it after a reveal, instead of restarting from the channel LLRs
    /// (his choice only; on by default: the same f for less CPU). An attempt that is not the last then also stops once its count of
    /// unsatisfied checks has not fallen for [`STALL_ITERATIONS`] iterations: the reveal that
    /// follows adds information, which iterating alone does not.
    pub warm_start: bool,
    /// With `warm_start`: iterations without fewer unsatisfied checks after which an attempt
    /// that can still be resumed stops (Bob's choice only; default [`STALL_ITERATIONS`]).
    pub stall_iterations: usize,
}

impl Default for LdpcParams {
    fn default() -> Self {
        Self {
            frame_bits: 1 << 16,
            efficiency: 1.15,
            blind_rounds: 8,
            blind_step: 0.05,
            max_iterations: 60,
            check_rule: CheckRule::MinSum,
            warm_start: true,
            stall_iterations: STALL_ITERATIONS,
        }
    }
}

/// Why LDPC reconciliation could not proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LdpcError {
    /// Parameters out of range.
    #[error("bad LDPC parameters: {0}")]
    Params(&'static str),
    /// The syndrome message has the wrong length for the plan.
    #[error("syndrome of {got} bits, the plan needs {want}")]
    SyndromeLength {
        /// Bits received.
        got: usize,
        /// Bits expected.
        want: usize,
    },
    /// A reveal request or answer does not fit the frames awaiting it.
    #[error("bad reveal: {0}")]
    Reveal(&'static str),
    /// Frames still undecoded after the last reveal round.
    #[error("{failed} of {frames} LDPC frames failed to decode after {rounds} attempts")]
    DecodeFailed {
        /// Frames that failed.
        failed: usize,
        /// Frames in the block.
        frames: usize,
        /// Decoding attempts made.
        rounds: usize,
    },
}

impl LdpcParams {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`LdpcError::Params`] naming the first bad field.
    pub fn validate(&self) -> Result<(), LdpcError> {
        if ![1 << 14, 1 << 15, 1 << 16].contains(&self.frame_bits) {
            return Err(LdpcError::Params(
                "frame_bits must be 16384, 32768 or 65536",
            ));
        }
        if !(self.efficiency.is_finite() && (0.8..=4.0).contains(&self.efficiency)) {
            return Err(LdpcError::Params("efficiency must be in [0.8, 4]"));
        }
        if self.blind_rounds > 64 {
            return Err(LdpcError::Params("blind_rounds must be at most 64"));
        }
        if self.blind_rounds > 0 && !(self.blind_step.is_finite() && self.blind_step > 0.0) {
            return Err(LdpcError::Params("blind_step must be positive"));
        }
        if !(1..=1000).contains(&self.max_iterations) {
            return Err(LdpcError::Params("max_iterations must be in 1..=1000"));
        }
        Ok(())
    }
}

type CodeCache = Mutex<Vec<(usize, usize, Arc<QcCode>)>>;

/// The mother code with `mb` base rows for `frame_bits`, built once per process.
fn mother_code(frame_bits: usize, mb: usize) -> Arc<QcCode> {
    static CACHE: OnceLock<CodeCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, code)) = c.iter().find(|(f, m, _)| *f == frame_bits && *m == mb) {
        return code.clone();
    }
    let code = Arc::new(QcCode::build(frame_bits / NB, mb, CODE_SEED));
    c.push((frame_bits, mb, code.clone()));
    code
}

/// One frame's layout: its key bits are `offset..offset + key` of the sifted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FramePlan {
    offset: usize,
    key: usize,
    punctured: usize,
    shortened: usize,
    /// Bits revealed per reveal round.
    step: usize,
}

/// How a block of sifted key is cut into frames; both ends derive it from the sifted length,
/// the QBER estimate they share and the parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    code: Arc<QcCode>,
    frames: Vec<FramePlan>,
    llr: i16,
    rounds: usize,
    max_iterations: usize,
    check_rule: CheckRule,
    warm_start: bool,
    stall_iterations: usize,
}

impl Plan {
    /// Plans `n_key` sifted bits at estimated error rate `qber`.
    ///
    /// # Errors
    /// [`LdpcError::Params`] if the parameters are out of range or `n_key` is 0.
    pub fn new(n_key: usize, qber: f64, params: &LdpcParams) -> Result<Self, LdpcError> {
        params.validate()?;
        if n_key == 0 {
            return Err(LdpcError::Params("no key bits"));
        }
        let q = if qber.is_finite() {
            qber.clamp(0.002, 0.2)
        } else {
            0.2
        };
        let h = h2(q);
        let target = params.efficiency * h;
        let n = params.frame_bits;
        let blind = params.blind_rounds > 0;
        let cap = (MAX_PUNCTURED * n as f64) as usize;
        // The mother code with the most checks that reaches the target (most key bits per
        // frame); with none, the highest-rate code fully punctured.
        let mut choice = None;
        for &mb in FAMILY_MB.iter() {
            let code = mother_code(n, mb);
            let m = code.m();
            let p = if blind { code.punct.len().min(cap) } else { 0 };
            if (m - p) as f64 <= target * (n - p) as f64 {
                choice = Some((code, p));
                break;
            }
        }
        let (code, p0) = choice.unwrap_or_else(|| {
            let code = mother_code(n, FAMILY_MB[FAMILY_MB.len() - 1]);
            let p = code.punct.len().min(cap);
            (code, p)
        });
        let m = code.m();
        let p_cap = code.punct.len().min(cap);
        let per_frame = (((m - p0) as f64 / target) as usize).clamp(1, n - p0);
        let count = n_key.div_ceil(per_frame);
        let mut frames = Vec::with_capacity(count);
        let mut offset = 0;
        for i in 0..count {
            let key = n_key / count + usize::from(i < n_key % count);
            // Non-blind frames shorter than `per_frame` puncture a little to keep the rate.
            let want_p = if blind {
                p0
            } else {
                (m as f64 - target * key as f64).round().max(0.0) as usize
            };
            let punctured = want_p.min(p_cap).min(n - key);
            frames.push(FramePlan {
                offset,
                key,
                punctured,
                shortened: n - punctured - key,
                step: ((params.blind_step * h * key as f64).ceil() as usize).max(1),
            });
            offset += key;
        }
        let llr = ((1.0 - q) / q).ln() * LLR_SCALE;
        Ok(Self {
            code,
            frames,
            llr: llr.round().clamp(1.0, 2000.0) as i16,
            rounds: params.blind_rounds,
            max_iterations: params.max_iterations,
            check_rule: params.check_rule,
            warm_start: params.warm_start,
            stall_iterations: params.stall_iterations,
        })
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Rate of the mother code in use.
    pub fn mother_rate(&self) -> f64 {
        1.0 - self.code.mb as f64 / NB as f64
    }

    /// Syndrome bits Alice sends first (all frames).
    pub fn syndrome_bits(&self) -> usize {
        self.frames
            .iter()
            .map(|f| self.code.m() - f.punctured)
            .sum()
    }

    /// Variable revealed as the `k`-th reveal of `f` (punctured last-first, then key bits
    /// from the end of the order), if any remain.
    fn reveal_var(&self, f: &FramePlan, k: usize) -> Option<usize> {
        let n = self.code.n();
        if k < f.punctured {
            Some(self.code.order[f.punctured - 1 - k] as usize)
        } else if k - f.punctured < f.key {
            Some(self.code.order[n - 1 - (k - f.punctured)] as usize)
        } else {
            None
        }
    }

    /// Channel LLR, before any reveal, of the `k`-th symbol revealed in `f` (see
    /// [`Plan::reveal_var`]): 0 for a punctured symbol, ±`llr` from Bob's key bit otherwise.
    fn reveal_channel_llr(&self, f: &FramePlan, key: &BitVec, k: usize) -> i16 {
        if k < f.punctured {
            return 0;
        }
        let j = self.code.n() - 1 - (k - f.punctured) - (f.punctured + f.shortened);
        if key.get(f.offset + j) {
            -self.llr
        } else {
            self.llr
        }
    }

    /// Whether check `c` is the survivor of a symbol punctured in `f` (its bit is not sent).
    fn survivor_skipped(&self, f: &FramePlan) -> Vec<bool> {
        let mut skip = vec![false; self.code.m()];
        for &(_, c) in &self.code.punct[..f.punctured] {
            skip[c as usize] = true;
        }
        skip
    }
}

/// Statistics of one reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LdpcStats {
    /// Frames in the block.
    pub frames: usize,
    /// Bits disclosed: syndromes sent plus bits revealed.
    pub leaked_bits: u64,
    /// Decoding attempts (1 + reveal rounds used).
    pub rounds: usize,
    /// Frames not decoded at the end.
    pub failed_frames: usize,
    /// Bits Bob corrected.
    pub corrected: usize,
    /// Belief-propagation iterations summed over successful decodes.
    pub iterations: u64,
    /// Belief-propagation iterations over every attempt of every frame, failed attempts
    /// included (the decoder's whole work).
    pub total_iterations: u64,
}

/// Alice's end: computes syndromes and answers reveal requests.
#[derive(Debug)]
pub struct LdpcAlice {
    plan: Plan,
    /// Each frame's full codeword-space word (key, zeros, punctured symbols).
    words: Vec<BitVec>,
    revealed: Vec<usize>,
    leaked: u64,
}

impl LdpcAlice {
    /// Alice's frames of `key` under `plan`, and the syndrome message for Bob.
    ///
    /// # Errors
    /// [`LdpcError::Params`] if the key length differs from the plan's.
    pub fn new(key: &BitVec, plan: Plan) -> Result<(Self, BitVec), LdpcError> {
        let total: usize = plan.frames.iter().map(|f| f.key).sum();
        if total != key.len() {
            return Err(LdpcError::Params("key length differs from the plan"));
        }
        let code = &plan.code;
        let (n, m) = (code.n(), code.m());
        let mut words = Vec::with_capacity(plan.frames.len());
        let mut msg = BitVec::zeros(0);
        for f in &plan.frames {
            let mut x = BitVec::zeros(n);
            let start = f.punctured + f.shortened;
            for (i, &v) in code.order[start..].iter().enumerate() {
                if key.get(f.offset + i) {
                    x.set(v as usize, true);
                }
            }
            let s0 = code.syndrome(x.words());
            for &(v, c) in &code.punct[..f.punctured] {
                if (s0[c as usize / 64] >> (c % 64)) & 1 == 1 {
                    x.set(v as usize, true);
                }
            }
            let s = code.syndrome(x.words());
            let skip = plan.survivor_skipped(f);
            for c in 0..m {
                let bit = (s[c / 64] >> (c % 64)) & 1 == 1;
                if skip[c] {
                    debug_assert!(!bit, "survivor syndrome bit must be zero");
                } else {
                    msg.push(bit);
                }
            }
            words.push(x);
        }
        let leaked = msg.len() as u64;
        let revealed = vec![0; plan.frames.len()];
        Ok((
            Self {
                plan,
                words,
                revealed,
                leaked,
            },
            msg,
        ))
    }

    /// The next reveal round's bits for the listed frames (in that order).
    ///
    /// # Errors
    /// [`LdpcError::Reveal`] if a frame index is out of range, repeated or out of order, the
    /// rounds are exhausted, or a frame has nothing left to reveal.
    pub fn reveal(&mut self, frames: &[u32]) -> Result<BitVec, LdpcError> {
        if frames.windows(2).any(|w| w[0] >= w[1]) {
            return Err(LdpcError::Reveal("frame list not strictly ascending"));
        }
        let mut out = BitVec::zeros(0);
        for &i in frames {
            let i = i as usize;
            let f = *self
                .plan
                .frames
                .get(i)
                .ok_or(LdpcError::Reveal("frame index"))?;
            let r = self.revealed[i];
            if r >= f.step * self.plan.rounds {
                return Err(LdpcError::Reveal("reveal rounds exhausted"));
            }
            for k in r..r + f.step {
                let v = self
                    .plan
                    .reveal_var(&f, k)
                    .ok_or(LdpcError::Reveal("nothing left to reveal"))?;
                out.push(self.words[i].get(v));
            }
            self.revealed[i] += f.step;
            self.leaked += f.step as u64;
        }
        Ok(out)
    }

    /// Bits disclosed so far.
    pub fn leaked_bits(&self) -> u64 {
        self.leaked
    }
}

struct BobFrame {
    synd: Vec<u64>,
    /// Revealed (variable, value) pairs.
    known: Vec<(u32, bool)>,
    decoded: Option<BitVec>,
    iterations: usize,
    /// Decoder state after the last failed attempt, and how many of `known` it includes
    /// (`LdpcParams::warm_start` only).
    state: Option<(DecoderState, usize)>,
}

/// A frame's saved decoder state: a-posteriori LLRs and check messages.
type DecoderState = (Vec<i16>, Vec<i16>);

/// Bob's end: decodes frames, asks for reveals, returns the corrected key.
pub struct LdpcBob {
    plan: Plan,
    key: BitVec,
    frames: Vec<BobFrame>,
    leaked: u64,
    attempts: usize,
    simd: Simd,
    /// Iterations over every attempt, failed ones included.
    spent: u64,
}

impl std::fmt::Debug for LdpcBob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdpcBob")
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

impl LdpcBob {
    /// Bob's end with his sifted `key` and Alice's syndrome message.
    ///
    /// # Errors
    /// [`LdpcError::SyndromeLength`] if the message does not fit the plan;
    /// [`LdpcError::Params`] if the key length differs from the plan's.
    pub fn new(key: BitVec, plan: Plan, syndrome: &BitVec) -> Result<Self, LdpcError> {
        let total: usize = plan.frames.iter().map(|f| f.key).sum();
        if total != key.len() {
            return Err(LdpcError::Params("key length differs from the plan"));
        }
        let want = plan.syndrome_bits();
        if syndrome.len() != want {
            return Err(LdpcError::SyndromeLength {
                got: syndrome.len(),
                want,
            });
        }
        let m = plan.code.m();
        let mut pos = 0;
        let mut frames = Vec::with_capacity(plan.frames.len());
        for f in &plan.frames {
            let skip = plan.survivor_skipped(f);
            let mut s = vec![0u64; m / 64];
            for (c, &sk) in skip.iter().enumerate() {
                if !sk {
                    s[c / 64] |= (syndrome.get(pos) as u64) << (c % 64);
                    pos += 1;
                }
            }
            frames.push(BobFrame {
                synd: s,
                known: Vec::new(),
                decoded: None,
                iterations: 0,
                state: None,
            });
        }
        Ok(Self {
            plan,
            key,
            frames,
            leaked: want as u64,
            attempts: 0,
            simd: Simd::Auto,
            spent: 0,
        })
    }

    /// Decodes every frame not yet decoded, on up to `threads` threads; returns the frames
    /// still failing (empty: done). Call after [`LdpcBob::new`] and after each
    /// [`LdpcBob::apply_reveal`].
    pub fn decode(&mut self, threads: usize) -> Vec<u32> {
        self.attempts += 1;
        let pending: Vec<usize> = (0..self.frames.len())
            .filter(|&i| self.frames[i].decoded.is_none())
            .collect();
        let threads = threads.clamp(1, pending.len().max(1));
        let chunk = pending.len().div_ceil(threads).max(1);
        // Saved states move to the threads with their frames and come back with the results.
        let mut jobs: Vec<(usize, Option<(DecoderState, usize)>)> = pending
            .iter()
            .map(|&i| (i, self.frames[i].state.take()))
            .collect();
        let plan = &self.plan;
        let key = &self.key;
        let simd = self.simd;
        let frames = &self.frames;
        // The last attempt runs every iteration: nothing is revealed after it.
        let stall_after = if plan.warm_start && self.attempts <= plan.rounds {
            plan.stall_iterations
        } else {
            0
        };
        let mut per_thread = Vec::new();
        while !jobs.is_empty() {
            let rest = jobs.split_off(chunk.min(jobs.len()));
            per_thread.push(std::mem::replace(&mut jobs, rest));
        }
        let results: Vec<(usize, Outcome, usize)> = std::thread::scope(|sc| {
            let handles: Vec<_> = per_thread
                .into_iter()
                .map(|jobs| {
                    sc.spawn(move || {
                        let mut dec = Decoder::default();
                        dec.stall = stall_after;
                        let mut llr = Vec::new();
                        jobs.into_iter()
                            .map(|(i, state)| {
                                let r = decode_frame(
                                    plan, key, &frames[i], state, i, &mut dec, &mut llr, simd,
                                );
                                (i, r, dec.spent)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("decoder thread panicked"))
                .collect()
        });
        let mut failed = Vec::new();
        for (i, r, spent) in results {
            self.spent += spent as u64;
            match r {
                Outcome::Decoded(bits, it) => {
                    self.frames[i].decoded = Some(bits);
                    self.frames[i].iterations = it;
                }
                Outcome::Failed(state) => {
                    self.frames[i].state = state;
                    failed.push(i as u32);
                }
            }
        }
        failed.sort_unstable();
        failed
    }

    /// Whether another reveal round may be requested.
    pub fn can_retry(&self) -> bool {
        self.attempts <= self.plan.rounds
    }

    /// Applies Alice's answer to a reveal request for `frames` (the list [`LdpcBob::decode`]
    /// returned).
    ///
    /// # Errors
    /// [`LdpcError::Reveal`] if the frames or the number of bits do not match.
    pub fn apply_reveal(&mut self, frames: &[u32], bits: &BitVec) -> Result<(), LdpcError> {
        if frames.windows(2).any(|w| w[0] >= w[1]) {
            return Err(LdpcError::Reveal("frame list not strictly ascending"));
        }
        let want: usize = frames
            .iter()
            .map(|&i| self.plan.frames.get(i as usize).map_or(0, |f| f.step))
            .sum();
        if bits.len() != want {
            return Err(LdpcError::Reveal("revealed bit count"));
        }
        let mut pos = 0;
        for &i in frames {
            let i = i as usize;
            let f = *self
                .plan
                .frames
                .get(i)
                .ok_or(LdpcError::Reveal("frame index"))?;
            let fr = &mut self.frames[i];
            if fr.decoded.is_some() {
                return Err(LdpcError::Reveal("frame already decoded"));
            }
            let r = fr.known.len();
            for k in r..r + f.step {
                let v = self
                    .plan
                    .reveal_var(&f, k)
                    .ok_or(LdpcError::Reveal("nothing left to reveal"))?;
                fr.known.push((v as u32, bits.get(pos)));
                pos += 1;
            }
            self.leaked += f.step as u64;
        }
        Ok(())
    }

    /// Bits disclosed so far.
    pub fn leaked_bits(&self) -> u64 {
        self.leaked
    }

    /// The corrected key and the statistics.
    ///
    /// # Errors
    /// [`LdpcError::DecodeFailed`] if a frame is still undecoded.
    pub fn finish(self) -> Result<(BitVec, LdpcStats), LdpcError> {
        let failed = self.frames.iter().filter(|f| f.decoded.is_none()).count();
        if failed > 0 {
            return Err(LdpcError::DecodeFailed {
                failed,
                frames: self.frames.len(),
                rounds: self.attempts,
            });
        }
        let mut out = BitVec::zeros(self.key.len());
        let mut iterations = 0u64;
        for (f, fr) in self.plan.frames.iter().zip(&self.frames) {
            let Some(bits) = &fr.decoded else { continue };
            for i in 0..f.key {
                out.set(f.offset + i, bits.get(i));
            }
            iterations += fr.iterations as u64;
        }
        let corrected = out.hamming(&self.key);
        Ok((
            out,
            LdpcStats {
                frames: self.frames.len(),
                leaked_bits: self.leaked,
                rounds: self.attempts,
                failed_frames: 0,
                corrected,
                iterations,
                total_iterations: self.spent,
            },
        ))
    }
}

/// What one decoding attempt of a frame gave.
enum Outcome {
    /// The frame's key bits and the iterations used.
    Decoded(BitVec, usize),
    /// Not decoded; the decoder state to continue from (with `warm_start`).
    Failed(Option<(DecoderState, usize)>),
}

/// Decodes one frame, from the channel LLRs or (`warm_start`) from its saved `state`.
#[allow(clippy::too_many_arguments)] // one frame's inputs, split to share the plan across threads
fn decode_frame(
    plan: &Plan,
    key: &BitVec,
    fr: &BobFrame,
    state: Option<(DecoderState, usize)>,
    i: usize,
    dec: &mut Decoder,
    llr: &mut Vec<i16>,
    simd: Simd,
) -> Outcome {
    let it = attempt(plan, key, fr, state, i, dec, llr, simd);
    let failed = |dec: &mut Decoder| {
        Outcome::Failed(plan.warm_start.then(|| (dec.take_state(), fr.known.len())))
    };
    let Some(it) = it else {
        return failed(dec);
    };
    let f = &plan.frames[i];
    let code = &plan.code;
    let order = &code.order;
    let start = f.punctured + f.shortened;
    let hard = dec.hard();
    // Independent checks: the full syndrome and every known symbol.
    if code.syndrome(&hard) != fr.synd {
        return failed(dec);
    }
    let bit = |v: usize| (hard[v / 64] >> (v % 64)) & 1 == 1;
    if order[f.punctured..start].iter().any(|&v| bit(v as usize))
        || fr.known.iter().any(|&(v, b)| bit(v as usize) != b)
    {
        return failed(dec);
    }
    let mut out = BitVec::zeros(f.key);
    for (j, &v) in order[start..].iter().enumerate() {
        out.set(j, bit(v as usize));
    }
    Outcome::Decoded(out, it)
}

/// Runs the decoder on one frame: fresh from the channel LLRs, or continuing `state` with the
/// bits revealed since it was saved pinned; the iterations used if every check holds.
#[allow(clippy::too_many_arguments)]
fn attempt(
    plan: &Plan,
    key: &BitVec,
    fr: &BobFrame,
    state: Option<(DecoderState, usize)>,
    i: usize,
    dec: &mut Decoder,
    llr: &mut Vec<i16>,
    simd: Simd,
) -> Option<usize> {
    let f = &plan.frames[i];
    let code = &plan.code;
    let known_llr = |b: bool| if b { -LLR_KNOWN } else { LLR_KNOWN };
    if let Some((saved, applied)) = state {
        // The new reveals move each symbol's LLR from its channel value to ±LLR_KNOWN; only
        // their channel values are needed, not the whole frame's.
        let delta: Vec<(u32, i16)> = fr.known[applied..]
            .iter()
            .enumerate()
            .map(|(j, &(v, b))| {
                let channel = plan.reveal_channel_llr(f, key, applied + j);
                (v, known_llr(b).saturating_sub(channel))
            })
            .collect();
        dec.restore(saved, &delta);
        return dec.resume(code, &fr.synd, plan.max_iterations, simd, plan.check_rule);
    }
    let n = code.n();
    llr.clear();
    llr.resize(n, 0);
    let order = &code.order;
    for &v in &order[f.punctured..f.punctured + f.shortened] {
        llr[v as usize] = LLR_KNOWN;
    }
    let start = f.punctured + f.shortened;
    for (j, &v) in order[start..].iter().enumerate() {
        llr[v as usize] = if key.get(f.offset + j) {
            -plan.llr
        } else {
            plan.llr
        };
    }
    for &(v, b) in &fr.known {
        llr[v as usize] = known_llr(b);
    }
    dec.decode(
        code,
        llr,
        &fr.synd,
        plan.max_iterations,
        simd,
        plan.check_rule,
    )
}

/// Both ends in one process (tests, benchmarks): Alice's and Bob's keys, the QBER estimate
/// both would share. Returns Bob's corrected key and the statistics.
///
/// # Errors
/// [`LdpcError::DecodeFailed`] if frames remain undecoded after the last round; other
/// variants for bad parameters or lengths.
pub fn reconcile_local(
    alice: &BitVec,
    bob: &BitVec,
    qber: f64,
    params: &LdpcParams,
    threads: usize,
) -> Result<(BitVec, LdpcStats), LdpcError> {
    let plan = Plan::new(alice.len(), qber, params)?;
    let (mut a, synd) = LdpcAlice::new(alice, plan.clone())?;
    let mut b = LdpcBob::new(bob.clone(), plan, &synd)?;
    loop {
        let failed = b.decode(threads);
        if failed.is_empty() || !b.can_retry() {
            break;
        }
        let bits = a.reveal(&failed)?;
        b.apply_reveal(&failed, &bits)?;
    }
    debug_assert_eq!(a.leaked_bits(), b.leaked_bits());
    b.finish()
}

#[cfg(test)]
mod tests;
