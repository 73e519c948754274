//! Tamper response on a network started by `kagi up` (real processes): an operator sends the
//! tamper signal to one node through the management API; afterwards that node process holds no
//! key bytes (its live-key gauge drops to zero), answers every ETSI 014 call with 503 naming the
//! signal, reports the fence in status and metrics, and its audit trail — checked by
//! `kagi audit verify` over the whole data directory — records it. On the same network another
//! node is crypto-erased (`POST /api/v1/erase`): afterwards no file under the data directory
//! holds its wrapped data key, link secrets or the keys it served, a copy of its old key file
//! opens nothing, its trail still verifies, and it refuses to start, naming the erase.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{kagi, TempDir, Up};
use kagi_node::client::Etsi014Client;
use serde_json::{json, Value};

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn metrics(m: &Etsi014Client) -> String {
    let r = m.request("GET", "/metrics", None, false).await.unwrap();
    String::from_utf8_lossy(&r.body).into_owned()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn mgmt_client(up: &Up, node: &Value) -> Etsi014Client {
    let op = up.net["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["role"] == "operator")
        .unwrap()
        .clone();
    Etsi014Client::from_files(
        node["management_url"].as_str().unwrap(),
        &up.path(&up.net["ca"]),
        &up.path(&op["cert"]),
        &up.path(&op["key"]),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tamper_signal_erases_keys_from_memory_and_fences_the_node() {
    let tmp = TempDir::new("tamper");
    let up = Up::start(&tmp.0, &[]);
    let node = up.node_of("sae-koganei-a").0.clone();
    let id = node["id"].as_str().unwrap().to_owned();
    let op = up.net["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["role"] == "operator")
        .unwrap()
        .clone();
    let mgmt = Etsi014Client::from_files(
        node["management_url"].as_str().unwrap(),
        &up.path(&up.net["ca"]),
        &up.path(&op["cert"]),
        &up.path(&op["key"]),
    )
    .unwrap();

    // Keys flow: the node holds link and pool key in memory.
    let ka = up.client("sae-koganei-a");
    let start = Instant::now();
    let held = loop {
        let _ = ka.status("sae-chofu-a").await;
        let m = metrics(&mgmt).await;
        let live = gauge(&m, "kagi_live_key_bytes").expect("live key gauge");
        if live > 0.0 {
            break live;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no key arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        gauge(&metrics(&mgmt).await, "kagi_node_tampered"),
        Some(0.0)
    );

    // --- Crypto-erase of the slave's node (chofu) while it holds keys waiting for its SAE.
    let served = loop {
        match ka.enc_keys_get("sae-chofu-a", Some(2), None).await {
            Ok(k) => break k,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(120), "no key: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let erased_node = up.node_of("sae-chofu-a").0.clone();
    let eid = erased_node["id"].as_str().unwrap().to_owned();
    let ecfg =
        kagi_node::config::NodeConfig::load(&up.dir.join("nodes").join(&eid).join("node.toml"))
            .unwrap();
    let edb = ecfg.data_dir.join(format!("{eid}.db"));
    // What a thief with the old key file would need: the wrapped data key and the sealed
    // link secrets (read while the node runs; WAL readers do not block it).
    let wrapped: Vec<Vec<u8>> = {
        let conn = kagi_node::store::open_db(&edb, ecfg.store.synchronous).unwrap();
        let mut st = conn
            .prepare("SELECT v FROM seal_meta WHERE name = 'dek' OR name LIKE 'link_secret/%'")
            .unwrap();
        let v: Vec<Vec<u8>> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        v
    };
    assert!(
        wrapped.len() >= 2,
        "data key and link secrets: {}",
        wrapped.len()
    );
    let kek_path = kagi_node::seal::kek::key_file_path(&ecfg.store.seal, &ecfg.data_dir, &eid);
    let aside = TempDir::new("erase-kek-copy");
    let kek_copy = aside.0.join("old.kek");
    std::fs::copy(&kek_path, &kek_copy).unwrap();
    let emgmt = mgmt_client(&up, &erased_node);
    let erase = |body: Value| {
        let emgmt = &emgmt;
        async move {
            emgmt
                .request(
                    "POST",
                    "/api/v1/erase",
                    Some(serde_json::to_vec(&body).unwrap()),
                    false,
                )
                .await
                .unwrap()
        }
    };
    // A stray request erases nothing.
    let r = erase(json!({"confirm": eid.clone(), "reason": "x"})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(kek_path.exists());
    // The operator's command.
    let out = kagi()
        .args(["net", "--json", "--data-dir"])
        .arg(&up.dir)
        .args(["erase", &eid, "--confirm", &format!("erase {eid}")])
        .args(["--reason", "decommissioned"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["erased"], true, "{body}");
    assert!(!kek_path.exists(), "key file left: {body}");
    // The slave's keys are gone with the node: 503 naming the erase.
    let r = up
        .client("sae-chofu-a")
        .request(
            "GET",
            &format!(
                "/api/v1/keys/sae-koganei-a/dec_keys?key_ID={}",
                served[0].id
            ),
            None,
            false,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "{text}");
    assert!(text.contains("crypto-erased"), "{text}");

    // The tamper signal.
    let r = mgmt
        .request(
            "POST",
            "/api/v1/tamper",
            Some(
                serde_json::to_vec(&json!({"confirm_node": id, "reason": "enclosure opened"}))
                    .unwrap(),
            ),
            false,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Every ETSI call: 503 naming the signal.
    let r = ka
        .request("GET", "/api/v1/keys/sae-chofu-a/status", None, false)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "{body}");
    assert!(
        body.contains("tamper signal") && body.contains("enclosure opened"),
        "{body}"
    );
    let r = ka
        .request(
            "POST",
            "/api/v1/keys/sae-chofu-a/enc_keys",
            Some(b"{}".to_vec()),
            false,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503);

    // No key bytes left in the process (link sources stopped, core dropped and zeroized).
    let start = Instant::now();
    loop {
        let live = gauge(&metrics(&mgmt).await, "kagi_live_key_bytes").unwrap();
        if live == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{live} key bytes still live after the tamper signal (was {held})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = metrics(&mgmt).await;
    assert_eq!(gauge(&m, "kagi_node_tampered"), Some(1.0));
    let st: Value = serde_json::from_slice(
        &mgmt
            .request("GET", "/api/v1/status", None, false)
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(st["fenced"], true, "{st}");
    assert_eq!(st["tampered"]["source"], "management", "{st}");
    let trail: Value = serde_json::from_slice(
        &mgmt
            .request("GET", "/api/v1/audit/trail", None, false)
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        trail["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "node.tamper" && e["outcome"] == "fenced"),
        "{trail}"
    );

    // After a clean stop every trail of the network verifies, the tamper included.
    let dir = up.dir.clone();
    up.stop();
    let out = kagi().args(["audit", "verify"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        6,
        "{text}"
    );
    // The erased node's trail records the erase before and after the keys went.
    let etrail =
        std::fs::read_to_string(kagi_node::audit::trail_path(&ecfg.data_dir, &eid)).unwrap();
    let erasing = etrail
        .find("\"outcome\":\"erasing\"")
        .expect("erase announced");
    let erased = etrail
        .find("\"outcome\":\"erased\"")
        .expect("erase recorded");
    assert!(erasing < erased);
    // Nothing under the data directory holds what the old key file could open, nor the served
    // keys in any form.
    let b64 = base64::engine::general_purpose::STANDARD;
    for p in files_under(&dir) {
        let bytes = std::fs::read(&p).unwrap();
        for w in &wrapped {
            assert!(
                !contains(&bytes, w),
                "{} holds a wrapped secret",
                p.display()
            );
        }
        for k in &served {
            let raw = k.key.expose();
            assert!(!contains(&bytes, raw), "{} holds a served key", p.display());
            assert!(
                !contains(&bytes, b64.encode(raw).as_bytes()),
                "{} holds a served key in base64",
                p.display()
            );
        }
    }
    // The old key file opens nothing: the store has no wrapped data key left.
    let conn = kagi_node::store::open_db(&edb, ecfg.store.synchronous).unwrap();
    assert!(kagi_node::seal::meta_get(&conn, "dek").unwrap().is_none());
    drop(conn);
    std::fs::copy(&kek_copy, &kek_path).unwrap();
    // And the node refuses to start, naming the erase.
    let out = kagi()
        .args(["node", "--config"])
        .arg(dir.join("nodes").join(&eid).join("node.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "an erased node started: {err}");
    assert!(
        err.contains("crypto-erased") && err.contains("decommissioned"),
        "{err}"
    );
    // And an edited trail makes it fail, naming node and entry.
    let trail = std::fs::read_dir(dir.join("nodes").join(&id))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-audit.jsonl"))
        .unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(&trail)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines[1] = lines[1].replacen("\"outcome\":\"ok\"", "\"outcome\":\"no\"", 1);
    std::fs::write(&trail, lines.join("\n") + "\n").unwrap();
    let out = kagi().args(["audit", "verify"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("FAIL {id}: entry 2")), "{text}");
}
