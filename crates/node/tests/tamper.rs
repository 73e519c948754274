//! Tamper response on a real node: the watched path (an enclosure switch) appears, and the node
//! fences itself — every ETSI 014 call gets 503 naming the tamper signal — and records it in its
//! audit trail, which still verifies.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_path_fences_the_node_and_is_audited() {
    let dir = kagi_node::loopback::scratch_dir("tamper").unwrap();
    let mut topo = common::pair_now();
    let switch = dir.join("enclosure-open");
    let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |c| {
        c.tamper.watch_path = Some(switch.clone());
    })
    .unwrap();
    let cfg = cfgs.into_iter().find(|c| c.node_id == "a").unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let node = tokio::spawn(kagi_node::run_node(cfg.clone(), async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    let sae = kagi_node::loopback::sae_client(&dir, &topo, "sae-a").unwrap();
    let path = "/api/v1/keys/sae-b/status";
    common::wait_until_answers(&sae, path, "a").await;

    std::fs::write(&switch, b"").unwrap();
    let mut fenced = None;
    for _ in 0..100 {
        let r = sae.request("GET", path, None, false).await.unwrap();
        if r.status == 503 {
            fenced = Some(String::from_utf8_lossy(&r.body).into_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msg = fenced.expect("node a was not fenced within 5 s of the switch");
    assert!(
        msg.contains("tamper signal") && msg.contains("enclosure-open"),
        "{msg}"
    );
    // Still fenced later: it does not recover by itself.
    let r = sae.request("GET", path, None, false).await.unwrap();
    assert_eq!(r.status, 503);

    let _ = stop_tx.send(true);
    let r = tokio::time::timeout(Duration::from_secs(10), node).await;
    assert!(matches!(r, Ok(Ok(Ok(())))), "{r:?}");
    let trail = kagi_node::audit::trail_path(&cfg.data_dir, "a");
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(
        text.contains("\"event\":\"node.tamper\",\"actor\":\"watch_path\""),
        "tamper not audited"
    );
    let report = kagi_node::audit::verify::check_file(&trail);
    assert!(report.problem.is_none(), "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts node `cfg` and waits until it answers `path` for `sae`; returns the stop switch, the
/// task and the first answer's status and body.
async fn start_and_ask(
    cfg: &kagi_node::config::NodeConfig,
    sae: &kagi_node::client::Etsi014Client,
    path: &str,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    u16,
    String,
) {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let node = tokio::spawn(kagi_node::run_node(cfg.clone(), async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    for _ in 0..300 {
        if let Ok(r) = sae.request("GET", path, None, false).await {
            return (
                stop_tx,
                node,
                r.status,
                String::from_utf8_lossy(&r.body).into_owned(),
            );
        }
        assert!(!node.is_finished(), "node stopped: {:?}", node.await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {} never answered", cfg.node_id);
}

async fn stop(
    stop_tx: tokio::sync::watch::Sender<bool>,
    node: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let _ = stop_tx.send(true);
    let r = tokio::time::timeout(Duration::from_secs(10), node).await;
    assert!(matches!(r, Ok(Ok(Ok(())))), "{r:?}");
}

/// Flips a byte in the sealed values of `n` stored link-block records (records that failed
/// before were moved to `quarantine` at the last start, so every one left is intact).
fn flip_link_blocks(db: &std::path::Path, n: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    let keys: Vec<String> = c
        .prepare("SELECT k FROM records WHERE kind = 'link_block' ORDER BY k")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(keys.len() >= n, "only {} link blocks stored", keys.len());
    for k in &keys[..n] {
        let mut v: Vec<u8> = c
            .query_row(
                "SELECT v FROM records WHERE kind = 'link_block' AND k = ?1",
                [k],
                |r| r.get(0),
            )
            .unwrap();
        let at = v.len() / 2;
        v[at] ^= 0x40;
        c.execute(
            "UPDATE records SET v = ?2 WHERE kind = 'link_block' AND k = ?1",
            rusqlite::params![k, v],
        )
        .unwrap();
    }
}

/// Repeated integrity failures are a tamper source (`[tamper] integrity_failures`): one altered
/// record is quarantined and audited and the node serves on; as many altered records as the
/// threshold in one start fence the node like any tamper signal (503 naming the source, audited);
/// restarting it with its KEK recovers, the bad records having been quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_integrity_failures_fence_the_node_and_a_restart_recovers() {
    let dir = kagi_node::loopback::scratch_dir("tamper-integrity").unwrap();
    let mut topo = common::pair_now();
    let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |c| {
        c.tamper.integrity_failures = 2;
    })
    .unwrap();
    let cfg = cfgs.into_iter().find(|c| c.node_id == "a").unwrap();
    let db = cfg.data_dir.join("a.db");
    let trail = kagi_node::audit::trail_path(&cfg.data_dir, "a");
    let sae = kagi_node::loopback::sae_client(&dir, &topo, "sae-a").unwrap();
    let path = "/api/v1/keys/sae-b/status";

    // A first run stores link blocks (the simulated link runs inside the node).
    let (tx, node, status, body) = start_and_ask(&cfg, &sae, path).await;
    assert_eq!(status, 200, "{body}");
    let c = rusqlite::Connection::open(&db).unwrap();
    for _ in 0..100 {
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM records WHERE kind = 'link_block'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if n >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);
    stop(tx, node).await;

    // One altered record: below the threshold, quarantined and audited, the node serves.
    flip_link_blocks(&db, 1);
    let (tx, node, status, body) = start_and_ask(&cfg, &sae, path).await;
    assert_eq!(
        status, 200,
        "one bad record must not fence the node: {body}"
    );
    stop(tx, node).await;
    let text = std::fs::read_to_string(&trail).unwrap();
    assert_eq!(
        text.matches("\"event\":\"store.quarantine\"").count(),
        1,
        "quarantine not audited"
    );
    assert!(!text.contains("\"event\":\"node.tamper\""));

    // Two more in one start: the threshold. The node is fenced, naming the source.
    flip_link_blocks(&db, 2);
    let (tx, node, status, body) = start_and_ask(&cfg, &sae, path).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("tamper signal")
            && body.contains("integrity")
            && body.contains("2 stored records"),
        "{body}"
    );
    let r = sae.request("GET", path, None, false).await.unwrap();
    assert_eq!(r.status, 503, "fenced for good");
    stop(tx, node).await;
    let text = std::fs::read_to_string(&trail).unwrap();
    assert_eq!(text.matches("\"event\":\"store.quarantine\"").count(), 3);
    assert!(
        text.contains("\"event\":\"node.tamper\",\"actor\":\"integrity\""),
        "tamper not audited"
    );
    let report = kagi_node::audit::verify::check_file(&trail);
    assert!(report.problem.is_none(), "{report:?}");

    // Recovery: a restart with the KEK runs on the records that still authenticate.
    let (tx, node, status, body) = start_and_ask(&cfg, &sae, path).await;
    assert_eq!(status, 200, "{body}");
    stop(tx, node).await;
    let _ = std::fs::remove_dir_all(&dir);
}
