//! Security properties of relay and supply at the core level (X.1712 INT.1, AUTH.2, AUTH.4,
//! SReq.2): tampered hops are refused, replays have no effect, intermediate nodes keep no relayed
//! key, keys go only to their named slaves.

use std::sync::Arc;

use kagi_control::Topology;
use kagi_keymat::its_mac::{Mac, MacKey, MAC_KEY_LEN};
use kagi_keymat::Key;
use kagi_km::msgs::Span;
use kagi_km::record::Record;
use kagi_km::{Action, AppCall, AppReply, Input, Instant, PeerMsg, Policy, Refusal};

mod common;
use common::{LinkKey, Net};

fn topo() -> Arc<Topology> {
    Arc::new(Topology::line("t", &["a", "b", "c"], 10.0, |n| {
        vec![format!("sae-{n}"), format!("sae-{n}2")]
    }))
}

/// The test's link key: one block of 4 KiB on each link.
const LINK_KEY: LinkKey = LinkKey {
    len: 4096,
    salt: 77,
};

/// The line a-b-c with one block of link key on each link, messages delivered at once unless
/// the test turns `auto_deliver` off.
fn line() -> Net {
    let policy = Policy {
        pool_target_bytes: 256,
        relay_chunk_bytes: 128,
        max_relays_in_flight: 1,
        ..Policy::default()
    };
    let mut net = Net::new(
        topo(),
        policy,
        |n| [n.as_bytes()[0]; 32],
        Instant(1),
        LINK_KEY,
    );
    net.link_blocks();
    net
}

/// A relay hop on its way to c.
fn to_c(m: &PeerMsg) -> bool {
    matches!(m, PeerMsg::RelayHop { path, .. } if path.last().map(|n| n.as_str()) == Some("c"))
}

#[test]
fn replayed_relay_hop_has_no_effect() {
    let mut net = line();
    net.tick(50);
    let hop = net
        .wire
        .iter()
        .find(|(f, t, m)| f == "a" && t == "b" && to_c(m))
        .cloned()
        .expect("a relayed");
    let before = net.kms["b"].stats();
    net.input(
        "b",
        Input::Peer {
            from: hop.0.clone().into(),
            msg: hop.2.clone(),
        },
    );
    let after = net.kms["b"].stats();
    assert_eq!(after.replays_rejected, before.replays_rejected + 1);
    assert_eq!(
        after.hops_forwarded, before.hops_forwarded,
        "a replay must not be forwarded again"
    );
}

#[test]
fn tampered_relay_hop_is_refused() {
    let mut net = line();
    net.auto_deliver = false;
    net.tick(50);
    let (from, _, msg) = net
        .wire
        .iter()
        .find(|(f, t, m)| f == "a" && t == "b" && to_c(m))
        .cloned()
        .unwrap();
    let PeerMsg::RelayHop {
        relay,
        path,
        pad,
        mut ct,
        tag,
    } = msg
    else {
        unreachable!()
    };
    ct[0] ^= 1;
    net.input(
        "b",
        Input::Peer {
            from: from.into(),
            msg: PeerMsg::RelayHop {
                relay,
                path,
                pad,
                ct,
                tag,
            },
        },
    );
    let s = net.kms["b"].stats();
    assert_eq!(s.bad_tags, 1);
    assert_eq!(s.hops_forwarded, 0);
    assert!(!net
        .wire
        .iter()
        .any(|(f, _, m)| f == "b"
            && matches!(m, PeerMsg::RelayHop { relay, .. } if relay.origin == "a")));
}

/// The b–c link's block 0 as `Net::new` feeds it (link 1).
fn bc_block0() -> Vec<u8> {
    LINK_KEY.block(1, 0)
}

#[test]
fn hop_claiming_another_sender_is_dropped() {
    let mut net = line();
    net.auto_deliver = false;
    net.tick(50);
    let (_, _, msg) = net
        .wire
        .iter()
        .find(|(f, t, m)| f == "a" && t == "b" && to_c(m))
        .cloned()
        .unwrap();
    let PeerMsg::RelayHop {
        relay, path, ct, ..
    } = msg
    else {
        unreachable!()
    };
    // c (authenticated by TLS, holding real link key with b) re-pads a's hop with its own half
    // of the b–c link and a valid tag: only the path check (c is not the node before b on
    // a → b → c) can refuse it. The end of c's half is unspent.
    let need = MAC_KEY_LEN + ct.len();
    let block = bc_block0();
    let c_half = &block[2048..];
    let start = c_half.len() - need;
    let material = &c_half[start..];
    let pad = vec![Span {
        id: 0,
        start: start as u32,
        len: need as u32,
    }];
    let plain: Vec<u8> = ct
        .iter()
        .zip(&material[MAC_KEY_LEN..])
        .map(|(c, p)| c ^ p)
        .collect();
    let header = PeerMsg::relay_header(&relay, &path, &pad, plain.len());
    let mut mac = Mac::new(MacKey::from_bytes(&material[..MAC_KEY_LEN]).unwrap());
    mac.update(&header);
    mac.update(&plain);
    let tag = mac.finalize();
    let before = net.kms["b"].stats();
    net.input(
        "b",
        Input::Peer {
            from: "c".into(),
            msg: PeerMsg::RelayHop {
                relay,
                path,
                pad,
                ct: plain,
                tag,
            },
        },
    );
    let after = net.kms["b"].stats();
    assert_eq!(after.bad_tags, before.bad_tags, "the tag is valid");
    assert_eq!(
        after.hops_forwarded, before.hops_forwarded,
        "a hop from a node that is not the previous one on its path is dropped"
    );
}

#[test]
fn relay_failed_from_a_node_off_the_path_is_ignored() {
    let mut net = line();
    net.auto_deliver = false;
    net.tick(50);
    // a's relay to b travels a → b; c is not on it.
    let relay = net
        .wire
        .iter()
        .find_map(|(f, t, m)| match m {
            PeerMsg::RelayHop { relay, path, .. } if f == "a" && t == "b" && path.len() == 2 => {
                Some(relay.clone())
            }
            _ => None,
        })
        .expect("a relays to b");
    let abandoned = |net: &Net| net.kms["a"].stats().relays_abandoned;
    let before = abandoned(&net);
    net.input(
        "a",
        Input::Peer {
            from: "c".into(),
            msg: PeerMsg::RelayAborted {
                relay: relay.clone(),
                share: None,
                reason: kagi_km::AbortReason::LinkKeyMissing,
            },
        },
    );
    assert_eq!(
        abandoned(&net),
        before,
        "c may not cancel a relay it is not on"
    );
    net.input(
        "a",
        Input::Peer {
            from: "b".into(),
            msg: PeerMsg::RelayAborted {
                relay,
                share: None,
                reason: kagi_km::AbortReason::LinkKeyMissing,
            },
        },
    );
    assert_eq!(abandoned(&net), before + 1, "b, on the path, may");
}

#[test]
fn hops_waiting_for_link_key_are_bounded_per_neighbour() {
    let mut net = line();
    net.auto_deliver = false;
    net.tick(50);
    let (_, _, msg) = net
        .wire
        .iter()
        .find(|(f, t, m)| f == "a" && t == "b" && to_c(m))
        .cloned()
        .unwrap();
    let PeerMsg::RelayHop {
        relay,
        path,
        ct,
        tag,
        ..
    } = msg
    else {
        unreachable!()
    };
    // Hops naming link blocks that have not arrived yet wait; a flood of them is cut off.
    let before = net.kms["b"].stats().replays_rejected;
    let n = 1000u64;
    for i in 0..n {
        let pad = vec![Span {
            id: 10 + i,
            start: 0,
            len: (MAC_KEY_LEN + ct.len()) as u32,
        }];
        net.input(
            "b",
            Input::Peer {
                from: "a".into(),
                msg: PeerMsg::RelayHop {
                    relay: relay.clone(),
                    path: path.clone(),
                    pad,
                    ct: ct.clone(),
                    tag,
                },
            },
        );
    }
    let dropped = net.kms["b"].stats().replays_rejected - before;
    assert!(
        dropped >= n - 256,
        "only {dropped} of {n} hops were refused"
    );
}

#[test]
fn intermediate_node_keeps_no_relayed_key_and_ciphertext_differs_per_hop() {
    let mut net = line();
    for _ in 0..3 {
        net.tick(50);
    }
    assert!(net.kms["b"].stats().hops_forwarded > 0);
    // b stores link-key bookkeeping only: never a chunk or pending relay of an a→c relay.
    let a_to_c: Vec<u64> = net
        .wire
        .iter()
        .filter_map(|(_, _, m)| match m {
            PeerMsg::RelayHop { relay, .. } if relay.origin == "a" && to_c(m) => Some(relay.seq),
            _ => None,
        })
        .collect();
    assert!(!a_to_c.is_empty());
    for r in &net.written["b"] {
        if let Record::Chunk {
            pool: kagi_km::record::Pool::In(o),
            chunk,
            ..
        } = r
        {
            assert!(
                !(o == "a" && a_to_c.contains(chunk)),
                "b stored the key of a→c relay {chunk}"
            );
        }
    }
    let cts: Vec<_> = net
        .wire
        .iter()
        .filter_map(|(f, _, m)| match m {
            PeerMsg::RelayHop {
                relay, ct, path, ..
            } if relay.origin == "a" && path.last().map(|n| n.as_str()) == Some("c") => {
                Some((f.clone(), relay.seq, ct.clone()))
            }
            _ => None,
        })
        .collect();
    let first = cts.iter().find(|(f, _, _)| f == "a").unwrap();
    let second = cts
        .iter()
        .find(|(f, s, _)| f == "b" && *s == first.1)
        .unwrap();
    assert_ne!(first.2, second.2, "each hop uses its own pad");
}

#[test]
fn keys_go_only_to_named_slaves_of_their_master() {
    let mut net = line();
    for _ in 0..5 {
        net.tick(50);
    }
    net.input(
        "a",
        Input::App {
            req: 1,
            call: AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-c".into(),
                number: Some(1),
                size_bits: Some(256),
                additional_slaves: vec![],
                route: None,
            },
        },
    );
    let Ok(AppReply::Keys(keys)) = net.answers.remove(&1).expect("answered") else {
        panic!("enc_keys failed")
    };
    let id = keys[0].id;
    // Another SAE at the slave's node: 401.
    net.input(
        "c",
        Input::App {
            req: 2,
            call: AppCall::DecKeys {
                slave: "sae-c2".into(),
                master: "sae-a".into(),
                key_ids: vec![id],
            },
        },
    );
    assert!(matches!(
        net.answers.remove(&2),
        Some(Err(Refusal::Unauthorized(_)))
    ));
    // The right slave naming the wrong master: 401.
    net.input(
        "c",
        Input::App {
            req: 3,
            call: AppCall::DecKeys {
                slave: "sae-c".into(),
                master: "sae-a2".into(),
                key_ids: vec![id],
            },
        },
    );
    assert!(matches!(
        net.answers.remove(&3),
        Some(Err(Refusal::Unauthorized(_)))
    ));
    // A master asking at a node it is not attached to: 401.
    net.input(
        "b",
        Input::App {
            req: 4,
            call: AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-c".into(),
                number: None,
                size_bits: None,
                additional_slaves: vec![],
                route: None,
            },
        },
    );
    assert!(matches!(
        net.answers.remove(&4),
        Some(Err(Refusal::Unauthorized(_)))
    ));
    // The named slave gets the same key.
    let fetch = |net: &mut Net, req: u64, slave: &str| {
        net.input(
            "c",
            Input::App {
                req,
                call: AppCall::DecKeys {
                    slave: slave.into(),
                    master: "sae-a".into(),
                    key_ids: vec![id],
                },
            },
        );
        net.answers.remove(&req).expect("answered")
    };
    let Ok(AppReply::Keys(got)) = fetch(&mut net, 5, "sae-c") else {
        panic!()
    };
    assert!(got[0].key == keys[0].key);
    // Within its grace (its reply may have been lost) the same slave gets the same bytes again;
    // another SAE still gets 401.
    let Ok(AppReply::Keys(again)) = fetch(&mut net, 6, "sae-c") else {
        panic!("the slave's fetch within its grace was refused")
    };
    assert!(again[0].key == keys[0].key);
    assert!(matches!(
        fetch(&mut net, 7, "sae-c2"),
        Err(Refusal::Unauthorized(_))
    ));
    // Once the grace has ended the key is gone.
    net.now = net.now + Policy::default().slave_grace;
    net.tick(50);
    assert_eq!(
        fetch(&mut net, 8, "sae-c"),
        Err(Refusal::BadRequest(Refusal::KEYS_NOT_FOUND.into()))
    );
    assert!(
        net.written["c"]
            .iter()
            .any(|r| matches!(r, Record::SlaveKeyGone { id: g } if *g == id)),
        "the key's erasure was not persisted"
    );
}

#[test]
fn store_failure_fences_the_node() {
    let mut net = line();
    net.tick(50);
    // Fail the next write a makes.
    let km = net.kms.get_mut("a").unwrap();
    km.handle(
        Instant(10_000_000_000),
        Input::LinkKeys {
            peer: "b".into(),
            block: 9,
            key: Key::from_vec(vec![1; 64]),
        },
    );
    let mut fenced = false;
    while let Some(a) = km.poll_action() {
        if let Action::Store { write, .. } = a {
            km.handle(Instant(10_000_000_000), Input::Stored { write, ok: false });
            fenced = true;
            break;
        }
    }
    assert!(fenced && km.is_fenced());
    km.handle(
        Instant(10_000_000_001),
        Input::App {
            req: 9,
            call: AppCall::Status {
                master: "sae-a".into(),
                slave: "sae-c".into(),
            },
        },
    );
    let mut refused = false;
    while let Some(a) = km.poll_action() {
        if let Action::Answer {
            req: 9,
            reply: Err(Refusal::Unavailable(_)),
        } = a
        {
            refused = true;
        }
    }
    assert!(refused);
}

/// The first `Hello` `from` sent to `to`, as on the wire.
fn hello_on_wire(net: &Net, from: &str, to: &str) -> PeerMsg {
    net.wire
        .iter()
        .find(|(f, t, m)| f == from && t == to && matches!(m, PeerMsg::Hello { .. }))
        .map(|(_, _, m)| m.clone())
        .expect("a Hello on the wire")
}

/// `hello` as the first `Hello` of a later run of its sender (a restart with its store intact).
fn next_run(hello: PeerMsg) -> PeerMsg {
    let PeerMsg::Hello {
        store,
        epoch,
        link_low,
        run,
        tx_low,
        ..
    } = hello
    else {
        unreachable!("a Hello")
    };
    PeerMsg::Hello {
        store,
        epoch: epoch ^ 0x5a5a,
        link_low,
        run: run + 1,
        next_relay: 1_000,
        next_assign: 1_000,
        tx_low,
    }
}

/// A relay hop from an earlier run of its origin (still in flight when the origin restarted)
/// is not kept: the new run may reuse its counter, and the destination would then take the
/// new run's relay for a duplicate of it.
#[test]
fn a_hop_from_an_earlier_run_of_its_origin_is_not_kept() {
    let mut net = line();
    assert!(net.kms["b"].is_reconciled("a"));
    net.auto_deliver = false;
    let mut hop = None;
    for _ in 0..5 {
        net.tick(50);
        hop = net.wire.iter().find_map(|(f, t, m)| match m {
            PeerMsg::RelayHop { path, .. } if f == "a" && t == "b" && path.len() == 2 => {
                Some(m.clone())
            }
            _ => None,
        });
        if hop.is_some() {
            break;
        }
    }
    let hop = hop.expect("a relay a→b started");
    let PeerMsg::RelayHop { relay, .. } = &hop else {
        unreachable!()
    };
    let relay = relay.clone();
    // a restarts (same store, a new run) before its hop arrives.
    let hello = next_run(hello_on_wire(&net, "a", "b"));
    net.input(
        "b",
        Input::Peer {
            from: "a".into(),
            msg: hello,
        },
    );
    let stale = net.kms["b"].stats().stale_dropped;
    let sent = net.wire.len();
    net.input(
        "b",
        Input::Peer {
            from: "a".into(),
            msg: hop,
        },
    );
    assert!(
        !net.wire[sent..]
            .iter()
            .any(|(f, _, m)| f == "b" && matches!(m, PeerMsg::RelayAck { relay: r } if *r == relay)),
        "b kept and acknowledged a relay of a's earlier run"
    );
    assert_eq!(net.kms["b"].stats().stale_dropped, stale + 1);
}

/// No link key is spent towards a neighbour that has not answered this run's `Hello`, neither
/// for a relay's first hop nor to forward one: a store restored from an older copy would reuse
/// pad bytes the neighbour already saw spent before its `Seen` arrives.
#[test]
fn no_link_key_is_spent_towards_a_neighbour_before_it_answers_hello() {
    // Forwarding: c restarts and b's Hello to its new run is not answered yet.
    let mut net = line();
    net.auto_deliver = false;
    let hello_c = next_run(hello_on_wire(&net, "c", "b"));
    net.input(
        "b",
        Input::Peer {
            from: "c".into(),
            msg: hello_c,
        },
    );
    assert!(!net.kms["b"].is_reconciled("c"));
    let b_to_c = net.kms["b"].link_tx_free("c");
    let (mut delivered, mut forwarded) = (0, 0);
    for _ in 0..5 {
        net.tick(50);
        let wire: Vec<_> = net.take_wire();
        forwarded += wire
            .iter()
            .filter(|(f, t, m)| f == "b" && t == "c" && to_c(m))
            .count();
        for (from, to, msg) in wire {
            if from == "a" && to == "b" && to_c(&msg) {
                delivered += 1;
                net.input(
                    "b",
                    Input::Peer {
                        from: from.into(),
                        msg,
                    },
                );
            }
        }
    }
    forwarded += net
        .wire
        .iter()
        .filter(|(f, t, m)| f == "b" && t == "c" && to_c(m))
        .count();
    assert!(delivered > 0, "no hop a→b→c reached b");
    assert_eq!(
        forwarded, 0,
        "b forwarded a hop to c before c answered its Hello"
    );
    assert_eq!(net.kms["b"].link_tx_free("c"), b_to_c);

    // First hop: b restarts and a's Hello to b's new run is not answered; c is reconciled.
    let mut net = line();
    net.auto_deliver = false;
    let hello_b = next_run(hello_on_wire(&net, "b", "a"));
    net.input(
        "a",
        Input::Peer {
            from: "b".into(),
            msg: hello_b,
        },
    );
    assert!(!net.kms["a"].is_reconciled("b") && net.kms["a"].is_reconciled("c"));
    let a_to_b = net.kms["a"].link_tx_free("b");
    let sent = net.wire.len();
    for _ in 0..5 {
        net.tick(50);
    }
    assert!(
        !net.wire[sent..]
            .iter()
            .any(|(f, _, m)| f == "a" && matches!(m, PeerMsg::RelayHop { .. })),
        "a started a relay over b before b answered its Hello"
    );
    assert_eq!(net.kms["a"].link_tx_free("b"), a_to_b);
}

/// A neighbour's `Seen` says it saw a block of our half spent: what is left of that block is
/// never spent again (after a rollback this store may hold it as unspent though it was used).
#[test]
fn link_key_a_neighbour_saw_spent_is_never_spent_again() {
    let mut net = line();
    for _ in 0..3 {
        net.tick(50);
    }
    let free = net.kms["a"].link_tx_free("b");
    assert!(
        free > 0 && free < 4096,
        "a spent part of block 0 ({free} left)"
    );
    let epoch = net.kms["a"].epoch();
    net.input(
        "a",
        Input::Peer {
            from: "b".into(),
            msg: PeerMsg::Seen {
                epoch,
                relay_hw: 0,
                assign_hw: 0,
                relay_floor: 0,
                assign_floor: 0,
                link_rx_hw: Some(0),
                fork_run: 0,
                link_reserved: None,
                marks_run: 0,
                marks_epoch: 0,
            },
        },
    );
    assert_eq!(
        net.kms["a"].link_tx_free("b"),
        0,
        "a kept the rest of a block b saw spent"
    );
    assert_eq!(net.kms["a"].stats().rollbacks_detected, 0);
}

/// Warms the line up, stops delivering messages and has sae-a ask a for one key for sae-c:
/// the `Assign` a then sent to c, held on the wire.
fn assignment_held_on_the_wire(net: &mut Net) -> PeerMsg {
    for _ in 0..5 {
        net.tick(50);
    }
    net.auto_deliver = false;
    let sent = net.wire.len();
    net.input(
        "a",
        Input::App {
            req: 1,
            call: AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-c".into(),
                number: Some(1),
                size_bits: Some(256),
                additional_slaves: vec![],
                route: None,
            },
        },
    );
    net.wire[sent..]
        .iter()
        .find(|(f, t, m)| f == "a" && t == "c" && matches!(m, PeerMsg::Assign { .. }))
        .map(|(_, _, m)| m.clone())
        .expect("a sent its assignment to c")
}

/// The same for assignments: one still in flight from an earlier run of the master's node is
/// neither applied nor acknowledged (its counter may be reused by the new run).
#[test]
fn an_assignment_from_an_earlier_run_of_its_origin_is_not_applied() {
    let mut net = line();
    let assign = assignment_held_on_the_wire(&mut net);
    let hello = next_run(hello_on_wire(&net, "a", "c"));
    net.input(
        "c",
        Input::Peer {
            from: "a".into(),
            msg: hello,
        },
    );
    let sent = net.wire.len();
    net.input(
        "c",
        Input::Peer {
            from: "a".into(),
            msg: assign,
        },
    );
    assert!(
        !net.wire[sent..]
            .iter()
            .any(|(f, _, m)| f == "c" && matches!(m, PeerMsg::AssignAck { .. })),
        "c answered an assignment of a's earlier run"
    );
    assert!(
        !net.written["c"]
            .iter()
            .any(|r| matches!(r, Record::TaggedSlaveKey { .. } | Record::SlaveKey { .. })),
        "c applied an assignment of a's earlier run"
    );
}

/// An `Assign` held up on the wire until after the origin gave the assignment up and its
/// revoke reached the slave's node (a retransmission that crossed the revoke) is refused there:
/// its keys are never stored, and the slave can never fetch them (their master never got them).
#[test]
fn a_late_assign_arriving_after_its_revoke_is_refused() {
    let mut net = line();
    let assign = assignment_held_on_the_wire(&mut net);
    let PeerMsg::Assign { keys, .. } = &assign else {
        unreachable!("an Assign")
    };
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    // c never hears of it in time: a gives the assignment up and revokes it at c.
    let mut revoke = None;
    for _ in 0..200 {
        net.tick(50);
        revoke = net
            .wire
            .iter()
            .find(|(f, t, m)| f == "a" && t == "c" && matches!(m, PeerMsg::Revoke { .. }))
            .map(|(_, _, m)| m.clone());
        if revoke.is_some() {
            break;
        }
    }
    let revoke = revoke.expect("a revoked the assignment it gave up");
    assert!(
        matches!(net.answers.get(&1), Some(Err(_))),
        "the master was refused: {:?}",
        net.answers.get(&1)
    );
    net.input(
        "c",
        Input::Peer {
            from: "a".into(),
            msg: revoke,
        },
    );
    // Then the assignment arrives.
    let sent = net.wire.len();
    let written = net.written.get("c").map_or(0, Vec::len);
    net.input(
        "c",
        Input::Peer {
            from: "a".into(),
            msg: assign,
        },
    );
    assert!(
        net.wire[sent..].iter().any(|(f, t, m)| f == "c"
            && t == "a"
            && matches!(m, PeerMsg::AssignAck { ok: false, .. })),
        "c did not refuse the late assignment"
    );
    assert!(
        !net.written["c"][written..]
            .iter()
            .any(|r| matches!(r, Record::TaggedSlaveKey { .. } | Record::SlaveKey { .. })),
        "c stored the keys of an assignment it had revoked"
    );
    net.input(
        "c",
        Input::App {
            req: 2,
            call: AppCall::DecKeys {
                slave: "sae-c".into(),
                master: "sae-a".into(),
                key_ids: ids,
            },
        },
    );
    assert!(
        matches!(net.answers.get(&2), Some(Err(_))),
        "the slave fetched keys of a revoked assignment: {:?}",
        net.answers.get(&2)
    );
}
