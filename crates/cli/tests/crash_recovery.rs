//! `kill -9` of real `kagi node` processes during relays and key supply: no key is ever served
//! twice, no served key differs between master and slave, and a restarted node keeps its keys.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kagi_control::Topology;
use kagi_node::client::Etsi014Client;
use kagi_node::config::PoolConfig;
use kagi_node::etsi014::wire::KeyRequest;
use kagi_node::pki::Pki;

struct Net {
    dir: PathBuf,
    topo: Topology,
    procs: std::collections::BTreeMap<String, Child>,
}

impl Net {
    fn new(ids: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kagi-crash-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut topo = Topology::line("crash", ids, 20.0, |n| vec![format!("sae-{n}")]);
        topo.seed = 5;
        topo.epoch_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 1;
        topo.rate_multiplier = 5.0;
        let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |c| {
            c.pool = PoolConfig {
                target_bytes: 4096,
                relay_chunk_bytes: 512,
                ..PoolConfig::default()
            };
        })
        .unwrap();
        for cfg in cfgs {
            std::fs::write(
                dir.join(format!("{}.toml", cfg.node_id)),
                toml::to_string(&cfg).unwrap(),
            )
            .unwrap();
        }
        let mut net = Net {
            dir,
            topo,
            procs: Default::default(),
        };
        for n in ids {
            net.start(n);
        }
        net
    }

    fn start(&mut self, id: &str) {
        let child = Command::new(env!("CARGO_BIN_EXE_kagi"))
            .args(["node", "--config"])
            .arg(self.dir.join(format!("{id}.toml")))
            .env(
                "RUST_LOG",
                std::env::var("KAGI_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(format!("{id}.log")))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.procs.insert(id.to_string(), child);
    }

    /// SIGKILL: no chance to flush or clean up.
    fn kill9(&mut self, id: &str) {
        if let Some(mut c) = self.procs.remove(id) {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn client(&self, node: &str) -> Etsi014Client {
        let pki = Pki::open_or_create(&self.dir.join("pki")).unwrap();
        let p = pki.sae_paths(&format!("sae-{node}"));
        let addr = self.topo.node(node).unwrap().etsi014_addr.clone().unwrap();
        Etsi014Client::from_files(
            &format!("https://{addr}"),
            &pki.ca_cert_path(),
            &p.cert,
            &p.key,
        )
        .unwrap()
        .with_timeout(Duration::from_secs(10))
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let ids: Vec<String> = self.procs.keys().cloned().collect();
        for id in ids {
            self.kill9(&id);
        }
        if std::env::var_os("KAGI_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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

async fn wait_for_pool(master: &Etsi014Client, slave: &str, at_least: u64) {
    for _ in 0..300 {
        if let Ok(s) = master.status(slave).await {
            if s.stored_key_count >= at_least {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pool for {slave} never reached {at_least} keys");
}

/// One round: keys at `a` for `sae-d`, then the same IDs at `d`. Returns (served, matched).
async fn round(a: &Etsi014Client, d: &Etsi014Client) -> Option<bool> {
    let keys = a.enc_keys("sae-d", &req(2)).await.ok()?;
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    // The slave side may be briefly unreachable; retry a few times.
    for _ in 0..50 {
        if let Ok(got) = d.dec_keys("sae-a", &ids).await {
            let same = got.len() == keys.len()
                && keys
                    .iter()
                    .zip(&got)
                    .all(|(m, s)| m.id == s.id && m.key == s.key);
            // A second fetch, within the slave's grace, can only give the same bytes again.
            if let Ok(again) = d.dec_keys("sae-a", &ids).await {
                assert!(
                    again.len() == got.len()
                        && again
                            .iter()
                            .zip(&got)
                            .all(|(x, y)| x.id == y.id && x.key == y.key),
                    "a second fetch of the same keys gave other bytes"
                );
            }
            return Some(same);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("slave could never fetch keys its master received: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_intermediate_nodes_during_relays_loses_nothing_and_never_double_serves() {
    let mut net = Net::new(&["a", "b", "c", "d"]);
    let a = net.client("a");
    let d = net.client("d");
    wait_for_pool(&a, "sae-d", 4).await;

    let mut served = 0;
    for step in 0..40 {
        match step {
            8 => net.kill9("b"),
            16 => net.start("b"),
            22 => net.kill9("c"),
            23 => net.start("c"),
            _ => {}
        }
        if let Some(same) = round(&a, &d).await {
            assert!(same, "master and slave got different keys at step {step}");
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 10, "only {served} rounds served");
    // After the restarts the relay path works again: the pool refills.
    wait_for_pool(&a, "sae-d", 8).await;
    assert_eq!(round(&a, &d).await, Some(true));
    let _ = net.dir();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_slave_node_keeps_assigned_keys() {
    let mut net = Net::new(&["a", "b", "c", "d"]);
    let a = net.client("a");
    wait_for_pool(&a, "sae-d", 4).await;
    let keys = a.enc_keys("sae-d", &req(3)).await.expect("enc_keys");
    net.kill9("d");
    net.start("d");
    let d = net.client("d");
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let mut got = None;
    for _ in 0..100 {
        if let Ok(g) = d.dec_keys("sae-a", &ids).await {
            got = Some(g);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.expect("restarted node serves its stored keys");
    assert!(keys
        .iter()
        .zip(&got)
        .all(|(m, s)| m.id == s.id && m.key == s.key));
    // And the master's node, restarted, still refuses to hand those keys to anyone again, while
    // its pool (durable) still serves new keys.
    net.kill9("a");
    net.start("a");
    let a = net.client("a");
    wait_for_pool(&a, "sae-d", 1).await;
    // With neighbour-only peer connections a restarted node reaches a far slave node on
    // demand, and refuses with 503 ("not yet reconciled ... retry shortly") until their
    // `Hello`s are through: retry as a client would.
    let mut fresh = a.enc_keys("sae-d", &req(1)).await;
    for _ in 0..100 {
        match &fresh {
            Err(kagi_node::client::ClientError::Refused { status: 503, .. }) => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fresh = a.enc_keys("sae-d", &req(1)).await;
    }
    let fresh = fresh.expect("enc_keys after restart");
    assert!(!ids.contains(&fresh[0].id));
    assert!(
        keys.iter().all(|k| k.key != fresh[0].key),
        "a pool key was handed out twice"
    );
}
