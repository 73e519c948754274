//! One toy block at QBER 3 % run repeatedly through the whole protocol (both ends, one
//! process): wall and CPU time per block, sifted Mb/s. For profiling and the PERFORMANCE table.
//! `cargo run --release -p kagi-postproc --example pipeline_repeat -- [reps] [pulses] [e_d]`
use kagi_keymat::Key;
use kagi_postproc::cascade::CascadeParams;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::protocol::*;
use kagi_postproc::toy::ToyChannel;

fn main() {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let reps = args.first().copied().unwrap_or(10.0) as usize;
    let pulses = args.get(1).copied().unwrap_or(2.5e7) as usize;
    let e_d = args.get(2).copied().unwrap_or(0.03);
    let ch = ToyChannel {
        eta: 0.5,
        e_d,
        ..ToyChannel::default()
    };
    let (a, b) = ch.generate(pulses, 3);
    let cfg = ProtocolConfig {
        decoy: DecoySettings {
            mu: ch.mu,
            p: ch.p_mu,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
        },
        reconciliation: Reconciliation::Cascade(CascadeParams::default()),
        threads: 2,
    };
    let k: Vec<u8> = (0..1 << 16)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let (mut best, mut best_cpu, mut total) = (f64::MAX, f64::MAX, 0.0);
    let mut sifted = 0;
    for id in 0..reps as u64 {
        let mut pa = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
        let mut pb = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
        let (ra, rb) = (a.clone(), b.clone());
        let c0 = cpu_seconds();
        let t = std::time::Instant::now();
        let mut alice = Alice::new(cfg, id, ra, [id as u8; 32]).unwrap();
        let mut bob = Bob::new(cfg, id, rb).unwrap();
        let (oa, ob) = run_block(&mut alice, &mut bob, &mut pa, &mut pb, &mut PerfectChannel);
        let s = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c0;
        match (&oa, &ob) {
            (Outcome::Key { key: ka, .. }, Outcome::Key { key: kb, stats }) => {
                assert!(ka == kb, "keys differ");
                sifted = stats.sifted_bits;
                if id == 0 {
                    println!(
                        "detections {} sifted {} f {:.4} messages {} secret {}",
                        stats.detections,
                        stats.sifted_bits,
                        stats.ec_efficiency.unwrap_or(0.0),
                        stats.messages,
                        stats.secret_bits
                    );
                }
            }
            (_, Outcome::Aborted(e)) => println!("aborted: {e}"),
            _ => println!("ends disagree"),
        }
        best = best.min(s);
        best_cpu = best_cpu.min(cpu);
        total += s;
    }
    println!(
        "blocks {reps}: best wall {:.1} ms ({:.1} Mb/s sifted), mean wall {:.1} ms ({:.1} Mb/s), best CPU {:.1} ms",
        best * 1e3,
        sifted as f64 / best / 1e6,
        total / reps as f64 * 1e3,
        sifted as f64 * reps as f64 / total / 1e6,
        best_cpu * 1e3
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
