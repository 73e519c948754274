//! GPU privacy amplification (feature `gpu`) against the CPU path, bit for bit. Skips, with a
//! message, where no CUDA driver or device is present.
#![cfg(feature = "gpu")]

use kagi_postproc::gpu::GpuHasher;
use kagi_postproc::toeplitz::{seed_len, toeplitz_direct, toeplitz_hash_with, Method};
use kagi_postproc::BitVec;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn gpu() -> Option<GpuHasher> {
    match GpuHasher::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("SKIPPED: no usable GPU ({e}); the GPU path was not tested");
            None
        }
    }
}

#[test]
fn gpu_hash_equals_the_cpu_hash_bit_for_bit() {
    let Some(mut g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for &(n, r) in &[(1usize, 1usize), (65, 33), (2049, 1024)] {
        let x = BitVec::random(n, &mut rng);
        let t = BitVec::random(seed_len(n, r), &mut rng);
        assert_eq!(
            g.hash(&t, &x, r).unwrap(),
            toeplitz_direct(&t, &x, r).unwrap(),
            "n={n}"
        );
    }
    let big = std::env::var("KAGI_GPU_TEST_BITS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(10_000_000, |v| v as usize);
    for &(n, r) in &[(1_000_003usize, 400_000usize), (big, big / 2)] {
        let x = BitVec::random(n, &mut rng);
        let t = BitVec::random(seed_len(n, r), &mut rng);
        let cpu = toeplitz_hash_with(&t, &x, r, Method::Fft, 2).unwrap();
        assert_eq!(g.hash(&t, &x, r).unwrap(), cpu, "n={n} r={r}");
    }
}
