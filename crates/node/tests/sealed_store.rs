//! The sealed store end to end: three real nodes in one process serve keys; after they stop, no
//! file under the data directory holds a served key (raw or base64) or a link block's bytes; a
//! byte flipped in a stored slave key is caught at restart and that key is never served.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use kagi_control::Topology;
use kagi_node::config::NodeConfig;
use kagi_node::etsi014::wire::KeyRequest;
use kagi_node::link_source::SimulatedLink;

fn network(dir: &Path) -> (Topology, Vec<NodeConfig>) {
    kagi_node::loopback::line_network(dir, &["a", "b", "c"], 12, 8192, |_| {}).unwrap()
}

type Stop = tokio::sync::watch::Sender<bool>;

fn start(cfgs: &[NodeConfig]) -> (Stop, Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = cfgs
        .iter()
        .map(|cfg| {
            let mut rx = stop_rx.clone();
            tokio::spawn(kagi_node::run_node(cfg.clone(), async move {
                let _ = rx.wait_for(|v| *v).await;
            }))
        })
        .collect();
    (stop_tx, tasks)
}

async fn stop(stop_tx: Stop, tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    let _ = stop_tx.send(true);
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(10), t).await;
        assert!(
            matches!(r, Ok(Ok(Ok(())))),
            "node did not stop cleanly: {r:?}"
        );
    }
}

fn req(n: u64) -> KeyRequest {
    KeyRequest {
        number: Some(n),
        size: Some(256),
        additional_slave_sae_ids: None,
        extension_mandatory: None,
        extension_optional: None,
    }
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_bytes_at_rest_and_a_flipped_byte_is_never_served() {
    let dir = kagi_node::loopback::scratch_dir("sealed").unwrap();
    let (topo, cfgs) = network(&dir);
    let t0 = SystemTime::now();
    let (stop_tx, tasks) = start(&cfgs);
    let master = kagi_node::loopback::sae_client(&dir, &topo, "sae-a").unwrap();
    let slave = kagi_node::loopback::sae_client(&dir, &topo, "sae-c").unwrap();
    let mut ready = false;
    for _ in 0..600 {
        if master
            .status("sae-c")
            .await
            .is_ok_and(|s| s.stored_key_count >= 16)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "pool a→c never filled");
    // Served at both ends.
    let served = master.enc_keys("sae-c", &req(4)).await.expect("enc_keys");
    let ids: Vec<_> = served.iter().map(|k| k.id).collect();
    let back = slave.dec_keys("sae-a", &ids).await.expect("dec_keys");
    assert!(served.iter().zip(&back).all(|(x, y)| x.key == y.key));
    // Served at the master only: c holds these in its store until the slave fetches them.
    let waiting = master.enc_keys("sae-c", &req(4)).await.expect("enc_keys");
    let t1 = SystemTime::now();
    stop(stop_tx, tasks).await;

    // Link blocks that existed during the run (both ends of a–b hold them).
    let ab = topo
        .links
        .iter()
        .find(|l| l.a == "a" && l.b == "b")
        .unwrap();
    // Only a's own sealed store (unsealed with its KEK) gives the link's secret.
    let secret = kagi_node::seal::links::read_node(&cfgs[0]).unwrap()["b"].clone();
    let mut link = SimulatedLink::new(&topo, "a", ab, secret).unwrap();
    let first = link.first_block(None, t0);
    // The newest block that existed at t1.
    let last = link.first_pending(t1).saturating_sub(1);
    assert!(last > first, "no link blocks during the run");
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for n in first..=last {
        let b = link.block(n);
        let b = b.expose();
        let h = b.len() / 2;
        // The tail of each half: spending starts at the front, so these bytes are still held.
        needles.push((format!("link block {n} tx tail"), b[h - 32..h].to_vec()));
        needles.push((
            format!("link block {n} rx tail"),
            b[b.len() - 32..].to_vec(),
        ));
    }
    for k in served.iter().chain(&waiting) {
        let raw = k.key.expose().to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        needles.push((format!("key {} (raw)", k.id), raw));
        needles.push((format!("key {} (base64)", k.id), b64.into_bytes()));
    }
    let mut files = Vec::new();
    all_files(&dir, &mut files);
    assert!(files.iter().any(|f| f.ends_with("c.db")), "{files:?}");
    // One pass per file: look each 16-byte window up among the needles' first 16 bytes.
    let mut by_prefix: std::collections::HashMap<&[u8], Vec<usize>> = Default::default();
    for (i, (_, n)) in needles.iter().enumerate() {
        by_prefix.entry(&n[..16]).or_default().push(i);
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for (at, w) in bytes.windows(16).enumerate() {
            for &i in by_prefix.get(w).map(Vec::as_slice).unwrap_or(&[]) {
                let (what, n) = &needles[i];
                assert!(
                    !bytes[at..].starts_with(n),
                    "{what} found in {}",
                    f.display()
                );
            }
        }
    }

    // Control: the same needles are in the store once unsealed with the node's KEK, so the
    // scan above looks for bytes that really were stored.
    let c_cfg = cfgs.iter().find(|c| c.node_id == "c").unwrap().clone();
    let c_db = c_cfg.data_dir.join("c.db");
    {
        let seals = kagi_node::seal::node::unseal_node(&c_cfg, &c_db, None).unwrap();
        let store = kagi_node::store::SqliteStore::open_sealed(
            &c_db,
            kagi_node::store::Sync::Full,
            seals.store,
        )
        .unwrap();
        let snap = store.snapshot().unwrap();
        let plain: Vec<u8> = snap.records.iter().flat_map(|r| r.encode()).collect();
        assert!(
            waiting.iter().all(|k| contains(&plain, k.key.expose())),
            "keys waiting for the slave are in c's store"
        );
    }

    // Flip one byte of one waiting key's sealed record at c.
    let victim = waiting[0].id;
    {
        let conn = rusqlite::Connection::open(&c_db).unwrap();
        let mut v: Vec<u8> = conn
            .query_row(
                "SELECT v FROM records WHERE kind = 'slave_key' AND k = ?1",
                [victim.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        let i = v.len() / 2;
        v[i] ^= 0x20;
        conn.execute(
            "UPDATE records SET v = ?2 WHERE kind = 'slave_key' AND k = ?1",
            rusqlite::params![victim.to_string(), v],
        )
        .unwrap();
    }
    let (stop_tx, tasks) = start(&cfgs);
    let slave = kagi_node::loopback::sae_client(&dir, &topo, "sae-c").unwrap();
    let rest: Vec<_> = waiting[1..].iter().map(|k| k.id).collect();
    let mut got = None;
    for _ in 0..100 {
        match slave.dec_keys("sae-a", &rest).await {
            Ok(k) => {
                got = Some(k);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let got = got.expect("the intact waiting keys are still served after the restart");
    assert!(got.iter().zip(&waiting[1..]).all(|(x, y)| x.key == y.key));
    assert!(
        slave.dec_keys("sae-a", &[victim]).await.is_err(),
        "a key whose record failed authentication was served"
    );
    stop(stop_tx, tasks).await;
    let conn = rusqlite::Connection::open(&c_db).unwrap();
    let q: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM quarantine WHERE kind = 'slave_key' AND k = ?1",
            [victim.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(q, 1, "the record is quarantined");
    let _ = std::fs::remove_dir_all(&dir);
}
