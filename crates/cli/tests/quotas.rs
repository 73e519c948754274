//! Per-SAE key rate limits (X.1712 AVL.2) with real `kagi node` processes: an SAE flooding
//! `enc_keys` is held to its rate with 503s that name the limit, another SAE at the same node
//! keeps being served, and SIGHUP reloads the limits without a restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kagi_control::Topology;
use kagi_km::{QuotaConfig, SaeLimit};
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::config::{NodeConfig, PoolConfig};
use kagi_node::etsi014::wire::KeyRequest;

struct Net {
    dir: PathBuf,
    topo: Topology,
    cfgs: Vec<NodeConfig>,
    procs: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("KAGI_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn limit(bytes_per_second: u64, burst: u64) -> QuotaConfig {
    let mut q = QuotaConfig::default();
    q.sae.insert(
        "sae-a1".into(),
        SaeLimit {
            bytes_per_second,
            burst_bytes: Some(burst),
            daily_bytes: None,
        },
    );
    q
}

impl Net {
    /// Nodes a and b; a serves two SAEs, sae-a1 limited to 64 bytes/s with a 256-byte burst.
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kagi-quotas-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut topo = Topology::line("quotas", &["a", "b"], 20.0, |n| {
            if n == "a" {
                vec!["sae-a1".into(), "sae-a2".into()]
            } else {
                vec![format!("sae-{n}")]
            }
        });
        topo.seed = 17;
        topo.epoch_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 1;
        topo.rate_multiplier = 5.0;
        let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |c| {
            c.pool = PoolConfig {
                target_bytes: 8192,
                relay_chunk_bytes: 512,
                ..PoolConfig::default()
            };
            if c.node_id == "a" {
                c.quotas = limit(64, 256);
            }
        })
        .unwrap();
        let mut net = Net {
            dir,
            topo,
            cfgs,
            procs: Vec::new(),
        };
        for i in 0..net.cfgs.len() {
            net.write_config(i);
            let id = net.cfgs[i].node_id.clone();
            let child = Command::new(env!("CARGO_BIN_EXE_kagi"))
                .args(["node", "--config"])
                .arg(net.dir.join(format!("{id}.toml")))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(net.dir.join(format!("{id}.log"))).unwrap())
                .spawn()
                .unwrap();
            net.procs.push(child);
        }
        net
    }

    fn write_config(&self, i: usize) {
        let c = &self.cfgs[i];
        std::fs::write(
            self.dir.join(format!("{}.toml", c.node_id)),
            toml::to_string(c).unwrap(),
        )
        .unwrap();
    }

    fn client(&self, sae: &str) -> Etsi014Client {
        kagi_node::loopback::sae_client(&self.dir, &self.topo, sae)
            .unwrap()
            .with_timeout(Duration::from_secs(10))
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.log"))).unwrap_or_default()
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

async fn wait_for_pool(master: &Etsi014Client, at_least: u64) {
    for _ in 0..400 {
        if let Ok(s) = master.status("sae-b").await {
            if s.stored_key_count >= at_least {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pool a→b never reached {at_least} keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sae_is_held_to_its_rate_and_does_not_starve_another() {
    let mut net = Net::start();
    let a1 = net.client("sae-a1");
    let a2 = net.client("sae-a2");
    let b = net.client("sae-b");
    wait_for_pool(&a1, 128).await;

    // sae-a1 floods: 8 keys (256 bytes) per request, as fast as it can, for 2 s.
    let t0 = Instant::now();
    let (mut served, mut limited) = (0u64, 0u64);
    let mut message = String::new();
    while t0.elapsed() < Duration::from_secs(2) {
        match a1.enc_keys("sae-b", &req(8)).await {
            Ok(k) => served += k.len() as u64 * 32,
            Err(ClientError::Refused { status, message: m }) if m.contains("rate limit") => {
                assert_eq!(status, 503, "{m}");
                limited += 1;
                message = m;
            }
            Err(e) => panic!("unexpected answer to sae-a1: {e}"),
        }
    }
    let allowed = 256 + (t0.elapsed().as_secs_f64() * 64.0).ceil() as u64;
    assert!(
        served <= allowed,
        "sae-a1 drew {served} bytes, its limit allows {allowed}"
    );
    assert!(limited >= 5, "sae-a1 was refused only {limited} times");
    assert!(
        message.contains("sae-a1") && message.contains("64 bytes/s"),
        "{message}"
    );

    // sae-a2 at the same node is served meanwhile, and its keys match at the slave.
    let keys = a2
        .enc_keys("sae-b", &req(32))
        .await
        .expect("sae-a2 starved");
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let got = b.dec_keys("sae-a2", &ids).await.expect("dec_keys");
    assert!(keys.iter().zip(&got).all(|(m, s)| m.key == s.key));

    // One request larger than the burst can never pass: a clear 400, not an endless 503.
    match a1.enc_keys("sae-b", &req(16)).await {
        Err(ClientError::Refused {
            status: 400,
            message,
        }) => {
            assert!(message.contains("burst limit of 256"), "{message}")
        }
        other => panic!("expected 400 for a request above the burst: {other:?}"),
    }

    // SIGHUP reloads [quotas] without a restart: a1's limit is lifted.
    net.cfgs[0].quotas = limit(1 << 30, 1 << 30);
    net.write_config(0);
    let pid = net.procs[0].id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut lifted = false;
    for _ in 0..100 {
        if a1.enc_keys("sae-b", &req(16)).await.is_ok() {
            lifted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lifted, "limit not reloaded; log:\n{}", net.log("a"));
    assert!(net.log("a").contains("limits reloaded"), "{}", net.log("a"));
    net.procs.iter_mut().for_each(|c| {
        let _ = c.kill();
    });
}
