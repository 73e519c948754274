//! The `kagi_route` ETSI 014 extension with real `kagi node` processes started by `kagi up
//! --topology docs/examples/three-paths.toml`: a and f are joined over exactly three
//! node-disjoint paths. A key asked for with `min_disjoint_paths = 3` in `extension_mandatory`
//! lists those three paths and is the same at both ends; constraints no paths can meet and
//! malformed extensions get 400 with the reason; with node b frozen (SIGSTOP) delivery goes on,
//! and a's heartbeats show b down within seconds although its connections stay open.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{TempDir, Up};
use kagi_node::client::Etsi014Client;
use serde_json::{json, Value};
use uuid::Uuid;

const ENC: &str = "/api/v1/keys/sae-f/enc_keys";

async fn post(c: &Etsi014Client, body: Value) -> (u16, Value) {
    let r = c
        .request("POST", ENC, Some(serde_json::to_vec(&body).unwrap()), false)
        .await
        .expect("request");
    assert!(
        [200, 400, 503].contains(&r.status),
        "status {} for {body}: {}",
        r.status,
        r.json()
    );
    (r.status, r.json())
}

/// Asks until served (503 means "not yet"); panics after `within`.
async fn served(c: &Etsi014Client, body: Value, within: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let (status, v) = post(c, body.clone()).await;
        match status {
            200 => return v,
            503 if t0.elapsed() < within => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => panic!("{body} answered {status}: {v}"),
        }
    }
}

/// Fetches the container's keys at f and checks they equal what a's master got.
async fn same_at_slave(f: &Etsi014Client, container: &Value) {
    let keys = container["keys"].as_array().unwrap();
    let ids: Vec<Uuid> = keys
        .iter()
        .map(|k| k["key_ID"].as_str().unwrap().parse().unwrap())
        .collect();
    let got = f.dec_keys("sae-a", &ids).await.expect("dec_keys at f");
    let b64 = base64_engine();
    for (k, g) in keys.iter().zip(&got) {
        let m = b64.decode(k["key"].as_str().unwrap()).unwrap();
        assert_eq!(m, g.key.expose(), "master and slave keys differ");
    }
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}
use base64::Engine as _;

/// The container's `kagi_route` paths, checked to run from a to f and be node-disjoint.
fn disjoint_paths(container: &Value) -> Vec<Vec<String>> {
    let paths: Vec<Vec<String>> =
        serde_json::from_value(container["key_container_extension"]["kagi_route"]["paths"].clone())
            .unwrap_or_else(|e| panic!("no kagi_route paths ({e}): {container}"));
    let mut seen = BTreeSet::new();
    for p in &paths {
        assert_eq!(
            (p.first().map(String::as_str), p.last().map(String::as_str)),
            (Some("a"), Some("f")),
            "{paths:?}"
        );
        for n in &p[1..p.len() - 1] {
            assert!(seen.insert(n.clone()), "{n} is on two paths: {paths:?}");
        }
    }
    paths
}

fn route(ext: &str, v: Value) -> Value {
    json!({ "number": 2, ext: [{ "kagi_route": v }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_disjoint_paths_on_request_and_delivery_survives_a_frozen_node() {
    let dir = TempDir::new("route");
    let topo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/three-paths.toml"
    );
    let up = Up::start(dir.path(), &["--topology", topo]);
    let a = up.client("sae-a").with_timeout(Duration::from_secs(10));
    let f = up.client("sae-f").with_timeout(Duration::from_secs(10));

    // Mandatory: three node-disjoint paths, listed in the container and in each key.
    let three = route("extension_mandatory", json!({"min_disjoint_paths": 3}));
    let c = served(&a, three.clone(), Duration::from_secs(60)).await;
    let paths = disjoint_paths(&c);
    assert_eq!(paths.len(), 3, "{c}");
    let mids: BTreeSet<&str> = paths.iter().map(|p| p[1].as_str()).collect();
    assert_eq!(mids, BTreeSet::from(["b", "c", "d"]));
    assert_eq!(
        c["key_container_extension"]["kagi_route"]["mandatory"],
        true
    );
    for k in c["keys"].as_array().unwrap() {
        assert_eq!(
            k["key_extension"]["kagi_route"]["paths"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
    same_at_slave(&f, &c).await;

    // Impossible constraints and malformed extensions: 400 with the reason, never 5xx.
    let (s, v) = post(
        &a,
        route("extension_mandatory", json!({"min_disjoint_paths": 4})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["message"],
        "not all extension_mandatory request options could be met"
    );
    let why = v["details"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("only 3 node-disjoint path(s) exist between a and f"),
        "{v}"
    );
    for (body, want) in [
        (
            route("extension_mandatory", json!({"avoid_nodes": ["zz"]})),
            "unknown node",
        ),
        (
            route("extension_optional", json!({"avoid_nodes": ["a"]})),
            "an end of the key's route",
        ),
        (
            route("extension_mandatory", json!({"min_disjoint_paths": -1})),
            "whole number",
        ),
        (
            route("extension_mandatory", json!({"min_disjoint_paths": "3"})),
            "whole number",
        ),
        (
            route("extension_mandatory", json!({"min_disjoint_paths": 1e30})),
            "whole number",
        ),
        (
            route(
                "extension_mandatory",
                json!({"min_disjoint_paths": 1_000_000}),
            ),
            "between 1 and 8",
        ),
        (
            route("extension_mandatory", json!({"max_hops": 0})),
            "max_hops must be between 1",
        ),
        (
            route("extension_mandatory", json!({"via": "b"})),
            "unknown field",
        ),
        (
            route("extension_mandatory", json!([3])),
            "must be a JSON object",
        ),
        (
            route(
                "extension_mandatory",
                json!({"max_hops": 1, "min_disjoint_paths": 1}),
            ),
            "only 0 node-disjoint path(s)",
        ),
    ] {
        let (s, v) = post(&a, body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        let text = v.to_string();
        assert!(text.contains(want), "{body}: {v} lacks {want}");
    }

    // Freeze b, an intermediate node of one of the three paths.
    let pid: i32 = std::fs::read_to_string(up.dir.join("nodes/b/node.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stopped = Frozen::stop(pid);
    let t0 = Instant::now();
    // Plain key keeps coming. Key split over the three paths keeps coming while a holds some
    // (two shares rebuild it without b's); once a's heartbeats show b silent (about 2 s; b
    // keeps its connections open, so nothing else tells), a relays no more key over b and
    // says why it cannot serve three paths now.
    let mut rounds = 0;
    let mut detected = None;
    while t0.elapsed() < Duration::from_secs(6) || rounds < 5 || detected.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "a never saw b down while it was frozen"
        );
        let plain = served(&a, json!({"number": 2}), Duration::from_secs(10)).await;
        same_at_slave(&f, &plain).await;
        let (s, v) = post(&a, three.clone()).await;
        match s {
            200 => {
                assert_eq!(disjoint_paths(&v).len(), 3);
                same_at_slave(&f, &v).await;
            }
            503 if v.to_string().contains("while b is down") => {
                detected.get_or_insert(t0.elapsed());
            }
            _ => panic!("three paths with b frozen: {s}: {v}"),
        }
        rounds += 1;
    }
    let detected = detected.unwrap();
    assert!(
        detected < Duration::from_secs(8),
        "b seen down only {detected:?} after it froze"
    );
    // Key relayed around b on request: the pool had none, refill relays it over c and d.
    let around = route(
        "extension_mandatory",
        json!({"min_disjoint_paths": 2, "avoid_nodes": ["b"]}),
    );
    let c = served(&a, around, Duration::from_secs(30)).await;
    let paths = disjoint_paths(&c);
    assert!(
        paths.len() >= 2 && paths.iter().all(|p| !p.contains(&"b".to_string())),
        "{c}"
    );
    same_at_slave(&f, &c).await;
    drop(stopped);
    up.stop();
}

/// A process stopped with SIGSTOP, continued on drop (so the network can shut down).
struct Frozen(i32);

impl Frozen {
    fn stop(pid: i32) -> Self {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "could not stop pid {pid}");
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}
