//! Four real nodes in one process: real TLS (hybrid post-quantum between nodes), real SQLite,
//! real ETSI 014 over loopback. Keys fetched as master at `a` equal those fetched as slave at `d`,
//! three hops away, with connections between all pairs of nodes and with connections to
//! neighbours only (others opened while needed and closed when idle).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use kagi_node::client::Etsi014Client;
use kagi_node::config::{NodeConfig, PeerConnect};
use kagi_node::etsi014::wire::KeyRequest;

fn tempdir(tag: &str) -> PathBuf {
    kagi_node::loopback::scratch_dir(tag).unwrap()
}

fn network(dir: &Path, connect: PeerConnect) -> (Topology, Vec<NodeConfig>) {
    kagi_node::loopback::line_network(dir, &["a", "b", "c", "d"], 11, 8192, |c| {
        c.peers.connect = connect;
        c.peers.idle_close_s = 1;
    })
    .unwrap()
}

fn client(dir: &Path, topo: &Topology, sae: &str) -> Etsi014Client {
    kagi_node::loopback::sae_client(dir, topo, sae).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_match_across_three_hops_over_real_tls_and_sqlite() {
    exchange("inproc", PeerConnect::All).await;
}

/// `[peers] connect = "neighbours"`: a talks to d (assignments, acknowledgements) over a
/// connection opened when needed and closed after a second without messages; keys still match,
/// also after the connection went idle and had to be opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_match_with_connections_to_neighbours_only() {
    exchange("inproc-nb", PeerConnect::Neighbours).await;
}

async fn exchange(tag: &str, connect: PeerConnect) {
    let dir = tempdir(tag);
    let (topo, cfgs) = network(&dir, connect);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for cfg in cfgs {
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(kagi_node::run_node(cfg, async move {
            let _ = rx.wait_for(|v| *v).await;
        })));
    }
    let master = client(&dir, &topo, "sae-a");
    let slave = client(&dir, &topo, "sae-d");
    // Wait for the pool a→d to fill (up to 60 s: CI machines may be loaded).
    let mut ready = false;
    for _ in 0..600 {
        if let Ok(s) = master.status("sae-d").await {
            assert_eq!(s.target_kme_id, "d");
            if s.stored_key_count >= 8 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "pool a→d never filled");
    let req = KeyRequest {
        number: Some(4),
        size: Some(256),
        additional_slave_sae_ids: None,
        extension_mandatory: None,
        extension_optional: None,
    };
    let keys = master.enc_keys("sae-d", &req).await.expect("enc_keys");
    assert_eq!(keys.len(), 4);
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let got = slave.dec_keys("sae-a", &ids).await.expect("dec_keys");
    for (m, s) in keys.iter().zip(&got) {
        assert_eq!(m.id, s.id);
        assert!(m.key == s.key);
        assert_eq!(m.key.len(), 32);
    }
    // Within the slave's grace the same slave gets the same bytes again (never other bytes).
    let again = slave
        .dec_keys("sae-a", &ids[..1])
        .await
        .expect("within the grace");
    assert!(again[0].id == keys[0].id && again[0].key == keys[0].key);
    // Idle for longer than `idle_close_s`: on-demand connections close; the next assignment
    // opens a → d again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let keys = master
        .enc_keys("sae-d", &req)
        .await
        .expect("enc_keys after idle");
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let got = slave
        .dec_keys("sae-a", &ids)
        .await
        .expect("dec_keys after idle");
    assert!(keys
        .iter()
        .zip(&got)
        .all(|(m, s)| m.id == s.id && m.key == s.key));
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Arc::new(());
}
