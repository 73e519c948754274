//! Security properties of relay and supply at the core level (X.1712 INT.1, AUTH.2, AUTH.4,
//! SReq.2): tampered hops are refused, replays have no effect, intermediate nodes keep no relayed
//! key, keys go only to their named slaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use kagi_control::Topology;
use kagi_keymat::its_mac::{Mac, MacKey, MAC_KEY_LEN};
use kagi_keymat::Key;
use kagi_km::msgs::Span;
use kagi_km::record::Record;
use kagi_km::{
    Action, AppCall, AppReply, Input, Instant, KeyManager, KmConfig, Limits, PeerMsg, Policy,
    Refusal, Snapshot,
};

fn topo() -> Arc<Topology> {
    Arc::new(Topology::line("t", &["a", "b", "c"], 10.0, |n| {
        vec![format!("sae-{n}"), format!("sae-{n}2")]
    }))
}

struct Net {
    kms: BTreeMap<String, KeyManager>,
    now: Instant,
    /// Messages sent, in order (from, to, msg).
    wire: Vec<(String, String, PeerMsg)>,
    /// Records written, per node.
    written: BTreeMap<String, Vec<Record>>,
    answers: BTreeMap<u64, Result<AppReply, Refusal>>,
    auto_deliver: bool,
}

impl Net {
    fn new() -> Self {
        let t = topo();
        let policy = Policy {
            pool_target_bytes: 256,
            relay_chunk_bytes: 128,
            max_relays_in_flight: 1,
            ..Policy::default()
        };
        let kms = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let cfg = KmConfig {
                    node_id: n.to_string(),
                    topology: t.clone(),
                    limits: Limits::default(),
                    policy: policy.clone(),
                };
                (
                    n.to_string(),
                    KeyManager::restore(
                        cfg,
                        Snapshot::default(),
                        [n.as_bytes()[0]; 32],
                        Instant(0),
                    ),
                )
            })
            .collect();
        let mut net = Net {
            kms,
            now: Instant(1),
            wire: vec![],
            written: BTreeMap::new(),
            answers: BTreeMap::new(),
            auto_deliver: true,
        };
        for (i, (x, y)) in [("a", "b"), ("b", "c")].into_iter().enumerate() {
            let k = Key::from_vec((0..4096u32).map(|j| (j as u8) ^ (i as u8 * 77)).collect());
            net.input(
                x,
                Input::LinkKeys {
                    peer: y.into(),
                    block: 0,
                    key: k.clone(),
                },
            );
            net.input(
                y,
                Input::LinkKeys {
                    peer: x.into(),
                    block: 0,
                    key: k,
                },
            );
        }
        net
    }

    fn input(&mut self, node: &str, i: Input) {
        let now = self.now;
        self.kms.get_mut(node).unwrap().handle(now, i);
        self.drain(node);
    }

    fn drain(&mut self, node: &str) {
        let mut sends = Vec::new();
        loop {
            let km = self.kms.get_mut(node).unwrap();
            let Some(a) = km.poll_action() else { break };
            match a {
                Action::Send { to, msg } => sends.push((node.to_string(), to, msg)),
                Action::Store { write, batch } => {
                    self.written
                        .entry(node.to_string())
                        .or_default()
                        .extend(batch);
                    km.handle(self.now, Input::Stored { write, ok: true });
                }
                Action::Answer { req, reply } => {
                    self.answers.insert(req, reply);
                }
            }
        }
        for (from, to, msg) in sends {
            self.wire.push((from.clone(), to.clone(), msg.clone()));
            if self.auto_deliver {
                self.input(&to, Input::Peer { from, msg });
            }
        }
    }

    fn tick(&mut self) {
        self.now = Instant(self.now.0 + 50_000_000);
        for n in ["a", "b", "c"] {
            let now = self.now;
            self.kms.get_mut(n).unwrap().handle_timeout(now);
            self.drain(n);
        }
    }
}

/// A relay hop on its way to c.
fn to_c(m: &PeerMsg) -> bool {
    matches!(m, PeerMsg::RelayHop { path, .. } if path.last().map(String::as_str) == Some("c"))
}

#[test]
fn replayed_relay_hop_has_no_effect() {
    let mut net = Net::new();
    net.tick();
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
            from: hop.0.clone(),
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
    let mut net = Net::new();
    net.auto_deliver = false;
    net.tick();
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
            from,
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
    (0..4096u32).map(|j| (j as u8) ^ 77).collect()
}

#[test]
fn hop_claiming_another_sender_is_dropped() {
    let mut net = Net::new();
    net.auto_deliver = false;
    net.tick();
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
    let mut net = Net::new();
    net.auto_deliver = false;
    net.tick();
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
    let mut net = Net::new();
    net.auto_deliver = false;
    net.tick();
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
    let mut net = Net::new();
    for _ in 0..3 {
        net.tick();
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
            } if relay.origin == "a" && path.last().map(String::as_str) == Some("c") => {
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
    let mut net = Net::new();
    for _ in 0..5 {
        net.tick();
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
    // The named slave gets the same key, once.
    net.input(
        "c",
        Input::App {
            req: 5,
            call: AppCall::DecKeys {
                slave: "sae-c".into(),
                master: "sae-a".into(),
                key_ids: vec![id],
            },
        },
    );
    let Some(Ok(AppReply::Keys(got))) = net.answers.remove(&5) else {
        panic!()
    };
    assert!(got[0].key == keys[0].key);
    net.input(
        "c",
        Input::App {
            req: 6,
            call: AppCall::DecKeys {
                slave: "sae-c".into(),
                master: "sae-a".into(),
                key_ids: vec![id],
            },
        },
    );
    assert_eq!(
        net.answers.remove(&6),
        Some(Err(Refusal::BadRequest(Refusal::KEYS_NOT_FOUND.into())))
    );
}

#[test]
fn store_failure_fences_the_node() {
    let mut net = Net::new();
    net.tick();
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
