//! What two nodes tell each other about a key stream whose applications sit at different nodes.
//! The node of the source application owns the stream: it draws each chunk from the key manager
//! (an ETSI 014 key for the pair) and tells the destination's node which key ID chunk `index`
//! is. No key bytes ever travel in these messages; the key itself reaches the destination's node
//! through the key manager's own relay and assignment.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::peer::MAX_STREAM_FRAME;

/// Which end of a stream an application is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The source application (its node owns the stream).
    Source,
    /// The destination application.
    Destination,
}

impl Role {
    /// 0 for the source, 1 for the destination (index into per-side arrays).
    pub fn idx(self) -> usize {
        match self {
            Role::Source => 0,
            Role::Destination => 1,
        }
    }

    /// The other end.
    pub fn other(self) -> Role {
        match self {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        }
    }
}

/// One node-to-node key-stream message (peer frame kind "stream").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamMsg {
    /// `role`'s application opened the stream at the sender. `reply`: answer with your own
    /// `Joined` for the sides open at your node (heals a lost message).
    Joined {
        /// The stream.
        ksid: Uuid,
        /// Source SAE.
        source: String,
        /// Destination SAE.
        destination: String,
        /// Which side opened.
        role: Role,
        /// Its key_chunk_size (bytes).
        chunk: u32,
        /// Its TTL (seconds).
        ttl: u32,
        /// Ask for the receiver's own `Joined`.
        reply: bool,
    },
    /// `role`'s application closed the stream at the sender.
    Left {
        /// The stream.
        ksid: Uuid,
        /// Which side closed.
        role: Role,
    },
    /// The destination's node asks the owner which key chunk `index` is. `next`: the first index
    /// the destination application has not yet read.
    Want {
        /// The stream.
        ksid: Uuid,
        /// The chunk.
        index: u32,
        /// The destination's next unread index.
        next: u32,
    },
    /// The destination's node: its application has read every chunk below `next` (the owner
    /// may forget them and let the source run further ahead).
    Read {
        /// The stream.
        ksid: Uuid,
        /// The destination's next unread index.
        next: u32,
    },
    /// The owner: chunk `index` is the key with ID `key_id` (master = source SAE, slave =
    /// destination SAE).
    Assigned {
        /// The stream.
        ksid: Uuid,
        /// The chunk.
        index: u32,
        /// Its key ID in the key manager.
        key_id: Uuid,
    },
    /// The owner cannot assign chunk `index` now; `status` is the 004 status to report if the
    /// caller's timeout runs out.
    Refused {
        /// The stream.
        ksid: Uuid,
        /// The chunk.
        index: u32,
        /// The 004 status code.
        status: u32,
    },
}

impl StreamMsg {
    /// Encodes the message (JSON; always below [`MAX_STREAM_FRAME`] for SAE IDs of at most 128
    /// bytes).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a frame body.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() > MAX_STREAM_FRAME {
            return None;
        }
        serde_json::from_slice(b).ok()
    }

    /// The stream the message is about.
    pub fn ksid(&self) -> Uuid {
        match self {
            StreamMsg::Joined { ksid, .. }
            | StreamMsg::Left { ksid, .. }
            | StreamMsg::Want { ksid, .. }
            | StreamMsg::Read { ksid, .. }
            | StreamMsg::Assigned { ksid, .. }
            | StreamMsg::Refused { ksid, .. } => *ksid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_message_fits_a_frame() {
        let m = StreamMsg::Joined {
            ksid: Uuid::new_v4(),
            source: "s".repeat(128),
            destination: "d".repeat(128),
            role: Role::Destination,
            chunk: u32::MAX,
            ttl: u32::MAX,
            reply: true,
        };
        let b = m.encode();
        assert!(b.len() <= MAX_STREAM_FRAME, "{}", b.len());
        assert_eq!(StreamMsg::decode(&b), Some(m));
        assert_eq!(StreamMsg::decode(b"{\"Left\":{}}"), None);
        assert_eq!(StreamMsg::decode(&vec![b' '; MAX_STREAM_FRAME + 1]), None);
    }
}
