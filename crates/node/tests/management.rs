//! The management listener of real nodes (in one process, real mutual TLS, real SQLite): role
//! checks with real certificates, bad input, operator actions and their audit trail, the
//! Prometheus scrape parsed by real parsers, and the OpenAPI description against the routes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kagi_control::Topology;
use kagi_node::client::{Etsi014Client, RawResponse};
use kagi_node::config::{ManagementConfig, PoolConfig};
use kagi_node::mgmt::api::{OPENAPI, ROUTES};
use kagi_node::mgmt::Role;
use kagi_node::pki::Pki;
use serde_json::{json, Value};

struct Net {
    dir: PathBuf,
    topo: Topology,
    mgmt: Vec<String>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn start() -> Net {
    let dir = kagi_node::loopback::scratch_dir("mgmt").unwrap();
    let mut topo = Topology::line("line3", &["a", "b", "c"], 20.0, |n| {
        vec![format!("sae-{n}")]
    });
    topo.seed = 5;
    topo.epoch_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    topo.rate_multiplier = 5.0;
    let mut mgmt = Vec::new();
    let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |c| {
        c.pool = PoolConfig {
            target_bytes: 4096,
            relay_chunk_bytes: 1024,
            ..PoolConfig::default()
        };
    })
    .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for mut cfg in cfgs {
        let addr = format!("127.0.0.1:{}", kagi_node::loopback::free_port().unwrap());
        mgmt.push(format!("https://{addr}"));
        cfg.management = Some(ManagementConfig { listen: addr });
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(kagi_node::run_node(cfg, async move {
            let _ = rx.wait_for(|v| *v).await;
        })));
    }
    Net {
        dir,
        topo,
        mgmt,
        stop,
        tasks,
    }
}

impl Net {
    fn client(&self, node: usize, cert: &Path, key: &Path) -> Etsi014Client {
        let pki = Pki::open_or_create(&self.dir.join("pki")).unwrap();
        Etsi014Client::from_files(&self.mgmt[node], &pki.ca_cert_path(), cert, key)
            .unwrap()
            .with_timeout(Duration::from_secs(10))
    }
    fn role(&self, node: usize, role: Role) -> Etsi014Client {
        let pki = Pki::open_or_create(&self.dir.join("pki")).unwrap();
        let p = pki.ensure_operator(role).unwrap();
        self.client(node, &p.cert, &p.key)
    }
    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn call(c: &Etsi014Client, method: &str, path: &str, body: Option<Value>) -> RawResponse {
    // Retry while the listener is still starting: a node opening its sealed store and issuing
    // its checkpoint key can take well over 10 s on a loaded 2-core machine.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        match c
            .request(
                method,
                path,
                body.as_ref().map(|b| b.to_string().into_bytes()),
                false,
            )
            .await
        {
            Ok(r) => return r,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{method} {path}: management listener never answered");
}

/// Waits until a node started in this process answers its management API; a node that stops
/// instead is reported by its own error rather than by a silent 90 s timeout.
async fn wait_answering(c: &Etsi014Client, task: &mut tokio::task::JoinHandle<anyhow::Result<()>>) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        if task.is_finished() {
            match task.await {
                Ok(Ok(())) => panic!("the node stopped before answering its management API"),
                Ok(Err(e)) => panic!("the node stopped at start-up: {e:#}"),
                Err(e) => panic!("the node task failed: {e}"),
            }
        }
        if c.request("GET", "/api/v1/status", None, false)
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("management listener never answered");
}

fn message(r: &RawResponse) -> String {
    r.json()["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_roles_actions_metrics_and_openapi() {
    let net = start().await;
    let observer = net.role(0, Role::Observer);
    let auditor = net.role(0, Role::Auditor);
    let operator = net.role(0, Role::Operator);

    // --- Reads.
    let r = call(&observer, "GET", "/api/v1/status", None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let st = r.json();
    assert_eq!(st["node_id"], "a");
    assert_eq!(st["links"][0]["peer"], "b");
    for p in [
        "/api/v1/links",
        "/api/v1/pools",
        "/api/v1/relays",
        "/api/v1/saes",
        "/api/v1/refusals",
        "/metrics",
    ] {
        assert_eq!(call(&observer, "GET", p, None).await.status, 200, "{p}");
    }
    let saes = call(&observer, "GET", "/api/v1/saes", None).await.json();
    assert_eq!(saes["limits"]["max_key_per_request"], 1024);
    assert_eq!(saes["saes"].as_array().unwrap().len(), 3);

    // --- Role policy with real certificates.
    let r = call(
        &observer,
        "PUT",
        "/api/v1/drain",
        Some(json!({"draining": true})),
    )
    .await;
    assert_eq!(r.status, 403, "an observer cannot drain");
    assert!(message(&r).contains("observer"), "{}", message(&r));
    let r = call(
        &observer,
        "PUT",
        "/api/v1/saes/sae-a/limits",
        Some(json!({"bytes_per_second": 5})),
    )
    .await;
    assert_eq!(r.status, 403, "an observer cannot change limits");
    assert_eq!(
        call(&observer, "GET", "/api/v1/audit", None).await.status,
        403
    );
    assert_eq!(
        call(&auditor, "GET", "/api/v1/audit", None).await.status,
        200
    );
    assert_eq!(
        call(
            &auditor,
            "PUT",
            "/api/v1/links/b/service",
            Some(json!({"in_service": false}))
        )
        .await
        .status,
        403,
        "an auditor cannot take links out"
    );
    let pki = Pki::open_or_create(&net.dir.join("pki")).unwrap();
    let sae = pki.sae_paths("sae-a");
    let node = pki.node_paths("a");
    for (who, c) in [
        ("SAE", net.client(0, &sae.cert, &sae.key)),
        ("node", net.client(0, &node.cert, &node.key)),
    ] {
        for (m, p) in [
            ("GET", "/api/v1/status"),
            ("GET", "/metrics"),
            ("GET", "/nope"),
        ] {
            let r = call(&c, m, p, None).await;
            assert_eq!(r.status, 403, "{who} certificate on {p}");
            assert!(
                message(&r).contains("no management role"),
                "{}",
                message(&r)
            );
        }
    }

    // --- Bad input: 400 with a clear message.
    for (path, body, want) in [
        (
            "/api/v1/links/zz/service",
            json!({"in_service": false}),
            "unknown node",
        ),
        (
            "/api/v1/links/c/service",
            json!({"in_service": false}),
            "not a neighbour",
        ),
        (
            "/api/v1/links/b/service",
            json!({"in_service": "no"}),
            "invalid JSON body",
        ),
        (
            "/api/v1/links/b/service",
            json!({"in_service": false, "x": 1}),
            "unknown field",
        ),
        (
            "/api/v1/saes/sae-a/limits",
            json!({"bytes_per_second": -1}),
            "invalid JSON body",
        ),
        (
            "/api/v1/saes/nobody/limits",
            json!({"bytes_per_second": 1}),
            "unknown SAE",
        ),
        (
            "/api/v1/saes/sae-a/limits",
            json!({"keys_per_second": 1}),
            "unknown field",
        ),
        (
            "/api/v1/saes/sae-a/limits",
            json!({"bytes_per_second": 1, "burst_bytes": 0}),
            "at least 1",
        ),
        (
            "/api/v1/saes/sae-a/limits",
            json!({"burst_bytes": 5}),
            "needs bytes_per_second",
        ),
        (
            "/api/v1/saes/sae-a/limits",
            json!({"priority": "urgent"}),
            "invalid JSON body",
        ),
        (
            "/api/v1/saes/sae-a/pairs/nobody/limits",
            json!({"bytes_per_second": 1}),
            "unknown slave SAE",
        ),
        (
            "/api/v1/saes/sae-a/pairs/sae-a/limits",
            json!({"bytes_per_second": 1}),
            "its own slave",
        ),
        (
            "/api/v1/saes/sae-c/pairs/sae-a/limits",
            json!({"bytes_per_second": 1}),
            "attached to node c",
        ),
        (
            "/api/v1/saes/sae-a/pairs/sae-c/limits",
            json!({"bytes_per_second": 1u64 << 50}),
            "at most",
        ),
        ("/api/v1/drain", json!([1, 2]), "invalid JSON body"),
    ] {
        let r = call(&operator, "PUT", path, Some(body)).await;
        assert_eq!(r.status, 400, "{path}");
        assert!(message(&r).contains(want), "{path}: {}", message(&r));
    }
    let r = operator
        .request("PUT", "/api/v1/drain", Some(b"{not json".to_vec()), false)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        message(&r).starts_with("invalid JSON body"),
        "{}",
        message(&r)
    );
    assert_eq!(
        call(&operator, "GET", "/api/v1/nope", None).await.status,
        404
    );
    assert_eq!(
        call(&operator, "DELETE", "/api/v1/status", None)
            .await
            .status,
        405
    );
    // Per-SAE key rate limits change at run time and show in the SAE list.
    let r = call(
        &operator,
        "PUT",
        "/api/v1/saes/sae-a/limits",
        Some(json!({"bytes_per_second": 100, "burst_bytes": 640, "daily_bytes": 100000})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", message(&r));
    let saes = call(&observer, "GET", "/api/v1/saes", None).await.json();
    let a = saes["saes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sae"] == "sae-a")
        .unwrap()
        .clone();
    assert_eq!(a["rate_limit"]["bytes_per_second"], 100, "{a}");
    assert_eq!(a["rate_limit"]["burst_bytes"], 640, "{a}");
    let r = call(
        &operator,
        "PUT",
        "/api/v1/saes/sae-c/limits",
        Some(json!({"bytes_per_second": 100})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        message(&r).contains("attached to node c"),
        "{}",
        message(&r)
    );
    // A pair's limit and priority, shown under its master; DELETE drops it again.
    let pair = "/api/v1/saes/sae-a/pairs/sae-c/limits";
    let r = call(
        &operator,
        "PUT",
        pair,
        Some(json!({"bytes_per_second": 50, "priority": "high"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", message(&r));
    let saes = call(&observer, "GET", "/api/v1/saes", None).await.json();
    let a = saes["saes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sae"] == "sae-a")
        .unwrap()
        .clone();
    assert_eq!(a["pair_limits"]["sae-c"]["priority"], "high", "{a}");
    assert_eq!(a["pair_limits"]["sae-c"]["bytes_per_second"], 50, "{a}");
    let r = call(&operator, "DELETE", pair, None).await;
    assert_eq!(r.status, 200, "{}", message(&r));
    assert_eq!(r.json()["limit"], Value::Null, "{:?}", r.json());
    let saes = call(&observer, "GET", "/api/v1/saes", None).await.json();
    assert!(
        saes["saes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["pair_limits"].is_null()),
        "{saes}"
    );
    // Back to a limit the rest of this test never reaches.
    let r = call(
        &operator,
        "PUT",
        "/api/v1/saes/sae-a/limits",
        Some(json!({"bytes_per_second": 1u64 << 40})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", message(&r));
    // An erase must spell out its target: anything else is refused and nothing is erased.
    for body in [
        json!({"confirm": "erase b"}),
        json!({"confirm": "a"}),
        json!({"confirm_node": "a"}),
    ] {
        let r = call(&operator, "POST", "/api/v1/erase", Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {}", message(&r));
    }
    let r = call(
        &operator,
        "POST",
        "/api/v1/erase",
        Some(json!({"confirm": "erase b"})),
    )
    .await;
    assert!(message(&r).contains("\"erase a\""), "{}", message(&r));
    let r = call(
        &observer,
        "POST",
        "/api/v1/erase",
        Some(json!({"confirm": "erase a"})),
    )
    .await;
    assert_eq!(r.status, 403, "an observer may not erase");

    // --- Link out of service: the route to b disappears (line a-b-c), and comes back.
    let route_to = |v: &Value, peer: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == peer)
            .unwrap()["route"]
            .clone()
    };
    let r = call(
        &operator,
        "PUT",
        "/api/v1/links/b/service",
        Some(json!({"in_service": false, "reason": "fibre work"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", message(&r));
    let pools = call(&observer, "GET", "/api/v1/pools", None).await.json();
    assert_eq!(route_to(&pools, "c"), json!([]));
    let links = call(&observer, "GET", "/api/v1/links", None).await.json();
    assert_eq!(links[0]["state"], "out_of_service");
    // The ETSI 015 view: the link makes no key (PASSIVE while link key is left, else OFF).
    let v = call(
        &observer,
        "GET",
        "/restconf/data/etsi-qkd-sdn-node:qkd_node",
        None,
    )
    .await
    .json();
    let n = &v["etsi-qkd-sdn-node:qkd_node"];
    let l = &n["qkd_links"]["qkd_link"][0];
    assert!(
        ["etsi-qkd-node-types:PASSIVE", "etsi-qkd-node-types:OFF"]
            .contains(&l["qkdl_status"].as_str().unwrap()),
        "{l}"
    );
    assert_eq!(l["qkdl_enable"], false);
    assert_eq!(
        n["qkd_interfaces"]["qkd_interface"][0]["qkdi_status"],
        "etsi-qkd-node-types:DISABLED"
    );
    let r = call(
        &operator,
        "PUT",
        "/api/v1/links/b/service",
        Some(json!({"in_service": true})),
    )
    .await;
    assert_eq!(r.status, 200);
    let pools = call(&observer, "GET", "/api/v1/pools", None).await.json();
    assert_eq!(route_to(&pools, "c"), json!(["a", "b", "c"]));

    // --- Drain: new enc_keys get 503, counted as refusals and in metrics.
    let r = call(
        &operator,
        "PUT",
        "/api/v1/drain",
        Some(json!({"draining": true, "reason": "maintenance"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let sae_a = kagi_node::loopback::sae_client(&net.dir, &net.topo, "sae-a").unwrap();
    let e = sae_a
        .enc_keys_get("sae-c", Some(1), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("draining"), "{e}");
    let refusals = call(&observer, "GET", "/api/v1/refusals", None)
        .await
        .json();
    assert!(
        refusals
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == "draining" && r["caller"] == "sae-a"),
        "{refusals}"
    );
    assert_eq!(
        call(
            &operator,
            "PUT",
            "/api/v1/drain",
            Some(json!({"draining": false}))
        )
        .await
        .status,
        200
    );

    // --- Every action audited, with the operator's identity and role.
    let audit = call(&auditor, "GET", "/api/v1/audit", None).await.json();
    let actions: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("link.out_of_service", "ok"),
        ("link.in_service", "ok"),
        ("node.drain", "ok"),
        ("node.undrain", "ok"),
        ("sae.limits", "ok"),
        ("sae.limits", "refused"),
        ("link.out_of_service", "refused"),
    ] {
        assert!(
            actions.contains(&(want.0.into(), want.1.into())),
            "{want:?} not in {actions:?}"
        );
    }
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "kagi-operator" && e["role"] == "operator"));

    // --- Metrics: wait until link key has arrived, then parse.
    let mut text = String::new();
    for _ in 0..100 {
        text = String::from_utf8(call(&observer, "GET", "/metrics", None).await.body.to_vec())
            .unwrap();
        if text.contains("kagi_link_key_in_bytes_total{peer=\"b\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_metrics(&text);
    grafana_queries_known_metrics(&text);

    // --- OpenAPI: served, equal to the checked-in file, and in step with the routes.
    let r = call(&observer, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let served = r.json();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/management-openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, file);
    assert_eq!(served, serde_json::from_str::<Value>(OPENAPI).unwrap());
    let mut documented = Vec::new();
    for (path, ops) in served["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            documented.push((m.to_uppercase(), path.clone()));
        }
    }
    let mut routed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    routed.sort();
    assert_eq!(
        documented, routed,
        "docs/management-openapi.json and ROUTES differ"
    );
    for (m, p, perm) in ROUTES {
        let role = served["paths"][p][m.to_lowercase()]["x-kagi-role"]
            .as_str()
            .unwrap();
        let least = Role::ALL.into_iter().find(|r| r.may(*perm)).unwrap();
        assert_eq!(role, least.name(), "{m} {p}");
    }
    net.stop().await;
}

/// Parses the scrape with prometheus-parse and, where installed, the strict OpenMetrics parser
/// of the official Python client (Debian's python3-prometheus-client; `.ci/run` installs it).
fn check_metrics(text: &str) {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
    let names: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for want in [
        "kagi_up",
        "kagi_link_key_in_bytes_total",
        "kagi_link_buffer_bytes",
        "kagi_link_key_rate_bytes_per_second",
        "kagi_pool_bytes",
        "kagi_relays_started_total",
        "kagi_relays_acked_total",
        "kagi_relays_abandoned_total",
        "kagi_peer_stores_replaced_total",
        "kagi_rollbacks_detected_total",
        "kagi_slave_keys_discarded_total",
        "kagi_slave_refetches_total",
        "kagi_slave_graces_ended_total",
        "kagi_slave_keys_expired_total",
        "kagi_stale_dropped_total",
        "kagi_pool_chunks_missing_total",
        "kagi_link_key_discarded_bytes_total",
        "kagi_pool_key_discarded_bytes_total",
        "kagi_etsi014_requests_total",
        "kagi_etsi014_request_duration_seconds",
        "kagi_refusals_total",
        "kagi_store_commit_duration_seconds",
        "kagi_audit_events_total",
        "kagi_peers_up",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    let value = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| s.value.clone())
    };
    assert!(
        matches!(value("kagi_refusals_total", ("reason", "draining")), Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v)) if v >= 1.0)
    );
    assert!(
        matches!(value("kagi_etsi014_request_duration_seconds", ("endpoint", "enc_keys")), Some(prometheus_parse::Value::Histogram(h)) if !h.is_empty())
    );
    let py = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
fams = list(text_string_to_metric_families(sys.stdin.read()))
print(len(fams))
"#;
    // Debian's interpreter, where apt installs the module (a PATH python3 may be another one).
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let child = std::process::Command::new(python)
        .args(["-c", py])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED strict OpenMetrics check: no python3");
        return;
    };
    use std::io::Write;
    // Without prometheus_client, python exits before reading: the write then fails with a
    // broken pipe, and the "No module named" check below skips the test.
    let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named 'prometheus_client'") {
        eprintln!("SKIPPED strict OpenMetrics check: python3-prometheus-client is not installed (apt-get install python3-prometheus-client)");
        return;
    }
    assert!(
        out.status.success(),
        "OpenMetrics parser rejected the scrape: {err}\n{text}"
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(n >= 20, "{n} metric families");
}

/// Every metric the checked-in Grafana dashboard queries exists in a real scrape.
fn grafana_queries_known_metrics(scrape: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10);
    let mut checked = 0;
    for e in &exprs {
        for (i, _) in e.match_indices("kagi_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                scrape.lines().any(|l| l.starts_with(&name)),
                "Grafana queries {name}, which /metrics does not expose"
            );
            checked += 1;
        }
    }
    assert!(checked >= exprs.len());
}

/// A link taken out of service and a drain survive a restart of the node: a node restarted
/// for maintenance does not route over a link whose fibre is being repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_service_and_drain_survive_a_restart() {
    let dir = kagi_node::loopback::scratch_dir("mgmt-restart").unwrap();
    let mut topo = Topology::line("line3", &["a", "b", "c"], 20.0, |n| {
        vec![format!("sae-{n}")]
    });
    topo.epoch_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let mut cfg = kagi_node::loopback::prepare(&dir, &mut topo, |_| {})
        .unwrap()
        .remove(1);
    let addr = format!("127.0.0.1:{}", kagi_node::loopback::free_port().unwrap());
    cfg.management = Some(ManagementConfig {
        listen: addr.clone(),
    });
    let pki = Pki::open_or_create(&dir.join("pki")).unwrap();
    let client = |role: Role| {
        let p = pki.ensure_operator(role).unwrap();
        Etsi014Client::from_files(
            &format!("https://{addr}"),
            &pki.ca_cert_path(),
            &p.cert,
            &p.key,
        )
        .unwrap()
        .with_timeout(Duration::from_secs(10))
    };
    let (operator, observer) = (client(Role::Operator), client(Role::Observer));
    let run = |cfg: kagi_node::config::NodeConfig| {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(kagi_node::run_node(cfg, async move {
            let _ = rx.wait_for(|v| *v).await;
        }));
        (stop, task)
    };
    let state_of = |links: &Value, peer: &str| {
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["peer"] == peer)
            .map(|l| l["state"].clone())
            .unwrap()
    };

    let (stop, mut task) = run(cfg.clone());
    wait_answering(&observer, &mut task).await;
    for (path, body) in [
        ("/api/v1/links/c/service", json!({"in_service": false})),
        ("/api/v1/drain", json!({"draining": true})),
    ] {
        let r = call(&operator, "PUT", path, Some(body)).await;
        assert_eq!(r.status, 200, "{path}: {}", message(&r));
    }
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("node b stops")
        .unwrap()
        .unwrap();

    let (stop, mut task) = run(cfg.clone());
    wait_answering(&observer, &mut task).await;
    let links = call(&observer, "GET", "/api/v1/links", None).await.json();
    assert_eq!(state_of(&links, "c"), "out_of_service", "{links}");
    assert_ne!(state_of(&links, "a"), "out_of_service", "{links}");
    let status = call(&observer, "GET", "/api/v1/status", None).await.json();
    assert_eq!(status["draining"], true, "{status}");
    // Put back, restart once more: back in service and not draining.
    for (path, body) in [
        ("/api/v1/links/c/service", json!({"in_service": true})),
        ("/api/v1/drain", json!({"draining": false})),
    ] {
        assert_eq!(call(&operator, "PUT", path, Some(body)).await.status, 200);
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    let (stop, mut task) = run(cfg);
    wait_answering(&observer, &mut task).await;
    let links = call(&observer, "GET", "/api/v1/links", None).await.json();
    assert_ne!(state_of(&links, "c"), "out_of_service", "{links}");
    let status = call(&observer, "GET", "/api/v1/status", None).await.json();
    assert_eq!(status["draining"], false, "{status}");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    let _ = std::fs::remove_dir_all(&dir);
}
