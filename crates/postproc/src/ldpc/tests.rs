use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Alice's random key and Bob's copy through a BSC with crossover `q`.
fn pair(n: usize, q: f64, seed: u64) -> (BitVec, BitVec) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = BitVec::random(n, &mut rng);
    let mut b = a.clone();
    for i in 0..n {
        if rng.gen_bool(q) {
            b.flip(i);
        }
    }
    (a, b)
}

#[test]
fn decodes_to_alices_key_across_the_qber_range() {
    let params = LdpcParams::default();
    for (i, q) in [0.005, 0.01, 0.03, 0.05, 0.08].into_iter().enumerate() {
        let (a, b) = pair(150_000, q, i as u64);
        let (fixed, st) = reconcile_local(&a, &b, q, &params, 2).unwrap();
        assert_eq!(fixed, a, "qber {q}");
        assert_eq!(st.corrected, a.hamming(&b));
        let f = st.leaked_bits as f64 / (a.len() as f64 * h2(q));
        assert!(f < 1.5, "qber {q}: f = {f}");
    }
}

#[test]
fn one_shot_frames_decode_at_their_design_rate() {
    for (frame_bits, q) in [(1 << 14, 0.02), (1 << 15, 0.04), (1 << 16, 0.01)] {
        let params = LdpcParams {
            frame_bits,
            efficiency: 1.45,
            blind_rounds: 0,
            ..LdpcParams::default()
        };
        let (a, b) = pair(3 * frame_bits, q, frame_bits as u64);
        let (fixed, st) = reconcile_local(&a, &b, q, &params, 1).unwrap();
        assert_eq!(fixed, a);
        assert_eq!(st.rounds, 1);
        // Disclosure: the plan's rate, within one frame's rounding.
        let f = st.leaked_bits as f64 / (a.len() as f64 * h2(q));
        assert!((1.4..1.5).contains(&f), "f = {f}");
    }
}

#[test]
fn undecodable_frames_are_reported_not_returned() {
    // Actual error rate far above the estimate: one-shot and blind both give up.
    let (a, b) = pair(100_000, 0.10, 9);
    for rounds in [0, 3] {
        let params = LdpcParams {
            blind_rounds: rounds,
            ..LdpcParams::default()
        };
        let r = reconcile_local(&a, &b, 0.01, &params, 2);
        match r {
            Err(LdpcError::DecodeFailed {
                failed,
                frames,
                rounds: used,
            }) => {
                assert!(failed > 0 && failed <= frames);
                assert_eq!(used, rounds + 1);
            }
            other => panic!("expected DecodeFailed, got {other:?}"),
        }
    }
}

#[test]
fn ends_agree_on_leakage_and_reject_malformed_messages() {
    let q = 0.03;
    let (a, b) = pair(70_000, q, 4);
    let params = LdpcParams::default();
    let plan = Plan::new(a.len(), q, &params).unwrap();
    let (mut al, synd) = LdpcAlice::new(&a, plan.clone()).unwrap();
    let short = synd.slice(0, synd.len() - 1);
    assert!(matches!(
        LdpcBob::new(b.clone(), plan.clone(), &short),
        Err(LdpcError::SyndromeLength { .. })
    ));
    let mut bob = LdpcBob::new(b, plan, &synd).unwrap();
    assert_eq!(al.leaked_bits(), bob.leaked_bits());
    assert!(al.reveal(&[1, 0]).is_err());
    assert!(al.reveal(&[99]).is_err());
    let r = al.reveal(&[0]).unwrap();
    assert!(bob.apply_reveal(&[0], &r.slice(0, r.len() - 1)).is_err());
    bob.apply_reveal(&[0], &r).unwrap();
    assert_eq!(al.leaked_bits(), bob.leaked_bits());
}

#[test]
fn simd_kernels_match_the_portable_kernel() {
    for rule in [CheckRule::MinSum, CheckRule::BoxPlus] {
        simd_kernels_match_for(rule);
    }
}

fn simd_kernels_match_for(check_rule: CheckRule) {
    let q = 0.04;
    let params = LdpcParams {
        check_rule,
        ..LdpcParams::default()
    };
    let (a, b) = pair(60_000, q, 5);
    let plan = Plan::new(a.len(), q, &params).unwrap();
    let (_, synd) = LdpcAlice::new(&a, plan.clone()).unwrap();
    let bob = LdpcBob::new(b.clone(), plan.clone(), &synd).unwrap();
    let mut reference = None;
    for simd in [Simd::Portable, Simd::Avx2, Simd::Avx512] {
        if !simd.available() {
            continue;
        }
        // Few iterations too, so that unfinished states are compared as well.
        for iters in [3, 60] {
            let mut plan = plan.clone();
            plan.max_iterations = iters;
            let mut dec = Decoder::default();
            let mut llr = Vec::new();
            let r = decode_frame(&plan, &b, &bob.frames[0], None, 0, &mut dec, &mut llr, simd);
            let r = match r {
                Outcome::Decoded(k, it) => Some((k.to_bytes(), it)),
                Outcome::Failed(_) => None,
            };
            let got = (iters, r, dec.app.clone());
            match &reference {
                None if iters == 3 => reference = Some(vec![got]),
                Some(v) if v.len() < 2 => reference.as_mut().unwrap().push(got),
                Some(v) => assert!(
                    v.contains(&got),
                    "{check_rule:?} {simd:?} differs at {iters} iterations"
                ),
                None => unreachable!(),
            }
        }
    }
}

#[test]
fn warm_started_blind_rounds_continue_where_the_last_attempt_stopped() {
    // Eight iterations per attempt: too few for most frames at f = 1.15, so a cold restart
    // needs many reveals; resuming from the saved messages accumulates the iterations.
    let q = 0.03;
    let (a, b) = pair(8 << 14, q, 31);
    let run = |warm_start| {
        let params = LdpcParams {
            frame_bits: 1 << 14,
            max_iterations: 8,
            blind_rounds: 12,
            warm_start,
            ..LdpcParams::default()
        };
        let (fixed, st) = reconcile_local(&a, &b, q, &params, 2).unwrap();
        assert_eq!(fixed, a, "warm_start {warm_start}");
        st
    };
    let (cold, warm) = (run(false), run(true));
    assert!(
        warm.leaked_bits < cold.leaked_bits && warm.rounds + 2 <= cold.rounds,
        "warm {warm:?} cold {cold:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Reconciliation ends with Alice's key or reports failure, whatever the true error rate
    /// and the estimate.
    #[test]
    fn identical_or_reported(q in 0.002f64..0.12, est in 0.002f64..0.1, seed in 0u64..1000,
                             blind in 0usize..4, warm_start: bool) {
        let (a, b) = pair(40_000, q, seed);
        let params = LdpcParams {
            blind_rounds: blind,
            frame_bits: 1 << 14,
            warm_start,
            ..LdpcParams::default()
        };
        match reconcile_local(&a, &b, est, &params, 2) {
            Ok((fixed, st)) => {
                prop_assert_eq!(&fixed, &a);
                prop_assert_eq!(st.corrected, a.hamming(&b));
            }
            Err(LdpcError::DecodeFailed { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

/// Frame error rate of mother codes without shortening or puncturing (tuning aid):
/// `cargo test --release -p kagi-postproc ldpc::tests::fer_probe -- --ignored --nocapture`
#[test]
#[ignore]
fn fer_probe() {
    let frames = 10;
    for (mb, qs) in [
        (128usize, [0.07f64, 0.08, 0.09]),
        (64, [0.030, 0.036, 0.042]),
        (26, [0.010, 0.012, 0.014]),
        (13, [0.003, 0.004, 0.005]),
    ] {
        let code = mother_code(1 << 16, mb);
        let n = code.n();
        let rate = 1.0 - mb as f64 / 256.0;
        for q in qs {
            let plan = Plan {
                code: code.clone(),
                frames: vec![FramePlan {
                    offset: 0,
                    key: n,
                    punctured: 0,
                    shortened: 0,
                    step: 1,
                }],
                llr: (((1.0 - q) / q).ln() * LLR_SCALE).round() as i16,
                rounds: 0,
                max_iterations: 100,
                check_rule: CheckRule::MinSum,
                warm_start: false,
                stall_iterations: STALL_ITERATIONS,
            };
            let (mut fail, mut its) = (0, 0);
            let t = std::time::Instant::now();
            for s in 0..frames {
                let (a, b) = pair(n, q, s);
                let (_, synd) = LdpcAlice::new(&a, plan.clone()).unwrap();
                let mut bob = LdpcBob::new(b, plan.clone(), &synd).unwrap();
                if bob.decode(1).is_empty() {
                    its += bob.frames[0].iterations;
                } else {
                    fail += 1;
                }
            }
            println!(
                "R={rate:.3} q={q} f={:.3} FER {fail}/{frames} iters {:.1} {:.1} Mb/s punct_avail {}",
                (1.0 - rate) / h2(q),
                its as f64 / (frames - fail).max(1) as f64,
                (n * frames as usize) as f64 / t.elapsed().as_secs_f64() / 1e6,
                code.punct.len()
            );
        }
    }
}

/// Flooding sum-product in f64 (reference for tuning): true when it meets the syndrome.
fn spa_reference(code: &QcCode, llr: &[f64], synd: &[u64], iters: usize) -> (bool, usize) {
    let (z, n, m) = (code.z, code.n(), code.m());
    let mut check_vars: Vec<Vec<usize>> = vec![Vec::new(); m];
    for r in 0..code.mb {
        for e in code.row_start[r]..code.row_start[r + 1] {
            let (j, s) = (code.cols[e] as usize, code.shifts[e] as usize);
            for q in 0..z {
                check_vars[r * z + q].push(j * z + (q + s) % z);
            }
        }
    }
    let mut c2v: Vec<Vec<f64>> = check_vars.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut app = llr.to_vec();
    for it in 1..=iters {
        let mut new_app = llr.to_vec();
        for c in 0..m {
            let sbit = (synd[c / 64] >> (c % 64)) & 1 == 1;
            let ts: Vec<f64> = check_vars[c]
                .iter()
                .zip(&c2v[c])
                .map(|(&v, &r)| ((app[v] - r) / 2.0).tanh())
                .collect();
            for (k, &v) in check_vars[c].iter().enumerate() {
                let mut p = if sbit { -1.0 } else { 1.0 };
                for (k2, &t) in ts.iter().enumerate() {
                    if k2 != k {
                        p *= t;
                    }
                }
                let p = p.clamp(-0.999_999_999, 0.999_999_999);
                c2v[c][k] = 2.0 * p.atanh();
                new_app[v] += c2v[c][k];
            }
        }
        app = new_app;
        let ok = (0..m).all(|c| {
            let par = check_vars[c].iter().filter(|&&v| app[v] < 0.0).count() % 2 == 1;
            par == ((synd[c / 64] >> (c % 64)) & 1 == 1)
        });
        if ok {
            return (true, it);
        }
    }
    let _ = n;
    (false, iters)
}

#[test]
#[ignore]
fn spa_probe() {
    let design: Vec<f64> = std::env::var("LDPC_DESIGN")
        .unwrap_or("0.15,6,3,1".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    for (mb, q) in [(128usize, 0.07f64), (64, 0.03), (26, 0.01)] {
        let code = QcCode::build_with(
            64,
            mb,
            1,
            design[0],
            design[1] as usize,
            design[2] as usize,
            design[3] > 0.0,
        );
        let n = code.n();
        let mut fails = 0;
        for s in 0..4 {
            let (a, b) = pair(n, q, s);
            let synd = code.syndrome(a.words());
            let l = ((1.0 - q) / q).ln();
            let llr: Vec<f64> = (0..n).map(|i| if b.get(i) { -l } else { l }).collect();
            let (ok, _) = spa_reference(&code, &llr, &synd, 100);

            fails += (!ok) as usize;
        }
        println!("mb={mb} q={q} SPA fails {fails}/4");
    }
}

/// Highest QBER (on a grid) at which a design decodes all of `frames` frames (tuning aid).
fn design_threshold(code: &QcCode, qs: &[f64], frames: u64) -> f64 {
    let n = code.n();
    let code = Arc::new(QcCode {
        z: code.z,
        mb: code.mb,
        row_start: code.row_start.clone(),
        cols: code.cols.clone(),
        shifts: code.shifts.clone(),
        punct: Vec::new(),
        order: (0..n as u32).collect(),
        max_row_deg: code.max_row_deg,
    });
    let mut best = 0.0;
    for &q in qs {
        let plan = Plan {
            code: code.clone(),
            frames: vec![FramePlan {
                offset: 0,
                key: n,
                punctured: 0,
                shortened: 0,
                step: 1,
            }],
            llr: (((1.0 - q) / q).ln() * LLR_SCALE).round() as i16,
            rounds: 0,
            max_iterations: 100,
            check_rule: CheckRule::MinSum,
            warm_start: false,
            stall_iterations: STALL_ITERATIONS,
        };
        for s in 0..frames {
            let (a, b) = pair(n, q, s + 77);
            let (_, synd) = LdpcAlice::new(&a, plan.clone()).unwrap();
            let mut bob = LdpcBob::new(b, plan.clone(), &synd).unwrap();
            if !bob.decode(2).is_empty() {
                return best;
            }
        }
        best = q;
    }
    best
}

/// `LDPC_MB=26 cargo test --release -p kagi-postproc ldpc::tests::design_search -- --ignored --nocapture`
#[test]
#[ignore]
fn design_search() {
    let mb: usize = std::env::var("LDPC_MB").map_or(26, |v| v.parse().unwrap());
    let rate = 1.0 - mb as f64 / 256.0;
    // q grid from f = 1.5 down to f = 1.0.
    let qs: Vec<f64> = (0..26)
        .map(|i| {
            let f = 1.5 - 0.02 * i as f64;
            let target = (1.0 - rate) / f;
            // invert h2 by bisection
            let (mut lo, mut hi) = (1e-6, 0.5);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if h2(mid) < target {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            lo
        })
        .collect();
    for stair in [true, false] {
        for dl in [2usize, 3] {
            if dl == 2 && stair {
                continue;
            }
            for dh in [5usize, 6, 8, 10, 12, 16] {
                for frac in [0.1, 0.2, 0.3, 0.4] {
                    let code = QcCode::build_with(128, mb, 3, frac, dh, dl, stair);
                    let q = design_threshold(&code, &qs, 6);
                    println!(
                        "mb={mb} stair={stair} dl={dl} dh={dh} frac={frac} q*={q:.4} f*={:.3}",
                        if q > 0.0 { (1.0 - rate) / h2(q) } else { 9.0 }
                    );
                }
            }
        }
    }
}

#[test]
#[ignore]
fn spa_vs_minsum_probe() {
    let design: Vec<f64> = std::env::var("LDPC_DESIGN")
        .unwrap_or("0,3,3,0".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let mb: usize = std::env::var("LDPC_MB").map_or(26, |v| v.parse().unwrap());
    let code = QcCode::build_with(
        64,
        mb,
        1,
        design[0],
        design[1] as usize,
        design[2] as usize,
        design[3] > 0.0,
    );
    let n = code.n();
    let qs: Vec<f64> = std::env::var("LDPC_QS")
        .unwrap_or("0.004,0.006,0.008,0.01".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    for q in qs {
        let mut spa_ok = 0;
        for s in 0..4 {
            let (a, b) = pair(n, q, s);
            let synd = code.syndrome(a.words());
            let l = ((1.0 - q) / q).ln();
            let llr: Vec<f64> = (0..n).map(|i| if b.get(i) { -l } else { l }).collect();
            spa_ok += spa_reference(&code, &llr, &synd, 100).0 as usize;
        }
        let t = design_threshold(&code, &[q], 4);
        println!("q={q} SPA ok {spa_ok}/4, min-sum all ok: {}", t > 0.0);
    }
}

/// Population-dynamics density evolution of BP on the BSC (tuning aid): whether the bit
/// error probability dies out for variable degrees `dv` (edge-perspective weights) and
/// check degree `dc`.
fn de_converges(
    q: f64,
    lambda: &[(usize, f64)],
    rho: &[(usize, f64)],
    rng: &mut ChaCha8Rng,
) -> bool {
    let pop = 8_000;
    let l0 = ((1.0 - q) / q).ln();
    let ch = |rng: &mut ChaCha8Rng| if rng.gen_bool(q) { -l0 } else { l0 };
    let pick = |w: &[(usize, f64)], rng: &mut ChaCha8Rng| {
        let mut u: f64 = rng.gen();
        for &(d, p) in w {
            if u < p {
                return d;
            }
            u -= p;
        }
        w[w.len() - 1].0
    };
    let mut v2c: Vec<f64> = (0..pop).map(|_| ch(rng)).collect();
    let mut c2v = vec![0.0; pop];
    for _ in 0..200 {
        for m in c2v.iter_mut() {
            let dc = pick(rho, rng);
            let mut p = 1.0;
            for _ in 0..dc - 1 {
                p *= (v2c[rng.gen_range(0..pop)] / 2.0).tanh();
            }
            *m = 2.0 * p.clamp(-0.999_999_999_999, 0.999_999_999_999).atanh();
        }
        let mut errs = 0;
        for m in v2c.iter_mut() {
            let dv = pick(lambda, rng);
            let mut s = ch(rng);
            for _ in 0..dv - 1 {
                s += c2v[rng.gen_range(0..pop)];
            }
            *m = s;
            errs += (s <= 0.0) as usize;
        }
        if errs == 0 {
            return true;
        }
    }
    false
}

#[test]
#[ignore]
fn de_probe() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (lambda, rho, rate)
    type Degrees = Vec<(usize, f64)>;
    let cases: Vec<(Degrees, Degrees)> = vec![
        (vec![(3, 1.0)], vec![(6, 1.0)]),
        (vec![(3, 1.0)], vec![(30, 1.0)]),
        (vec![(2, 0.1), (3, 0.6), (10, 0.3)], vec![(34, 1.0)]),
    ];
    for (lambda, rho) in cases {
        let il: f64 = lambda.iter().map(|&(d, w)| w / d as f64).sum();
        let ir: f64 = rho.iter().map(|&(d, w)| w / d as f64).sum();
        let rate = 1.0 - ir / il;
        let mut best = 0.0;
        for i in 1..60 {
            let q = 0.002 * i as f64;
            if de_converges(q, &lambda, &rho, &mut rng) {
                best = q;
            } else {
                break;
            }
        }
        println!(
            "{lambda:?} {rho:?} R={rate:.3} q*={best} f*={:.3}",
            (1.0 - rate) / h2(best)
        );
    }
}

/// DE search over the construction's design (staircase, a fraction `frac` of the
/// information columns at degree `dh`, the rest at degree 3):
/// `LDPC_MB=26 cargo test --release -p kagi-postproc ldpc::tests::de_search -- --ignored --nocapture`
#[test]
#[ignore]
fn de_search() {
    let mb: usize = std::env::var("LDPC_MB").map_or(26, |v| v.parse().unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let rate = 1.0 - mb as f64 / 256.0;
    let k = 256 - mb;
    let q_of_f = |f: f64| {
        let target = (1.0 - rate) / f;
        let (mut lo, mut hi) = (1e-6, 0.5);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if h2(mid) < target {
                lo = mid
            } else {
                hi = mid
            }
        }
        lo
    };
    let dhs: Vec<usize> = std::env::var("LDPC_DH").map_or(vec![8, 12, 20], |v| {
        v.split(',').map(|x| x.parse().unwrap()).collect()
    });
    let fracs: Vec<f64> = std::env::var("LDPC_FRAC").map_or(vec![0.1, 0.2, 0.3], |v| {
        v.split(',').map(|x| x.parse().unwrap()).collect()
    });
    for &dh in &dhs {
        for &frac in &fracs {
            let heavy = (frac * k as f64).round();
            let e2 = 2.0 * mb as f64;
            let eh = heavy * dh as f64;
            let e3 = (k as f64 - heavy) * 3.0;
            let e = e2 + eh + e3;
            let lambda = vec![(2, e2 / e), (3, e3 / e), (dh, eh / e)];
            let dc = e / mb as f64;
            let lo = dc.floor() as usize;
            let w_hi = dc - lo as f64; // fraction of checks at lo+1 (node perspective)
            let (el, eh2) = ((1.0 - w_hi) * lo as f64, w_hi * (lo + 1) as f64);
            let rho = vec![(lo, el / (el + eh2)), (lo + 1, eh2 / (el + eh2))];
            // Bisection on f in [1.0, 1.8].
            let (mut good, mut bad) = (1.8, 1.0);
            if !de_converges(q_of_f(good), &lambda, &rho, &mut rng) {
                println!("mb={mb} dh={dh} frac={frac} f*>1.8");
                continue;
            }
            for _ in 0..6 {
                let mid = (good + bad) / 2.0;
                if de_converges(q_of_f(mid), &lambda, &rho, &mut rng) {
                    good = mid
                } else {
                    bad = mid
                }
            }
            println!("mb={mb} dh={dh} frac={frac} f*={good:.3}");
        }
    }
}

#[test]
fn box_plus_decodes_frames_min_sum_cannot() {
    // One shot at f = 1.2 (QBER 3 %, frames of 2^14): near min-sum's limit, well inside
    // sum-product's.
    let q = 0.03;
    let (a, b) = pair(6 << 14, q, 21);
    let run = |check_rule| {
        let params = LdpcParams {
            frame_bits: 1 << 14,
            efficiency: 1.2,
            blind_rounds: 0,
            check_rule,
            ..LdpcParams::default()
        };
        let plan = Plan::new(a.len(), q, &params).unwrap();
        let (_, synd) = LdpcAlice::new(&a, plan.clone()).unwrap();
        let mut bob = LdpcBob::new(b.clone(), plan, &synd).unwrap();
        bob.decode(2).len()
    };
    let (min_sum, box_plus) = (run(CheckRule::MinSum), run(CheckRule::BoxPlus));
    assert_eq!(box_plus, 0, "box-plus failed {box_plus} frames");
    assert!(min_sum > 0, "min-sum decoded every frame");
}

/// The layered decoder written the plain way, one check at a time with scalar arithmetic, as
/// the module docs define it: the reference the vectorized kernels must equal bit for bit.
/// Returns what [`Decoder::decode`] returns, and the final a-posteriori LLRs and messages.
fn layered_reference(
    code: &QcCode,
    llr: &[i16],
    synd: &[u64],
    max_iter: usize,
    rule: CheckRule,
) -> (Option<usize>, Vec<i16>, Vec<i16>) {
    use decoder::{abs, boxplus, ALPHA, INF, MSG_MAX};
    let z = code.z;
    let mut app = llr.to_vec();
    let mut msgs = vec![0i16; code.cols.len() * z];
    let holds = |app: &[i16]| {
        let hard: Vec<u64> = app
            .chunks(64)
            .map(|c| (0..64).fold(0u64, |w, i| w | (u64::from(c[i] < 0) << i)))
            .collect();
        code.syndrome(&hard) == synd
    };
    if holds(&app) {
        return (Some(0), app, msgs);
    }
    for it in 1..=max_iter {
        for r in 0..code.mb {
            let edges: Vec<usize> = (code.row_start[r]..code.row_start[r + 1]).collect();
            for q in 0..z {
                let c = r * z + q;
                let var = |e: usize| code.cols[e] as usize * z + (q + code.shifts[e] as usize) % z;
                let t: Vec<i16> = edges
                    .iter()
                    .map(|&e| app[var(e)].saturating_sub(msgs[e * z + q]))
                    .collect();
                let parity = (synd[c / 64] >> (c % 64)) & 1 == 1;
                let parity = t.iter().fold(parity, |p, &x| p ^ (x < 0));
                let dc = t.len();
                let mags: Vec<i16> = (0..dc)
                    .map(|k| match rule {
                        CheckRule::MinSum => {
                            let m = (0..dc).filter(|&j| j != k).map(|j| abs(t[j])).min();
                            (m.unwrap_or(i16::MAX).min(MSG_MAX) * ALPHA) >> 4
                        }
                        CheckRule::BoxPlus => {
                            // Forward sum of the edges before k, backward sum from the last.
                            let bwd = (k + 1..dc).rev().fold(INF, |b, j| boxplus(b, abs(t[j])));
                            let mag = if k == 0 {
                                bwd
                            } else {
                                let fwd = (1..k).fold(abs(t[0]), |f, j| boxplus(f, abs(t[j])));
                                boxplus(fwd, bwd)
                            };
                            mag.min(MSG_MAX)
                        }
                    })
                    .collect();
                for (k, &e) in edges.iter().enumerate() {
                    let out = if parity ^ (t[k] < 0) {
                        -mags[k]
                    } else {
                        mags[k]
                    };
                    msgs[e * z + q] = out;
                    app[var(e)] = t[k].saturating_add(out);
                }
            }
        }
        if holds(&app) {
            return (Some(it), app, msgs);
        }
    }
    (None, app, msgs)
}

#[test]
fn kernels_equal_the_scalar_layered_reference() {
    // Every circulant size (z = 64, 128, 256), both rules, every instruction set; unfinished
    // and finished decodes; channel LLRs, known symbols (saturating sums) and a wrong one.
    for (i, (frame_bits, mb, q)) in [
        (1 << 14, 51, 0.03),
        (1 << 15, 90, 0.06),
        (1 << 16, 26, 0.01),
    ]
    .into_iter()
    .enumerate()
    {
        let code = mother_code(frame_bits, mb);
        let n = code.n();
        let mut rng = ChaCha8Rng::seed_from_u64(40 + i as u64);
        let x = BitVec::random(n, &mut rng);
        let synd = code.syndrome(x.words());
        let q: f64 = q;
        let mag = ((1.0 - q) / q).ln() * LLR_SCALE;
        let llr: Vec<i16> = (0..n)
            .map(|v| {
                let bit = x.get(v) ^ rng.gen_bool(q);
                let m = match v % 97 {
                    0 => LLR_KNOWN,
                    1 => LLR_KNOWN / 3,
                    _ => mag.round() as i16,
                };
                if bit {
                    -m
                } else {
                    m
                }
            })
            .collect();
        for rule in [CheckRule::MinSum, CheckRule::BoxPlus] {
            for iters in [1, 4, 30] {
                let want = layered_reference(&code, &llr, &synd, iters, rule);
                for simd in [Simd::Portable, Simd::Avx2, Simd::Avx512] {
                    if !simd.available() {
                        continue;
                    }
                    let mut dec = Decoder::default();
                    let r = dec.decode(&code, &llr, &synd, iters, simd, rule);
                    let (app, msgs) = dec.take_state();
                    assert!(
                        (r, &app, &msgs) == (want.0, &want.1, &want.2),
                        "z {} {rule:?} {simd:?} {iters} iterations: {r:?} vs {:?}",
                        code.z,
                        want.0
                    );
                }
            }
        }
    }
}

#[test]
fn revealed_symbols_channel_llrs_match_the_frame_set_up() {
    // A warm-started attempt takes each new reveal's channel LLR from its reveal index instead
    // of building the whole frame's channel LLRs: both must agree for every reveal.
    let q = 0.03;
    let (_, b) = pair(200_000, q, 3);
    let plan = Plan::new(b.len(), q, &LdpcParams::default()).unwrap();
    let n = plan.code.n();
    for f in &plan.frames {
        let mut llr = vec![0i16; n];
        let order = &plan.code.order;
        let start = f.punctured + f.shortened;
        for &v in &order[f.punctured..start] {
            llr[v as usize] = LLR_KNOWN;
        }
        for (j, &v) in order[start..].iter().enumerate() {
            llr[v as usize] = if b.get(f.offset + j) {
                -plan.llr
            } else {
                plan.llr
            };
        }
        let mut k = 0;
        while let Some(v) = plan.reveal_var(f, k) {
            assert_eq!(plan.reveal_channel_llr(f, &b, k), llr[v], "reveal {k}");
            k += 1;
        }
        assert_eq!(k, f.punctured + f.key);
    }
}
