//! Post-processing benchmarks: `cargo bench -p kagi-postproc --bench postproc`.
//!
//! Stages: Toeplitz privacy amplification (10^6–10^8 bits), Cascade at QBER 0.5–8 %
//! (10^6 bits), and the whole two-party protocol on a toy block (~4·10^5 sifted bits).
//! Efficiency f and message counts are printed by `--example cascade_eff` and
//! `--example pipeline_sweep` (divan measures time only).

use divan::Bencher;
use kagi_keymat::Key;
use kagi_postproc::bits::BitVec;
use kagi_postproc::cascade::{reconcile_local, CascadeParams};
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::protocol::{
    run_block, Alice, AuthKeyPool, Bob, PerfectChannel, ProtocolConfig, Reconciliation,
};
use kagi_postproc::toeplitz::{seed_len, toeplitz_hash};
use kagi_postproc::toy::ToyChannel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    divan::main();
}

#[divan::bench(args = [1_000_000, 10_000_000, 100_000_000], sample_count = 3, sample_size = 1)]
fn toeplitz(bencher: Bencher, n: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let r = n / 2;
    let x = BitVec::random(n, &mut rng);
    let t = BitVec::random(seed_len(n, r), &mut rng);
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench_local(|| toeplitz_hash(&t, &x, r).expect("valid sizes"));
}

#[divan::bench(args = [0.005, 0.01, 0.03, 0.05, 0.08], sample_count = 5, sample_size = 1)]
fn cascade(bencher: Bencher, q: f64) {
    let n = 1_000_000;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let a = BitVec::random(n, &mut rng);
    let mut b = a.clone();
    for i in 0..n {
        if rng.gen_bool(q) {
            b.flip(i);
        }
    }
    let mut seed = 0u64;
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench_local(|| {
            seed += 1; // a fresh permutation seed each time: no layout cache hits
            reconcile_local(&a, &b, q, &CascadeParams::default(), seed)
        });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn pipeline_qber_3pct(bencher: Bencher) {
    let ch = ToyChannel {
        eta: 0.5,
        e_d: 0.03,
        ..ToyChannel::default()
    };
    let (a, b) = ch.generate(10_000_000, 3);
    let cfg = ProtocolConfig {
        decoy: DecoySettings {
            mu: ch.mu,
            p: ch.p_mu,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
        },
        reconciliation: Reconciliation::Cascade(CascadeParams::default()),
        threads: 2,
    };
    let key: Vec<u8> = (0..1 << 16)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let mut id = 0u64;
    let sifted = b.basis.len() as u64; // detections (sifted count printed by the example)
    bencher
        .counter(divan::counter::ItemsCount::new(sifted))
        .bench_local(|| {
            id += 1;
            let mut pa = AuthKeyPool::new(Key::from_slice(&key)).expect("16+ bytes");
            let mut pb = AuthKeyPool::new(Key::from_slice(&key)).expect("16+ bytes");
            let mut alice = Alice::new(cfg, id, a.clone(), [id as u8; 32]).expect("valid records");
            let mut bob = Bob::new(cfg, id, b.clone()).expect("valid records");
            run_block(&mut alice, &mut bob, &mut pa, &mut pb, &mut PerfectChannel)
        });
}
