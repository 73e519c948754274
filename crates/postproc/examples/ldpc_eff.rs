//! LDPC reconciliation sweep: f, attempts, failures and decoder throughput against QBER.
//!
//! `cargo run --release -p kagi-postproc --example ldpc_eff -- [n] [efficiency] [blind_rounds]
//! [blind_step] [frame_bits] [threads] [trials] [max_iterations]`; `LDPC_BOX_PLUS=1` decodes
//! with the sum-product (box-plus) check rule, `LDPC_QS=0.01,0.03` limits the QBERs,
//! `LDPC_WARM=0` restarts each blind round from the channel LLRs instead of keeping the
//! decoder state (the default).
//!
//! f = disclosed bits (syndromes + reveals) / (n·h(QBER)) with the actual error rate of each
//! trial; Mb/s is sifted bits per second of the whole local reconciliation (syndromes, BP
//! decoding, checks) on `threads` threads.
use kagi_postproc::bits::BitVec;
use kagi_postproc::cascade::h2;
use kagi_postproc::ldpc::{reconcile_local, CheckRule, LdpcParams};
use rand::{Rng, SeedableRng};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).and_then(|v| v.parse::<f64>().ok());
    let d = LdpcParams::default();
    let n = arg(0).map_or(1_000_000, |v| v as usize);
    let params = LdpcParams {
        efficiency: arg(1).unwrap_or(d.efficiency),
        blind_rounds: arg(2).map_or(d.blind_rounds, |v| v as usize),
        blind_step: arg(3).unwrap_or(d.blind_step),
        frame_bits: arg(4).map_or(d.frame_bits, |v| v as usize),
        max_iterations: arg(7).map_or(d.max_iterations, |v| v as usize),
        check_rule: if std::env::var_os("LDPC_BOX_PLUS").is_some() {
            CheckRule::BoxPlus
        } else {
            CheckRule::MinSum
        },
        warm_start: std::env::var("LDPC_WARM").map_or(d.warm_start, |v| v != "0"),
        stall_iterations: std::env::var("LDPC_STALL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.stall_iterations),
    };
    let threads = arg(5).map_or(1, |v| v as usize);
    let trials = arg(6).map_or(4, |v| v as u64);
    println!("n={n} {params:?} threads={threads}");
    println!("qber   f_mean  f_max   attempts  iters/frame  work/frame  failed/trials  Mb/s");
    // LDPC_QS=0.01,0.03 limits the sweep.
    let qs: Vec<f64> = std::env::var("LDPC_QS")
        .map_or(vec![0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08], |v| {
            v.split(',').filter_map(|x| x.parse().ok()).collect()
        });
    for q in qs {
        let (mut fs, mut fmax, mut att, mut fails, mut secs, mut iters, mut frames) =
            (0.0, 0.0f64, 0usize, 0, 0.0, 0u64, 0usize);
        let mut work = 0u64;
        let mut ok = 0;
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
            let r = reconcile_local(&x, &y, q, &params, threads);
            secs += t0.elapsed().as_secs_f64();
            match r {
                Ok((fixed, st)) => {
                    assert!(fixed == x, "decoded key differs from Alice's");
                    let f = st.leaked_bits as f64 / (n as f64 * h2(e));
                    fs += f;
                    fmax = fmax.max(f);
                    att = att.max(st.rounds);
                    iters += st.iterations;
                    work += st.total_iterations;
                    frames += st.frames;
                    ok += 1;
                }
                Err(_) => fails += 1,
            }
        }
        println!(
            "{q:<6} {:.4}  {fmax:.4}  {att:>8}  {:>11.1}  {:>10.1}  {fails}/{trials}  {:>12.1}",
            fs / ok.max(1) as f64,
            iters as f64 / frames.max(1) as f64,
            work as f64 / frames.max(1) as f64,
            n as f64 * trials as f64 / secs / 1e6
        );
    }
}
