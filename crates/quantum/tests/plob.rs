//! Property tests: no repeaterless model beats the PLOB bound; twin-field does at long range.

use kagi_quantum::*;
use proptest::prelude::*;

fn check(m: &dyn LinkModel, l: f64) -> std::result::Result<(), TestCaseError> {
    let p = m.evaluate(l).unwrap();
    prop_assert!(p.rate_per_pulse >= 0.0 && p.rate_per_pulse.is_finite());
    prop_assert!(
        p.rate_per_pulse <= p.plob_per_use,
        "{} at {l} km: rate {} > PLOB {}",
        m.name(),
        p.rate_per_pulse,
        p.plob_per_use
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoy_bb84_below_plob(
        l in 0.0f64..400.0,
        alpha in 0.0f64..0.4,
        eta_bob in 0.01f64..1.0,
        y0 in 0.0f64..1e-4,
        e_d in 0.0f64..0.1,
        mu in 0.05f64..1.5,
        nu_frac in 0.0f64..0.9,
        q in 0.1f64..1.0,
        inf in any::<bool>(),
    ) {
        let p = DecoyBb84Params { alpha_db_per_km: alpha, eta_bob, y0, e_d, mu, nu: mu * nu_frac, q, f: 1.0, ..Default::default() };
        let method = if inf { DecoyMethod::Infinite } else { DecoyMethod::VacuumWeak };
        check(&DecoyBb84::new(p, method).unwrap(), l)?;
    }

    #[test]
    fn cv_gg02_below_plob(
        l in 0.0f64..300.0,
        v_a in 0.5f64..1e4,
        xi in 0.0f64..0.1,
        eta_det in 0.1f64..1.0,
        v_el in 0.0f64..0.2,
        beta in 0.8f64..1.0,
        het in any::<bool>(),
    ) {
        let detection = if het { Detection::Heterodyne } else { Detection::Homodyne };
        let p = CvGg02Params { v_a, xi, eta_det, v_el, beta, detection, ..Default::default() };
        check(&CvGg02::new(p).unwrap(), l)?;
    }

    #[test]
    fn finite_bb84_below_plob(
        l in 0.0f64..250.0,
        eta_bob in 0.05f64..1.0,
        log_nx in 5.0f64..14.0,
        p_x in 0.5f64..0.99,
    ) {
        let p = FiniteDecoyBb84Params { eta_bob, n_x: 10f64.powf(log_nx), p_x, optimize: false, ..Default::default() };
        check(&FiniteDecoyBb84::new(p).unwrap(), l)?;
    }
}

#[test]
fn optimised_models_below_plob_on_a_grid() {
    let models: Vec<Box<dyn LinkModel>> = vec![
        Box::new(DecoyBb84::default()),
        Box::new(DecoyBb84::infinite(DecoyBb84Params::default()).unwrap()),
        Box::new(FiniteDecoyBb84::default()),
        Box::new(CvGg02::default()),
    ];
    for m in &models {
        for i in 0..=60 {
            let l = i as f64 * 5.0;
            let p = m.evaluate(l).unwrap();
            assert!(p.rate_per_pulse <= p.plob_per_use, "{} at {l} km", m.name());
        }
    }
}

#[test]
fn twin_field_overtakes_plob_at_long_distance() {
    // Lucamarini et al., Nature 557, 400 (2018) and Wang, Yu, Hu, PRA 98, 062323 (2018):
    // twin-field rates scale as √η and beat the repeaterless bound at long distance.
    let tf = TfSns::default();
    let first_above = (0..=140)
        .map(|i| i as f64 * 5.0)
        .find(|&l| tf.secret_key_rate_per_pulse(l) > tf.plob_per_use(l))
        .expect("TF-SNS never beats PLOB");
    assert!(
        (150.0..=350.0).contains(&first_above),
        "crossing at {first_above} km"
    );
    for l in [first_above + 50.0, first_above + 150.0] {
        assert!(tf.secret_key_rate_per_pulse(l) > tf.plob_per_use(l));
    }
    // Ultra-low-loss fibre (0.16 dB/km) takes TF-SNS past 500 km with a margin over PLOB.
    let ull = TfSns::new(TfSnsParams {
        alpha_db_per_km: 0.16,
        ..Default::default()
    })
    .unwrap();
    assert!(ull.secret_key_rate_per_pulse(500.0) > 10.0 * ull.plob_per_use(500.0));
}

#[test]
fn link_model_is_object_safe_and_send() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let m: Box<dyn LinkModel> = Box::new(DecoyBb84::default());
    assert_send_sync(&m);
    assert!(m.secret_key_rate_bps(45.0) > 1e5);
}

mod photon_props {
    use kagi_quantum::photon::{PhotonParams, PhotonSim};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The same seed gives the same records for any thread count and any run length
        /// (including lengths that are not multiples of the 64-bit words or chunks).
        #[test]
        fn photon_runs_are_reproducible(seed in any::<u64>(), pulses in 1usize..200_000, t1 in 1usize..4, t2 in 1usize..4) {
            let p = PhotonParams { length_km: 0.0, ..Default::default() };
            let a = PhotonSim::new(PhotonParams { threads: t1, ..p }, seed).unwrap().run(pulses);
            let b = PhotonSim::new(PhotonParams { threads: t2, ..p }, seed).unwrap().run(pulses);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.intensity.len(), pulses);
            prop_assert_eq!(a.alice_bit.len(), pulses);
            // Tail bits past the run are zero, and Bob's bits exist only where he detected.
            prop_assert!(a.bob_bit.ones().all(|i| a.bob_detected.get(i)));
            prop_assert_eq!(a.alice_bit.words().len(), pulses.div_ceil(64));
        }
    }
}
