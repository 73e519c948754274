//! Tamper response on a network started by `kagi up` (real processes): an operator sends the
//! tamper signal to one node through the management API; afterwards that node process holds no
//! key bytes (its live-key gauge drops to zero), answers every ETSI 014 call with 503 naming the
//! signal, reports the fence in status and metrics, and its audit trail — checked by
//! `kagi audit verify` over the whole data directory — records it.

mod common;

use std::time::{Duration, Instant};

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
