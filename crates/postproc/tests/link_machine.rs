//! Two photon link ends ([`LinkMachine`]) under virtual time: frames lost and delayed, ends
//! restarted, forged control frames; every block key agrees at both ends and no pad ever tags
//! two different messages (checked on every frame sent).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use kagi_keymat::its_mac::{self, MacKey, Tag, TAG_LEN};
use kagi_keymat::Key;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::ldpc::LdpcParams;
use kagi_postproc::link_machine::{
    Action, ControlKey, Failure, LinkFrame, LinkMachine, LinkSettings, MemLedger, Note, PadLedger,
    Raw, Refusal, Reservation, FAILED_BLOCK_SLACK_PADS,
};
use kagi_postproc::protocol::{ProtocolConfig, Reconciliation, PAD_LEN};
use kagi_postproc::toy::ToyChannel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zeroize::Zeroizing;

const RESERVE: u64 = 1024 * PAD_LEN as u64;
const PULSES: usize = 10_000_000;
const SIM_TIME: Duration = Duration::from_millis(200);
const GRACE: Duration = Duration::from_secs(20);

fn channel() -> ToyChannel {
    ToyChannel {
        eta: 0.5,
        e_d: 0.01,
        ..ToyChannel::default()
    }
}

fn settings(alice: bool) -> LinkSettings {
    let ch = channel();
    LinkSettings {
        alice,
        protocol: ProtocolConfig {
            decoy: DecoySettings {
                mu: ch.mu,
                p: ch.p_mu,
                eps_sec: 1e-10,
                eps_cor: 1e-15,
            },
            reconciliation: Reconciliation::Ldpc(LdpcParams::default()),
            threads: 2,
        },
        reserve_bytes: RESERVE,
        min_block_time: Duration::from_secs(2),
        block_timeout: Duration::from_secs(600),
        reply_grace: GRACE,
        hello_every: Duration::from_secs(1),
        resend_every: Duration::from_secs(1),
        floor: 0,
    }
}

fn control_key(b: u8) -> ControlKey {
    ControlKey::new(Zeroizing::new([b; 32]))
}

fn bootstrap() -> Key {
    let mut r = ChaCha8Rng::seed_from_u64(77);
    let mut k = vec![0u8; 16 + 64 * RESERVE as usize];
    r.fill(&mut k[..]);
    Key::from_vec(k)
}

fn machine(alice: bool, ledger: MemLedger, seed: u8) -> LinkMachine<MemLedger> {
    LinkMachine::new(settings(alice), ledger, control_key(1), [seed; 32])
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Frame for end `to` (0 Alice, 1 Bob), sent to its instance `epoch`.
    Frame {
        to: usize,
        epoch: u32,
        bytes: Vec<u8>,
    },
    /// Records of `block` for end `to`'s instance `epoch`.
    Records { to: usize, epoch: u32, block: u64 },
}

/// Two ends and the wire between them, under virtual time.
struct Net {
    now: Duration,
    ends: [Option<LinkMachine<MemLedger>>; 2],
    down: [Option<MemLedger>; 2],
    epoch: [u32; 2],
    queue: BinaryHeap<Reverse<(Duration, u64, Ev)>>,
    seq: u64,
    rng: ChaCha8Rng,
    loss: f64,
    delay_ms: (u64, u64),
    /// Block keys each end delivered.
    keys: [BTreeMap<u64, Vec<u8>>; 2],
    /// Every block's reservation bytes (from Bob's ledger when he sent its `Start`).
    block_pads: HashMap<u64, Vec<u8>>,
    /// Which message each pad tagged.
    pad_use: HashMap<Vec<u8>, Vec<u8>>,
    /// Records of Bob's that differ from Alice's (blocks then abort).
    spoil: bool,
    /// Alice's protocol frames of this block never reach Bob.
    mute_alice_block: Option<u64>,
    /// Alice's first protocol frame of this block never reaches Bob.
    lose_first_answer: Option<u64>,
    /// The link's hash key (the bootstrap's first 16 bytes).
    hash_key: Vec<u8>,
    notes: Vec<(usize, Note)>,
}

impl Net {
    fn new(seed: u64, loss: f64, delay_ms: (u64, u64)) -> Self {
        let mut n = Self {
            now: Duration::ZERO,
            ends: [
                Some(machine(true, MemLedger::new(bootstrap()), 1)),
                Some(machine(false, MemLedger::new(bootstrap()), 2)),
            ],
            down: [None, None],
            epoch: [0, 0],
            queue: BinaryHeap::new(),
            seq: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss,
            delay_ms,
            keys: [BTreeMap::new(), BTreeMap::new()],
            block_pads: HashMap::new(),
            pad_use: HashMap::new(),
            spoil: false,
            mute_alice_block: None,
            lose_first_answer: None,
            hash_key: bootstrap().expose()[..16].to_vec(),
            notes: Vec::new(),
        };
        for i in 0..2 {
            n.ends[i].as_mut().unwrap().start(Duration::ZERO);
            n.drain(i);
        }
        n
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    /// Checks the pad a protocol frame of `block` was tagged with: never one that tagged a
    /// different message. The pad is found by checking the tag with each candidate (after a
    /// failed check an end's sequence number lags its pad count).
    fn check_pad(&mut self, block: u64, frame: &[u8]) {
        let seq = u32::from_le_bytes(frame[12..16].try_into().unwrap()) as usize;
        let Some(pads) = self.block_pads.get(&block) else {
            panic!("a protocol frame of block {block} before its Start");
        };
        let (body, tag) = frame.split_at(frame.len() - TAG_LEN);
        let tag = Tag(tag.try_into().unwrap());
        let hash_key = &self.hash_key[..];
        let found = (seq..seq + 4).find_map(|i| {
            let pad = pads.get(i * PAD_LEN..(i + 1) * PAD_LEN)?;
            let kb: Vec<u8> = hash_key.iter().chain(pad).copied().collect();
            its_mac::verify(MacKey::from_bytes(&kb).unwrap(), body, &tag).then_some(pad)
        });
        // Pads past the reservation come from the block's fresh key (never reused).
        if let Some(pad) = found {
            let prev = self
                .pad_use
                .entry(pad.to_vec())
                .or_insert_with(|| frame.to_vec());
            assert!(
                prev == frame,
                "a pad tagged two different messages (block {block}, message {seq})"
            );
        } else {
            assert!(
                (seq + 1) * PAD_LEN > pads.len(),
                "block {block} message {seq}: tagged with no pad of its reservation"
            );
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(a) = self.ends[i].as_mut().unwrap().poll_action() {
            match a {
                Action::Send(bytes) => {
                    let mut muted = false;
                    match LinkFrame::decode(&bytes, &control_key(1)).unwrap() {
                        LinkFrame::Start { res, frame } => {
                            let l = self.ends[1].as_ref().unwrap().ledger();
                            let pads = l.pads(res.segment, res.offset, res.len).unwrap().to_vec();
                            self.block_pads.entry(res.block).or_insert(pads);
                            self.check_pad(res.block, &frame);
                        }
                        LinkFrame::Proto { block, frame } => {
                            self.check_pad(block, &frame);
                            muted = i == 0 && self.mute_alice_block == Some(block);
                            if i == 0 && self.lose_first_answer == Some(block) {
                                self.lose_first_answer = None;
                                muted = true;
                            }
                        }
                        _ => {}
                    }
                    if self.rng.gen_bool(self.loss) || muted {
                        continue;
                    }
                    let d = self.rng.gen_range(self.delay_ms.0..=self.delay_ms.1);
                    let at = self.now + Duration::from_millis(d);
                    let to = 1 - i;
                    let epoch = self.epoch[to];
                    self.push(at, Ev::Frame { to, epoch, bytes });
                }
                Action::Simulate { block } => {
                    let at = self.now + SIM_TIME;
                    let epoch = self.epoch[i];
                    self.push(
                        at,
                        Ev::Records {
                            to: i,
                            epoch,
                            block,
                        },
                    );
                }
                Action::Key { block, key } => {
                    let prev = self.keys[i].insert(block, key.expose().to_vec());
                    assert!(prev.is_none(), "end {i} delivered block {block} twice");
                }
                Action::Note(n) => self.notes.push((i, n)),
            }
        }
    }

    fn records(&self, i: usize, block: u64) -> Raw {
        if i == 0 {
            return Raw::Alice(channel().generate(PULSES, block).0);
        }
        let seed = if self.spoil { block + 1_000_000 } else { block };
        Raw::Bob(channel().generate(PULSES, seed).1)
    }

    /// Runs until virtual time `until`.
    fn run_until(&mut self, until: Duration) {
        loop {
            let timer = (0..2)
                .filter_map(|i| Some((self.ends[i].as_ref()?.poll_timeout()?, i)))
                .min();
            let next_ev = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let timer_first = match (timer, next_ev) {
                (Some((t, _)), Some(e)) => t <= e,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return,
            };
            if timer_first {
                let (t, i) = timer.unwrap();
                if t > until {
                    return;
                }
                self.now = self.now.max(t);
                let now = self.now;
                self.ends[i].as_mut().unwrap().handle_timeout(now).unwrap();
                self.drain(i);
                continue;
            }
            let Reverse((t, _, ev)) = self.queue.pop().unwrap();
            if t > until {
                self.queue.push(Reverse((t, 0, ev)));
                return;
            }
            self.now = t;
            let now = self.now;
            match ev {
                Ev::Frame { to, epoch, bytes } => {
                    if epoch != self.epoch[to] || self.ends[to].is_none() {
                        continue; // sent to an instance that crashed
                    }
                    self.ends[to]
                        .as_mut()
                        .unwrap()
                        .handle_frame(now, &bytes)
                        .unwrap();
                    self.drain(to);
                }
                Ev::Records { to, epoch, block } => {
                    if epoch != self.epoch[to] || self.ends[to].is_none() {
                        continue;
                    }
                    let raw = self.records(to, block);
                    self.ends[to]
                        .as_mut()
                        .unwrap()
                        .handle_records(now, block, raw)
                        .unwrap();
                    self.drain(to);
                }
            }
        }
    }

    /// Crashes end `i`: its machine's state is lost, its ledger kept.
    fn crash(&mut self, i: usize) {
        let m = self.ends[i].take().unwrap();
        self.down[i] = Some(m.into_ledger());
        self.epoch[i] += 1;
    }

    fn restart(&mut self, i: usize) {
        let l = self.down[i].take().unwrap();
        let mut m = machine(i == 0, l, 10 + self.epoch[i] as u8);
        m.start(self.now);
        self.ends[i] = Some(m);
        self.drain(i);
    }

    fn ledger(&self, i: usize) -> &MemLedger {
        self.ends[i].as_ref().unwrap().ledger()
    }

    /// Blocks with key at both ends; panics if any differs.
    fn agreed(&self) -> usize {
        let mut n = 0;
        for (b, k) in &self.keys[0] {
            if let Some(k2) = self.keys[1].get(b) {
                assert!(k == k2, "block {b}: the ends' keys differ");
                n += 1;
            }
        }
        n
    }
}

#[test]
fn two_ends_agree_under_loss_delay_and_restarts_and_never_reuse_a_pad() {
    let mut net = Net::new(11, 0.03, (5, 300));
    net.run_until(Duration::from_secs(20));
    net.crash(0); // Alice, whatever she was doing
    net.run_until(Duration::from_secs(22));
    net.restart(0);
    net.run_until(Duration::from_secs(35));
    net.crash(1); // Bob
    net.run_until(Duration::from_secs(36));
    net.restart(1);
    net.run_until(Duration::from_secs(60));
    let agreed = net.agreed();
    assert!(agreed >= 12, "only {agreed} blocks with key at both ends");
    // Block numbers only grow at each end, and no end was left waiting: the last block
    // started within a block time or two of the end of the run.
    let last = net.ledger(1).last_block();
    assert!(net.keys[1].keys().all(|b| *b <= last));
    let failed = net
        .notes
        .iter()
        .filter(|(_, n)| matches!(n, Note::BlockFailed { .. }))
        .count();
    println!("{agreed} blocks agreed, {failed} block failures noted, last block {last}");
}

#[test]
fn forged_start_and_refuse_frames_change_nothing() {
    let forger = control_key(2);
    // Alice: a forged Start naming a huge block and the end of segment 0.
    let mut alice = machine(true, MemLedger::new(bootstrap()), 1);
    alice.start(Duration::ZERO);
    while alice.poll_action().is_some() {}
    let forged = LinkFrame::Start {
        res: Reservation {
            block: 1 << 40,
            segment: 0,
            offset: 60 * RESERVE,
            len: RESERVE,
        },
        frame: vec![0; 64],
    };
    alice
        .handle_frame(Duration::ZERO, &forged.encode(&forger))
        .unwrap();
    assert_eq!(alice.ledger().last_block(), 0);
    assert_eq!(alice.ledger().watermark(0), Some(0));
    assert_eq!(alice.current_block(), None);
    let acts: Vec<Action> = std::iter::from_fn(|| alice.poll_action()).collect();
    assert!(
        matches!(&acts[..], [Action::Note(Note::Rejected(_))]),
        "{acts:?}"
    );
    // The same frame with the link's key is taken (the check above is what stopped it).
    alice
        .handle_frame(Duration::ZERO, &forged.encode(&control_key(1)))
        .unwrap();
    assert_eq!(alice.ledger().last_block(), 1 << 40);

    // Bob, in block 1: a forged Refuse telling him to drop segment 0 and skip blocks.
    let mut net = Net::new(3, 0.0, (10, 10));
    net.run_until(Duration::from_millis(500)); // Start sent, Alice simulating
    let bob = net.ends[1].as_mut().unwrap();
    let res = Reservation {
        block: 1,
        segment: 0,
        offset: 0,
        len: RESERVE,
    };
    assert_eq!(bob.current_block(), Some(1));
    for refusal in [
        Refusal::NoSegment { segment: 0 },
        Refusal::StaleBlock {
            last_block: 1 << 40,
        },
        Refusal::StalePads {
            segment: 0,
            watermark: 63 * RESERVE,
        },
    ] {
        let f = LinkFrame::Refuse { res, refusal }.encode(&forger);
        bob.handle_frame(Duration::from_millis(500), &f).unwrap();
        assert_eq!(bob.current_block(), Some(1), "{refusal:?}");
        assert_eq!(bob.ledger().last_block(), 1);
        assert_eq!(bob.ledger().watermark(0), Some(RESERVE));
    }
    net.drain(1);
    // The block goes on to give both ends the same key.
    net.run_until(Duration::from_secs(30));
    assert!(net.keys[0].contains_key(&1) && net.agreed() >= 1);
}

#[test]
fn a_restarted_alice_costs_bob_no_timeout() {
    for start_lost in [false, true] {
        let mut net = Net::new(5, 0.0, (10, 10));
        // Block 1 ends with key; Bob starts block 2 at 2 s, his Start leaves at 2.2 s.
        net.run_until(Duration::from_millis(2100));
        assert_eq!(net.agreed(), 1);
        if start_lost {
            // Alice crashes before Bob's Start of block 2 reaches her.
            net.crash(0);
        } else {
            // Alice crashes after taking block 2's reservation.
            net.run_until(Duration::from_millis(2300));
            assert_eq!(net.ends[0].as_ref().unwrap().current_block(), Some(2));
            net.crash(0);
        }
        let down_at = net.now;
        net.run_until(down_at + Duration::from_secs(1));
        net.restart(0);
        // Within a few block times, not Bob's reply timeout (20 s + 4 × 0.2 s), a new block
        // has key at both ends.
        net.run_until(down_at + Duration::from_secs(8));
        assert!(
            net.agreed() >= 2,
            "start lost {start_lost}: no block with key within 8 s of Alice's restart"
        );
        let why: Vec<String> = net
            .notes
            .iter()
            .filter_map(|(_, n)| match n {
                Note::BlockFailed { why, .. } => Some(why.to_string()),
                _ => None,
            })
            .collect();
        assert!(
            !why.iter().any(|w| w.contains("timed out")),
            "start lost {start_lost}: {why:?}"
        );
    }
}

#[test]
fn a_failed_block_hands_back_the_pads_it_did_not_use() {
    let mut net = Net::new(7, 0.0, (10, 10));
    net.spoil = true; // Bob's records are not Alice's: QBER 50 %, Alice aborts at once
    net.run_until(Duration::from_millis(1900));
    let failed: Vec<(usize, u64)> = net
        .notes
        .iter()
        .filter_map(|(i, n)| match n {
            Note::BlockFailed {
                block: 1,
                why: Failure::Aborted(_),
                handed_back,
            } => Some((*i, *handed_back)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2, "{:?}", net.notes);
    for (i, handed_back) in failed {
        // Most of the reservation comes back: all but the pads this end used and the slack.
        let kept = net.ledger(i).watermark(0).unwrap();
        assert_eq!(kept, RESERVE - handed_back, "end {i}");
        assert!(kept >= FAILED_BLOCK_SLACK_PADS * PAD_LEN as u64, "end {i}");
        assert!(
            kept < RESERVE / 8,
            "end {i}: {kept} bytes of {RESERVE} kept"
        );
    }
    let next = net.ledger(1).propose(RESERVE, 0).unwrap();
    assert_eq!((next.block, next.segment), (2, 0));
    assert!(next.offset < RESERVE / 8);
    // Later blocks start there and still never reuse a pad (checked on every frame).
    net.spoil = false;
    net.run_until(Duration::from_secs(10));
    assert!(net.agreed() >= 1);
}

#[test]
fn a_pad_the_other_end_may_have_tagged_is_never_handed_back() {
    let mut net = Net::new(9, 0.0, (10, 10));
    net.mute_alice_block = Some(1);
    net.run_until(Duration::from_millis(450));
    // Alice has answered Bob's Sift with pad 1 (lost on the way). A forged message makes her
    // check pad 2 and tag her abort (lost too) with pad 3, while Bob has used pad 0 only.
    let forged = LinkFrame::Proto {
        block: 1,
        frame: vec![0x4b; 64],
    };
    let now = net.now;
    net.ends[0]
        .as_mut()
        .unwrap()
        .handle_frame(now, &forged.encode(&control_key(1)))
        .unwrap();
    net.drain(0);
    let alice_used = 4 * PAD_LEN as u64;
    assert!(
        net.notes.iter().any(|(i, n)| *i == 0
            && matches!(n, Note::BlockFailed { block: 1, why: Failure::Aborted(_), handed_back }
                if *handed_back == RESERVE - alice_used - FAILED_BLOCK_SLACK_PADS * PAD_LEN as u64)),
        "{:?}",
        net.notes
    );
    // Bob hears nothing, gives the block up after his reply timeout and hands back from his
    // own count; his next Start must not tag a pad Alice tagged (checked on every frame).
    net.run_until(Duration::from_secs(60));
    assert!(net.agreed() >= 1);
    assert!(net.ledger(1).last_block() >= 2);
}

#[test]
fn a_restarted_bob_whose_first_answer_is_lost_costs_no_timeout() {
    let mut net = Net::new(13, 0.0, (10, 10));
    net.run_until(Duration::from_millis(2300)); // block 2 under way at both ends
    net.crash(1);
    net.run_until(Duration::from_millis(2500));
    net.restart(1);
    // Bob's new block is 3; Alice's first answer to it is lost (as on the connection the
    // restart closed). Bob sends his Start again after 1 s, Alice her answer again.
    net.lose_first_answer = Some(3);
    net.run_until(Duration::from_millis(2500 + 6000));
    assert_eq!(net.lose_first_answer, None, "the answer was not lost");
    assert!(
        net.keys[0].contains_key(&3) && net.keys[1].contains_key(&3),
        "block 3 has no key at both ends within 6 s (Bob's reply timeout is 20 s): {:?}",
        net.notes
    );
    assert!(net.agreed() >= 2);
}
