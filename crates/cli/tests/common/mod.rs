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
