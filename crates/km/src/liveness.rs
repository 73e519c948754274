//! Liveness: heartbeats to the nodes a node watches, and silence detection.
//!
//! A frozen node (SIGSTOP, a hung process, a path that drops packets without closing the
//! connection) keeps its peer connections open, so the driver never reports it down. Every
//! node therefore sends [`PeerMsg::Heartbeat`] to the nodes it watches every
//! [`heartbeat_interval`](crate::LivenessPolicy::heartbeat_interval); a node not heard from for
//! [`silent_after`](crate::LivenessPolicy::silent_after) counts as down for routing (routes
//! and multi-path plans avoid it, relays through it are failed over) until any message from it
//! arrives. With [`PeerScope::All`](crate::PeerScope) heartbeats go to every node, so the origin
//! of a relay, which chooses its whole path, sees for itself that a node three hops away went
//! silent; with [`PeerScope::Neighbours`](crate::PeerScope) (the default) they go to neighbours
//! only, and a
//! far node's silence arrives as link-state adverts of its neighbours marking their links to it
//! down (see [`crate::linkstate`]).
//!
//! A heartbeat carries nothing but "I am alive", so none goes to a peer that was sent any
//! other message in the last half [`heartbeat_interval`](crate::LivenessPolicy::heartbeat_interval):
//! that message says the same, and the peer still hears from this node at least every one and a
//! half intervals. In a busy mesh, where link-state floods cross every link several times a
//! second, almost no heartbeat goes.
//!
//! Time comes only from the driver's `now`: a node whose own timer did not run for longer than
//! `silent_after` (it was the one frozen) starts counting afresh instead of blaming every peer.

use std::collections::BTreeMap;

use crate::manager::KeyManager;
use crate::msgs::{NodeId, PeerMsg};
use crate::outbox::Action;
use crate::time::Instant;

/// What a node knows of one node it watches.
#[derive(Debug, Clone, Copy)]
struct Watched {
    /// When it was last heard from.
    heard: Instant,
    /// When a message last left for it (`None`: not since this count started).
    sent: Option<Instant>,
}

/// When each other node was last heard from and sent to, and when the next heartbeat is due.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    watched: BTreeMap<NodeId, Watched>,
    next_beat: Instant,
    /// The last time the core's timer ran (to tell its own stall from its peers' silence).
    last_tick: Instant,
}

impl Liveness {
    /// Every node in `others` counts as heard from at `now`; the first heartbeat goes at once.
    pub(crate) fn new(others: impl IntoIterator<Item = NodeId>, now: Instant) -> Self {
        Self {
            watched: others
                .into_iter()
                .map(|n| {
                    let w = Watched {
                        heard: now,
                        sent: None,
                    };
                    (n, w)
                })
                .collect(),
            next_beat: now,
            last_tick: now,
        }
    }

    /// Notes that `peer` spoke at `now` (unknown senders are ignored: the map stays bounded by
    /// the topology).
    pub(crate) fn heard(&mut self, peer: &NodeId, now: Instant) {
        if let Some(w) = self.watched.get_mut(peer) {
            w.heard = w.heard.max(now);
        }
    }

    /// Notes that a message left for `peer` at `now` (only watched nodes are tracked).
    pub(crate) fn sent(&mut self, peer: &NodeId, now: Instant) {
        if let Some(w) = self.watched.get_mut(peer) {
            w.sent = Some(now);
        }
    }

    /// Watched nodes that need a heartbeat at `now`: none left for them in the last half
    /// `interval`.
    fn beat_due(&self, now: Instant, interval: std::time::Duration) -> Vec<NodeId> {
        self.watched
            .iter()
            .filter(|(_, w)| {
                w.sent
                    .is_none_or(|s| now.saturating_since(s) >= interval / 2)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Nodes not heard from since `now - silent_after`.
    fn silent(&self, now: Instant, silent_after: std::time::Duration) -> Vec<NodeId> {
        self.watched
            .iter()
            .filter(|(_, w)| now.saturating_since(w.heard) >= silent_after)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// When the core's timer must run next for liveness.
    pub(crate) fn next_deadline(&self, silent_after: std::time::Duration) -> Instant {
        // The next peer to go silent, if it stays so (those that went silent before the last
        // check were handled then): noticed when it happens, however seldom the timer runs.
        let falls_silent = self
            .watched
            .values()
            .map(|w| w.heard + silent_after)
            .filter(|s| *s > self.last_tick)
            .min();
        falls_silent.map_or(self.next_beat, |s| s.min(self.next_beat))
    }
}

impl KeyManager {
    /// A message (or a channel coming up) from `peer`: it is alive; if it was silent, routes
    /// may go through it again.
    /// Returns whether `peer` counted as silent until now.
    pub(crate) fn note_heard(&mut self, peer: &NodeId, now: Instant) -> bool {
        if self.cfg.policy.liveness.is_none() {
            return false;
        }
        self.liveness.heard(peer, now);
        let spoke_again = self.routing.set_silent(peer, false);
        if spoke_again {
            tracing::info!(me = %self.me(), %peer, "peer speaks again; routing through it");
        }
        spoke_again
    }

    /// Sends the heartbeats that are due and routes around nodes that went silent.
    pub(crate) fn check_liveness(&mut self, now: Instant) {
        let Some(lp) = self.cfg.policy.liveness else {
            return;
        };
        // This core's own timer stalled (the process was frozen or starved): what it did not
        // hear meanwhile says nothing about its peers.
        if now.saturating_since(self.liveness.last_tick) >= lp.silent_after {
            let others: Vec<NodeId> = self.liveness.watched.keys().cloned().collect();
            self.liveness = Liveness::new(others, now);
        }
        self.liveness.last_tick = now;
        if now >= self.liveness.next_beat {
            self.liveness.next_beat = now + lp.heartbeat_interval;
            let to = self.liveness.beat_due(now, lp.heartbeat_interval);
            for to in to {
                if self.routing.is_reported_down(&to) {
                    continue;
                }
                self.out.push(Action::Send {
                    to,
                    msg: PeerMsg::Heartbeat,
                });
            }
        }
        for peer in self.liveness.silent(now, lp.silent_after) {
            if self.routing.is_reported_down(&peer) || !self.routing.set_silent(&peer, true) {
                continue;
            }
            tracing::warn!(me = %self.me(), %peer, silent_ms = lp.silent_after.as_millis() as u64,
                "peer silent; routing around it");
            self.fail_over_relays_via(&peer);
        }
    }

    /// Relays from here through or to a silent node: each share on a path through it is lost;
    /// a relay left with fewer shares than its threshold is abandoned at once (rather than at
    /// its timeout), which frees its slot for a relay on a route around the node.
    fn fail_over_relays_via(&mut self, node: &NodeId) {
        let gone = self.relays.lose_shares_via(node);
        self.record_abandoned(gone);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }

    /// The timer runs when a peer falls silent, not only at the next heartbeat: routes leave a
    /// silent peer `silent_after` after its last word, however far off the next beat is.
    #[test]
    fn the_timer_runs_when_each_peer_falls_silent() {
        let silent_after = Duration::from_millis(1500);
        let (b, c) = (NodeId::from("b"), NodeId::from("c"));
        let mut l = Liveness::new([b.clone(), c.clone()], at(0));
        l.next_beat = at(5000);
        l.heard(&b, at(200));
        l.heard(&c, at(900));
        l.last_tick = at(1000);
        assert_eq!(
            l.next_deadline(silent_after),
            at(1700),
            "b falls silent first"
        );
        // A check at b's silence handled it: c's is next, then the beat.
        l.last_tick = at(1700);
        assert_eq!(l.next_deadline(silent_after), at(2400), "then c");
        l.last_tick = at(2400);
        assert_eq!(l.next_deadline(silent_after), at(5000), "then the beat");
    }
}
