//! ETSI GS QKD 004 key streams on a live `kagi up` network: an application at koganei and one at
//! ueno (three hops apart), each talking to its own node, get the same key stream through a
//! client written from the standard's text (`etsi004_client.py`, Python standard library only):
//! every status the network can produce, bounded streams and read-ahead, malformed input answered
//! with 004 statuses in JSON (never a 5xx other than 503 for the retryable statuses), no TLS
//! session without a client certificate.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{TempDir, Up};
use serde_json::Value;

const CLIENT: &str = include_str!("etsi004_client.py");

#[test]
fn applications_at_two_nodes_share_a_key_stream() {
    if !Command::new("python3")
        .arg("--version")
        .status()
        .is_ok_and(|s| s.success())
    {
        panic!("python3 is needed for the ETSI 004 client");
    }
    let tmp = TempDir::new("etsi004-net");
    let up = Up::start(tmp.path(), &[]);
    let (dir, net) = (up.dir.clone(), up.net.clone());
    let node = |id: &str| up.node(id).clone();
    let (a, b) = (node("koganei"), node("ueno"));
    let url = |n: &Value| n["etsi004_url"].as_str().expect("etsi004_url").to_string();
    let p = |v: &Value| dir.join(v.as_str().unwrap()).display().to_string();
    let ca = dir.join(net["ca"].as_str().unwrap());
    let (sa, sb) = (a["saes"][0].clone(), b["saes"][0].clone());
    // An SAE that is neither end of the stream.
    let other = net["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["saes"].as_array().unwrap().iter())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .find(|s| s != sa["id"].as_str().unwrap() && s != sb["id"].as_str().unwrap())
        .unwrap();

    // No client certificate: no TLS session.
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-X", "POST", "--data", "{}"])
        .arg(format!("{}/etsi004/v2/close", url(&a)))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let script = dir.join("etsi004_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let t = Instant::now();
    let o = Command::new("python3")
        .arg(&script)
        .arg(&ca)
        .args([
            &url(&a),
            sa["id"].as_str().unwrap(),
            &p(&sa["cert"]),
            &p(&sa["key"]),
        ])
        .args([
            &url(&b),
            sb["id"].as_str().unwrap(),
            &p(&sb["cert"]),
            &p(&sb["key"]),
        ])
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ETSI 004 client: {}\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(&up.log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "ETSI 004 client ({:.1} s): {}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&o.stdout).trim()
    );
    up.stop();
}
