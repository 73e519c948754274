//! Helpers shared by the simulator's scenario tests.

use std::time::Duration;

use kagi_km::{AppCall, AppReply};
use kagi_sim::Sim;

/// Asks node `at` for two keys from `master` to `slave` once every 100 ms (after waiting up to
/// 100 ms for each answer), `rounds` times; returns how many were served, and how many asked.
pub fn served_rounds(
    sim: &mut Sim,
    at: &str,
    master: &str,
    slave: &str,
    rounds: u32,
) -> (u32, u32) {
    let (mut served, mut asked) = (0, 0);
    for _ in 0..rounds {
        let req = sim.call(
            at,
            AppCall::EncKeys {
                master: master.into(),
                slave: slave.into(),
                number: Some(2),
                size_bits: None,
                additional_slaves: Vec::new(),
                route: None,
            },
        );
        asked += 1;
        if let Some(Ok(AppReply::Keys(_))) = sim
            .run_until_answered(req, Duration::from_millis(100))
            .map(|a| a.reply)
        {
            served += 1;
        }
        sim.run_for(Duration::from_millis(100));
    }
    (served, asked)
}
