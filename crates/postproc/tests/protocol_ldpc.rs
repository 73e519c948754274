//! The two-party protocol with LDPC reconciliation: identical keys or an abort at both ends.

use kagi_keymat::Key;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::ldpc::{LdpcError, LdpcParams};
use kagi_postproc::protocol::{
    run_block, Alice, AliceRaw, AuthKeyPool, Bob, BobRaw, Outcome, PerfectChannel, ProtocolConfig,
    ProtocolError, Reconciliation,
};
use kagi_postproc::toy::ToyChannel;
use proptest::prelude::*;

fn link(e_d: f64) -> ToyChannel {
    ToyChannel {
        eta: 0.5,
        e_d,
        ..ToyChannel::default()
    }
}

fn config(ch: &ToyChannel, params: LdpcParams) -> ProtocolConfig {
    ProtocolConfig {
        decoy: DecoySettings {
            mu: ch.mu,
            p: ch.p_mu,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
        },
        reconciliation: Reconciliation::Ldpc(params),
        threads: 2,
    }
}

fn run(cfg: ProtocolConfig, a: AliceRaw, b: BobRaw, seed: u8) -> (Outcome, Outcome) {
    let k: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut pa = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
    let mut pb = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
    let mut alice = Alice::new(cfg, 3, a, [seed; 32]).unwrap();
    let mut bob = Bob::new(cfg, 3, b).unwrap();
    run_block(&mut alice, &mut bob, &mut pa, &mut pb, &mut PerfectChannel)
}

/// Flips Bob's key-basis bits (both bases 0) with probability `p`: errors the test basis
/// does not show, so the QBER estimate is far too low.
fn spoil_key_basis(a: &AliceRaw, b: &mut BobRaw, p: f64, seed: u64) {
    let mut x = seed | 1;
    for i in 0..b.detected.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pulse = b.detected[i] as usize;
        if !a.basis.get(pulse) && !b.basis.get(i) && ((x >> 11) as f64 / (1u64 << 53) as f64) < p {
            b.bit.flip(i);
        }
    }
}

#[test]
fn honest_block_gives_identical_keys_with_few_messages() {
    let ch = link(0.02);
    let (a, b) = ch.generate(10_000_000, 1);
    let cfg = config(&ch, LdpcParams::default());
    let (oa, ob) = run(cfg, a, b, 1);
    let (Outcome::Key { key: ka, stats: sa }, Outcome::Key { key: kb, stats: sb }) = (oa, ob)
    else {
        panic!("block aborted");
    };
    assert_eq!(ka, kb);
    assert!(!ka.is_empty());
    assert_eq!(sa.leaked_ec_bits, sb.leaked_ec_bits);
    assert_eq!(sa.pa_output_bits, sb.pa_output_bits);
    assert_eq!(sa.messages, sb.messages);
    // Sift, SiftReply, [Retry, Reveal]*, EcDone, Verify, Confirm.
    assert!(sb.messages >= 5 && sb.messages % 2 == 1, "{}", sb.messages);
    assert!(sb.messages <= 5 + 2 * LdpcParams::default().blind_rounds as u64);
    let f = sb.ec_efficiency.unwrap();
    assert!(f > 1.0 && f < 1.6, "f = {f}");
    let q = sb.qber_key.unwrap();
    assert!((q - 0.02).abs() < 0.006, "qber {q}");
}

#[test]
fn undecodable_frames_abort_the_block_at_both_ends() {
    let ch = link(0.01);
    let (a, mut b) = ch.generate(10_000_000, 2);
    spoil_key_basis(&a, &mut b, 0.08, 5);
    for rounds in [0, 2] {
        let params = LdpcParams {
            blind_rounds: rounds,
            ..LdpcParams::default()
        };
        let (oa, ob) = run(config(&ch, params), a.clone(), b.clone(), 2);
        assert!(
            matches!(
                ob,
                Outcome::Aborted(ProtocolError::Ldpc(LdpcError::DecodeFailed { .. }))
            ),
            "{ob:?}"
        );
        assert!(
            matches!(oa, Outcome::Aborted(ProtocolError::PeerAbort(_))),
            "{oa:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    /// Whatever the error rate (and hidden extra key-basis errors), both ends hold the same
    /// key or both abort.
    #[test]
    fn identical_keys_or_abort(e_d in 0.005f64..0.08, seed in 0u64..1000,
                               hidden in prop_oneof![Just(0.0), 0.0f64..0.03],
                               blind in 0usize..5, warm_start: bool) {
        let ch = link(e_d);
        let (a, mut b) = ch.generate(6_000_000, seed);
        spoil_key_basis(&a, &mut b, hidden, seed);
        let params = LdpcParams { blind_rounds: blind, warm_start, ..LdpcParams::default() };
        let (oa, ob) = run(config(&ch, params), a, b, seed as u8);
        match (oa, ob) {
            (Outcome::Key { key: ka, stats: sa }, Outcome::Key { key: kb, stats: sb }) => {
                prop_assert_eq!(ka, kb);
                prop_assert_eq!(sa.secret_bits, sb.secret_bits);
                prop_assert_eq!(sa.leaked_ec_bits, sb.leaked_ec_bits);
            }
            (Outcome::Aborted(_), Outcome::Aborted(_)) => {}
            (x, y) => prop_assert!(false, "ends disagree: {:?} / {:?}", x, y),
        }
    }
}
