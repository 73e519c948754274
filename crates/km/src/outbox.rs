//! The core's output queue: actions for the driver, and actions held until a write is durable.
//!
//! "Persist, then speak": a `Send` or `Answer` that depends on a store batch waits in `held` until
//! the driver reports that batch durable, in the order the batches were emitted.

use std::collections::{BTreeMap, VecDeque};

use crate::app::{AppReply, Refusal};
use crate::msgs::{NodeId, PeerMsg};
use crate::record::Record;

/// Identifies an application request (chosen by the driver).
pub type ReqId = u64;
/// Identifies a store batch (chosen by the core, increasing).
pub type WriteId = u64;

/// Output of the key manager, drained with [`KeyManager::poll_action`](crate::KeyManager::poll_action).
#[must_use]
#[derive(Debug, Clone)]
pub enum Action {
    /// Send a message to a peer.
    Send {
        /// Destination node.
        to: NodeId,
        /// Message.
        msg: PeerMsg,
    },
    /// Persist these records atomically, then report [`Input::Stored`](crate::Input::Stored).
    Store {
        /// Batch id.
        write: WriteId,
        /// Records, applied in order.
        batch: Vec<Record>,
    },
    /// Answer an application request.
    Answer {
        /// Which request.
        req: ReqId,
        /// The answer.
        reply: Result<AppReply, Refusal>,
    },
}

/// What to do once a store batch is durable.
#[derive(Debug, Clone)]
pub(crate) enum After {
    /// Emit this action.
    Act(Action),
    /// The master-side assignment with this counter is durable.
    AssignDurable(u64),
    /// The slave-side assignment `(origin, seq)` is durable.
    SlaveAssignDurable(NodeId, u64),
    /// Greet every other node (built when released, so it tells what the node holds then).
    Hellos,
}

/// A store acknowledgement that does not match the oldest unacknowledged batch.
#[derive(Debug)]
pub(crate) struct OutOfOrder;

/// Pending output and held follow-ups.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    actions: VecDeque<Action>,
    held: BTreeMap<WriteId, Vec<After>>,
    unacked: VecDeque<WriteId>,
    next_write: WriteId,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            actions: VecDeque::new(),
            held: BTreeMap::new(),
            unacked: VecDeque::new(),
            next_write: 1,
        }
    }
}

impl Outbox {
    /// Emits a store batch; `after` runs once it is durable.
    pub(crate) fn store(&mut self, batch: Vec<Record>, after: Vec<After>) -> WriteId {
        let write = self.next_write;
        self.next_write += 1;
        self.actions.push_back(Action::Store { write, batch });
        self.unacked.push_back(write);
        self.held.insert(write, after);
        write
    }

    /// Emits an action now.
    pub(crate) fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    /// Sends a peer message now.
    pub(crate) fn send(&mut self, to: NodeId, msg: PeerMsg) {
        self.push(Action::Send { to, msg });
    }

    /// Answers an application request now.
    pub(crate) fn answer(&mut self, req: ReqId, reply: Result<AppReply, Refusal>) {
        self.push(Action::Answer { req, reply });
    }

    /// Adds work to run when write `w` is durable (at once if it already is).
    pub(crate) fn hold_after(&mut self, w: WriteId, a: After) {
        match self.held.get_mut(&w) {
            Some(v) => v.push(a),
            None => {
                if let After::Act(act) = a {
                    self.actions.push_back(act);
                }
            }
        }
    }

    /// The id the next store batch will get.
    pub(crate) fn peek_write(&self) -> WriteId {
        self.next_write
    }

    /// The next action for the driver.
    pub(crate) fn pop(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Write `write` finished: returns what was held for it, or `OutOfOrder` on driver misuse.
    pub(crate) fn acknowledge(&mut self, write: WriteId) -> Result<Vec<After>, OutOfOrder> {
        if self.unacked.front() != Some(&write) {
            return Err(OutOfOrder);
        }
        self.unacked.pop_front();
        Ok(self.held.remove(&write).unwrap_or_default())
    }

    /// Drops everything held and every queued action except answers (the node is fenced).
    pub(crate) fn fence(&mut self) {
        self.held.clear();
        self.actions.retain(|a| matches!(a, Action::Answer { .. }));
    }
}
