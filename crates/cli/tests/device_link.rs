//! A link whose key comes from a QKD device pair over ETSI GS QKD 014 (`source = "etsi014"`),
//! with real processes: `kagi up` runs two nodes, the test runs `kagi device` (the simulated
//! device pair) with one injected fault after another. Every fault shows as a link-state change
//! in the nodes' logs and never as a stored or served key; a healthy device then delivers keys
//! that are identical at both ends.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{kagi, TempDir, Up};
use kagi_node::etsi014::wire;

struct Device(Child);

impl Device {
    fn start(dir: &std::path::Path, fault: &str) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("device-test.log"))
            .unwrap();
        Self(
            kagi()
                .args(["device", "--link", "dx-dy", "--fault", fault, "--data-dir"])
                .arg(dir)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_log(dir: &std::path::Path, node: &str) -> String {
    std::fs::read_to_string(dir.join("nodes").join(node).join("node.log")).unwrap_or_default()
}

/// Waits until node `node`'s log reports the device link in `state`, seen after `from` bytes.
fn wait_state(dir: &std::path::Path, node: &str, state: &str, from: usize, limit: Duration) {
    let start = Instant::now();
    let needle = format!("state={state}");
    loop {
        let log = node_log(dir, node);
        if log.get(from..).is_some_and(|l| l.contains(&needle)) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{node}: no {needle} in the log; logs in {}:\n{}",
            dir.display(),
            log.get(from..).unwrap_or("")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_faults_change_link_state_and_never_yield_a_bad_key() {
    let tmp = TempDir::new("device");
    let dir = tmp.path().to_owned();
    let pa = kagi_node::loopback::free_port().unwrap();
    let pb = kagi_node::loopback::free_port_except(&[pa]).unwrap();
    let topo = format!(
        r#"
name = "device-test"
seed = 7
[[nodes]]
id = "dx"
saes = ["sae-dx"]
[[nodes]]
id = "dy"
saes = ["sae-dy"]
[[links]]
a = "dx"
b = "dy"
length_km = 10.0
source = "etsi014"
[links.device]
url_a = "https://127.0.0.1:{pa}"
url_b = "https://127.0.0.1:{pb}"
"#
    );
    let file = dir.join("device.toml");
    std::fs::write(&file, topo).unwrap();
    let up = Up::start(&dir, &["--topology", file.to_str().unwrap()]);
    let limit = Duration::from_secs(20);
    // No device yet: the master node reports it down.
    wait_state(&dir, "dx", "device_down", 0, limit);

    let master = up.client("sae-dx");
    let slave = up.client("sae-dy");
    let req = wire::KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    // Each fault in turn: the state changes, and no key reaches the SAEs.
    for (fault, node, state) in [
        ("differ", "dx", "keys_differ"),
        ("wrong-ids", "dy", "wrong_key_ids"),
        ("unavailable", "dx", "device_unavailable"),
    ] {
        let from = node_log(&dir, node).len();
        let dev = Device::start(&dir, fault);
        wait_state(&dir, node, state, from, limit);
        // Let a few more batches be tried and refused.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = master.enc_keys("sae-dy", &req).await;
        assert!(
            got.is_err(),
            "fault {fault}: a key was served from a faulty device link"
        );
        drop(dev);
    }
    for node in ["dx", "dy"] {
        let log = node_log(&dir, node);
        assert!(
            !log.contains("state=up"),
            "{node}: link came up under a faulty device:\n{log}"
        );
    }

    // A healthy device: the link comes up and keys match end to end.
    let from = node_log(&dir, "dx").len();
    let _dev = Device::start(&dir, "none");
    wait_state(&dir, "dx", "up", from, limit);
    let deadline = Instant::now() + Duration::from_secs(30);
    let keys = loop {
        match master.enc_keys("sae-dy", &req).await {
            Ok(k) => break k,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no key over the device link ({e}); logs in {}",
                    dir.display()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let back = slave.dec_keys("sae-dx", &[keys[0].id]).await.unwrap();
    assert_eq!(back[0].id, keys[0].id);
    assert!(
        back[0].key == keys[0].key,
        "the two ends hold different keys"
    );
    up.stop();
}
