//! Cascade efficiency sweep: `cargo run --release -p kagi-postproc --example cascade_eff -- [n] [alpha] [passes]`.
use kagi_postproc::bits::BitVec;
use kagi_postproc::cascade::{h2, reconcile_local, CascadeParams};
use rand::{Rng, SeedableRng};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = a.first().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let alpha: f64 = a
        .get(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(CascadeParams::default().alpha);
    let passes: usize = a
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(CascadeParams::default().passes);
    let params = CascadeParams { alpha, passes };
    println!("n={n} alpha={alpha} passes={passes}");
    println!("qber   f_mean  f_max  rounds  fail/trials  Mb/s(both sides, 1 thread)");
    for q in [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08] {
        let trials = 4;
        let (mut fs, mut fmax, mut rounds, mut fails, mut secs) = (0.0, 0.0f64, 0, 0, 0.0);
        for seed in 0..trials {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 100);
            let x = BitVec::random(n, &mut rng);
            let mut y = x.clone();
            for i in 0..n {
                if rng.gen_bool(q) {
                    y.flip(i);
                }
            }
            let e = x.hamming(&y) as f64 / n as f64;
            let t0 = std::time::Instant::now();
            let (fixed, st) = reconcile_local(&x, &y, q, &params, seed);
            secs += t0.elapsed().as_secs_f64();
            if fixed != x {
                fails += 1;
            }
            let f = st.leaked_bits as f64 / (n as f64 * h2(e));
            fs += f;
            fmax = fmax.max(f);
            rounds += st.rounds;
        }
        println!(
            "{q:<6} {:.4}  {fmax:.4} {:>6}  {fails}/{trials}  {:.1}",
            fs / trials as f64,
            rounds / trials as usize,
            n as f64 * trials as f64 / secs / 1e6
        );
    }
}
