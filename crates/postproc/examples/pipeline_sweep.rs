//! The whole protocol on toy blocks against QBER: f, messages, leakage, key.
//! `cargo run --release -p kagi-postproc --example pipeline_sweep -- [pulses]`
use kagi_keymat::Key;
use kagi_postproc::cascade::CascadeParams;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::protocol::*;
use kagi_postproc::toy::ToyChannel;

fn main() {
    let pulses: f64 = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.5e7);
    println!("e_d     sifted   qber     f       msgs  auth_bits  leaked   pa_bits  secret   identical  pp_s    Mb/s_sifted");
    for e_d in [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08] {
        let ch = ToyChannel {
            eta: 0.5,
            e_d,
            ..ToyChannel::default()
        };
        let (a, b) = ch.generate(pulses as usize, 7);
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
        let mut pa = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
        let mut pb = AuthKeyPool::new(Key::from_slice(&k)).unwrap();
        let mut alice = Alice::new(cfg, 1, a, [3; 32]).unwrap();
        let mut bob = Bob::new(cfg, 1, b).unwrap();
        let t = std::time::Instant::now();
        let (oa, ob) = run_block(&mut alice, &mut bob, &mut pa, &mut pb, &mut PerfectChannel);
        let s = t.elapsed().as_secs_f64();
        match (&oa, &ob) {
            (Outcome::Key { key: ka, .. }, Outcome::Key { key: kb, stats: st }) => println!(
                "{e_d:<6}  {:<7}  {:.5}  {:.4}  {:<4}  {:<9}  {:<7}  {:<7}  {:<7}  {:<9}  {s:.3}  {:.1}",
                st.sifted_bits,
                st.qber_key.unwrap_or(0.0),
                st.ec_efficiency.unwrap_or(0.0),
                st.messages,
                st.auth_key_bits,
                st.leaked_ec_bits,
                st.pa_output_bits,
                st.secret_bits,
                ka == kb,
                st.sifted_bits as f64 / s / 1e6
            ),
            (_, Outcome::Aborted(e)) => println!("{e_d:<6}  aborted: {e}  ({s:.3} s)"),
            _ => println!("{e_d:<6}  ends disagree"),
        }
    }
}
