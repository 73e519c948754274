//! Runs the chaos mix (`kagi_sim::chaos`) over many seeds with every fault on, including wiped
//! and rolled-back databases, and prints seeds per second and what the runs injected.
//!
//! `cargo run --release -p kagi-sim --example chaos_seeds -- FIRST RUNS [p_wipe p_rollback]`
//! (defaults: 1, 10000, and the rates of `ChaosConfig::default`). Exits non-zero and prints
//! the replay command of every failing seed. Link key grants (`Policy::link_grants`) follow
//! the core's default (on); `KAGI_CHAOS_GRANTS=0` turns them off, `=1` on. Every run checks
//! that no link pad byte is sent with twice.

use std::time::Instant;

use kagi_sim::chaos::{self, ChaosConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (first, runs) = (num(0, 1), num(1, 10_000));
    let mut cfg = ChaosConfig {
        ..ChaosConfig::default()
    };
    // KAGI_CHAOS_GRANTS=0 or 1: the ends of each link grant each other link key, or not.
    match std::env::var("KAGI_CHAOS_GRANTS").as_deref() {
        Ok("0") => cfg.link_grants = false,
        Ok("1") => cfg.link_grants = true,
        _ => {}
    }
    if let Some(p) = args.get(2).and_then(|s| s.parse().ok()) {
        cfg.p_wipe = p;
    }
    if let Some(p) = args.get(3).and_then(|s| s.parse().ok()) {
        cfg.p_rollback = p;
    }
    std::panic::set_hook(Box::new(|_| {}));
    let t = Instant::now();
    let mut failed = Vec::new();
    let mut total = chaos::ChaosReport::default();
    for seed in first..first + runs {
        match std::panic::catch_unwind(|| chaos::run(seed, &cfg)) {
            Ok(r) => total.add(&r),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("FAIL {why}\n  replay: {}", chaos::replay_hint(seed));
                failed.push(seed);
            }
        }
        let done = seed - first + 1;
        if done % 500 == 0 {
            eprintln!(
                "{done} seeds, {} failed, {:.2} seeds/s",
                failed.len(),
                done as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{runs} seeds from {first} in {secs:.0} s ({:.2} seeds/s), {} failed {failed:?}\n{total:?}",
        runs as f64 / secs,
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
