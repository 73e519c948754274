//! The 24-node example network (`docs/examples/japan24.toml`) run by `kagi up --topology` as 24
//! real `kagi node` processes: every node comes up and answers ETSI 014, and a key fetched as
//! master at Ueno (Tokyo) equals the key fetched as slave at Osaka, 11 hops away (the farthest
//! pair by hops), and the other way round.

mod common;

use std::time::{Duration, Instant};

use common::{read_pid, TempDir, Up};
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::etsi014::wire::KeyRequest;

/// Asks `master` for one key shared with `slave` until it is served (503: the far pair's pool is
/// still filling; demand-driven pools start filling at the first request).
async fn first_key(master: &Etsi014Client, slave: &str, within: Duration) -> kagi_km::DeliveredKey {
    let t0 = Instant::now();
    let req = KeyRequest {
        number: Some(1),
        ..Default::default()
    };
    loop {
        match master.enc_keys(slave, &req).await {
            Ok(mut keys) => {
                assert_eq!(keys.len(), 1);
                return keys.remove(0);
            }
            Err(ClientError::Refused { status: 503, .. }) if t0.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("enc_keys for {slave} after {:?}: {e}", t0.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_japan24_starts_and_the_far_ends_share_a_key() {
    let dir = TempDir::new("japan24");
    let topo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/japan24.toml"
    );
    let t0 = Instant::now();
    let up = Up::start(dir.path(), &["--topology", topo]);
    let started = t0.elapsed();

    // Every node of the file is running and answers ETSI 014 "Get status".
    let nodes = up.net["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 24, "network.json lists {} nodes", nodes.len());
    for n in nodes {
        let id = n["id"].as_str().unwrap();
        let pid = read_pid(&up.dir.join(format!("nodes/{id}/node.pid")))
            .unwrap_or_else(|| panic!("no pid file for {id}"));
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node {id} (pid {pid}) is not running"
        );
        let peer = if id == "koganei" { "osaka" } else { "koganei" };
        let s = up
            .client(&format!("sae-{id}-a"))
            .with_timeout(Duration::from_secs(20))
            .status(&format!("sae-{peer}-a"))
            .await
            .unwrap_or_else(|e| panic!("status at {id}: {e}"));
        assert_eq!(s.source_kme_id, id);
        assert_eq!(s.target_kme_id, peer);
    }

    // The far ends, both ways: the master's key equals the slave's.
    for (m, m_node, s, s_node) in [
        ("sae-ueno-a", "ueno", "sae-osaka-a", "osaka"),
        ("sae-osaka-b", "osaka", "sae-ueno-b", "ueno"),
    ] {
        let t = Instant::now();
        let master = up.client(m).with_timeout(Duration::from_secs(20));
        let got = first_key(&master, s, Duration::from_secs(180)).await;
        let at_slave = up
            .client(s)
            .with_timeout(Duration::from_secs(20))
            .dec_keys(m, &[got.id])
            .await
            .unwrap_or_else(|e| panic!("dec_keys at {s_node}: {e}"));
        assert_eq!(at_slave.len(), 1);
        assert_eq!(at_slave[0].id, got.id);
        assert!(
            got.key == at_slave[0].key, // `Key`'s `==` is constant-time
            "the key {m_node} served differs from the one {s_node} served"
        );
        eprintln!(
            "japan24: network up in {:.1} s; first key {m_node}→{s_node} in {:.1} s",
            started.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    up.stop();
}
