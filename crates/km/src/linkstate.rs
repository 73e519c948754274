//! Link state: what each node advertises about its QKD links, the newest advertisement per
//! origin, flooding, and the route costs that follow.
//!
//! Soon after one of its links goes up or down, when the route-cost class of one of its links
//! moved (checked every [`advert_interval`](crate::LinkStatePolicy::advert_interval)), and at
//! least every [`refresh_interval`](crate::LinkStatePolicy::refresh_interval), a node sends
//! [`PeerMsg::LinkState`] to its neighbours: per link, whether
//! it is usable, the key rate measured from link key arrivals (a moving average), and the
//! unspent key of each half. A receiver keeps the newest `(run, seq)` per origin and floods it on
//! to its own neighbours (not back to the sender), so every node learns every link. Everything is
//! bounded by the topology: adverts from nodes outside it, or naming a link their origin does
//! not have, are dropped whole; an origin holds one advert of at most its degree.
//!
//! Route cost of a link = its static cost (1 per hop by default) plus a penalty for the expected
//! wait for the key a hop needs: nothing while the buffer covers a window of relays, else the
//! missing bytes over the direction's rate, in powers of two (so small changes do not move
//! routes). A link either end advertises as down is left out of routes; a link nobody has a fresh
//! advert of costs [`UNKNOWN_PENALTY`] more than a good one. The two ends' claims are combined
//! pessimistically (least key, lowest rate, down if either says so).
//!
//! With an [`AdvertAuth`](crate::AdvertAuth) configured, the origin signs each advert and a
//! receiver verifies the signature before it keeps or floods the advert on; one with a missing
//! or bad signature is dropped and counted (`NodeStats::link_adverts_unauthenticated`). The
//! cheap checks come first (topology, then "not newer than the one held"), so the flood's many
//! copies of one advert cost one verification per origin and advert. A signed advert older than
//! the newest accepted from its origin is refused for good, also once that one has gone stale
//! (the origin is silent), so a transit node cannot replay an origin's old adverts; an origin
//! that starts again numbers its adverts above all earlier ones from the driver's
//! [`advert_run_base`](crate::KmConfig::advert_run_base) (wall-clock time in `kagi-node`),
//! whatever its store says. A transit node can still withhold or delay an origin's adverts; the
//! pessimistic combination limits what that can do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::advert_auth::signed_bytes;
use crate::config::LinkStatePolicy;
use crate::fixed_hash::FixedMap;
use crate::manager::KeyManager;
use crate::msgs::{LinkAdvert, NodeId, PeerMsg, MAX_ADVERT_LINKS};
use crate::outbox::Action;
use crate::routing::link_key;
use crate::time::Instant;

/// Route cost added to a link nobody has a fresh advert of (a known good link adds 0).
pub(crate) const UNKNOWN_PENALTY: f64 = 4.0;
/// Route cost per second of expected wait for link key (a hop costs 1).
const COST_PER_WAIT_S: f64 = 10.0;
/// Largest penalty: a link with no key buffered and none arriving.
pub(crate) const MAX_PENALTY: f64 = 1024.0;
/// Earliest an advert triggered by a link going up or down follows the previous advert.
const MIN_ADVERT_GAP: Duration = Duration::from_millis(100);

/// An origin's newest advert and when it arrived (kept for good: its `(run, seq)` bounds the
/// origin's later adverts; one per origin of the topology).
#[derive(Debug, Clone)]
struct Held {
    run: u64,
    seq: u64,
    at: Instant,
    links: Arc<[LinkAdvert]>,
}

/// What this node knows of every link, and its own advertising state.
#[derive(Debug, Clone)]
pub(crate) struct LinkState {
    /// Newest advert per origin (this node's own included), origins of the topology only.
    /// Hashed: every copy of every flooded advert and every link cost looks an origin up.
    adverts: FixedMap<NodeId, Held>,
    /// This node's advert counter (this run).
    seq: u64,
    /// Next time rates are sampled and this node's links checked for a change worth an advert.
    next_check: Instant,
    last_advert: Option<Instant>,
    /// Each own link's route-cost classes `(transmit, receive)` in the last advert sent.
    sent_classes: Vec<(NodeId, u64, u64)>,
    /// When the next held advert goes stale (routes must then be recomputed), and when that
    /// was last looked at.
    next_stale: Option<Instant>,
    stale_checked: Instant,
    /// When rates were last sampled, and link key bytes arrived per neighbour since.
    last_sample: Instant,
    arrived: BTreeMap<NodeId, u64>,
    /// Moving average of link key arrivals per neighbour, bit/s.
    rate_bps: BTreeMap<NodeId, f64>,
    /// Whether each of this node's links was up in its last advert.
    sent_up: BTreeMap<NodeId, bool>,
    /// Adverts changed since costs were last computed.
    dirty: bool,
    /// Origins whose advert arrived or went stale since then: only their links' costs can have
    /// moved. All links are computed on the first pass (`all_changed`).
    changed: BTreeSet<NodeId>,
    all_changed: bool,
    /// The cost last handed to routing per topology link (by index; `Some(0.0)`, what routing
    /// starts from, until computed): a link whose cost did not move is not handed again.
    costs: Vec<Option<f64>>,
    next_recompute: Instant,
}

impl LinkState {
    /// Nothing known; the first advert goes at once.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            adverts: FixedMap::default(),
            seq: 0,
            next_check: now,
            last_advert: None,
            sent_classes: Vec::new(),
            next_stale: None,
            stale_checked: now,
            last_sample: now,
            arrived: BTreeMap::new(),
            rate_bps: BTreeMap::new(),
            sent_up: BTreeMap::new(),
            dirty: false,
            changed: BTreeSet::new(),
            all_changed: true,
            costs: Vec::new(),
            next_recompute: now,
        }
    }

    /// Notes `bytes` of link key from `peer` (a neighbour: the caller checked).
    pub(crate) fn arrived(&mut self, peer: &NodeId, bytes: u64) {
        match self.arrived.get_mut(peer) {
            Some(b) => *b += bytes,
            None => {
                self.arrived.insert(peer.clone(), bytes);
            }
        }
    }

    /// When the core's timer must run next for link state.
    pub(crate) fn next_deadline(&self) -> Instant {
        let mut t = self.next_check;
        if let Some(s) = self.next_stale {
            t = t.min(s);
        }
        if self.dirty {
            t = t.min(self.next_recompute);
        }
        t
    }

    /// Marks routes for recomputation when a held advert went stale since the last look, and
    /// finds when the next one will (`stale_after` from its arrival).
    fn note_staleness(&mut self, now: Instant, stale_after: Duration) {
        if self.next_stale.is_none_or(|t| now < t) {
            return;
        }
        let checked = self.stale_checked;
        let went_stale: Vec<NodeId> = self
            .adverts
            .iter()
            .filter(|(_, h)| {
                let s = h.at + stale_after;
                s > checked && s <= now
            })
            .map(|(o, _)| o.clone())
            .collect();
        for origin in went_stale {
            self.mark_changed(origin);
        }
        self.stale_checked = now;
        self.next_stale = self
            .adverts
            .values()
            .map(|h| h.at + stale_after)
            .filter(|s| *s > now)
            .min();
    }

    /// `origin`'s advert arrived or went stale: its links' costs are computed again.
    fn mark_changed(&mut self, origin: NodeId) {
        self.dirty = true;
        if !self.all_changed {
            self.changed.insert(origin);
        }
    }

    /// An advert held from `now` goes stale at `now + stale_after`.
    fn note_arrival(&mut self, now: Instant, stale_after: Duration) {
        let s = now + stale_after;
        self.next_stale = Some(self.next_stale.map_or(s, |t| t.min(s)));
    }

    /// The fresh claims about the hop `u → v`: `(up, rate_bps, bytes buffered for it)` from
    /// `u`'s advert (its transmit half) and from `v`'s (its receive half).
    /// At most two claims, in place: this runs for every link on every route recompute.
    fn claims(
        &self,
        u: &NodeId,
        v: &NodeId,
        fresh: impl Fn(&Held) -> bool,
    ) -> ([(bool, u64, u64); 2], usize) {
        let mut out = [(false, 0, 0); 2];
        let mut n = 0;
        for (origin, peer, tx) in [(u, v, true), (v, u, false)] {
            let Some(h) = self.adverts.get(origin).filter(|h| fresh(h)) else {
                continue;
            };
            if let Some(l) = h.links.iter().find(|l| l.peer == *peer) {
                let bytes = if tx { l.tx_bytes } else { l.rx_bytes };
                out[n] = (l.up, l.rate_bps, bytes);
                n += 1;
            }
        }
        (out, n)
    }
}

/// What the adverts say about one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hop {
    /// No fresh advert of either end mentions it.
    Unknown,
    /// An end says it is down.
    Down,
    /// Seconds to wait for `demand` bytes of link key (0 while the buffer covers them).
    Wait(f64),
}

fn hop(claims: &[(bool, u64, u64)], demand: u64) -> Hop {
    if claims.is_empty() {
        return Hop::Unknown;
    }
    if claims.iter().any(|c| !c.0) {
        return Hop::Down;
    }
    // Pessimistic: the lower rate and the smaller buffer of the two ends' claims.
    let rate = claims.iter().map(|c| c.1).min().unwrap_or(0);
    let held = claims.iter().map(|c| c.2).min().unwrap_or(0);
    if held >= demand {
        return Hop::Wait(0.0);
    }
    // Each direction gets half of the link's key.
    let dir_bps = rate as f64 / 2.0;
    if dir_bps < 1.0 {
        return Hop::Wait(f64::INFINITY);
    }
    Hop::Wait((demand - held) as f64 * 8.0 / dir_bps)
}

/// The link key one hop of a route may need at once: a window of relays (a buffer that covers
/// it makes the hop cost nothing extra).
fn hop_demand(p: &crate::Policy) -> u64 {
    u64::from(p.relay_chunk_bytes + 32) * u64::from(p.max_relays_in_flight.max(1))
}

/// The route-cost class that one end's claim about one direction gives on its own: the penalty
/// (a power of two, 0 when the buffer covers `demand`), or `u64::MAX` for a link down. An
/// advert goes out early only when one of these moved: receivers' routes change only then.
fn claim_class(up: bool, rate_bps: u64, bytes: u64, demand: u64) -> u64 {
    match hop(&[(up, rate_bps, bytes)], demand) {
        Hop::Down => u64::MAX,
        Hop::Wait(w) => penalty(w) as u64,
        Hop::Unknown => 0, // not reached: a claim is given
    }
}

/// The route-cost classes of each advertised link, in advert order.
fn advert_classes(links: &[LinkAdvert], demand: u64) -> Vec<(NodeId, u64, u64)> {
    links
        .iter()
        .map(|l| {
            (
                l.peer.clone(),
                claim_class(l.up, l.rate_bps, l.tx_bytes, demand),
                claim_class(l.up, l.rate_bps, l.rx_bytes, demand),
            )
        })
        .collect()
}

/// The cost a link `a`–`b` adds to routes from what both ends' fresh adverts claim about both
/// directions: `None` when an end says it is down, else the penalty of the slower direction
/// ([`UNKNOWN_PENALTY`] when nobody has a fresh advert of it).
fn link_cost(
    ls: &LinkState,
    a: &str,
    b: &str,
    fresh: impl Fn(&Held) -> bool + Copy,
    demand: u64,
) -> Option<f64> {
    let (a, b) = (&NodeId::from(a), &NodeId::from(b));
    let (ab, n) = ls.claims(a, b, fresh);
    let ab = hop(&ab[..n], demand);
    let (ba, n) = ls.claims(b, a, fresh);
    let ba = hop(&ba[..n], demand);
    match (ab, ba) {
        (Hop::Down, _) | (_, Hop::Down) => None,
        (Hop::Unknown, Hop::Unknown) => Some(UNKNOWN_PENALTY),
        (Hop::Wait(x), Hop::Wait(y)) => Some(penalty(x.max(y))),
        (Hop::Wait(x), Hop::Unknown) | (Hop::Unknown, Hop::Wait(x)) => Some(penalty(x)),
    }
}

/// The route penalty for a wait, in powers of two up to [`MAX_PENALTY`] (0 under half a unit).
fn penalty(wait_s: f64) -> f64 {
    let p = (wait_s * COST_PER_WAIT_S).min(MAX_PENALTY);
    if p.is_nan() || p < 0.5 {
        return 0.0;
    }
    let p = p.round() as u64;
    (1u64 << (63 - p.leading_zeros())) as f64
}

impl KeyManager {
    /// Whether this node's link to `peer` is usable now (for its advert).
    fn link_up(&self, peer: &NodeId) -> bool {
        !self.routing.is_down(peer) && self.routing.in_service(peer)
    }

    /// Sends this node's advert when due and recomputes route costs from what arrived, at most
    /// every `recompute_interval`.
    ///
    /// An advert is due soon after a link went up or down; at a check (every
    /// `advert_interval`) when the route-cost class of one of this node's links moved since the
    /// last advert; and every `refresh_interval` in any case. Receivers' routes move only with
    /// those classes, so adverts that would change no route are not flooded: on a network of a
    /// hundred nodes, a flood per node and second was most of the control traffic (a 3.3 kB
    /// ML-DSA-65 signature per copy) and of a node's CPU. Traffic-engineering link state does
    /// the same (OSPF-TE floods bandwidth changes past a threshold, RFC 3630/7471).
    /// Whether a link went up or down since this node's last advert (it advertises at its next
    /// tick).
    pub(crate) fn link_flip_pending(&self) -> bool {
        self.cfg.policy.link_state.is_some()
            && self
                .linkstate
                .sent_up
                .iter()
                .any(|(p, up)| *up != self.link_up(p))
    }

    pub(crate) fn tick_link_state(&mut self, now: Instant) {
        let Some(lp) = self.cfg.policy.link_state else {
            return;
        };
        let flipped = self.link_flip_pending();
        let gap_ok = self
            .linkstate
            .last_advert
            .is_none_or(|t| now.saturating_since(t) >= MIN_ADVERT_GAP);
        let check = now >= self.linkstate.next_check;
        if check || (flipped && gap_ok) {
            if check {
                self.linkstate.next_check = now + lp.advert_interval;
            }
            self.sample_rates(now, &lp);
            let links = self.own_links();
            let classes = advert_classes(&links, hop_demand(&self.cfg.policy));
            let refresh = self
                .linkstate
                .last_advert
                .is_none_or(|t| now.saturating_since(t) >= lp.refresh_interval);
            if flipped || refresh || classes != self.linkstate.sent_classes {
                self.advertise(now, links, classes);
            }
        }
        self.linkstate.note_staleness(now, lp.stale_after);
        if self.linkstate.dirty && now >= self.linkstate.next_recompute {
            self.update_link_costs(now, &lp);
        }
    }

    /// Folds the link key that arrived since the last sample into each link's rate.
    fn sample_rates(&mut self, now: Instant, lp: &LinkStatePolicy) {
        let dt = now
            .saturating_since(self.linkstate.last_sample)
            .as_secs_f64();
        let neighbours: Vec<NodeId> = self.links.held().map(|(p, _)| p.clone()).collect();
        if dt > 0.0 {
            let alpha = (dt / lp.rate_window.as_secs_f64().max(1e-3)).min(1.0);
            for p in &neighbours {
                let sample = self.linkstate.arrived.remove(p).unwrap_or(0) as f64 * 8.0 / dt;
                self.linkstate
                    .rate_bps
                    .entry(p.clone())
                    .and_modify(|r| *r += alpha * (sample - *r))
                    .or_insert(sample);
            }
            self.linkstate.last_sample = now;
        }
    }

    /// What this node's advert says of its links now.
    fn own_links(&self) -> Vec<LinkAdvert> {
        self.links
            .held()
            .take(MAX_ADVERT_LINKS)
            .map(|(p, h)| LinkAdvert {
                peer: p.clone(),
                up: self.link_up(p),
                rate_bps: self.linkstate.rate_bps.get(p).map_or(0, |r| *r as u64),
                tx_bytes: h.tx_bytes,
                rx_bytes: h.rx_bytes,
            })
            .collect()
    }

    /// Sends `links` as this node's advert to its neighbours, signed.
    fn advertise(
        &mut self,
        now: Instant,
        links: Vec<LinkAdvert>,
        classes: Vec<(NodeId, u64, u64)>,
    ) {
        let neighbours: Vec<NodeId> = self.links.held().map(|(p, _)| p.clone()).collect();
        let ls = &mut self.linkstate;
        ls.seq += 1;
        ls.last_advert = Some(now);
        ls.sent_classes = classes;
        // Own state changes show at each advert.
        ls.mark_changed(self.cfg.node_id.clone());
        ls.sent_up = links.iter().map(|l| (l.peer.clone(), l.up)).collect();
        // The driver's base grows with every start, also from an older or empty store.
        let run = self.reconcile.run.max(self.cfg.advert_run_base);
        let seq = ls.seq;
        let me = self.cfg.node_id.clone();
        let sig = match &self.cfg.advert_auth {
            None => Vec::new(),
            Some(auth) => match auth.sign(&signed_bytes(&me, run, seq, &links)) {
                Ok(sig) => sig,
                Err(e) => {
                    // Unsigned, every receiver would drop it: send nothing this round.
                    tracing::error!(me = %me, "link-state advert not sent: {e}");
                    Vec::new()
                }
            },
        };
        let signed = self.cfg.advert_auth.is_none() || !sig.is_empty();
        let links: Arc<[LinkAdvert]> = links.into();
        let ls = &mut self.linkstate;
        ls.adverts.insert(
            self.cfg.node_id.clone(),
            Held {
                run,
                seq,
                at: now,
                links: links.clone(),
            },
        );
        if !signed {
            return;
        }
        let msg = PeerMsg::LinkState {
            origin: me,
            run,
            seq,
            links,
            sig: sig.into(),
        };
        for to in neighbours {
            if !self.routing.is_reported_down(&to) {
                self.out.push(Action::Send {
                    to,
                    msg: msg.clone(),
                });
            }
        }
    }

    /// Whether an advert of `origin` numbered `(run, seq)` is dropped unread, an echo (see
    /// [`crate::echo`]): no link state here, this node's own flooded back round a cycle, or not
    /// newer than the one held. `Some(true)`: dropped as a replay of an older one, to be
    /// counted. `None`: it is read.
    pub(crate) fn advert_echo(
        &self,
        now: Instant,
        origin: &NodeId,
        run: u64,
        seq: u64,
    ) -> Option<bool> {
        let Some(lp) = self.cfg.policy.link_state else {
            return Some(false);
        };
        if *origin == self.cfg.node_id {
            return Some(false);
        }
        // Copies of what is held already come round every cycle of the flood: most adverts
        // are dropped here, before their content is checked.
        let h = self.linkstate.adverts.get(origin)?;
        if (run, seq) > (h.run, h.seq) {
            return None;
        }
        let fresh = now.saturating_since(h.at) < lp.stale_after;
        // Signed, the newest accepted bounds every later one for good: an older genuine
        // advert is a replay even once the origin fell silent (a restarted origin numbers its
        // adverts above, `KmConfig::advert_run_base`). Unsigned, the numbers prove nothing and a
        // forged (MAX, MAX) would silence the origin for good, so an older one is taken once the
        // held one is stale.
        (fresh || self.cfg.advert_auth.is_some()).then_some(!fresh && (run, seq) < (h.run, h.seq))
    }

    /// Counts an advert dropped as older than the newest accepted from its origin.
    pub(crate) fn note_advert_replayed(
        &mut self,
        from: &NodeId,
        origin: &NodeId,
        run: u64,
        seq: u64,
    ) {
        self.stats.link_adverts_replayed += 1;
        let (held_run, held_seq) = self
            .linkstate
            .adverts
            .get(origin)
            .map_or((0, 0), |h| (h.run, h.seq));
        tracing::debug!(
            me = %self.me(), %from, %origin, run, seq, held_run, held_seq,
            "link-state advert dropped: older than the newest accepted"
        );
    }

    /// An advert from `from` (its own or flooded): kept if it is valid, newer than the newest
    /// accepted from its origin and, with an [`AdvertAuth`](crate::AdvertAuth), signed by its
    /// origin (without one, an older advert is also kept once the held one is stale); then
    /// flooded on. The signature is checked last, so copies of an
    /// advert already held cost no verification.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_link_state(
        &mut self,
        now: Instant,
        from: NodeId,
        origin: NodeId,
        run: u64,
        seq: u64,
        links: Arc<[LinkAdvert]>,
        sig: Arc<[u8]>,
    ) {
        let Some(lp) = self.cfg.policy.link_state else {
            return;
        };
        if let Some(replayed) = self.advert_echo(now, &origin, run, seq) {
            if replayed {
                self.note_advert_replayed(&from, &origin, run, seq);
            }
            return;
        }
        if let Err(why) = self.check_advert(&origin, &links) {
            self.stats.link_adverts_rejected += 1;
            tracing::debug!(me = %self.me(), %from, %origin, "link-state advert dropped: {why}");
            return;
        }
        if let Some(auth) = &self.cfg.advert_auth {
            let bytes = signed_bytes(&origin, run, seq, &links);
            if sig.is_empty() || !auth.verify(&origin, &bytes, &sig) {
                self.stats.link_adverts_unauthenticated += 1;
                tracing::debug!(
                    me = %self.me(), %from, %origin,
                    "link-state advert dropped: missing or bad origin signature"
                );
                return;
            }
        }
        let msg = PeerMsg::LinkState {
            origin: origin.clone(),
            run,
            seq,
            links: links.clone(),
            sig,
        };
        self.linkstate.adverts.insert(
            origin.clone(),
            Held {
                run,
                seq,
                at: now,
                links,
            },
        );
        self.linkstate.note_arrival(now, lp.stale_after);
        self.linkstate.mark_changed(origin.clone());
        let to: Vec<NodeId> = self
            .routing
            .neighbours(&self.cfg.node_id)
            .filter(|n| **n != from && **n != origin && !self.routing.is_reported_down(n))
            .cloned()
            .collect();
        // The last neighbour takes the message itself.
        let mut msg = Some(msg);
        let last = to.len();
        for (i, to) in to.into_iter().enumerate() {
            let msg = if i + 1 == last {
                msg.take()
            } else {
                msg.clone()
            };
            if let Some(msg) = msg {
                self.out.push(Action::Send { to, msg });
            }
        }
    }

    /// A node may advertise only its own links: the origin must be a node of the topology and
    /// every link it names one of its links in the topology, each once.
    fn check_advert(&self, origin: &NodeId, links: &[LinkAdvert]) -> Result<(), &'static str> {
        let Some(own) = self.routing.adjacent(origin) else {
            return Err("origin is not a node of the topology with links");
        };
        if links.len() > MAX_ADVERT_LINKS || links.len() > own.len() {
            return Err("more links than its origin has");
        }
        // At most a node's degree of links: a pairwise look allocates nothing, and every
        // copy of every flooded advert is checked.
        for (i, l) in links.iter().enumerate() {
            if !own.contains(&l.peer) {
                return Err("names a link its origin does not have");
            }
            if links[..i].iter().any(|e| e.peer == l.peer) {
                return Err("names a link twice");
            }
        }
        Ok(())
    }

    /// Route costs from the adverts held now, for the links of the origins whose adverts
    /// changed (a link's cost reads only its two ends' adverts); routes are recomputed when
    /// they changed.
    fn update_link_costs(&mut self, now: Instant, lp: &LinkStatePolicy) {
        let topology = self.cfg.topology.clone();
        let ls = &mut self.linkstate;
        ls.dirty = false;
        ls.next_recompute = now + lp.recompute_interval;
        let changed = std::mem::take(&mut ls.changed);
        ls.costs.resize(topology.links.len(), Some(0.0));
        let mut links: Vec<usize> = if std::mem::take(&mut ls.all_changed) {
            (0..topology.links.len()).collect()
        } else {
            changed
                .iter()
                .flat_map(|o| self.routing.links_of(o).iter().copied())
                .collect()
        };
        links.sort_unstable();
        links.dedup();
        let demand = hop_demand(&self.cfg.policy);
        let fresh = |h: &Held| now.saturating_since(h.at) < lp.stale_after;
        // Only links whose cost moved go to routing: handing it an unchanged cost is a no-op,
        // and building the owned keys was most of this pass.
        let mut costs: Vec<((NodeId, NodeId), Option<f64>)> = Vec::new();
        for i in links {
            let l = &topology.links[i];
            let cost = link_cost(&self.linkstate, &l.a, &l.b, fresh, demand);
            if self.linkstate.costs[i] != cost {
                self.linkstate.costs[i] = cost;
                costs.push((link_key(&l.a, &l.b), cost));
            }
        }
        let (moved, newly_dead) = self.routing.update_link_costs(costs);
        if moved {
            tracing::debug!(me = %self.me(), "link state changed; routes recomputed");
        }
        if !newly_dead.is_empty() {
            // A relay from here over a link now advertised down (a node far away froze or
            // lost its neighbour) would only time out: its shares there are lost now, and a
            // relay left below its threshold frees its slot for one around the link.
            let gone = self.relays.lose_shares_where(|path| {
                path.windows(2)
                    .any(|w| newly_dead.contains(&link_key(&w[0], &w[1])))
            });
            self.record_abandoned(gone);
        }
    }

    /// Route cost each link of the topology has now beyond its static cost (0: key at hand,
    /// `None`: advertised down), for status and tests.
    pub fn link_penalties(&self) -> BTreeMap<(NodeId, NodeId), Option<f64>> {
        self.cfg
            .topology
            .links
            .iter()
            .map(|l| {
                let key = link_key(&l.a, &l.b);
                let v = self.routing.link_penalty(&key);
                (key, v)
            })
            .collect()
    }

    /// The newest `(run, seq)` held of each origin's advert (this node's own included).
    pub fn link_adverts_held(&self) -> BTreeMap<NodeId, (u64, u64)> {
        self.linkstate
            .adverts
            .iter()
            .map(|(o, h)| (o.clone(), (h.run, h.seq)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_are_powers_of_two_and_capped() {
        assert_eq!(penalty(0.0), 0.0);
        assert_eq!(penalty(0.04), 0.0);
        assert_eq!(penalty(0.1), 1.0);
        assert_eq!(penalty(0.25), 2.0);
        assert_eq!(penalty(1.0), 8.0);
        assert_eq!(penalty(f64::INFINITY), MAX_PENALTY);
    }

    /// Routes follow an origin going silent: when its advert goes stale (and only then), the
    /// next tick recomputes them, with no advert of its own to prompt it.
    #[test]
    fn an_advert_going_stale_marks_routes_for_recomputation() {
        let stale = Duration::from_secs(30);
        let t0 = Instant(1_000_000_000);
        let mut ls = LinkState::new(t0);
        let held = |at| Held {
            run: 1,
            seq: 1,
            at,
            links: Vec::new().into(),
        };
        ls.adverts.insert("x".into(), held(t0));
        ls.note_arrival(t0, stale);
        let t1 = t0 + Duration::from_secs(10);
        ls.adverts.insert("y".into(), held(t1));
        ls.note_arrival(t1, stale);
        ls.next_check = t0 + Duration::from_secs(3600);
        assert_eq!(
            ls.next_deadline(),
            t0 + stale,
            "the timer runs when x goes stale"
        );
        ls.note_staleness(t0 + Duration::from_millis(29_999), stale);
        assert!(!ls.dirty, "nothing went stale yet");
        ls.note_staleness(t0 + stale, stale);
        assert!(ls.dirty, "x went stale: routes must be recomputed");
        ls.dirty = false;
        assert_eq!(ls.next_deadline(), t1 + stale, "next: y");
        ls.note_staleness(t0 + stale + Duration::from_secs(1), stale);
        assert!(!ls.dirty, "x counts once");
        ls.note_staleness(t1 + stale, stale);
        assert!(ls.dirty, "then y");
    }

    /// Every link's cost computed from scratch, as before costs were updated per origin: the
    /// reference the incremental update must match.
    fn full_costs(k: &KeyManager, now: Instant) -> BTreeMap<(NodeId, NodeId), Option<f64>> {
        let lp = k.cfg.policy.link_state.unwrap();
        let demand = hop_demand(&k.cfg.policy);
        let fresh = |h: &Held| now.saturating_since(h.at) < lp.stale_after;
        k.cfg
            .topology
            .links
            .iter()
            .map(|l| {
                let cost = link_cost(&k.linkstate, &l.a, &l.b, fresh, demand);
                (link_key(&l.a, &l.b), cost)
            })
            .collect()
    }

    /// Adverts of random content from random origins at random times (gaps past `stale_after`
    /// included): after every recomputation, the costs updated per changed origin equal the
    /// costs of every link computed from scratch.
    #[test]
    fn costs_updated_per_origin_equal_costs_computed_from_scratch() {
        use kagi_control::Topology;

        use crate::config::{KmConfig, Policy};
        use crate::record::Snapshot;

        let ids = ["a", "b", "c", "d", "e", "f"];
        let mut topo = Topology::line("ring", &ids, 10.0, |_| vec![]);
        for (x, y) in [("f", "a"), ("a", "d"), ("b", "e")] {
            let mut l = topo.links[0].clone();
            l.a = x.into();
            l.b = y.into();
            topo.links.push(l);
        }
        let cfg = KmConfig::for_test("a", topo.clone(), Policy::default());
        let mut now = Instant(1_000_000_000);
        let mut k = KeyManager::restore(cfg, Snapshot::default(), [7; 32], now);
        let lp = k.cfg.policy.link_state.unwrap();
        let demand = hop_demand(&k.cfg.policy);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut seq = 0;
        let mut compared = 0;
        for _ in 0..3000 {
            now = now + Duration::from_millis(rnd(8) * rnd(8) * rnd(8) * 100);
            if rnd(3) > 0 {
                let origin = ids[1 + rnd(5) as usize];
                let peers: Vec<NodeId> = k
                    .routing
                    .neighbours(&NodeId::from(origin))
                    .cloned()
                    .collect();
                let mut links = Vec::new();
                for p in peers {
                    if rnd(5) == 0 {
                        continue;
                    }
                    links.push(LinkAdvert {
                        peer: p,
                        up: rnd(10) > 0,
                        rate_bps: [0, 1_000, 100_000, 10_000_000][rnd(4) as usize],
                        tx_bytes: rnd(3) * demand / 2,
                        rx_bytes: rnd(3) * demand / 2,
                    });
                }
                seq += 1;
                k.on_link_state(
                    now,
                    "b".into(),
                    origin.into(),
                    1,
                    seq,
                    links.into(),
                    Vec::new().into(),
                );
            }
            k.tick_link_state(now);
            if !k.linkstate.dirty {
                let got: BTreeMap<_, _> = full_costs(&k, now)
                    .keys()
                    .map(|key| (key.clone(), k.routing.link_penalty(key)))
                    .collect();
                assert_eq!(got, full_costs(&k, now), "at {now:?}");
                compared += 1;
            }
        }
        assert!(compared > 1000, "{compared}");
        assert!(lp.stale_after > lp.recompute_interval);
    }

    #[test]
    fn a_moved_cost_class_is_what_makes_an_early_advert() {
        let demand = 10_000;
        // A full buffer: the rate does not matter.
        assert_eq!(claim_class(true, 1_000, 20_000, demand), 0);
        assert_eq!(claim_class(true, 1_000_000, 20_000, demand), 0);
        // A draining one moves class in powers of two of the wait.
        assert!(claim_class(true, 100_000, 0, demand) > claim_class(true, 100_000, 9_000, demand));
        assert_eq!(
            claim_class(true, 100_000, 0, demand),
            claim_class(true, 90_000, 0, demand)
        );
        assert_eq!(claim_class(false, 100_000, 20_000, demand), u64::MAX);
    }

    #[test]
    fn claims_combine_pessimistically() {
        assert_eq!(hop(&[], 100), Hop::Unknown);
        assert_eq!(hop(&[(true, 1000, 200)], 100), Hop::Wait(0.0));
        // One end says the buffer covers it, the other that it does not: the other wins.
        assert_eq!(
            hop(&[(true, 1000, 200), (true, 1000, 0)], 100),
            Hop::Wait(1.6)
        );
        assert_eq!(
            hop(&[(true, 1000, 200), (false, 1000, 200)], 100),
            Hop::Down
        );
        assert_eq!(hop(&[(true, 0, 0)], 100), Hop::Wait(f64::INFINITY));
    }
}
