//! Prints the finite-key block-size curve of a photon link: expected secret fraction per block
//! size, and the block `kagi link-sim` would choose.
//!
//! `cargo run --release -p kagi-postproc --example block_plan_curve -- 45`
use kagi_postproc::block_plan::{BlockModel, KNEE_SHARE};
use kagi_postproc::finite_key::DecoySettings;
use kagi_quantum::photon::PhotonParams;

fn main() {
    let km: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(45.0);
    let p = PhotonParams {
        length_km: km,
        p_signal: 0.6,
        p_decoy: 0.25,
        p_z: 0.7,
        ..PhotonParams::default()
    };
    let decoy = DecoySettings {
        mu: [p.link.mu, p.link.nu, 0.0],
        p: [0.6, 0.25, 0.15],
        eps_sec: 1e-10,
        eps_cor: 1e-15,
    };
    let m = BlockModel::for_photon_link(&p, decoy, 1.07, 500 * 128);
    println!(
        "{km} km: sifted/pulse {:.3e}, QBER {:.4}",
        m.sifted_per_pulse(),
        m.qber()
    );
    for e in [1e5, 3e5, 1e6, 2e6, 4e6, 1e7, 2e7, 5e7, 1e8] {
        let e = m.estimate(e as u64);
        println!(
            "  {:>12} sifted  {:>10.3e} pulses  {:>10} secret  {:.4}",
            e.sifted_bits, e.pulses, e.secret_bits, e.fraction
        );
    }
    println!("smallest with key: {:?}", m.smallest_with_key(100_000_000));
    for px in [0.5, 0.55, 0.6, 0.7] {
        for (ps, pd) in [(0.6, 0.25), (0.5, 0.3), (0.7, 0.2), (0.5, 0.35)] {
            let q = PhotonParams {
                p_z: px,
                p_signal: ps,
                p_decoy: pd,
                ..p
            };
            let d = DecoySettings {
                p: [ps, pd, 1.0 - ps - pd],
                ..decoy
            };
            let m = BlockModel::for_photon_link(&q, d, 1.07, 500 * 128);
            let f: Vec<String> = [2e6, 4e6, 1e7, 1e8]
                .iter()
                .map(|&b| {
                    let e = m.estimate(b as u64);
                    format!("{:.4}/{:.2e}p", e.fraction, e.pulses)
                })
                .collect();
            println!(
                "p_x {px} ps {ps} pd {pd}: {f:?} knee {:?}",
                m.choose(100_000_000, 0.8).map(|e| e.sifted_bits)
            );
        }
    }
    for share in [0.5, 0.7, KNEE_SHARE, 0.9] {
        println!("choose {share}: {:?}", m.choose(100_000_000, share));
    }
}
