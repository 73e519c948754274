//! Toeplitz privacy amplification of a seed and an input read from files, for side-by-side
//! comparison with other implementations (`scripts/pa-bench.sh`).
//!
//! `pa_files SEED INPUT N R OUT THREADS REPS [gpu]`: SEED holds N + R − 1 bits and INPUT N
//! bits as little-endian u64 words (bit i of the vector is bit i % 64 of word i / 64); OUT
//! receives the R-bit hash the same way. Prints one line per run: wall and process CPU time.
//! `gpu` (only in builds with the `gpu` feature) hashes on the GPU instead.
use kagi_postproc::toeplitz::{toeplitz_hash_with, Method};
use kagi_postproc::BitVec;

fn read_bits(path: &str, len: usize) -> BitVec {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let words: Vec<u64> = b
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .take(len.div_ceil(64))
        .collect();
    assert!(words.len() * 64 >= len, "{path}: too short for {len} bits");
    BitVec::from_words(words, len)
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 {
        eprintln!("usage: pa_files SEED INPUT N R OUT THREADS REPS [gpu]");
        std::process::exit(2);
    }
    let n: usize = a[2].parse().expect("N");
    let r: usize = a[3].parse().expect("R");
    let threads: usize = a[5].parse().expect("THREADS");
    let reps: usize = a[6].parse().expect("REPS");
    let gpu = a.get(7).is_some_and(|s| s == "gpu");
    let seed = read_bits(&a[0], n + r - 1);
    let input = read_bits(&a[1], n);
    let mut gpu_hasher = gpu.then(new_gpu);
    let mut out = None;
    for i in 0..reps {
        let c0 = cpu_seconds();
        let t0 = std::time::Instant::now();
        let y = if let Some(h) = gpu_hasher.as_mut() {
            hash_gpu(h, &seed, &input, r)
        } else {
            toeplitz_hash_with(&seed, &input, r, Method::Fft, threads).expect("hash")
        };
        let dt = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c0;
        println!(
            "kagi{} run {i}: n={n} wall={dt:.4}s cpu={cpu:.2}s {:.1} Mb/s",
            if gpu { "-gpu" } else { "" },
            n as f64 / dt / 1e6
        );
        out = Some(y);
    }
    let y = out.expect("at least one run");
    let bytes: Vec<u8> = y.words().iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&a[4], bytes).expect("write output");
}

#[cfg(feature = "gpu")]
type Gpu = kagi_postproc::gpu::GpuHasher;
#[cfg(not(feature = "gpu"))]
type Gpu = ();

#[cfg(feature = "gpu")]
fn new_gpu() -> Gpu {
    kagi_postproc::gpu::GpuHasher::new(0).expect("open GPU 0")
}

#[cfg(not(feature = "gpu"))]
fn new_gpu() -> Gpu {
    eprintln!("built without the `gpu` feature: cargo build --release -p kagi-postproc --features gpu --example pa_files");
    std::process::exit(2);
}

#[cfg(feature = "gpu")]
fn hash_gpu(h: &mut Gpu, seed: &BitVec, input: &BitVec, r: usize) -> BitVec {
    h.hash(seed, input, r).expect("GPU hash")
}

#[cfg(not(feature = "gpu"))]
fn hash_gpu(_: &mut Gpu, _: &BitVec, _: &BitVec, _: usize) -> BitVec {
    unreachable!("new_gpu exits in builds without the gpu feature")
}

/// Process CPU time (user + system, all threads) from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
