//! Cascade efficiency sweep:
//! `cargo run --release -p kagi-postproc --example cascade_eff -- [n] [alpha] [passes] [round_bits] [late_overlap]`
//! (defaults: those of `CascadeParams`). Prints f, rounds and the disclosed bits plus the
//! authentication key the rounds cost (2 × 128 bits per round), relative to n·h(QBER).
use kagi_postproc::bits::BitVec;
use kagi_postproc::cascade::{h2, reconcile_local, CascadeParams};
use rand::{Rng, SeedableRng};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).and_then(|v| v.parse::<f64>().ok());
    let d = CascadeParams::default();
    let n = arg(0).map_or(1_000_000, |v| v as usize);
    let params = CascadeParams {
        alpha: arg(1).unwrap_or(d.alpha),
        passes: arg(2).map_or(d.passes, |v| v as usize),
        round_bits: arg(3).map_or(d.round_bits, |v| v as usize),
        late_overlap: arg(4).map_or(d.late_overlap, |v| v as usize),
    };
    println!("n={n} {params:?}");
    println!("qber   f_mean  f_max  rounds  (leak+auth)/nh  fail/trials  Mb/s(both sides)");
    for q in [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08] {
        let trials = 4;
        let (mut fs, mut fmax, mut rounds, mut fails, mut secs, mut net) =
            (0.0, 0.0f64, 0, 0, 0.0, 0.0);
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
            let ideal = n as f64 * h2(e);
            let f = st.leaked_bits as f64 / ideal;
            fs += f;
            fmax = fmax.max(f);
            rounds += st.rounds;
            net += (st.leaked_bits + 256 * st.rounds) as f64 / ideal;
        }
        println!(
            "{q:<6} {:.4}  {fmax:.4} {:>6}  {:.4}         {fails}/{trials}  {:.1}",
            fs / trials as f64,
            rounds / trials as usize,
            net / trials as f64,
            n as f64 * trials as f64 / secs / 1e6
        );
    }
}
