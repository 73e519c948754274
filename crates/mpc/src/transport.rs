//! Channels between the three parties. The engine only ever talks to its two neighbours on the
//! ring 0 → 1 → 2 → 0: `Next` is party `i+1`, `Prev` is party `i-1` (mod 3). A [`Transport`]
//! carries whole messages of 64-bit words in order per direction; sends never block on the
//! receiver (every party sends its round's messages before it receives, so a blocking send
//! could deadlock the ring).
//!
//! * [`local`]: in-process channels for tests and benchmarks (messages move without copying);
//! * [`crate::its::ItsTransport`]: one-time pad + Wegman–Carter tag with QKD key, around any
//!   transport;
//! * network transports (mutual TLS) live with their runtime, outside this crate's core.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use crate::error::{MpcError, Result};

/// A neighbour on the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Party `i - 1 (mod 3)`.
    Prev,
    /// Party `i + 1 (mod 3)`.
    Next,
}

impl Peer {
    /// Index of this neighbour of party `me`.
    pub fn index(self, me: usize) -> usize {
        match self {
            Peer::Prev => (me + 2) % 3,
            Peer::Next => (me + 1) % 3,
        }
    }

    /// `"prev"` or `"next"`.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Prev => "prev",
            Peer::Next => "next",
        }
    }
}

/// What a transport has carried, per neighbour (index 0 = `Prev`, 1 = `Next`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStats {
    /// Payload bytes sent.
    pub bytes_sent: [u64; 2],
    /// Messages sent.
    pub messages_sent: [u64; 2],
    /// QKD key bytes this party drew (as sender) to protect what it sent.
    pub key_bytes: [u64; 2],
}

impl LinkStats {
    pub(crate) fn slot(p: Peer) -> usize {
        match p {
            Peer::Prev => 0,
            Peer::Next => 1,
        }
    }
}

/// Ordered, reliable message channels to the two neighbours.
pub trait Transport: Send {
    /// Queues `msg` for `to`; must not wait for the receiver.
    fn send(&mut self, to: Peer, msg: Vec<u64>) -> Result<()>;
    /// The next message from `from`, in order.
    fn recv(&mut self, from: Peer) -> Result<Vec<u64>>;
    /// What has been carried so far.
    fn stats(&self) -> LinkStats;
}

/// In-process transports.
pub mod local {
    use super::*;

    /// One party's end of an in-process ring.
    pub struct LocalTransport {
        to: [Sender<Vec<u64>>; 2],
        from: [Receiver<Vec<u64>>; 2],
        timeout: Duration,
        stats: LinkStats,
    }

    /// Three connected transports (index = party). A receive waits at most `timeout`; a peer
    /// whose transport was dropped (a crashed party) makes the others' receives fail at once.
    pub fn ring(timeout: Duration) -> [LocalTransport; 3] {
        // chans[i][j]: messages from i to j.
        let mut tx: Vec<Vec<Option<Sender<Vec<u64>>>>> = vec![vec![None, None, None]; 3];
        let mut rx: Vec<Vec<Option<Receiver<Vec<u64>>>>> =
            (0..3).map(|_| (0..3).map(|_| None).collect()).collect();
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    let (s, r) = channel();
                    tx[i][j] = Some(s);
                    rx[j][i] = Some(r);
                }
            }
        }
        let mut out = Vec::new();
        for i in 0..3 {
            let p = (i + 2) % 3;
            let n = (i + 1) % 3;
            // The indices above are distinct from i, so each Option was filled.
            let take_tx = |v: &mut Vec<Option<Sender<Vec<u64>>>>, k: usize| {
                v[k].take().expect("filled for k != i")
            };
            let t = [take_tx(&mut tx[i], p), take_tx(&mut tx[i], n)];
            let f = [
                rx[i][p].take().expect("filled for p != i"),
                rx[i][n].take().expect("filled for n != i"),
            ];
            out.push(LocalTransport {
                to: t,
                from: f,
                timeout,
                stats: LinkStats::default(),
            });
        }
        match <[LocalTransport; 3]>::try_from(out) {
            Ok(a) => a,
            Err(_) => unreachable!("three transports were built"),
        }
    }

    impl Transport for LocalTransport {
        fn send(&mut self, to: Peer, msg: Vec<u64>) -> Result<()> {
            let s = LinkStats::slot(to);
            self.stats.bytes_sent[s] += msg.len() as u64 * 8;
            self.stats.messages_sent[s] += 1;
            self.to[s].send(msg).map_err(|_| MpcError::Channel {
                peer: to.name().into(),
                reason: "peer is gone".into(),
            })
        }

        fn recv(&mut self, from: Peer) -> Result<Vec<u64>> {
            match self.from[LinkStats::slot(from)].recv_timeout(self.timeout) {
                Ok(m) => Ok(m),
                Err(RecvTimeoutError::Timeout) => Err(MpcError::Channel {
                    peer: from.name().into(),
                    reason: format!("no message within {:?}", self.timeout),
                }),
                Err(RecvTimeoutError::Disconnected) => Err(MpcError::Channel {
                    peer: from.name().into(),
                    reason: "peer is gone".into(),
                }),
            }
        }

        fn stats(&self) -> LinkStats {
            self.stats
        }
    }
}
