//! End-to-end tests of the two-party protocol over an in-memory channel.

use kagi_keymat::Key;
use kagi_postproc::cascade::CascadeParams;
use kagi_postproc::finite_key::{BlockCounts, DecoySettings};
use kagi_postproc::protocol::{
    run_block, run_block_parallel, Alice, AliceRaw, AuthKeyPool, Bob, BobRaw, Channel, Outcome,
    PerfectChannel, ProtocolConfig, ProtocolError, Reconciliation,
};
use kagi_postproc::toy::ToyChannel;
use proptest::prelude::*;

fn config(passes: usize) -> ProtocolConfig {
    ProtocolConfig {
        decoy: DecoySettings {
            mu: link().mu,
            p: link().p_mu,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
        },
        reconciliation: Reconciliation::Cascade(CascadeParams {
            passes,
            ..CascadeParams::default()
        }),
        threads: 2,
    }
}

fn pools() -> (AuthKeyPool, AuthKeyPool) {
    let k: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    (
        AuthKeyPool::new(Key::from_slice(&k)).unwrap(),
        AuthKeyPool::new(Key::from_slice(&k)).unwrap(),
    )
}

/// A short, efficient link: enough sifted bits per block (~4·10^5) for a positive finite key.
fn link() -> ToyChannel {
    ToyChannel {
        eta: 0.5,
        ..ToyChannel::default()
    }
}

fn block(ch: &ToyChannel, pulses: usize, seed: u64) -> (AliceRaw, BobRaw) {
    ch.generate(pulses, seed)
}

fn run<C: Channel>(
    cfg: ProtocolConfig,
    a: AliceRaw,
    b: BobRaw,
    seed: u8,
    ch: &mut C,
) -> (Outcome, Outcome) {
    let (mut pa, mut pb) = pools();
    let mut alice = Alice::new(cfg, 7, a, [seed; 32]).unwrap();
    let mut bob = Bob::new(cfg, 7, b).unwrap();
    run_block(&mut alice, &mut bob, &mut pa, &mut pb, ch)
}

/// Counts recomputed independently from the raw records.
fn counts(a: &AliceRaw, b: &BobRaw) -> BlockCounts {
    let mut c = BlockCounts::default();
    for (i, &p) in b.detected.iter().enumerate() {
        let p = p as usize;
        let k = a.intensity[p] as usize;
        match (a.basis.get(p), b.basis.get(i)) {
            (false, false) => c.n_key[k] += 1,
            (true, true) => {
                c.n_test[k] += 1;
                if a.bit.get(p) != b.bit.get(i) {
                    c.m_test[k] += 1;
                }
            }
            _ => {}
        }
    }
    c
}

#[test]
fn honest_block_gives_identical_keys_of_the_finite_key_length() {
    let ch = link();
    let (a, b) = block(&ch, 10_000_000, 1);
    let c = counts(&a, &b);
    let cfg = config(12);
    let (oa, ob) = run(cfg, a, b, 1, &mut PerfectChannel);
    let (Outcome::Key { key: ka, stats: sa }, Outcome::Key { key: kb, stats: sb }) = (oa, ob)
    else {
        panic!("block aborted");
    };
    assert_eq!(ka, kb);
    assert!(!ka.is_empty());
    // The length is Lim et al. Eq. (1) on the observed counts with the disclosed parities
    // plus the verification tag, floored to whole bytes.
    let kl = cfg.decoy.key_length(&c, sb.leaked_ec_bits + 128).unwrap();
    assert_eq!(sb.pa_output_bits, kl.bits / 8 * 8);
    assert_eq!(sa.pa_output_bits, sb.pa_output_bits);
    assert_eq!(sb.sifted_bits, c.n_key.iter().sum::<u64>());
    // Delivered = PA output − authentication key replenished.
    assert_eq!(sb.secret_bits, sb.pa_output_bits - sb.auth_key_bits);
    assert_eq!(sb.auth_key_bits, sb.messages * 128);
    assert_eq!(sa.messages, sb.messages);
    assert_eq!(ka.len() as u64 * 8, sb.secret_bits);
    let f = sb.ec_efficiency.unwrap();
    assert!(f > 1.0 && f < 1.2, "f = {f}");
    let q = sb.qber_key.unwrap();
    assert!((q - 0.02).abs() < 0.006, "qber {q}");
}

#[test]
fn both_ends_on_their_own_threads_give_the_same_keys_as_in_turn() {
    let ch = link();
    let (a, b) = block(&ch, 10_000_000, 5);
    let cfg = config(12);
    let (ka, kb) = {
        let (mut pa, mut pb) = pools();
        let mut alice = Alice::new(cfg, 7, a.clone(), [5; 32]).unwrap();
        let mut bob = Bob::new(cfg, 7, b.clone()).unwrap();
        match run_block_parallel(&mut alice, &mut bob, &mut pa, &mut pb) {
            (Outcome::Key { key: ka, .. }, Outcome::Key { key: kb, .. }) => (ka, kb),
            (x, y) => panic!("parallel block aborted: {x:?} / {y:?}"),
        }
    };
    assert_eq!(ka, kb);
    let (oa, _) = run(cfg, a, b, 5, &mut PerfectChannel);
    let Outcome::Key { key: k_seq, .. } = oa else {
        panic!("sequential block aborted")
    };
    assert_eq!(ka, k_seq);
}

#[test]
fn intercept_resend_above_threshold_aborts_at_both_ends() {
    let ch = ToyChannel { eve: 1.0, ..link() };
    let (a, b) = block(&ch, 10_000_000, 2);
    let (oa, ob) = run(config(12), a, b, 2, &mut PerfectChannel);
    assert!(
        matches!(oa, Outcome::Aborted(ProtocolError::NoKey(_))),
        "{oa:?}"
    );
    assert!(
        matches!(ob, Outcome::Aborted(ProtocolError::PeerAbort(_))),
        "{ob:?}"
    );
    // A small intercepted fraction still yields key (below threshold).
    let ch = ToyChannel {
        eve: 0.05,
        ..link()
    };
    let (a, b) = block(&ch, 10_000_000, 3);
    // Fewer Cascade rounds: at this block size the authentication key of ~500 messages
    // (α = 1.4) would exceed the key that remains.
    let mut cfg = config(8);
    cfg.reconciliation = Reconciliation::Cascade(CascadeParams {
        alpha: 0.73,
        passes: 8,
        ..CascadeParams::default()
    });
    let (oa, ob) = run(cfg, a, b, 3, &mut PerfectChannel);
    assert!(
        matches!((&oa, &ob), (Outcome::Key { .. }, Outcome::Key { .. })),
        "{oa:?} {ob:?}"
    );
}

/// Tampers with frame number `at` in the way `how` says.
struct Tamper {
    at: usize,
    how: &'static str,
    log: Vec<Vec<u8>>,
}

impl Channel for Tamper {
    fn transmit(&mut self, index: usize, _to_alice: bool, frame: Vec<u8>) -> Vec<Vec<u8>> {
        self.log.push(frame.clone());
        if index != self.at {
            return vec![frame];
        }
        match self.how {
            "alter" => {
                let mut f = frame;
                let i = f.len() / 2;
                f[i] ^= 0x04;
                vec![f]
            }
            // The same frame twice: the second is a replay.
            "replay" => vec![frame.clone(), frame],
            // An earlier frame from the same sender instead of the current one.
            "old" => vec![self.log[index - 2].clone()],
            // Current frame held back, a later one (not yet existing) can't be sent: deliver the
            // current after a copy of the previous frame of the same sender.
            "reorder" => vec![self.log[index - 2].clone(), frame],
            "drop" => vec![],
            _ => vec![frame],
        }
    }
}

#[test]
fn authentication_rejects_altered_replayed_and_reordered_messages() {
    let ch = link();
    let (a, b) = block(&ch, 10_000_000, 4);
    for (at, how) in [
        (0, "alter"),
        (1, "alter"),
        (5, "alter"),
        (2, "replay"),
        (3, "replay"),
        (4, "old"),
        (5, "reorder"),
    ] {
        let mut t = Tamper {
            at,
            how,
            log: Vec::new(),
        };
        let (oa, ob) = run(config(12), a.clone(), b.clone(), 4, &mut t);
        let rejected = |o: &Outcome| {
            matches!(
                o,
                Outcome::Aborted(ProtocolError::BadTag)
                    | Outcome::Aborted(ProtocolError::Sequence(_))
            )
        };
        assert!(
            rejected(&oa) || rejected(&ob),
            "{how}@{at}: {oa:?} / {ob:?}"
        );
        assert!(
            !matches!(oa, Outcome::Key { .. }) && !matches!(ob, Outcome::Key { .. }),
            "{how}@{at}"
        );
    }
}

#[test]
fn frames_from_another_block_are_rejected() {
    let ch = link();
    let (a, b) = block(&ch, 10_000_000, 5);
    let cfg = config(12);
    let (mut pa, mut pb) = pools();
    // Bob of block 8 sends his first frame; Alice of block 7 (same pads) must reject it.
    let mut bob8 = Bob::new(cfg, 8, b).unwrap();
    let f = bob8.start(&mut pb).unwrap();
    let mut alice7 = Alice::new(cfg, 7, a, [5; 32]).unwrap();
    alice7.handle(&mut pa, &f);
    assert!(
        matches!(
            alice7.outcome(),
            Some(Outcome::Aborted(ProtocolError::Sequence(_)))
        ),
        "{:?}",
        alice7.outcome()
    );
}

#[test]
fn weak_reconciliation_is_caught_by_verification_never_silent() {
    // One Cascade pass at 6 % leaves errors: the block must abort, not deliver different keys.
    let ch = ToyChannel {
        e_d: 0.06,
        ..link()
    };
    let mut aborted = 0;
    for seed in 0..3 {
        let (a, b) = block(&ch, 10_000_000, 10 + seed);
        let (oa, ob) = run(config(1), a, b, seed as u8, &mut PerfectChannel);
        match (oa, ob) {
            (Outcome::Key { key: ka, .. }, Outcome::Key { key: kb, .. }) => assert_eq!(ka, kb),
            (Outcome::Aborted(_), Outcome::Aborted(e)) => {
                assert!(
                    matches!(
                        e,
                        ProtocolError::VerificationFailed | ProtocolError::NoKey(_)
                    ),
                    "{e:?}"
                );
                aborted += 1;
            }
            (x, y) => panic!("ends disagree: {x:?} / {y:?}"),
        }
    }
    assert!(
        aborted > 0,
        "one Cascade pass at 6% should leave residual errors"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    #[test]
    fn identical_keys_or_abort(
        e_d in 0.005f64..0.08,
        seed in 0u64..1000,
        passes in 1usize..6,
        round_bits in prop_oneof![Just(0usize), 0usize..4096],
        late_overlap in prop_oneof![Just(0usize), 0usize..10_000],
    ) {
        let ch = ToyChannel { e_d, ..link() };
        let (a, b) = block(&ch, 6_000_000, seed);
        // Bob's search strategy (only Bob reads these two).
        let mut cfg = config(passes);
        if let Reconciliation::Cascade(cp) = &mut cfg.reconciliation {
            cp.round_bits = round_bits;
            cp.late_overlap = late_overlap;
        }
        let (oa, ob) = run(cfg, a, b, seed as u8, &mut PerfectChannel);
        match (oa, ob) {
            (Outcome::Key { key: ka, stats: sa }, Outcome::Key { key: kb, stats: sb }) => {
                prop_assert_eq!(ka, kb);
                prop_assert_eq!(sa.secret_bits, sb.secret_bits);
            }
            (Outcome::Aborted(_), Outcome::Aborted(_)) => {}
            (x, y) => prop_assert!(false, "ends disagree: {:?} / {:?}", x, y),
        }
    }
}
