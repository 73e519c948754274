//! Per-SAE and per-pair key rate limits (X.1712 AVL.2) with real `kagi node` processes: an SAE
//! flooding `enc_keys` is held to its rate with 503s that name the limit, another SAE at the same
//! node keeps being served; a limited (master, slave) pair is held to its rate while the same
//! master's other pair keeps being served; SIGHUP reloads the limits without a restart; and a
//! low-priority flood stops at its reserve, which a high-priority SAE then draws on.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kagi_control::Topology;
use kagi_km::{Priority, QuotaConfig, SaeLimit};
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::config::{ManagementConfig, NodeConfig, PoolConfig};
use kagi_node::etsi014::wire::KeyRequest;
use kagi_node::mgmt::Role;
use kagi_node::pki::Pki;

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
    q.sae
        .insert("sae-a1".into(), SaeLimit::rate(bytes_per_second, burst));
    q
}

impl Net {
    /// Nodes a and b; a serves two SAEs, sae-a1 limited to 64 bytes/s with a 256-byte burst;
    /// b serves sae-b and sae-b2, and the pair sae-a2 → sae-b is limited the same way.
    fn start() -> Self {
        let mut quotas = limit(64, 256);
        quotas
            .pair
            .entry("sae-a2".into())
            .or_default()
            .insert("sae-b".into(), SaeLimit::rate(64, 256));
        Self::start_with(quotas)
    }

    /// Nodes a (sae-a1, sae-a2) and b (sae-b, sae-b2), node a with `quotas`.
    fn start_with(quotas: QuotaConfig) -> Self {
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
                vec!["sae-b".into(), "sae-b2".into()]
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
                let listen = format!("127.0.0.1:{}", kagi_node::loopback::free_port().unwrap());
                c.management = Some(ManagementConfig { listen });
                c.quotas = quotas.clone();
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
            let child = net.spawn(i);
            net.procs.push(child);
        }
        net
    }

    /// Starts node `i`'s process (its log is appended to).
    fn spawn(&self, i: usize) -> Child {
        let id = &self.cfgs[i].node_id;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{id}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_kagi"))
            .args(["node", "--config"])
            .arg(self.dir.join(format!("{id}.toml")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Kills node `i` (as a crash would) and starts it again.
    fn restart(&mut self, i: usize) {
        let _ = self.procs[i].kill();
        let _ = self.procs[i].wait();
        self.procs[i] = self.spawn(i);
    }

    /// An operator's client of node a's management API.
    fn operator(&self) -> Etsi014Client {
        let pki = Pki::open_or_create(&self.dir.join("pki")).unwrap();
        let p = pki.ensure_operator(Role::Operator).unwrap();
        let addr = &self.cfgs[0].management.as_ref().unwrap().listen;
        Etsi014Client::from_files(
            &format!("https://{addr}"),
            &pki.ca_cert_path(),
            &p.cert,
            &p.key,
        )
        .unwrap()
        .with_timeout(Duration::from_secs(10))
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

/// Asks for `n` keys until the answer is not a 503 (a restarted node serves once it has
/// reconciled with its peers), for up to 30 s.
async fn past_503(
    master: &Etsi014Client,
    slave: &str,
    n: u64,
) -> Result<Vec<kagi_km::app::DeliveredKey>, ClientError> {
    let t0 = Instant::now();
    loop {
        match master.enc_keys(slave, &req(n)).await {
            Err(ClientError::Refused { status: 503, .. })
            | Err(ClientError::Connect { .. })
            | Err(ClientError::Http(_))
                if t0.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
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

    // sae-a2 at the same node is served meanwhile (towards sae-b2: its pair to sae-b is
    // limited), and its keys match at the slave.
    let b2 = net.client("sae-b2");
    let keys = a2
        .enc_keys("sae-b2", &req(32))
        .await
        .expect("sae-a2 starved");
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let got = b2.dec_keys("sae-a2", &ids).await.expect("dec_keys");
    assert!(keys.iter().zip(&got).all(|(m, s)| m.key == s.key));

    // The pair sae-a2 → sae-b floods: held to its 64 bytes/s, with a 503 naming the pair,
    // while sae-a2 → sae-b2 (same master, no pair limit) keeps being served.
    let t0 = Instant::now();
    let (mut to_b, mut pair_limited, mut to_b2) = (0u64, 0u64, 0u64);
    let mut message = String::new();
    while t0.elapsed() < Duration::from_millis(1500) {
        match a2.enc_keys("sae-b", &req(8)).await {
            Ok(k) => {
                to_b += k.len() as u64 * 32;
                let ids: Vec<_> = k.iter().map(|k| k.id).collect();
                let got = b.dec_keys("sae-a2", &ids).await.expect("dec_keys");
                assert!(k.iter().zip(&got).all(|(m, s)| m.key == s.key));
            }
            Err(ClientError::Refused { status, message: m }) if m.contains("rate limit") => {
                assert_eq!(status, 503, "{m}");
                pair_limited += 1;
                message = m;
            }
            Err(e) => panic!("unexpected answer to sae-a2 for sae-b: {e}"),
        }
        let keys = a2
            .enc_keys("sae-b2", &req(2))
            .await
            .expect("the pair sae-a2 → sae-b2 starved");
        to_b2 += keys.len() as u64 * 32;
        // A steady pace that the pool's refill keeps up with.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let allowed = 256 + (t0.elapsed().as_secs_f64() * 64.0).ceil() as u64;
    assert!(
        to_b <= allowed,
        "sae-a2 → sae-b drew {to_b} bytes, its limit allows {allowed}"
    );
    assert!(
        pair_limited >= 5,
        "the pair was refused only {pair_limited} times"
    );
    assert!(
        message.contains("master SAE sae-a2 → slave SAE sae-b") && message.contains("64 bytes/s"),
        "{message}"
    );
    assert!(
        to_b2 > to_b,
        "sae-a2 → sae-b2 got {to_b2} bytes, sae-b {to_b}"
    );

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

    // The management API limits the pair sae-a2 → sae-b2: 64-byte burst, so 4 keys (128
    // bytes) in one request are a 400 however long one waits; 2 keys pass.
    let operator = net.operator();
    let path = "/api/v1/saes/sae-a2/pairs/sae-b2/limits";
    let body = br#"{"bytes_per_second": 32, "burst_bytes": 64}"#.to_vec();
    let r = operator
        .request("PUT", path, Some(body), false)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    let over_pair_burst = |r: Result<Vec<_>, ClientError>| match r {
        Err(ClientError::Refused {
            status: 400,
            message,
        }) => {
            message.contains("sae-a2 → slave SAE sae-b2") && message.contains("burst limit of 64")
        }
        _ => false,
    };
    assert!(over_pair_burst(a2.enc_keys("sae-b2", &req(4)).await));

    // SIGHUP reloads [quotas] without a restart: a1's limit is lifted; the API's pair limit
    // stays (it replaces node.toml's entries, which have none for this pair).
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
    assert!(
        over_pair_burst(a2.enc_keys("sae-b2", &req(4)).await),
        "a SIGHUP dropped the limit set through the API"
    );

    // A crash and restart of node a: the API's limit is still there, on top of node.toml.
    net.restart(0);
    wait_for_pool(&a1, 32).await;
    assert!(
        over_pair_burst(past_503(&a2, "sae-b2", 4).await),
        "the limit set through the API was lost in the restart; log:\n{}",
        net.log("a")
    );
    past_503(&a1, "sae-b", 16)
        .await
        .expect("node.toml's lifted limit of sae-a1 applies after the restart");
    // DELETE drops the override: the pair is unlimited again.
    let r = operator.request("DELETE", path, None, false).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    a2.enc_keys("sae-b2", &req(4))
        .await
        .expect("the pair's limit was dropped");
    net.procs.iter_mut().for_each(|c| {
        let _ = c.kill();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_flood_stops_at_its_reserve_and_a_high_priority_sae_is_served_from_it() {
    let mut quotas = QuotaConfig::default();
    let with = |p| SaeLimit {
        priority: Some(p),
        ..SaeLimit::default()
    };
    quotas.sae.insert("sae-a1".into(), with(Priority::Low));
    quotas.sae.insert("sae-a2".into(), with(Priority::High));
    // Low keeps back 25 % of the pool's target (8192 bytes): 2048 bytes, 64 keys of 256 bits.
    let net = Net::start_with(quotas);
    let low = net.client("sae-a1");
    let high = net.client("sae-a2");
    let b = net.client("sae-b");
    wait_for_pool(&high, 128).await;

    // sae-a1 floods for 2 s, far faster than the link refills the pool.
    let t0 = Instant::now();
    let (mut drawn, mut held_back) = (0u64, 0u64);
    let mut message = String::new();
    while t0.elapsed() < Duration::from_secs(2) {
        match low.enc_keys("sae-b", &req(8)).await {
            Ok(k) => drawn += k.len() as u64 * 32,
            Err(ClientError::Refused { status, message: m }) if m.contains("priority") => {
                assert_eq!(status, 503, "{m}");
                held_back += 1;
                message = m;
            }
            Err(ClientError::Refused { status: 503, .. }) => {}
            Err(e) => panic!("unexpected answer to sae-a1: {e}"),
        }
    }
    assert!(
        held_back >= 5,
        "the low-priority flood was held back only {held_back} times (drew {drawn} bytes)"
    );
    assert!(
        message.contains("SAE sae-a1")
            && message.contains("(low)")
            && message.contains("low_percent"),
        "{message}"
    );
    // What the pool holds now is the reserve: status shows the low-priority master (almost)
    // nothing and the high-priority one the reserve.
    let low_sees = low.status("sae-b").await.unwrap().stored_key_count;
    let high_sees = high.status("sae-b").await.unwrap().stored_key_count;
    assert!(
        high_sees >= 32 && high_sees > low_sees,
        "high sees {high_sees} keys, low {low_sees}"
    );

    // sae-a2 (high) is served at once from the reserve, and its keys match at the slave.
    let keys = high
        .enc_keys("sae-b", &req(32))
        .await
        .expect("the high-priority SAE was not served from the reserve");
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let got = b.dec_keys("sae-a2", &ids).await.expect("dec_keys");
    assert!(keys.iter().zip(&got).all(|(m, s)| m.key == s.key));
}
