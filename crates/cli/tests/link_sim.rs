//! `kagi link-sim` as a user runs it: the default block size comes from the finite-key model
//! and yields key; a block too small to yield key is reported as such.

use std::process::Command;

fn link_sim(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .arg("link-sim")
        .args(args)
        .arg("--json")
        .output()
        .expect("run kagi link-sim");
    assert!(
        out.status.success(),
        "kagi link-sim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn default_block_settings_yield_key() {
    // No --pulses, no --block-bits: both chosen from the finite-key model of this link.
    let v = link_sim(&["--distance", "2", "--e-d", "0.005"]);
    assert!(
        v["block_bits_choice"]
            .as_str()
            .unwrap()
            .contains("finite-key model"),
        "{v}"
    );
    assert!(v["secret_bits"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["keys_identical"], true, "{v}");
    assert!(v["notes"].as_array().unwrap().is_empty(), "{v}");
    let smallest = v["smallest_block_with_key"].as_u64().unwrap();
    assert!(v["block_bits"].as_u64().unwrap() >= smallest, "{v}");
}

#[test]
fn too_small_blocks_are_reported() {
    let v = link_sim(&["--distance", "25", "--pulses", "2e8", "--block-bits", "2e5"]);
    assert_eq!(v["secret_bits"], 0, "{v}");
    let notes = v["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("too small to yield key")),
        "{v}"
    );
}

#[test]
fn hopeless_links_are_refused_before_simulating() {
    // At 250 km nothing yields key: auto pulses must not start an endless simulation.
    let out = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(["link-sim", "--distance", "250"])
        .output()
        .expect("run kagi link-sim");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("finite-key model expects no key"), "{err}");
}

#[test]
fn protocols_the_photon_simulator_does_not_model_are_refused() {
    for (proto, says) in [
        ("cv-gg02", "models decoy-state BB84 only"),
        ("tf-sns", "kagi link-rate --protocol tf-sns"),
        ("bb85", "unknown"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kagi"))
            .args(["link-sim", "--protocol", proto, "--distance", "250"])
            .output()
            .expect("run kagi link-sim");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{proto}: {err}");
    }
    // A modelled protocol passes the check (and meets the next one: no key at 250 km).
    let out = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(["link-sim", "--protocol", "bb84-finite", "--distance", "250"])
        .output()
        .expect("run kagi link-sim");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("finite-key model expects no key"), "{err}");
}
