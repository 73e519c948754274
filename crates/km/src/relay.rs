//! Link key intake and hop-by-hop one-time-pad relay with Wegman–Carter tags.
//!
//! Each link block is split in two halves: the node whose ID sorts first spends the first half
//! for what it sends, the other node the second half, so the two ends never spend the same bits.
//! A hop spends 32 bytes of MAC key plus as many pad bytes as the relayed key is long.

use std::collections::{BTreeMap, BTreeSet};

use kagi_keymat::its_mac::{Mac, MacKey, MAC_KEY_LEN};
use kagi_keymat::{Key, Tag};
use kagi_sharing::amd::{self, AMD_OVERHEAD};

use crate::config::MAX_PATHS;
use crate::links::HopFault;
use crate::manager::KeyManager;
use crate::msgs::{AbortReason, NodeId, PeerMsg, RelayId, ShareInfo, Span};
use crate::outbox::{Action, After};
use crate::pending::PendingRelays;
use crate::plan_slots::PlanSlots;
use crate::record::{Counter, Record, RelayRoute};
use crate::routing::RoutePlan;
use crate::time::Instant;

/// Most multi-path relays a destination collects shares for at once (bounds what neighbours
/// can make it hold).
const MAX_PARTIALS: usize = 4096;

/// Largest relayed key accepted (bytes).
const MAX_RELAY_BYTES: usize = 1 << 20;

/// Most relay hops one neighbour may have waiting for link key here.
pub(crate) const MAX_WAITING_HOPS_PER_PEER: usize = 256;

/// Blocks of a neighbour's half kept below the oldest one its latest hop referenced.
const GC_LAG_BLOCKS: u64 = 2;

/// Most block ids one `LinkMissing` names.
const MAX_MISSING_REPORT: usize = 4096;

/// A relay started here and not yet acknowledged by its destination.
#[derive(Debug, Clone)]
pub(crate) struct PendingRelay {
    pub(crate) dest: NodeId,
    pub(crate) key: Key,
    pub(crate) deadline: Instant,
    /// The path of each share (one path for single-path relay).
    pub(crate) paths: Vec<Vec<NodeId>>,
    /// Shares that rebuild the key.
    pub(crate) threshold: u8,
    /// Shares a node on their path reported lost, and shares never sent (their first hop had
    /// no link key when the relay started).
    pub(crate) lost: BTreeSet<u8>,
    /// Shares sent (all but those never sent).
    pub(crate) sent: usize,
}

impl PendingRelay {
    /// Link key this node spent on it (pad and MAC key on each first hop; shares are longer
    /// than the key by the manipulation check's overhead).
    pub(crate) fn spent_here(&self) -> u64 {
        let share = self.key.len()
            + if self.paths.len() > 1 {
                AMD_OVERHEAD
            } else {
                0
            };
        (share + MAC_KEY_LEN) as u64 * self.sent.max(1) as u64
    }
}

/// Shares of a multi-path relay collected at its destination. Each share is an XOR or Shamir
/// share of an AMD codeword of the key ([`kagi_sharing::amd`]), so a rebuilt key that passes
/// the codeword's check is the origin's key, whatever nodes on fewer than `threshold` paths did.
#[derive(Debug, Clone)]
struct Partial {
    threshold: u8,
    count: u8,
    /// Every share's path, as the first share told it; later shares must say the same.
    paths: Vec<Vec<NodeId>>,
    shares: BTreeMap<u8, Key>,
    deadline: Instant,
    /// The shares the key was rebuilt from (empty until then). Kept until the other shares
    /// arrive or the deadline passes, to check that late shares agree.
    used: Vec<u8>,
    /// Some set of shares already failed the manipulation check.
    manipulated: bool,
}

/// Which nodes could have seen which shares of one relay started here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayExposure {
    /// The relay's counter at this node.
    pub seq: u64,
    /// Destination node.
    pub dest: NodeId,
    /// Shares that rebuild the key (1: the whole key travels on one path).
    pub threshold: u8,
    /// Share index → its path `[origin, ..., dest]`.
    pub shares: Vec<(u8, Vec<NodeId>)>,
}

impl RelayExposure {
    /// The shares that pass through `node` as an intermediate (the ends excluded).
    pub fn shares_seen_by(&self, node: &str) -> Vec<u8> {
        self.shares
            .iter()
            .filter(|(_, p)| p.len() > 2 && p[1..p.len() - 1].iter().any(|n| n == node))
            .map(|(i, _)| *i)
            .collect()
    }

    /// The most shares any one intermediate node sees. Below `threshold`, no single trusted
    /// node on the way can learn anything about the key.
    pub fn max_seen_by_one_node(&self) -> usize {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, p) in &self.shares {
            for n in p.iter().skip(1).take(p.len().saturating_sub(2)) {
                *count.entry(n.as_str()).or_default() += 1;
            }
        }
        count.values().copied().max().unwrap_or(0)
    }
}

/// A relay hop that arrived before its link key, or before key to forward it.
#[derive(Debug, Clone)]
pub(crate) struct WaitingHop {
    pub(crate) deadline: Instant,
    pub(crate) from: NodeId,
    pub(crate) msg: PeerMsg,
}

/// Relay state of one node: relays it started, hops waiting here, shares collected here, its
/// relay counter.
#[derive(Debug, Clone)]
pub(crate) struct Relays {
    pending: PendingRelays,
    waiting: Vec<WaitingHop>,
    partial: BTreeMap<RelayId, Partial>,
    pub(crate) next_seq: u64,
    /// Refill's copy of the routing plans, by destination index.
    plan_slots: PlanSlots,
    /// Whether a waiting hop may have become able to go on since they were last retried.
    /// Hops wait for link key, for key to forward them or for a neighbour to reconcile; only
    /// an input (link key, a peer message, a store acknowledgement, ...), a hop that expired,
    /// shares that were forgotten, or a retried hop that went on can change that. Timer ticks
    /// in between leave every waiting hop waiting, so retrying them then is skipped.
    retry_due: bool,
    /// The last refill tick that changed nothing, to skip the next ones (see `crate::quiet`).
    pub(crate) quiet: crate::quiet::QuietMark,
}

impl Default for Relays {
    fn default() -> Self {
        Self {
            pending: PendingRelays::default(),
            waiting: Vec::new(),
            partial: BTreeMap::new(),
            next_seq: 1,
            plan_slots: PlanSlots::default(),
            retry_due: true,
            quiet: Default::default(),
        }
    }
}

impl Relays {
    /// Which nodes could see which shares, for every relay in flight from here.
    pub(crate) fn exposures(&self) -> Vec<RelayExposure> {
        self.pending
            .iter()
            .map(|(seq, p)| RelayExposure {
                seq: *seq,
                dest: p.dest.clone(),
                threshold: p.threshold,
                shares: p
                    .paths
                    .iter()
                    .enumerate()
                    .map(|(i, path)| (i as u8 + 1, path.clone()))
                    .collect(),
            })
            .collect()
    }

    /// Restores the relay counter from the store (it only moves forward).
    pub(crate) fn restore_counter(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }

    /// Forgets every relay in flight to `dest`; returns their counters.
    pub(crate) fn drop_pending_to(&mut self, dest: &NodeId) -> Vec<u64> {
        let seqs: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.dest == *dest)
            .map(|(s, _)| *s)
            .collect();
        for s in &seqs {
            self.pending.remove(s);
        }
        seqs
    }

    /// Forgets every relay in flight whose path (after this node) passes through or ends at
    /// `node`, or, with `first_hop_only`, whose first hop is `node`; returns them.
    pub(crate) fn drop_pending_via(
        &mut self,
        node: &NodeId,
        first_hop_only: bool,
    ) -> Vec<(u64, PendingRelay)> {
        let seqs: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.paths.iter().any(|path| {
                    if first_hop_only {
                        path.get(1).is_some_and(|n| n == node)
                    } else {
                        path.iter().skip(1).any(|n| n == node)
                    }
                })
            })
            .map(|(s, _)| *s)
            .collect();
        seqs.into_iter()
            .filter_map(|s| self.pending.remove(&s).map(|p| (s, p)))
            .collect()
    }

    /// Marks lost every share of a pending relay whose path runs through or to `node`, and
    /// removes the relays left with fewer shares than their threshold (a single-path relay
    /// through `node` among them).
    pub(crate) fn lose_shares_via(&mut self, node: &NodeId) -> Vec<(u64, PendingRelay)> {
        self.lose_shares_where(|path| path.iter().skip(1).any(|n| n == node))
    }

    /// Like [`lose_shares_via`](Self::lose_shares_via), for the shares whose path `lost` says.
    pub(crate) fn lose_shares_where(
        &mut self,
        lost: impl Fn(&[NodeId]) -> bool,
    ) -> Vec<(u64, PendingRelay)> {
        let mut dead = Vec::new();
        for (seq, p) in self.pending.iter_mut() {
            for (i, path) in p.paths.iter().enumerate() {
                if lost(path) {
                    p.lost.insert(i as u8 + 1);
                }
            }
            if p.paths.len() - p.lost.len().min(p.paths.len()) < usize::from(p.threshold.max(1)) {
                dead.push(*seq);
            }
        }
        dead.into_iter()
            .filter_map(|s| self.pending.remove(&s).map(|p| (s, p)))
            .collect()
    }

    /// Hops wait for link key and an input since their last try may let them go on: the next
    /// timeout retries them.
    pub(crate) fn hop_retry_due(&self) -> bool {
        self.retry_due && !self.waiting.is_empty()
    }

    /// Parks `hop` as waiting for link key, its retry not yet due (as right after a timeout
    /// retried it), for tests of what wakes it.
    #[cfg(test)]
    pub(crate) fn park_hop(&mut self, hop: WaitingHop) {
        self.waiting.push(hop);
        self.retry_due = false;
    }

    /// Something outside the timers happened: waiting hops are to be retried.
    /// Returns whether that made a hop retry due that was not.
    pub(crate) fn note_input(&mut self) -> bool {
        let was = self.hop_retry_due();
        self.retry_due = true;
        !was && self.hop_retry_due()
    }

    /// An input that may change what refill reads beyond the counters of its fingerprint
    /// (which peers reconciled): the next refill tick runs.
    pub(crate) fn wake_refill(&mut self) {
        self.quiet.clear();
    }

    /// Skips quiet refill ticks (`true`, the default) or runs every one.
    pub(crate) fn skip_quiet_refills(&mut self, on: bool) {
        self.quiet.enable(on);
    }

    /// Refill ticks skipped as quiet so far.
    pub(crate) fn quiet_refills_skipped(&self) -> u64 {
        self.quiet.skipped()
    }

    /// Of those, ticks skipped after a look at the destinations whose counters moved.
    pub(crate) fn quiet_refills_looked(&self) -> u64 {
        self.quiet.looked()
    }

    /// Relays towards `dest` started here and not yet acknowledged.
    pub(crate) fn in_flight(&self, dest: &NodeId) -> u64 {
        self.pending.to_dest(dest)
    }

    /// Bytes of key in the relays towards `dest` started here and not yet acknowledged.
    pub(crate) fn in_flight_bytes(&self, dest: &NodeId) -> u64 {
        self.pending.bytes_to(dest)
    }

    /// The earliest relay or waiting-hop deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|r| r.deadline)
            .chain(self.waiting.iter().map(|h| h.deadline))
            .chain(self.partial.values().map(|p| p.deadline))
            .min()
    }

    /// The oldest block of `from`'s link half that a waiting hop still references.
    fn oldest_waiting_block(&self, from: &NodeId) -> Option<u64> {
        self.waiting
            .iter()
            .filter(|h| h.from == *from)
            .filter_map(|h| own_blocks(hop_pad(&h.msg)).min())
            .min()
    }
}

/// Tries every `threshold`-sized set of the shares at hand that contains share `new` (the sets
/// without it were tried when they were complete); returns the first rebuilt key that passes
/// the manipulation check, and the shares it came from.
fn rebuild(p: &Partial, new: u8) -> Option<(Key, Vec<u8>)> {
    let others: Vec<u8> = p.shares.keys().copied().filter(|i| *i != new).collect();
    let want = usize::from(p.threshold).checked_sub(1)?;
    // At most MAX_PATHS shares, so at most 2^7 masks.
    for mask in 0u32..(1 << others.len()) {
        if mask.count_ones() as usize != want {
            continue;
        }
        let mut set: Vec<u8> = (0..others.len())
            .filter(|b| mask & (1 << b) != 0)
            .map(|b| others[b])
            .collect();
        set.push(new);
        set.sort_unstable();
        let Ok(codeword) = combine_shares(p, &set) else {
            continue;
        };
        if let Ok(key) = amd::decode(codeword.expose()) {
            return Some((key, set));
        }
    }
    None
}

/// The link key spans a relay or share hop spends (empty for other messages).
fn hop_pad(msg: &PeerMsg) -> &[Span] {
    match msg {
        PeerMsg::RelayHop { pad, .. } | PeerMsg::ShareHop { pad, .. } => pad,
        _ => &[],
    }
}

/// The blocks of the sender's own half that spans name (spans in bytes this node granted it
/// say nothing about how far the sender spent its own half, which `gc_rx` and the `Seen` marks
/// rely on).
fn own_blocks(spans: &[Span]) -> impl Iterator<Item = u64> + '_ {
    spans.iter().filter(|s| !s.is_granted()).map(|s| s.id)
}

/// The relay and share a relay or share hop belongs to.
fn hop_relay(msg: &PeerMsg) -> Option<(&RelayId, Option<u8>)> {
    match msg {
        PeerMsg::RelayHop { relay, .. } => Some((relay, None)),
        PeerMsg::ShareHop { relay, share, .. } => Some((relay, Some(share.index))),
        _ => None,
    }
}

/// The bytes a hop's tag covers apart from the ciphertext.
fn hop_header(
    relay: &RelayId,
    share: Option<&ShareInfo>,
    path: &[NodeId],
    paths: &[Vec<NodeId>],
    pad: &[Span],
    ct_len: usize,
) -> Vec<u8> {
    match share {
        None => PeerMsg::relay_header(relay, path, pad, ct_len),
        Some(s) => PeerMsg::share_header(relay, s, path, paths, pad, ct_len),
    }
}

impl KeyManager {
    pub(crate) fn on_link_keys(&mut self, now: Instant, peer: NodeId, block: u64, key: Key) {
        if !self.links.contains(&peer) {
            tracing::warn!(%peer, "link keys for a node that is not a neighbour; ignored");
            return;
        }
        let me_first = *self.me() < peer;
        let cap = self.cfg.policy.link_buffer_cap_bytes;
        let mut batch = Vec::with_capacity(4);
        let first = self.links.lowest_block(&peer).is_none();
        let Some((taken, dropped)) = self
            .links
            .intake(me_first, &peer, block, key, cap, &mut batch)
        else {
            return; // duplicate delivery
        };
        if first {
            self.first_link_block(peer.clone());
        }
        self.stats.link_key_in += taken;
        self.linkstate.arrived(&peer, taken);
        self.stats.link_blocks_dropped += dropped;
        self.out.store(batch, vec![]);
        self.reserve_ahead(&peer);
        self.retry_waiting_hops(now);
    }

    /// The neighbour lacks these blocks of our half: stop spending them.
    fn on_link_missing(&mut self, peer: NodeId, blocks: Vec<u64>) {
        let mut batch = Vec::new();
        self.links.forget_tx(&peer, &blocks, &mut batch);
        if !batch.is_empty() {
            self.out.store(batch, vec![]);
        }
    }

    /// The neighbour spends its half oldest block first, so once it references block `n` it
    /// holds nothing older: our copies of its half before `n` can go, except blocks that hops
    /// still waiting here reference, and the [`GC_LAG_BLOCKS`] blocks before, which hops the
    /// network delivered out of order may still reference (dropping them turned every
    /// reordering on a busy link into an abandoned relay).
    fn gc_rx(&mut self, peer: &NodeId, spans: &[Span], batch: &mut Vec<Record>) {
        let waiting = self.relays.oldest_waiting_block(peer);
        let Some(floor) = own_blocks(spans).chain(waiting).min() else {
            return;
        };
        self.links
            .gc_rx(peer, floor.saturating_sub(GC_LAG_BLOCKS), batch);
    }

    /// Encrypts `key` (or one share of it, `paths` then naming every share's path) for the hop
    /// to `next` with fresh link key. `None` if the link lacks key.
    #[allow(clippy::too_many_arguments)]
    fn seal_hop(
        &mut self,
        relay: &RelayId,
        share: Option<ShareInfo>,
        path: &[NodeId],
        paths: &[Vec<NodeId>],
        key: &Key,
        next: &NodeId,
        batch: &mut Vec<Record>,
    ) -> Option<PeerMsg> {
        let n = MAC_KEY_LEN + key.len();
        let (pad_spans, material) = self.links.alloc_tx(next, n, batch)?;
        self.reserve_ahead(next);
        self.stats.link_key_spent += n as u64;
        self.grants.spent_towards(next);
        if share.is_some() {
            self.stats.amd_key_bytes += AMD_OVERHEAD as u64;
        }
        let (mac_key, pad) = material.expose().split_at(MAC_KEY_LEN);
        // One-time-pad ciphertext: safe to send.
        let ct: Vec<u8> = key.expose().iter().zip(pad).map(|(k, p)| k ^ p).collect();
        let header = hop_header(relay, share.as_ref(), path, paths, &pad_spans, ct.len());
        let mut mac = Mac::new(MacKey::from_bytes(mac_key).expect("32 bytes"));
        mac.update(&header);
        mac.update(&ct);
        let tag = mac.finalize();
        Some(match share {
            None => PeerMsg::RelayHop {
                relay: relay.clone(),
                path: path.to_vec(),
                pad: pad_spans,
                ct,
                tag,
            },
            Some(share) => PeerMsg::ShareHop {
                relay: relay.clone(),
                share,
                path: path.to_vec(),
                paths: paths.to_vec(),
                pad: pad_spans,
                ct,
                tag,
            },
        })
    }

    /// Starts relays so that every reachable destination's pool approaches its target, which
    /// recent demand sets (`crate::demand`), within each destination's congestion window
    /// (`crate::pace`). Destinations with recent demand go first, then the emptiest pools, so
    /// scarce first-hop key goes where applications wait for it.
    pub(crate) fn refill(&mut self, now: Instant) {
        // Route constraints expire with time alone: no tick is skipped while one is held.
        let fingerprint = (!self.routing.has_any_demand()).then(|| self.refill_fingerprint());
        let touched = self.take_refill_touched();
        if let Some(fp) = fingerprint {
            if self.relays.quiet.skips(fp, now) {
                return;
            }
            if let Some(dests) = touched {
                if self.relays.quiet.only_pools_or_demand_moved(fp, now)
                    && dests
                        .iter()
                        .all(|d| self.refill_passes_over(d, now, &self.cfg.policy))
                {
                    self.relays.quiet.skip_with(fp);
                    return;
                }
            }
        }
        // Whether this tick tried to start a relay or changed which destinations refill.
        let mut acted = false;
        let topo = self.topology();
        let p = self.cfg.policy.clone();
        self.relays
            .plan_slots
            .validate(self.routing.generation(), &topo);
        let mut order: Vec<(bool, u64, NodeId, u64, usize)> = Vec::new();
        for (index, node) in topo.nodes.iter().enumerate() {
            let dest = NodeId::from(&node.id);
            if dest == *self.me() || self.routing.is_down(&dest) || !self.is_reconciled(&dest) {
                continue;
            }
            let target = self.demand.target(&dest, now, &p);
            if target == 0 {
                continue;
            }
            let fill = self.pools.out_free(&dest).saturating_mul(1000) / target;
            let idle = !self.demand.is_active(&dest, now, &p);
            order.push((idle, fill, dest, target, index));
        }
        order.sort_unstable();
        let idle_cap = u64::from(p.idle_relays_in_flight);
        let mut idle_in_flight: u64 = self
            .relays
            .pending
            .per_dest()
            .filter(|(dest, _)| !self.demand.is_active(dest, now, &p))
            .map(|(_, n)| n)
            .sum();
        for (idle, _, dest, target, index) in order {
            let dest = &dest;
            let low = (target as f64 * p.pool_low_water) as u64;
            let constrained = self.routing.has_demand(dest, now);
            if !constrained {
                // Most pools are full on most ticks: decide that before planning routes.
                let have = self.pools.out_free(dest) + self.relays.in_flight_bytes(dest);
                if have >= target {
                    acted |= self.refilling.remove(dest);
                    continue;
                }
                if !self.refilling.contains(dest) && have >= low {
                    continue;
                }
            }
            let (paths, threshold) = p.routing.for_dest(dest);
            // While applications ask for key relayed under a route constraint (`kagi_route`),
            // relays go under it where they can, and only key that meets it counts as ready.
            let demand = self.routing.demand(dest, now).and_then(|c| {
                let plan = self
                    .routing
                    .constrained_plan(dest, &c, (paths, threshold))
                    .ok()?;
                Some((c, plan))
            });
            // `constrained_plan`: the plan when it is not the cached one for the policy.
            let (constrained_plan, ready, cap) = match demand {
                Some((c, plan)) => {
                    let cap = self.relay_cap(&plan);
                    (
                        Some(std::sync::Arc::new(plan)),
                        self.pools.out_free_where(dest, |r| c.admits(r)),
                        cap,
                    )
                }
                None => match self.cached_plan(index, dest, paths, threshold) {
                    Some(cap) => (None, self.pools.out_free(dest), cap),
                    None => continue,
                },
            };
            let (target, low) = if idle {
                let len = match &constrained_plan {
                    Some(plan) => self.relay_len(plan),
                    None => match self.relays.plan_slots.get(index) {
                        Some(Some((plan, _))) => self.relay_len(plan),
                        _ => continue, // looked up just above
                    },
                };
                let t = idle_target(target, len, p.relay_chunk_bytes);
                (t, (t as f64 * p.pool_low_water) as u64)
            } else {
                (target, low)
            };
            let allowed = u64::from(self.pace.allowed(dest, now, cap));
            // Computed once per destination: the pool can hold thousands of chunks.
            let mut in_flight = self.relays.in_flight(dest);
            let mut have = ready + self.relays.in_flight_bytes(dest);
            loop {
                if have >= target {
                    acted |= self.refilling.remove(dest);
                    break;
                }
                if !self.refilling.contains(dest) && have >= low {
                    break;
                }
                if in_flight >= allowed || (idle && idle_in_flight >= idle_cap) {
                    break;
                }
                acted = true;
                self.refilling.insert(dest.clone());
                // Shared, not copied: only now, when a relay starts, is the plan itself read.
                let plan = match &constrained_plan {
                    Some(plan) => plan.clone(),
                    None => match self.relays.plan_slots.get(index) {
                        Some(Some((plan, _))) => plan.clone(),
                        _ => break, // looked up just above
                    },
                };
                let Some(len) = self.start_relay(dest, &plan, now) else {
                    break;
                };
                in_flight += 1;
                idle_in_flight += u64::from(idle);
                have += len as u64;
            }
        }
        match fingerprint {
            Some(fp) if !acted && fp == self.refill_fingerprint() => {
                let wake = self.refill_wake(now, &p);
                self.relays.quiet.set(fp, wake);
            }
            _ => self.relays.quiet.clear(),
        }
    }

    /// The destinations whose out-pool or demand changed since refill last looked (`None`:
    /// possibly all).
    fn take_refill_touched(&mut self) -> Option<std::collections::BTreeSet<NodeId>> {
        let mut dests = self.pools.take_refill_touched()?;
        dests.extend(self.demand.take_touched());
        Some(dests)
    }

    /// Whether refill at `now` passes over `dest` without a look at routes or link key: as
    /// the first checks of [`refill`](Self::refill) do for a destination that is not refilling
    /// and holds at least its low-water mark (`false` when unsure: the full tick then runs).
    pub(crate) fn refill_passes_over(
        &self,
        dest: &NodeId,
        now: Instant,
        p: &crate::Policy,
    ) -> bool {
        if dest == self.me() || self.routing.is_down(dest) || !self.is_reconciled(dest) {
            return true;
        }
        if !self.routing.is_node(dest) {
            return false;
        }
        let target = self.demand.target(dest, now, p);
        if target == 0 {
            return true;
        }
        // Relays in flight to it: its demand turning it active or idle moves the count of idle
        // relays in flight, which caps other destinations.
        if self.routing.has_demand(dest, now)
            || self.refilling.contains(dest)
            || self.relays.in_flight(dest) > 0
        {
            return false;
        }
        let have = self.pools.out_free(dest) + self.relays.in_flight_bytes(dest);
        have >= (target as f64 * p.pool_low_water) as u64
    }

    /// Counters of change of what refill reads (see `crate::quiet`).
    pub(crate) fn refill_fingerprint(&self) -> crate::quiet::Fingerprint {
        crate::quiet::Fingerprint {
            pools: self.pools.version(),
            pending: self.relays.pending.version(),
            demand: self.demand.version(),
            pace: self.pace.version(),
            routing: self.routing.generation(),
        }
    }

    /// After a tick that changed nothing: the first time at which time alone may make the
    /// next one act (a hold ending, a refilling destination's target falling to what it has).
    fn refill_wake(&self, now: Instant, p: &crate::Policy) -> Option<Instant> {
        let falls = self.refilling.iter().filter_map(|dest| {
            let have = self.pools.out_free(dest) + self.relays.in_flight_bytes(dest);
            self.demand.may_fall_to(dest, have, now, p)
        });
        self.pace.next_release(now).into_iter().chain(falls).min()
    }

    /// The relay cap to `dest` (topology node `index`) under the policy's `(paths,
    /// threshold)` for it, from refill's copy of the routing plans (filled from routing on
    /// first use); `None` when `dest` is unreachable.
    fn cached_plan(
        &mut self,
        index: usize,
        dest: &NodeId,
        paths: u8,
        threshold: u8,
    ) -> Option<u32> {
        if let Some(slot) = self.relays.plan_slots.get(index) {
            return slot.as_ref().map(|(_, cap)| *cap);
        }
        let slot = self.routing.plan(dest, paths, threshold).map(|plan| {
            let cap = self.relay_cap(&plan);
            (plan, cap)
        });
        let cap = slot.as_ref().map(|(_, cap)| *cap);
        self.relays.plan_slots.set(index, slot);
        cap
    }

    /// The most relays to one destination over `plan` that may be in flight: the policy's
    /// limit, and no more than the plan's weakest link carries for one direction in half a hop
    /// wait (a relay queued behind more would wait longer than its hops may).
    fn relay_cap(&self, plan: &RoutePlan) -> u32 {
        let p = &self.cfg.policy;
        let share = self.relay_len(plan)
            + MAC_KEY_LEN
            + if plan.paths.len() > 1 {
                AMD_OVERHEAD
            } else {
                0
            };
        crate::pace::bottleneck_cap(
            plan.bottleneck_bps,
            share,
            p.hop_wait / 4,
            p.max_relays_in_flight,
        )
    }

    /// Bytes of key one relay over `plan` carries: the policy's chunk, or less when the plan's
    /// weakest link makes less than that for one direction in a quarter of a hop wait (see
    /// [`crate::pace::relay_bytes`]).
    fn relay_len(&self, plan: &RoutePlan) -> usize {
        let p = &self.cfg.policy;
        crate::pace::relay_bytes(plan.bottleneck_bps, p.hop_wait / 4, p.relay_chunk_bytes) as usize
    }

    /// The congestion window's cap for `dest` under the current plan.
    fn dest_cap(&mut self, dest: &NodeId) -> u32 {
        let (paths, threshold) = self.cfg.policy.routing.for_dest(dest);
        match self.routing.plan(dest, paths, threshold) {
            Some(plan) => self.relay_cap(&plan),
            None => self.cfg.policy.max_relays_in_flight,
        }
    }

    /// Starts one relay to `dest`: a fresh key over the plan's single path, or an AMD codeword
    /// of it split into one share per node-disjoint path (so the destination detects a share
    /// altered on its way). It starts once the first hops of at least `threshold` paths have
    /// link key: the shares of the others are not sent and count as lost from the start (any
    /// `threshold` shares rebuild the key, and no node sees more shares than before).
    fn start_relay(&mut self, dest: &NodeId, plan: &RoutePlan, now: Instant) -> Option<usize> {
        let len = self.relay_len(plan);
        let n = plan.paths.len();
        let share_len = if n == 1 { len } else { len + AMD_OVERHEAD };
        // Link key goes only to a neighbour that told this run what it saw of our half
        // (`Seen`): before that, a store restored from an older copy would spend pad bytes it
        // already spent.
        let ready: Vec<bool> = plan
            .paths
            .iter()
            .map(|p| {
                self.is_reconciled(&p[1])
                    && (self.links.tx_free(&p[1]) as usize) >= share_len + MAC_KEY_LEN
            })
            .collect();
        let sendable = ready.iter().filter(|r| **r).count();
        if sendable == 0 || sendable < usize::from(plan.threshold) {
            return None;
        }
        let seq = self.relays.next_seq;
        if seq == u64::MAX {
            return None; // counters exhausted (only a lying peer could push them there)
        }
        let relay = RelayId {
            origin: self.me().clone(),
            epoch: self.reconcile.epoch,
            seq,
        };
        let key = self.fresh_key(len);
        let t = plan.threshold;
        let shares: Vec<(Option<ShareInfo>, Key)> = if n == 1 {
            vec![(None, key.clone())]
        } else {
            let Ok(codeword) = amd::encode(key.expose(), &mut self.key_rng) else {
                return None;
            };
            let Ok(parts) = split_key(&codeword, t, n as u8, &mut self.key_rng) else {
                return None;
            };
            parts
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    let info = ShareInfo {
                        index: i as u8 + 1,
                        threshold: t,
                        count: n as u8,
                    };
                    (Some(info), k)
                })
                .collect()
        };
        let mut batch = Vec::new();
        let mut sends = Vec::with_capacity(n);
        let mut unsent = BTreeSet::new();
        let all_paths: &[Vec<NodeId>] = if n == 1 { &[] } else { &plan.paths };
        for (i, (path, (info, share))) in plan.paths.iter().zip(&shares).enumerate() {
            if !ready[i] {
                unsent.insert(i as u8 + 1);
                continue;
            }
            // Node-disjoint paths have distinct first hops, so each was checked on its own.
            let sealed = self.seal_hop(&relay, *info, path, all_paths, share, &path[1], &mut batch);
            let Some(msg) = sealed else {
                // Unreachable after the check above; what was spent stays spent.
                self.out.store(batch, vec![]);
                return None;
            };
            sends.push(After::Act(Action::Send {
                to: path[1].clone(),
                msg,
            }));
        }
        self.relays.next_seq += 1;
        batch.push(Record::Counter {
            name: Counter::Relay,
            next: self.relays.next_seq,
        });
        batch.push(Record::PendingRelay {
            seq,
            dest: dest.clone(),
            key: key.clone(),
        });
        self.relays.pending.insert(
            seq,
            PendingRelay {
                dest: dest.clone(),
                key,
                deadline: now + self.cfg.policy.relay_timeout,
                paths: plan.paths.clone(),
                threshold: t,
                lost: unsent,
                sent: sendable,
            },
        );
        self.stats.relays_started += 1;
        if n > 1 {
            self.stats.multipath_relays_started += 1;
        }
        self.out.store(batch, sends);
        Some(len)
    }

    pub(crate) fn on_peer(&mut self, now: Instant, from: NodeId, msg: PeerMsg) {
        match msg {
            PeerMsg::LinkMissing { blocks } => self.on_link_missing(from, blocks),
            PeerMsg::RelayAborted {
                relay,
                share,
                reason,
            } => self.on_relay_aborted(now, &from, &relay, share, reason),
            PeerMsg::RelayHop { .. } | PeerMsg::ShareHop { .. } => self.on_hop(now, from, msg),
            PeerMsg::RelayAck { relay } => self.on_relay_ack(from, relay),
            PeerMsg::Assign {
                epoch,
                seq,
                master,
                slaves,
                keys,
            } => self.on_assign(now, from, epoch, seq, master, slaves, keys),
            PeerMsg::AssignAck { seq, ok } => self.on_assign_ack(from, seq, ok),
            PeerMsg::Revoke { seq } => self.on_revoke(from, seq),
            PeerMsg::RevokeAck { seq } => self.on_revoke_ack(from, seq),
            PeerMsg::PoolMissing { chunks } => self.on_pool_missing(from, chunks),
            // Liveness is noted for every message in `handle`; a heartbeat carries nothing else.
            PeerMsg::Heartbeat => {}
            PeerMsg::LinkState {
                origin,
                run,
                seq,
                links,
                sig,
            } => self.on_link_state(now, from, origin, run, seq, links, sig),
            PeerMsg::LinkKeyWanted { bytes } => self.on_link_key_wanted(from, bytes),
            PeerMsg::LinkKeyGranted { epoch, spans } => {
                self.on_link_key_granted(now, from, epoch, &spans)
            }
            PeerMsg::Hello {
                store,
                epoch,
                link_low,
                run,
                next_relay,
                next_assign,
                tx_low,
            } => self.on_hello(
                from,
                crate::reconcile::Hello {
                    store,
                    epoch,
                    link_low,
                    run,
                    next_relay,
                    next_assign,
                    tx_low,
                },
            ),
            PeerMsg::Seen {
                epoch,
                relay_hw,
                assign_hw,
                relay_floor,
                assign_floor,
                link_rx_hw,
                fork_run,
                link_reserved,
                marks_run,
                marks_epoch,
            } => self.on_seen(
                from,
                crate::reconcile::Seen {
                    epoch,
                    relay_hw,
                    assign_hw,
                    relay_floor,
                    assign_floor,
                    link_rx_hw,
                    fork_run,
                    link_reserved,
                    marks_run,
                    marks_epoch,
                },
            ),
            PeerMsg::LinkReserve { upto } => self.on_link_reserve(from, upto),
            PeerMsg::LinkReserved { store, upto } => self.on_link_reserved(now, from, store, upto),
        }
    }

    /// A relay hop or share hop from neighbour `from`: check and spend the link key, then
    /// forward it, or keep the key (or share) here as its destination.
    fn on_hop(&mut self, now: Instant, from: NodeId, msg: PeerMsg) {
        let (relay, share, path, paths, pad, ct, tag) = match &msg {
            PeerMsg::RelayHop {
                relay,
                path,
                pad,
                ct,
                tag,
            } => (relay, None, path, &[][..], pad, ct, tag),
            PeerMsg::ShareHop {
                relay,
                share,
                path,
                paths,
                pad,
                ct,
                tag,
            } => (relay, Some(*share), path, &paths[..], pad, ct, tag),
            _ => return,
        };
        // The path must name the authenticated sender right before us, start at the origin,
        // follow links of the topology and have no repeated node. (A neighbour holds link key
        // only with us: without the link check it could claim a relay from any origin over
        // links that do not exist, and plant key under that origin's relay ID.)
        let Some(pos) = path.iter().position(|n| n == self.me()) else {
            return;
        };
        let valid = pos >= 1
            && path[pos - 1] == from
            && path[0] == relay.origin
            && ct.len() <= MAX_RELAY_BYTES
            && !ct.is_empty()
            && pad.iter().map(|s| u64::from(s.len)).sum::<u64>() == (MAC_KEY_LEN + ct.len()) as u64
            && share.is_none_or(|s| {
                s.is_valid()
                    && s.count <= MAX_PATHS
                    && paths.len() == usize::from(s.count)
                    && paths.get(usize::from(s.index) - 1) == Some(path)
                    && paths.iter().all(|p| {
                        p.first() == path.first()
                            && p.last() == path.last()
                            && self.routing.is_simple_path(p)
                    })
            })
            && self.routing.is_simple_path(path);
        if !valid {
            tracing::warn!(%from, "malformed relay hop dropped");
            return;
        }
        let is_dest = pos == path.len() - 1;
        let current = self.reconcile.is_current(&relay.origin, relay.epoch);
        // A share arriving after its key was rebuilt goes on to be checked against it.
        let late_share = share.is_some() && self.relays.partial.contains_key(relay);
        if is_dest && current && self.pools.has_in(&relay.origin, relay.seq) && !late_share {
            // Already stored (a duplicate after our ack was lost): acknowledge again.
            self.out.send(
                relay.origin.clone(),
                PeerMsg::RelayAck {
                    relay: relay.clone(),
                },
            );
            return;
        }
        match self.links.check_rx(&from, pad) {
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
                let blocks = self.links.missing_run(&from, block, MAX_MISSING_REPORT);
                self.out.send(from, PeerMsg::LinkMissing { blocks });
                self.abort_to_origin(relay, share.map(|s| s.index), AbortReason::LinkKeyMissing);
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
            // As in `start_relay`: no link key towards a neighbour this run has not reconciled
            // with.
            if !self.is_reconciled(next)
                || (self.links.tx_free(next) as usize) < MAC_KEY_LEN + ct.len()
            {
                self.wait_hop(WaitingHop {
                    deadline: now + self.cfg.policy.hop_wait,
                    from,
                    msg,
                });
                return;
            }
        }
        let mut batch = Vec::new();
        let Some(material) = self.links.take_rx(&from, pad, &mut batch) else {
            return; // checked just above
        };
        let (mac_key, pad_bytes) = material.expose().split_at(MAC_KEY_LEN);
        let header = hop_header(relay, share.as_ref(), path, paths, pad, ct.len());
        let mut mac = Mac::new(MacKey::from_bytes(mac_key).expect("32 bytes"));
        mac.update(&header);
        mac.update(ct);
        if !mac.finalize().ct_eq(tag) {
            self.stats.bad_tags += 1;
            tracing::warn!(%from, origin = %relay.origin, seq = relay.seq, "relay hop failed its tag; dropped");
            self.out.store(batch, vec![]); // the link key is spent either way
            self.abort_to_origin(relay, share.map(|s| s.index), AbortReason::BadTag);
            return;
        }
        self.gc_rx(&from, pad, &mut batch);
        if let Some(top) = own_blocks(pad).max() {
            self.saw_link_spend(&from, top, &mut batch);
        }
        let mut key = Key::from_slice(ct);
        key.xor_in_place(pad_bytes);
        if next.is_none() && !current {
            // A relay from an earlier run of its origin (or one this run has not heard from):
            // its counter may be reused, so it is not kept. The link key stays spent.
            self.stale_from(&relay.origin);
            tracing::info!(origin = %relay.origin, seq = relay.seq, "relay from an earlier run of its origin dropped");
            self.out.store(batch, vec![]);
            return;
        }
        match (next, share) {
            (None, Some(info)) => {
                let paths = paths.to_vec();
                self.on_share(now, relay, info, paths, key, batch)
            }
            (None, None) => {
                self.stats.relays_received += 1;
                self.saw_relay(&relay.origin, relay.seq, &mut batch);
                batch.push(self.pools.add_in(&relay.origin, relay.seq, key));
                let ack = Action::Send {
                    to: relay.origin.clone(),
                    msg: PeerMsg::RelayAck {
                        relay: relay.clone(),
                    },
                };
                self.out.store(batch, vec![After::Act(ack)]);
            }
            (Some(next), _) => {
                let sealed = self.seal_hop(relay, share, path, paths, &key, &next, &mut batch);
                let Some(fwd) = sealed else {
                    // Checked above; spend what was taken rather than panic.
                    self.out.store(batch, vec![]);
                    return;
                };
                self.stats.hops_forwarded += 1;
                self.out
                    .store(batch, vec![After::Act(Action::Send { to: next, msg: fwd })]);
            }
        }
    }

    /// Parks a hop until its link key arrives; at most [`MAX_WAITING_HOPS_PER_PEER`] per
    /// neighbour, so a hostile neighbour cannot grow the queue (or the retry scans) without
    /// bound; beyond that its hops are dropped and its relays time out.
    fn wait_hop(&mut self, hop: WaitingHop) {
        let held = self
            .relays
            .waiting
            .iter()
            .filter(|h| h.from == hop.from)
            .count();
        if held >= MAX_WAITING_HOPS_PER_PEER {
            self.stats.replays_rejected += 1;
            tracing::warn!(from = %hop.from, "too many relay hops waiting for link key; dropped");
            return;
        }
        self.relays.waiting.push(hop);
    }

    /// A share reached its destination: keep it until `threshold` shares rebuild a key that
    /// passes the manipulation check, then store the key and acknowledge (after the store is
    /// durable). A set of shares that fails the check means a node on one of their paths
    /// altered its share: other sets are tried as more shares arrive, and if none passes once
    /// every share is in, the relay is aborted back to its origin. Shares after the rebuild are
    /// checked against it and counted when they disagree.
    fn on_share(
        &mut self,
        now: Instant,
        relay: &RelayId,
        info: ShareInfo,
        paths: Vec<Vec<NodeId>>,
        share: Key,
        batch: Vec<Record>,
    ) {
        if !self.relays.partial.contains_key(relay) && self.relays.partial.len() >= MAX_PARTIALS {
            tracing::warn!(origin = %relay.origin, seq = relay.seq, "too many relays being rebuilt; share dropped");
            self.out.store(batch, vec![]);
            self.abort_to_origin(relay, Some(info.index), AbortReason::SharesInconsistent);
            return;
        }
        let deadline = now + self.cfg.policy.relay_timeout;
        let p = self
            .relays
            .partial
            .entry(relay.clone())
            .or_insert_with(|| Partial {
                threshold: info.threshold,
                count: info.count,
                paths: paths.clone(),
                shares: BTreeMap::new(),
                deadline,
                used: Vec::new(),
                manipulated: false,
            });
        if (p.threshold, p.count) != (info.threshold, info.count) || p.paths != paths {
            // Shares that disagree on the relay's shape: some node on a path altered it.
            let done = !p.used.is_empty();
            self.relays.partial.remove(relay);
            self.out.store(batch, vec![]);
            if done {
                self.stats.late_shares_inconsistent += 1;
            } else {
                self.abort_to_origin(relay, None, AbortReason::SharesInconsistent);
            }
            return;
        }
        if p.shares.contains_key(&info.index) {
            self.out.store(batch, vec![]); // the link key spent on this hop
            return;
        }
        p.shares.insert(info.index, share);
        let complete = p.shares.len() == usize::from(p.count);
        if !p.used.is_empty() {
            // Late share: it must rebuild the same key with threshold - 1 of the good shares.
            let mut set: Vec<u8> = p.used[..p.used.len() - 1].to_vec();
            set.push(info.index);
            set.sort_unstable();
            let agrees = combine_shares(p, &set)
                .ok()
                .is_some_and(|cw| amd::decode(cw.expose()).is_ok());
            if !agrees {
                self.stats.late_shares_inconsistent += 1;
                tracing::warn!(origin = %relay.origin, seq = relay.seq, share = info.index, "a share arriving after its key was rebuilt disagrees with it: altered on its path");
            }
            if complete {
                self.relays.partial.remove(relay);
            }
            self.out.store(batch, vec![]);
            return;
        }
        if p.shares.len() < usize::from(p.threshold) {
            self.out.store(batch, vec![]); // the link key spent on this hop
            return;
        }
        let Some((key, used)) = rebuild(p, info.index) else {
            if !p.manipulated {
                p.manipulated = true;
                self.stats.shares_manipulated += 1;
            }
            tracing::warn!(origin = %relay.origin, seq = relay.seq, shares = p.shares.len(), "shares failed the manipulation check: one was altered on its path");
            self.out.store(batch, vec![]);
            if complete {
                self.relays.partial.remove(relay);
                self.stats.manipulation_aborts += 1;
                self.abort_to_origin(relay, None, AbortReason::SharesManipulated);
            }
            return;
        };
        if complete {
            self.relays.partial.remove(relay);
        } else {
            p.used = used;
        }
        self.stats.relays_received += 1;
        let mut batch = batch;
        self.saw_relay(&relay.origin, relay.seq, &mut batch);
        batch.push(self.pools.add_in(&relay.origin, relay.seq, key));
        let ack = Action::Send {
            to: relay.origin.clone(),
            msg: PeerMsg::RelayAck {
                relay: relay.clone(),
            },
        };
        self.out.store(batch, vec![After::Act(ack)]);
    }

    /// Tells a relay's origin that this node gave up on it (or on one of its shares).
    fn abort_to_origin(&mut self, relay: &RelayId, share: Option<u8>, reason: AbortReason) {
        if relay.origin == *self.me() {
            return;
        }
        self.out.send(
            relay.origin.clone(),
            PeerMsg::RelayAborted {
                relay: relay.clone(),
                share,
                reason,
            },
        );
    }

    /// A node on a relay's path gave up on it. A multi-path relay survives as long as
    /// `threshold` shares are still on their way; otherwise the relay is abandoned at once.
    fn on_relay_aborted(
        &mut self,
        now: Instant,
        from: &NodeId,
        relay: &RelayId,
        share: Option<u8>,
        reason: AbortReason,
    ) {
        if relay.origin != *self.me() || relay.epoch != self.reconcile.epoch {
            return;
        }
        let Some(p) = self.relays.pending.get_mut(&relay.seq) else {
            return;
        };
        // Only a node on the relay's path (of that share, for a multi-path relay) may abort it.
        let on_path = |path: &Vec<NodeId>| path.iter().skip(1).any(|n| n == from);
        let allowed = match share {
            Some(i) if p.paths.len() > 1 => p
                .paths
                .get(usize::from(i).wrapping_sub(1))
                .is_some_and(on_path),
            _ => p.paths.iter().any(on_path),
        };
        if !allowed {
            tracing::warn!(%from, seq = relay.seq, "relay abort from a node off the relay's path; ignored");
            return;
        }
        // A hop that waited for link key in vain: the path carries less than was sent.
        let congested = reason == AbortReason::LinkKeyExhausted;
        if let Some(i) = share.filter(|_| p.paths.len() > 1) {
            if p.lost.insert(i) {
                self.stats.shares_lost += 1;
                if congested {
                    let dest = p.dest.clone();
                    let cap = self.dest_cap(&dest);
                    self.pace.on_loss(&dest, now, cap);
                }
            }
            let Some(p) = self.relays.pending.get(&relay.seq) else {
                return;
            };
            let left = p.paths.len() - p.lost.len();
            if left >= usize::from(p.threshold) {
                tracing::info!(dest = %p.dest, seq = relay.seq, share = i, %reason, "relay share lost; {left} shares still on their way");
                return;
            }
        }
        let Some(p) = self.relays.pending.remove(&relay.seq) else {
            return;
        };
        tracing::info!(dest = %p.dest, seq = relay.seq, %from, %reason, "relay aborted");
        if congested && share.is_none_or(|_| p.paths.len() <= 1) {
            let cap = self.dest_cap(&p.dest);
            self.pace.on_loss(&p.dest, now, cap);
        }
        self.stats.relays_abandoned += 1;
        self.stats.relays_aborted += 1;
        self.stats.abandoned_key_bytes += p.spent_here();
        self.out
            .store(vec![Record::PendingRelayGone { seq: relay.seq }], vec![]);
    }

    fn on_relay_ack(&mut self, from: NodeId, relay: RelayId) {
        if relay.origin != *self.me() || relay.epoch != self.reconcile.epoch {
            return;
        }
        match self.relays.pending.get(&relay.seq) {
            Some(p) if p.dest == from => {}
            _ => return,
        }
        let Some(p) = self.relays.pending.remove(&relay.seq) else {
            return;
        };
        // A relay restored from a store that did not record its paths adds a chunk whose paths
        // are unknown: it serves requests without route constraints only.
        let route = (!p.paths.is_empty()).then(|| RelayRoute {
            paths: p.paths.clone(),
            threshold: p.threshold,
        });
        let batch = vec![
            self.pools.add_out(&p.dest, relay.seq, p.key, route),
            Record::PendingRelayGone { seq: relay.seq },
        ];
        self.stats.relays_acked += 1;
        let cap = self.dest_cap(&p.dest);
        self.pace.on_ack(&p.dest, cap);
        self.out.store(batch, vec![]);
    }

    /// Gives up at once on the relays in flight that `node` may have lost: those through or
    /// to it when a new run of it greets this one (it crashed or was restarted), those whose
    /// first hop it is when its channel goes down (what was queued to it is gone). Waiting for
    /// their timeout would hold the destination's in-flight slots and leave its pool dry. A
    /// relay given up on that still arrives only leaves unused key at its destination.
    pub(crate) fn abandon_relays_via(&mut self, node: &NodeId, first_hop_only: bool) {
        let gone = self.relays.drop_pending_via(node, first_hop_only);
        self.record_abandoned(gone);
    }

    /// Counts relays given up on before their timeout, with the key they had spent here, and
    /// deletes their durable records in one batch.
    pub(crate) fn record_abandoned(&mut self, gone: Vec<(u64, PendingRelay)>) {
        if gone.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(gone.len());
        for (seq, p) in gone {
            self.stats.relays_abandoned += 1;
            self.stats.abandoned_key_bytes += p.spent_here();
            batch.push(Record::PendingRelayGone { seq });
        }
        self.out.store(batch, vec![]);
    }

    pub(crate) fn expire_relays(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .relays
            .pending
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        for seq in expired {
            if let Some(p) = self.relays.pending.remove(&seq) {
                self.stats.abandoned_key_bytes += p.spent_here();
                let cap = self.dest_cap(&p.dest);
                self.pace.on_loss(&p.dest, now, cap);
            }
            self.stats.relays_abandoned += 1;
            batch.push(Record::PendingRelayGone { seq });
        }
        self.out.store(batch, vec![]);
    }

    /// Hops that waited too long for link key are failed back to their origin (no silent
    /// drops); shares that never made a threshold are forgotten.
    pub(crate) fn expire_hops(&mut self, now: Instant) {
        let (expired, kept): (Vec<WaitingHop>, Vec<WaitingHop>) =
            std::mem::take(&mut self.relays.waiting)
                .into_iter()
                .partition(|h| h.deadline <= now);
        self.relays.waiting = kept;
        self.relays.retry_due |= !expired.is_empty();
        for h in expired {
            if let Some((relay, share)) = hop_relay(&h.msg) {
                let relay = relay.clone();
                self.stats.hops_expired += 1;
                self.abort_to_origin(&relay, share, AbortReason::LinkKeyExhausted);
            }
        }
        let partials = self.relays.partial.len();
        self.relays.partial.retain(|_, p| p.deadline > now);
        self.relays.retry_due |= self.relays.partial.len() != partials;
        self.retry_waiting_hops(now);
    }

    pub(crate) fn retry_waiting_hops(&mut self, now: Instant) {
        if self.relays.waiting.is_empty() || !self.relays.retry_due {
            return;
        }
        self.relays.retry_due = false;
        let mut hops = std::mem::take(&mut self.relays.waiting);
        let retried = hops.iter().filter(|h| h.deadline > now).count();
        // Oldest link key first, so garbage collection of the neighbour's half (`gc_rx`) never
        // overtakes a hop that is still to be retried.
        hops.sort_by_key(|h| hop_pad(&h.msg).iter().map(|s| s.block()).min().unwrap_or(0));
        for h in hops {
            if h.deadline > now {
                let before = self.relays.waiting.len();
                self.on_hop(now, h.from, h.msg);
                // Keep the original deadline when it goes back to waiting.
                if self.relays.waiting.len() > before {
                    if let Some(last) = self.relays.waiting.last_mut() {
                        last.deadline = h.deadline;
                    }
                }
            }
        }
        // A hop that went on changed link key, pools or shares: others may go on next time.
        self.relays.retry_due |= self.relays.waiting.len() != retried;
    }
}

/// Tags an end-to-end one-time-pad message (multicast key delivery).
pub(crate) fn otp_tag(mac_key: &Key, id: &uuid::Uuid, ct: &[u8]) -> Tag {
    let mut mac = Mac::new(MacKey::from_key(mac_key).expect("32 bytes"));
    mac.update(id.as_bytes());
    mac.update(ct);
    mac.finalize()
}

/// Splits `key` into `n` shares, any `t` of which rebuild it: XOR when `t == n` (cheapest),
/// Shamir over GF(2^8) otherwise. Share `i` (from 0) is share index `i + 1`.
fn split_key(
    key: &Key,
    t: u8,
    n: u8,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> Result<Vec<Key>, kagi_sharing::SharingError> {
    if t == n {
        return kagi_sharing::xor_split(key.expose(), usize::from(n), rng);
    }
    let params = kagi_sharing::Params::new(usize::from(t), usize::from(n))?;
    Ok(kagi_sharing::split(key.expose(), params, rng)?
        .into_iter()
        .map(kagi_sharing::Share::into_key)
        .collect())
}

/// Rebuilds the AMD codeword from the shares `set` (exactly `threshold` of those collected).
fn combine_shares(p: &Partial, set: &[u8]) -> Result<Key, kagi_sharing::SharingError> {
    let pick = |i: &u8| {
        p.shares
            .get(i)
            .cloned()
            .ok_or(kagi_sharing::SharingError::DuplicateIndex(*i))
    };
    if p.threshold == p.count {
        let all = set.iter().map(pick).collect::<Result<Vec<Key>, _>>()?;
        return kagi_sharing::xor_combine(&all);
    }
    let params = kagi_sharing::Params::new(usize::from(p.threshold), usize::from(p.count))?;
    let shares = set
        .iter()
        .map(|i| kagi_sharing::Share::new(usize::from(*i), params, pick(i)?))
        .collect::<Result<Vec<_>, _>>()?;
    kagi_sharing::recover(&shares)
}

/// The idle floor towards a destination nobody asked for lately, on a path whose relays carry
/// `len` of the policy's `chunk` bytes: the floor shrinks with the path as the relays do (at least
/// one relay). Filling a full floor towards every node over slow links crowds out the relays
/// applications wait for: on a 50-node mesh of 5–50 kb/s links those fills kept more than half of
/// all relays failing for lack of link key, minutes after the start.
fn idle_target(floor: u64, len: usize, chunk: u32) -> u64 {
    if chunk == 0 || len as u64 >= u64::from(chunk) {
        return floor;
    }
    (floor.saturating_mul(len as u64) / u64::from(chunk)).max(len as u64)
}
