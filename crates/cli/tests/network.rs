//! A real kagi network on loopback: `kagi up` starts six `kagi node` processes (built-in Tokyo
//! topology) with real mutual TLS; the tests talk ETSI GS QKD 014 to them with kagi's client and
//! with raw requests, then restart the network on the same directory.
//!
//! Everything runs in one test function on one network: starting six nodes is the expensive
//! part, and the scenarios are independent pairs of SAEs.

mod common;

use common::{TempDir, Up};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kagi_km::app::DeliveredKey;
use kagi_node::client::{ClientError, Etsi014Client, RawResponse};
use kagi_node::etsi014::wire;
use kagi_node::pki::Pki;
use serde_json::{json, Value};
use uuid::Uuid;

/// Six nodes per network on a small machine: one network at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client at `at_sae`'s node with a CA-signed certificate for `cn`.
fn client_as(up: &Up, at_sae: &str, cn: &str) -> Etsi014Client {
    let (n, _) = up.node_of(at_sae);
    let pki = Pki::open_or_create(&up.dir.join("pki")).unwrap();
    let c = pki.issue_client(cn).unwrap();
    let cert = up.dir.join(format!("{cn}.pem"));
    let key = up.dir.join(format!("{cn}-key.pem"));
    std::fs::write(&cert, c.cert_pem).unwrap();
    std::fs::write(&key, c.key_pem).unwrap();
    Etsi014Client::from_files(
        n["etsi014_url"].as_str().unwrap(),
        &up.path(&up.net["ca"]),
        &cert,
        &key,
    )
    .unwrap()
}

/// `enc_keys`, retrying while the pool is still filling (503).
async fn enc(c: &Etsi014Client, slave: &str, req: &wire::KeyRequest) -> Vec<DeliveredKey> {
    let start = Instant::now();
    loop {
        match c.enc_keys(slave, req).await {
            Ok(k) => return k,
            Err(ClientError::Refused {
                status: 503,
                message,
            }) if start.elapsed() < Duration::from_secs(60) => {
                let _ = message;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("enc_keys for {slave}: {e}"),
        }
    }
}

fn req(number: u64, size: u64) -> wire::KeyRequest {
    wire::KeyRequest {
        number: Some(number),
        size: Some(size),
        ..Default::default()
    }
}

async fn raw(c: &Etsi014Client, method: &str, target: &str, body: Option<Value>) -> RawResponse {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    let r = c.request(method, target, body, false).await.unwrap();
    assert!(
        [200, 400, 401, 503].contains(&r.status),
        "{method} {target}: {}",
        r.status
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    if r.status != 200 {
        assert!(
            r.json()["message"].is_string(),
            "{method} {target}: {:?}",
            r.body
        );
    }
    r
}

async fn expect(
    c: &Etsi014Client,
    method: &str,
    target: &str,
    body: Option<Value>,
    status: u16,
) -> String {
    let r = raw(c, method, target, body).await;
    assert_eq!(r.status, status, "{method} {target}: {}", r.json());
    r.json()["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_network_delivers_identical_keys_and_follows_etsi_014() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("net");
    let up = Up::start(&tmp.0, &[]);

    // network.json: the shape issue 2 promises, with paths relative to the data directory.
    assert!(up.dir.join(up.net["ca"].as_str().unwrap()).exists());
    let nodes = up.net["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    for n in nodes {
        assert!(n["etsi014_url"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"));
        for s in n["saes"].as_array().unwrap() {
            assert!(!Path::new(s["cert"].as_str().unwrap()).is_absolute());
            assert!(up.dir.join(s["key"].as_str().unwrap()).exists());
        }
    }
    assert_eq!(up.net["links"].as_array().unwrap().len(), 8);
    assert!(up.net["links"][0]["length_km"].is_number());

    // --- identical keys over 1 hop (koganei—chofu) and 3 hops (koganei→hakusan), both forms.
    let ka = up.client("sae-koganei-a");
    let one_hop = enc(&ka, "sae-chofu-a", &req(4, 256)).await;
    assert_eq!(one_hop.len(), 4);
    let ids: Vec<Uuid> = one_hop.iter().map(|k| k.id).collect();
    let got = up
        .client("sae-chofu-a")
        .dec_keys("sae-koganei-a", &ids)
        .await
        .unwrap();
    assert_eq!(got, one_hop, "1 hop: same IDs and bytes");

    let three_hops = enc(&ka, "sae-hakusan-a", &req(3, 512)).await;
    assert!(three_hops.iter().all(|k| k.key.len() == 64));
    let ha = up.client("sae-hakusan-a");
    for k in &three_hops {
        let got = ha.dec_keys_get("sae-koganei-a", k.id).await.unwrap();
        assert_eq!(got, vec![k.clone()], "3 hops: same key for {}", k.id);
    }
    let via_get = loop {
        match ka.enc_keys_get("sae-ueno-b", Some(2), None).await {
            Ok(k) => break k,
            Err(ClientError::Refused { status: 503, .. }) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        via_get.iter().all(|k| k.key.len() == 32),
        "default key_size 256"
    );
    let got = up
        .client("sae-ueno-b")
        .dec_keys("sae-koganei-a", &[via_get[1].id, via_get[0].id])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![via_get[1].clone(), via_get[0].clone()],
        "answer in request order"
    );
    // Distinct keys are distinct.
    assert_ne!(three_hops[0].key, three_hops[1].key);

    // --- delivery grace: the same slave may fetch a key again for a while (its reply may have
    // been lost), with the same bytes; another SAE at that node still gets 401. After the grace
    // (60 s by default; `[delivery] grace_s`) it is "not found": see `sim/tests/delivery.rs`.
    let again = ha
        .dec_keys("sae-koganei-a", &[three_hops[0].id])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![three_hops[0].clone()],
        "a fetch within the grace"
    );
    let err = up
        .client("sae-hakusan-b")
        .dec_keys("sae-koganei-a", &[three_hops[0].id])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { status: 401, .. }),
        "another SAE at the slave's node: {err}"
    );

    // --- status: true counts and identities.
    let st = ka.status("sae-hakusan-b").await.unwrap();
    assert_eq!(st.source_kme_id, "koganei");
    assert_eq!(st.target_kme_id, "hakusan");
    assert_eq!(
        (st.master_sae_id.as_str(), st.slave_sae_id.as_str()),
        ("sae-koganei-a", "sae-hakusan-b")
    );
    assert!(st.min_key_size <= st.key_size && st.key_size <= st.max_key_size);
    assert!(st.stored_key_count <= st.max_key_count);
    // What status says is ready can be taken at once.
    let start = Instant::now();
    let mut st = st;
    while st.stored_key_count == 0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        st = ka.status("sae-hakusan-b").await.unwrap();
    }
    let n = st.stored_key_count.min(st.max_key_per_request);
    assert!(n > 0, "pool for hakusan never filled");
    let taken = ka
        .enc_keys("sae-hakusan-b", &req(n, st.key_size))
        .await
        .unwrap();
    assert_eq!(taken.len() as u64, n);
    let st_raw = raw(&ka, "GET", "/api/v1/keys/sae-hakusan-b/status", None)
        .await
        .json();
    for k in [
        "source_KME_ID",
        "target_KME_ID",
        "master_SAE_ID",
        "slave_SAE_ID",
        "key_size",
        "stored_key_count",
        "max_key_count",
        "max_key_per_request",
        "max_key_size",
        "min_key_size",
        "max_SAE_ID_count",
    ] {
        assert!(st_raw.get(k).is_some(), "status lacks {k}: {st_raw}");
    }

    // --- multicast: the same keys at every named slave's node, nobody else.
    let mreq = wire::KeyRequest {
        number: Some(2),
        additional_slave_sae_ids: Some(vec!["sae-ueno-a".into(), "sae-chofu-b".into()]),
        ..Default::default()
    };
    let mkeys = enc(&ka, "sae-hakusan-b", &mreq).await;
    let mids: Vec<Uuid> = mkeys.iter().map(|k| k.id).collect();
    // Not named. At a node that holds none of these keys the KME cannot tell a stranger from
    // a typo: 401 or "not found" (400); never the keys.
    let err = up
        .client("sae-otemachi-a")
        .dec_keys("sae-koganei-a", &mids)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { status: 401, .. })
            || matches!(&err, ClientError::Refused { status: 400, message }
                if message == "one or more keys specified are not found on KME"),
        "{err}"
    );
    // At a node that holds them for another SAE (a named slave's node): see
    // `a_stranger_at_a_named_slaves_node_gets_401` below.
    for s in ["sae-hakusan-b", "sae-ueno-a", "sae-chofu-b"] {
        let got = up.client(s).dec_keys("sae-koganei-a", &mids).await.unwrap();
        assert_eq!(got, mkeys, "multicast slave {s}");
    }

    // --- 401: wrong master in the path; certificate that maps to no SAE.
    let k = enc(&ka, "sae-otemachi-b", &req(1, 256)).await;
    let ob = up.client("sae-otemachi-b");
    let body = json!({"key_IDs": [{"key_ID": k[0].id.to_string()}]});
    expect(
        &ob,
        "POST",
        "/api/v1/keys/sae-chofu-a/dec_keys",
        Some(body.clone()),
        401,
    )
    .await;
    let mallory = client_as(&up, "sae-koganei-a", "mallory");
    expect(
        &mallory,
        "GET",
        "/api/v1/keys/sae-hakusan-a/status",
        None,
        401,
    )
    .await;
    expect(
        &mallory,
        "POST",
        "/api/v1/keys/sae-hakusan-a/enc_keys",
        Some(json!({})),
        401,
    )
    .await;
    // ... and the key is still there for its slave.
    let got = ob.dec_keys("sae-koganei-a", &[k[0].id]).await.unwrap();
    assert_eq!(got, k);

    // --- 400 with the standard's fixed messages, and the other 400s.
    let enc_path = "/api/v1/keys/sae-hakusan-a/enc_keys";
    assert_eq!(
        expect(&ka, "POST", enc_path, Some(json!({"size": 100})), 400).await,
        "size shall be a multiple of 8"
    );
    assert_eq!(
        expect(
            &ka,
            "POST",
            enc_path,
            Some(json!({"extension_mandatory": [{"abc_route": "x"}]})),
            400
        )
        .await,
        "not all extension_mandatory parameters are supported"
    );
    let unknown = Uuid::new_v4();
    assert_eq!(
        expect(
            &ha,
            "GET",
            &format!("/api/v1/keys/sae-koganei-a/dec_keys?key_ID={unknown}"),
            None,
            400
        )
        .await,
        "one or more keys specified are not found on KME"
    );
    expect(&ka, "POST", enc_path, Some(json!({"number": 0})), 400).await;
    expect(&ka, "POST", enc_path, Some(json!({"size": 8})), 400).await;
    expect(&ka, "POST", enc_path, Some(json!({"number": -3})), 400).await;
    expect(&ka, "GET", "/api/v1/keys/sae-nobody/status", None, 400).await;
    expect(&ka, "GET", "/api/v1/keys/sae%2Fhakusan-a/status", None, 400).await;
    expect(&ka, "GET", "/api/v1/keys/sae-hakusan-a/whatever", None, 400).await;
    expect(&ka, "DELETE", enc_path, None, 400).await;
    // Unknown optional extensions are ignored.
    let r = raw(
        &ka,
        "POST",
        enc_path,
        Some(json!({"number": 1, "extension_optional": [{"abc_x": 1}]})),
    )
    .await;
    assert!(r.status == 200 || r.status == 503, "{}", r.json());

    // --- 503: more key than a pool can hold at once.
    let m = expect(
        &ka,
        "POST",
        enc_path,
        Some(json!({"number": 1024, "size": 8192})),
        503,
    )
    .await;
    assert!(!m.is_empty());

    // --- a restarted network keeps its keys: the master takes keys, every node stops, then
    // the slave fetches them after `kagi up` runs again on the same directory.
    let kept = enc(&ka, "sae-ueno-a", &req(2, 256)).await;
    let kept_multi = enc(&ka, "sae-chofu-a", &req(1, 128)).await;
    drop(ka);
    drop(ha);
    up.stop();
    let up = Up::start(&tmp.0, &[]);
    let ids: Vec<Uuid> = kept.iter().map(|k| k.id).collect();
    let got = up
        .client("sae-ueno-a")
        .dec_keys("sae-koganei-a", &ids)
        .await
        .unwrap();
    assert_eq!(got, kept, "keys survive a restart of every node");
    let got = up
        .client("sae-chofu-a")
        .dec_keys("sae-koganei-a", &[kept_multi[0].id])
        .await
        .unwrap();
    assert_eq!(got, kept_multi);
    // And the restarted network serves new keys.
    let fresh = enc(&up.client("sae-koganei-a"), "sae-hakusan-a", &req(1, 256)).await;
    let got = up
        .client("sae-hakusan-a")
        .dec_keys("sae-koganei-a", &[fresh[0].id])
        .await
        .unwrap();
    assert_eq!(got, fresh);
    up.stop();
}

/// `kagi keys` talks to a `kagi up` network through network.json.
#[test]
fn kagi_keys_cli_round_trip() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let tmp = TempDir::new("net");
    let up = Up::start(&tmp.0, &[]);
    let kagi = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kagi"))
            .arg("keys")
            .arg("--data-dir")
            .arg(&up.dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = kagi(&[
        "status",
        "--sae",
        "sae-koganei-a",
        "--slave",
        "sae-ueno-a",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["target_KME_ID"], "ueno");
    let start = Instant::now();
    let got = loop {
        let (ok, out, err) = kagi(&[
            "get",
            "--sae",
            "sae-koganei-a",
            "--slave",
            "sae-ueno-a",
            "-n",
            "2",
            "--json",
        ]);
        if ok {
            break out;
        }
        assert!(
            err.contains("503") && start.elapsed() < Duration::from_secs(60),
            "{err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let v: Value = serde_json::from_str(&got).unwrap();
    let ids: Vec<&str> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_ID"].as_str().unwrap())
        .collect();
    let mut args = vec![
        "retrieve",
        "--sae",
        "sae-ueno-a",
        "--master",
        "sae-koganei-a",
        "--json",
    ];
    args.extend(ids.iter().copied());
    let (ok, out, err) = kagi(&args);
    assert!(ok, "{err}");
    let back: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(back, v, "slave sees the master's keys");
    let (ok, _, err) = kagi(&["status", "--sae", "sae-nobody", "--slave", "sae-ueno-a"]);
    assert!(!ok && err.contains("not in"), "{err}");
    up.stop();
}

/// ETSI 014: "the KME must answer 401 when the caller was not named as a slave". sae-ueno-b
/// shares a node with a named slave (sae-ueno-a), so its KME holds the key and knows the caller
/// was not named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_at_a_named_slaves_node_gets_401() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("net");
    let up = Up::start(&tmp.0, &[]);
    let keys = enc(&up.client("sae-koganei-a"), "sae-ueno-a", &req(1, 256)).await;
    let err = up
        .client("sae-ueno-b")
        .dec_keys("sae-koganei-a", &[keys[0].id])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 401, .. }),
        "{err}"
    );
    // The named slave still gets it.
    let got = up
        .client("sae-ueno-a")
        .dec_keys("sae-koganei-a", &[keys[0].id])
        .await
        .unwrap();
    assert_eq!(got, keys);
    up.stop();
}

/// The curl pair `kagi up` prints works as printed: the master's key at koganei equals the
/// slave's key at a node 3 hops away.
#[test]
fn printed_curl_pair_fetches_the_same_key_three_hops_apart() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed; skipping");
        return;
    }
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let tmp = TempDir::new("net");
    let up = Up::start(&tmp.0, &[]);
    // network.json is written before the banner is printed; wait for the banner.
    let start = Instant::now();
    let script = loop {
        let out = std::fs::read_to_string(&up.log).unwrap();
        if let (Some(a), Some(b)) = (out.find("# sae-koganei-a"), out.find("; echo\n")) {
            break out[a..b + "; echo".len()].to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no curl pair in:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(script.contains("(3 hops away)"), "{script}");
    let start = Instant::now();
    let lines = loop {
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect();
        if lines.len() == 2 && lines[0]["keys"].is_array() {
            break lines;
        }
        // The pool may still be filling (503); try again.
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(lines[0]["keys"].as_array().unwrap().len(), 1);
    assert_eq!(lines[1], lines[0], "slave 3 hops away got the master's key");
    up.stop();
}

/// If `kagi up` itself dies, its nodes keep running; a new `kagi up` on the directory refuses to
/// start a second network over them, and `kagi up --stop` stops them.
#[test]
fn left_over_nodes_are_detected_and_stopped() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let tmp = TempDir::new("net");
    let mut up = Up::start(&tmp.0, &[]);
    let pids: Vec<u32> = std::fs::read_dir(tmp.0.join("nodes"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path().join("node.pid");
            std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
        })
        .collect();
    assert_eq!(pids.len(), 6);
    up.child.kill().unwrap(); // SIGKILL: no chance to stop its children
    up.child.wait().unwrap();
    // Exists and has not exited (an unreaped zombie has exited).
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| st.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
            .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
    };
    assert!(pids.iter().all(alive), "nodes outlive a killed kagi up");
    let kagi = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kagi"))
            .args(args)
            .arg("--data-dir")
            .arg(&tmp.0)
            .output()
            .unwrap()
    };
    let again = kagi(&["up"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("still running") && err.contains("--stop"),
        "{err}"
    );
    assert!(pids.iter().all(alive), "the refused run touched nothing");
    let stop = kagi(&["up", "--stop"]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let start = Instant::now();
    while pids.iter().any(alive) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pids.iter().any(alive), "kagi up --stop stopped every node");
}

/// A node killed under `kagi up` (SIGKILL, as a crash or an OOM kill would) is started again by
/// `kagi up`, and its application gets keys again that the slave three hops away reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_is_restarted_by_kagi_up_and_serves_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("restart");
    let up = Up::start(&tmp.0, &[]);
    let (master, _) = up.node_of("sae-koganei-a");
    let pid_file = tmp
        .0
        .join("nodes")
        .join(master["id"].as_str().unwrap())
        .join("node.pid");
    let pid_of = || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
    let old = pid_of().expect("kagi up wrote the node's pid");
    let ka = up.client("sae-koganei-a");
    let kh = up.client("sae-hakusan-a");
    let before = enc(&ka, "sae-hakusan-a", &req(2, 256)).await;

    assert!(Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let new = loop {
        match pid_of() {
            Some(p) if p != old && Path::new(&format!("/proc/{p}")).exists() => break p,
            _ if start.elapsed() > Duration::from_secs(30) => panic!(
                "kagi up did not restart the node; its log:\n{}",
                std::fs::read_to_string(&up.log).unwrap_or_default()
            ),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_ne!(new, old);

    // Served again once it listens and has reconciled with its peers (503 or no answer until
    // then); the keys match at the slave, and the keys served before the crash still do.
    let start = Instant::now();
    let keys = loop {
        match ka.enc_keys("sae-hakusan-a", &req(2, 256)).await {
            Ok(k) => break k,
            Err(e) if start.elapsed() < Duration::from_secs(90) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("the restarted node does not serve: {e}"),
        }
    };
    for k in before.iter().chain(&keys) {
        let got = kh.dec_keys("sae-koganei-a", &[k.id]).await.unwrap();
        assert_eq!(got[0].key, k.key);
    }
    let log = std::fs::read_to_string(&up.log).unwrap();
    assert!(
        log.contains("exited unexpectedly") && log.contains("restarted (pid"),
        "{log}"
    );
}
