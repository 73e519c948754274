//! The shipped mixed-technology example (`docs/examples/mixed-tech.toml`) under `kagi up`:
//! decoy BB84, CV-QKD, twin-field, finite-key, repeater and satellite links at rate level, a
//! photon-level link, a link whose key comes from a (simulated) QKD device pair over ETSI
//! GS QKD 014, and a satellite trusted node that is Fukuoka's only way in. Keys fetched over
//! ETSI GS QKD 014 across every technology are identical at both ends.
//!
//! The test runs the example with a faster demo clock (more satellite passes per minute) and a
//! smaller photon block so that it finishes in about a minute.

mod common;

use common::Up;
use std::path::Path;
use std::time::{Duration, Instant};

use kagi_node::etsi014::wire;

/// One key from `master` for `slave`, retrieved at `slave`: both ends must match.
async fn one_key_across(up: &Up, master: &str, slave: &str, deadline: Instant) {
    let m = up.client(master);
    let s = up.client(slave);
    let req = wire::KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    let keys = loop {
        match m.enc_keys(slave, &req).await {
            Ok(k) => break k,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{master} -> {slave}: no key before the deadline ({e}); logs in {}",
                    up.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert_eq!(keys.len(), 1);
    let got = s.dec_keys(master, &[keys[0].id]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, keys[0].id);
    assert!(
        got[0].key == keys[0].key,
        "{master} -> {slave}: the two ends hold different keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_technology_example_delivers_identical_keys_end_to_end() {
    let dir = kagi_node::loopback::scratch_dir("mixed").unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/mixed-tech.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    // Faster demo clock and a small photon block (a short, clean link still leaves key).
    let text = text
        .replace("clock-speedup = 1000", "clock-speedup = 4000")
        .replace(
            "block_bits = 4e6",
            "block_bits = 1e6\ne_d = 0.01\neta_bob = 0.5",
        );
    let topo = kagi_control::Topology::from_toml(&text).unwrap();
    let protocols: std::collections::BTreeSet<&str> =
        topo.links.iter().map(|l| l.protocol_name()).collect();
    assert!(protocols.len() >= 6, "{protocols:?}");
    let file = dir.join("mixed.toml");
    std::fs::write(&file, &text).unwrap();
    let up = Up::start(&dir, &["--topology", file.to_str().unwrap()]);
    // Demand-driven pools (issue 9) start filling a pair's pool at its first request, and
    // relays over the slow backbone back off when a hop lacks link key, so the first key across
    // the whole network can take minutes on a loaded 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(300);
    // Repeater, finite-key, two twin-field and a decoy-BB84 hop.
    one_key_across(&up, "sae-umeda", "sae-otemachi", deadline).await;
    // The device-sourced link (osaka–kyoto, `kagi device` started by `kagi up`), then
    // finite-key and repeater hops.
    assert!(topo
        .links
        .iter()
        .any(|l| l.key_source() == Ok(kagi_control::KeySource::Device)));
    one_key_across(&up, "sae-kyoto", "sae-umeda", deadline).await;
    // Decoy BB84, two satellite passes (Tokyo, then Fukuoka) via the satellite as a trusted
    // node, and CV-QKD: Fukuoka's only way in.
    one_key_across(&up, "sae-otemachi", "sae-fukuoka", deadline).await;
    // The photon-level link (the photon simulator and the whole post-processing protocol
    // between the two node processes) delivered key blocks. (Serving them over ETSI 014 at
    // hakusan waits on the key manager's pool refill, which spreads the photon link's few
    // kB/s over eleven destinations: see node/tests/photon_link.rs for the photon link's
    // end-to-end key test.)
    let log = std::fs::read_to_string(dir.join("nodes/hakusan/node.log")).unwrap();
    let photon_key: u64 = log
        .lines()
        .filter(|l| l.contains("photon link block"))
        .filter_map(|l| l.split("key_bytes=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        photon_key > 0,
        "the photon link made no key; logs in {}",
        dir.display()
    );
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
