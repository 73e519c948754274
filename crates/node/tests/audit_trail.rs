//! The audit trail on real nodes (X.1712 ACC.1–3): three nodes in one process serve keys over
//! real TLS and SQLite, stop, and `verify_path` checks every trail, its ML-DSA-65 checkpoints and
//! the neighbours' witnessed copies. Then copies of a trail are edited, cut, reordered and have
//! entries deleted or a checkpoint swapped: each is named. A node whose trail was edited refuses
//! to start. A driver whose trail cannot be written refuses keys with 503 (fail closed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kagi_control::Topology;
use kagi_km::{AppCall, Refusal};
use kagi_node::audit::verify::{check_file, verify_path};
use kagi_node::audit::{self, Entry};
use kagi_node::config::NodeConfig;
use kagi_node::etsi014::wire::KeyRequest;
use kagi_node::service::KeyService;

fn network(dir: &Path) -> (Topology, Vec<NodeConfig>) {
    kagi_node::loopback::line_network(dir, &["a", "b", "c"], 5, 4096, |_| {}).unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.iter().map(|x| format!("{x}\n")).collect::<String>()).unwrap();
}

/// A copy of the data directory's trails and public keys in a fresh directory.
fn copy_trails(from: &Path, tag: &str) -> PathBuf {
    let to = kagi_node::loopback::scratch_dir(tag).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with("-audit.jsonl") || n.ends_with("-audit.pub") {
            std::fs::copy(e.path(), to.join(&n)).unwrap();
        }
    }
    to
}

fn first_problem(dir: &Path, node: &str) -> Option<(u64, String)> {
    verify_path(dir)
        .into_iter()
        .find(|r| r.node == node)
        .expect("trail found")
        .problem
        .map(|p| (p.line, p.why))
}

fn checkpoint_lines(l: &[String]) -> Vec<usize> {
    l.iter()
        .enumerate()
        .filter(|(_, x)| {
            serde_json::from_str::<Entry>(x)
                .unwrap()
                .checkpoint
                .is_some()
        })
        .map(|(i, _)| i)
        .collect()
}

async fn run_network(dir: &Path) -> (Topology, Vec<NodeConfig>, Vec<Vec<u8>>) {
    let (topo, cfgs) = network(dir);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for cfg in cfgs.clone() {
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(kagi_node::run_node(cfg, async move {
            let _ = rx.wait_for(|v| *v).await;
        })));
    }
    let master = kagi_node::loopback::sae_client(dir, &topo, "sae-a").unwrap();
    let slave = kagi_node::loopback::sae_client(dir, &topo, "sae-c").unwrap();
    let mut ready = false;
    for _ in 0..600 {
        if let Ok(s) = master.status("sae-c").await {
            if s.stored_key_count >= 4 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "pool a→c never filled");
    let req = KeyRequest {
        number: Some(2),
        size: Some(256),
        additional_slave_sae_ids: None,
        extension_mandatory: None,
        extension_optional: None,
    };
    let keys = master.enc_keys("sae-c", &req).await.expect("enc_keys");
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    slave.dec_keys("sae-a", &ids).await.expect("dec_keys");
    // A refusal is audited too (an unknown key ID).
    assert!(slave
        .dec_keys("sae-a", &[uuid::Uuid::from_u128(7)])
        .await
        .is_err());
    // Let a timed checkpoint (10 s) pass so that neighbours witness one mid-run.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(10), t).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "node stopped with {r:?}");
    }
    let served = keys.iter().map(|k| k.key.expose().to_vec()).collect();
    (topo, cfgs, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trails_verify_and_every_tamper_is_named() {
    let dir = kagi_node::loopback::scratch_dir("audit-net").unwrap();
    let (_topo, cfgs, served) = run_network(&dir).await;
    let db = dir.join("db");

    // --- A clean run verifies; every node ends with a checkpoint; b witnessed a and c.
    let reports = verify_path(&dir);
    assert_eq!(reports.len(), 3, "{reports:?}");
    for r in &reports {
        assert!(r.problem.is_none(), "{}: {:?}", r.node, r.problem);
        assert!(r.checkpoints >= 2, "{}: {r:?}", r.node);
        assert_eq!(
            r.uncovered, 0,
            "{}: a clean stop ends on a checkpoint",
            r.node
        );
    }
    let b = reports.iter().find(|r| r.node == "b").unwrap();
    let origins: Vec<&str> = b.witnessed.iter().map(|w| w.origin.as_str()).collect();
    assert!(
        origins.contains(&"a") && origins.contains(&"c"),
        "{origins:?}"
    );
    let a_trail = audit::trail_path(&db, "a");
    let a_lines = lines(&a_trail);
    let text = a_lines.join("\n");
    for ev in [
        "seal.unseal",
        "node.start",
        "keys.enc",
        "link.block_in",
        "node.stop",
    ] {
        assert!(
            text.contains(&format!("\"event\":\"{ev}\"")),
            "{ev} missing"
        );
    }
    // Relay-internal events, aggregated (`relay.summary`, at most one line per 10 s and one at
    // the stop): a started relays to c, b forwarded their hops, c received them.
    let summed = |node: &str, field: &str| -> u64 {
        lines(&audit::trail_path(&db, node))
            .iter()
            .map(|l| serde_json::from_str::<Entry>(l).unwrap())
            .filter(|e| e.event == "relay.summary")
            .flat_map(|e| {
                e.detail
                    .split(' ')
                    .filter_map(|kv| kv.strip_prefix(&format!("{field}=")).map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .map(|v| v.parse::<u64>().unwrap())
            .sum()
    };
    assert!(summed("a", "started") > 0, "a's relays not in its trail");
    assert!(
        summed("b", "forwarded") > 0,
        "b's forwarded hops not in its trail"
    );
    assert!(
        summed("c", "received") > 0,
        "c's received relays not in its trail"
    );
    assert!(
        summed("a", "acked") > 0,
        "a's acknowledged relays not in its trail"
    );
    let c_text = std::fs::read_to_string(audit::trail_path(&db, "c")).unwrap();
    assert!(c_text.contains(
        "\"event\":\"keys.dec\",\"actor\":\"sae-c\",\"target\":\"sae-a\",\"outcome\":\"refused\""
    ));
    // No key bytes in any trail (raw, base64, hex).
    for k in &served {
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        let hex = audit::hex(k);
        for n in ["a", "b", "c"] {
            let raw = std::fs::read(audit::trail_path(&db, n)).unwrap();
            let s = String::from_utf8_lossy(&raw);
            assert!(!raw.windows(k.len()).any(|w| w == &k[..]), "raw key in {n}");
            assert!(!s.contains(&b64) && !s.contains(&hex), "encoded key in {n}");
        }
    }

    // --- Edit: entry 3's detail changed → entry 3 named.
    let d = copy_trails(&db, "audit-edit");
    let mut l = a_lines.clone();
    l[2] = l[2].replacen("\"outcome\":\"ok\"", "\"outcome\":\"refused\"", 1);
    assert_ne!(l[2], a_lines[2]);
    write_lines(&audit::trail_path(&d, "a"), &l);
    let (line, why) = first_problem(&d, "a").expect("edit detected");
    assert_eq!(line, 3, "{why}");
    assert!(why.contains("altered"), "{why}");

    // --- Deletion of entry 4 → named at line 4.
    let mut l = a_lines.clone();
    l.remove(3);
    write_lines(&audit::trail_path(&d, "a"), &l);
    let (line, why) = first_problem(&d, "a").expect("deletion detected");
    assert_eq!(line, 4, "{why}");
    assert!(why.contains("deleted"), "{why}");

    // --- Reordering entries 4 and 5.
    let mut l = a_lines.clone();
    l.swap(3, 4);
    write_lines(&audit::trail_path(&d, "a"), &l);
    let (line, why) = first_problem(&d, "a").expect("reorder detected");
    assert_eq!(line, 4, "{why}");

    // --- A checkpoint's signature swapped for another checkpoint's.
    let cps = checkpoint_lines(&a_lines);
    assert!(cps.len() >= 2);
    let mut l = a_lines.clone();
    let mut e0: Entry = serde_json::from_str(&l[cps[0]]).unwrap();
    let e1: Entry = serde_json::from_str(&l[cps[1]]).unwrap();
    e0.checkpoint = e1.checkpoint.clone();
    l[cps[0]] = serde_json::to_string(&e0).unwrap();
    write_lines(&audit::trail_path(&d, "a"), &l);
    let (line, why) = first_problem(&d, "a").expect("swapped checkpoint detected");
    assert!(
        line as usize == cps[0] + 1 || why.contains("signature"),
        "{line}: {why}"
    );

    // --- Truncation after a checkpoint the neighbour witnessed: only b's copy tells.
    let witnessed_a: Vec<u64> = b
        .witnessed
        .iter()
        .filter(|w| w.origin == "a")
        .map(|w| w.seq)
        .collect();
    let last_witnessed = *witnessed_a.iter().max().expect("b witnessed a") as usize;
    // Cut just before that checkpoint: what is left chains and verifies on its own.
    let l: Vec<String> = a_lines[..last_witnessed - 1].to_vec();
    write_lines(&audit::trail_path(&d, "a"), &l);
    let alone = check_file(&audit::trail_path(&d, "a"));
    assert!(alone.problem.is_none(), "the cut trail alone looks whole");
    let (_, why) = first_problem(&d, "a").expect("truncation detected via the witness");
    assert!(why.contains("witnessed"), "{why}");
    let _ = std::fs::remove_dir_all(&d);

    // --- A node whose trail was edited refuses to start, naming the entry.
    let mut l = a_lines.clone();
    l[4] = l[4].replacen("\"time_ms\":", "\"time_ms\":1", 1);
    write_lines(&a_trail, &l);
    let cfg_a = cfgs.iter().find(|c| c.node_id == "a").unwrap().clone();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        kagi_node::run_node(cfg_a, async {}),
    )
    .await
    .expect("start refused promptly")
    .expect_err("a tampered trail must refuse the start");
    assert!(
        err.to_string().contains("does not verify at line 5"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_delivery_stops_when_the_trail_cannot_be_written() {
    let dir = kagi_node::loopback::scratch_dir("audit-closed").unwrap();
    let (topo, cfgs) = network(&dir);
    let cfg = cfgs[0].clone();
    let topo = Arc::new(topo);
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let db = cfg.data_dir.join("a.db");
    let seals = kagi_node::seal::node::unseal_node(&cfg, &db, None).unwrap();
    let trail = Arc::new(
        audit::AuditTrail::open(
            &audit::trail_path(&cfg.data_dir, "a"),
            "a",
            seals.audit_signer.clone(),
            audit::Policy::default(),
        )
        .unwrap(),
    );
    let driver = kagi_node::driver::Driver::new(
        kagi_node::driver::km_config(&cfg, topo),
        &db,
        cfg.store.synchronous,
        seals.store.clone(),
    )
    .with_audit(trail.clone());
    let handle = driver.handle();
    let peers = kagi_node::peer::Peers::start(
        Vec::new(),
        kagi_node::tls::peer_client_config(&cfg.tls).unwrap(),
        handle.inbox(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(driver.run(peers, async move {
        let _ = stop_rx.await;
    }));
    let status = || AppCall::Status {
        master: "sae-a".into(),
        slave: "sae-b".into(),
    };
    handle
        .call(status())
        .await
        .expect("served while the trail is writable");
    trail.inject_write_fault();
    // The answer that cannot be audited is withheld...
    let r = handle.call(status()).await;
    assert!(
        matches!(&r, Err(Refusal::Unavailable(m)) if m.contains("audit trail")),
        "{r:?}"
    );
    // ...and nothing is served afterwards.
    let r = handle.call(status()).await;
    assert!(
        matches!(&r, Err(Refusal::Unavailable(m)) if m.contains("key delivery is stopped")),
        "{r:?}"
    );
    let _ = stop_tx.send(());
    let _ = task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The erase is recorded and checkpointed before anything is destroyed: with a trail that
/// cannot be written the erase is refused, naming the trail, and the store, its wrapped data key
/// and the key file are all still there (the node stays fenced, its keys gone from memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erase_the_trail_cannot_record_destroys_nothing() {
    let dir = kagi_node::loopback::scratch_dir("audit-erase").unwrap();
    let (topo, cfgs) = network(&dir);
    let cfg = cfgs[0].clone();
    let topo = Arc::new(topo);
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let db = cfg.data_dir.join("a.db");
    let seals = kagi_node::seal::node::unseal_node(&cfg, &db, None).unwrap();
    let trail = Arc::new(
        audit::AuditTrail::open(
            &audit::trail_path(&cfg.data_dir, "a"),
            "a",
            seals.audit_signer.clone(),
            audit::Policy::default(),
        )
        .unwrap(),
    );
    let driver = kagi_node::driver::Driver::new(
        kagi_node::driver::km_config(&cfg, topo),
        &db,
        cfg.store.synchronous,
        seals.store.clone(),
    )
    .with_audit(trail.clone())
    .with_erase(kagi_node::seal::erase::EraseTargets::for_node(&cfg));
    let handle = driver.handle();
    let peers = kagi_node::peer::Peers::start(
        Vec::new(),
        kagi_node::tls::peer_client_config(&cfg.tls).unwrap(),
        handle.inbox(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(driver.run(peers, async move {
        let _ = stop_rx.await;
    }));
    let key_file = std::fs::read_dir(&cfg.data_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "kek"))
        .expect("a key file");
    trail.inject_write_fault();
    let r = handle.erase("test-operator", "erase a").await;
    assert!(
        matches!(&r, Some(Err(m)) if m.contains("nothing was erased") && m.contains("audit trail")),
        "{r:?}"
    );
    // Fenced all the same.
    let r = handle
        .call(AppCall::Status {
            master: "sae-a".into(),
            slave: "sae-b".into(),
        })
        .await;
    assert!(matches!(&r, Err(Refusal::Unavailable(_))), "{r:?}");
    let _ = stop_tx.send(());
    let _ = task.await;
    // Nothing destroyed: the key file is there and still unwraps the store's data key.
    assert!(key_file.exists(), "key file removed by an unaudited erase");
    kagi_node::seal::node::unseal_node(&cfg, &db, None)
        .expect("the store still opens with its key file after a refused erase");
    let _ = std::fs::remove_dir_all(&dir);
}
