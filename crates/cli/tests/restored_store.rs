//! Real `kagi node` processes on loopback: one node's database is replaced by an older copy, or
//! deleted (a replaced disk), while it is stopped and the rest of the network keeps running
//! (issue 10, "survive lost and restored databases").
//!
//! Every key answered is checked: an ID is never answered twice to a master, no bytes come under
//! two IDs, a slave gets the master's bytes and at most once. Refusals are allowed; keys owed to
//! slaves of the lost or restored store may be gone. The node says what it discarded (log and
//! `/metrics`), and no relay hop fails its tag (link key used twice, or by one end only).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{metric, Nodes};
use kagi_node::client::Etsi014Client;
use kagi_node::etsi014::wire::KeyRequest;
use uuid::Uuid;

fn req(n: u64) -> KeyRequest {
    KeyRequest {
        number: Some(n),
        size: Some(256),
        additional_slave_sae_ids: None,
        extension_mandatory: None,
        extension_optional: None,
    }
}

/// Every key answered so far, checked as it arrives.
#[derive(Default)]
struct Ledger {
    master: BTreeMap<Uuid, Vec<u8>>,
    bytes: BTreeSet<Vec<u8>>,
    fetched: BTreeSet<(Uuid, String)>,
}

impl Ledger {
    fn enc(&mut self, keys: &[(Uuid, Vec<u8>)]) {
        for (id, k) in keys {
            assert!(
                self.master.insert(*id, k.clone()).is_none(),
                "key ID {id} answered twice to a master"
            );
            assert!(self.bytes.insert(k.clone()), "key bytes reused under {id}");
        }
    }

    fn dec(&mut self, slave: &str, keys: &[(Uuid, Vec<u8>)]) {
        for (id, k) in keys {
            assert_eq!(
                self.master.get(id),
                Some(k),
                "{slave} got other bytes than the master for {id}"
            );
            assert!(
                self.fetched.insert((*id, slave.to_string())),
                "{id} served twice to {slave}"
            );
        }
    }
}

fn pairs(keys: &[kagi_km::app::DeliveredKey]) -> Vec<(Uuid, Vec<u8>)> {
    keys.iter()
        .map(|k| (k.id, k.key.expose().to_vec()))
        .collect()
}

async fn enc(l: &mut Ledger, m: &Etsi014Client, slave: &str, n: u64) -> Option<Vec<Uuid>> {
    let keys = pairs(&m.enc_keys(slave, &req(n)).await.ok()?);
    l.enc(&keys);
    Some(keys.iter().map(|(id, _)| *id).collect())
}

async fn dec(l: &mut Ledger, s: &Etsi014Client, slave: &str, master: &str, ids: &[Uuid]) -> bool {
    match s.dec_keys(master, ids).await {
        Ok(keys) => {
            l.dec(slave, &pairs(&keys));
            true
        }
        Err(_) => false,
    }
}

/// Keys `m` → `s` until `want` exchanges succeeded (refusals retried) or `limit` passed;
/// returns how many succeeded.
async fn exchanges(
    l: &mut Ledger,
    (m, master): (&Etsi014Client, &str),
    (s, slave): (&Etsi014Client, &str),
    want: usize,
    limit: Duration,
) -> usize {
    let t = Instant::now();
    let mut done = 0;
    while done < want && t.elapsed() < limit {
        if let Some(ids) = enc(l, m, slave, 2).await {
            // The slave's node may still be starting: retry its side a little.
            for _ in 0..30 {
                if dec(l, s, slave, master, &ids).await {
                    done += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    done
}

/// Both directions a ↔ d, `n` exchanges each.
async fn traffic(l: &mut Ledger, a: &Etsi014Client, d: &Etsi014Client, n: usize) -> usize {
    exchanges(l, (a, "sae-a"), (d, "sae-d"), n, Duration::from_secs(20)).await
        + exchanges(l, (d, "sae-d"), (a, "sae-a"), n, Duration::from_secs(20)).await
}

fn copy_files(files: &[PathBuf], to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in files {
        std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
    }
}

async fn no_bad_tags(net: &Nodes) {
    for n in ["a", "b", "c", "d"] {
        let m = net.metrics(n).await;
        assert_eq!(
            metric(&m, "kagi_relay_bad_tags_total"),
            0.0,
            "{n}: a relay hop failed its tag (link key out of step)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_an_older_copy_serves_nothing_twice_and_says_what_it_discarded() {
    let t = Instant::now();
    let mut net = Nodes::line("restored", &["a", "b", "c", "d"]);
    let (a, d) = (net.client("a"), net.client("d"));
    let mut l = Ledger::default();
    assert!(
        traffic(&mut l, &a, &d, 2).await >= 3,
        "no keys before: {}",
        net.exited()
    );
    // Keys for sae-d that are still unfetched in the copy.
    let pending = enc(&mut l, &a, "sae-d", 2)
        .await
        .expect("enc_keys before the copy");
    net.kill9("d");
    let copy = net.dir.join("copy-of-d");
    copy_files(&net.files_of("d"), &copy);
    net.start("d");
    // Fetched after the copy was taken; then both sides' counters move on.
    let mut fetched = false;
    for _ in 0..100 {
        if dec(&mut l, &d, "sae-d", "sae-a", &pending).await {
            fetched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fetched, "keys held before the restart were not served");
    assert!(
        traffic(&mut l, &a, &d, 3).await >= 4,
        "no keys after copy: {}",
        net.exited()
    );

    // Put the older copy in place of d's database.
    net.kill9("d");
    for f in net.files_of("d") {
        std::fs::remove_file(f).unwrap();
    }
    let data = net.cfg("d").data_dir.clone();
    copy_files(
        &std::fs::read_dir(&copy)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<_>>(),
        &data,
    );
    net.start("d");
    // The keys the copy still holds as unfetched were fetched already: never again.
    let again = Instant::now();
    while again.elapsed() < Duration::from_secs(5) {
        assert!(
            !dec(&mut l, &d, "sae-d", "sae-a", &pending).await,
            "keys fetched before the restore were served again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        traffic(&mut l, &a, &d, 3).await >= 4,
        "no keys after the restore: {}",
        net.exited()
    );
    let m = net.metrics("d").await;
    assert!(
        metric(&m, "kagi_rollbacks_detected_total") >= 1.0,
        "d did not detect its rollback:\n{m}"
    );
    assert!(
        metric(&m, "kagi_slave_keys_discarded_total") >= pending.len() as f64,
        "d did not discard the keys of the copy:\n{m}"
    );
    let log = net.log("d");
    assert!(
        log.contains("restored from a copy?")
            && log.contains("discarded what the restored store held from before the copy"),
        "d's log does not say what it discarded:\n{log}"
    );
    no_bad_tags(&net).await;
    eprintln!(
        "restored: {} keys answered, {} fetched, in {:.1?}",
        l.master.len(),
        l.fetched.len(),
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_database_is_deleted_serves_nothing_twice_and_its_peers_say_so() {
    let t = Instant::now();
    let mut net = Nodes::line("wiped", &["a", "b", "c", "d"]);
    let (a, d) = (net.client("a"), net.client("d"));
    let mut l = Ledger::default();
    assert!(
        traffic(&mut l, &a, &d, 2).await >= 3,
        "no keys before: {}",
        net.exited()
    );
    // Owed to sae-d when the disk goes: lost (allowed), never served with other bytes.
    let pending = enc(&mut l, &a, "sae-d", 2)
        .await
        .expect("enc_keys before the wipe");
    net.kill9("d");
    for f in net.files_of("d") {
        std::fs::remove_file(f).unwrap();
    }
    // A replaced disk: the operator gives d back the link secret c holds (c keeps running).
    let c = [net.cfg("c").clone()];
    let restored =
        kagi_node::seal::links::restore_from_neighbours(&net.topo, net.cfg("d"), &c).unwrap();
    assert_eq!(restored, 1);
    net.start("d");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !dec(&mut l, &d, "sae-d", "sae-a", &pending).await,
        "a wiped node served keys it cannot hold"
    );
    assert!(
        traffic(&mut l, &a, &d, 3).await >= 4,
        "no keys after the wipe: {}",
        net.exited()
    );
    let m = net.metrics("a").await;
    assert!(
        metric(&m, "kagi_peer_stores_replaced_total") >= 1.0,
        "a did not see d's new store:\n{m}"
    );
    assert!(
        net.log("a").contains("peer's store changed"),
        "a's log does not say it discarded what it shared with d"
    );
    no_bad_tags(&net).await;
    eprintln!(
        "wiped: {} keys answered, {} fetched, in {:.1?}",
        l.master.len(),
        l.fetched.len(),
        t.elapsed()
    );
}
