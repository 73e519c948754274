//! Peer messages from a compromised neighbour into the key manager core.

use std::sync::{Arc, OnceLock};

use kagi_control::Topology;
use kagi_keymat::Key;
use kagi_km::NodeId;
use kagi_km::{Action, Input, Instant, KeyManager, KmConfig, Limits, PeerMsg, Policy, Snapshot};

/// Most actions drained after one input; a core that emits more is looping.
const MAX_ACTIONS: usize = 100_000;

/// A middle node `b` of the line a–b–c–d, holding link key to both neighbours, receives a
/// stream of frames: each is one byte choosing the sender (a, c, a node that is no neighbour, or
/// itself), two bytes of length and the frame. Frames that decode as peer messages go to the
/// core, every store write is acknowledged, and time advances between frames so timers fire too.
/// The core must neither panic nor emit an unbounded stream of actions.
///
/// Every input starts from a copy of one prepared core (built once per process), so an input's
/// cost is its frames, not building a key manager.
pub fn peer_messages(data: &[u8]) {
    static PREPARED: OnceLock<KeyManager> = OnceLock::new();
    let mut km = PREPARED.get_or_init(prepared).clone();
    let mut now = Instant(0);
    let mut rest = data;
    while let [who, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        let from = ["a", "c", "d", "b"][*who as usize % 4].to_string();
        if let Ok(msg) = PeerMsg::decode(frame) {
            km.handle(
                now,
                Input::Peer {
                    from: NodeId::from(from),
                    msg,
                },
            );
            drain(&mut km, now);
        }
        now = Instant(now.0 + u64::from(*who) * 1_000_000);
        km.handle_timeout(now);
        drain(&mut km, now);
    }
}

/// Node `b` at time 0 with a block of link key from each neighbour, every write acknowledged.
fn prepared() -> KeyManager {
    let topo = Arc::new(Topology::line("fuzz", &["a", "b", "c", "d"], 10.0, |n| {
        vec![format!("sae-{n}")]
    }));
    let cfg = KmConfig {
        node_id: "b".into(),
        topology: topo,
        limits: Limits::default(),
        policy: Policy {
            pool_target_bytes: 1024,
            relay_chunk_bytes: 256,
            ..Policy::default()
        },
        advert_auth: None,
        advert_run_base: 0,
    };
    let now = Instant(0);
    let mut km = KeyManager::restore(cfg, Snapshot::default(), [9; 32], now);
    for (i, peer) in ["a", "c"].iter().enumerate() {
        km.handle(
            now,
            Input::LinkKeys {
                peer: NodeId::from(*peer),
                block: 0,
                key: Key::from_slice(&[i as u8 + 1; 4096]),
            },
        );
        drain(&mut km, now);
    }
    km
}

fn drain(km: &mut KeyManager, now: Instant) {
    let mut n = 0;
    while let Some(a) = km.poll_action() {
        n += 1;
        assert!(n < MAX_ACTIONS, "the core keeps emitting actions");
        if let Action::Store { write, .. } = a {
            km.handle(now, Input::Stored { write, ok: true });
        }
    }
}
