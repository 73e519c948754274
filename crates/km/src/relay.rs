//! Link key intake and hop-by-hop one-time-pad relay with Wegman–Carter tags.
//!
//! Each link block is split in two halves: the node whose ID sorts first spends the first half
//! for what it sends, the other node the second half, so the two ends never spend the same bits.
//! A hop spends 32 bytes of MAC key plus as many pad bytes as the relayed key is long.

use kagi_keymat::its_mac::{Mac, MacKey, MAC_KEY_LEN};
use kagi_keymat::{Key, Tag};

use crate::keybuf::{KeyBuf, KeyBufParts, TakeError};
use crate::manager::{Action, After, KeyManager, PendingRelay, WaitingHop};
use crate::msgs::{NodeId, PeerMsg, RelayId, Span};
use crate::record::{Counter, Half, Pool, Record};
use crate::time::Instant;

/// Why a relay hop could not be taken from the link key.
enum HopFault {
    /// The link key it references has not arrived here yet (may come soon).
    NotYet,
    /// A block we no longer (or never) held: evicted, skipped while down, or fully spent.
    Missing(u64),
    /// Already spent: a replay or a broken peer.
    Spent,
}

/// Largest relayed key accepted (bytes).
const MAX_RELAY_BYTES: usize = 1 << 20;

/// Most relay hops one neighbour may have waiting for link key here.
pub(crate) const MAX_WAITING_HOPS_PER_PEER: usize = 256;

impl KeyManager {
    pub(crate) fn on_link_keys(&mut self, now: Instant, peer: NodeId, block: u64, key: Key) {
        let me_first = self.me() < peer.as_str();
        let Some(link) = self.links.get_mut(&peer) else {
            tracing::warn!(%peer, "link keys for a node that is not a neighbour; ignored");
            return;
        };
        if link.high_water.is_some_and(|hw| block <= hw) {
            return; // duplicate delivery
        }
        let mut key = key;
        let half = key.len() / 2;
        let first = key.take_front(half);
        let second = key.take_front(half); // an odd last byte is dropped
        let (tx, rx) = if me_first {
            (first, second)
        } else {
            (second, first)
        };
        self.stats.link_key_in += (tx.len() + rx.len()) as u64;
        // Buffer bounds. This node alone decides what its own half keeps (the neighbour learns
        // it from the spans we reference, oldest first). The neighbour's half is kept until the
        // neighbour references a later block (see `gc_rx`), with a hard bound for memory.
        let cap = self.cfg.policy.link_buffer_cap_bytes;
        let mut batch = Vec::with_capacity(4);
        // Buffer bounds: each end keeps the newest key, evicting its oldest blocks. Both ends
        // see the same blocks at the same times, so the neighbour's window of our half (twice as
        // large) covers what we still hold; a miss is reported back with `LinkMissing`.
        let dropped = evict_oldest(
            &mut link.tx,
            cap / 2,
            tx.len() as u64,
            &peer,
            Half::Tx,
            &mut batch,
        ) + evict_oldest(
            &mut link.rx,
            cap,
            rx.len() as u64,
            &peer,
            Half::Rx,
            &mut batch,
        );
        self.stats.link_blocks_dropped += dropped;
        let tx = KeyBuf::new(tx);
        batch.push(Record::LinkBlock {
            peer: peer.clone(),
            half: Half::Tx,
            block,
            buf: KeyBufParts::from(&tx),
        });
        link.tx.insert(block, tx);
        let rx = KeyBuf::new(rx);
        batch.push(Record::LinkBlock {
            peer: peer.clone(),
            half: Half::Rx,
            block,
            buf: KeyBufParts::from(&rx),
        });
        link.rx.insert(block, rx);
        batch.push(Record::LinkHighWater {
            peer: peer.clone(),
            block,
        });
        link.high_water = Some(block);
        self.store(batch, vec![]);
        self.retry_waiting_hops(now);
    }

    /// Free bytes of this node's half of the link to `peer`.
    pub fn link_tx_free(&self, peer: &str) -> u64 {
        self.links
            .get(peer)
            .map_or(0, |l| l.tx.values().map(|b| u64::from(b.tail_free())).sum())
    }

    /// Spends `n` bytes of this node's half of the link to `peer`, oldest blocks first.
    fn alloc_tx(
        &mut self,
        peer: &str,
        n: usize,
        batch: &mut Vec<Record>,
    ) -> Option<(Vec<Span>, Key)> {
        if (self.link_tx_free(peer) as usize) < n {
            return None;
        }
        let link = self.links.get_mut(peer)?;
        let (spans, out) = take_sequential(&mut link.tx, n as u32);
        for s in &spans {
            match link.tx.get(&s.id) {
                Some(buf) if buf.tail_free() > 0 => batch.push(Record::LinkBlock {
                    peer: peer.to_string(),
                    half: Half::Tx,
                    block: s.id,
                    buf: KeyBufParts::from(buf),
                }),
                _ => {
                    link.tx.remove(&s.id);
                    batch.push(Record::LinkBlockGone {
                        peer: peer.to_string(),
                        half: Half::Tx,
                        block: s.id,
                    });
                }
            }
        }
        self.stats.link_key_spent += n as u64;
        Some((spans, out))
    }

    /// Checks that the neighbour's half holds every span, unspent.
    fn check_rx(&self, peer: &str, spans: &[Span]) -> Result<(), HopFault> {
        let link = self.links.get(peer).ok_or(HopFault::Spent)?;
        // Spans must be non-empty and not overlap each other.
        if !Span::disjoint(spans) {
            return Err(HopFault::Spent);
        }
        for s in spans {
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

    /// Spends the spans of the neighbour's half (after [`check_rx`](Self::check_rx) passed).
    fn take_rx(&mut self, peer: &str, spans: &[Span], batch: &mut Vec<Record>) -> Key {
        let link = self.links.get_mut(peer).expect("checked");
        let mut out = Key::zeroed(0);
        for s in spans {
            let buf = link.rx.get_mut(&s.id).expect("checked");
            let k = buf.take(s.start, s.len).expect("checked");
            out.extend_from(&k);
            if buf.exhausted() {
                link.rx.remove(&s.id);
                batch.push(Record::LinkBlockGone {
                    peer: peer.to_string(),
                    half: Half::Rx,
                    block: s.id,
                });
            } else {
                batch.push(Record::LinkBlock {
                    peer: peer.to_string(),
                    half: Half::Rx,
                    block: s.id,
                    buf: KeyBufParts::from(&*buf),
                });
            }
        }
        out
    }

    /// The neighbour lacks these blocks of our half: stop spending them.
    fn on_link_missing(&mut self, peer: NodeId, blocks: Vec<u64>) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let mut batch = Vec::new();
        for b in blocks {
            if link.tx.remove(&b).is_some() {
                batch.push(Record::LinkBlockGone {
                    peer: peer.clone(),
                    half: Half::Tx,
                    block: b,
                });
            }
        }
        if !batch.is_empty() {
            self.store(batch, vec![]);
        }
    }

    /// The neighbour spends its half oldest block first, so once it references block `n` it
    /// holds nothing older: our copies of its half before `n` can go.
    fn gc_rx(&mut self, peer: &str, spans: &[Span], batch: &mut Vec<Record>) {
        // Hops from this neighbour still waiting here reference older blocks: keep those.
        let waiting = self
            .waiting_hops
            .iter()
            .filter(|h| h.from == peer)
            .filter_map(|h| match &h.msg {
                PeerMsg::RelayHop { pad, .. } => pad.iter().map(|s| s.id).min(),
                _ => None,
            });
        let Some(floor) = spans.iter().map(|s| s.id).chain(waiting).min() else {
            return;
        };
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        let old: Vec<u64> = link.rx.range(..floor).map(|(id, _)| *id).collect();
        for id in old {
            link.rx.remove(&id);
            batch.push(Record::LinkBlockGone {
                peer: peer.to_string(),
                half: Half::Rx,
                block: id,
            });
        }
    }

    /// Encrypts `key` for the hop to `next` with fresh link key. `None` if the link lacks key.
    fn seal_hop(
        &mut self,
        relay: &RelayId,
        path: &[NodeId],
        key: &Key,
        next: &str,
        batch: &mut Vec<Record>,
    ) -> Option<PeerMsg> {
        let (pad_spans, material) = self.alloc_tx(next, MAC_KEY_LEN + key.len(), batch)?;
        let (mac_key, pad) = material.expose().split_at(MAC_KEY_LEN);
        // One-time-pad ciphertext: safe to send.
        let ct: Vec<u8> = key.expose().iter().zip(pad).map(|(k, p)| k ^ p).collect();
        let header = PeerMsg::relay_header(relay, path, &pad_spans, ct.len());
        let mut mac = Mac::new(MacKey::from_bytes(mac_key).expect("32 bytes"));
        mac.update(&header);
        mac.update(&ct);
        let tag = mac.finalize();
        Some(PeerMsg::RelayHop {
            relay: relay.clone(),
            path: path.to_vec(),
            pad: pad_spans,
            ct,
            tag,
        })
    }

    /// Starts relays so that every reachable destination's pool approaches its target.
    pub(crate) fn refill(&mut self, now: Instant) {
        let topo = self.topology();
        let p = self.cfg.policy.clone();
        for node in &topo.nodes {
            let dest = node.id.as_str();
            if dest == self.me() || self.down.contains(dest) {
                continue;
            }
            let Some(path) = self.routes.path(dest).map(|p| p.to_vec()) else {
                continue;
            };
            // Computed once per destination: the pool can hold thousands of chunks.
            let mut in_flight = self
                .pending_relays
                .values()
                .filter(|r| r.dest == dest)
                .count() as u64;
            let mut have = self.pool_free(dest) + in_flight * u64::from(p.relay_chunk_bytes);
            let low = (p.pool_target_bytes as f64 * p.pool_low_water) as u64;
            loop {
                if have >= p.pool_target_bytes {
                    self.refilling.remove(dest);
                    break;
                }
                if !self.refilling.contains(dest) && have >= low {
                    break;
                }
                if in_flight >= u64::from(p.max_relays_in_flight) {
                    break;
                }
                self.refilling.insert(dest.to_string());
                if !self.start_relay(dest, &path, now) {
                    break;
                }
                in_flight += 1;
                have += u64::from(p.relay_chunk_bytes);
            }
        }
    }

    fn start_relay(&mut self, dest: &str, path: &[NodeId], now: Instant) -> bool {
        let len = self.cfg.policy.relay_chunk_bytes as usize;
        if (self.link_tx_free(&path[1]) as usize) < len + MAC_KEY_LEN {
            return false;
        }
        let seq = self.next_relay;
        let relay = self.relay_id(seq);
        let key = self.fresh_key(len);
        let mut batch = Vec::new();
        let Some(msg) = self.seal_hop(&relay, path, &key, &path[1], &mut batch) else {
            return false;
        };
        self.next_relay += 1;
        batch.push(Record::Counter {
            name: Counter::Relay,
            next: self.next_relay,
        });
        batch.push(Record::PendingRelay {
            seq,
            dest: dest.to_string(),
            key: key.clone(),
        });
        self.pending_relays.insert(
            seq,
            PendingRelay {
                dest: dest.to_string(),
                key,
                deadline: now + self.cfg.policy.relay_timeout,
                path: path[1..].to_vec(),
            },
        );
        self.stats.relays_started += 1;
        self.store(
            batch,
            vec![After::Act(Action::Send {
                to: path[1].clone(),
                msg,
            })],
        );
        true
    }

    pub(crate) fn on_peer(&mut self, now: Instant, from: NodeId, msg: PeerMsg) {
        match msg {
            PeerMsg::LinkMissing { blocks } => self.on_link_missing(from, blocks),
            PeerMsg::RelayFailed { relay } => {
                // Only a node on the relay's path can know it failed; anyone else asking to
                // cancel it is ignored.
                let on_path = relay.origin == self.me()
                    && self
                        .pending_relays
                        .get(&relay.seq)
                        .is_some_and(|p| p.path.contains(&from));
                if on_path {
                    self.pending_relays.remove(&relay.seq);
                    self.stats.relays_abandoned += 1;
                    self.store(vec![Record::PendingRelayGone { seq: relay.seq }], vec![]);
                }
            }
            PeerMsg::RelayHop { .. } => self.on_hop(now, from, msg),
            PeerMsg::RelayAck { relay } => self.on_relay_ack(from, relay),
            PeerMsg::Assign {
                seq,
                master,
                slaves,
                keys,
            } => self.on_assign(from, seq, master, slaves, keys),
            PeerMsg::AssignAck { seq, ok } => self.on_assign_ack(from, seq, ok),
            PeerMsg::Revoke { seq } => self.on_revoke(from, seq),
        }
    }

    fn on_hop(&mut self, now: Instant, from: NodeId, msg: PeerMsg) {
        let PeerMsg::RelayHop {
            relay,
            path,
            pad,
            ct,
            tag,
        } = &msg
        else {
            return;
        };
        // The path must name the authenticated sender right before us, start at the origin,
        // follow links of the topology and have no repeated node.
        let Some(pos) = path.iter().position(|n| n == self.me()) else {
            return;
        };
        let valid = pos >= 1
            && path[pos - 1] == from
            && path[0] == relay.origin
            && ct.len() <= MAX_RELAY_BYTES
            && !ct.is_empty()
            && pad.iter().map(|s| u64::from(s.len)).sum::<u64>() == (MAC_KEY_LEN + ct.len()) as u64
            && self.path_follows_links(path);
        if !valid {
            tracing::warn!(%from, "malformed relay hop dropped");
            return;
        }
        let is_dest = pos == path.len() - 1;
        if is_dest
            && self
                .in_pools
                .get(&relay.origin)
                .is_some_and(|p| p.contains_key(&relay.seq))
        {
            // Already stored (a duplicate after our ack was lost): acknowledge again.
            self.send(
                relay.origin.clone(),
                PeerMsg::RelayAck {
                    relay: relay.clone(),
                },
            );
            return;
        }
        match self.check_rx(&from, pad) {
            Ok(()) => {}
            Err(HopFault::NotYet) => {
                self.wait_hop(WaitingHop {
                    deadline: now + self.cfg.policy.hop_wait,
                    from,
                    msg,
                });
                return;
            }
            Err(HopFault::Missing(block)) => {
                // Tell the neighbour to stop spending that block, and the origin to stop waiting.
                self.stats.replays_rejected += 1;
                self.send(
                    from,
                    PeerMsg::LinkMissing {
                        blocks: vec![block],
                    },
                );
                self.send(
                    relay.origin.clone(),
                    PeerMsg::RelayFailed {
                        relay: relay.clone(),
                    },
                );
                return;
            }
            Err(HopFault::Spent) => {
                self.stats.replays_rejected += 1;
                return;
            }
        }
        let next = if is_dest {
            None
        } else {
            Some(path[pos + 1].clone())
        };
        if let Some(next) = &next {
            if (self.link_tx_free(next) as usize) < MAC_KEY_LEN + ct.len() {
                self.wait_hop(WaitingHop {
                    deadline: now + self.cfg.policy.hop_wait,
                    from,
                    msg,
                });
                return;
            }
        }
        let mut batch = Vec::new();
        let material = self.take_rx(&from, pad, &mut batch);
        let (mac_key, pad_bytes) = material.expose().split_at(MAC_KEY_LEN);
        let header = PeerMsg::relay_header(relay, path, pad, ct.len());
        let mut mac = Mac::new(MacKey::from_bytes(mac_key).expect("32 bytes"));
        mac.update(&header);
        mac.update(ct);
        if !mac.finalize().ct_eq(tag) {
            self.stats.bad_tags += 1;
            tracing::warn!(%from, origin = %relay.origin, seq = relay.seq, "relay hop failed its tag; dropped");
            self.store(batch, vec![]); // the link key is spent either way
            return;
        }
        self.gc_rx(&from, pad, &mut batch);
        let mut key = Key::from_slice(ct);
        key.xor_in_place(pad_bytes);
        match next {
            None => {
                self.stats.relays_received += 1;
                let buf = KeyBuf::new(key);
                batch.push(Record::Chunk {
                    pool: Pool::In(relay.origin.clone()),
                    chunk: relay.seq,
                    buf: KeyBufParts::from(&buf),
                });
                self.in_pools
                    .entry(relay.origin.clone())
                    .or_default()
                    .insert(relay.seq, buf);
                let ack = Action::Send {
                    to: relay.origin.clone(),
                    msg: PeerMsg::RelayAck {
                        relay: relay.clone(),
                    },
                };
                self.store(batch, vec![After::Act(ack)]);
            }
            Some(next) => {
                let fwd = self
                    .seal_hop(relay, path, &key, &next, &mut batch)
                    .expect("checked link key");
                self.stats.hops_forwarded += 1;
                self.store(batch, vec![After::Act(Action::Send { to: next, msg: fwd })]);
            }
        }
    }

    /// Parks a hop until its link key arrives; at most [`MAX_WAITING_HOPS_PER_PEER`] per
    /// neighbour, so a hostile neighbour cannot grow the queue (or the retry scans) without
    /// bound; beyond that its hops are dropped and its relays time out.
    fn wait_hop(&mut self, hop: WaitingHop) {
        let held = self
            .waiting_hops
            .iter()
            .filter(|h| h.from == hop.from)
            .count();
        if held >= MAX_WAITING_HOPS_PER_PEER {
            self.stats.replays_rejected += 1;
            tracing::warn!(from = %hop.from, "too many relay hops waiting for link key; dropped");
            return;
        }
        self.waiting_hops.push(hop);
    }

    /// Whether `path` is a simple path over links of the topology. A neighbour holds link key
    /// only with us, so without this a compromised neighbour could claim a relay from any origin
    /// over links that do not exist, and plant key under that origin's relay ID.
    fn path_follows_links(&self, path: &[NodeId]) -> bool {
        if path.len() < 2 || path.len() > self.cfg.topology.nodes.len() {
            return false;
        }
        // O(n log n) in the path length: a hostile path cannot stall the core.
        let mut seen = std::collections::BTreeSet::new();
        path.iter().all(|n| seen.insert(n.as_str()))
            && path
                .windows(2)
                .all(|w| self.adjacent.contains(&(w[0].clone(), w[1].clone())))
    }

    fn on_relay_ack(&mut self, from: NodeId, relay: RelayId) {
        if relay.origin != self.me() {
            return;
        }
        let Some(p) = self.pending_relays.get(&relay.seq) else {
            return;
        };
        if p.dest != from {
            return;
        }
        let p = self.pending_relays.remove(&relay.seq).expect("present");
        let buf = KeyBuf::new(p.key);
        let batch = vec![
            Record::Chunk {
                pool: Pool::Out(p.dest.clone()),
                chunk: relay.seq,
                buf: KeyBufParts::from(&buf),
            },
            Record::PendingRelayGone { seq: relay.seq },
        ];
        *self.out_free.entry(p.dest.clone()).or_default() += u64::from(buf.tail_free());
        self.out_pools
            .entry(p.dest)
            .or_default()
            .insert(relay.seq, buf);
        self.stats.relays_acked += 1;
        self.store(batch, vec![]);
    }

    pub(crate) fn expire_relays(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending_relays
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        for seq in expired {
            self.pending_relays.remove(&seq);
            self.stats.relays_abandoned += 1;
            batch.push(Record::PendingRelayGone { seq });
        }
        self.store(batch, vec![]);
    }

    pub(crate) fn expire_hops(&mut self, now: Instant) {
        self.waiting_hops.retain(|h| h.deadline > now);
        self.retry_waiting_hops(now);
    }

    fn retry_waiting_hops(&mut self, now: Instant) {
        if self.waiting_hops.is_empty() {
            return;
        }
        let mut hops = std::mem::take(&mut self.waiting_hops);
        // Oldest link key first, so garbage collection of the neighbour's half (`gc_rx`) never
        // overtakes a hop that is still to be retried.
        hops.sort_by_key(|h| match &h.msg {
            PeerMsg::RelayHop { pad, .. } => pad.iter().map(|s| s.id).min().unwrap_or(0),
            _ => 0,
        });
        for h in hops {
            if h.deadline > now {
                let before = self.waiting_hops.len();
                self.on_hop(now, h.from, h.msg);
                // Keep the original deadline when it goes back to waiting.
                if self.waiting_hops.len() > before {
                    if let Some(last) = self.waiting_hops.last_mut() {
                        last.deadline = h.deadline;
                    }
                }
            }
        }
    }

    /// Takes `n` bytes from the out-pool for `dest`, oldest chunks first.
    pub(crate) fn take_pool(&mut self, dest: &str, n: usize) -> Option<(Vec<Span>, Key)> {
        if (self.pool_free(dest) as usize) < n {
            return None;
        }
        let pool = self.out_pools.get_mut(dest)?;
        let (spans, out) = take_sequential(pool, n as u32);
        for s in &spans {
            self.touched.insert((Pool::Out(dest.to_string()), s.id));
        }
        if let Some(f) = self.out_free.get_mut(dest) {
            *f -= n as u64;
        }
        Some((spans, out))
    }

    /// Takes spans from the in-pool relayed by `origin`; all or nothing.
    pub(crate) fn take_in_pool(&mut self, origin: &str, spans: &[Span]) -> Option<Key> {
        if !Span::disjoint(spans) {
            return None;
        }
        let pool = self.in_pools.get_mut(origin)?;
        for s in spans {
            pool.get(&s.id)?.can_take(s.start, s.len).ok()?;
        }
        let mut out = Key::zeroed(0);
        for s in spans {
            let buf = pool.get_mut(&s.id).expect("checked");
            out.extend_from(&buf.take(s.start, s.len).expect("checked"));
            self.touched.insert((Pool::In(origin.to_string()), s.id));
        }
        Some(out)
    }

    /// Writes the final state of every pool chunk touched since the last call (one record per
    /// chunk, however many keys were cut from it), dropping exhausted chunks.
    pub(crate) fn flush_touched(&mut self, batch: &mut Vec<Record>) {
        for (pool, id) in std::mem::take(&mut self.touched) {
            let map = match &pool {
                Pool::Out(d) => self.out_pools.get_mut(d),
                Pool::In(o) => self.in_pools.get_mut(o),
            };
            let Some(map) = map else { continue };
            match map.get(&id) {
                Some(buf)
                    if buf.exhausted() || matches!(pool, Pool::Out(_)) && buf.tail_free() == 0 =>
                {
                    map.remove(&id);
                    batch.push(Record::ChunkGone { pool, chunk: id });
                }
                Some(buf) => {
                    let parts = KeyBufParts::from(buf);
                    batch.push(Record::Chunk {
                        pool,
                        chunk: id,
                        buf: parts,
                    });
                }
                None => batch.push(Record::ChunkGone { pool, chunk: id }),
            }
        }
    }
}

/// Tags an end-to-end one-time-pad message (multicast key delivery).
pub(crate) fn otp_tag(mac_key: &Key, id: &uuid::Uuid, ct: &[u8]) -> Tag {
    let mut mac = Mac::new(MacKey::from_key(mac_key).expect("32 bytes"));
    mac.update(id.as_bytes());
    mac.update(ct);
    mac.finalize()
}

/// Evicts the oldest blocks of `m` until `incoming` more bytes fit under `cap`; returns how many.
fn evict_oldest(
    m: &mut std::collections::BTreeMap<u64, KeyBuf>,
    cap: u64,
    incoming: u64,
    peer: &str,
    half: Half,
    batch: &mut Vec<Record>,
) -> u64 {
    // Blocks of one link have one size: skip the sum while the count alone shows room.
    if (m.len() as u64 + 1).saturating_mul(incoming.max(1)) <= cap {
        return 0;
    }
    let mut held: u64 = m.values().map(|b| u64::from(b.free())).sum();
    let mut n = 0;
    while held + incoming > cap {
        let Some((id, buf)) = m.pop_first() else {
            break;
        };
        held -= u64::from(buf.free());
        batch.push(Record::LinkBlockGone {
            peer: peer.to_string(),
            half,
            block: id,
        });
        n += 1;
    }
    n
}

/// Spends `n` bytes from the front of a sequentially spent buffer map (link half or out-pool),
/// oldest entry first; the caller has checked that enough is free. Returns the spans taken.
fn take_sequential(m: &mut std::collections::BTreeMap<u64, KeyBuf>, n: u32) -> (Vec<Span>, Key) {
    let mut spans = Vec::new();
    let mut out = Key::zeroed(0);
    let mut need = n;
    for (&id, buf) in m.iter_mut() {
        if need == 0 {
            break;
        }
        let take = buf.tail_free().min(need);
        if take == 0 {
            continue;
        }
        let start = buf.tail();
        out.extend_from(&buf.take(start, take).expect("tail range is free"));
        spans.push(Span {
            id,
            start,
            len: take,
        });
        need -= take;
    }
    (spans, out)
}
