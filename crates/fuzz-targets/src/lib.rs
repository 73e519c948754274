//! Fuzzing entry points for every parser and message handler that hostile input reaches.
//!
//! Each function takes arbitrary bytes and drives one surface the way the network or the disk
//! hands it input: ETSI 014 requests, peer messages into the key manager core, stored records,
//! vault wire formats, topology and node configuration files. They panic only on a real bug:
//! a crash, or a broken promise of the code under test (an answer outside the standard's status
//! codes, a record that does not survive re-encoding). `fuzz/` wraps each in a libFuzzer target
//! (coverage-guided, stable toolchain), and the tests below replay the committed corpora and a
//! seeded batch of random inputs on every `cargo test`.

mod etsi014;
mod peer;

pub use etsi014::etsi014_request;
pub use peer::peer_messages;

/// Stored records: anything that decodes must re-encode to a form that decodes to the same
/// encoding (the store relies on records round-tripping exactly).
pub fn store_record(data: &[u8]) {
    if let Ok(r) = kagi_km::record::Record::decode(data) {
        let once = r.encode();
        let again = kagi_km::record::Record::decode(&once)
            .expect("a re-encoded record decodes")
            .encode();
        assert_eq!(once, again, "record encoding is not stable");
    }
}

/// Vault wire formats: envelope lists, repair messages and envelope headers, as a storage site
/// receives them.
pub fn vault_wire(data: &[u8]) {
    if let Ok(envs) = kagi_vault::net::wire::decode_envelopes(data) {
        let back = kagi_vault::net::wire::encode_envelopes(&envs);
        let again = kagi_vault::net::wire::decode_envelopes(&back).expect("re-encoded envelopes");
        assert_eq!(again.len(), envs.len());
    }
    let _ = kagi_vault::net::wire::decode_repair(data);
    let _ = kagi_vault::envelope::peek(data);
}

/// Topology and node configuration files, as an operator (or an attacker with write access to a
/// shared file) provides them: any topology that loads must survive a round trip through TOML.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = kagi_control::Topology::from_toml(text) {
        let back = kagi_control::Topology::from_toml(&t.to_toml())
            .expect("a loaded topology re-loads from its own TOML");
        assert_eq!(back, t, "topology changed in a TOML round trip");
    }
    let _ = toml::from_str::<kagi_node::config::NodeConfig>(text);
}

/// A fuzz target: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay and the libFuzzer wrappers.
pub const TARGETS: &[(&str, Target)] = &[
    ("etsi014_request", etsi014_request),
    ("peer_messages", peer_messages),
    ("store_record", store_record),
    ("vault_wire", vault_wire),
    ("config_text", config_text),
];

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::TARGETS;

    /// Replays every committed corpus file (fuzz/corpus/<target>/*): each input that once
    /// found new coverage stays a regression test.
    #[test]
    fn corpora_replay_without_panics() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let mut total = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                panic!("no corpus for {name} at {}", dir.display());
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                target(&data);
                total += 1;
            }
        }
        assert!(total >= TARGETS.len(), "corpora are empty");
    }

    /// A seeded batch of random and mutated inputs per target: a cheap smoke run between real
    /// fuzzing campaigns.
    #[test]
    fn seeded_random_inputs_do_not_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
        for (_, target) in TARGETS {
            for _ in 0..300 {
                let len = rng.gen_range(0..600);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                target(&data);
            }
        }
    }
}
