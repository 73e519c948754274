//! Refill ticks that cannot do anything are skipped.
//!
//! Refill runs every [`Policy::refill_interval`](crate::Policy::refill_interval) and visits every
//! destination; on a network of a hundred nodes, most ticks of most nodes start no relay and
//! change nothing, and these visits were most of a large simulation's CPU. A tick that changed
//! nothing is remembered with a fingerprint of everything refill reads; the next tick is skipped
//! while the fingerprint is the same and a wake-up time has not come.
//!
//! Why a skipped tick would have done nothing: refill reads the out-pools' byte counts, the
//! relays in flight, recent demand, the congestion windows, the routes (their generation) and
//! which peers reconciled. The first four count their changes ([`Fingerprint`]), routing has its
//! generation, and reconciliation only changes on inputs that drop the mark
//! ([`KeyManager::handle`](crate::KeyManager::handle)). With all of these unchanged, time alone
//! moves only:
//! - demand targets and "active" flags, which only decay: a destination that was not refilled
//!   stays so (its target falls, it turns idle, which only limits), except that one marked as
//!   refilling leaves that mark when its target falls to what it has. The wake-up time is the
//!   earliest such fall ([`Demand::may_fall_to`](crate::demand::Demand::may_fall_to));
//! - a congestion window's hold after a loss, which ends: the wake-up time is the first end;
//! - route constraints, which expire: while any is held, no tick is skipped.
//!
//! A tick that tried to start a relay (link key decides whether it can, and is not in the
//! fingerprint) or changed which destinations are refilling is never "quiet".
//!
//! Most changes of a busy node's fingerprint are requests: each takes key from one out-pool and
//! notes demand for one destination, and the pool stays above its low-water mark. When only the
//! pool and demand counters moved since a quiet tick, the next tick looks at the destinations
//! they moved for ([`Touched`]) and stays quiet when each of those would be passed over (as
//! refill passes over a destination that is not refilling and holds at least its low-water
//! mark); the others read what they read at the quiet tick. Any other case runs the full tick.
//!
//! A skipped tick still wakes the node. So that an idle node is not woken fifty times a second,
//! the ticks sleep: while the state of the last quiet tick holds and nothing else a tick does is
//! due (a grant ask, a reservation retry, hops waiting for link key after an input), the next
//! tick is the first on the refill grid at or after the mark's wake-up time, and
//! [`poll_timeout`](crate::KeyManager::poll_timeout) says so. An input that moves the
//! fingerprint ends the sleep: the next tick is the grid's next. Ticks are only ever left out
//! where they would have been skipped, on the same grid, so the node does the same thing at the
//! same times either way (the simulator's trace hash checks it against a run that ticks always).

use std::collections::BTreeSet;

use crate::manager::KeyManager;
use crate::msgs::NodeId;
use crate::time::Instant;

/// What refill reads, as counters of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub(crate) pools: u64,
    pub(crate) pending: u64,
    pub(crate) demand: u64,
    pub(crate) pace: u64,
    pub(crate) routing: u64,
}

/// The last quiet tick's fingerprint and wake-up time.
#[derive(Debug, Clone, Default)]
pub(crate) struct QuietMark {
    mark: Option<(Fingerprint, Option<Instant>)>,
    /// Never skip (to check, event for event, that skipping changes nothing).
    off: bool,
    /// Ticks skipped so far.
    skipped: u64,
    /// Of those, ticks skipped after a look at the destinations whose counters moved.
    looked: u64,
}

impl QuietMark {
    /// Whether a tick at `now` with `fp` may be skipped.
    pub(crate) fn skips(&mut self, fp: Fingerprint, now: Instant) -> bool {
        let skip = !self.off
            && self
                .mark
                .is_some_and(|(f, wake)| f == fp && wake.is_none_or(|w| now < w));
        self.skipped += u64::from(skip);
        skip
    }

    /// Whether a tick at `now` with `fp` differs from a quiet tick's only in the pool and demand
    /// counters, before the wake-up time: then the destinations those moved for decide
    /// ([`skip_with`](Self::skip_with)).
    pub(crate) fn only_pools_or_demand_moved(&self, fp: Fingerprint, now: Instant) -> bool {
        !self.off
            && self.mark.is_some_and(|(f, wake)| {
                f.pending == fp.pending
                    && f.pace == fp.pace
                    && f.routing == fp.routing
                    && wake.is_none_or(|w| now < w)
            })
    }

    /// The destinations whose pools or demand moved would all be passed over: the tick is
    /// skipped and the mark takes `fp` (its wake-up time stays: nothing it depends on moved).
    pub(crate) fn skip_with(&mut self, fp: Fingerprint) {
        if let Some((f, _)) = &mut self.mark {
            *f = fp;
            self.skipped += 1;
            self.looked += 1;
        }
    }

    /// While the last quiet tick's state still holds (`fp`): its wake-up time (`Some(None)`: no
    /// wake-up), so that ticks before it need not run at all. `None` when a tick may act.
    pub(crate) fn sleeps(&self, fp: Fingerprint) -> Option<Option<Instant>> {
        if self.off {
            return None;
        }
        self.mark.filter(|(f, _)| *f == fp).map(|(_, wake)| wake)
    }

    /// `ticks` ticks did not run at all (slept through, [`sleeps`](Self::sleeps)).
    pub(crate) fn slept(&mut self, ticks: u64) {
        self.skipped += ticks;
    }

    /// Turns skipping off (`false`) or on.
    pub(crate) fn enable(&mut self, on: bool) {
        self.off = !on;
    }

    /// Ticks skipped so far.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Ticks skipped after a look at the destinations whose counters moved.
    pub(crate) fn looked(&self) -> u64 {
        self.looked
    }

    /// A tick changed nothing and saw `fp`; nothing changes by time alone before `wake`
    /// (`None`: never).
    pub(crate) fn set(&mut self, fp: Fingerprint, wake: Option<Instant>) {
        self.mark = Some((fp, wake));
    }

    /// Something refill reads may have changed: the next tick runs.
    pub(crate) fn clear(&mut self) {
        self.mark = None;
    }
}

/// Destinations whose refill inputs (out-pool bytes, demand) changed since refill last looked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Touched {
    dests: BTreeSet<NodeId>,
    /// A change not tied to one destination (a restore, a recount).
    all: bool,
}

impl Touched {
    /// `dest`'s pool or demand changed.
    pub(crate) fn dest(&mut self, dest: &NodeId) {
        if !self.all && !self.dests.contains(dest) {
            self.dests.insert(dest.clone());
        }
    }

    /// Something changed for destinations not named.
    pub(crate) fn all(&mut self) {
        self.all = true;
        self.dests.clear();
    }

    /// The destinations touched since the last call (`None`: possibly all), forgetting them.
    pub(crate) fn take(&mut self) -> Option<BTreeSet<NodeId>> {
        let dests = std::mem::take(&mut self.dests);
        (!std::mem::take(&mut self.all)).then_some(dests)
    }
}

/// When refill ticks run: on a grid of [`Policy::refill_interval`](crate::Policy::refill_interval),
/// sleeping through those that would change nothing.
impl KeyManager {
    /// While refill ticks can change nothing and nothing else a tick does is due (grant asks,
    /// reservation retries, waiting hops to retry, an advert after a link flip): the first time
    /// one may (`Some(None)`: not before an input). `None`: the next tick may act.
    pub(crate) fn refill_sleeps_until(&self) -> Option<Option<Instant>> {
        if self.routing.has_any_demand() || self.relays.hop_retry_due() || self.link_flip_pending()
        {
            return None;
        }
        let wake = self.relays.quiet.sleeps(self.refill_fingerprint())?;
        Some(
            [wake, self.next_grant_ask(), self.next_reserve_retry()]
                .into_iter()
                .flatten()
                .min(),
        )
    }

    /// When the next refill tick runs (`None`: not before an input): the grid's next tick, or
    /// while ticks would change nothing, the first at or after the time one may.
    pub(crate) fn refill_due(&self) -> Option<Instant> {
        self.refill_due_given(self.refill_sleeps_until())
    }

    /// [`refill_due`](Self::refill_due) with `refill_sleeps_until`'s answer at hand.
    pub(crate) fn refill_due_given(&self, sleeps: Option<Option<Instant>>) -> Option<Instant> {
        match sleeps {
            None => Some(self.next_refill),
            Some(until) => until.map(|u| self.refill_grid_from(u)),
        }
    }

    /// The first tick of the refill grid at or after `t` (and not before the next one owed).
    fn refill_grid_from(&self, t: Instant) -> Instant {
        let base = self.next_refill;
        if t <= base {
            return base;
        }
        let k = (t.0 - base.0).div_ceil(self.refill_step());
        Instant(base.0.saturating_add(k.saturating_mul(self.refill_step())))
    }

    fn refill_step(&self) -> u64 {
        u64::try_from(self.cfg.policy.refill_interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Grid ticks that refill slept through (they would have changed nothing) are not owed:
    /// those up to `now` when an input arrives at `now` (a tick due at an instant runs before
    /// anything else does then), those before `now` when a timeout runs at `now` (one at `now`
    /// itself runs after the timeout's other work, as in a node that ticks always). Called
    /// before anything at `now` changes what the ticks read.
    pub(crate) fn skip_slept_refills(&mut self, now: Instant, for_input: bool) {
        if self.refill_owed_before(now, for_input) {
            self.skip_slept_refills_given(now, for_input, self.refill_sleeps_until());
        }
    }

    fn refill_owed_before(&self, now: Instant, for_input: bool) -> bool {
        if for_input {
            self.next_refill <= now
        } else {
            self.next_refill < now
        }
    }

    /// [`skip_slept_refills`](Self::skip_slept_refills) with `refill_sleeps_until`'s answer at
    /// hand.
    pub(crate) fn skip_slept_refills_given(
        &mut self,
        now: Instant,
        for_input: bool,
        sleeps: Option<Option<Instant>>,
    ) {
        if !self.refill_owed_before(now, for_input) {
            return;
        }
        let Some(until) = sleeps else {
            return;
        };
        if until.is_none_or(|u| self.refill_grid_from(u) > now) {
            let from = if for_input {
                Instant(now.0.saturating_add(1))
            } else {
                now
            };
            let next = self.refill_grid_from(from);
            self.relays
                .quiet
                .slept((next.0 - self.next_refill.0) / self.refill_step());
            self.next_refill = next;
        }
    }

    /// Runs the refill tick if one is due at `now`: refill, grant asks, reservation retries.
    pub(crate) fn refill_tick(&mut self, now: Instant) {
        if self.next_refill > now {
            return;
        }
        if self.refill_due().is_none_or(|t| now < t) {
            self.skip_slept_refills(now, true);
            return;
        }
        let slept = now.0.saturating_sub(self.next_refill.0) / self.refill_step();
        self.relays.quiet.slept(slept);
        self.next_refill = self.refill_grid_from(Instant(now.0.saturating_add(1)));
        self.refill(now);
        self.ask_link_key(now);
        self.retry_reserves(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fp(pools: u64) -> Fingerprint {
        Fingerprint {
            pools,
            pending: 0,
            demand: 0,
            pace: 0,
            routing: 0,
        }
    }

    #[test]
    fn a_mark_skips_only_the_same_state_before_its_wake_up() {
        let t = Instant::ZERO + Duration::from_secs(1);
        let mut q = QuietMark::default();
        assert!(!q.skips(fp(1), t), "no mark, no skip");
        q.set(fp(1), Some(t + Duration::from_secs(1)));
        assert!(q.skips(fp(1), t));
        assert!(!q.skips(fp(2), t), "another state");
        assert!(!q.skips(fp(1), t + Duration::from_secs(1)), "woken");
        q.set(fp(1), None);
        assert!(q.skips(fp(1), t + Duration::from_secs(100)));
        q.clear();
        assert!(!q.skips(fp(1), t));
        q.set(fp(1), None);
        q.enable(false);
        assert!(!q.skips(fp(1), t), "switched off");
        assert_eq!(q.skipped(), 2);
    }

    #[test]
    fn only_pool_and_demand_counters_may_have_moved_for_a_partial_look() {
        let t = Instant::ZERO + Duration::from_secs(1);
        let mut q = QuietMark::default();
        assert!(!q.only_pools_or_demand_moved(fp(1), t), "no mark");
        q.set(fp(1), Some(t + Duration::from_secs(1)));
        let moved = Fingerprint { demand: 5, ..fp(2) };
        assert!(q.only_pools_or_demand_moved(moved, t));
        for other in [
            Fingerprint {
                pending: 1,
                ..moved
            },
            Fingerprint { pace: 1, ..moved },
            Fingerprint {
                routing: 1,
                ..moved
            },
        ] {
            assert!(!q.only_pools_or_demand_moved(other, t), "{other:?}");
        }
        assert!(
            !q.only_pools_or_demand_moved(moved, t + Duration::from_secs(1)),
            "woken"
        );
        q.skip_with(moved);
        assert!(q.skips(moved, t), "the mark took the new counters");
        assert_eq!(q.skipped(), 2);
        q.enable(false);
        assert!(!q.only_pools_or_demand_moved(moved, t), "switched off");
    }

    #[test]
    fn touched_destinations_are_forgotten_once_taken() {
        let mut t = Touched::default();
        t.dest(&NodeId::from("b"));
        t.dest(&NodeId::from("c"));
        t.dest(&NodeId::from("b"));
        assert_eq!(t.take(), Some(["b".into(), "c".into()].into()));
        assert_eq!(t.take(), Some(BTreeSet::new()));
        t.dest(&NodeId::from("b"));
        t.all();
        t.dest(&NodeId::from("c"));
        assert_eq!(t.take(), None, "possibly all");
        assert_eq!(t.take(), Some(BTreeSet::new()));
    }

    /// Refill goes on relaying to a destination it is refilling until the target, however far
    /// above low water the pool is: such a destination is never passed over, or a tick that
    /// would start its next relay could be skipped as quiet.
    #[test]
    fn a_destination_still_refilling_is_never_passed_over() {
        use kagi_control::Topology;
        use kagi_keymat::Key;

        use crate::config::{KmConfig, Policy};
        use crate::record::Snapshot;

        let topo = Topology::line("refill", &["a", "b"], 10.0, |n| vec![format!("sae-{n}")]);
        let policy = Policy {
            pool_target_bytes: 4096,
            idle_floor_bytes: 4096,
            pool_low_water: 0.5,
            ..Policy::default()
        };
        let cfg = KmConfig::for_test("a", topo, policy.clone());
        let now = Instant(0);
        let b = NodeId::from("b");
        let mut km = KeyManager::restore(cfg, Snapshot::default(), [7; 32], now);
        km.reconcile.mark_reconciled(&b);
        // 3000 of the 4096 bytes wanted: above low water (2048), below the target.
        km.pools.add_out(&b, 1, Key::from_slice(&[9; 3000]), None);
        assert!(
            km.refill_passes_over(&b, now, &policy),
            "a pool above low water that is not refilling waits"
        );
        km.refilling.insert(b.clone());
        assert!(
            !km.refill_passes_over(&b, now, &policy),
            "a refilling destination below its target was passed over"
        );
    }
}
