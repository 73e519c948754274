//! Photon-level links (`source = "photon"`) inside the simulator: each such link runs the
//! photon link's state machine ([`LinkMachine`]) at both ends under the simulator's virtual time,
//! as the node does over its peer channel.
//!
//! * Frames travel as simulator events with the network's latency and loss (plus
//!   [`Sim::photon_frame_loss`]); a frame to an end that is down, frozen or cut off is lost, and
//!   so is one sent to an instance that restarted since.
//! * Each end's ledger is a [`MemLedger`] over the link's pre-shared authentication key; it
//!   survives crashes (the node's is on disk) and a restarted node restarts its machine from it.
//! * `Simulate{block}` is answered with records from the same photon simulator and the same
//!   link model as the node ([`kagi_postproc::link_machine::model`]): Bob's after the block's
//!   pulses took their time at the source's rate, Alice's at once (her device recorded the same
//!   pulses meanwhile). One simulation gives both ends' records.
//! * `Key{block, key}` enters that end's key manager as `Input::LinkKeys`, as the node's
//!   adapter does.
//!
//! Checks: both ends' keys of every block both delivered are identical, and no end delivers a
//! block twice (counted per link, [`PhotonLinkStats`], with a line in
//! [`Sim::photon_violations`]); optionally ([`Sim::check_photon_pads`]) no authentication pad
//! tags two different messages, found for every frame sent by checking its tag.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kagi_control::KeySource;
use kagi_keymat::its_mac::{self, MacKey, Tag, TAG_LEN};
use kagi_keymat::Key;
use kagi_km::{Input, NodeId};
use kagi_postproc::link_machine::model::{block_records, PhotonModel, BOOTSTRAP_BYTES};
use kagi_postproc::link_machine::{
    Action, ControlKey, LinkFrame, LinkMachine, MemLedger, Note, Raw,
};
use kagi_postproc::photon_records::Side;
use kagi_postproc::protocol::{AliceRaw, PAD_LEN};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use zeroize::Zeroizing;

use super::{draw_latency, Event, Sim};

/// End index of Alice (the end with the smaller node ID, as in the node) and of Bob.
const ALICE: usize = 0;
const BOB: usize = 1;
/// When Alice's records are ready after she asks: her device recorded the block's pulses while
/// Bob's detected them, so only the hand-over remains.
const ALICE_RECORDS: Duration = Duration::from_millis(1);
/// How long records wait for a frozen end to run again before they are offered again.
const FROZEN_RETRY: Duration = Duration::from_millis(100);
/// Violations listed in full (a broken run would otherwise list one per frame).
const MAX_VIOLATIONS: usize = 32;
/// Blocks delivered at one end only are kept for comparison this many blocks behind the newest.
const PENDING_BLOCKS: u64 = 64;

/// A simulator event of a photon link: `link` indexes the simulator's photon links, `end` is
/// [`ALICE`] or [`BOB`], `epoch` the end's instance it was meant for.
#[derive(Debug)]
pub(super) enum PhotonEvent {
    Frame {
        link: usize,
        end: usize,
        epoch: u64,
        bytes: Vec<u8>,
    },
    Records {
        link: usize,
        end: usize,
        epoch: u64,
        block: u64,
    },
    Timer {
        link: usize,
        end: usize,
        epoch: u64,
    },
}

/// What a photon link did, for the study's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhotonLinkStats {
    /// One end (Alice: the smaller node ID).
    pub a: String,
    /// The other end (Bob, who starts every block).
    pub b: String,
    /// Blocks with key at both ends.
    pub blocks_delivered: u64,
    /// Blocks with key at one end only (the other end lost the block's last message, or the
    /// run ended first; the key managers resolve these as missing blocks).
    pub blocks_one_end: u64,
    /// Blocks Bob started that ended without key at his end.
    pub blocks_failed: u64,
    /// Key bits of the blocks delivered at both ends (each end got these bits).
    pub key_bits: u64,
    /// Blocks whose key differed between the two ends (must be 0).
    pub mismatched_blocks: u64,
    /// Blocks an end delivered twice (must be 0).
    pub duplicate_blocks: u64,
    /// Frames whose authentication pad had tagged another message, or that were tagged with
    /// no pad of their block's reservation (must be 0; counted only under
    /// [`Sim::check_photon_pads`]).
    pub pad_reuses: u64,
}

/// One end of a photon link.
struct End {
    node: String,
    peer: String,
    /// The running machine; `None` while the node is down.
    machine: Option<LinkMachine<MemLedger>>,
    /// The ledger while the node is down (it survives, as the node's database does).
    ledger: Option<MemLedger>,
    /// Instance number: frames and records for an earlier instance are dropped.
    epoch: u64,
    timer_at: Option<Duration>,
    /// Blocks this end delivered.
    delivered: BTreeSet<u64>,
}

/// A photon link of the simulation.
struct PhotonLink {
    model: PhotonModel,
    /// Block numbers stay above this: rate-level blocks the link produced before it went
    /// photon level (the key managers hold them under their numbers).
    floor: u64,
    control: ControlKey,
    /// Seed of the photon simulator (the node derives it from the link secret).
    sim_seed: u64,
    /// The authentication key's 16-byte hash key (for the pad check).
    hash_key: Vec<u8>,
    ends: [End; 2],
    /// Alice's records of the block Bob's simulation ran last.
    alice_records: Option<(u64, AliceRaw)>,
    /// Keys of blocks delivered at one end so far: `block → (end, key)`.
    pending: BTreeMap<u64, (usize, Key)>,
    stats: PhotonLinkStats,
    /// Seeds the machines' public random choices, one per start.
    rng: ChaCha20Rng,
}

/// Which message each pad tagged, and each block's reservation (see [`Sim::check_photon_pads`]).
#[derive(Default)]
struct PadCheck {
    block_pads: HashMap<(usize, u64), Vec<u8>>,
    pad_use: HashMap<Vec<u8>, Vec<u8>>,
}

/// The simulator's photon links.
pub(super) struct PhotonLinks {
    links: Vec<PhotonLink>,
    /// Topology link number → index in `links`.
    by_link: BTreeMap<usize, usize>,
    /// Loss and latency of photon frames: their own stream, so that the key managers' messages
    /// have the fates they have without photon links.
    rng: ChaCha20Rng,
    extra_loss: f64,
    violations: Vec<String>,
    pads: Option<PadCheck>,
}

impl PhotonLinks {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            links: Vec::new(),
            by_link: BTreeMap::new(),
            rng: ChaCha20Rng::seed_from_u64(seed ^ 0x7068_6f74_6f6e),
            extra_loss: 0.0,
            violations: Vec::new(),
            pads: None,
        }
    }

    /// Lists a violation (the first [`MAX_VIOLATIONS`]; the rest are counted in the stats).
    fn violation(&mut self, what: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(what);
        }
    }

    /// Whether topology link `link` runs at photon level (no rate-level blocks).
    pub(super) fn is_photon(&self, link: usize) -> bool {
        self.by_link.contains_key(&link)
    }
}

fn at(d: Duration) -> kagi_km::Instant {
    kagi_km::Instant(d.as_nanos() as u64)
}

fn since_origin(t: kagi_km::Instant) -> Duration {
    Duration::from_nanos(t.0)
}

impl Sim {
    /// Runs every `source = "photon"` link of the topology at photon level from now on (until
    /// this call every link is fed rate-level blocks): two [`LinkMachine`]s per link, with the
    /// link's model as the node derives it, block size from its `[links.photon]` table. Called
    /// later in a run, photon block numbers continue above the link's rate-level ones. Returns
    /// how many links run at photon level.
    ///
    /// # Errors
    /// A photon link whose settings the model rejects, named with the reason.
    pub fn run_photon_links(&mut self) -> Result<usize, String> {
        let topo = self.topo.clone();
        for (i, l) in topo.links.iter().enumerate() {
            if l.key_source() != Ok(KeySource::Photon) || self.photon.is_photon(i) {
                continue;
            }
            let model = PhotonModel::for_link(l, topo.rate_multiplier)
                .map_err(|e| format!("link {}–{}: [links.photon]: {e}", l.a, l.b))?;
            // The link's secrets (a node provisions them out of band), from the run's seed.
            let mut rng =
                ChaCha20Rng::seed_from_u64(self.seed ^ topo.link_seed(l) ^ 0x7365_6372_6574);
            let mut bootstrap = Key::zeroed(BOOTSTRAP_BYTES);
            rng.fill_bytes(bootstrap.expose_mut());
            let mut control = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(&mut control[..]);
            let (alice, bob) = if l.a < l.b {
                (&l.a, &l.b)
            } else {
                (&l.b, &l.a)
            };
            let end = |node: &str, peer: &str| End {
                node: node.to_string(),
                peer: peer.to_string(),
                machine: None,
                ledger: Some(MemLedger::new(bootstrap.clone())),
                epoch: 0,
                timer_at: None,
                delivered: BTreeSet::new(),
            };
            let ends = [end(alice, bob), end(bob, alice)];
            self.photon.by_link.insert(i, self.photon.links.len());
            self.photon.links.push(PhotonLink {
                model,
                floor: self.last_block[i].unwrap_or(0),
                control: ControlKey::new(control),
                sim_seed: rng.next_u64(),
                hash_key: bootstrap.expose()[..16].to_vec(),
                ends,
                alice_records: None,
                pending: BTreeMap::new(),
                stats: PhotonLinkStats {
                    a: alice.clone(),
                    b: bob.clone(),
                    ..PhotonLinkStats::default()
                },
                rng,
            });
        }
        let up: Vec<NodeId> = self
            .ids
            .iter()
            .filter(|id| self.nodes[id.as_str()].km.is_some())
            .cloned()
            .collect();
        for id in up {
            self.photon_node_up(&id);
        }
        Ok(self.photon.links.len())
    }

    /// Loses this share of photon frames on top of the network's loss.
    pub fn photon_frame_loss(&mut self, p: f64) {
        self.photon.extra_loss = p.clamp(0.0, 1.0);
    }

    /// From now on, checks every photon frame sent: its authentication pad (found by checking
    /// its tag against the block's reservation) never tagged a different message. A violation
    /// is listed in [`Sim::photon_violations`].
    pub fn check_photon_pads(&mut self) {
        self.photon.pads.get_or_insert_with(PadCheck::default);
    }

    /// What each photon link did so far.
    pub fn photon_stats(&self) -> Vec<PhotonLinkStats> {
        self.photon
            .links
            .iter()
            .map(|l| {
                let [a, b] = &l.ends;
                let mut s = l.stats.clone();
                s.blocks_one_end = a.delivered.symmetric_difference(&b.delivered).count() as u64;
                s
            })
            .collect()
    }

    /// What went wrong on photon links: keys that differ between the ends, blocks delivered
    /// twice, pads that tagged two messages. Empty in a correct run.
    pub fn photon_violations(&self) -> &[String] {
        &self.photon.violations
    }

    /// The node `id` went down: its photon link ends lose their state, not their ledgers.
    pub(super) fn photon_node_down(&mut self, id: &str) {
        for l in &mut self.photon.links {
            for e in l.ends.iter_mut().filter(|e| e.node == id) {
                if let Some(m) = e.machine.take() {
                    e.ledger = Some(m.into_ledger());
                    e.epoch += 1;
                    e.timer_at = None;
                }
            }
        }
    }

    /// The node `id` (re)started: its photon link ends restart from their ledgers.
    pub(super) fn photon_node_up(&mut self, id: &str) {
        let now = since_origin(self.now);
        for li in 0..self.photon.links.len() {
            for ei in [ALICE, BOB] {
                let l = &mut self.photon.links[li];
                if l.ends[ei].node != id || l.ends[ei].machine.is_some() {
                    continue;
                }
                let Some(ledger) = l.ends[ei].ledger.take() else {
                    continue;
                };
                let mut seed = [0u8; 32];
                l.rng.fill_bytes(&mut seed);
                let settings = l.model.settings(ei == ALICE, l.floor);
                let mut m = LinkMachine::new(settings, ledger, l.control.clone(), seed);
                m.start(now);
                let e = &mut l.ends[ei];
                e.machine = Some(m);
                e.epoch += 1;
                e.timer_at = None;
                self.photon_drain(li, ei);
            }
        }
    }

    /// The frozen node `id` runs again: its photon link ends' deadlines are armed again.
    pub(super) fn photon_thawed(&mut self, id: &str) {
        for li in 0..self.photon.links.len() {
            for ei in [ALICE, BOB] {
                if self.photon.links[li].ends[ei].node == id {
                    self.photon.links[li].ends[ei].timer_at = None;
                    self.photon_drain(li, ei);
                }
            }
        }
    }

    /// Whether end `ei` of photon link `li` is running and can be reached now.
    fn photon_end_runs(&self, li: usize, ei: usize, epoch: u64) -> bool {
        let e = &self.photon.links[li].ends[ei];
        e.epoch == epoch && e.machine.is_some() && !self.nodes[e.node.as_str()].frozen
    }

    pub(super) fn photon_step(&mut self, ev: PhotonEvent) {
        let now = since_origin(self.now);
        match ev {
            PhotonEvent::Frame {
                link,
                end,
                epoch,
                bytes,
            } => {
                let e = &self.photon.links[link].ends[end];
                if !self.photon_end_runs(link, end, epoch)
                    || self
                        .cut
                        .contains(&(NodeId::from(&e.peer), NodeId::from(&e.node)))
                {
                    return;
                }
                let m = self.photon.links[link].ends[end].machine.as_mut();
                if let Some(Err(err)) = m.map(|m| m.handle_frame(now, &bytes)) {
                    self.photon.violation(format!("photon frame: {err}"));
                }
                self.photon_drain(link, end);
            }
            PhotonEvent::Records {
                link,
                end,
                epoch,
                block,
            } => {
                let e = &self.photon.links[link].ends[end];
                if e.epoch != epoch || e.machine.is_none() {
                    return;
                }
                if self.nodes[e.node.as_str()].frozen {
                    let retry = self.now + FROZEN_RETRY;
                    self.push(
                        retry,
                        Event::Photon(PhotonEvent::Records {
                            link,
                            end,
                            epoch,
                            block,
                        }),
                    );
                    return;
                }
                let raw = match self.photon_records(link, end, block) {
                    Ok(r) => r,
                    Err(err) => {
                        self.photon.violation(format!("photon records: {err}"));
                        return;
                    }
                };
                let m = self.photon.links[link].ends[end].machine.as_mut();
                if let Some(Err(err)) = m.map(|m| m.handle_records(now, block, raw)) {
                    self.photon.violation(format!("photon records: {err}"));
                }
                self.photon_drain(link, end);
            }
            PhotonEvent::Timer { link, end, epoch } => {
                if !self.photon_end_runs(link, end, epoch) {
                    return;
                }
                let e = &mut self.photon.links[link].ends[end];
                if e.timer_at.is_some_and(|t| t <= now) {
                    e.timer_at = None;
                    if let Some(Err(err)) = e.machine.as_mut().map(|m| m.handle_timeout(now)) {
                        self.photon.violation(format!("photon timer: {err}"));
                    }
                }
                self.photon_drain(link, end);
            }
        }
    }

    /// End `ei`'s records of `block`: Bob's simulation keeps Alice's records of the same
    /// pulses for her.
    fn photon_records(
        &mut self,
        li: usize,
        ei: usize,
        block: u64,
    ) -> Result<Raw, kagi_quantum::ModelError> {
        let l = &mut self.photon.links[li];
        let (p, seed, pulses) = (l.model.params, l.sim_seed, l.model.pulses);
        if ei == BOB {
            let (alice, bob) = block_records(p, seed, block, pulses, Side::Both)?;
            l.alice_records = Some((block, alice));
            return Ok(Raw::Bob(bob));
        }
        match l.alice_records.take() {
            Some((b, alice)) if b == block => Ok(Raw::Alice(alice)),
            kept => {
                l.alice_records = kept;
                Ok(Raw::Alice(
                    block_records(p, seed, block, pulses, Side::Alice)?.0,
                ))
            }
        }
    }

    /// Carries out end `ei`'s actions and arms its next deadline.
    fn photon_drain(&mut self, li: usize, ei: usize) {
        loop {
            // Re-borrowed each time: handing a key to the key manager may crash its node.
            let Some(m) = self.photon.links[li].ends[ei].machine.as_mut() else {
                return;
            };
            let Some(act) = m.poll_action() else { break };
            match act {
                Action::Send(bytes) => self.photon_send(li, ei, bytes),
                Action::Simulate { block } => {
                    let l = &self.photon.links[li];
                    let wait = if ei == BOB {
                        l.model.min_block_time
                    } else {
                        ALICE_RECORDS
                    };
                    let epoch = l.ends[ei].epoch;
                    let t = self.now + wait;
                    self.push(
                        t,
                        Event::Photon(PhotonEvent::Records {
                            link: li,
                            end: ei,
                            epoch,
                            block,
                        }),
                    );
                }
                Action::Key { block, key } => self.photon_key(li, ei, block, key),
                Action::Note(Note::BlockFailed { .. }) if ei == BOB => {
                    self.photon.links[li].stats.blocks_failed += 1;
                }
                Action::Note(_) => {}
            }
        }
        let now = since_origin(self.now);
        let e = &mut self.photon.links[li].ends[ei];
        let Some(t) = e.machine.as_ref().and_then(|m| m.poll_timeout()) else {
            return;
        };
        if e.timer_at.is_none_or(|old| t < old || old <= now) {
            e.timer_at = Some(t);
            let epoch = e.epoch;
            self.push(
                at(t.max(now)),
                Event::Photon(PhotonEvent::Timer {
                    link: li,
                    end: ei,
                    epoch,
                }),
            );
        }
    }

    /// A frame from end `ei` to the other end, with the network's latency and loss.
    fn photon_send(&mut self, li: usize, ei: usize, bytes: Vec<u8>) {
        if self.photon.pads.is_some() {
            self.photon_check_pad(li, &bytes);
        }
        let to = 1 - ei;
        let l = &self.photon.links[li];
        let (from_node, to_node) = (
            NodeId::from(&l.ends[ei].node),
            NodeId::from(&l.ends[to].node),
        );
        // A peer that is down has no connection to send on.
        if l.ends[to].machine.is_none() || self.cut.contains(&(from_node, to_node)) {
            return;
        }
        let epoch = l.ends[to].epoch;
        let p = &mut self.photon;
        if p.rng.gen_bool(self.faults.p_loss) || p.rng.gen_bool(p.extra_loss) {
            return;
        }
        let t = self.now + draw_latency(&mut p.rng, self.faults.latency);
        self.push(
            t,
            Event::Photon(PhotonEvent::Frame {
                link: li,
                end: to,
                epoch,
                bytes,
            }),
        );
    }

    /// Block `block`'s key at end `ei`: compared with the other end's, then into the node's
    /// key manager as the node's adapter hands it over.
    fn photon_key(&mut self, li: usize, ei: usize, block: u64, key: Key) {
        let seed = self.seed;
        let l = &mut self.photon.links[li];
        let (a, b) = (&l.stats.a, &l.stats.b);
        let mut wrong = None;
        if !l.ends[ei].delivered.insert(block) {
            l.stats.duplicate_blocks += 1;
            wrong = Some(format!(
                "seed {seed}: photon link {a}–{b}: {} delivered block {block} twice",
                l.ends[ei].node
            ));
        } else {
            match l.pending.remove(&block) {
                Some((other, k)) if other != ei => {
                    if k == key {
                        l.stats.blocks_delivered += 1;
                        l.stats.key_bits += key.len() as u64 * 8;
                    } else {
                        l.stats.mismatched_blocks += 1;
                        wrong = Some(format!(
                            "seed {seed}: photon link {a}–{b}: the ends' keys of block {block} \
                             differ"
                        ));
                    }
                }
                _ => {
                    l.pending.insert(block, (ei, key.clone()));
                    while l
                        .pending
                        .first_key_value()
                        .is_some_and(|(b, _)| b + PENDING_BLOCKS < block)
                    {
                        l.pending.pop_first();
                    }
                }
            }
        }
        let (node, peer) = (l.ends[ei].node.clone(), l.ends[ei].peer.clone());
        if let Some(w) = wrong {
            self.photon.violation(w);
        }
        let now = self.now;
        if let Some(km) = self
            .nodes
            .get_mut(node.as_str())
            .filter(|n| !n.frozen)
            .and_then(|n| n.km.as_mut())
        {
            km.handle(
                now,
                Input::LinkKeys {
                    peer: NodeId::from(peer),
                    block,
                    key,
                },
            );
            self.drain(&NodeId::from(node.as_str()));
        }
    }

    /// Checks the pad a frame's protocol message was tagged with: never one that tagged a
    /// different message. The pad is found by checking the tag with each candidate (after a
    /// failed check an end's message number lags its pad count).
    fn photon_check_pad(&mut self, li: usize, bytes: &[u8]) {
        let l = &self.photon.links[li];
        let (block, frame) = match LinkFrame::decode(bytes, &l.control) {
            Ok(LinkFrame::Start { res, frame }) => {
                let pads = l.ends[BOB]
                    .machine
                    .as_ref()
                    .and_then(|m| m.ledger().pads(res.segment, res.offset, res.len))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                if let Some(pc) = self.photon.pads.as_mut() {
                    pc.block_pads.entry((li, res.block)).or_insert(pads);
                }
                (res.block, frame)
            }
            Ok(LinkFrame::Proto { block, frame }) => (block, frame),
            _ => return,
        };
        let hash_key = l.hash_key.clone();
        let (a, b) = (l.stats.a.clone(), l.stats.b.clone());
        let Some(pc) = self.photon.pads.as_mut() else {
            return;
        };
        let Some(pads) = pc.block_pads.get(&(li, block)) else {
            self.photon.violation(format!(
                "photon link {a}–{b}: a message of block {block} before its Start"
            ));
            return;
        };
        if frame.len() < 16 + TAG_LEN {
            return;
        }
        let seq = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]) as usize;
        let (body, tag) = frame.split_at(frame.len() - TAG_LEN);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        let tag = Tag(t);
        let found = (seq..seq + 4).find_map(|i| {
            let pad = pads.get(i * PAD_LEN..(i + 1) * PAD_LEN)?;
            let kb: Vec<u8> = hash_key.iter().chain(pad).copied().collect();
            let k = MacKey::from_bytes(&kb).ok()?;
            its_mac::verify(k, body, &tag).then_some(pad)
        });
        // Pads past the reservation come from the block's fresh key (never reused).
        let bad = match found {
            Some(pad) => {
                let prev = pc
                    .pad_use
                    .entry(pad.to_vec())
                    .or_insert_with(|| frame.clone());
                *prev != frame
            }
            None => (seq + 1) * PAD_LEN <= pads.len(),
        };
        if bad {
            self.photon.links[li].stats.pad_reuses += 1;
            self.photon.violation(format!(
                "seed {}: photon link {a}–{b}: block {block} message {seq} tagged with a pad \
                 that tagged another message, or with none of its reservation",
                self.seed
            ));
        }
    }
}
