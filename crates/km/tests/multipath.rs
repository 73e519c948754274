//! Multi-path relay at the core level: each fresh key is split into shares over node-disjoint
//! paths, every share travels hop by hop like a plain relay (one-time pad and Wegman–Carter tag
//! per hop), the destination rebuilds the key from `threshold` shares, a lost path does not stop
//! delivery, and no single intermediate node receives `threshold` shares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kagi_control::{LinkSpec, NodeSpec, Topology};
use kagi_keymat::Key;
use kagi_km::config::RoutePolicy;
use kagi_km::{
    Action, AppCall, AppReply, Input, Instant, KeyManager, KmConfig, Limits, PeerMsg, Policy,
    Refusal, Snapshot,
};

/// a reaches z over three node-disjoint paths: a-b1-z, a-b2-z, a-c1-c2-z (plus a b1-b2 link).
fn topo() -> Arc<Topology> {
    let nodes = ["a", "b1", "b2", "c1", "c2", "z"];
    let links = [
        ("a", "b1"),
        ("b1", "z"),
        ("a", "b2"),
        ("b2", "z"),
        ("a", "c1"),
        ("c1", "c2"),
        ("c2", "z"),
        ("b1", "b2"),
    ];
    Arc::new(Topology {
        name: "three-paths".into(),
        seed: 1,
        epoch_unix: 0,
        rate_multiplier: 1.0,
        insecure_demo_links: false,
        nodes: nodes
            .iter()
            .map(|n| NodeSpec {
                id: n.to_string(),
                saes: vec![format!("sae-{n}")],
                peer_addr: None,
                etsi014_addr: None,
            })
            .collect(),
        links: links
            .iter()
            .map(|(a, b)| LinkSpec {
                a: a.to_string(),
                b: b.to_string(),
                length_km: 10.0,
                ..Default::default()
            })
            .collect(),
    })
}

/// Share indices a node received of one relay, whether it is the destination, the threshold.
type Seen = (BTreeSet<u8>, bool, u8);

struct Net {
    kms: BTreeMap<String, KeyManager>,
    now: Instant,
    /// Every message sent (from, to, msg).
    wire: Vec<(String, String, PeerMsg)>,
    /// Nodes whose incoming messages are dropped (a failed node).
    dead: BTreeSet<String>,
    answers: BTreeMap<u64, Result<AppReply, Refusal>>,
}

impl Net {
    fn new(paths: u8, threshold: u8, without_link: Option<(&str, &str)>) -> Self {
        let t = topo();
        let policy = Policy {
            pool_target_bytes: 256,
            relay_chunk_bytes: 128,
            max_relays_in_flight: 1,
            routing: RoutePolicy {
                paths,
                threshold,
                ..RoutePolicy::default()
            },
            ..Policy::default()
        };
        let kms = t
            .nodes
            .iter()
            .map(|n| {
                let cfg = KmConfig {
                    node_id: n.id.clone(),
                    topology: t.clone(),
                    limits: Limits::default(),
                    policy: policy.clone(),
                };
                let seed = [n.id.as_bytes()[0] ^ n.id.len() as u8; 32];
                (
                    n.id.clone(),
                    KeyManager::restore(cfg, Snapshot::default(), seed, Instant(0)),
                )
            })
            .collect();
        let mut net = Net {
            kms,
            now: Instant(1),
            wire: vec![],
            dead: BTreeSet::new(),
            answers: BTreeMap::new(),
        };
        for (i, l) in t.links.iter().enumerate() {
            if without_link.is_some_and(|(x, y)| (l.a == x && l.b == y) || (l.a == y && l.b == x)) {
                continue;
            }
            let k = Key::from_vec((0..8192u32).map(|j| (j as u8) ^ (i as u8 * 37)).collect());
            for (x, y) in [(&l.a, &l.b), (&l.b, &l.a)] {
                net.input(
                    x,
                    Input::LinkKeys {
                        peer: y.clone(),
                        block: 0,
                        key: k.clone(),
                    },
                );
            }
        }
        net
    }

    fn input(&mut self, node: &str, i: Input) {
        if self.dead.contains(node) {
            return;
        }
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
                Action::Store { write, .. } => {
                    km.handle(self.now, Input::Stored { write, ok: true })
                }
                Action::Answer { req, reply } => {
                    self.answers.insert(req, reply);
                }
            }
        }
        for (from, to, msg) in sends {
            self.wire.push((from.clone(), to.clone(), msg.clone()));
            self.input(&to, Input::Peer { from, msg });
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now = Instant(self.now.0 + ms * 1_000_000);
        let names: Vec<String> = self.kms.keys().cloned().collect();
        for n in names {
            if self.dead.contains(&n) {
                continue;
            }
            let now = self.now;
            self.kms.get_mut(&n).unwrap().handle_timeout(now);
            self.drain(&n);
        }
    }

    fn km(&self, n: &str) -> &KeyManager {
        &self.kms[n]
    }

    /// Per (receiving node, relay): the share indices it received, whether it is the relay's
    /// destination, and the relay's threshold.
    fn shares_received(&self) -> BTreeMap<(String, String, u64), Seen> {
        let mut seen: BTreeMap<(String, String, u64), Seen> = BTreeMap::new();
        for (_, to, m) in &self.wire {
            if let PeerMsg::ShareHop {
                relay, share, path, ..
            } = m
            {
                let e = seen
                    .entry((to.clone(), relay.origin.clone(), relay.seq))
                    .or_insert_with(|| (BTreeSet::new(), path.last() == Some(to), share.threshold));
                e.0.insert(share.index);
            }
        }
        seen
    }
}

fn fetch_pair(net: &mut Net) -> (Key, Key) {
    net.input(
        "a",
        Input::App {
            req: 1,
            call: AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-z".into(),
                number: Some(1),
                size_bits: Some(256),
                additional_slaves: vec![],
            },
        },
    );
    let Some(Ok(AppReply::Keys(k))) = net.answers.remove(&1) else {
        panic!("enc_keys: {:?}", net.answers.get(&1));
    };
    net.input(
        "z",
        Input::App {
            req: 2,
            call: AppCall::DecKeys {
                slave: "sae-z".into(),
                master: "sae-a".into(),
                key_ids: vec![k[0].id],
            },
        },
    );
    let Some(Ok(AppReply::Keys(s))) = net.answers.remove(&2) else {
        panic!("dec_keys: {:?}", net.answers.get(&2));
    };
    (k[0].key.clone(), s[0].key.clone())
}

#[test]
fn three_paths_threshold_two_delivers_and_no_node_sees_two_shares() {
    let mut net = Net::new(3, 2, None);
    for _ in 0..10 {
        net.tick(20);
    }
    assert!(
        net.km("a").pool_free("z") >= 256,
        "{:?}",
        net.km("a").stats()
    );
    let st = net.km("a").stats();
    assert!(st.multipath_relays_started >= 2, "{st:?}");
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s, "master and slave keys differ");
    // What went over the wire: each intermediate node received at most one share of a relay.
    let seen = net.shares_received();
    assert!(!seen.is_empty());
    let mut rebuilt = 0;
    for ((node, origin, seq), (shares, is_dest, threshold)) in &seen {
        if *is_dest {
            rebuilt += usize::from(shares.len() >= usize::from(*threshold));
        } else {
            assert!(
                shares.len() < usize::from(*threshold),
                "{node} received shares {shares:?} of relay {origin}/{seq}"
            );
        }
    }
    assert!(rebuilt > 0);
    // The origin's own record says the same for relays still in flight.
    for e in net.km("a").relay_exposures() {
        if e.dest == "z" {
            assert_eq!(e.shares.len(), 3, "{e:?}");
        }
        assert!(e.max_seen_by_one_node() < usize::from(e.threshold), "{e:?}");
    }
    // z holds what a relayed to it, rebuilt from shares.
    let st = net.km("z").km_status();
    assert!(st.pools.iter().find(|p| p.peer == "a").unwrap().in_bytes > 0);
}

#[test]
fn a_failed_path_does_not_stop_delivery() {
    let mut net = Net::new(3, 2, None);
    net.dead.insert("b2".into());
    for _ in 0..10 {
        net.tick(20);
    }
    assert!(
        net.km("a").pool_free("z") >= 256,
        "{:?}",
        net.km("a").stats()
    );
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s);
}

#[test]
fn xor_over_all_paths_needs_every_share() {
    // 3-of-3: b2 dead means no relay completes; nothing reaches the pool.
    let mut net = Net::new(3, 3, None);
    net.dead.insert("b2".into());
    for _ in 0..10 {
        net.tick(20);
    }
    assert_eq!(net.km("a").pool_free("z"), 0);
    // The relays wait for the lost share; the origin's record says who could see what.
    let exposures = net.km("a").relay_exposures();
    let to_z: Vec<_> = exposures.iter().filter(|e| e.dest == "z").collect();
    assert!(!to_z.is_empty());
    for e in to_z {
        assert_eq!((e.shares.len(), e.threshold), (3, 3), "{e:?}");
        assert_eq!(e.shares_seen_by("b1"), vec![1]);
        assert_eq!(e.max_seen_by_one_node(), 1, "{e:?}");
    }
    let st = net.km("z").km_status();
    assert_eq!(st.pools.iter().find(|p| p.peer == "a").unwrap().in_bytes, 0);
}

#[test]
fn a_stuck_share_is_aborted_back_to_the_origin_at_once() {
    // c2 has no link key towards z: the share on a-c1-c2-z waits at c2, which fails it back to a
    // after hop_wait. With threshold 3 the relay cannot complete, so a abandons it at once
    // (long before its own relay timeout) and counts the key it spent.
    let mut net = Net::new(3, 3, Some(("c2", "z")));
    net.tick(20);
    let started = net.km("a").stats().relays_started;
    assert!(started >= 1);
    net.tick(3_100); // past hop_wait (3 s), well before relay_timeout (10 s)
    let st = net.km("a").stats();
    assert!(st.relays_aborted >= 1, "{st:?}");
    assert!(st.abandoned_key_bytes > 0, "{st:?}");
    let aborts = net
        .wire
        .iter()
        .filter(|(f, t, m)| f == "c2" && t == "a" && matches!(m, PeerMsg::RelayAborted { .. }))
        .count();
    assert!(aborts >= 1);
}

#[test]
fn an_abort_from_a_node_off_the_path_is_ignored() {
    let mut net = Net::new(3, 3, Some(("c2", "z")));
    net.tick(20);
    let relay = net
        .wire
        .iter()
        .find_map(|(_, _, m)| match m {
            PeerMsg::ShareHop { relay, path, .. }
                if relay.origin == "a" && path.last().map(String::as_str) == Some("z") =>
            {
                Some(relay.clone())
            }
            _ => None,
        })
        .unwrap();
    let before = net.km("a").stats().relays_abandoned;
    // b1 carries share 1, not share 3: claiming share 3 is lost must not abandon the relay.
    net.input(
        "a",
        Input::Peer {
            from: "b1".into(),
            msg: PeerMsg::RelayAborted {
                relay: relay.clone(),
                share: Some(3),
                reason: kagi_km::msgs::AbortReason::LinkKeyExhausted,
            },
        },
    );
    assert_eq!(net.km("a").stats().relays_abandoned, before);
}

#[test]
fn fewer_disjoint_paths_than_asked_falls_back_and_says_so() {
    let mut net = Net::new(3, 2, None);
    net.tick(20);
    let st = net.km("a").km_status();
    let to_z = st.pools.iter().find(|p| p.peer == "z").unwrap();
    assert_eq!((to_z.paths.len(), to_z.threshold), (3, 2), "{to_z:?}");
    assert_eq!(to_z.route_note, None);
    let st = net.km("c2").km_status();
    let to_z = st.pools.iter().find(|p| p.peer == "z").unwrap();
    // c2 has two links: at most two disjoint paths, so the plan says why it has fewer than 3.
    assert_eq!(to_z.paths.len(), 2, "{to_z:?}");
    assert_eq!(to_z.threshold, 2);
    assert!(
        to_z.route_note
            .as_deref()
            .unwrap_or("")
            .contains("2 node-disjoint paths"),
        "{to_z:?}"
    );
}
