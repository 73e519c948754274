//! A `source = "photon"` link between two real nodes in one process: the post-processing
//! protocol runs between the nodes over their mutual-TLS channel, and the keys it produces are
//! what the ETSI 014 interface serves. Restarting one node resumes the link from its ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kagi_control::{PhotonLinkSpec, Topology};
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::config::{NodeConfig, PoolConfig};
use kagi_node::etsi014::wire::KeyRequest;
use tokio::sync::watch;

fn tempdir(tag: &str) -> PathBuf {
    kagi_node::loopback::scratch_dir(tag).unwrap()
}

fn network(dir: &Path) -> (Topology, Vec<NodeConfig>) {
    let mut topo = Topology::line("photon2", &["a", "b"], 1.0, |n| vec![format!("sae-{n}")]);
    topo.seed = 5;
    // A short, clean link so that small blocks (quick in CI) still leave finite-size key.
    topo.links[0].source = Some("photon".into());
    topo.links[0].photon = Some(PhotonLinkSpec {
        block_bits: Some(1e6),
        e_d: Some(0.01),
        eta_bob: Some(0.5),
        ..PhotonLinkSpec::default()
    });
    let cfgs = kagi_node::loopback::prepare(dir, &mut topo, |c| {
        c.pool = PoolConfig {
            target_bytes: 4096,
            relay_chunk_bytes: 1024,
            ..PoolConfig::default()
        };
    })
    .unwrap();
    (topo, cfgs)
}

fn client(dir: &Path, topo: &Topology, sae: &str) -> Etsi014Client {
    kagi_node::loopback::sae_client(dir, topo, sae).unwrap()
}

fn start(
    cfg: NodeConfig,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (tx, mut rx) = watch::channel(false);
    let t = tokio::spawn(kagi_node::run_node(cfg, async move {
        let _ = rx.wait_for(|v| *v).await;
    }));
    (tx, t)
}

/// Keys available to `sae-a` for `sae-b` within `secs`.
async fn wait_for_keys(master: &Etsi014Client, at_least: u64, secs: u64) -> u64 {
    let mut n = 0;
    for _ in 0..secs * 5 {
        if let Ok(s) = master.status("sae-b").await {
            n = s.stored_key_count;
            if n >= at_least {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    n
}

/// The last block number and the newest segment (a block that ended with key) in `a`'s ledger
/// (sealed: read through the ledger with `a`'s key).
fn ledger_state(cfg_a: &NodeConfig, db: &Path) -> (u64, u64) {
    let seals =
        kagi_node::seal::node::unseal_node(cfg_a, &cfg_a.data_dir.join("a.db"), Some(db)).unwrap();
    let l =
        kagi_node::photon_link::ledger::AuthLedger::open(db, seals.photon.unwrap(), "b", || {
            unreachable!("the ledger exists")
        })
        .unwrap();
    (l.last_block(), l.newest_segment().unwrap_or(0))
}

async fn exchange(master: &Etsi014Client, slave: &Etsi014Client, number: usize) {
    let req = KeyRequest {
        number: Some(number as u64),
        size: Some(256),
        additional_slave_sae_ids: None,
        extension_mandatory: None,
        extension_optional: None,
    };
    // Right after a peer restarts, the two nodes reconcile (hello/seen) before relaying again,
    // and the master's node answers 503 meanwhile; an application retries a 503, so does this.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let keys = loop {
        match master.enc_keys("sae-b", &req).await {
            Err(ClientError::Refused { status: 503, .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            r => break r.expect("enc_keys"),
        }
    };
    assert_eq!(keys.len(), number);
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let got = slave.dec_keys("sae-a", &ids).await.expect("dec_keys");
    for (m, s) in keys.iter().zip(&got) {
        assert_eq!(m.id, s.id);
        assert!(m.key == s.key, "master and slave keys differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photon_link_feeds_the_key_store_over_the_node_channel_and_resumes_after_restart() {
    // RUST_LOG=info shows every block's statistics.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempdir("photon");
    let (topo, mut cfgs) = network(&dir);
    let cfg_b = cfgs.pop().unwrap();
    let cfg_a = cfgs.pop().unwrap();
    let (stop_a, task_a) = start(cfg_a.clone());
    let (stop_b, task_b) = start(cfg_b.clone());
    let master = client(&dir, &topo, "sae-a");
    let slave = client(&dir, &topo, "sae-b");

    let n = wait_for_keys(&master, 8, 180).await;
    assert!(n >= 8, "the photon link produced no key ({n} keys)");
    exchange(&master, &slave, 8).await;

    // Both ends keep their ledgers on disk: the link must resume, not restart its
    // authentication key from the pre-shared one.
    let ledger_a = dir.join("db").join("a-photon.db");
    assert!(ledger_a.exists());

    // Restart b: its ledger and key store survive, and blocks after the restart end with key
    // (a block that ends with key leaves a new authentication segment named after it).
    let _ = stop_b.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task_b).await;
    let (last_before, _) = ledger_state(&cfg_a, &ledger_a);
    let (stop_b, mut task_b) = start(cfg_b);
    let mut newest = 0;
    for _ in 0..900 {
        if task_b.is_finished() {
            panic!("b did not restart: {:?}", (&mut task_b).await);
        }
        newest = ledger_state(&cfg_a, &ledger_a).1;
        if newest > last_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        newest > last_before,
        "no block ended with key after restarting b (last block before: {last_before})"
    );
    exchange(&master, &slave, 16).await;

    let _ = stop_a.send(true);
    let _ = stop_b.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task_a).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), task_b).await;
    let _ = std::fs::remove_dir_all(&dir);
}
