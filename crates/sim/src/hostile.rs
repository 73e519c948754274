//! A hostile neighbour: a compromised trusted node that runs no honest core and sends, in its own
//! authenticated name, whatever can hurt its neighbours.
//!
//! It holds real link key with its neighbour (the simulator hands it the same blocks), so its
//! relay hops carry valid tags; what it may not do is make honest nodes serve wrong, repeated or
//! lost keys. Each [`Hostile::act`] sends one of:
//! * replays of messages honest nodes sent it, to their sender or another node;
//! * garbled copies (flipped ciphertext or tag bytes, moved or zero-length spans, changed ids);
//! * validly tagged relay hops whose path claims another origin, or another sender before it;
//! * control messages about other nodes' relays and assignments (`RelayAborted`, `RelayAck`,
//!   `AssignAck`, `Revoke`), forged assignments, and `LinkMissing` for blocks it holds;
//! * other origins' link-state adverts altered (newer, every link rich) under their old
//!   signature ([`Hostile::forge_advert`] makes one to order).

use std::collections::BTreeMap;

use kagi_keymat::its_mac::{Mac, MacKey, MAC_KEY_LEN};
use kagi_keymat::Tag;
use kagi_km::msgs::{AssignedKey, KeySource, RelayId, Span};
use kagi_km::{NodeId, PeerMsg};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use uuid::Uuid;

use crate::Sim;

/// The hostile node's state.
pub struct Hostile {
    me: String,
    rng: ChaCha20Rng,
    /// Messages honest nodes sent here: `(sender, msg)`, newest last.
    seen: Vec<(String, PeerMsg)>,
    /// Next unspent byte of our half of `(link, block)`.
    spent: BTreeMap<(usize, u64), u32>,
    /// Highest relay counter seen per origin.
    relay_seq: BTreeMap<String, u64>,
    sweep: u64,
    /// Our own store identity and epoch, announced when an honest node greets us.
    store: u64,
    epoch: u64,
}

impl Hostile {
    /// A hostile node `me`, its choices drawn from `seed`.
    pub fn new(me: &str, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x4057_11e0);
        let (store, epoch) = (rng.gen(), rng.gen());
        Self {
            me: me.to_string(),
            rng,
            seen: Vec::new(),
            spent: BTreeMap::new(),
            relay_seq: BTreeMap::new(),
            sweep: 0,
            store,
            epoch,
        }
    }

    /// The current epoch of `node` (a compromised node learns it from the `Hello` every node
    /// sends it); our own for ourselves.
    fn epoch_of(&self, sim: &Sim, node: &str) -> u64 {
        sim.node(node).map_or(self.epoch, |k| k.epoch())
    }

    /// Reads what arrived and sends one hostile message.
    pub fn act(&mut self, sim: &mut Sim) {
        self.listen(sim);
        self.attack(sim);
    }

    /// Reads what honest nodes sent here (greeting back those that said hello).
    pub fn listen(&mut self, sim: &mut Sim) {
        for (to, from, msg) in sim.take_hostile_inbox() {
            if to != self.me {
                continue;
            }
            if let PeerMsg::RelayHop { relay, .. } = &msg {
                let s = self.relay_seq.entry(relay.origin.to_string()).or_default();
                *s = (*s).max(relay.seq);
            }
            if let PeerMsg::Hello { epoch, .. } = &msg {
                // Greet back and answer, so honest nodes relay to us and judge our forged
                // assignments and relays on their merits (holding every block of the link, so
                // nobody drops link key on our word). A lying `Seen` could only make a node
                // discard what it restored (a denial of service, see SECURITY.md).
                let hello = PeerMsg::Hello {
                    store: self.store,
                    epoch: self.epoch,
                    link_low: Some(0),
                    run: 1,
                    next_relay: 1,
                    next_assign: 1,
                    tx_low: None,
                };
                sim.inject(&self.me, &from, hello);
                let seen = PeerMsg::Seen {
                    epoch: *epoch,
                    relay_hw: 0,
                    assign_hw: 0,
                    relay_floor: 0,
                    assign_floor: 0,
                    link_rx_hw: None,
                    fork_run: 0,
                    link_reserved: None,
                    marks_run: 0,
                    marks_epoch: 0,
                };
                sim.inject(&self.me, &from, seen);
                continue;
            }
            self.seen.push((from, msg));
            if self.seen.len() > 256 {
                self.seen.remove(0);
            }
        }
    }

    /// Sends one hostile message.
    fn attack(&mut self, sim: &mut Sim) {
        let honest: Vec<String> = sim
            .topology()
            .nodes
            .iter()
            .map(|n| n.id.clone())
            .filter(|n| *n != self.me)
            .collect();
        let neighbours: Vec<(String, usize)> = sim
            .topology()
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                if l.a == self.me {
                    Some((l.b.clone(), i))
                } else if l.b == self.me {
                    Some((l.a.clone(), i))
                } else {
                    None
                }
            })
            .collect();
        let Some(anyone) = honest.choose(&mut self.rng).cloned() else {
            return;
        };
        let origin = honest.choose(&mut self.rng).cloned().expect("nonempty");
        let seq = self.guess_seq(&origin);
        let epoch = self.epoch_of(sim, &origin);
        match self.rng.gen_range(0..14) {
            0 | 1 => {
                // Replay something an honest node sent us.
                if let Some((from, msg)) = self.seen.choose(&mut self.rng).cloned() {
                    let to = if self.rng.gen_bool(0.5) { from } else { anyone };
                    sim.inject(&self.me, &to, msg);
                }
            }
            2 | 3 => {
                if let Some((from, msg)) = self.seen.choose(&mut self.rng).cloned() {
                    let msg = self.garble(msg);
                    let to = if self.rng.gen_bool(0.5) { from } else { anyone };
                    sim.inject(&self.me, &to, msg);
                }
            }
            4..=8 => {
                // A validly tagged hop that claims another origin (and maybe another sender).
                let Some((n, link)) = neighbours.choose(&mut self.rng).cloned() else {
                    return;
                };
                let mut path = vec![origin.clone(), self.me.clone(), n.clone()];
                if self.rng.gen_bool(0.5) {
                    let further: Vec<&String> = honest
                        .iter()
                        .filter(|m| **m != origin && **m != n)
                        .collect();
                    if let Some(m) = further.choose(&mut self.rng) {
                        path.push((*m).clone());
                    }
                }
                if self.rng.gen_bool(0.2) {
                    // Claim that another node handed it to the neighbour.
                    path[1] = anyone.clone();
                }
                path.dedup();
                let len = if self.rng.gen_bool(0.5) {
                    512
                } else {
                    32 * self.rng.gen_range(1..=32)
                };
                let zero_span = self.rng.gen_bool(0.15);
                if let Some(msg) = self.forge_hop(
                    sim,
                    link,
                    &n,
                    origin,
                    seq,
                    path.iter().map(NodeId::from).collect(),
                    len,
                    zero_span,
                ) {
                    sim.inject(&self.me, &n, msg);
                }
            }
            9 => sim.inject(
                &self.me,
                &origin.clone(),
                PeerMsg::RelayAborted {
                    relay: RelayId {
                        origin: NodeId::from(origin),
                        epoch,
                        seq,
                    },
                    share: None,
                    reason: kagi_km::AbortReason::LinkKeyExhausted,
                },
            ),
            10 => sim.inject(
                &self.me,
                &origin.clone(),
                PeerMsg::RelayAck {
                    relay: RelayId {
                        origin: NodeId::from(origin),
                        epoch,
                        seq,
                    },
                },
            ),
            11 => {
                let seq = self.rng.gen_range(1..64);
                let msg = if self.rng.gen_bool(0.5) {
                    PeerMsg::AssignAck {
                        seq,
                        ok: self.rng.gen(),
                    }
                } else {
                    PeerMsg::Revoke { seq }
                };
                sim.inject(&self.me, &anyone, msg);
            }
            12 => {
                // An assignment in another master's name, or for keys we never relayed.
                let topo = sim.topology();
                let master = topo
                    .nodes
                    .iter()
                    .flat_map(|n| n.saes.iter())
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let slaves: Vec<String> = topo
                    .node(&anyone)
                    .map(|n| n.saes.iter().take(1).cloned().collect())
                    .unwrap_or_default();
                let chunk = self.guess_seq(&self.me.clone());
                let keys = vec![AssignedKey {
                    id: Uuid::from_u128(self.rng.gen()),
                    source: KeySource::Pool(vec![Span {
                        id: chunk,
                        start: 32 * self.rng.gen_range(0..8),
                        len: 32,
                    }]),
                }];
                let msg = PeerMsg::Assign {
                    epoch: self.epoch,
                    seq: self.rng.gen_range(1..64),
                    master,
                    slaves,
                    keys,
                };
                sim.inject(&self.me, &anyone, msg);
            }
            _ => {
                if let Some((n, link)) = neighbours.choose(&mut self.rng).cloned() {
                    let newest = sim.last_block(link).unwrap_or(0);
                    let blocks = vec![newest.saturating_sub(self.rng.gen_range(0..4))];
                    sim.inject(&self.me, &n, PeerMsg::LinkMissing { blocks });
                }
            }
        }
    }

    /// `origin`'s advert as a transit node would forge it: newer than anything `origin` sent
    /// (`seq` = `u64::MAX`), every link named up and rich, with the signature of the newest
    /// genuine advert of `origin` this node saw (empty if none). Verifying receivers drop it.
    pub fn forge_advert(&self, origin: &str, links: &[&str]) -> PeerMsg {
        let sig = self
            .seen
            .iter()
            .rev()
            .find_map(|(_, m)| match m {
                PeerMsg::LinkState { origin: o, sig, .. } if o == origin => Some(sig.clone()),
                _ => None,
            })
            .unwrap_or_default();
        PeerMsg::LinkState {
            origin: NodeId::from(origin),
            run: u64::MAX,
            seq: u64::MAX,
            links: links
                .iter()
                .map(|p| kagi_km::LinkAdvert {
                    peer: NodeId::from(*p),
                    up: true,
                    rate_bps: 1 << 40,
                    tx_bytes: 1 << 40,
                    rx_bytes: 1 << 40,
                })
                .collect(),
            sig,
        }
    }

    /// A relay counter `origin` has used or will use soon: a sweep over the next few.
    fn guess_seq(&mut self, origin: &str) -> u64 {
        let top = self.relay_seq.get(origin).copied().unwrap_or(0);
        self.sweep = (self.sweep + 1) % 32;
        top + 1 + self.sweep
    }

    /// A copy of `msg` with one field broken.
    fn garble(&mut self, msg: PeerMsg) -> PeerMsg {
        match msg {
            PeerMsg::RelayHop {
                relay,
                path,
                mut pad,
                mut ct,
                mut tag,
            } => {
                match self.rng.gen_range(0..5) {
                    0 if !ct.is_empty() => {
                        let i = self.rng.gen_range(0..ct.len());
                        ct[i] ^= 1 << self.rng.gen_range(0..8);
                    }
                    1 => tag.0[self.rng.gen_range(0..tag.0.len())] ^= 0x80,
                    2 if !pad.is_empty() => {
                        let i = self.rng.gen_range(0..pad.len());
                        pad[i].start = pad[i].start.wrapping_add(self.rng.gen_range(1..64));
                    }
                    3 => pad.insert(
                        0,
                        Span {
                            id: pad.first().map_or(0, |s| s.id),
                            start: 0,
                            len: 0,
                        },
                    ),
                    _ => {
                        return PeerMsg::RelayHop {
                            relay: RelayId {
                                seq: relay.seq + 1,
                                ..relay
                            },
                            path,
                            pad,
                            ct,
                            tag,
                        }
                    }
                }
                PeerMsg::RelayHop {
                    relay,
                    path,
                    pad,
                    ct,
                    tag,
                }
            }
            PeerMsg::Assign {
                epoch,
                seq,
                master,
                slaves,
                keys,
            } => PeerMsg::Assign {
                epoch,
                seq: seq + 1,
                master,
                slaves,
                keys,
            },
            // Another origin's advert made newer and rich on every link, under the origin's
            // old signature (no RNG draw, so runs keep their choices): dropped by every
            // receiver, which verifies the origin's signature before it keeps or floods it.
            PeerMsg::LinkState {
                origin,
                run,
                seq,
                links,
                sig,
            } => PeerMsg::LinkState {
                origin,
                run,
                seq: seq + 1,
                links: links
                    .iter()
                    .map(|l| kagi_km::LinkAdvert {
                        up: true,
                        rate_bps: 1 << 40,
                        tx_bytes: 1 << 40,
                        rx_bytes: 1 << 40,
                        ..l.clone()
                    })
                    .collect(),
                sig,
            },
            PeerMsg::RelayAck { relay } | PeerMsg::RelayAborted { relay, .. } => {
                PeerMsg::RelayAborted {
                    relay: RelayId {
                        seq: relay.seq + self.rng.gen_range(0..3),
                        ..relay
                    },
                    share: None,
                    reason: kagi_km::AbortReason::LinkKeyMissing,
                }
            }
            other => other,
        }
    }

    /// A relay hop to neighbour `n` claiming relay `(origin, seq)` over `path`, with a fresh
    /// random key of `len` bytes, padded and tagged with our real half of the link: exactly what
    /// an honest node on that path would send (plus, with `empty_span`, an empty span at the
    /// start of the real one). `None` when the newest link block is spent.
    #[allow(clippy::too_many_arguments)]
    pub fn forge_relay(
        &mut self,
        sim: &Sim,
        n: &str,
        origin: &str,
        seq: u64,
        path: &[&str],
        len: usize,
        empty_span: bool,
    ) -> Option<PeerMsg> {
        let link = sim
            .topology()
            .links
            .iter()
            .position(|l| (l.a == self.me && l.b == n) || (l.b == self.me && l.a == n))?;
        let path = path.iter().map(|p| NodeId::from(*p)).collect();
        self.forge_hop(sim, link, n, origin.to_string(), seq, path, len, empty_span)
    }

    /// A relay hop on `link` to neighbour `n`, padded and tagged with our real half of the link.
    #[allow(clippy::too_many_arguments)]
    fn forge_hop(
        &mut self,
        sim: &Sim,
        link: usize,
        n: &str,
        origin: String,
        seq: u64,
        path: Vec<NodeId>,
        len: usize,
        zero_span: bool,
    ) -> Option<PeerMsg> {
        let block = sim.last_block(link)?;
        let bytes = sim.link_block(link, block);
        let half = bytes.len() / 2;
        let mine = if self.me.as_str() < n {
            &bytes[..half]
        } else {
            &bytes[half..2 * half]
        };
        let need = MAC_KEY_LEN + len;
        let off = self.spent.entry((link, block)).or_insert(0);
        let start = *off as usize;
        if start + need > mine.len() {
            return None;
        }
        *off += need as u32;
        let material = &mine[start..start + need];
        let mut pad = vec![Span {
            id: block,
            start: start as u32,
            len: need as u32,
        }];
        if zero_span {
            pad.push(Span {
                id: block,
                start: start as u32,
                len: 0,
            });
        }
        let key: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
        let ct: Vec<u8> = key
            .iter()
            .zip(&material[MAC_KEY_LEN..])
            .map(|(k, p)| k ^ p)
            .collect();
        let epoch = self.epoch_of(sim, &origin);
        let relay = RelayId {
            origin: NodeId::from(origin),
            epoch,
            seq,
        };
        let header = PeerMsg::relay_header(&relay, &path, &pad, ct.len());
        let mut mac = Mac::new(MacKey::from_bytes(&material[..MAC_KEY_LEN]).ok()?);
        mac.update(&header);
        mac.update(&ct);
        let tag: Tag = mac.finalize();
        Some(PeerMsg::RelayHop {
            relay,
            path,
            pad,
            ct,
            tag,
        })
    }
}
