//! Link key buffers: one per QKD link of this node, split into the half this node spends (tx) and
//! the half the neighbour spends (rx).
//!
//! Each link block is split in two halves: the node whose ID sorts first spends the first half
//! for what it sends, the other node the second half, so the two ends never spend the same bits.
//! Every change is written into the caller's store batch.
//!
//! Under one-way demand an end may give the unspent rest of its oldest blocks to the other end
//! ([`Links::grant`], [`Links::accept_grant`]; protocol in `crate::grants`). The grantor gives
//! the bytes up durably (its half's record shrinks) before the grant is sent; the grantee
//! durably marks them spent in its copy of the grantor's half before it spends them, so neither
//! end can spend them as its own again. The granted bytes themselves live in memory only at
//! both ends (`granted_in`, `granted_out`): a restart of either end discards them, so no
//! restored store can spend them twice.
//!
//! An end spends its own half only up to a block the neighbour has durably recorded as
//! reserved ([`Links::reserve_wanted`], protocol in `crate::reserve`): a store restored from an
//! older copy learns from the neighbour's `Seen` every block it may have spent since, even on
//! hops the neighbour never received, and drops them.

use kagi_keymat::Key;

use crate::blocks::Blocks;
use crate::keybuf::{KeyBuf, KeyBufParts, TakeError};
use crate::msgs::{NodeId, Span, GRANTED};
use crate::record::{Half, Record};
use crate::sorted_vec_map::SortedVecMap;

/// Why spans of the neighbour's half cannot be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HopFault {
    /// The link key it references has not arrived here yet (may come soon).
    NotYet,
    /// A block we no longer (or never) held: evicted, skipped while down, or fully spent.
    Missing(u64),
    /// Already spent: a replay or a broken peer.
    Spent,
}

/// The two halves of one link's key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Link {
    /// Our half; its reservation sum (`Blocks::tail_free_upto`) follows `reserved`.
    tx: Blocks,
    rx: Blocks,
    high_water: Option<u64>,
    /// Spans of the neighbour's half it granted to us: we spend them (memory only).
    granted_in: Blocks,
    /// Spans of our half we granted to the neighbour: it spends them, we check (memory only).
    granted_out: Blocks,
    /// Highest block of our half the neighbour recorded as reserved for this run: we spend
    /// nothing of our half beyond it (memory only: a new run learns it from `Seen`). Set only
    /// through [`Link::set_reserved`], which keeps `tx`'s sum of it.
    reserved: Option<u64>,
    /// Highest block asked for in a reservation not yet answered.
    asking: Option<u64>,
    /// This run took the neighbour's reservation from a `Seen` and dropped what it covers.
    synced: bool,
}

impl Link {
    /// See [`Links::reserve_wanted`].
    fn reserve_wanted(&self, ahead: u64) -> Option<u64> {
        if self.tx.tail_free_upto() >= ahead / 2 {
            return None;
        }
        let mut free = 0u64;
        let mut upto = None;
        for (id, b) in self.tx.iter() {
            free += u64::from(b.tail_free());
            upto = Some(*id);
            if free >= ahead {
                break;
            }
        }
        let upto = upto?;
        let known = self.reserved.max(self.asking);
        known.is_none_or(|k| upto > k).then_some(upto)
    }

    /// Sets the reservation of our half, and the block up to which `tx` sums it.
    fn set_reserved(&mut self, reserved: Option<u64>) {
        self.reserved = reserved;
        self.tx.set_upto(reserved);
    }
}

/// Most spans one grant names.
pub(crate) const MAX_GRANT_SPANS: usize = 256;

/// Records what is left of block `id` of the neighbour's half after a take: its new state, or
/// its removal once every byte of it is spent.
fn settle_rx(rx: &mut Blocks, peer: &NodeId, id: u64, batch: &mut Vec<Record>) {
    let Some(buf) = rx.get(&id) else {
        return;
    };
    if buf.exhausted() {
        rx.remove(&id);
        batch.push(Record::LinkBlockGone {
            peer: peer.clone(),
            half: Half::Rx,
            block: id,
        });
    } else {
        batch.push(Record::LinkBlock {
            peer: peer.clone(),
            half: Half::Rx,
            block: id,
            buf: KeyBufParts::from(buf),
        });
    }
}

/// A buffer holding granted bytes at their place in the block: `[0, start)` counts as spent, so
/// the grantee spends sequentially from `start` and span offsets mean the same at both ends.
fn grant_buf(start: u32, bytes: Key) -> KeyBuf {
    if start == 0 {
        return KeyBuf::new(bytes);
    }
    let mut data = Key::zeroed(start as usize);
    data.extend_from(&bytes);
    KeyBuf::from_parts(data, vec![(0, start)])
}

/// Drops the oldest entries of a memory-only map of granted bytes beyond `cap` free bytes.
fn trim_granted(m: &mut Blocks, cap: u64) {
    while m.free() > cap {
        if m.pop_first().is_none() {
            break;
        }
    }
}

/// What one link holds, for status (no key bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkHeld {
    pub(crate) tx_bytes: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) high_water: Option<u64>,
}

/// The link key buffers of every link of this node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Links {
    /// Few entries (one per neighbour), looked up on every relay hop and link block.
    map: SortedVecMap<NodeId, Link>,
}

impl Links {
    /// One empty link per neighbour.
    pub(crate) fn new<'a>(neighbours: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            map: neighbours
                .into_iter()
                .map(|n| (NodeId::from(n), Link::default()))
                .collect(),
        }
    }

    /// Restores one block half from the store.
    pub(crate) fn restore_block(&mut self, peer: NodeId, half: Half, block: u64, buf: KeyBuf) {
        let link = self.map.get_or_insert_default(peer);
        match half {
            Half::Tx => link.tx.insert(block, buf),
            Half::Rx => link.rx.insert(block, buf),
        };
    }

    /// Restores a link's high-water mark from the store.
    pub(crate) fn restore_high_water(&mut self, peer: NodeId, block: u64) {
        self.map.get_or_insert_default(peer).high_water = Some(block);
    }

    /// True when `peer` is a neighbour.
    pub(crate) fn contains(&self, peer: &NodeId) -> bool {
        self.map.contains_key(peer)
    }

    /// What each link holds, neighbour order.
    pub(crate) fn held(&self) -> impl Iterator<Item = (&NodeId, LinkHeld)> {
        self.map.iter().map(|(p, l)| {
            (
                p,
                LinkHeld {
                    tx_bytes: l.tx.free() + l.granted_in.free(),
                    rx_bytes: l.rx.free() + l.granted_out.free(),
                    high_water: l.high_water,
                },
            )
        })
    }

    /// Unspent bytes over every link, both halves.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.held().map(|(_, h)| h.tx_bytes + h.rx_bytes).sum()
    }

    /// Stores a block delivered by the QKD link to `peer`, evicting the oldest blocks beyond
    /// `cap` bytes per link. Returns `None` for a non-neighbour or a duplicate, otherwise
    /// `(bytes taken in, blocks evicted)`.
    pub(crate) fn intake(
        &mut self,
        me_first: bool,
        peer: &NodeId,
        block: u64,
        key: Key,
        cap: u64,
        batch: &mut Vec<Record>,
    ) -> Option<(u64, u64)> {
        let link = self.map.get_mut(peer)?;
        if link.high_water.is_some_and(|hw| block <= hw) || block & GRANTED != 0 {
            return None; // duplicate delivery, or an id spans could not name
        }
        // Each half is copied once into its own buffer (an odd last byte is dropped); the block
        // itself is wiped when its last holder drops it.
        let half = key.len() / 2;
        let first = key.copy_range(0..half);
        let second = key.copy_range(half..2 * half);
        let (tx, rx) = if me_first {
            (first, second)
        } else {
            (second, first)
        };
        let taken = (tx.len() + rx.len()) as u64;
        // Buffer bounds: each end keeps the newest key, evicting its oldest blocks. Both ends
        // see the same blocks at the same times, so the neighbour's window of our half (twice as
        // large) covers what we still hold; a miss is reported back with `LinkMissing`.
        let dropped = evict_oldest(
            &mut link.tx,
            cap / 2,
            tx.len() as u64,
            peer,
            Half::Tx,
            batch,
        ) + evict_oldest(&mut link.rx, cap, rx.len() as u64, peer, Half::Rx, batch);
        // Granted bytes are bounded like the halves they came from (a grantee that asks and
        // never spends cannot make the grantor hold more).
        trim_granted(&mut link.granted_in, cap / 2);
        trim_granted(&mut link.granted_out, cap);
        for (half, buf, map) in [
            (Half::Tx, KeyBuf::new(tx), &mut link.tx),
            (Half::Rx, KeyBuf::new(rx), &mut link.rx),
        ] {
            batch.push(Record::LinkBlock {
                peer: peer.clone(),
                half,
                block,
                buf: KeyBufParts::from(&buf),
            });
            map.insert(block, buf);
        }
        batch.push(Record::LinkHighWater {
            peer: peer.clone(),
            block,
        });
        link.high_water = Some(block);
        Some((taken, dropped))
    }

    /// Free bytes this node may spend on the link to `peer`: its own half and what the
    /// neighbour granted it.
    pub(crate) fn tx_free(&self, peer: &NodeId) -> u64 {
        self.own_tx_free(peer) + self.granted_in_free(peer)
    }

    /// Free bytes of this node's own half of the link to `peer` that it may spend now: in
    /// blocks the neighbour reserved for it.
    pub(crate) fn own_tx_free(&self, peer: &NodeId) -> u64 {
        self.map.get(peer).map_or(0, |l| l.tx.tail_free_upto())
    }

    /// Free bytes this node holds towards `peer`, reserved or not: its own half and what the
    /// neighbour granted it.
    pub(crate) fn tx_held(&self, peer: &NodeId) -> u64 {
        self.map
            .get(peer)
            .map_or(0, |l| l.tx.tail_free() + l.granted_in.tail_free())
    }

    /// The block to ask the neighbour `peer` to reserve next, if one is due: when less than
    /// half of `ahead` bytes are left in reserved blocks and no request for as much is
    /// outstanding, the block by which `ahead` free bytes are covered (or the newest one held).
    /// A larger `ahead` hides the round trip better and costs more at a restart (reserved
    /// bytes left unspent are dropped then).
    pub(crate) fn reserve_wanted(&self, peer: &NodeId, ahead: u64) -> Option<u64> {
        self.map.get(peer).and_then(|l| l.reserve_wanted(ahead))
    }

    /// Per neighbour, in one pass over the links: the reservation asked for and not yet
    /// answered, and whether one is due ([`reserve_wanted`](Self::reserve_wanted)).
    pub(crate) fn reserve_states(
        &self,
        ahead: u64,
    ) -> impl Iterator<Item = (&NodeId, Option<u64>, bool)> {
        self.map
            .iter()
            .map(move |(p, l)| (p, l.asking, l.reserve_wanted(ahead).is_some()))
    }

    /// A reservation up to `upto` was asked for (answer pending).
    pub(crate) fn asking(&mut self, peer: &NodeId, upto: u64) {
        if let Some(l) = self.map.get_mut(peer) {
            l.asking = l.asking.max(Some(upto));
        }
    }

    /// The outstanding reservation request towards `peer`, if any.
    pub(crate) fn asked(&self, peer: &NodeId) -> Option<u64> {
        self.map.get(peer).and_then(|l| l.asking)
    }

    /// The neighbour `peer` recorded our half as reserved up to `upto`: spend up to there.
    pub(crate) fn reserved(&mut self, peer: &NodeId, upto: u64) {
        if let Some(l) = self.map.get_mut(peer) {
            l.set_reserved(l.reserved.max(Some(upto)));
            if l.asking.is_some_and(|a| a <= upto) {
                l.asking = None;
            }
        }
    }

    /// The first `Seen` of this run from `peer` says it reserved our half up to `reserved`:
    /// every block an earlier run (of this store or of a copy of it) may have spent. Drops our
    /// half up to there, once per run (later `Seen`s would only drop what this run reserved
    /// and did not spend yet). Returns the unspent bytes dropped.
    pub(crate) fn sync_reserved(
        &mut self,
        peer: &NodeId,
        reserved: Option<u64>,
        batch: &mut Vec<Record>,
    ) -> u64 {
        let Some(l) = self.map.get_mut(peer) else {
            return 0;
        };
        if std::mem::replace(&mut l.synced, true) {
            return 0;
        }
        let Some(r) = reserved else {
            return 0;
        };
        l.set_reserved(l.reserved.max(Some(r)));
        drop_where(&mut l.tx, peer, Half::Tx, |id| id <= r, batch)
    }

    /// Forgets the reservation of our half at `peer` (a new store of it holds none of ours,
    /// or this run has not heard its `Seen` yet).
    pub(crate) fn clear_reserved(&mut self, peer: &NodeId) {
        if let Some(l) = self.map.get_mut(peer) {
            l.set_reserved(None);
            l.asking = None;
        }
    }

    /// Free bytes the neighbour `peer` granted this node.
    fn granted_in_free(&self, peer: &NodeId) -> u64 {
        self.map.get(peer).map_or(0, |l| l.granted_in.tail_free())
    }

    /// Spends `n` bytes on the link to `peer`: granted bytes first (a restart discards them),
    /// then this node's own half, oldest blocks first. Spans in granted bytes carry
    /// [`GRANTED`].
    pub(crate) fn alloc_tx(
        &mut self,
        peer: &NodeId,
        n: usize,
        batch: &mut Vec<Record>,
    ) -> Option<(Vec<Span>, Key)> {
        if (self.tx_free(peer) as usize) < n {
            return None;
        }
        let from_granted = (self.granted_in_free(peer) as usize).min(n) as u32;
        let link = self.map.get_mut(peer)?;
        let (mut spans, mut out) = link.granted_in.take_sequential(None, from_granted);
        link.granted_in.retain(|_, b| b.tail_free() > 0);
        for s in &mut spans {
            s.id |= GRANTED;
        }
        // Only reserved blocks: `tx_free` counted no others.
        let (own, rest) = match link.reserved {
            Some(r) => link.tx.take_sequential(Some(r), n as u32 - from_granted),
            None => (Vec::new(), Key::zeroed(0)),
        };
        out.extend_from(&rest);
        spans.extend_from_slice(&own);
        for s in &own {
            match link.tx.get(&s.id) {
                Some(buf) if buf.tail_free() > 0 => batch.push(Record::LinkBlock {
                    peer: peer.clone(),
                    half: Half::Tx,
                    block: s.id,
                    buf: KeyBufParts::from(buf),
                }),
                _ => {
                    link.tx.remove(&s.id);
                    batch.push(Record::LinkBlockGone {
                        peer: peer.clone(),
                        half: Half::Tx,
                        block: s.id,
                    });
                }
            }
        }
        Some((spans, out))
    }

    /// Checks that the neighbour's half (or what we granted it) holds every span, unspent.
    pub(crate) fn check_rx(&self, peer: &NodeId, spans: &[Span]) -> Result<(), HopFault> {
        let link = self.map.get(peer).ok_or(HopFault::Spent)?;
        // Spans must be non-empty and not overlap each other.
        if !Span::disjoint(spans) {
            return Err(HopFault::Spent);
        }
        for s in spans {
            if s.is_granted() {
                // Only what this node granted: a neighbour can name no other byte of our half.
                match link.granted_out.get(&s.block()) {
                    Some(buf) => buf.can_take(s.start, s.len).map_err(|_| HopFault::Spent)?,
                    None => return Err(HopFault::Missing(s.id)),
                }
                continue;
            }
            match link.rx.get(&s.id) {
                Some(buf) => buf.can_take(s.start, s.len).map_err(|e| match e {
                    TakeError::OutOfBounds | TakeError::AlreadySpent => HopFault::Spent,
                })?,
                None if link.high_water.is_none_or(|hw| s.id > hw) => return Err(HopFault::NotYet),
                None => return Err(HopFault::Missing(s.id)),
            }
        }
        Ok(())
    }

    /// Blocks of the neighbour's half from `block` on that this end lacks and will never get:
    /// the run of ids up to the next block held (or the high-water mark), at most `max`. The
    /// neighbour spends oldest first, so after a gap (this end was down, or discarded a restored
    /// copy) it would otherwise learn of the missing blocks one failed hop at a time.
    pub(crate) fn missing_run(&self, peer: &NodeId, block: u64, max: usize) -> Vec<u64> {
        if block & GRANTED != 0 {
            return vec![block]; // a grant this node does not hold (any more)
        }
        let Some(l) = self.map.get(peer) else {
            return vec![block];
        };
        let Some(hw) = l.high_water else {
            return vec![block];
        };
        let end =
            l.rx.range(block..)
                .next()
                .map_or(hw, |(id, _)| id.saturating_sub(1))
                .min(hw);
        (block..=end.max(block)).take(max.max(1)).collect()
    }

    /// Spends the spans of the neighbour's half. `None` unless [`check_rx`](Self::check_rx)
    /// passes for them.
    pub(crate) fn take_rx(
        &mut self,
        peer: &NodeId,
        spans: &[Span],
        batch: &mut Vec<Record>,
    ) -> Option<Key> {
        self.check_rx(peer, spans).ok()?;
        let link = self.map.get_mut(peer)?;
        let mut out = Key::zeroed(0);
        for s in spans {
            if s.is_granted() {
                let (k, exhausted) = link.granted_out.update(s.block(), |buf| {
                    buf.take(s.start, s.len).ok().map(|k| (k, buf.exhausted()))
                })??;
                out.extend_from(&k);
                if exhausted {
                    link.granted_out.remove(&s.block());
                }
                continue;
            }
            let k = link
                .rx
                .update(s.id, |buf| buf.take(s.start, s.len).ok())??;
            out.extend_from(&k);
            settle_rx(&mut link.rx, peer, s.id, batch);
        }
        Some(out)
    }

    /// The neighbour lacks these blocks of our half: stop spending them.
    pub(crate) fn forget_tx(&mut self, peer: &NodeId, blocks: &[u64], batch: &mut Vec<Record>) {
        let Some(link) = self.map.get_mut(peer) else {
            return;
        };
        for &b in blocks {
            if b & GRANTED != 0 {
                link.granted_in.remove(&(b & !GRANTED));
                continue;
            }
            if link.tx.remove(&b).is_some() {
                batch.push(Record::LinkBlockGone {
                    peer: peer.clone(),
                    half: Half::Tx,
                    block: b,
                });
            }
        }
    }

    /// Drops the neighbour's half below block `floor` (it spends oldest first, so once it
    /// references `floor` it holds nothing older).
    pub(crate) fn gc_rx(&mut self, peer: &NodeId, floor: u64, batch: &mut Vec<Record>) {
        let Some(link) = self.map.get_mut(peer) else {
            return;
        };
        let old: Vec<u64> = link.rx.range(..floor).map(|(id, _)| *id).collect();
        for id in old {
            link.rx.remove(&id);
            batch.push(Record::LinkBlockGone {
                peer: peer.clone(),
                half: Half::Rx,
                block: id,
            });
        }
    }
}

impl Links {
    /// The lowest block held of the link to `peer` (either half), or, holding none, the one
    /// after the high-water mark; `None` if nothing was ever received.
    pub(crate) fn lowest_block(&self, peer: &NodeId) -> Option<u64> {
        let l = self.map.get(peer)?;
        let low = [
            l.tx.keys().next(),
            l.rx.keys().next(),
            l.granted_in.keys().next(),
            l.granted_out.keys().next(),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied();
        low.or(l.high_water.map(|hw| hw + 1))
    }

    /// Drops both halves of every block below `low`: the neighbour holds none of them. Returns
    /// the unspent bytes dropped.
    pub(crate) fn drop_below(&mut self, peer: &NodeId, low: u64, batch: &mut Vec<Record>) -> u64 {
        let Some(l) = self.map.get_mut(peer) else {
            return 0;
        };
        l.granted_in.retain(|id, _| id >= low);
        l.granted_out.retain(|id, _| id >= low);
        drop_where(&mut l.tx, peer, Half::Tx, |id| id < low, batch)
            + drop_where(&mut l.rx, peer, Half::Rx, |id| id < low, batch)
    }

    /// Drops every block of the link to `peer` (both halves) and every grant either way: the
    /// neighbour holds none of them. Returns the unspent bytes dropped.
    pub(crate) fn drop_all(&mut self, peer: &NodeId, batch: &mut Vec<Record>) -> u64 {
        let Some(l) = self.map.get_mut(peer) else {
            return 0;
        };
        l.granted_in.clear();
        l.granted_out.clear();
        drop_where(&mut l.tx, peer, Half::Tx, |_| true, batch)
            + drop_where(&mut l.rx, peer, Half::Rx, |_| true, batch)
    }

    /// Drops both halves of every block up to `hw`. Returns the unspent bytes dropped.
    pub(crate) fn drop_upto(&mut self, peer: &NodeId, hw: u64, batch: &mut Vec<Record>) -> u64 {
        let Some(l) = self.map.get_mut(peer) else {
            return 0;
        };
        l.granted_in.retain(|id, _| id > hw);
        l.granted_out.retain(|id, _| id > hw);
        drop_where(&mut l.tx, peer, Half::Tx, |id| id <= hw, batch)
            + drop_where(&mut l.rx, peer, Half::Rx, |id| id <= hw, batch)
    }

    /// Drops this node's half of every block up to `hw`. Returns the unspent bytes dropped.
    pub(crate) fn drop_tx_upto(&mut self, peer: &NodeId, hw: u64, batch: &mut Vec<Record>) -> u64 {
        let Some(l) = self.map.get_mut(peer) else {
            return 0;
        };
        drop_where(&mut l.tx, peer, Half::Tx, |id| id <= hw, batch)
    }

    /// The lowest block of our half of the link to `peer`, and whether none of it is spent yet
    /// (sent in `Hello`, so the neighbour can make the test of [`tx_behind`](Self::tx_behind)).
    pub(crate) fn tx_low(&self, peer: &NodeId) -> Option<(u64, bool)> {
        let (id, b) = self.map.get(peer)?.tx.iter().next()?;
        Some((*id, b.tail() == 0))
    }

    /// True when the neighbour saw block `seen` of our half spent while this store holds an
    /// older block of that half, or that very block unspent: we spend oldest first and persist
    /// before we send, so only an older copy of the store can look like that.
    pub(crate) fn tx_behind(&self, peer: &NodeId, seen: u64) -> bool {
        self.map.get(peer).is_some_and(|l| {
            l.tx.range(..=seen)
                .any(|(id, b)| *id < seen || b.tail() == 0)
        })
    }
}

impl Links {
    /// Gives the neighbour `peer` the unspent rest of this node's oldest blocks, up to about
    /// `want` bytes, keeping at least `reserve` bytes of its own half. The bytes leave this
    /// node's half in `batch` (durable before the grant is sent) and stay here, in memory
    /// only, to check and decrypt what the neighbour sends with them. Returns the spans given.
    pub(crate) fn grant(
        &mut self,
        peer: &NodeId,
        want: u64,
        reserve: u64,
        batch: &mut Vec<Record>,
    ) -> Vec<Span> {
        let mut left = self.map.get(peer).map_or(0, |l| l.tx.tail_free());
        let Some(link) = self.map.get_mut(peer) else {
            return Vec::new();
        };
        let mut spans = Vec::new();
        let mut given = 0u64;
        let ids: Vec<u64> = link.tx.keys().copied().collect();
        for id in ids {
            if given >= want || spans.len() >= MAX_GRANT_SPANS {
                break;
            }
            let Some(buf) = link.tx.get(&id) else {
                continue;
            };
            let (start, len) = (buf.tail(), buf.tail_free());
            if left.saturating_sub(u64::from(len)) < reserve {
                break; // oldest first: the rest is this node's reserve
            }
            let Some(Ok(bytes)) = link.tx.update(id, |buf| buf.take(start, len)) else {
                continue;
            };
            // Nothing of this block is left to this node's sequential spending: it goes.
            link.tx.remove(&id);
            batch.push(Record::LinkBlockGone {
                peer: peer.clone(),
                half: Half::Tx,
                block: id,
            });
            if len == 0 {
                continue;
            }
            link.granted_out.insert(id, grant_buf(start, bytes));
            spans.push(Span { id, start, len });
            left -= u64::from(len);
            given += u64::from(len);
        }
        spans
    }

    /// Takes a grant from the neighbour `peer`: spans of *its* half, each to the end of its
    /// block. Each one is marked spent in our copy of that half (in `batch`, durable before
    /// anything is spent with it) and becomes ours to spend. Spans that are not wholly unspent
    /// there (a duplicate, a replay, a hostile or confused peer) are ignored. Returns the
    /// highest block and the bytes taken, if any.
    pub(crate) fn accept_grant(
        &mut self,
        peer: &NodeId,
        spans: &[Span],
        batch: &mut Vec<Record>,
    ) -> Option<(u64, u64)> {
        let link = self.map.get_mut(peer)?;
        if spans.len() > MAX_GRANT_SPANS {
            return None;
        }
        let mut top = None;
        let mut bytes = 0u64;
        for s in spans {
            if s.is_granted() || s.len == 0 || link.granted_in.contains_key(&s.id) {
                continue;
            }
            let Some(buf) = link.rx.get(&s.id) else {
                continue;
            };
            if s.start.checked_add(s.len) != Some(buf.len()) {
                continue; // a grant runs to the end of its block
            }
            let Some(Ok(k)) = link.rx.update(s.id, |buf| buf.take(s.start, s.len)) else {
                continue;
            };
            settle_rx(&mut link.rx, peer, s.id, batch);
            link.granted_in.insert(s.id, grant_buf(s.start, k));
            top = top.max(Some(s.id));
            bytes += u64::from(s.len);
        }
        top.map(|t| (t, bytes))
    }

    /// Forgets every grant either way with `peer` (a new run of it holds none of them).
    pub(crate) fn drop_grants(&mut self, peer: &NodeId) {
        if let Some(l) = self.map.get_mut(peer) {
            l.granted_in.clear();
            l.granted_out.clear();
        }
    }
}

/// Drops the blocks of one half whose id matches; returns their unspent bytes.
fn drop_where(
    m: &mut Blocks,
    peer: &NodeId,
    half: Half,
    drop: impl Fn(u64) -> bool,
    batch: &mut Vec<Record>,
) -> u64 {
    let ids: Vec<u64> = m.keys().copied().filter(|id| drop(*id)).collect();
    let mut bytes = 0;
    for id in ids {
        if let Some(b) = m.remove(&id) {
            bytes += u64::from(b.free());
        }
        batch.push(Record::LinkBlockGone {
            peer: peer.clone(),
            half,
            block: id,
        });
    }
    bytes
}

/// Evicts the oldest blocks of `m` until `incoming` more bytes fit under `cap`; returns how many.
fn evict_oldest(
    m: &mut Blocks,
    cap: u64,
    incoming: u64,
    peer: &NodeId,
    half: Half,
    batch: &mut Vec<Record>,
) -> u64 {
    // Blocks of one link have one size: skip the sum while the count alone shows room.
    if (m.len() as u64 + 1).saturating_mul(incoming.max(1)) <= cap {
        return 0;
    }
    let mut n = 0;
    while m.free() + incoming > cap {
        let Some((id, _)) = m.pop_first() else {
            break;
        };
        batch.push(Record::LinkBlockGone {
            peer: peer.clone(),
            half,
            block: id,
        });
        n += 1;
    }
    n
}
