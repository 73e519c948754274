//! Every fault at once over many seeds (see `kagi_sim::chaos`): crashes at any action boundary,
//! power loss, failed store writes, wiped databases and databases restored from an earlier copy,
//! partitions, lost/duplicated/reordered messages and a hostile neighbour. `KAGI_SIM_SEED` / `KAGI_SIM_RUNS` choose the seeds (default: 200 from 1); a
//! failure prints the command that replays its seed.

use kagi_sim::chaos::{self, ChaosConfig, ChaosReport};
use kagi_sim::seeds;

fn run_seeds(first: u64, runs: u64, cfg: &ChaosConfig) -> ChaosReport {
    let mut total = ChaosReport::default();
    let mut failed = Vec::new();
    for seed in seeds(first, runs) {
        let r = match std::panic::catch_unwind(|| chaos::run(seed, cfg)) {
            Ok(r) => r,
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!(
                    "seed {seed}: {why}\n  replay: {}",
                    chaos::replay_hint(seed)
                ));
                continue;
            }
        };
        total.add(&r);
    }
    assert!(
        failed.is_empty(),
        "{} chaos seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    total
}

#[test]
fn every_fault_at_once_keeps_every_key_invariant() {
    let t = std::time::Instant::now();
    let r = run_seeds(1, 200, &ChaosConfig::default());
    eprintln!("chaos: {r:?} in {:.1?}", t.elapsed());
    assert!(r.delivered > 0 && r.fetched > 0, "{r:?}");
    assert!(r.faults.crashes > 0 && r.faults.store_failures > 0, "{r:?}");
    assert!(r.faults.wipes > 0 && r.faults.rollbacks > 0, "{r:?}");
    // Every slave whose reply was lost fetched its keys again within its grace.
    assert!(r.window > 0 && r.window_lost == 0, "{r:?}");
}

/// Without a grace a lost `dec_keys` reply loses its keys for that slave: the oracle allows
/// exactly those refusals (and counts them), and still fails any other.
#[test]
fn without_a_grace_lost_replies_are_counted_not_failed() {
    let cfg = ChaosConfig {
        grace: std::time::Duration::ZERO,
        ..ChaosConfig::default()
    };
    let r = run_seeds(1, 40, &cfg);
    eprintln!("chaos without grace: {r:?}");
    assert!(r.window_lost > 0, "{r:?}");
}

/// Seeds that once failed, kept as regressions.
///
/// 6642: node d, restored from an older copy, applied new assignments, then detected the
/// rollback, but the write of its new identity failed (fenced). Its next start detected the
/// rollback again and discarded every restored slave key, including those applied after the
/// restore that masters already held ("keys not found" at dec_keys). Fixed by tagging slave
/// keys with a persisted run number and by peers reporting the run at which the store forked.
/// (The fix changed the run's messages, so this seed no longer reaches that state:
/// `wiped_store.rs::a_restored_node_fenced_before_its_detection_is_durable_keeps_keys_applied_since`
/// builds it deterministically.) Since link-state adverts changed the routes, the seed no
/// longer restores any store from an older copy at all; it stays as a seed that must pass.
#[test]
fn seeds_that_once_failed_pass() {
    let r = chaos::run(6642, &ChaosConfig::default());
    assert!(r.fetched > 0, "{r:?}");
    // 2059 (found by the long run after the fix above): d's rollback showed only in link key
    // (its neighbour c saw d spend a block d's copy still held unspent), which the peer did not
    // judge yet, so no fork was reported and d discarded keys applied after the restore. `Hello`
    // now carries the sender's lowest transmit block for the same test. Since open
    // assignments are recorded (one more write per remote `enc_keys`) this seed no longer
    // reaches a rollback at all; it runs on as a plain seed.
    let r = chaos::run(2059, &ChaosConfig::default());
    assert!(r.fetched > 0, "{r:?}");
    // 6951: node b's first run after a restore met its peer down; the peer judged only the
    // second run, reported it as the fork, and the keys the first run had applied were
    // discarded though their master held them. Since main moved this seed no longer reaches
    // that state; `wiped_store.rs::a_restored_node_whose_first_run_missed_a_peer_keeps_keys_that_run_applied`
    // builds it deterministically.
    let r = chaos::run(6951, &ChaosConfig::default());
    assert!(r.fetched > 0, "{r:?}");
    // 954: e, restored from a copy taken before it answered masters whose slave node b had
    // applied the assignments, revoked them at its next start (nothing a peer held proved the
    // copy older), and b's dec_keys found no key. A start now revokes only assignments given up
    // before it; `delivery.rs::a_store_restored_from_before_an_answer_never_revokes_the_answered_keys`
    // builds it deterministically.
    let r = chaos::run(954, &ChaosConfig::default());
    assert!(r.fetched > 0, "{r:?}");
}
