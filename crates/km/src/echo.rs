//! Echoes: inputs that change nothing but liveness, and the deadlines kept across them.
//!
//! A heartbeat, a copy of a link-state advert this node already holds, and this node's own
//! advert flooded back tell a node only that their sender is alive. They are most of a mesh's
//! messages: a flood crosses every link about twice, and every node keeps only the first copy.
//! After every input the driver asks [`KeyManager::poll_timeout`], whose refill, grant and
//! reservation deadlines walk every link. Those deadlines depend only on state an echo does not
//! touch, so they are kept ([`DeadlineMemo`]) from the last time they were computed while only
//! echoes came, and `poll_timeout` recomputes just the liveness part. They are computed and kept
//! when the driver has drained the actions (`poll_action` answers `None`, as it must after every
//! input), so the core stays `Sync` and `poll_timeout` takes `&self`.
//!
//! Every other input and every timeout forgets the kept deadlines first, and nothing inside
//! `handle` or `handle_timeout` reads them: only `poll_timeout` and the echo path do. An echo
//! that could move them (it wakes waiting hops for the next refill tick, or it is the first word
//! from a peer that counted as silent) forgets them too.

use crate::manager::{Input, KeyManager};
use crate::msgs::PeerMsg;
use crate::time::Instant;

/// Deadlines of [`KeyManager::poll_timeout`] other than liveness and the refill grid's tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// What `refill_sleeps_until` says (see `crate::quiet`).
    pub(crate) sleeps: Option<Option<Instant>>,
    /// The earliest deadline of relays, assignments, hellos, link state, graces and revokes.
    pub(crate) others: Option<Instant>,
}

/// The deadlines last computed, while still valid.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeadlineMemo {
    kept: Option<Deadlines>,
    /// Never keep them: every echo is handled in full (for tests that compare).
    off: bool,
    /// Echoes handled without recomputing the deadlines.
    echoes: u64,
}

impl DeadlineMemo {
    /// Forgets the kept deadlines (state they read may change).
    pub(crate) fn forget(&mut self) {
        self.kept = None;
    }

    /// Keeps deadlines across echoes (`true`, the default) or never.
    pub(crate) fn enable(&mut self, on: bool) {
        self.off = !on;
        self.forget();
    }

    /// Echoes handled without recomputing the deadlines, so far.
    pub(crate) fn echoes(&self) -> u64 {
        self.echoes
    }
}

impl KeyManager {
    /// The deadlines as the state stands: kept ones if valid, else computed.
    pub(crate) fn deadlines(&self) -> Deadlines {
        self.deadline_memo
            .kept
            .unwrap_or_else(|| self.compute_deadlines())
    }

    /// Keeps the deadlines as the state stands (unless keeping is off or they are kept).
    pub(crate) fn remember_deadlines(&mut self) {
        if !self.deadline_memo.off && self.deadline_memo.kept.is_none() {
            self.deadline_memo.kept = Some(self.compute_deadlines());
        }
    }

    fn compute_deadlines(&self) -> Deadlines {
        Deadlines {
            sleeps: self.refill_sleeps_until(),
            others: [
                self.relays.next_deadline(),
                self.supply.next_deadline(),
                self.hello_deadline(),
                self.cfg
                    .policy
                    .link_state
                    .map(|_| self.linkstate.next_deadline()),
                self.delivery.next_deadline(),
                self.revokes.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// Handles `input` if it is an echo and deadlines are kept; returns false, having done
    /// nothing, otherwise (the caller handles it in full). Does what [`KeyManager::handle`] does
    /// for it, in the same order.
    pub(crate) fn handle_echo(&mut self, now: Instant, input: &Input) -> bool {
        let Input::Peer { from, msg } = input else {
            return false;
        };
        if self.fenced {
            return false;
        }
        let replayed = match msg {
            PeerMsg::Heartbeat => None,
            PeerMsg::LinkState {
                origin, run, seq, ..
            } => match self.advert_echo(now, origin, *run, *seq) {
                Some(true) => Some((origin, *run, *seq)),
                Some(false) => None,
                None => return false,
            },
            _ => return false,
        };
        let Some(kept) = self.deadline_memo.kept else {
            return false;
        };
        self.deadline_memo.echoes += 1;
        let hops_woken = self.begin_input(now, Some(kept.sleeps));
        let unsilenced = self.note_heard(from, now);
        if hops_woken || unsilenced {
            self.deadline_memo.forget();
        }
        if let Some((origin, run, seq)) = replayed {
            self.note_advert_replayed(from, origin, run, seq);
        }
        true
    }
}
