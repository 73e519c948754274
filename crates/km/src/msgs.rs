//! Messages between key managers, and their binary codec.
//!
//! Relay hops travel only over QKD links (neighbour to neighbour) and carry one-time-pad
//! ciphertext plus a Wegman–Carter tag; everything else (acknowledgements, assignments) carries
//! metadata only and may travel over any authenticated node-to-node channel.

use std::sync::Arc;

use kagi_keymat::Tag;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::SaeId;

pub use kagi_control::NodeId;

/// A byte range of one link key block half (or pool chunk): `(block or chunk id, start, len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Block (link key) or chunk (pool) id.
    pub id: u64,
    /// First byte.
    pub start: u32,
    /// Length in bytes.
    pub len: u32,
}

/// Most spans one message may name for one key (a pad crosses a handful of blocks or chunks).
pub const MAX_SPANS: usize = 4096;

/// Set in a link key [`Span::id`] when the span lies in the *receiver's* half of the block, which
/// the receiver granted to the sender ([`PeerMsg::LinkKeyGranted`]); clear for the sender's own
/// half. Block ids from QKD links never have it set (such blocks are refused at intake).
pub const GRANTED: u64 = 1 << 63;

impl Span {
    /// The link key block this span lies in, without the [`GRANTED`] flag.
    pub fn block(&self) -> u64 {
        self.id & !GRANTED
    }

    /// Whether the span lies in a half the receiver granted to the sender.
    pub fn is_granted(&self) -> bool {
        self.id & GRANTED != 0
    }

    /// Whether `spans` can be spent together: at most [`MAX_SPANS`], none empty, no two
    /// overlapping. Sorting makes this `O(n log n)`, so a hostile message cannot stall the core;
    /// an empty span would slip between the overlap checks of its neighbours.
    pub fn disjoint(spans: &[Span]) -> bool {
        if spans.len() > MAX_SPANS || spans.iter().any(|s| s.len == 0) {
            return false;
        }
        let mut sorted: Vec<(u64, u64, u64)> = spans
            .iter()
            .map(|s| {
                (
                    s.id,
                    u64::from(s.start),
                    u64::from(s.start) + u64::from(s.len),
                )
            })
            .collect();
        sorted.sort_unstable();
        sorted
            .windows(2)
            .all(|w| w[0].0 != w[1].0 || w[0].2 <= w[1].1)
    }
}

/// Identifies one relay: the node that made the key, the run of its key manager that made it,
/// and its relay counter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelayId {
    /// Originating node (it generated the key).
    pub origin: NodeId,
    /// The origin's epoch (a random id of each start of its key manager, announced in
    /// [`PeerMsg::Hello`]): a destination keeps only relays of the origin's current run, so a
    /// hop still in flight from before a crash or a restored database cannot land under a
    /// counter the new run reuses.
    pub epoch: u64,
    /// Origin's relay counter (never reused within a store; moved past everything peers saw
    /// after a restart, see [`PeerMsg::Seen`]).
    pub seq: u64,
}

/// Which share of a multi-path relay a hop carries: share `index` (1..=`count`) of a key split
/// `threshold`-of-`count` (XOR when they are equal, Shamir otherwise), each over its own
/// node-disjoint path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// Share number, `1..=count` (the Shamir evaluation point).
    pub index: u8,
    /// Shares needed to rebuild the key.
    pub threshold: u8,
    /// Shares made (one per path).
    pub count: u8,
}

impl ShareInfo {
    /// True when the numbers make sense: `1 ≤ index ≤ count`, `1 ≤ threshold ≤ count`.
    pub fn is_valid(&self) -> bool {
        (1..=self.count).contains(&self.index) && (1..=self.count).contains(&self.threshold)
    }
}

/// Why a node gave up on a relay (sent back to the origin with [`PeerMsg::RelayAborted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AbortReason {
    /// The hop referenced link key this node no longer holds (evicted or skipped while down).
    LinkKeyMissing,
    /// The hop waited here longer than `hop_wait` for link key (to check it, or to forward it).
    LinkKeyExhausted,
    /// The hop failed its Wegman–Carter tag.
    BadTag,
    /// The destination could not rebuild the key from the shares it received.
    SharesInconsistent,
    /// No set of shares the destination received rebuilt a key that passed the manipulation
    /// check: a node on some path altered its share.
    SharesManipulated,
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AbortReason::LinkKeyMissing => {
                "a hop referenced link key the next node no longer holds"
            }
            AbortReason::LinkKeyExhausted => "no link key to carry the hop within hop_wait",
            AbortReason::BadTag => "a hop failed its authentication tag",
            AbortReason::SharesInconsistent => {
                "the destination could not rebuild the key from its shares"
            }
            AbortReason::SharesManipulated => {
                "a share was altered on its path: the rebuilt key failed its manipulation check"
            }
        })
    }
}

/// How a slave's node obtains the bytes of one assigned key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySource {
    /// The bytes sit in the end-to-end pool the origin relayed to this node: these spans.
    Pool(Vec<Span>),
    /// The bytes are `ct ⊕ pad`, the pad taken from the pool at these spans; the first 32 pool
    /// bytes are the one-time MAC key for `tag` (used for multicast to a second slave node).
    Otp {
        /// Pool spans: MAC key (32 bytes) then the pad.
        pad: Vec<Span>,
        /// Ciphertext.
        ct: Vec<u8>,
        /// Tag over `key_id ‖ ct`.
        tag: Tag,
    },
}

/// One key in an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedKey {
    /// The key ID handed to the master.
    pub id: Uuid,
    /// Where its bytes come from.
    pub source: KeySource,
}

/// Node-to-node message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// One hop of a key relay: `ct = K ⊕ pad`, pad and MAC key from the link key of this hop.
    RelayHop {
        /// Which relay.
        relay: RelayId,
        /// Full path, origin first.
        path: Vec<NodeId>,
        /// Link key spans of the sender's half: 32 bytes of MAC key, then `ct.len()` bytes of pad.
        pad: Vec<Span>,
        /// One-time-pad ciphertext of the relayed key.
        ct: Vec<u8>,
        /// Wegman–Carter tag over the header and `ct`.
        tag: Tag,
    },
    /// One hop of one share of a multi-path relay: exactly like [`PeerMsg::RelayHop`] (one-time
    /// pad and Wegman–Carter tag from this hop's link key), carrying share `share` of the key.
    ShareHop {
        /// Which relay.
        relay: RelayId,
        /// Which share.
        share: ShareInfo,
        /// This share's full path, origin first.
        path: Vec<NodeId>,
        /// Every share's path (share `i` on `paths[i - 1]`), the same in every share of a relay:
        /// the destination checks that each share came along its own path, so a node on one
        /// path cannot pass its share off as another share (relabelling defeats the
        /// manipulation check, which only catches added offsets).
        paths: Vec<Vec<NodeId>>,
        /// Link key spans of the sender's half: 32 bytes of MAC key, then `ct.len()` bytes of pad.
        pad: Vec<Span>,
        /// One-time-pad ciphertext of the share.
        ct: Vec<u8>,
        /// Wegman–Carter tag over the header (share included) and `ct`.
        tag: Tag,
    },
    /// A node on a relay's path gave up on it (or on one of its shares): the origin learns at
    /// once instead of waiting for its timeout.
    RelayAborted {
        /// Which relay.
        relay: RelayId,
        /// The share, for a multi-path relay.
        share: Option<u8>,
        /// Why.
        reason: AbortReason,
    },
    /// The destination stored a relayed key (sent to the origin after it is durable).
    RelayAck {
        /// Which relay.
        relay: RelayId,
    },
    /// The origin's node tells a slave's node which key IDs now belong to (master, slaves).
    Assign {
        /// The origin's epoch: a slave's node applies assignments only from the origin's current
        /// run, so one still in flight from an earlier run cannot reuse a counter.
        epoch: u64,
        /// Assignment counter at the origin (never reused).
        seq: u64,
        /// The master SAE.
        master: SaeId,
        /// Slaves served by the receiving node.
        slaves: Vec<SaeId>,
        /// The keys.
        keys: Vec<AssignedKey>,
    },
    /// The slave's node made an assignment durable (`ok`) or refused it.
    AssignAck {
        /// Assignment counter.
        seq: u64,
        /// Whether the assignment is durable at the slave's node.
        ok: bool,
    },
    /// The receiver of a relay hop no longer holds these blocks of the sender's half of the link
    /// key (evicted, or skipped while it was down): the sender stops spending them.
    LinkMissing {
        /// Block ids.
        blocks: Vec<u64>,
    },
    /// The origin gave up on an assignment: drop its keys.
    Revoke {
        /// Assignment counter.
        seq: u64,
    },
    /// Sent to every node when the key manager starts, when a peer's channel comes up, and
    /// until the peer answers with [`PeerMsg::Seen`]: who this node's store is and which run of
    /// its key manager is speaking.
    Hello {
        /// The store's identity, drawn when the database was created: a new value means the
        /// node lost its database (wiped or replaced), and whatever the receiver holds with it
        /// from before (pools, link key) is discarded.
        store: u64,
        /// This run's epoch (see [`RelayId::epoch`]).
        epoch: u64,
        /// Lowest link key block the sender may still hold of its link with the receiver (its
        /// lowest block, or the one after its high-water mark); the receiver drops its copies of
        /// older blocks. `None`: the sender never received any (a new store); it greets again
        /// with its first block.
        link_low: Option<u64>,
        /// This run's number on its store (`Counter::Run`: every start adds one).
        run: u64,
        /// The sender's next relay counter: a receiver that already saw this counter or a
        /// higher one from an earlier run of the same store knows the store was rolled back.
        next_relay: u64,
        /// The sender's next assignment counter (same use).
        next_assign: u64,
        /// The lowest block of the sender's transmit half of their link, and whether it is
        /// untouched: below or at a block the receiver saw spent, proof of a rollback.
        tx_low: Option<(u64, bool)>,
    },
    /// The answer to [`PeerMsg::Hello`]: what the receiver has seen of the sender's state, so a
    /// node restarted from an empty or older database moves its counters past everything already
    /// used, drops link key its neighbour saw it spend, and detects that it was rolled back.
    Seen {
        /// The epoch of the `Hello` this answers (an answer to an earlier run is ignored).
        epoch: u64,
        /// Highest relay counter of the `Hello`'s sender (its current store) this node received
        /// as destination: at or above the sender's own counter, proof of a rollback.
        relay_hw: u64,
        /// Highest assignment counter of the `Hello`'s sender (its current store) this node
        /// applied: at or above the sender's own counter, proof of a rollback.
        assign_hw: u64,
        /// Highest relay counter this node received from earlier stores of the sender (before
        /// it lost its database): the sender moves past it too, but it proves nothing.
        relay_floor: u64,
        /// Highest assignment counter this node applied from earlier stores of the sender.
        assign_floor: u64,
        /// Highest block of the sender's transmit half of their link that this node saw spent.
        link_rx_hw: Option<u64>,
        /// The first run of the sender's current store whose `Hello` this node judged rolled
        /// back (0: none): the store forked from an older copy at or before that run, and slave
        /// keys of that run or later were applied after the restore.
        fork_run: u64,
        /// Highest block of the sender's transmit half of their link that the sender reserved
        /// here ([`PeerMsg::LinkReserve`]) and so may have spent, seen here or not: the sender
        /// drops what is left of it and of older blocks (a copy of its store restored from
        /// before those spends still holds them as unspent).
        link_reserved: Option<u64>,
        /// The run number of the sender's run (of its current store) whose messages last raised
        /// the marks above here (0: unknown). A rolled-back sender whose own run of that number
        /// had another epoch than `marks_epoch` was copied before that run began: keys it
        /// applied in that run came after the restore.
        marks_run: u64,
        /// That run's epoch (0: unknown).
        marks_epoch: u64,
    },
    /// An assignment named chunks of the sender's pool for this node that this node does not
    /// hold (its store was lost or restored from an older copy since they were relayed): the
    /// sender drops them from its out-pool and relays new key instead.
    PoolMissing {
        /// Chunk ids (relay counters of the sender).
        chunks: Vec<u64>,
    },
    /// "Still here", sent to every other node every
    /// [`heartbeat_interval`](crate::LivenessPolicy::heartbeat_interval): a node that stops
    /// speaking (frozen, hung, cut off without its connection closing) is routed around once it
    /// has been silent for [`silent_after`](crate::LivenessPolicy::silent_after). The transport
    /// authenticates the sender; the message carries nothing else.
    Heartbeat,
    /// The answer to [`PeerMsg::Revoke`]: the receiver holds no key of that assignment from
    /// the sender any more (durably), whether it ever had one or not. The origin re-sends a
    /// revoke until this arrives.
    RevokeAck {
        /// Assignment counter.
        seq: u64,
    },
    /// A link-state advertisement: the state of each QKD link of `origin` as `origin` sees it.
    /// Each node sends its own every
    /// [`advert_interval`](crate::LinkStatePolicy::advert_interval) and when a link goes up or
    /// down; every node keeps the newest per origin and floods it on to its neighbours (not back
    /// to the one it came from), so every node learns every link's key supply and routes by it
    /// (see [`crate::LinkStatePolicy`]).
    LinkState {
        /// The node whose links these are (for a flooded copy, not the sender).
        origin: NodeId,
        /// The origin's run number on its store (every start adds one): a restarted origin's
        /// adverts supersede its earlier run's.
        run: u64,
        /// Counter within the run; a receiver keeps only the newest `(run, seq)` per origin.
        seq: u64,
        /// One entry per link of the origin, at most [`MAX_ADVERT_LINKS`]; a link the origin
        /// does not have in the topology makes the receiver drop the whole advertisement.
        /// Shared: a flooded advert is copied to every neighbour and held by every node.
        links: Arc<[LinkAdvert]>,
        /// The origin's signature over [`crate::advert_auth::signed_bytes`] of the fields above
        /// (ML-DSA-65 in `kagi-node`); empty when the origin signs no adverts. A receiver that
        /// verifies adverts drops one whose signature is missing or wrong before it keeps or
        /// floods it, so a transit node cannot forge or alter another origin's advert.
        sig: Arc<[u8]>,
    },
    /// The sender is short of link key towards the receiver (its own half and what it was
    /// granted hold less than the grant reserve): the receiver may grant it part of its own
    /// half ([`PeerMsg::LinkKeyGranted`]) if it holds more than its reserve itself.
    LinkKeyWanted {
        /// Bytes the sender would use.
        bytes: u64,
    },
    /// The sender gives the receiver these spans of the *sender's* half of their link (each
    /// running to the end of its block): the sender durably gave them up before sending, and
    /// the receiver may spend them (flagged [`GRANTED`] in its spans) until either restarts.
    /// A grant can only give away the sender's own bits.
    LinkKeyGranted {
        /// The sender's epoch: a grant from an earlier run is ignored (that run's store may
        /// have been restored from a copy that still holds these spans).
        epoch: u64,
        /// The spans given, in the sender's half (no [`GRANTED`] flag).
        spans: Vec<Span>,
    },
    /// The sender is about to spend its half of their link up to block `upto`: the receiver
    /// records that durably, then answers [`PeerMsg::LinkReserved`]. A node spends no byte of
    /// its half beyond an answered reservation, so the neighbour always knows, whatever copy of
    /// the sender's store comes back, which of the sender's blocks may have been spent (on
    /// hops it never received too) and reports it in `Seen`.
    LinkReserve {
        /// Highest block of the sender's half it wants to spend.
        upto: u64,
    },
    /// The answer to [`PeerMsg::LinkReserve`]: the sender (the receiver's neighbour) durably
    /// recorded that the receiver may spend its half up to block `upto`.
    LinkReserved {
        /// The sender's store identity (a reservation recorded by an earlier store of the
        /// sender, lost with it, is ignored).
        store: u64,
        /// Highest block reserved.
        upto: u64,
    },
}

/// Most links one [`PeerMsg::LinkState`] may describe (a node of higher degree than this cannot
/// advertise; receivers drop longer ones unread).
pub const MAX_ADVERT_LINKS: usize = 64;

/// The state of one QKD link as one of its ends (the advert's origin) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkAdvert {
    /// The neighbour at the other end.
    pub peer: NodeId,
    /// Usable: the neighbour is reachable and heard from, and the link is in service.
    pub up: bool,
    /// Link key arriving over the last seconds (both halves), bit/s (a moving average).
    pub rate_bps: u64,
    /// Unspent key of the origin's half (what it spends towards `peer`), bytes.
    pub tx_bytes: u64,
    /// Unspent key of the neighbour's half (what `peer` spends towards the origin), bytes.
    pub rx_bytes: u64,
}

/// A peer message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed peer message: {0}")]
pub struct DecodeError(String);

/// Largest encoded peer message accepted (bytes).
pub const MAX_MSG_LEN: usize = 16 << 20;

impl PeerMsg {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("peer messages always encode")
    }

    /// Decodes from the wire; never panics on hostile input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MSG_LEN {
            return Err(DecodeError("too long".into()));
        }
        postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
    }

    /// The bytes a relay hop's tag covers, apart from `ct`.
    pub fn relay_header(relay: &RelayId, path: &[NodeId], pad: &[Span], ct_len: usize) -> Vec<u8> {
        postcard::to_allocvec(&(relay, path, pad, ct_len as u64)).expect("header encodes")
    }

    /// The bytes a share hop's tag covers, apart from `ct` (a distinct layout from
    /// [`relay_header`](Self::relay_header), so a share hop cannot pass for a relay hop).
    pub fn share_header(
        relay: &RelayId,
        share: &ShareInfo,
        path: &[NodeId],
        paths: &[Vec<NodeId>],
        pad: &[Span],
        ct_len: usize,
    ) -> Vec<u8> {
        postcard::to_allocvec(&("share", relay, share, path, paths, pad, ct_len as u64))
            .expect("header encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let m = PeerMsg::AssignAck { seq: 7, ok: true };
        assert_eq!(PeerMsg::decode(&m.encode()).unwrap(), m);
        assert!(PeerMsg::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(PeerMsg::decode(&[]).is_err());
        // Heartbeats go to every node twice a second: one byte each.
        assert_eq!(PeerMsg::Heartbeat.encode().len(), 1);
        assert_eq!(
            PeerMsg::decode(&PeerMsg::Heartbeat.encode()).unwrap(),
            PeerMsg::Heartbeat
        );
    }

    #[test]
    fn spans_must_be_nonempty_and_disjoint() {
        let s = |id, start, len| Span { id, start, len };
        assert!(Span::disjoint(&[s(1, 0, 32), s(1, 32, 8), s(2, 0, 32)]));
        assert!(!Span::disjoint(&[s(1, 0, 32), s(1, 31, 8)]));
        assert!(!Span::disjoint(&[s(1, 40, 8), s(2, 0, 1), s(1, 0, 41)]));
        // An empty span at the start of another one: both pass the pairwise overlap test.
        assert!(!Span::disjoint(&[s(1, 0, 32), s(1, 0, 0)]));
        assert!(!Span::disjoint(&vec![s(1, 0, 1); MAX_SPANS + 1]));
        let many: Vec<Span> = (0..MAX_SPANS as u32).map(|i| s(1, i, 1)).collect();
        assert!(Span::disjoint(&many));
    }
}
