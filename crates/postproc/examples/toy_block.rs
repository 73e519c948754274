//! One toy block through the protocol: `cargo run --release -p kagi-postproc --example toy_block -- pulses eta p_key e_d eve`.
use kagi_keymat::Key;
use kagi_postproc::cascade::CascadeParams;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::protocol::*;
use kagi_postproc::toy::ToyChannel;

fn main() {
    let a: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let pulses = a.first().copied().unwrap_or(4e6) as usize;
    let ch = ToyChannel {
        eta: a.get(1).copied().unwrap_or(0.05),
        p_key: a.get(2).copied().unwrap_or(0.8),
        e_d: a.get(3).copied().unwrap_or(0.02),
        eve: a.get(4).copied().unwrap_or(0.0),
        ..ToyChannel::default()
    };
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
    let t0 = std::time::Instant::now();
    let (ar, br) = ch.generate(pulses, 1);
    let tg = t0.elapsed();
    let k: Vec<u8> = (0..1 << 16)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let mut pa = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
    let mut pb = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
    let mut alice = Alice::new(cfg, 1, ar, [1; 32]).unwrap();
    let mut bob = Bob::new(cfg, 1, br).unwrap();
    let t1 = std::time::Instant::now();
    let (oa, ob) = run_block(&mut alice, &mut bob, &mut pa, &mut pb, &mut PerfectChannel);
    let tp = t1.elapsed();
    match (&oa, &ob) {
        (Outcome::Key { key: ka, .. }, Outcome::Key { key: kb, stats }) => {
            println!("identical={} {stats:?}", ka == kb);
            println!(
                "gen {tg:?} protocol {tp:?}: {:.1} Mb/s sifted",
                stats.sifted_bits as f64 / tp.as_secs_f64() / 1e6
            );
        }
        _ => println!("{oa:?}\n{ob:?}"),
    }
}
