//! Shared harness for the real-process tests: a scratch directory removed on drop, and a running
//! `kagi up` network that is stopped (SIGTERM, then SIGKILL) on drop.
//!
//! Each test binary compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kagi_node::client::Etsi014Client;
use serde_json::Value;

/// The `kagi` binary built for these tests.
pub fn kagi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
}

/// A fresh directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `kagi-<tag>-<random>` under the system temp dir.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kagi-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long a network may take to come up on a loaded 2-core machine.
const UP_TIMEOUT: Duration = Duration::from_secs(320);

/// A running `kagi up`; stopped on drop.
pub struct Up {
    /// The `kagi up` process.
    pub child: Child,
    /// Its data directory.
    pub dir: PathBuf,
    /// `network.json` as written when the network came up.
    pub net: Value,
    /// stdout and stderr of `kagi up`.
    pub log: PathBuf,
}

impl Up {
    /// Runs `kagi up --data-dir DIR --rate-multiplier 4 --wait-secs 300 EXTRA...` and waits for
    /// a complete `network.json` (a stale one from an earlier run in `dir` is removed first).
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let _ = std::fs::remove_file(dir.join("network.json"));
        let log_path = dir.join(format!("up-{}.log", uuid::Uuid::new_v4()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = kagi()
            .args(["up", "--data-dir"])
            .arg(dir)
            .args(["--rate-multiplier", "4", "--wait-secs", "300"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut up = Self {
            child,
            dir: dir.to_owned(),
            net: Value::Null,
            log: log_path,
        };
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("network.json")) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    up.net = v;
                    return up;
                }
            }
            if let Ok(Some(st)) = up.child.try_wait() {
                panic!(
                    "kagi up exited early ({st}):\n{}",
                    std::fs::read_to_string(&up.log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < UP_TIMEOUT,
                "network did not come up; logs in {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether `kagi up` is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the network now.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `network.json` entries of the node serving `sae`, and of the SAE itself.
    pub fn node_of(&self, sae: &str) -> (&Value, &Value) {
        for n in self.net["nodes"].as_array().unwrap() {
            for s in n["saes"].as_array().unwrap() {
                if s["id"] == sae {
                    return (n, s);
                }
            }
        }
        panic!("no SAE {sae} in network.json")
    }

    /// The `network.json` entry of node `id`.
    pub fn node(&self, id: &str) -> &Value {
        self.net["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id} in network.json"))
    }

    /// A path in `network.json` (relative to the data directory) made absolute.
    pub fn path(&self, v: &Value) -> PathBuf {
        self.dir.join(v.as_str().expect("a path string"))
    }

    /// An ETSI 014 client for `sae` at its node, with the certificate `kagi up` issued.
    pub fn client(&self, sae: &str) -> Etsi014Client {
        let (n, s) = self.node_of(sae);
        Etsi014Client::from_files(
            n["etsi014_url"].as_str().unwrap(),
            &self.path(&self.net["ca"]),
            &self.path(&s["cert"]),
            &self.path(&s["key"]),
        )
        .unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.running() {
            self.terminate();
        }
    }
}

/// A python3 that can `import module`: the system's if it can, else a venv under `dir` with
/// `package` pip-installed. `None` when neither works (no network to PyPI): callers say so loudly.
pub fn python_with(dir: &Path, module: &str, package: &str) -> Option<PathBuf> {
    let works = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let sys = PathBuf::from("python3");
    if works(&sys) {
        return Some(sys);
    }
    let venv = dir.join("venv");
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    let py = venv.join("bin/python");
    if made {
        let _ = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--timeout",
                "20",
                package,
            ])
            .status();
        if works(&py) {
            return Some(py);
        }
    }
    None
}

/// The stdout of a command that must have succeeded (its output in the panic otherwise).
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The stderr of a command that must have failed.
pub fn err(o: &Output) -> String {
    assert!(!o.status.success(), "should have failed: {o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The process ID in a pid file, if there is one.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A line of real `kagi node` processes, each started on its own (`kagi node --config`), so a
/// test can stop one, change its files and start it again. Each node has a management listener
/// (for `/metrics`). Every process is killed and the directory removed on drop (set
/// `KAGI_TEST_KEEP` to keep it).
pub struct Nodes {
    /// The scratch directory (topology, PKI, `db/`, logs `<id>.log`).
    pub dir: PathBuf,
    /// The topology the nodes run.
    pub topo: kagi_control::Topology,
    /// Each node's configuration (as written to `<id>.toml`).
    pub cfgs: Vec<kagi_node::config::NodeConfig>,
    procs: std::collections::BTreeMap<String, Child>,
}

impl Nodes {
    /// Prepares and starts a chain of nodes `ids`, one SAE `sae-<id>` each, with small pools.
    pub fn line(tag: &str, ids: &[&str]) -> Self {
        use std::time::{SystemTime, UNIX_EPOCH};
        let dir = std::env::temp_dir().join(format!("kagi-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut topo = kagi_control::Topology::line(tag, ids, 20.0, |n| vec![format!("sae-{n}")]);
        topo.seed = 5;
        topo.epoch_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 1;
        topo.rate_multiplier = 5.0;
        let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |c| {
            c.pool = kagi_node::config::PoolConfig {
                target_bytes: 4096,
                relay_chunk_bytes: 512,
                ..kagi_node::config::PoolConfig::default()
            };
            c.management = Some(kagi_node::config::ManagementConfig {
                listen: format!("127.0.0.1:{}", kagi_node::loopback::free_port().unwrap()),
            });
        })
        .unwrap();
        for cfg in &cfgs {
            std::fs::write(
                dir.join(format!("{}.toml", cfg.node_id)),
                toml::to_string(cfg).unwrap(),
            )
            .unwrap();
        }
        let mut net = Nodes {
            dir,
            topo,
            cfgs,
            procs: Default::default(),
        };
        for n in ids {
            net.start(n);
        }
        net
    }

    /// Starts node `id` (its log is appended to `<dir>/<id>.log`).
    pub fn start(&mut self, id: &str) {
        let child = kagi()
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
    pub fn kill9(&mut self, id: &str) {
        if let Some(mut c) = self.procs.remove(id) {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The configuration of node `id`.
    pub fn cfg(&self, id: &str) -> &kagi_node::config::NodeConfig {
        self.cfgs.iter().find(|c| c.node_id == id).unwrap()
    }

    /// The files of node `id` in its data directory (`<id>.db`, its WAL, key file, trail...).
    pub fn files_of(&self, id: &str) -> Vec<PathBuf> {
        let data = &self.cfg(id).data_dir;
        let mut out: Vec<PathBuf> = std::fs::read_dir(data)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{id}.")) || n.starts_with(&format!("{id}-"))
                })
            })
            .collect();
        out.sort();
        out
    }

    /// An ETSI 014 client for `sae-<node>` at its node.
    pub fn client(&self, node: &str) -> Etsi014Client {
        let pki = kagi_node::pki::Pki::open_or_create(&self.dir.join("pki")).unwrap();
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

    /// `/metrics` of node `id` (read with an observer certificate), retried while it starts.
    pub async fn metrics(&self, id: &str) -> String {
        let pki = kagi_node::pki::Pki::open_or_create(&self.dir.join("pki")).unwrap();
        let p = pki
            .ensure_operator(kagi_node::mgmt::Role::Observer)
            .unwrap();
        let listen = &self.cfg(id).management.as_ref().unwrap().listen;
        let c = Etsi014Client::from_files(
            &format!("https://{listen}"),
            &pki.ca_cert_path(),
            &p.cert,
            &p.key,
        )
        .unwrap()
        .with_timeout(Duration::from_secs(10));
        for _ in 0..100 {
            if let Ok(r) = c.request("GET", "/metrics", None, false).await {
                return String::from_utf8_lossy(&r.body).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{id}: /metrics never answered");
    }

    /// Which started nodes have exited, each with the end of its log (for failure messages:
    /// a node that could not start explains a network that delivers nothing).
    pub fn exited(&mut self) -> String {
        let mut out = String::new();
        let ids: Vec<String> = self.procs.keys().cloned().collect();
        for id in ids {
            if let Ok(Some(st)) = self.procs.get_mut(&id).expect("listed").try_wait() {
                let log = self.log(&id);
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                out.push_str(&format!(
                    "node {id} exited ({st}); its log, newest first:\n{tail}\n"
                ));
            }
        }
        if out.is_empty() {
            out.push_str("every node is still running");
        }
        out
    }

    /// The log of node `id` so far.
    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Nodes {
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

/// The value of counter `name` (summed over its label sets) in a `/metrics` scrape.
pub fn metric(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
