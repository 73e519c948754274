//! A compromised neighbour against the real core, one attack at a time (the chaos test mixes
//! them at random): each test fails if the defence it names is removed.

use std::time::Duration;

use kagi_km::{AppCall, AppReply, Policy};
use kagi_sim::chaos::topology;
use kagi_sim::hostile::Hostile;
use kagi_sim::{Faults, LinkSupply, Sim};

fn sim(seed: u64) -> Sim {
    let policy = Policy {
        pool_target_bytes: 4 * 1024,
        relay_chunk_bytes: 512,
        ..Policy::default()
    };
    let supply = LinkSupply {
        interval: Duration::from_millis(20),
        block_bytes: 64 * 1024,
    };
    Sim::with_hostile(topology(), &["x"], seed, Faults::default(), supply, policy)
}

/// Fetches `n` keys b → c and checks the slave gets them (the oracle compares the bytes).
fn exchange_b_to_c(sim: &mut Sim, n: u64) {
    let req = sim.call(
        "b",
        AppCall::EncKeys {
            master: "sae-b".into(),
            slave: "sae-c".into(),
            number: Some(n),
            size_bits: Some(256),
            additional_slaves: vec![],
            route: None,
        },
    );
    let keys = match sim
        .run_until_answered(req, Duration::from_secs(10))
        .map(|a| a.reply)
    {
        Some(Ok(AppReply::Keys(k))) => k,
        other => panic!("enc_keys b→c: {other:?}"),
    };
    let req = sim.call(
        "c",
        AppCall::DecKeys {
            slave: "sae-c".into(),
            master: "sae-b".into(),
            key_ids: keys.iter().map(|k| k.id).collect(),
        },
    );
    match sim
        .run_until_answered(req, Duration::from_secs(5))
        .map(|a| a.reply)
    {
        Some(Ok(AppReply::Keys(_))) => {}
        other => panic!("dec_keys at c: {other:?}"),
    }
}

#[test]
fn validly_tagged_hops_claiming_another_origin_do_not_plant_keys() {
    // x is attached to c only. It forges relays "from b" to c over a path b–x–c that names a
    // link b–x the topology does not have, for every relay counter b is about to use: if c
    // accepted one, c would later hold other bytes than b for that chunk.
    let mut sim = sim(5);
    let mut x = Hostile::new("x", 5);
    sim.run_for(Duration::from_millis(100));
    for seq in 1..400 {
        if let Some(m) = x.forge_relay(&sim, "c", "b", seq, &["b", "x", "c"], 512, false) {
            sim.inject("x", "c", m);
        }
        if seq % 40 == 0 {
            sim.run_for(Duration::from_millis(25));
        }
    }
    sim.run_for(Duration::from_millis(1500));
    for _ in 0..60 {
        exchange_b_to_c(&mut sim, 4);
        sim.run_for(Duration::from_millis(30));
    }
    // The oracle compared every key's bytes at b and c.
    assert!(sim.oracle().fetched() >= 240);
}

#[test]
fn an_empty_span_in_a_tagged_hop_is_refused_without_a_panic() {
    // Hops of x's own relays to c from one link block, the second with an empty span at the
    // start of its real span: both spans pass a pairwise overlap check, but once the real span
    // is spent (merged with the first hop's) the empty one looks spent, and the core's
    // "checked" spend used to panic.
    let mut sim = sim(6);
    let mut x = Hostile::new("x", 6);
    sim.run_for(Duration::from_millis(100));
    let before = sim.node("c").expect("c runs").stats().replays_rejected;
    for (seq, empty) in [(1, false), (2, true), (3, false)] {
        let m = x
            .forge_relay(&sim, "c", "x", seq, &["x", "c"], 64, empty)
            .expect("link key");
        sim.inject("x", "c", m);
        // Delivered in order, within one link block (a block every 20 ms).
        sim.run_for(Duration::from_millis(3));
    }
    sim.run_for(Duration::from_millis(20));
    let c = sim.node("c").expect("c survived").stats();
    assert_eq!(
        c.replays_rejected - before,
        1,
        "only the hop with an empty span is refused"
    );
    exchange_b_to_c(&mut sim, 2);
}

#[test]
fn forged_link_state_adverts_are_dropped_for_their_origins_signature() {
    // x is attached to c. It passes off adverts of b's, d's and a's links (newer than anything
    // they sent, every link up and rich) to c: under the signature of each origin's genuine
    // advert c flooded to x, and with none. c verifies each origin's signature and drops them
    // all; no node comes to hold one, and routes do not move. Without the check c would keep
    // them (and flood them on to every node).
    let mut sim = sim(6);
    let mut x = Hostile::new("x", 6);
    sim.run_for(Duration::from_millis(2500));
    x.listen(&mut sim);
    let before: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| sim.node(n).unwrap().link_adverts_held())
        .collect();
    assert_eq!(before[2].len(), 5, "c holds every honest node's advert");
    let forged = [
        ("b", &["a", "c", "d"][..]),
        ("d", &["c", "e", "b"][..]),
        ("a", &["b"][..]),
    ];
    for (origin, links) in forged {
        let m = x.forge_advert(origin, links);
        assert!(
            matches!(&m, kagi_km::PeerMsg::LinkState { sig, .. } if !sig.is_empty()),
            "x saw {origin}'s signed advert"
        );
        sim.inject("x", "c", m);
        let mut unsigned = x.forge_advert(origin, links);
        if let kagi_km::PeerMsg::LinkState { sig, .. } = &mut unsigned {
            *sig = Vec::new().into();
        }
        sim.inject("x", "c", unsigned);
    }
    sim.run_for(Duration::from_millis(300));
    assert_eq!(
        sim.node("c").unwrap().stats().link_adverts_unauthenticated,
        6
    );
    for n in ["a", "b", "c", "d", "e"] {
        let held = sim.node(n).unwrap().link_adverts_held();
        for (origin, (run, seq)) in &held {
            assert!(
                *run != u64::MAX && *seq != u64::MAX,
                "{n} holds a forged advert of {origin}"
            );
        }
    }
    exchange_b_to_c(&mut sim, 4);
}
