//! One end of a photon-level QKD link as a sans-I/O state machine: block sequencing, the
//! Start / Refuse / protocol frame flow, timeouts and the pad-reservation protocol, with no I/O,
//! no clock and no OS randomness. The node drives it over its peer channel (tokio, SQLite);
//! tests and the simulator drive it under virtual time.
//!
//! Roles: Alice (transmitter) answers, Bob (receiver) starts every block. A block:
//! 1. Bob proposes a reservation of pads ([`PadLedger::propose`]), takes it durably
//!    ([`PadLedger::reserve`]), asks the driver for his records ([`Action::Simulate`]), and
//!    sends `Start` with the protocol's first message.
//! 2. Alice checks the `Start`'s control tag, then takes the same reservation or answers
//!    `Refuse` (tagged too; Bob learns from it and retries), asks for her records and answers.
//! 3. The protocol's frames alternate until both ends have an outcome. A block that ends with
//!    key keeps its unused pads (plus fresh key while segment 0 is in use) as a new segment;
//!    a failed block hands back the unused tail of its reservation ([`FAILED_BLOCK_SLACK_PADS`]).
//!
//! Time is a [`Duration`] since the driver's origin; the driver calls
//! [`LinkMachine::handle_timeout`] at [`LinkMachine::poll_timeout`].
//!
//! Restarts: the machine's state is volatile, the ledger durable. A restarted Bob's next
//! `Start` names a later block, which makes Alice give up her stale one at once. A restarted
//! Alice sends `Hello` (until she hears a `Start`) naming her ledger's last block: when that is
//! at or past Bob's current block, Alice has lost it and Bob gives it up at once instead of
//! waiting for its timeout; when it is below, Alice never got the `Start`, and Bob sends it
//! again (the same bytes, so no pad tags a second message).

pub mod frame;
pub mod ledger;
pub mod model;

use std::collections::VecDeque;
use std::time::Duration;

use kagi_keymat::Key;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::protocol::{
    Alice, AliceRaw, AuthKeyPool, BlockStats, Bob, BobRaw, Outcome, ProtocolConfig, ProtocolError,
    PAD_LEN,
};
pub use frame::{ControlKey, FrameError, LinkFrame};
pub use ledger::{MemLedger, PadLedger, Refusal, Reservation};

/// Pads a failed block keeps beyond those this end consumed; the rest of its reservation is
/// handed back.
///
/// Why three: messages alternate and each consumes one pad at both ends (to tag, to check). If
/// this end consumed `c` pads, the other end checked only messages this end sent (indices
/// below `c`), so on the honest path it is at most one message ahead: it sent message `c`.
/// Beyond that it can only check a forged message `c + 1` (a check tags nothing) and answer with
/// an abort tagged with pad `c + 2`. So no pad from `c + 3` on has tagged anything at either
/// end, and it may tag a later block's message. The two ends' counts may differ by a lost
/// message; each hands back from its own count and Bob's next proposal takes the higher
/// watermark ([`Refusal::StalePads`]), so neither needs to know the other's exact count.
pub const FAILED_BLOCK_SLACK_PADS: u64 = 3;

/// A link end's settings, identical at both ends except `alice`.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Whether this end is Alice.
    pub alice: bool,
    /// Protocol settings.
    pub protocol: ProtocolConfig,
    /// Pad bytes one block reserves.
    pub reserve_bytes: u64,
    /// Shortest time from one block's start to the next's (the source's repetition rate).
    pub min_block_time: Duration,
    /// How long Alice keeps a block without hearing from Bob.
    pub block_timeout: Duration,
    /// Bob's wait for the next message, beyond four times his own simulation time of the block.
    pub reply_grace: Duration,
    /// How often a restarted Alice repeats `Hello` until she hears a `Start`.
    pub hello_every: Duration,
    /// Bob's first wait before he sends his last message again (at least twice his simulation
    /// time; doubled after each copy): a reply lost while a connection was re-established
    /// then costs a copy, not the block.
    pub resend_every: Duration,
    /// Block numbers stay above this (what the key store already holds for the link).
    pub floor: u64,
}

/// One end's records of a block, from the driver's simulation of its device.
#[derive(Debug)]
pub enum Raw {
    /// The transmitter's records.
    Alice(AliceRaw),
    /// The detector's records.
    Bob(BobRaw),
}

/// Why a block ended without key at this end.
#[derive(Debug)]
pub enum Failure {
    /// The protocol aborted (QBER, verification, a bad tag, the peer's abort).
    Aborted(ProtocolError),
    /// The protocol could not start with these records.
    NotStarted(ProtocolError),
    /// No message from the peer in time.
    TimedOut,
    /// Alice refused the reservation.
    Refused(Refusal),
    /// The peer restarted and lost the block (its `Hello`).
    PeerRestarted,
    /// Bob started a later block.
    Superseded,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Aborted(e) => write!(f, "aborted: {e}"),
            Failure::NotStarted(e) => write!(f, "not started: {e}"),
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Refused(r) => write!(f, "reservation refused: {r}"),
            Failure::PeerRestarted => f.write_str("peer restarted"),
            Failure::Superseded => f.write_str("superseded by a later block"),
        }
    }
}

/// What happened, for logs and metrics.
#[derive(Debug)]
pub enum Note {
    /// A block ended with key at this end.
    BlockKey {
        /// Block number.
        block: u64,
        /// Its statistics.
        stats: BlockStats,
        /// Key bytes delivered.
        key_bytes: usize,
        /// Time from the block's start at this end.
        took: Duration,
    },
    /// A block ended without key at this end.
    BlockFailed {
        /// Block number.
        block: u64,
        /// Why.
        why: Failure,
        /// Pad bytes of its reservation handed back for later blocks.
        handed_back: u64,
    },
    /// This end (Alice) refused a reservation.
    Refusing {
        /// The block.
        block: u64,
        /// Why.
        refusal: Refusal,
    },
    /// No segment has room for a reservation: no more blocks.
    Exhausted,
    /// A frame was dropped: malformed, or a control frame that failed authentication.
    Rejected(FrameError),
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Send these bytes to the other end.
    Send(Vec<u8>),
    /// Simulate this end's records of `block`, then call [`LinkMachine::handle_records`].
    Simulate {
        /// Block number.
        block: u64,
    },
    /// Block `block` ended with key at this end: hand it to the key store.
    Key {
        /// Block number.
        block: u64,
        /// The key.
        key: Key,
    },
    /// Something to log.
    Note(Note),
}

/// A failure of the machine's driver-provided parts.
#[derive(Debug, thiserror::Error)]
pub enum LinkError<E: std::error::Error + 'static> {
    /// The ledger's storage failed.
    #[error(transparent)]
    Ledger(E),
    /// Records of the wrong end were given.
    #[error("records of the wrong end of the link")]
    WrongRecords,
}

/// A protocol frame's identity (to recognise copies).
fn frame_hash(frame: &[u8]) -> [u8; 32] {
    use blake2::Digest;
    blake2::Blake2b::<blake2::digest::consts::U32>::digest(frame).into()
}

/// The protocol object of a block in progress.
enum End {
    Alice(Box<Alice>),
    Bob(Box<Bob>),
}

enum Stage {
    /// Reserved; waiting for the driver's records. Alice keeps Bob's first frame.
    Simulating {
        asked: Duration,
        pads: Key,
        first: Option<Vec<u8>>,
    },
    /// Protocol running.
    Running {
        end: End,
        pool: AuthKeyPool,
        deadline: Duration,
        wait: Duration,
        /// Bob's encoded `Start`, to send again when a restarted Alice never got it.
        start: Option<Vec<u8>>,
        /// Hashes of the protocol frames received in this block (copies are not fed again).
        seen: Vec<[u8; 32]>,
        /// This end's last link frame of the block, to send again byte for byte.
        last_out: Option<Vec<u8>>,
        /// Bob: when he sends `last_out` again, and the first wait before that.
        resend_at: Option<Duration>,
        resend_base: Duration,
        resend_wait: Duration,
    },
}

struct Current {
    res: Reservation,
    t0: Duration,
    stage: Stage,
}

/// One photon link end.
pub struct LinkMachine<L: PadLedger> {
    s: LinkSettings,
    ledger: L,
    key: ControlKey,
    rng: ChaCha20Rng,
    actions: VecDeque<Action>,
    cur: Option<Current>,
    next_block_at: Option<Duration>,
    hello_due: Option<Duration>,
}

impl<L: PadLedger> std::fmt::Debug for LinkMachine<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkMachine")
            .field("alice", &self.s.alice)
            .field("block", &self.cur.as_ref().map(|c| c.res.block))
            .finish_non_exhaustive()
    }
}

type Res<L> = Result<(), LinkError<<L as PadLedger>::Error>>;

impl<L: PadLedger> LinkMachine<L> {
    /// A link end over `ledger`; `key` authenticates control frames; `rng_seed` seeds Alice's
    /// public random choices (pass fresh entropy in production).
    pub fn new(settings: LinkSettings, ledger: L, key: ControlKey, rng_seed: [u8; 32]) -> Self {
        Self {
            s: settings,
            ledger,
            key,
            rng: ChaCha20Rng::from_seed(rng_seed),
            actions: VecDeque::new(),
            cur: None,
            next_block_at: None,
            hello_due: None,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LinkSettings {
        &self.s
    }

    /// The ledger.
    pub fn ledger(&self) -> &L {
        &self.ledger
    }

    /// Ends the machine, keeping the ledger (a restart builds a new machine over it).
    pub fn into_ledger(self) -> L {
        self.ledger
    }

    /// The block in progress at this end, if any.
    pub fn current_block(&self) -> Option<u64> {
        self.cur.as_ref().map(|c| c.res.block)
    }

    /// Starts the link at `now` (after a process start or restart).
    pub fn start(&mut self, now: Duration) {
        if self.s.alice {
            self.send_hello(now);
        } else {
            self.next_block_at = Some(now);
        }
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`LinkMachine::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let block = match &self.cur {
            Some(Current {
                stage:
                    Stage::Running {
                        deadline,
                        resend_at,
                        ..
                    },
                ..
            }) => Some(resend_at.map_or(*deadline, |r| r.min(*deadline))),
            Some(_) => None,
            None => self.next_block_at,
        };
        match (block, self.hello_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs what is due at `now`: a block's timeout, Alice's `Hello`, Bob's next block.
    ///
    /// # Errors
    /// Ledger storage failures.
    pub fn handle_timeout(&mut self, now: Duration) -> Res<L> {
        if let Some(Current {
            stage: Stage::Running { deadline, .. },
            ..
        }) = &self.cur
        {
            if now >= *deadline {
                self.fail(now, Failure::TimedOut)?;
            }
        }
        if let Some(Current {
            stage:
                Stage::Running {
                    resend_at: Some(at),
                    resend_wait,
                    last_out: Some(out),
                    ..
                },
            ..
        }) = &mut self.cur
        {
            if now >= *at {
                self.actions.push_back(Action::Send(out.clone()));
                *resend_wait *= 2;
                *at = now + *resend_wait;
            }
        }
        if self.hello_due.is_some_and(|t| now >= t) {
            self.send_hello(now);
        }
        if self.cur.is_none() && self.next_block_at.is_some_and(|t| now >= t) {
            self.begin_block(now)?;
        }
        Ok(())
    }

    /// A frame from the other end.
    ///
    /// # Errors
    /// Ledger storage failures.
    pub fn handle_frame(&mut self, now: Duration, bytes: &[u8]) -> Res<L> {
        let f = match LinkFrame::decode(bytes, &self.key) {
            Ok(f) => f,
            Err(e) => {
                self.note(Note::Rejected(e));
                return Ok(());
            }
        };
        match (self.s.alice, f) {
            (true, LinkFrame::Start { res, frame }) => self.on_start(now, res, frame),
            (_, LinkFrame::Proto { block, frame }) => self.on_proto(now, block, &frame),
            (false, LinkFrame::Refuse { res, refusal }) => {
                if self.cur.as_ref().is_some_and(|c| c.res == res) {
                    self.fail(now, Failure::Refused(refusal))?;
                    self.ledger.learn(&refusal).map_err(LinkError::Ledger)?;
                    self.next_block_at = Some(now);
                }
                Ok(())
            }
            (false, LinkFrame::Hello { last_block }) => self.on_hello(now, last_block),
            // A frame only the other role sends (reflected): nothing to do.
            _ => Ok(()),
        }
    }

    /// This end's records of `block`, simulated by the driver after [`Action::Simulate`].
    ///
    /// # Errors
    /// Ledger storage failures, or records of the other end.
    pub fn handle_records(&mut self, now: Duration, block: u64, raw: Raw) -> Res<L> {
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        let Current {
            res,
            t0,
            stage: Stage::Simulating { asked, pads, first },
        } = cur
        else {
            self.cur = Some(cur);
            return Ok(());
        };
        if res.block != block {
            // Records of a block given up meanwhile.
            self.cur = Some(Current {
                res,
                t0,
                stage: Stage::Simulating { asked, pads, first },
            });
            return Ok(());
        }
        let mut pool = match AuthKeyPool::new(pads) {
            Ok(p) => p,
            Err(e) => return self.fail_block(now, res, t0, 0, Failure::NotStarted(e)),
        };
        match (raw, first) {
            (Raw::Bob(raw), None) if !self.s.alice => {
                let mut bob = match Bob::new(self.s.protocol, block, raw) {
                    Ok(b) => b,
                    Err(e) => return self.fail_block(now, res, t0, 0, Failure::NotStarted(e)),
                };
                let sim = now.saturating_sub(asked);
                let wait = self.s.reply_grace + sim * 4;
                let resend_base = self.s.resend_every.max(sim * 2);
                let start = bob.start(&mut pool).map(|frame| {
                    let bytes = LinkFrame::Start { res, frame }.encode(&self.key);
                    self.actions.push_back(Action::Send(bytes.clone()));
                    bytes
                });
                self.cur = Some(Current {
                    res,
                    t0,
                    stage: Stage::Running {
                        end: End::Bob(Box::new(bob)),
                        pool,
                        deadline: now + wait,
                        wait,
                        resend_at: start.as_ref().map(|_| now + resend_base),
                        last_out: start.clone(),
                        start,
                        seen: Vec::new(),
                        resend_base,
                        resend_wait: resend_base,
                    },
                });
                self.after_step(now)
            }
            (Raw::Alice(raw), Some(first)) if self.s.alice => {
                let mut seed = [0u8; 32];
                self.rng.fill_bytes(&mut seed);
                let alice = match Alice::new(self.s.protocol, block, raw, seed) {
                    Ok(a) => a,
                    Err(e) => return self.fail_block(now, res, t0, 0, Failure::NotStarted(e)),
                };
                let wait = self.s.block_timeout;
                self.cur = Some(Current {
                    res,
                    t0,
                    stage: Stage::Running {
                        end: End::Alice(Box::new(alice)),
                        pool,
                        deadline: now + wait,
                        wait,
                        start: None,
                        seen: Vec::new(),
                        last_out: None,
                        resend_at: None,
                        resend_base: Duration::ZERO,
                        resend_wait: Duration::ZERO,
                    },
                });
                self.step(now, &first)
            }
            _ => Err(LinkError::WrongRecords),
        }
    }

    fn note(&mut self, n: Note) {
        self.actions.push_back(Action::Note(n));
    }

    fn send(&mut self, f: &LinkFrame) {
        let bytes = f.encode(&self.key);
        self.actions.push_back(Action::Send(bytes));
    }

    fn send_hello(&mut self, now: Duration) {
        self.send(&LinkFrame::Hello {
            last_block: self.ledger.last_block(),
        });
        self.hello_due = Some(now + self.s.hello_every);
    }

    /// Bob: reserve pads for the next block and ask for records.
    fn begin_block(&mut self, now: Duration) -> Res<L> {
        self.next_block_at = None;
        let Some(res) = self.ledger.propose(self.s.reserve_bytes, self.s.floor) else {
            self.note(Note::Exhausted);
            return Ok(());
        };
        match self.ledger.reserve(res).map_err(LinkError::Ledger)? {
            Ok(pads) => {
                self.cur = Some(Current {
                    res,
                    t0: now,
                    stage: Stage::Simulating {
                        asked: now,
                        pads,
                        first: None,
                    },
                });
                self.actions
                    .push_back(Action::Simulate { block: res.block });
            }
            Err(refusal) => {
                // Not reachable with a consistent ledger (it proposed this itself); try again
                // one block time later rather than spin.
                self.note(Note::Refusing {
                    block: res.block,
                    refusal,
                });
                self.next_block_at = Some(now + self.s.min_block_time);
            }
        }
        Ok(())
    }

    /// Alice: an authenticated `Start`.
    fn on_start(&mut self, now: Duration, res: Reservation, first: Vec<u8>) -> Res<L> {
        self.hello_due = None;
        if let Some(c) = &self.cur {
            if c.res == res {
                // Bob sent it again: this block is under way (a copy of the latest frame gets
                // the latest answer again).
                return self.step(now, &first);
            }
            if res.block > c.res.block {
                // Bob gave up the block in progress (he starts a later one only then).
                self.fail(now, Failure::Superseded)?;
            }
        }
        match self.ledger.reserve(res).map_err(LinkError::Ledger)? {
            Err(refusal) => {
                self.note(Note::Refusing {
                    block: res.block,
                    refusal,
                });
                self.send(&LinkFrame::Refuse { res, refusal });
            }
            Ok(pads) => {
                self.cur = Some(Current {
                    res,
                    t0: now,
                    stage: Stage::Simulating {
                        asked: now,
                        pads,
                        first: Some(first),
                    },
                });
                self.actions
                    .push_back(Action::Simulate { block: res.block });
            }
        }
        Ok(())
    }

    /// Bob: an authenticated `Hello` from a restarted Alice.
    fn on_hello(&mut self, now: Duration, last_block: u64) -> Res<L> {
        let Some(Current {
            res,
            stage: Stage::Running { start, .. },
            ..
        }) = &self.cur
        else {
            return Ok(());
        };
        if last_block >= res.block {
            // Alice took this block's reservation before she restarted: she has lost it.
            self.fail(now, Failure::PeerRestarted)
        } else {
            // Alice never got the `Start` (it was lost with her old connection): send it
            // again, byte for byte. A replayed old Hello does no more than this; Alice drops
            // a second copy of the block she is running.
            if let Some(b) = start.clone() {
                self.actions.push_back(Action::Send(b));
            }
            Ok(())
        }
    }

    fn on_proto(&mut self, now: Duration, block: u64, frame: &[u8]) -> Res<L> {
        if self.cur.as_ref().is_some_and(|c| c.res.block == block) {
            self.step(now, frame)
        } else {
            Ok(()) // a stale block's message
        }
    }

    /// Feeds a protocol frame to the block in progress.
    fn step(&mut self, now: Duration, frame: &[u8]) -> Res<L> {
        let Some(Current {
            res,
            stage:
                Stage::Running {
                    end,
                    pool,
                    deadline,
                    wait,
                    seen,
                    last_out,
                    resend_at,
                    resend_base,
                    resend_wait,
                    ..
                },
            ..
        }) = &mut self.cur
        else {
            return Ok(());
        };
        let h = frame_hash(frame);
        if let Some(i) = seen.iter().position(|x| *x == h) {
            // A copy (sent again, or duplicated on the way): never fed to the protocol twice,
            // which would abort the block. Alice answers a copy of the latest frame with her
            // latest answer again, byte for byte: Bob sent it again because that was lost.
            if matches!(end, End::Alice(_)) && i + 1 == seen.len() {
                if let Some(out) = last_out.clone() {
                    self.actions.push_back(Action::Send(out));
                }
            }
            return Ok(());
        }
        seen.push(h);
        let reply = match end {
            End::Alice(a) => a.handle(pool, frame),
            End::Bob(b) => b.handle(pool, frame),
        };
        *deadline = now + *wait;
        let block = res.block;
        *resend_at = None;
        if let Some(frame) = reply {
            let bytes = LinkFrame::Proto { block, frame }.encode(&self.key);
            if matches!(end, End::Bob(_)) {
                *resend_wait = *resend_base;
                *resend_at = Some(now + *resend_base);
            }
            *last_out = Some(bytes.clone());
            self.actions.push_back(Action::Send(bytes));
        }
        self.after_step(now)
    }

    /// Ends the block if its protocol has an outcome.
    fn after_step(&mut self, now: Duration) -> Res<L> {
        let outcome = match &mut self.cur {
            Some(Current {
                stage: Stage::Running { end, .. },
                ..
            }) => match end {
                End::Alice(a) => a.take_outcome(),
                End::Bob(b) => b.take_outcome(),
            },
            _ => None,
        };
        let Some(outcome) = outcome else {
            return Ok(());
        };
        let Some(Current {
            res,
            t0,
            stage: Stage::Running { pool, .. },
        }) = self.cur.take()
        else {
            return Ok(());
        };
        match outcome {
            Outcome::Key { mut key, stats } => {
                let mut segment = pool.into_pads();
                // While the pre-shared key is in use, also set aside fresh key, so later
                // blocks (and failed ones) never run the link dry.
                if res.segment == 0 {
                    let extra = (self.s.reserve_bytes as usize).min(key.len() / 4);
                    segment.extend_from(&key.take_front(extra));
                }
                self.ledger
                    .settle(res, res.len, segment)
                    .map_err(LinkError::Ledger)?;
                self.note(Note::BlockKey {
                    block: res.block,
                    stats,
                    key_bytes: key.len(),
                    took: now.saturating_sub(t0),
                });
                if !key.is_empty() {
                    self.actions.push_back(Action::Key {
                        block: res.block,
                        key,
                    });
                }
                self.schedule_next(now, t0);
                Ok(())
            }
            Outcome::Aborted(e) => {
                self.fail_block(now, res, t0, pool.spent_bytes(), Failure::Aborted(e))
            }
        }
    }

    /// Ends the block in progress without key.
    fn fail(&mut self, now: Duration, why: Failure) -> Res<L> {
        let Some(c) = self.cur.take() else {
            return Ok(());
        };
        let spent = match &c.stage {
            Stage::Running { pool, .. } => pool.spent_bytes(),
            Stage::Simulating { .. } => 0,
        };
        self.fail_block(now, c.res, c.t0, spent, why)
    }

    /// Hands back the reservation's tail past what either end may have tagged.
    fn fail_block(
        &mut self,
        now: Duration,
        res: Reservation,
        t0: Duration,
        spent: u64,
        why: Failure,
    ) -> Res<L> {
        let used = spent
            .saturating_add(FAILED_BLOCK_SLACK_PADS * PAD_LEN as u64)
            .min(res.len);
        self.ledger
            .settle(res, used, Key::zeroed(0))
            .map_err(LinkError::Ledger)?;
        self.note(Note::BlockFailed {
            block: res.block,
            why,
            handed_back: res.len - used,
        });
        self.schedule_next(now, t0);
        Ok(())
    }

    fn schedule_next(&mut self, now: Duration, t0: Duration) {
        if !self.s.alice {
            self.next_block_at = Some(now.max(t0 + self.s.min_block_time));
        }
    }
}
