//! Issue 14's post-processing benchmarks in one run, each repeated, min / median of wall and
//! process CPU time (all threads, `/proc/self/stat`), so that a loaded machine still gives the
//! CPU figure (`scripts/pp-bench.sh` runs this and `kagi link-sim`).
//!
//! `cargo run --release -p kagi-postproc --example line_rate -- [reps] [what ...]`, `what`
//! among `pa`, `ldpc` (defaults), `ldpc-cold` (blind rounds restart from the channel LLRs),
//! `ldpc-fast` (first attempt at f = 1.5: fewer iterations, more disclosure), `cascade`
//! (default all). Environment: `PP_PA_BITS` (default 1e8),
//! `PP_EC_BITS` (reconciliation block, default 1e6), `PP_THREADS` (default 2).
//!
//! Lines starting `ROW` are the table (tab-separated): name, reps, wall min, wall median, CPU
//! min, CPU median (seconds), Mb/s at the min and median wall, and a note (f, rounds, ...).
use kagi_postproc::bits::BitVec;
use kagi_postproc::cascade::{self, h2, CascadeParams};
use kagi_postproc::ldpc::{self, LdpcParams};
use kagi_postproc::toeplitz::{seed_len, toeplitz_hash_with, Method};
use rand::{Rng, SeedableRng};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let reps: usize = a.first().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let what: Vec<&str> = a.iter().skip(1).map(String::as_str).collect();
    let want = |w: &str| what.is_empty() || what.contains(&w);
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(d)
    };
    let threads = env("PP_THREADS", 2.0) as usize;
    let pa_bits = env("PP_PA_BITS", 1e8) as usize;
    let ec_bits = env("PP_EC_BITS", 1e6) as usize;
    println!("ROW\tbenchmark\treps\twall_min_s\twall_med_s\tcpu_min_s\tcpu_med_s\tMbps_best\tMbps_med\tnote");
    if want("pa") {
        pa(pa_bits, threads, reps);
    }
    let d = LdpcParams::default();
    let fast = LdpcParams {
        efficiency: FAST_EFFICIENCY,
        ..d
    };
    let cold = LdpcParams {
        warm_start: false,
        ..d
    };
    for (name, params) in [("ldpc-cold", cold), ("ldpc", d), ("ldpc-fast", fast)] {
        if want(name) {
            for q in [0.01, 0.03, 0.05] {
                ldpc_row(name, ec_bits, q, threads, reps, &params);
            }
        }
    }
    if want("cascade") {
        for q in [0.01, 0.03, 0.05] {
            cascade_row(ec_bits, q, reps);
        }
    }
}

/// Toeplitz hashing of `n` bits to n/2 on `threads` threads; the first run (fresh buffers,
/// page faults) is run and left out, as a node hashing block after block reuses them.
fn pa(n: usize, threads: usize, reps: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let r = n / 2;
    let x = BitVec::random(n, &mut rng);
    let t = BitVec::random(seed_len(n, r), &mut rng);
    let run = || {
        let y = toeplitz_hash_with(&t, &x, r, Method::Fft, threads).expect("hash");
        std::hint::black_box(y);
    };
    run();
    let s = timed(reps, run);
    row(
        &format!("pa n={n:.0e} threads={threads}"),
        n,
        &s,
        "buffers warm".into(),
    );
}

/// Alice's key and Bob's with errors at rate `q`; the actual error rate.
fn keys(n: usize, q: f64, seed: u64) -> (BitVec, BitVec, f64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = BitVec::random(n, &mut rng);
    let mut y = x.clone();
    for i in 0..n {
        if rng.gen_bool(q) {
            y.flip(i);
        }
    }
    let e = x.hamming(&y) as f64 / n as f64;
    (x, y, e)
}

/// First-attempt efficiency of the `ldpc-fast` rows: high enough that most frames decode at
/// once (few iterations in failed attempts), at the cost of f.
const FAST_EFFICIENCY: f64 = 1.5;

/// LDPC reconciliation (blind, min-sum) with `params`, both ends in-process
/// (syndromes, decoding on `threads` threads, reveals); f from the actual error rate.
fn ldpc_row(name: &str, n: usize, q: f64, threads: usize, reps: usize, params: &LdpcParams) {
    let params = *params;
    // Warm the code cache (built once per process, as in a node).
    let (x, y, _) = keys(n, q, 99);
    let _ = ldpc::reconcile_local(&x, &y, q, &params, threads);
    let mut fs = Vec::new();
    let mut attempts = 0;
    let (mut work, mut frames) = (0u64, 0usize);
    let mut seed = 100;
    let s = timed_with(
        reps,
        || {
            seed += 1;
            let (x, y, e) = keys(n, q, seed);
            (x, y, e)
        },
        |(x, y, e)| {
            let (fixed, st) = ldpc::reconcile_local(x, y, q, &params, threads).expect("decoded");
            assert!(fixed == *x, "LDPC: Bob's key differs from Alice's");
            fs.push(st.leaked_bits as f64 / (n as f64 * h2(*e)));
            attempts = attempts.max(st.rounds);
            work += st.total_iterations;
            frames += st.frames;
        },
    );
    row(
        &format!("{name} q={:.0}% threads={threads}", q * 100.0),
        n,
        &s,
        format!(
            "f {} attempts<={attempts} iterations/frame {:.1}",
            min_med(&mut fs),
            work as f64 / frames.max(1) as f64
        ),
    );
}

/// Cascade with the default parameters, both ends in-process (one thread per end's work as
/// `reconcile_local` does it).
fn cascade_row(n: usize, q: f64, reps: usize) {
    let params = CascadeParams::default();
    let mut fs = Vec::new();
    let mut rounds = Vec::new();
    let mut seed = 100;
    let s = timed_with(
        reps,
        || {
            seed += 1;
            let (x, y, e) = keys(n, q, seed);
            (x, y, e, seed)
        },
        |(x, y, e, seed)| {
            let (fixed, st) = cascade::reconcile_local(x, y, q, &params, *seed);
            assert!(fixed == *x, "Cascade: Bob's key differs from Alice's");
            fs.push(st.leaked_bits as f64 / (n as f64 * h2(*e)));
            rounds.push(st.rounds as f64);
        },
    );
    row(
        &format!("cascade q={:.0}%", q * 100.0),
        n,
        &s,
        format!("f {} rounds {}", min_med(&mut fs), {
            let (a, b) = med(&mut rounds);
            format!("{a}/{b}")
        }),
    );
}

/// Wall and CPU seconds of each run.
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

fn timed(reps: usize, mut f: impl FnMut()) -> Samples {
    timed_with(reps, || (), |_| f())
}

/// Runs `setup` untimed, then `f` timed, `reps` times.
fn timed_with<T>(reps: usize, mut setup: impl FnMut() -> T, mut f: impl FnMut(&T)) -> Samples {
    let mut s = Samples {
        wall: Vec::new(),
        cpu: Vec::new(),
    };
    for _ in 0..reps {
        let input = setup();
        let c0 = cpu_seconds();
        let t0 = std::time::Instant::now();
        f(&input);
        s.wall.push(t0.elapsed().as_secs_f64());
        s.cpu.push(cpu_seconds() - c0);
    }
    s
}

fn med(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn min_med(v: &mut [f64]) -> String {
    let (a, b) = med(v);
    format!("{a:.3}/{b:.3}")
}

fn row(name: &str, bits: usize, s: &Samples, note: String) {
    let (mut w, mut c) = (s.wall.clone(), s.cpu.clone());
    let (w0, w1) = med(&mut w);
    let (c0, c1) = med(&mut c);
    println!(
        "ROW\t{name}\t{}\t{w0:.4}\t{w1:.4}\t{c0:.3}\t{c1:.3}\t{:.1}\t{:.1}\t{note}",
        s.wall.len(),
        bits as f64 / w0 / 1e6,
        bits as f64 / w1 / 1e6
    );
}

/// Process CPU time (user + system, all threads) from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
