//! Prints the finite-key block-size curve of a photon link with `kagi link-sim`'s defaults:
//! expected secret fraction per block size, and the block `kagi link-sim` chooses.
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
        p_signal: 0.5,
        p_decoy: 0.3,
        p_z: 0.5,
        ..PhotonParams::default()
    };
    let decoy = DecoySettings {
        mu: [p.link.mu, p.link.nu, 0.0],
        p: [0.5, 0.3, 0.2],
        eps_sec: 1e-10,
        eps_cor: 1e-15,
    };
    let m = BlockModel::for_photon_link(&p, decoy, 1.07, 500 * 128);
    println!(
        "{km} km: sifted/pulse {:.3e}, QBER {:.4}",
        m.sifted_per_pulse(),
        m.qber()
    );
    for e in [1e6, 2e6, 3e6, 5e6, 1e7, 3e7, 1e8] {
        let e = m.estimate(e as u64);
        println!(
            "  {:>12} sifted  {:>10.3e} pulses  {:>10} secret  {:.4}",
            e.sifted_bits, e.pulses, e.secret_bits, e.fraction
        );
    }
    println!("smallest with key: {:?}", m.smallest_with_key(100_000_000));
    println!(
        "chosen (share {KNEE_SHARE}): {:?}",
        m.choose(100_000_000, KNEE_SHARE)
    );
}
