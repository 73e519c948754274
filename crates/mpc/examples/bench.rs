//! Throughput of the three-party engine: three parties in one process (one thread each) on
//! in-process channels, semi-honest and malicious.
//!
//! ```text
//! cargo run --release -p kagi-mpc --example bench -- [repeats] [semi|mal]
//! ```
//!
//! Prints, per workload and mode, the best and median over `repeats` runs (default 5) of:
//! AND gates/s (independent gates, bit-sliced), 64-bit multiplications/s, and 64-bit
//! comparisons/s (sign bit of x − c: ~250 ANDs in 8 rounds per row). On a shared machine the
//! wall time is inflated by other work, so each line also gives the rate per CPU second of
//! the whole process (user + system, from `/proc/self/stat`) times 2 — what two cores of
//! its own would do.

use std::sync::Barrier;
use std::time::Instant;

use kagi_mpc::circuits::less_than;
use kagi_mpc::sim::run3;
use kagi_mpc::{Security, Z2, Z64};

fn time3(
    sec: Security,
    work: &(dyn Fn(
        &mut kagi_mpc::Party<kagi_mpc::transport::local::LocalTransport>,
    ) -> kagi_mpc::Result<()>
          + Sync),
    setup_barrier: &Barrier,
) -> f64 {
    let out = run3(sec, |p| {
        setup_barrier.wait();
        let t = Instant::now();
        work(p)?;
        p.verify()?;
        p.check()?;
        Ok(t.elapsed().as_secs_f64())
    });
    out.iter()
        .map(|r| *r.as_ref().expect("bench run"))
        .fold(0.0, f64::max)
}

/// CPU seconds (user + system) this process has used so far (Linux; 0 elsewhere).
fn cpu_secs() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses): utime, stime are 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    (v[0], v[v.len() / 2])
}

/// Work per second on two dedicated cores, from the CPU time the work took (includes the
/// parties' setup, so it slightly understates).
fn per_cpu(work: f64, cpu: f64) -> f64 {
    if cpu > 0.0 {
        work / (cpu / 2.0)
    } else {
        0.0
    }
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let only = std::env::args().nth(2).unwrap_or_default();
    println!("three parties, one process, in-process channels; {repeats} runs each; rate = work / slowest party's time");
    for sec in [Security::SemiHonest, Security::Malicious] {
        if (only == "semi" && sec != Security::SemiHonest)
            || (only == "mal" && sec != Security::Malicious)
        {
            continue;
        }
        // AND gates: `rounds` layers of W words (64·W gates each).
        let (w, rounds) = match sec {
            Security::SemiHonest => (1usize << 17, 32usize),
            Security::Malicious => (1usize << 17, 4usize),
        };
        let gates = (64 * w * rounds) as f64;
        let mut rates = Vec::new();
        let cpu0 = cpu_secs();
        for _ in 0..repeats {
            let b = Barrier::new(3);
            let t = time3(
                sec,
                &|p| {
                    let x = p.random::<Z2>(w);
                    let y = p.random::<Z2>(w);
                    let mut z = x.clone();
                    for _ in 0..rounds {
                        z = p.mul(&z, &y)?;
                    }
                    std::hint::black_box(&z);
                    Ok(())
                },
                &b,
            );
            rates.push(gates / t);
        }
        let rates: Vec<f64> = rates.iter().map(|r| -r).collect();
        let cpu = cpu_secs() - cpu0;
        let (best, med) = stats(rates);
        println!("{sec:?}: AND gates/s      best {:>8.3} G  median {:>8.3} G  per 2 CPU-s {:>8.3} G  ({} gates per run, {rounds} rounds)", -best / 1e9, -med / 1e9, per_cpu(gates * repeats as f64, cpu) / 1e9, gates);

        let (n, rounds) = match sec {
            Security::SemiHonest => (1usize << 20, 16usize),
            Security::Malicious => (1usize << 20, 2usize),
        };
        let mults = (n * rounds) as f64;
        let mut rates = Vec::new();
        let cpu0 = cpu_secs();
        for _ in 0..repeats {
            let b = Barrier::new(3);
            let t = time3(
                sec,
                &|p| {
                    let x = p.random::<Z64>(n);
                    let mut z = p.random::<Z64>(n);
                    for _ in 0..rounds {
                        z = p.mul(&z, &x)?;
                    }
                    std::hint::black_box(&z);
                    Ok(())
                },
                &b,
            );
            rates.push(-(mults / t));
        }
        let cpu = cpu_secs() - cpu0;
        let (best, med) = stats(rates);
        println!(
            "{sec:?}: 64-bit mults/s   best {:>8.2} M  median {:>8.2} M  per 2 CPU-s {:>8.2} M  ({} mults per run)",
            -best / 1e6,
            -med / 1e6,
            per_cpu(mults * repeats as f64, cpu) / 1e6,
            mults
        );

        let n = 1usize << 16;
        let mut rates = Vec::new();
        let cpu0 = cpu_secs();
        for _ in 0..repeats {
            let b = Barrier::new(3);
            let t = time3(
                sec,
                &|p| {
                    let x = p.random::<Z64>(n);
                    let c = vec![12345u64; n];
                    let r = less_than(p, &x, &c)?;
                    std::hint::black_box(&r);
                    Ok(())
                },
                &b,
            );
            rates.push(-(n as f64 / t));
        }
        let cpu = cpu_secs() - cpu0;
        let (best, med) = stats(rates);
        println!(
            "{sec:?}: comparisons/s    best {:>8.2} M  median {:>8.2} M  per 2 CPU-s {:>8.2} M  ({n} rows per run)",
            -best / 1e6,
            -med / 1e6,
            per_cpu(n as f64 * repeats as f64, cpu) / 1e6
        );
    }
}
