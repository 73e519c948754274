//! Cisco SKIP on every node of a live `kagi up` network: the `skip-qkd` client from PyPI,
//! unchanged, fetches a key as a router at koganei and the same key as a router at ueno (three
//! hops away), draws entropy, and reads capabilities; a key is served once per side; bad input
//! gets SKIP's JSON errors (never a 5xx other than 503); no client certificate, no TLS.
//!
//! `skip-qkd` is taken from the system's python3 if it has it, else installed into a venv under
//! the test's directory; when neither works the test says so loudly and runs the same calls
//! with curl instead.

mod common;

use common::{python_with, TempDir, Up};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const ROUTERS: &str = r#"
import json, sys, time
from skip_qkd import SkipQKDClient, MTLSConfig

ca, a_addr, a_id, a_cert, a_key, b_addr, b_id, b_cert, b_key = sys.argv[1:10]

def client(addr, sid, cert, key):
    return SkipQKDClient(server_address=addr, server_id=sid, mtls_config=MTLSConfig(ca_file=ca, cert_file=cert, key_file=key))

caps = client(a_addr, a_id, a_cert, a_key).capabilities()
assert caps["localSystemID"] == a_id and b_id in caps["remoteSystemID"] and caps["key"], caps
deadline = time.time() + 90
while True:
    try:
        k = client(a_addr, a_id, a_cert, a_key).request_key(b_id, size=256)
        break
    except RuntimeError as e:          # 503 while the end-to-end pool fills
        if time.time() > deadline:
            raise
        time.sleep(0.5)
assert len(k["keyId"]) == 32 and len(k["key"]) == 64, k
int(k["keyId"], 16); int(k["key"], 16)
same = client(b_addr, b_id, b_cert, b_key).fetch_key_by_id(k["keyId"], a_id)
assert same == k, (same, k)
# Within the slave's delivery grace the same slave gets the same key again, never another.
again = client(b_addr, b_id, b_cert, b_key).fetch_key_by_id(k["keyId"], a_id)
assert again == k, (again, k)
ent = client(a_addr, a_id, a_cert, a_key).entropy(minentropy=512)
assert ent["minentropy"] == 512 and len(ent["randomStr"]) == 128, ent
print(json.dumps({"keyId": k["keyId"]}))
"#;

#[test]
fn skip_routers_at_two_nodes_share_keys() {
    let tmp = TempDir::new("skip-net");
    let dir = tmp.0.clone();
    let up = Up::start(&dir, &[]);
    let net: Value =
        serde_json::from_slice(&std::fs::read(dir.join("network.json")).unwrap()).unwrap();
    let node = |id: &str| {
        net["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()
            .clone()
    };
    let (a, b) = (node("koganei"), node("ueno"));
    let addr = |n: &Value| {
        n["skip_url"]
            .as_str()
            .expect("skip_url")
            .trim_start_matches("https://")
            .to_string()
    };
    let sae = |n: &Value| n["saes"][0].clone();
    let p = |v: &Value| dir.join(v.as_str().unwrap()).display().to_string();
    let ca = dir.join(net["ca"].as_str().unwrap());
    let (sa, sb) = (sae(&a), sae(&b));

    // Bad input, SKIP's own error format.
    let curl = |args: &[&str], url: &str| -> (u16, Value) {
        let o = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .args(["--cert", &p(&sa["cert"]), "--key", &p(&sa["key"])])
            .args(args)
            .args(["-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };
    let base = format!("https://{}", addr(&a));
    for (args, path, want) in [
        (vec![], "/key", 400),
        (vec![], "/key?remoteSystemID=nobody", 400),
        (vec![], "/key?remoteSystemID=sae-ueno-a&size=7", 400),
        (vec![], "/key?remoteSystemID=sae-ueno-a&size=abc", 400),
        (vec![], "/key/zzzz?remoteSystemID=sae-ueno-a", 400),
        (
            vec![],
            "/key/00112233445566778899aabbccddeeff?remoteSystemID=sae-ueno-a",
            400,
        ),
        (vec![], "/entropy?minentropy=0", 400),
        (vec![], "/entropy?minentropy=99999999", 400),
        (vec![], "/nothing", 404),
        (
            vec!["-X", "POST", "--data", "{}"],
            "/key?remoteSystemID=sae-ueno-a",
            405,
        ),
    ] {
        let (s, v) = curl(&args, &format!("{base}{path}"));
        assert!(s == want || (want == 400 && s == 404), "{path}: {s} {v}");
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    // No client certificate: no TLS session.
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .arg(format!("{base}/capabilities"))
        .output()
        .unwrap();
    assert!(!o.status.success());

    match python_with(&dir, "skip_qkd", "skip-qkd") {
        Some(py) => {
            let script = dir.join("routers.py");
            std::fs::write(&script, ROUTERS).unwrap();
            let o = Command::new(py)
                .arg(&script)
                .arg(&ca)
                .args([
                    &addr(&a),
                    sa["id"].as_str().unwrap(),
                    &p(&sa["cert"]),
                    &p(&sa["key"]),
                ])
                .args([
                    &addr(&b),
                    sb["id"].as_str().unwrap(),
                    &p(&sb["cert"]),
                    &p(&sb["key"]),
                ])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "skip-qkd routers: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        None => {
            eprintln!("\n*** skip-qkd unavailable (no python3 with it, pip could not install it): SKIP checked with curl only ***\n");
            let deadline = Instant::now() + Duration::from_secs(90);
            let k = loop {
                let (s, v) = curl(
                    &[],
                    &format!(
                        "{base}/key?remoteSystemID={}&size=256",
                        sb["id"].as_str().unwrap()
                    ),
                );
                if s == 200 {
                    break v;
                }
                assert!(s == 503 && Instant::now() < deadline, "{s} {v}");
                std::thread::sleep(Duration::from_millis(500));
            };
            let o = Command::new("curl")
                .args(["-sS", "--cacert"])
                .arg(&ca)
                .args(["--cert", &p(&sb["cert"]), "--key", &p(&sb["key"])])
                .arg(format!(
                    "https://{}/key/{}?remoteSystemID={}",
                    addr(&b),
                    k["keyId"].as_str().unwrap(),
                    sa["id"].as_str().unwrap()
                ))
                .output()
                .unwrap();
            let same: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(same, k);
        }
    }
    drop(up);
}
