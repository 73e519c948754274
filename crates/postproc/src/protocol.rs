//! The two-party post-processing protocol, sans-I/O.
//!
//! Bob (the receiver of the photons) starts each block; Alice answers; they strictly alternate,
//! so each side is a function "incoming message → next outgoing message", usable in one process
//! (tests, `kagi link-sim`) or between two nodes (the bytes go over any channel).
//!
//! 1. Bob → Alice `Sift`: his detected pulse indices, his bases, and his bits for detections in
//!    the test basis (bits of pulses he measured in the test basis are never key, so revealing
//!    them before knowing Alice's bases is harmless).
//! 2. Alice → Bob `SiftReply`: her bases and intensity classes for those detections, the
//!    test-basis error counts per intensity, and the Cascade layout (seed, block sizes, all
//!    top-level parities). Alice aborts here if even perfect error correction could not give a
//!    positive finite-key length (e.g. an intercept-resend attack).
//! 3. Cascade rounds: Bob → `Queries`, Alice → `Answers`, until Bob sends `EcDone`.
//! 4. Alice → Bob `Verify`: a universal hash (POLYVAL with a fresh public key) of her key, the
//!    secret length ℓ from the finite-key formula ([`crate::finite_key`]) with the parities
//!    disclosed, and the Toeplitz seed. Bob aborts on a hash or length mismatch.
//! 5. Bob → Alice `Confirm`.
//!
//! Every message is framed as `magic, version, direction, block id, sequence number, payload`
//! and carries a Wegman–Carter tag ([`kagi_keymat::its_mac`]) keyed with the link's
//! authentication hash key and a fresh 16-byte one-time pad per message from the
//! [`AuthKeyPool`]. Altered, replayed, reordered, reflected or cross-block messages are rejected
//! and the block aborts. Both sides count the pads spent and replenish the pool from the new
//! key before delivering the rest.
//!
//! Basis convention: 0 is the key basis (Lim et al.'s X, the photon simulator's Z), 1 the test
//! basis.

use kagi_keymat::its_mac::{self, MacKey, Tag, MAC_KEY_LEN, TAG_LEN};
use kagi_keymat::Key;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroize;

use crate::bits::BitVec;
use crate::cascade::{self, CascadeAlice, CascadeBob, CascadeError, CascadeParams, Layout, Query};
use crate::finite_key::{BlockCounts, DecoySettings, FiniteKeyError};
use crate::ldpc::{LdpcAlice, LdpcBob, LdpcError, LdpcParams, Plan as LdpcPlan};
use crate::sifting;
use crate::toeplitz::{self, ToeplitzError};
use crate::wire::{DecodeError, Reader, Writer};

/// Bytes of one-time pad one message tag consumes.
pub const PAD_LEN: usize = 16;
/// Bits disclosed by the verification hash (counted as leakage).
pub const VERIFY_BITS: u64 = 8 * TAG_LEN as u64;
const MAGIC: [u8; 2] = *b"KP";
const VERSION: u8 = 2;
/// Largest block accepted from the wire (pulses, detections, bits).
const MAX_ITEMS: usize = 1 << 31;

/// Which error-correction method a block uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reconciliation {
    /// Cascade with these parameters.
    Cascade(CascadeParams),
    /// Rate-adaptive (blind) LDPC syndrome coding with these parameters ([`crate::ldpc`]):
    /// Alice's `SiftReply` carries the syndromes of all frames; Bob answers `EcDone`, or
    /// `LdpcRetry` naming the frames that failed, which Alice answers with `LdpcReveal`.
    Ldpc(LdpcParams),
}

/// Settings both ends must share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProtocolConfig {
    /// Decoy intensities, probabilities and ε parameters.
    pub decoy: DecoySettings,
    /// Error-correction method.
    pub reconciliation: Reconciliation,
    /// Threads for privacy amplification.
    pub threads: usize,
}

/// Why a block produced no key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// A message failed authentication (altered, forged, or tagged with the wrong pad).
    #[error("message authentication failed")]
    BadTag,
    /// A message arrived out of order, replayed, from the wrong side or for another block.
    #[error("unexpected message: {0}")]
    Sequence(&'static str),
    /// The authentication key pool ran dry.
    #[error("authentication key exhausted: need {need} bytes, have {have}")]
    AuthKeyExhausted {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer aborted the block.
    #[error("peer aborted: {0}")]
    PeerAbort(String),
    /// Parameter estimation leaves no secret key (error rate too high or block too small).
    #[error("no secret key: {0}")]
    NoKey(String),
    /// Reconciled keys differ (caught by the verification hash).
    #[error("verification hash mismatch: keys differ after reconciliation")]
    VerificationFailed,
    /// Cascade input error.
    #[error(transparent)]
    Cascade(#[from] CascadeError),
    /// LDPC reconciliation error (including frames that failed to decode).
    #[error(transparent)]
    Ldpc(#[from] LdpcError),
    /// Privacy amplification argument error.
    #[error(transparent)]
    Toeplitz(#[from] ToeplitzError),
    /// Finite-key settings error.
    #[error(transparent)]
    FiniteKey(#[from] FiniteKeyError),
    /// Local input inconsistent (lengths of the raw records).
    #[error("bad input: {0}")]
    BadInput(&'static str),
    /// A message arrived after the block finished.
    #[error("block already finished")]
    Finished,
}

/// The link's authentication key: a long-term hash key and a pool of one-time pads.
///
/// Both ends hold identical pools and consume pads in the same order; [`AuthKeyPool::replenish`]
/// adds pads taken from freshly produced secret key.
#[derive(Debug)]
pub struct AuthKeyPool {
    hash_key: Key,
    pads: Key,
    spent: u64,
}

impl AuthKeyPool {
    /// A pool from pre-shared key: the first 16 bytes are the hash key, the rest pads.
    ///
    /// # Errors
    /// [`ProtocolError::AuthKeyExhausted`] if fewer than 16 bytes are given.
    pub fn new(mut initial: Key) -> Result<Self, ProtocolError> {
        if initial.len() < 16 {
            return Err(ProtocolError::AuthKeyExhausted {
                need: 16,
                have: initial.len(),
            });
        }
        let hash_key = initial.take_front(16);
        Ok(Self {
            hash_key,
            pads: initial,
            spent: 0,
        })
    }

    /// Pad bytes available.
    pub fn available(&self) -> usize {
        self.pads.len()
    }

    /// Pad bytes spent since creation.
    pub fn spent_bytes(&self) -> u64 {
        self.spent
    }

    /// The unused pads (what was left plus what was replenished), ending the pool; a runtime
    /// that reserves pads per block keeps them for later blocks.
    pub fn into_pads(mut self) -> Key {
        std::mem::replace(&mut self.pads, Key::zeroed(0))
    }

    /// Adds pad bytes (from produced secret key).
    pub fn replenish(&mut self, key: Key) {
        self.pads.extend_from(&key);
    }

    fn next_mac_key(&mut self) -> Result<MacKey, ProtocolError> {
        if self.pads.len() < PAD_LEN {
            return Err(ProtocolError::AuthKeyExhausted {
                need: PAD_LEN,
                have: self.pads.len(),
            });
        }
        let pad = self.pads.take_front(PAD_LEN);
        self.spent += PAD_LEN as u64;
        let mut kb = [0u8; MAC_KEY_LEN];
        kb[..16].copy_from_slice(self.hash_key.expose());
        kb[16..].copy_from_slice(pad.expose());
        let mk = MacKey::from_bytes(&kb).map_err(|_| ProtocolError::BadInput("mac key length"));
        kb.zeroize();
        mk
    }
}

/// Alice's raw records for the pulses of one block.
#[derive(Debug, Clone, Default)]
pub struct AliceRaw {
    /// Intensity class per pulse: 0 signal (μ1), 1 decoy (μ2), 2 vacuum/weak (μ3).
    pub intensity: Vec<u8>,
    /// Basis per pulse (0 key basis, 1 test basis).
    pub basis: BitVec,
    /// Bit per pulse.
    pub bit: BitVec,
}

/// Bob's raw records for the pulses of one block: only detections.
#[derive(Debug, Clone, Default)]
pub struct BobRaw {
    /// Number of pulses in the block.
    pub pulses: usize,
    /// Detected pulse indices (ascending, < `pulses`).
    pub detected: Vec<u32>,
    /// Bob's basis per detection.
    pub basis: BitVec,
    /// Bob's bit per detection.
    pub bit: BitVec,
}

/// What one block produced, as seen by one end.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockStats {
    /// Pulses in the block.
    pub pulses: u64,
    /// Bob's detections.
    pub detections: u64,
    /// Sifted key-basis bits n_K (the reconciled length).
    pub sifted_bits: u64,
    /// Test-basis error rate (both ends know it).
    pub qber_test: f64,
    /// Key-basis error rate found by reconciliation (Bob's end only; `None` at Alice).
    pub qber_key: Option<f64>,
    /// Bits disclosed by error correction.
    pub leaked_ec_bits: u64,
    /// Reconciliation efficiency f = leaked / (n_K h(QBER)) (Bob's end only).
    pub ec_efficiency: Option<f64>,
    /// Length from the finite-key formula (before replenishing the authentication pool).
    pub pa_output_bits: u64,
    /// Secret key delivered after replenishing the authentication pool.
    pub secret_bits: u64,
    /// Messages exchanged in the block (both directions).
    pub messages: u64,
    /// Bytes exchanged in the block (both directions, with framing and tags).
    pub bytes: u64,
    /// Authentication key spent on the block's messages, in bits.
    pub auth_key_bits: u64,
    /// Single-photon phase-error bound φ used for ℓ.
    pub phase_error_bound: f64,
    /// Secrecy parameter of the key.
    pub eps_sec: f64,
}

/// The end state of a block at one end.
#[derive(Debug)]
pub enum Outcome {
    /// Identical secret key at both ends (when both report `Key`).
    Key {
        /// The secret key (delivered part, after replenishing the authentication pool).
        key: Key,
        /// Block statistics.
        stats: BlockStats,
    },
    /// No key from this block.
    Aborted(ProtocolError),
}

/// Per-block framing and authentication state of one end.
#[derive(Debug)]
struct Framer {
    block_id: u64,
    /// This end's direction byte: 0 Bob→Alice, 1 Alice→Bob.
    dir: u8,
    next_seq: u32,
    messages: u64,
    bytes: u64,
}

impl Framer {
    fn new(block_id: u64, dir: u8) -> Self {
        Self {
            block_id,
            dir,
            next_seq: 0,
            messages: 0,
            bytes: 0,
        }
    }

    fn seal(&mut self, pool: &mut AuthKeyPool, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mk = pool.next_mac_key()?;
        let mut w = Writer::default();
        w.buf.extend_from_slice(&MAGIC);
        w.u8(VERSION);
        w.u8(self.dir);
        w.u64(self.block_id);
        w.u32(self.next_seq);
        w.buf.extend_from_slice(payload);
        let t = its_mac::tag(mk, &w.buf);
        w.buf.extend_from_slice(&t.0);
        self.next_seq += 1;
        self.messages += 1;
        self.bytes += w.buf.len() as u64;
        Ok(w.buf)
    }

    fn open<'a>(
        &mut self,
        pool: &mut AuthKeyPool,
        frame: &'a [u8],
    ) -> Result<&'a [u8], ProtocolError> {
        const HDR: usize = 2 + 1 + 1 + 8 + 4;
        if frame.len() < HDR + TAG_LEN {
            return Err(DecodeError("short frame").into());
        }
        let (body, tag) = frame.split_at(frame.len() - TAG_LEN);
        let mk = pool.next_mac_key()?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.messages += 1;
        self.bytes += frame.len() as u64;
        if !its_mac::verify(mk, body, &Tag(t)) {
            return Err(ProtocolError::BadTag);
        }
        let mut r = Reader::new(body);
        if r.u8()? != MAGIC[0] || r.u8()? != MAGIC[1] || r.u8()? != VERSION {
            return Err(DecodeError("bad magic or version").into());
        }
        if r.u8()? == self.dir {
            return Err(ProtocolError::Sequence("reflected message"));
        }
        if r.u64()? != self.block_id {
            return Err(ProtocolError::Sequence("message for another block"));
        }
        if r.u32()? != self.next_seq {
            return Err(ProtocolError::Sequence("replayed or reordered message"));
        }
        self.next_seq += 1;
        Ok(&body[HDR..])
    }
}

// Message type bytes.
const T_SIFT: u8 = 1;
const T_SIFT_REPLY: u8 = 2;
const T_QUERIES: u8 = 3;
const T_ANSWERS: u8 = 4;
const T_EC_DONE: u8 = 5;
const T_VERIFY: u8 = 6;
const T_CONFIRM: u8 = 7;
const T_ABORT: u8 = 8;
const T_LDPC_RETRY: u8 = 9;
const T_LDPC_REVEAL: u8 = 10;

/// A list of LDPC frame indices (count, then each index).
fn read_frame_list(r: &mut Reader<'_>) -> Result<Vec<u32>, ProtocolError> {
    let n = r.var()? as usize;
    let mut v = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let i = r.var()?;
        v.push(u32::try_from(i).map_err(|_| DecodeError("frame index"))?);
    }
    Ok(v)
}

fn abort_payload(reason: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(T_ABORT);
    w.bytes(reason.as_bytes());
    w.buf
}

fn peer_abort(r: &mut Reader<'_>) -> ProtocolError {
    match r.bytes(1024) {
        Ok(b) => ProtocolError::PeerAbort(String::from_utf8_lossy(b).into_owned()),
        Err(e) => e.into(),
    }
}

/// Leaked bits and key length for the block, identical at both ends.
fn secret_length(
    cfg: &ProtocolConfig,
    counts: &BlockCounts,
    leaked_ec: u64,
) -> Result<(u64, f64), ProtocolError> {
    let kl = cfg.decoy.key_length(counts, leaked_ec + VERIFY_BITS)?;
    Ok((kl.bits / 8 * 8, kl.phi_k))
}

fn qber_of(counts: &BlockCounts) -> f64 {
    let n: u64 = counts.n_test.iter().sum();
    let m: u64 = counts.m_test.iter().sum();
    if n == 0 {
        0.0
    } else {
        m as f64 / n as f64
    }
}

/// Cascade block sizes need a QBER estimate; use the test basis, never below 0.5 %.
fn cascade_qber(counts: &BlockCounts) -> f64 {
    qber_of(counts).max(0.005)
}

enum AliceState {
    AwaitSift,
    Cascade {
        cascade: CascadeAlice,
        counts: BlockCounts,
        n_key: usize,
        key: BitVec,
        answered: u64,
        top: u64,
    },
    Ldpc {
        ldpc: LdpcAlice,
        counts: BlockCounts,
        n_key: usize,
        key: BitVec,
    },
    AwaitConfirm {
        /// The secret key once privacy amplification has run ([`Alice::work`]).
        key: Option<Key>,
        /// Privacy amplification still to run: seed, reconciled key, output length.
        pending: Option<Box<PendingPa>>,
        stats: BlockStats,
    },
    Done,
}

/// Alice's privacy amplification, deferred until after her `Verify` frame is sent.
struct PendingPa {
    seed: BitVec,
    key: BitVec,
    ell: usize,
}

impl PendingPa {
    fn run(self, threads: usize) -> Result<Key, ProtocolError> {
        let out = toeplitz::toeplitz_hash_with(
            &self.seed,
            &self.key,
            self.ell,
            toeplitz::Method::Auto,
            threads,
        )?;
        Ok(Key::from_vec(out.to_bytes()))
    }
}

/// Alice's end of one block.
pub struct Alice {
    cfg: ProtocolConfig,
    raw: AliceRaw,
    framer: Framer,
    state: AliceState,
    rng: ChaCha20Rng,
    outcome: Option<Outcome>,
}

impl std::fmt::Debug for Alice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alice")
            .field("block_id", &self.framer.block_id)
            .finish_non_exhaustive()
    }
}

impl Alice {
    /// Alice's end for block `block_id` with her records; `rng_seed` seeds her public random
    /// choices (Cascade permutation seed, hash key, Toeplitz seed) — in production pass fresh
    /// entropy.
    ///
    /// # Errors
    /// [`ProtocolError::BadInput`] if the record lengths differ.
    pub fn new(
        cfg: ProtocolConfig,
        block_id: u64,
        raw: AliceRaw,
        rng_seed: [u8; 32],
    ) -> Result<Self, ProtocolError> {
        if raw.basis.len() != raw.intensity.len() || raw.bit.len() != raw.intensity.len() {
            return Err(ProtocolError::BadInput("Alice's records differ in length"));
        }
        cfg.decoy.validate()?;
        Ok(Self {
            cfg,
            raw,
            framer: Framer::new(block_id, 1),
            state: AliceState::AwaitSift,
            rng: ChaCha20Rng::from_seed(rng_seed),
            outcome: None,
        })
    }

    /// The block's result once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Takes the result once finished.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    /// Runs local work that [`Alice::handle`] deferred (privacy amplification of the
    /// reconciled key after the `Verify` frame). Call it after sending the frame `handle`
    /// returned, so that it overlaps Bob's hashing; if it is not called, `handle` does the work
    /// when Bob's confirmation arrives. Returns whether there was work. Does nothing once the
    /// block has finished.
    pub fn work(&mut self) -> bool {
        let AliceState::AwaitConfirm { key, pending, .. } = &mut self.state else {
            return false;
        };
        let Some(p) = pending.take() else {
            return false;
        };
        match p.run(self.cfg.threads) {
            Ok(k) => *key = Some(k),
            Err(e) => {
                self.state = AliceState::Done;
                self.outcome = Some(Outcome::Aborted(e));
            }
        }
        true
    }

    /// Handles one frame from Bob; returns the reply frame, if any. On error the block is
    /// aborted (the outcome says why) and an abort frame for Bob may be returned.
    pub fn handle(&mut self, pool: &mut AuthKeyPool, frame: &[u8]) -> Option<Vec<u8>> {
        if self.outcome.is_some() {
            return None;
        }
        match self.step(pool, frame) {
            Ok(reply) => reply,
            Err(e) => {
                let reply = match &e {
                    ProtocolError::PeerAbort(_) | ProtocolError::AuthKeyExhausted { .. } => None,
                    other => self
                        .framer
                        .seal(pool, &abort_payload(&other.to_string()))
                        .ok(),
                };
                self.state = AliceState::Done;
                self.outcome = Some(Outcome::Aborted(e));
                reply
            }
        }
    }

    fn step(
        &mut self,
        pool: &mut AuthKeyPool,
        frame: &[u8],
    ) -> Result<Option<Vec<u8>>, ProtocolError> {
        let payload = self.framer.open(pool, frame)?;
        let mut r = Reader::new(payload);
        let t = r.u8()?;
        if t == T_ABORT {
            return Err(peer_abort(&mut r));
        }
        let state = std::mem::replace(&mut self.state, AliceState::Done);
        match (state, t) {
            (AliceState::AwaitSift, T_SIFT) => self.on_sift(pool, &mut r).map(Some),
            (
                AliceState::Cascade {
                    cascade,
                    counts,
                    n_key,
                    key,
                    mut answered,
                    top,
                },
                T_QUERIES,
            ) => {
                let nq = r.var()? as usize;
                let mut qs = Vec::with_capacity(nq.min(1 << 20));
                for _ in 0..nq {
                    let pass = r.u8()?;
                    let lo = r.var()? as u32;
                    let hi = r.var()? as u32;
                    qs.push(Query { pass, lo, hi });
                }
                r.finish()?;
                let ans = cascade.answer(&qs)?;
                answered += qs.len() as u64;
                let mut w = Writer::default();
                w.u8(T_ANSWERS);
                w.bits(&ans);
                let out = self.framer.seal(pool, &w.buf)?;
                self.state = AliceState::Cascade {
                    cascade,
                    counts,
                    n_key,
                    key,
                    answered,
                    top,
                };
                Ok(Some(out))
            }
            (
                AliceState::Cascade {
                    counts,
                    n_key,
                    key,
                    answered,
                    top,
                    ..
                },
                T_EC_DONE,
            ) => {
                r.finish()?;
                self.on_ec_done(pool, counts, n_key, key, answered + top)
                    .map(Some)
            }
            (
                AliceState::Ldpc {
                    mut ldpc,
                    counts,
                    n_key,
                    key,
                },
                T_LDPC_RETRY,
            ) => {
                let frames = read_frame_list(&mut r)?;
                r.finish()?;
                let bits = ldpc.reveal(&frames)?;
                let mut w = Writer::default();
                w.u8(T_LDPC_REVEAL);
                w.bits(&bits);
                let out = self.framer.seal(pool, &w.buf)?;
                self.state = AliceState::Ldpc {
                    ldpc,
                    counts,
                    n_key,
                    key,
                };
                Ok(Some(out))
            }
            (
                AliceState::Ldpc {
                    ldpc,
                    counts,
                    n_key,
                    key,
                },
                T_EC_DONE,
            ) => {
                r.finish()?;
                let leaked = ldpc.leaked_bits();
                self.on_ec_done(pool, counts, n_key, key, leaked).map(Some)
            }
            (
                AliceState::AwaitConfirm {
                    key,
                    pending,
                    stats,
                },
                T_CONFIRM,
            ) => {
                let ok = r.u8()? == 1;
                r.finish()?;
                if !ok {
                    return Err(ProtocolError::VerificationFailed);
                }
                let key = match (key, pending) {
                    (Some(k), _) => k,
                    (None, Some(p)) => p.run(self.cfg.threads)?,
                    (None, None) => return Err(ProtocolError::BadInput("no key to amplify")),
                };
                let stats = BlockStats {
                    messages: self.framer.messages,
                    bytes: self.framer.bytes,
                    ..stats
                };
                self.outcome = Some(finish_key(pool, key, stats));
                Ok(None)
            }
            (AliceState::Done, _) => Err(ProtocolError::Finished),
            _ => Err(ProtocolError::Sequence("unexpected message type")),
        }
    }

    fn on_sift(
        &mut self,
        pool: &mut AuthKeyPool,
        r: &mut Reader<'_>,
    ) -> Result<Vec<u8>, ProtocolError> {
        let sifting::AliceSift {
            basis: a_basis,
            counts,
            key,
        } = sifting::alice_sift(r, &self.raw)?;
        let n_key = key.len();
        // Early parameter estimation: with no leakage at all, is there any key?
        let (best, _) = secret_length(&self.cfg, &counts, 0)?;
        if n_key < 64 || best == 0 {
            return Err(ProtocolError::NoKey(format!(
                "test-basis QBER {:.4} over {} sifted bits leaves no finite-key length",
                qber_of(&counts),
                n_key
            )));
        }
        let mut w = Writer::default();
        w.u8(T_SIFT_REPLY);
        w.bits(&a_basis);
        for c in [counts.n_key, counts.n_test, counts.m_test] {
            for v in c {
                w.var(v);
            }
        }
        let cp = match self.cfg.reconciliation {
            Reconciliation::Cascade(cp) => cp,
            Reconciliation::Ldpc(lp) => {
                let plan = LdpcPlan::new(n_key, qber_of(&counts), &lp)?;
                let (ldpc, synd) = LdpcAlice::new(&key, plan)?;
                w.bits(&synd);
                let out = self.framer.seal(pool, &w.buf)?;
                self.state = AliceState::Ldpc {
                    ldpc,
                    counts,
                    n_key,
                    key,
                };
                return Ok(out);
            }
        };
        let ks = cascade::block_sizes(n_key, cascade_qber(&counts), &cp);
        let seed = self.rng.next_u64();
        let layout = Layout::get(n_key, &ks, seed);
        let ca = CascadeAlice::new(&key, layout);
        let top = ca.top_parities();
        w.u64(seed);
        w.var(ks.len() as u64);
        for &k in &ks {
            w.var(k as u64);
        }
        w.bits(&top);
        let out = self.framer.seal(pool, &w.buf)?;
        self.state = AliceState::Cascade {
            cascade: ca,
            counts,
            n_key,
            key,
            answered: 0,
            top: top.len() as u64,
        };
        Ok(out)
    }

    fn on_ec_done(
        &mut self,
        pool: &mut AuthKeyPool,
        counts: BlockCounts,
        n_key: usize,
        key: BitVec,
        leaked: u64,
    ) -> Result<Vec<u8>, ProtocolError> {
        let (ell, phi) = secret_length(&self.cfg, &counts, leaked)?;
        if ell == 0 {
            let kl = self.cfg.decoy.key_length(&counts, leaked + VERIFY_BITS)?;
            return Err(ProtocolError::NoKey(format!(
                "finite-key length is 0 after {leaked} bits of error-correction leakage \
                 (n_K = {n_key}, s_K0 >= {:.0}, s_K1 >= {:.0}, phase error <= {:.4})",
                kl.s_k0, kl.s_k1, kl.phi_k
            )));
        }
        let mut hk = [0u8; MAC_KEY_LEN];
        self.rng.fill_bytes(&mut hk);
        let vtag = its_mac::tag(
            MacKey::from_bytes(&hk).map_err(|_| ProtocolError::BadInput("hash key"))?,
            &key.to_bytes(),
        );
        let seed = BitVec::random(toeplitz::seed_len(n_key, ell as usize), &mut self.rng);
        let mut w = Writer::default();
        w.u8(T_VERIFY);
        w.buf.extend_from_slice(&hk);
        w.buf.extend_from_slice(&vtag.0);
        w.var(ell);
        w.bits(&seed);
        let frame = self.framer.seal(pool, &w.buf)?;
        let stats = BlockStats {
            pulses: self.raw.intensity.len() as u64,
            detections: 0,
            sifted_bits: n_key as u64,
            qber_test: qber_of(&counts),
            qber_key: None,
            leaked_ec_bits: leaked,
            ec_efficiency: None,
            pa_output_bits: ell,
            secret_bits: 0,
            messages: 0,
            bytes: 0,
            auth_key_bits: 0,
            phase_error_bound: phi,
            eps_sec: self.cfg.decoy.eps_sec,
        };
        // Privacy amplification waits for `work` (or the confirmation): the caller can send
        // the seed first, so that Bob hashes while Alice does.
        self.state = AliceState::AwaitConfirm {
            key: None,
            pending: Some(Box::new(PendingPa {
                seed,
                key,
                ell: ell as usize,
            })),
            stats,
        };
        Ok(frame)
    }
}

/// Replenishes the authentication pool from the new key and delivers the rest.
fn finish_key(pool: &mut AuthKeyPool, mut key: Key, mut stats: BlockStats) -> Outcome {
    let spent = stats.messages * PAD_LEN as u64;
    stats.auth_key_bits = spent * 8;
    if (key.len() as u64) < spent {
        let have = key.len();
        pool.replenish(key);
        return Outcome::Aborted(ProtocolError::NoKey(format!(
            "block produced {have} bytes, less than the {spent} bytes of authentication key it spent"
        )));
    }
    pool.replenish(key.take_front(spent as usize));
    stats.secret_bits = key.len() as u64 * 8;
    Outcome::Key { key, stats }
}

enum BobState {
    Start,
    AwaitSiftReply,
    Cascade {
        cascade: Box<CascadeBob>,
        counts: BlockCounts,
    },
    Ldpc {
        ldpc: Box<LdpcBob>,
        counts: BlockCounts,
        /// Frames named in the last `LdpcRetry`.
        pending: Vec<u32>,
    },
    AwaitVerify {
        key: BitVec,
        counts: BlockCounts,
        leaked: u64,
        corrected: u64,
    },
    Done,
}

/// Bob's end of one block.
pub struct Bob {
    cfg: ProtocolConfig,
    raw: BobRaw,
    framer: Framer,
    state: BobState,
    outcome: Option<Outcome>,
}

impl std::fmt::Debug for Bob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bob")
            .field("block_id", &self.framer.block_id)
            .finish_non_exhaustive()
    }
}

impl Bob {
    /// Bob's end for block `block_id`.
    ///
    /// # Errors
    /// [`ProtocolError::BadInput`] if the records are inconsistent.
    pub fn new(cfg: ProtocolConfig, block_id: u64, raw: BobRaw) -> Result<Self, ProtocolError> {
        if raw.basis.len() != raw.detected.len() || raw.bit.len() != raw.detected.len() {
            return Err(ProtocolError::BadInput("Bob's records differ in length"));
        }
        if raw.detected.windows(2).any(|w| w[0] >= w[1])
            || raw
                .detected
                .last()
                .is_some_and(|&d| d as usize >= raw.pulses)
        {
            return Err(ProtocolError::BadInput(
                "detections must be ascending pulse indices",
            ));
        }
        cfg.decoy.validate()?;
        Ok(Self {
            cfg,
            raw,
            framer: Framer::new(block_id, 0),
            state: BobState::Start,
            outcome: None,
        })
    }

    /// The block's result once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Takes the result once finished.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    /// The first frame of the block (Bob speaks first).
    pub fn start(&mut self, pool: &mut AuthKeyPool) -> Option<Vec<u8>> {
        if !matches!(self.state, BobState::Start) {
            return None;
        }
        let mut w = Writer::default();
        w.u8(T_SIFT);
        sifting::write_sift(&mut w, &self.raw);
        match self.framer.seal(pool, &w.buf) {
            Ok(f) => {
                self.state = BobState::AwaitSiftReply;
                Some(f)
            }
            Err(e) => {
                self.state = BobState::Done;
                self.outcome = Some(Outcome::Aborted(e));
                None
            }
        }
    }

    /// Handles one frame from Alice; returns the reply, if any (see [`Alice::handle`]).
    pub fn handle(&mut self, pool: &mut AuthKeyPool, frame: &[u8]) -> Option<Vec<u8>> {
        if self.outcome.is_some() {
            return None;
        }
        match self.step(pool, frame) {
            Ok(reply) => reply,
            Err(e) => {
                let reply = match &e {
                    ProtocolError::PeerAbort(_) | ProtocolError::AuthKeyExhausted { .. } => None,
                    ProtocolError::VerificationFailed => {
                        let mut w = Writer::default();
                        w.u8(T_CONFIRM);
                        w.u8(0);
                        self.framer.seal(pool, &w.buf).ok()
                    }
                    other => self
                        .framer
                        .seal(pool, &abort_payload(&other.to_string()))
                        .ok(),
                };
                self.state = BobState::Done;
                self.outcome = Some(Outcome::Aborted(e));
                reply
            }
        }
    }

    fn step(
        &mut self,
        pool: &mut AuthKeyPool,
        frame: &[u8],
    ) -> Result<Option<Vec<u8>>, ProtocolError> {
        let payload = self.framer.open(pool, frame)?;
        let mut r = Reader::new(payload);
        let t = r.u8()?;
        if t == T_ABORT {
            return Err(peer_abort(&mut r));
        }
        let state = std::mem::replace(&mut self.state, BobState::Done);
        match (state, t) {
            (BobState::AwaitSiftReply, T_SIFT_REPLY) => self.on_sift_reply(pool, &mut r).map(Some),
            (
                BobState::Cascade {
                    mut cascade,
                    counts,
                },
                T_ANSWERS,
            ) => {
                let ans = r.bits(MAX_ITEMS)?;
                r.finish()?;
                cascade.answer(&ans)?;
                self.cascade_step(pool, cascade, counts).map(Some)
            }
            (
                BobState::Ldpc {
                    mut ldpc,
                    counts,
                    pending,
                },
                T_LDPC_REVEAL,
            ) => {
                let bits = r.bits(MAX_ITEMS)?;
                r.finish()?;
                ldpc.apply_reveal(&pending, &bits)?;
                self.ldpc_step(pool, ldpc, counts).map(Some)
            }
            (
                BobState::AwaitVerify {
                    key,
                    counts,
                    leaked,
                    corrected,
                },
                T_VERIFY,
            ) => self
                .on_verify(pool, &mut r, key, counts, leaked, corrected)
                .map(Some),
            (BobState::Done, _) => Err(ProtocolError::Finished),
            _ => Err(ProtocolError::Sequence("unexpected message type")),
        }
    }

    fn on_sift_reply(
        &mut self,
        pool: &mut AuthKeyPool,
        r: &mut Reader<'_>,
    ) -> Result<Vec<u8>, ProtocolError> {
        let nd = self.raw.detected.len();
        let a_basis = r.bits(nd)?;
        if a_basis.len() != nd {
            return Err(DecodeError("basis count").into());
        }
        let mut counts = BlockCounts::default();
        for c in [&mut counts.n_key, &mut counts.n_test, &mut counts.m_test] {
            for v in c.iter_mut() {
                *v = r.var()?;
            }
        }
        if let Reconciliation::Ldpc(lp) = self.cfg.reconciliation {
            let synd = r.bits(MAX_ITEMS)?;
            r.finish()?;
            let (key, counts) = self.sifted_key(&a_basis, counts)?;
            let plan = LdpcPlan::new(key.len(), qber_of(&counts), &lp)?;
            let ldpc = LdpcBob::new(key, plan, &synd)?;
            return self.ldpc_step(pool, Box::new(ldpc), counts);
        }
        let seed = r.u64()?;
        let np = r.var()? as usize;
        if np == 0 || np > 64 {
            return Err(DecodeError("pass count").into());
        }
        let mut ks = Vec::with_capacity(np);
        for _ in 0..np {
            let k = r.var()? as usize;
            if k == 0 {
                return Err(DecodeError("block size").into());
            }
            ks.push(k);
        }
        let top = r.bits(MAX_ITEMS)?;
        r.finish()?;
        let (key, counts) = self.sifted_key(&a_basis, counts)?;
        let n_key = key.len();
        if ks.iter().any(|&k| k > n_key.max(1)) {
            return Err(DecodeError("block size above key length").into());
        }
        let layout = Layout::get(n_key, &ks, seed);
        let params = match self.cfg.reconciliation {
            Reconciliation::Cascade(cp) => cp,
            Reconciliation::Ldpc(_) => CascadeParams::default(),
        };
        let cb = CascadeBob::new(key, layout, &top, &params)?;
        self.cascade_step(pool, Box::new(cb), counts)
    }

    /// Bob's sifted key, after checking Alice's counts against it.
    fn sifted_key(
        &self,
        a_basis: &BitVec,
        counts: BlockCounts,
    ) -> Result<(BitVec, BlockCounts), ProtocolError> {
        let (key, n_test) = sifting::bob_sift(&self.raw, a_basis);
        if counts.n_key.iter().sum::<u64>() != key.len() as u64
            || counts.n_test.iter().sum::<u64>() != n_test
            || counts.m_test.iter().zip(&counts.n_test).any(|(m, n)| m > n)
        {
            return Err(DecodeError("counts differ from the sifted bits").into());
        }
        Ok((key, counts))
    }

    /// Decodes the LDPC frames not yet decoded; asks for a reveal round, reports success,
    /// or aborts when the rounds are spent.
    fn ldpc_step(
        &mut self,
        pool: &mut AuthKeyPool,
        mut ldpc: Box<LdpcBob>,
        counts: BlockCounts,
    ) -> Result<Vec<u8>, ProtocolError> {
        let failed = ldpc.decode(self.cfg.threads);
        let mut w = Writer::default();
        if failed.is_empty() {
            let (key, st) = ldpc.finish()?;
            w.u8(T_EC_DONE);
            let f = self.framer.seal(pool, &w.buf)?;
            self.state = BobState::AwaitVerify {
                key,
                counts,
                leaked: st.leaked_bits,
                corrected: st.corrected as u64,
            };
            return Ok(f);
        }
        if !ldpc.can_retry() {
            return Err(ldpc
                .finish()
                .err()
                .unwrap_or(LdpcError::Reveal("no frame failed"))
                .into());
        }
        w.u8(T_LDPC_RETRY);
        w.var(failed.len() as u64);
        for &i in &failed {
            w.var(i as u64);
        }
        let f = self.framer.seal(pool, &w.buf)?;
        self.state = BobState::Ldpc {
            ldpc,
            counts,
            pending: failed,
        };
        Ok(f)
    }

    fn cascade_step(
        &mut self,
        pool: &mut AuthKeyPool,
        mut cascade: Box<CascadeBob>,
        counts: BlockCounts,
    ) -> Result<Vec<u8>, ProtocolError> {
        let mut w = Writer::default();
        match cascade.next_queries() {
            Some(qs) => {
                w.u8(T_QUERIES);
                w.var(qs.len() as u64);
                for q in &qs {
                    w.u8(q.pass);
                    w.var(q.lo as u64);
                    w.var(q.hi as u64);
                }
                let f = self.framer.seal(pool, &w.buf)?;
                self.state = BobState::Cascade { cascade, counts };
                Ok(f)
            }
            None => {
                let (key, st) = cascade.finish();
                w.u8(T_EC_DONE);
                let f = self.framer.seal(pool, &w.buf)?;
                self.state = BobState::AwaitVerify {
                    key,
                    counts,
                    leaked: st.leaked_bits as u64,
                    corrected: st.corrected as u64,
                };
                Ok(f)
            }
        }
    }

    fn on_verify(
        &mut self,
        pool: &mut AuthKeyPool,
        r: &mut Reader<'_>,
        key: BitVec,
        counts: BlockCounts,
        leaked: u64,
        corrected: u64,
    ) -> Result<Vec<u8>, ProtocolError> {
        let mut hk = [0u8; MAC_KEY_LEN];
        hk.copy_from_slice(r.fixed(MAC_KEY_LEN)?);
        let mut vt = [0u8; TAG_LEN];
        vt.copy_from_slice(r.fixed(TAG_LEN)?);
        let ell = r.var()?;
        let n_key = key.len();
        let seed = r.bits(MAX_ITEMS)?;
        r.finish()?;
        let (mine, phi) = secret_length(&self.cfg, &counts, leaked)?;
        if mine != ell {
            return Err(ProtocolError::Sequence(
                "secret length differs from Bob's computation",
            ));
        }
        let ok = its_mac::verify(
            MacKey::from_bytes(&hk).map_err(|_| ProtocolError::BadInput("hash key"))?,
            &key.to_bytes(),
            &Tag(vt),
        );
        if !ok {
            return Err(ProtocolError::VerificationFailed);
        }
        let out_bits = toeplitz::toeplitz_hash_with(
            &seed,
            &key,
            ell as usize,
            toeplitz::Method::Auto,
            self.cfg.threads,
        )?;
        let mut w = Writer::default();
        w.u8(T_CONFIRM);
        w.u8(1);
        let frame = self.framer.seal(pool, &w.buf)?;
        let q = corrected as f64 / n_key.max(1) as f64;
        let h = crate::cascade::h2(q);
        let stats = BlockStats {
            pulses: self.raw.pulses as u64,
            detections: self.raw.detected.len() as u64,
            sifted_bits: n_key as u64,
            qber_test: qber_of(&counts),
            qber_key: Some(q),
            leaked_ec_bits: leaked,
            ec_efficiency: (h > 0.0).then(|| leaked as f64 / (n_key as f64 * h)),
            pa_output_bits: ell,
            secret_bits: 0,
            messages: self.framer.messages,
            bytes: self.framer.bytes,
            auth_key_bits: 0,
            phase_error_bound: phi,
            eps_sec: self.cfg.decoy.eps_sec,
        };
        self.outcome = Some(finish_key(pool, Key::from_vec(out_bits.to_bytes()), stats));
        Ok(frame)
    }
}

/// A classical channel between the two ends for [`run_block`]: may deliver, alter, drop,
/// duplicate or reorder frames. `index` counts frames sent so far in the block (both ways);
/// `to_alice` tells the direction. Returns the frames to deliver now, in order.
pub trait Channel {
    /// Transmits one frame.
    fn transmit(&mut self, index: usize, to_alice: bool, frame: Vec<u8>) -> Vec<Vec<u8>>;
}

/// A faithful channel.
#[derive(Debug, Default, Clone, Copy)]
pub struct PerfectChannel;

impl Channel for PerfectChannel {
    fn transmit(&mut self, _index: usize, _to_alice: bool, frame: Vec<u8>) -> Vec<Vec<u8>> {
        vec![frame]
    }
}

/// Runs one block with each end on its own thread, over in-memory queues (a faithful
/// channel), as two nodes would run it: Alice sends her seed before hashing ([`Alice::work`]),
/// so both ends' privacy amplification runs at the same time. Returns (Alice's outcome, Bob's
/// outcome), the same outcomes [`run_block`] gives with a [`PerfectChannel`].
pub fn run_block_parallel(
    alice: &mut Alice,
    bob: &mut Bob,
    pool_a: &mut AuthKeyPool,
    pool_b: &mut AuthKeyPool,
) -> (Outcome, Outcome) {
    use std::sync::mpsc;
    let (to_alice, from_bob) = mpsc::channel::<Vec<u8>>();
    let (to_bob, from_alice) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let a = s.spawn(move || {
            // Frames Bob sent before hanging up are still delivered; then `recv` fails.
            while let Ok(f) = from_bob.recv() {
                if let Some(reply) = alice.handle(pool_a, &f) {
                    // Bob may have finished already: nothing left to tell him then.
                    let _ = to_bob.send(reply);
                }
                alice.work();
                if alice.outcome().is_some() {
                    break;
                }
            }
            alice
        });
        if let Some(f) = bob.start(pool_b) {
            let _ = to_alice.send(f);
        }
        while bob.outcome().is_none() {
            let Ok(f) = from_alice.recv() else { break };
            if let Some(reply) = bob.handle(pool_b, &f) {
                let _ = to_alice.send(reply);
            }
        }
        drop(to_alice);
        let alice = a.join().expect("Alice's thread panicked");
        let stalled = || {
            Outcome::Aborted(ProtocolError::Sequence(
                "channel stalled before the block finished",
            ))
        };
        (
            alice.take_outcome().unwrap_or_else(stalled),
            bob.take_outcome().unwrap_or_else(stalled),
        )
    })
}

/// Runs one block between two ends in memory, each with its own authentication pool.
/// Returns (Alice's outcome, Bob's outcome).
pub fn run_block<C: Channel>(
    alice: &mut Alice,
    bob: &mut Bob,
    pool_a: &mut AuthKeyPool,
    pool_b: &mut AuthKeyPool,
    channel: &mut C,
) -> (Outcome, Outcome) {
    let mut index = 0usize;
    let mut to_alice: Vec<Vec<u8>> = bob.start(pool_b).into_iter().collect();
    let mut to_bob: Vec<Vec<u8>> = Vec::new();
    let mut steps = 0usize;
    while (!to_alice.is_empty() || !to_bob.is_empty()) && steps < 1 << 20 {
        steps += 1;
        for f in std::mem::take(&mut to_alice) {
            for g in channel.transmit(index, true, f) {
                if let Some(reply) = alice.handle(pool_a, &g) {
                    to_bob.push(reply);
                }
            }
            index += 1;
        }
        for f in std::mem::take(&mut to_bob) {
            for g in channel.transmit(index, false, f) {
                if let Some(reply) = bob.handle(pool_b, &g) {
                    to_alice.push(reply);
                }
            }
            index += 1;
        }
    }
    let stalled = || {
        Outcome::Aborted(ProtocolError::Sequence(
            "channel stalled before the block finished",
        ))
    };
    let a = alice.take_outcome().unwrap_or_else(stalled);
    let b = bob.take_outcome().unwrap_or_else(stalled);
    (a, b)
}
