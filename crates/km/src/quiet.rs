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

    /// Turns skipping off (`false`) or on.
    pub(crate) fn enable(&mut self, on: bool) {
        self.off = !on;
    }

    /// Ticks skipped so far.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
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
}
