//! Delivery windows (issue 10, item 6): a `dec_keys` reply that never reaches its slave leaves
//! the key fetchable again by that same slave, with the same bytes, until its grace ends; then
//! the key is erased. Another SAE never gets it. The grace survives a restart of the slave's
//! node. The oracle checks every answer the applications read (same ID → same bytes, at most
//! once per side); replies dropped with [`Sim::call_losing_reply`] count as never received.

use std::time::Duration;

use kagi_control::Topology;
use kagi_km::{AppCall, AppReply, DeliveredKey, Policy, Refusal};
use kagi_sim::{Faults, LinkSupply, Sim};
use uuid::Uuid;

fn sim(grace: Duration) -> Sim {
    let mut t = Topology::line("t", &["a", "b", "c", "d"], 20.0, |n| {
        vec![format!("sae-{n}"), format!("sae-{n}2")]
    });
    t.seed = 3;
    let policy = Policy {
        pool_target_bytes: 4 * 1024,
        relay_chunk_bytes: 512,
        slave_grace: grace,
        ..Policy::default()
    };
    let supply = LinkSupply {
        interval: Duration::from_millis(20),
        block_bytes: 8 * 1024,
    };
    let mut sim = Sim::new(t, 1, Faults::default(), supply, policy);
    sim.run_for(Duration::from_millis(1500));
    sim
}

/// Two keys at `a` for `sae-d` (and `extra` slaves).
fn master_keys(sim: &mut Sim, extra: &[&str]) -> Vec<DeliveredKey> {
    for _ in 0..50 {
        let req = sim.call(
            "a",
            AppCall::EncKeys {
                master: "sae-a".into(),
                slave: "sae-d".into(),
                number: Some(2),
                size_bits: None,
                additional_slaves: extra.iter().map(|s| s.to_string()).collect(),
                route: None,
            },
        );
        match sim
            .run_until_answered(req, Duration::from_secs(10))
            .map(|a| a.reply)
        {
            Some(Ok(AppReply::Keys(k))) => return k,
            _ => sim.run_for(Duration::from_millis(200)),
        }
    }
    panic!("a never served keys for sae-d");
}

fn dec(slave: &str, ids: &[Uuid]) -> AppCall {
    AppCall::DecKeys {
        slave: slave.into(),
        master: "sae-a".into(),
        key_ids: ids.to_vec(),
    }
}

/// `dec_keys` at `node` whose reply the slave never reads; returns what the node answered.
fn fetch_lost(sim: &mut Sim, node: &str, slave: &str, ids: &[Uuid]) -> Result<AppReply, Refusal> {
    let req = sim.call_losing_reply(node, dec(slave, ids));
    sim.run_until_answered(req, Duration::from_secs(5))
        .expect("answered")
        .reply
}

/// `dec_keys` at `node` whose reply the slave reads (the oracle checks it).
fn fetch(sim: &mut Sim, node: &str, slave: &str, ids: &[Uuid]) -> Result<AppReply, Refusal> {
    let req = sim.call(node, dec(slave, ids));
    sim.run_until_answered(req, Duration::from_secs(5))
        .expect("answered")
        .reply
}

fn same_keys(got: Result<AppReply, Refusal>, want: &[DeliveredKey], what: &str) {
    let Ok(AppReply::Keys(got)) = got else {
        panic!("{what}: {got:?}")
    };
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.id, w.id, "{what}");
        assert!(g.key == w.key, "{what}: other bytes for key {}", g.id);
    }
}

fn not_found(r: Result<AppReply, Refusal>, what: &str) {
    assert_eq!(
        r.err(),
        Some(Refusal::BadRequest(Refusal::KEYS_NOT_FOUND.into())),
        "{what}"
    );
}

fn ids(k: &[DeliveredKey]) -> Vec<Uuid> {
    k.iter().map(|k| k.id).collect()
}

/// Two keys from `a` for `sae-d`, fetched once by `sae-d` at `d` with that reply lost (it must
/// carry the master's bytes); returns the keys and their IDs.
fn fetched_once_reply_lost(sim: &mut Sim) -> (Vec<DeliveredKey>, Vec<Uuid>) {
    let keys = master_keys(sim, &[]);
    let ids = ids(&keys);
    same_keys(fetch_lost(sim, "d", "sae-d", &ids), &keys, "first fetch");
    (keys, ids)
}

#[test]
fn a_slave_whose_reply_was_lost_fetches_the_same_keys_again_within_its_grace() {
    let mut sim = sim(Duration::from_secs(60));
    let (keys, ids) = fetched_once_reply_lost(&mut sim);
    sim.run_for(Duration::from_secs(30));
    same_keys(fetch(&mut sim, "d", "sae-d", &ids), &keys, "fetch again");
    let st = sim.node("d").unwrap().stats();
    assert_eq!((st.keys_served_slave, st.slave_refetches), (2, 2));
    // Once the grace ends the key is erased.
    sim.run_for(Duration::from_secs(31));
    not_found(
        fetch_lost(&mut sim, "d", "sae-d", &ids),
        "a fetch after the grace",
    );
    assert_eq!(sim.node("d").unwrap().stats().graces_ended, 2);
}

#[test]
fn another_sae_never_gets_a_key_in_its_slaves_grace() {
    let mut sim = sim(Duration::from_secs(60));
    let (keys, ids) = fetched_once_reply_lost(&mut sim);
    let r = fetch(&mut sim, "d", "sae-d2", &ids);
    assert!(
        matches!(r, Err(Refusal::Unauthorized(_))),
        "another SAE at the slave's node: {r:?}"
    );
    let r = fetch(&mut sim, "c", "sae-c", &ids);
    assert!(
        matches!(r, Err(Refusal::BadRequest(_))),
        "an SAE at another node: {r:?}"
    );
    // The master cannot fetch it as a slave either.
    let r = fetch(&mut sim, "a", "sae-a", &ids);
    assert!(r.is_err(), "the master as slave: {r:?}");
    same_keys(
        fetch(&mut sim, "d", "sae-d", &ids),
        &keys,
        "the slave again",
    );
}

#[test]
fn the_grace_ends_and_the_key_is_erased_even_across_a_restart() {
    let mut sim = sim(Duration::from_secs(2));
    let (_, ids) = fetched_once_reply_lost(&mut sim);
    sim.run_for(Duration::from_secs(3));
    not_found(fetch_lost(&mut sim, "d", "sae-d", &ids), "after the grace");
    assert_eq!(sim.node("d").unwrap().stats().graces_ended, 2);
    // The erasure is durable.
    sim.crash("d");
    sim.restart("d");
    sim.run_for(Duration::from_millis(500));
    not_found(
        fetch_lost(&mut sim, "d", "sae-d", &ids),
        "after the grace and a restart",
    );
}

#[test]
fn a_slave_fetches_again_after_its_node_restarts() {
    let mut sim = sim(Duration::from_secs(2));
    let (keys, ids) = fetched_once_reply_lost(&mut sim);
    // The node was down longer than the grace: the grace counts again from its start.
    sim.crash("d");
    sim.run_for(Duration::from_secs(5));
    sim.restart("d");
    sim.run_for(Duration::from_secs(1));
    same_keys(
        fetch(&mut sim, "d", "sae-d", &ids),
        &keys,
        "fetch after the restart",
    );
    sim.run_for(Duration::from_secs(2));
    not_found(
        fetch_lost(&mut sim, "d", "sae-d", &ids),
        "after the restarted grace",
    );
}

#[test]
fn a_crash_between_commit_and_reply_leaves_the_keys_fetchable() {
    let mut sim = sim(Duration::from_secs(60));
    let keys = master_keys(&mut sim, &[]);
    let ids = ids(&keys);
    // The node crashes at its next action: the answer released by the durable write (or,
    // if something else comes first, before the commit). Either way the slave gets the keys.
    let req = sim.call("d", dec("sae-d", &ids));
    sim.crash_after_actions("d", 0);
    let r = sim
        .run_until_answered(req, Duration::from_secs(5))
        .expect("answered")
        .reply;
    assert!(matches!(r, Err(Refusal::Unavailable(_))), "{r:?}");
    sim.restart("d");
    sim.run_for(Duration::from_secs(1));
    same_keys(
        fetch(&mut sim, "d", "sae-d", &ids),
        &keys,
        "fetch after the crash",
    );
}

#[test]
fn each_slave_of_a_multicast_key_has_its_own_grace() {
    let mut sim = sim(Duration::from_secs(5));
    let keys = master_keys(&mut sim, &["sae-d2"]);
    let ids = ids(&keys);
    same_keys(fetch_lost(&mut sim, "d", "sae-d", &ids), &keys, "sae-d");
    sim.run_for(Duration::from_secs(3));
    same_keys(fetch_lost(&mut sim, "d", "sae-d2", &ids), &keys, "sae-d2");
    sim.run_for(Duration::from_secs(3));
    // sae-d's grace ended, sae-d2's did not: the key is kept for sae-d2 only.
    not_found(
        fetch_lost(&mut sim, "d", "sae-d", &ids),
        "sae-d after its grace",
    );
    same_keys(fetch(&mut sim, "d", "sae-d2", &ids), &keys, "sae-d2 again");
    sim.run_for(Duration::from_secs(3));
    not_found(
        fetch_lost(&mut sim, "d", "sae-d2", &ids),
        "sae-d2 after its grace",
    );
    assert_eq!(sim.node("d").unwrap().stats().graces_ended, 2);
}

#[test]
fn with_no_grace_a_fetched_key_is_gone_at_once() {
    let mut sim = sim(Duration::ZERO);
    let (_, ids) = fetched_once_reply_lost(&mut sim);
    not_found(fetch_lost(&mut sim, "d", "sae-d", &ids), "a second fetch");
}

fn sim_with_lifetime(life: Duration) -> Sim {
    let mut t = Topology::line("t", &["a", "b", "c", "d"], 20.0, |n| {
        vec![format!("sae-{n}"), format!("sae-{n}2")]
    });
    t.seed = 3;
    let policy = Policy {
        pool_target_bytes: 4 * 1024,
        relay_chunk_bytes: 512,
        slave_grace: Duration::from_secs(60),
        slave_key_lifetime: life,
        ..Policy::default()
    };
    let supply = LinkSupply {
        interval: Duration::from_millis(20),
        block_bytes: 8 * 1024,
    };
    let mut sim = Sim::new(t, 1, Faults::default(), supply, policy);
    sim.run_for(Duration::from_millis(1500));
    sim
}

#[test]
fn a_key_no_slave_fetches_expires_counted_per_origin_even_across_a_restart() {
    let mut sim = sim_with_lifetime(Duration::from_secs(4));
    let keys = master_keys(&mut sim, &["sae-d2"]);
    let ids = ids(&keys);
    // sae-d fetches (its reply lost, so it is in its grace); sae-d2 never comes.
    same_keys(fetch_lost(&mut sim, "d", "sae-d", &ids), &keys, "sae-d");
    // A restart of d counts the lifetime again from its start.
    sim.run_for(Duration::from_secs(2));
    sim.crash("d");
    sim.restart("d");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.node("d").unwrap().stats().slave_keys_expired, 0);
    sim.run_for(Duration::from_secs(2));
    let d = sim.node("d").unwrap().km_status();
    assert_eq!(d.stats.slave_keys_expired, 2, "{:?}", d.stats);
    let from_a = d.pools.iter().find(|p| p.peer == "a").unwrap();
    assert_eq!(from_a.slave_keys_expired, 2);
    assert!(d
        .pools
        .iter()
        .filter(|p| p.peer != "a")
        .all(|p| p.slave_keys_expired == 0));
    not_found(
        fetch_lost(&mut sim, "d", "sae-d2", &ids),
        "sae-d2 after the lifetime",
    );
    // sae-d's grace outlives the lifetime: it may still fetch again.
    same_keys(
        fetch(&mut sim, "d", "sae-d", &ids),
        &keys,
        "sae-d in its grace",
    );
    // Expiry is durable.
    sim.crash("d");
    sim.restart("d");
    sim.run_for(Duration::from_millis(500));
    not_found(
        fetch_lost(&mut sim, "d", "sae-d2", &ids),
        "sae-d2 after a restart",
    );
}

#[test]
fn a_key_fetched_in_time_never_expires_for_its_slave() {
    let mut sim = sim_with_lifetime(Duration::from_secs(3));
    let keys = master_keys(&mut sim, &[]);
    sim.run_for(Duration::from_secs(2));
    same_keys(fetch(&mut sim, "d", "sae-d", &ids(&keys)), &keys, "in time");
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.node("d").unwrap().stats().slave_keys_expired, 0);
}

#[test]
fn a_key_no_slave_fetches_expires() {
    let mut sim = sim_with_lifetime(Duration::from_secs(3));
    let keys = master_keys(&mut sim, &[]);
    sim.run_for(Duration::from_secs(4));
    assert_eq!(sim.node("d").unwrap().stats().slave_keys_expired, 2);
    not_found(
        fetch_lost(&mut sim, "d", "sae-d", &ids(&keys)),
        "after the lifetime",
    );
}

/// `enc_keys` at `a` for `sae-d`, answered within `limit` (or not).
fn enc_once(sim: &mut Sim, limit: Duration) -> Option<Result<AppReply, Refusal>> {
    let req = enc_request(sim);
    sim.run_until_answered(req, limit).map(|a| a.reply)
}

/// Sends `enc_keys` for 2 keys at `a` for `sae-d` and returns the request to wait on.
fn enc_request(sim: &mut Sim) -> u64 {
    sim.call(
        "a",
        AppCall::EncKeys {
            master: "sae-a".into(),
            slave: "sae-d".into(),
            number: Some(2),
            size_bits: None,
            additional_slaves: vec![],
            route: None,
        },
    )
}

fn held(sim: &Sim, node: &str) -> usize {
    sim.node(node).unwrap().slave_keys_held()
}

/// d's confirmations to a, and a's revokes to d, are lost.
fn acks_and_revokes_to_and_from_d(from: &str, to: &str, m: &kagi_km::PeerMsg) -> bool {
    use kagi_km::PeerMsg;
    (from == "d" && to == "a" && matches!(m, PeerMsg::AssignAck { .. }))
        || (from == "a" && to == "d" && matches!(m, PeerMsg::Revoke { .. }))
}

fn d_confirms_to_a(from: &str, to: &str, m: &kagi_km::PeerMsg) -> bool {
    from == "d" && to == "a" && matches!(m, kagi_km::PeerMsg::AssignAck { .. })
}

#[test]
fn a_lost_revoke_is_sent_again_until_acknowledged_and_the_slaves_keys_go() {
    let mut sim = sim(Duration::from_secs(60));
    master_keys(&mut sim, &[]);
    let before = held(&sim, "d");
    // d applies the assignment but a never hears so: a gives up after its assign timeout and
    // revokes, and the revokes are lost too.
    sim.drop_messages(acks_and_revokes_to_and_from_d, u32::MAX);
    let r = enc_once(&mut sim, Duration::from_secs(10)).expect("answered");
    assert!(matches!(r, Err(Refusal::Unavailable(_))), "{r:?}");
    assert_eq!(held(&sim, "d"), before + 2, "d applied the assignment");
    assert_eq!(sim.node("a").unwrap().revokes_open(), 1);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(held(&sim, "d"), before + 2, "every revoke so far was lost");
    let resent = sim.node("a").unwrap().stats().revokes_resent;
    assert!(resent >= 2, "a re-sends its revoke: {resent}");
    // The network delivers again: the next re-send (back-off at most a few seconds here)
    // reaches d, which drops the keys and acknowledges; a forgets the revocation.
    sim.drop_messages(acks_and_revokes_to_and_from_d, 0);
    sim.run_for(Duration::from_secs(6));
    assert_eq!(held(&sim, "d"), before, "the orphaned keys are gone at d");
    assert_eq!(sim.node("d").unwrap().stats().slave_keys_revoked, 2);
    assert_eq!(sim.node("a").unwrap().revokes_open(), 0, "acknowledged");
    // The revocation is over for good: nothing is re-sent any more.
    let resent = sim.node("a").unwrap().stats().revokes_resent;
    sim.run_for(Duration::from_secs(40));
    assert_eq!(sim.node("a").unwrap().stats().revokes_resent, resent);
}

#[test]
fn a_restart_of_the_masters_node_leaves_an_unanswered_assignment_to_the_key_lifetime() {
    let mut sim = sim_with_lifetime(Duration::from_secs(10));
    master_keys(&mut sim, &[]);
    let before = held(&sim, "d");
    // d applies an assignment whose confirmation a never gets; a crashes before answering.
    sim.drop_messages(d_confirms_to_a, u32::MAX);
    assert!(enc_once(&mut sim, Duration::from_millis(300)).is_none());
    assert_eq!(held(&sim, "d"), before + 2, "d applied the assignment");
    sim.crash("a");
    sim.drop_messages(d_confirms_to_a, 0);
    sim.run_for(Duration::from_millis(500));
    sim.restart("a");
    // The restarted store cannot tell itself from a copy taken before an answer its original
    // gave (see the next test): the orphans stay, and their lifetime ends them.
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        held(&sim, "d"),
        before + 2,
        "the orphans wait for their lifetime"
    );
    assert_eq!(sim.node("d").unwrap().stats().slave_keys_revoked, 0);
    assert_eq!(sim.node("a").unwrap().revokes_open(), 0);
    sim.run_for(Duration::from_secs(8));
    assert_eq!(held(&sim, "d"), 0, "every unfetched key expired");
    assert!(sim.node("d").unwrap().stats().slave_keys_expired >= 2);
    // The network still serves.
    master_keys(&mut sim, &[]);
    assert_eq!(held(&sim, "d"), 2);
}

/// Chaos seeds 954 and 3380: a store copied after its slave node applied an assignment and
/// before the master was answered, then restored after the answer. No peer saw anything of the
/// original after the copy, so nothing proves the copy older; revoking the assignment at the
/// next start (as a crash before the answer once did) lost the keys the master had.
#[test]
fn a_store_restored_from_before_an_answer_never_revokes_the_answered_keys() {
    let mut sim = sim(Duration::from_secs(60));
    master_keys(&mut sim, &[]);
    let before = held(&sim, "d");
    // d's first confirmation is lost: d holds the keys, a waits and sends the assignment again.
    sim.drop_messages(d_confirms_to_a, 1);
    let req = enc_request(&mut sim);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(held(&sim, "d"), before + 2, "d applied the assignment");
    let copy = sim.backup("a");
    let Some(Ok(AppReply::Keys(keys))) = sim
        .run_until_answered(req, Duration::from_secs(5))
        .map(|a| a.reply)
    else {
        panic!("a answered its master with keys after d confirmed again");
    };
    sim.restore_copy("a", &copy);
    sim.run_for(Duration::from_millis(100));
    sim.restart("a");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        sim.node("a").unwrap().stats().rollbacks_detected,
        0,
        "nothing proves it"
    );
    assert_eq!(
        sim.node("d").unwrap().stats().slave_keys_revoked,
        0,
        "d revoked keys a's master holds"
    );
    same_keys(
        fetch(&mut sim, "d", "sae-d", &ids(&keys)),
        &keys,
        "after a's restore",
    );
}

/// An assignment given up before a restart is still revoked after it: its record is durable
/// before the first `Revoke` goes, and a given-up assignment was never answered with keys.
#[test]
fn a_revoke_given_up_on_before_a_restart_goes_on_after_it() {
    let mut sim = sim(Duration::from_secs(60));
    master_keys(&mut sim, &[]);
    let before = held(&sim, "d");
    sim.drop_messages(acks_and_revokes_to_and_from_d, u32::MAX);
    let r = enc_once(&mut sim, Duration::from_secs(10)).expect("answered");
    assert!(matches!(r, Err(Refusal::Unavailable(_))), "{r:?}");
    assert_eq!(held(&sim, "d"), before + 2, "d applied the assignment");
    // The revocation is durable soon after the refusal (the crash comes after that write).
    sim.run_for(Duration::from_millis(100));
    sim.crash("a");
    sim.drop_messages(acks_and_revokes_to_and_from_d, 0);
    sim.run_for(Duration::from_millis(300));
    sim.restart("a");
    assert_eq!(sim.node("a").unwrap().revokes_open(), 1, "restored");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(held(&sim, "d"), before, "the orphaned keys are gone at d");
    assert_eq!(sim.node("d").unwrap().stats().slave_keys_revoked, 2);
    assert_eq!(sim.node("a").unwrap().revokes_open(), 0, "acknowledged");
}

#[test]
fn an_answered_assignment_is_never_revoked_by_a_restart() {
    let mut sim = sim(Duration::from_secs(60));
    let keys = master_keys(&mut sim, &[]);
    sim.crash("a");
    sim.run_for(Duration::from_millis(300));
    sim.restart("a");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.node("d").unwrap().stats().slave_keys_revoked, 0);
    same_keys(
        fetch(&mut sim, "d", "sae-d", &ids(&keys)),
        &keys,
        "after a's restart",
    );
}
