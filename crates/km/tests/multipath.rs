//! Multi-path relay at the core level: each fresh key is split into shares over node-disjoint
//! paths, every share travels hop by hop like a plain relay (one-time pad and Wegman–Carter tag
//! per hop), the destination rebuilds the key from `threshold` shares, a lost path does not stop
//! delivery, and no single intermediate node receives `threshold` shares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kagi_control::Topology;
use kagi_keymat::its_mac::{Mac, MacKey, MAC_KEY_LEN};
use kagi_keymat::Key;
use kagi_km::config::RoutePolicy;
use kagi_km::{AppCall, AppReply, Input, Instant, NodeId, PeerMsg, Policy, Refusal, RouteRequest};

mod common;
use common::{topology, LinkKey, Net};

/// a reaches z over three node-disjoint paths: a-b1-z, a-b2-z, a-c1-c2-z (plus a b1-b2 link).
fn topo() -> Arc<Topology> {
    topology(
        "three-paths",
        &["a", "b1", "b2", "c1", "c2", "z"],
        &[
            ("a", "b1"),
            ("b1", "z"),
            ("a", "b2"),
            ("b2", "z"),
            ("a", "c1"),
            ("c1", "c2"),
            ("c2", "z"),
            ("b1", "b2"),
        ],
    )
}

/// The test's link key: one block of 8 KiB on every link.
const LINK_KEY: LinkKey = LinkKey {
    len: 8192,
    salt: 37,
};

/// Share indices a node received of one relay, whether it is the destination, the threshold.
type Seen = (BTreeSet<u8>, bool, u8);

/// Every node with `paths`/`threshold` routing, one block of link key on every link but
/// `without_link`. Failed nodes go in `frozen`.
fn three_paths(paths: u8, threshold: u8, without_link: Option<(&str, &str)>) -> Net {
    let policy = Policy {
        pool_target_bytes: 256,
        relay_chunk_bytes: 128,
        max_relays_in_flight: 1,
        // Every destination fills at once: these tests watch one among several.
        idle_relays_in_flight: 64,
        routing: RoutePolicy {
            paths,
            threshold,
            ..RoutePolicy::default()
        },
        ..Policy::default()
    };
    let seed = |n: &str| [n.as_bytes()[0] ^ n.len() as u8; 32];
    let mut net = Net::new(topo(), policy, seed, Instant(1), LINK_KEY);
    net.starved = without_link
        .map(|(x, y)| (x.into(), y.into()))
        .into_iter()
        .collect();
    net.link_blocks();
    net
}

/// A compromised node: shares it forwards to `to` get one bit flipped (or, `relabel`, are
/// relabelled as share 3) and a fresh valid tag from its own link key (what a node on the path
/// can do).
fn tamper(net: &mut Net, from: &str, to: &str, relabel: bool) {
    let (from, to) = (from.to_string(), to.to_string());
    net.tamper = Some(Box::new(move |f, t, msg| {
        if f == from && t == to {
            flip_and_retag(msg, f, t, relabel);
        }
    }));
}

/// Per (receiving node, relay): the share indices it received, whether it is the relay's
/// destination, and the relay's threshold.
fn shares_received(net: &Net) -> BTreeMap<(String, String, u64), Seen> {
    let mut seen: BTreeMap<(String, String, u64), Seen> = BTreeMap::new();
    for (_, to, m) in &net.wire {
        if let PeerMsg::ShareHop {
            relay, share, path, ..
        } = m
        {
            let e = seen
                .entry((to.clone(), relay.origin.to_string(), relay.seq))
                .or_insert_with(|| {
                    (
                        BTreeSet::new(),
                        path.last().is_some_and(|l| l == to),
                        share.threshold,
                    )
                });
            e.0.insert(share.index);
        }
    }
    seen
}

/// The test's link key block 0 of the link between `x` and `y` (as `three_paths` hands it out).
fn link_block(x: &str, y: &str) -> Vec<u8> {
    let i = topo()
        .links
        .iter()
        .position(|l| (l.a == x && l.b == y) || (l.a == y && l.b == x))
        .unwrap();
    LINK_KEY.block(i, 0)
}

/// What a compromised `from` can do to a share it forwards to `to`: flip a bit of the share
/// (one-time pad: flipping the ciphertext flips the plaintext) and tag the result with the MAC
/// key of its own half of the link, so `to` accepts the hop.
fn flip_and_retag(msg: &mut PeerMsg, from: &str, to: &str, relabel: bool) {
    let PeerMsg::ShareHop {
        relay,
        share,
        path,
        paths,
        pad,
        ct,
        tag,
    } = msg
    else {
        return;
    };
    let block = link_block(from, to);
    let half = if from < to { 0 } else { block.len() / 2 };
    let material: Vec<u8> = pad
        .iter()
        .flat_map(|s| {
            let start = half + s.start as usize;
            block[start..start + s.len as usize].to_vec()
        })
        .collect();
    if relabel {
        share.index = 3;
    } else {
        ct[7] ^= 0x10;
    }
    let header = PeerMsg::share_header(relay, share, path, paths, pad, ct.len());
    let mut mac = Mac::new(MacKey::from_bytes(&material[..MAC_KEY_LEN]).unwrap());
    mac.update(&header);
    mac.update(ct);
    *tag = mac.finalize();
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
                route: None,
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
    let mut net = three_paths(3, 2, None);
    for _ in 0..10 {
        net.tick(20);
    }
    assert!(
        net.kms["a"].pool_free("z") >= 256,
        "{:?}",
        net.kms["a"].stats()
    );
    let st = net.kms["a"].stats();
    assert!(st.multipath_relays_started >= 2, "{st:?}");
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s, "master and slave keys differ");
    // What went over the wire: each intermediate node received at most one share of a relay.
    let seen = shares_received(&net);
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
    for e in net.kms["a"].relay_exposures() {
        if e.dest == "z" {
            assert_eq!(e.shares.len(), 3, "{e:?}");
        }
        assert!(e.max_seen_by_one_node() < usize::from(e.threshold), "{e:?}");
    }
    // z holds what a relayed to it, rebuilt from shares.
    let st = net.kms["z"].km_status();
    assert!(st.pools.iter().find(|p| p.peer == "a").unwrap().in_bytes > 0);
}

#[test]
fn a_failed_path_does_not_stop_delivery() {
    let mut net = three_paths(3, 2, None);
    net.frozen.insert("b2".into());
    for _ in 0..10 {
        net.tick(20);
    }
    assert!(
        net.kms["a"].pool_free("z") >= 256,
        "{:?}",
        net.kms["a"].stats()
    );
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s);
}

#[test]
fn a_relay_starts_when_threshold_first_hops_have_key() {
    // a's link to b2 never gets key: the share for a-b2-z cannot go. Two of three first hops
    // have key, which is enough for threshold 2, so relays start with two shares and z rebuilds
    // each key from them (waiting for every first hop, nothing would ever start).
    let mut net = three_paths(3, 2, Some(("a", "b2")));
    for _ in 0..10 {
        net.tick(20);
    }
    let st = net.kms["a"].stats();
    assert!(st.multipath_relays_started >= 2, "{st:?}");
    assert!(net.kms["a"].pool_free("z") >= 256, "{st:?}");
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s, "master and slave keys differ");
    // No share went to b2 (its link has no key), so no relay waited for it.
    let to_b2 = net
        .wire
        .iter()
        .filter(|(f, t, m)| f == "a" && t == "b2" && matches!(m, PeerMsg::ShareHop { .. }))
        .count();
    assert_eq!(to_b2, 0);
}

#[test]
fn xor_over_all_paths_needs_every_share() {
    // 3-of-3: b2 dead means no relay completes; nothing reaches the pool.
    let mut net = three_paths(3, 3, None);
    net.frozen.insert("b2".into());
    for _ in 0..10 {
        net.tick(20);
    }
    assert_eq!(net.kms["a"].pool_free("z"), 0);
    // The relays wait for the lost share; the origin's record says who could see what.
    let exposures = net.kms["a"].relay_exposures();
    let to_z: Vec<_> = exposures.iter().filter(|e| e.dest == "z").collect();
    assert!(!to_z.is_empty());
    for e in to_z {
        assert_eq!((e.shares.len(), e.threshold), (3, 3), "{e:?}");
        assert_eq!(e.shares_seen_by("b1"), vec![1]);
        assert_eq!(e.max_seen_by_one_node(), 1, "{e:?}");
    }
    let st = net.kms["z"].km_status();
    assert_eq!(st.pools.iter().find(|p| p.peer == "a").unwrap().in_bytes, 0);
}

#[test]
fn a_stuck_share_is_aborted_back_to_the_origin_at_once() {
    // c2 has no link key towards z: the share on a-c1-c2-z waits at c2, which fails it back to a
    // after hop_wait. With threshold 3 the relay cannot complete, so a abandons it at once
    // (long before its own relay timeout) and counts the key it spent.
    let mut net = three_paths(3, 3, Some(("c2", "z")));
    net.tick(20);
    let started = net.kms["a"].stats().relays_started;
    assert!(started >= 1);
    net.tick(3_100); // past hop_wait (3 s), well before relay_timeout (10 s)
    let st = net.kms["a"].stats();
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
    let mut net = three_paths(3, 3, Some(("c2", "z")));
    net.tick(20);
    let relay = net
        .wire
        .iter()
        .find_map(|(_, _, m)| match m {
            PeerMsg::ShareHop { relay, path, .. }
                if relay.origin == "a" && path.last().map(NodeId::as_str) == Some("z") =>
            {
                Some(relay.clone())
            }
            _ => None,
        })
        .unwrap();
    let before = net.kms["a"].stats().relays_abandoned;
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
    assert_eq!(net.kms["a"].stats().relays_abandoned, before);
}

#[test]
fn fewer_disjoint_paths_than_asked_falls_back_and_says_so() {
    let mut net = three_paths(3, 2, None);
    net.tick(20);
    let st = net.kms["a"].km_status();
    let to_z = st.pools.iter().find(|p| p.peer == "z").unwrap();
    assert_eq!((to_z.paths.len(), to_z.threshold), (3, 2), "{to_z:?}");
    assert_eq!(to_z.route_note, None);
    let st = net.kms["c2"].km_status();
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

#[test]
fn a_share_altered_on_its_path_is_caught_and_the_key_rebuilt_from_the_others() {
    // b1 flips a bit of every share it forwards to z. With 3 paths and threshold 2, z finds that
    // shares {1, 2} fail the manipulation check, waits for share 3, and rebuilds the origin's
    // key from {2, 3}: master and slave still hold the same key.
    let mut net = three_paths(3, 2, None);
    tamper(&mut net, "b1", "z", false);
    for _ in 0..10 {
        net.tick(20);
    }
    assert!(net.kms["a"].pool_free("z") >= 256);
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s, "master and slave keys differ");
    // (z's counters also cover relays from b1, b2, c1 and c2, some with only two paths.)
    let z = net.kms["z"].stats();
    assert!(z.shares_manipulated >= 1, "{z:?}");
    assert_eq!(z.bad_tags, 0, "the retagged hop passed its link tag: {z:?}");
    let a = net.kms["a"].stats();
    assert!(a.amd_key_bytes >= 3 * 32, "{a:?}");
}

#[test]
fn a_late_share_altered_on_its_path_is_counted() {
    // Shares 1 and 2 rebuild the key; c2 alters share 3, which arrives after: z counts it.
    let mut net = three_paths(3, 2, None);
    tamper(&mut net, "c2", "z", false);
    for _ in 0..10 {
        net.tick(20);
    }
    let z = net.kms["z"].stats();
    assert!(z.late_shares_inconsistent >= 1, "{z:?}");
    assert!(net.kms["a"].pool_free("z") >= 256);
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s);
}

#[test]
fn an_altered_xor_share_aborts_the_relay_and_no_key_is_delivered() {
    // 3-of-3 XOR: every share is needed, so an altered one leaves nothing to rebuild from. z
    // aborts the relay back to a, which abandons it: no key enters either pool.
    let mut net = three_paths(3, 3, None);
    tamper(&mut net, "b1", "z", false);
    for _ in 0..10 {
        net.tick(20);
    }
    let z = net.kms["z"].stats();
    assert!(z.manipulation_aborts >= 1, "{z:?}");
    let a = net.kms["a"].stats();
    assert!(a.relays_aborted >= 1, "{a:?}");
    assert_eq!(net.kms["a"].pool_free("z"), 0);
    let st = net.kms["z"].km_status();
    assert_eq!(st.pools.iter().find(|p| p.peer == "a").unwrap().in_bytes, 0);
    let aborts = net
        .wire
        .iter()
        .filter(|(f, t, m)| {
            f == "z"
                && t == "a"
                && matches!(
                    m,
                    PeerMsg::RelayAborted {
                        reason: kagi_km::msgs::AbortReason::SharesManipulated,
                        ..
                    }
                )
        })
        .count();
    assert!(aborts >= 1);
}

#[test]
fn a_share_relabelled_on_its_path_is_refused() {
    // b1 passes share 1 off as share 3 (a relabelled share would shift the rebuilt key by more
    // than an offset, which the manipulation check is not built for). z knows share 3's path
    // from every share's list of paths and drops it; shares 2 and 3 still deliver.
    let mut net = three_paths(3, 2, None);
    tamper(&mut net, "b1", "z", true);
    for _ in 0..10 {
        net.tick(20);
    }
    assert!(
        net.kms["a"].pool_free("z") >= 256,
        "{:?}",
        net.kms["a"].stats()
    );
    let (m, s) = fetch_pair(&mut net);
    assert_eq!(m, s);
}

/// Asks a for one key for sae-z under a `kagi_route` constraint; on success also fetches it at
/// z and checks both ends hold the same key.
fn fetch_routed(
    net: &mut Net,
    min: u64,
    avoid: &[&str],
    max_hops: Option<u64>,
    mandatory: bool,
) -> Result<kagi_km::KeyPaths, Refusal> {
    net.input(
        "a",
        Input::App {
            req: 11,
            call: AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-z".into(),
                number: Some(1),
                size_bits: Some(256),
                additional_slaves: vec![],
                route: Some(RouteRequest {
                    min_disjoint_paths: min,
                    avoid_nodes: avoid.iter().map(|s| NodeId::from(*s)).collect(),
                    max_hops,
                    mandatory,
                }),
            },
        },
    );
    let k = match net.answers.remove(&11) {
        Some(Ok(AppReply::Keys(k))) => k,
        Some(Err(r)) => return Err(r),
        other => panic!("enc_keys: {other:?}"),
    };
    net.input(
        "z",
        Input::App {
            req: 12,
            call: AppCall::DecKeys {
                slave: "sae-z".into(),
                master: "sae-a".into(),
                key_ids: vec![k[0].id],
            },
        },
    );
    let Some(Ok(AppReply::Keys(s))) = net.answers.remove(&12) else {
        panic!("dec_keys: {:?}", net.answers.get(&12));
    };
    assert_eq!(k[0].key, s[0].key, "master and slave keys differ");
    Ok(k[0]
        .paths
        .clone()
        .expect("paths are reported when kagi_route is asked"))
}

/// The intermediate nodes of every path, checked pairwise disjoint.
fn assert_node_disjoint(paths: &[Vec<NodeId>]) {
    let mut seen = BTreeSet::new();
    for p in paths {
        assert_eq!(
            (p.first().unwrap().as_str(), p.last().unwrap().as_str()),
            ("a", "z")
        );
        for n in &p[1..p.len() - 1] {
            assert!(seen.insert(n.clone()), "{n} is on two paths: {paths:?}");
        }
    }
}

#[test]
fn kagi_route_mandatory_three_paths_lists_them_and_keys_match() {
    let mut net = three_paths(3, 2, None);
    for _ in 0..10 {
        net.tick(20);
    }
    let paths = fetch_routed(&mut net, 3, &[], None, true).unwrap();
    let [Some(route)] = &paths.relays[..] else {
        panic!("one relay with known paths expected: {paths:?}");
    };
    assert_eq!(route.paths.len(), 3, "{route:?}");
    assert_eq!(route.threshold, 2);
    assert_node_disjoint(&route.paths);
    // Within the hop limit and around an avoided node, only key that meets it is served.
    let p = fetch_routed(&mut net, 2, &["b1"], Some(3), true);
    assert!(
        matches!(p, Err(Refusal::Unavailable(ref m)) if m.contains("relays under them have been started")),
        "{p:?}"
    );
}

#[test]
fn kagi_route_constraints_no_paths_can_meet_are_refused_with_why() {
    let mut net = three_paths(3, 2, None);
    for _ in 0..10 {
        net.tick(20);
    }
    let unmet = Refusal::EXT_MANDATORY_UNMET;
    for (min, avoid, hops, want) in [
        (
            4,
            &[][..],
            None,
            "only 3 node-disjoint path(s) exist between a and z",
        ),
        (3, &["c1"][..], None, "only 2 node-disjoint path(s)"),
        (3, &[][..], Some(2), "only 2 node-disjoint path(s)"),
    ] {
        match fetch_routed(&mut net, min, avoid, hops, true) {
            Err(Refusal::BadRequest(m)) => {
                assert!(m.starts_with(unmet) && m.contains(want), "{m}")
            }
            other => panic!("expected 400 for min {min} avoiding {avoid:?}: {other:?}"),
        }
    }
    for (min, avoid, hops, want) in [
        (0, &[][..], None, "between 1 and 8"),
        (9, &[][..], None, "between 1 and 8"),
        (u64::MAX, &[][..], None, "between 1 and 8"),
        (2, &["nowhere"][..], None, "unknown node"),
        (2, &["a"][..], None, "an end of the key's route"),
        (2, &[][..], Some(u64::MAX), "max_hops must be between 1"),
    ] {
        match fetch_routed(&mut net, min, avoid, hops, false) {
            Err(Refusal::BadRequest(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("expected 400: {other:?}"),
        }
    }
    // Optional constraints that cannot be met are honoured where possible: key is served.
    let p = fetch_routed(&mut net, 4, &[], None, false).unwrap();
    assert_eq!(p.relays.len(), 1);
    assert_eq!(net.kms["a"].stats().keys_served_master, 1);
}

#[test]
fn kagi_route_demand_makes_refill_relay_under_the_constraint() {
    // Single-path policy: the pool holds key relayed over one path only.
    let mut net = three_paths(1, 1, None);
    for _ in 0..10 {
        net.tick(20);
    }
    assert!(net.kms["a"].pool_free("z") >= 256);
    let first = fetch_routed(&mut net, 3, &[], None, true);
    assert!(
        matches!(first, Err(Refusal::Unavailable(ref m)) if m.contains("0 of 32 bytes")),
        "{first:?}"
    );
    // The request asked refill to relay under the constraint: key split over 3 paths follows.
    let mut served = None;
    for _ in 0..50 {
        net.tick(20);
        if let Ok(p) = fetch_routed(&mut net, 3, &[], None, true) {
            served = Some(p);
            break;
        }
    }
    let p = served.expect("no key relayed over 3 node-disjoint paths after the request");
    let Some(route) = &p.relays[0] else {
        panic!("{p:?}")
    };
    assert_eq!(route.paths.len(), 3);
    assert_eq!(route.threshold, 2);
    assert_node_disjoint(&route.paths);
    // The same around b1, over the two other paths.
    let mut served = None;
    for _ in 0..50 {
        if let Ok(p) = fetch_routed(&mut net, 2, &["b1"], None, true) {
            served = Some(p);
            break;
        }
        net.tick(20);
    }
    let p = served.expect("no key relayed around b1");
    let Some(route) = &p.relays[0] else {
        panic!("{p:?}")
    };
    assert!(
        route.paths.iter().all(|p| !p.contains(&NodeId::from("b1"))),
        "{route:?}"
    );
    assert_eq!(route.paths.len(), 2);
}

#[test]
fn a_mandatory_route_cannot_be_combined_with_slaves_at_other_kmes() {
    let mut net = three_paths(3, 2, None);
    for _ in 0..10 {
        net.tick(20);
    }
    net.input(
        "a",
        Input::App {
            req: 21,
            call: AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-z".into(),
                number: Some(1),
                size_bits: Some(256),
                additional_slaves: vec!["sae-c2".into()],
                route: Some(RouteRequest {
                    min_disjoint_paths: 2,
                    avoid_nodes: vec![],
                    max_hops: None,
                    mandatory: true,
                }),
            },
        },
    );
    match net.answers.remove(&21) {
        Some(Err(Refusal::BadRequest(m))) => assert!(
            m.starts_with(Refusal::EXT_MANDATORY_UNMET) && m.contains("additional_slave_SAE_IDs"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}
