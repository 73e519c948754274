//! Throughput of the photon-level decoy-BB84 simulator.
//!
//! `cargo run --release -p kagi-quantum --example photon_bench -- [pulses] [threads]`
//! (defaults: 2^28 pulses, all cores). Prints pulses per second for a few runs.

use kagi_quantum::photon::{PhotonParams, PhotonSim};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let pulses: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1 << 28);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let params = PhotonParams {
        length_km: 50.0,
        threads,
        ..Default::default()
    };
    let mut sim = PhotonSim::new(params, 2024).expect("valid parameters");
    // Warm-up (page faults, thread start).
    let _ = sim.run(1 << 20);
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let d = sim.run(pulses);
        let s = t.elapsed().as_secs_f64();
        let rate = pulses as f64 / s;
        best = best.max(rate);
        println!(
            "{pulses} pulses in {s:.3} s: {:.3e} pulses/s ({} detections)",
            rate,
            d.bob_detected.count_ones()
        );
    }
    println!("best: {best:.3e} pulses/s (threads = {threads}, 0 = all cores)");
}
