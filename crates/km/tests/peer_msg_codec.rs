//! Property tests of the node-to-node codec (`PeerMsg::encode` / `decode`): every message
//! round-trips; random bytes, and valid encodings with bytes flipped, cut off or inserted,
//! decode to an error or to a message that itself round-trips, and never panic. Every message
//! so decoded then goes into a running key manager, which must not panic on it either (the
//! peer port hands it whatever an authenticated but hostile node sends).

use std::sync::Arc;

use kagi_control::Topology;
use kagi_keymat::Tag;
use kagi_km::msgs::{AbortReason, AssignedKey, KeySource, RelayId, ShareInfo, Span, GRANTED};
use kagi_km::{
    Input, Instant, KeyManager, KmConfig, Limits, LinkAdvert, NodeId, PeerMsg, Policy, Snapshot,
};
use proptest::prelude::*;
use uuid::Uuid;

fn node() -> impl Strategy<Value = NodeId> {
    // Past 24 bytes an ID is kept on the heap rather than inline.
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        "[a-z]{0,6}",
        "[a-z]{20,40}",
    ]
    .prop_map(NodeId::from)
}

fn span() -> impl Strategy<Value = Span> {
    // Some in bytes the receiver granted (flagged).
    (0u64..8, any::<bool>(), 0u32..8192, 0u32..4096).prop_map(|(id, g, start, len)| Span {
        id: if g { id | GRANTED } else { id },
        start,
        len,
    })
}

fn relay_id() -> impl Strategy<Value = RelayId> {
    (node(), any::<u64>(), any::<u64>()).prop_map(|(origin, epoch, seq)| RelayId {
        origin,
        epoch,
        seq,
    })
}

fn tag() -> impl Strategy<Value = Tag> {
    any::<[u8; 16]>().prop_map(Tag)
}

fn source() -> impl Strategy<Value = KeySource> {
    prop_oneof![
        prop::collection::vec(span(), 0..4).prop_map(KeySource::Pool),
        (
            prop::collection::vec(span(), 0..4),
            prop::collection::vec(any::<u8>(), 0..64),
            tag()
        )
            .prop_map(|(pad, ct, tag)| KeySource::Otp { pad, ct, tag }),
    ]
}

fn reason() -> impl Strategy<Value = AbortReason> {
    prop_oneof![
        Just(AbortReason::LinkKeyMissing),
        Just(AbortReason::LinkKeyExhausted),
        Just(AbortReason::BadTag),
        Just(AbortReason::SharesInconsistent),
        Just(AbortReason::SharesManipulated),
    ]
}

fn path() -> impl Strategy<Value = Vec<NodeId>> {
    prop::collection::vec(node(), 0..5)
}

fn msg() -> impl Strategy<Value = PeerMsg> {
    prop_oneof![
        (
            relay_id(),
            path(),
            prop::collection::vec(span(), 0..4),
            prop::collection::vec(any::<u8>(), 0..96),
            tag()
        )
            .prop_map(|(relay, path, pad, ct, tag)| PeerMsg::RelayHop {
                relay,
                path,
                pad,
                ct,
                tag
            }),
        (
            relay_id(),
            (any::<u8>(), any::<u8>(), any::<u8>()),
            path(),
            prop::collection::vec(path(), 0..3),
            prop::collection::vec(span(), 0..4),
            prop::collection::vec(any::<u8>(), 0..96),
            tag()
        )
            .prop_map(
                |(relay, (index, threshold, count), path, paths, pad, ct, tag)| {
                    PeerMsg::ShareHop {
                        relay,
                        share: ShareInfo {
                            index,
                            threshold,
                            count,
                        },
                        path,
                        paths,
                        pad,
                        ct,
                        tag,
                    }
                }
            ),
        (relay_id(), proptest::option::of(any::<u8>()), reason()).prop_map(
            |(relay, share, reason)| PeerMsg::RelayAborted {
                relay,
                share,
                reason
            }
        ),
        relay_id().prop_map(|relay| PeerMsg::RelayAck { relay }),
        (
            any::<u64>(),
            any::<u64>(),
            node(),
            prop::collection::vec(node(), 0..3),
            prop::collection::vec(
                (any::<u128>(), source()).prop_map(|(id, source)| AssignedKey {
                    id: Uuid::from_u128(id),
                    source
                }),
                0..3
            )
        )
            .prop_map(|(epoch, seq, master, slaves, keys)| PeerMsg::Assign {
                epoch,
                seq,
                master: master.to_string(),
                slaves: slaves.iter().map(NodeId::to_string).collect(),
                keys
            }),
        (any::<u64>(), any::<bool>()).prop_map(|(seq, ok)| PeerMsg::AssignAck { seq, ok }),
        prop::collection::vec(any::<u64>(), 0..8)
            .prop_map(|blocks| PeerMsg::LinkMissing { blocks }),
        any::<u64>().prop_map(|seq| PeerMsg::Revoke { seq }),
        (
            (any::<u64>(), any::<u64>(), proptest::option::of(0u64..16)),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::option::of((0u64..16, any::<bool>()))
        )
            .prop_map(
                |((store, epoch, link_low), (run, next_relay, next_assign), tx_low)| {
                    PeerMsg::Hello {
                        store,
                        epoch,
                        link_low,
                        run,
                        next_relay,
                        next_assign,
                        tx_low,
                    }
                }
            ),
        (
            (any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<u64>(), any::<u64>()),
            (
                proptest::option::of(0u64..16),
                any::<u64>(),
                proptest::option::of(0u64..16)
            ),
            (any::<u64>(), any::<u64>())
        )
            .prop_map(
                |(
                    (epoch, relay_hw, assign_hw),
                    (relay_floor, assign_floor),
                    (link_rx_hw, fork_run, link_reserved),
                    (marks_run, marks_epoch),
                )| {
                    PeerMsg::Seen {
                        epoch,
                        relay_hw,
                        assign_hw,
                        relay_floor,
                        assign_floor,
                        link_rx_hw,
                        fork_run,
                        link_reserved,
                        marks_run,
                        marks_epoch,
                    }
                }
            ),
        prop::collection::vec(any::<u64>(), 0..8)
            .prop_map(|chunks| PeerMsg::PoolMissing { chunks }),
        Just(PeerMsg::Heartbeat),
        any::<u64>().prop_map(|seq| PeerMsg::RevokeAck { seq }),
        (
            node(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(link_advert(), 0..4),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(origin, run, seq, links, sig)| PeerMsg::LinkState {
                origin,
                run,
                seq,
                links: links.into(),
                sig: sig.into(),
            }),
        any::<u64>().prop_map(|bytes| PeerMsg::LinkKeyWanted { bytes }),
        (any::<u64>(), prop::collection::vec(span(), 0..4))
            .prop_map(|(epoch, spans)| PeerMsg::LinkKeyGranted { epoch, spans }),
        any::<u64>().prop_map(|upto| PeerMsg::LinkReserve { upto }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(store, upto)| PeerMsg::LinkReserved { store, upto }),
    ]
}

fn link_advert() -> impl Strategy<Value = LinkAdvert> {
    (
        node(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(peer, up, rate_bps, tx_bytes, rx_bytes)| LinkAdvert {
            peer,
            up,
            rate_bps,
            tx_bytes,
            rx_bytes,
        })
}

/// A change to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, u8),
}

fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match *m {
            Mutation::Flip(i, x) if !b.is_empty() => {
                let i = i % b.len();
                b[i] ^= x | 1;
            }
            Mutation::Cut(i) => b.truncate(i % (b.len() + 1)),
            Mutation::Insert(i, x) => {
                let i = i % (b.len() + 1);
                b.insert(i, x);
            }
            _ => {}
        }
    }
    b
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
    ]
}

/// Node b of a line a–b–c with link key on both links.
fn core() -> KeyManager {
    let t = Arc::new(Topology::line("p", &["a", "b", "c"], 10.0, |n| {
        vec![format!("sae-{n}")]
    }));
    let cfg = KmConfig {
        node_id: "b".into(),
        topology: t,
        limits: Limits::default(),
        policy: Policy::default(),
        advert_auth: None,
        advert_run_base: 0,
    };
    let mut km = KeyManager::restore(cfg, Snapshot::default(), [7; 32], Instant(0));
    for peer in ["a", "c"] {
        km.handle(
            Instant(1),
            Input::LinkKeys {
                peer: peer.into(),
                block: 0,
                key: kagi_keymat::Key::from_vec(vec![0x5a; 4096]),
            },
        );
    }
    km
}

/// Decoding never panics; whatever decodes round-trips and is handled by the core without a
/// panic.
fn check_decoded(bytes: &[u8], km: &mut KeyManager) -> Result<(), TestCaseError> {
    if let Ok(m) = PeerMsg::decode(bytes) {
        prop_assert_eq!(PeerMsg::decode(&m.encode()).expect("re-decodes"), m.clone());
        km.handle(
            Instant(2),
            Input::Peer {
                from: "a".into(),
                msg: m,
            },
        );
        while km.poll_action().is_some() {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(m in msg()) {
        prop_assert_eq!(PeerMsg::decode(&m.encode()).expect("decodes"), m);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut km = core();
        check_decoded(&bytes, &mut km)?;
    }

    #[test]
    fn mutated_messages_never_panic(
        m in msg(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut km = core();
        check_decoded(&mutate(m.encode(), &muts), &mut km)?;
        check_decoded(&m.encode(), &mut km)?;
    }
}
