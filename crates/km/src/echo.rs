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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kagi_control::Topology;
    use kagi_keymat::Key;

    use super::*;
    use crate::config::{KmConfig, Policy};
    use crate::msgs::NodeId;
    use crate::record::Snapshot;

    /// Node a of the line a–b–c with full pools, its timer run (actions drained after each
    /// wake) until `until`.
    fn node_a_until(until: Instant) -> KeyManager {
        let topo = Topology::line("echo", &["a", "b", "c"], 10.0, |n| vec![format!("sae-{n}")]);
        let cfg = KmConfig::for_test(
            "a",
            topo,
            Policy {
                pool_target_bytes: 4096,
                idle_floor_bytes: 4096,
                ..Policy::default()
            },
        );
        let mut km = KeyManager::restore(cfg, Snapshot::default(), [7; 32], Instant(0));
        // Full pools: refill has nothing to do, and its ticks go quiet.
        for peer in ["b", "c"] {
            let peer = NodeId::from(peer);
            km.reconcile.mark_reconciled(&peer);
            km.pools
                .add_out(&peer, 1, Key::from_slice(&[9; 4096]), None);
        }
        run_until(&mut km, until);
        km
    }

    /// Runs `km`'s timer (actions drained after each wake) until `until`.
    fn run_until(km: &mut KeyManager, until: Instant) {
        while km.poll_action().is_some() {}
        while let Some(t) = km.poll_timeout().filter(|t| *t <= until) {
            km.handle_timeout(t);
            while km.poll_action().is_some() {}
        }
    }

    /// The first word from a peer that counted as silent routes through it again, which moves
    /// refill's deadlines: the echo that carries it must not leave the old ones kept.
    #[test]
    fn an_echo_from_a_silent_peer_forgets_the_kept_deadlines() {
        let until = Instant(Duration::from_secs(5).as_nanos() as u64);
        let mut km = node_a_until(until);
        let b = NodeId::from("b");
        assert!(km.routing.is_down(&b), "b never spoke: it counts as silent");
        assert!(km.deadline_memo.kept.is_some(), "drained: deadlines kept");
        km.handle(
            until,
            Input::Peer {
                from: b.clone(),
                msg: PeerMsg::Heartbeat,
            },
        );
        assert_eq!(km.deadline_memo.echoes(), 1, "the heartbeat was an echo");
        assert!(!km.routing.is_down(&b), "b speaks again");
        assert_eq!(km.deadlines(), km.compute_deadlines());
    }

    /// An echo is an input: a hop waiting for link key is retried at the next refill tick,
    /// which moves refill's deadlines, so the echo that wakes it must not leave the old ones kept.
    #[test]
    fn an_echo_that_wakes_waiting_hops_forgets_the_kept_deadlines() {
        let until = Instant(Duration::from_secs(5).as_nanos() as u64);
        let mut km = node_a_until(until);
        let b = NodeId::from("b");
        let beat = || Input::Peer {
            from: NodeId::from("b"),
            msg: PeerMsg::Heartbeat,
        };
        // b speaks again first, so that the echo below moves nothing but the hop, and refill
        // settles (its ticks go quiet) before b's next word.
        km.handle(until, beat());
        let later = until + Duration::from_secs(1);
        run_until(&mut km, later);
        km.relays.park_hop(crate::relay::WaitingHop {
            deadline: later + Duration::from_secs(60),
            from: b.clone(),
            msg: PeerMsg::Heartbeat,
        });
        km.deadline_memo.forget();
        assert!(km.poll_action().is_none());
        let kept = km.deadlines();
        assert_eq!(kept, km.compute_deadlines(), "kept as the state stands");
        let echoes = km.deadline_memo.echoes();
        km.handle(later, beat());
        assert_eq!(
            km.deadline_memo.echoes(),
            echoes + 1,
            "the heartbeat was an echo"
        );
        assert_ne!(
            km.compute_deadlines(),
            kept,
            "waking the hop moved the deadlines"
        );
        assert_eq!(km.deadlines(), km.compute_deadlines());
    }
}
