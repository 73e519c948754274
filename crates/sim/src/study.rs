//! `kagi sim`: a planning study of a topology under virtual time, on the real key managers.
//!
//! Every node runs the real [`kagi_km::KeyManager`] inside [`Sim`]; each link produces key at its
//! technology's long-run mean rate ([`Topology::link_mean_rate_bps`], times a multiplier); a demand
//! model has SAE pairs ask for keys (Poisson arrivals, optionally following a diurnal profile); and
//! nodes fail and come back from a seed. The report says what the applications got: delivered key
//! rate and served share per SAE pair and per node pair, and the availability of the network,
//! with the link key the nodes spent per delivered bit.
//!
//! Link key is materialised (each block's bytes are generated), so a study's cost grows with the
//! key the links produce in the simulated time; see `docs/PERFORMANCE.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use kagi_control::Topology;
use kagi_km::{AppCall, AppReply, Policy, Refusal};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::net::{Faults, LinkSupply, Sim};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Simulated time, hours.
    pub hours: f64,
    /// SAEs per node; 0 keeps the topology's own SAEs.
    pub saes_per_node: usize,
    /// Mean requests per hour of each SAE pair (each SAE is master of one pair).
    pub requests_per_hour: f64,
    /// Keys per request.
    pub keys_per_request: u32,
    /// Bits per key.
    pub key_bits: u32,
    /// Multiplies every link's modelled rate (the demo networks use 4).
    pub rate_multiplier: f64,
    /// Demand follows a day: 0.5× at 04:00, 1.5× at 16:00, mean 1×.
    pub diurnal: bool,
    /// Mean time between failures of each node, hours (`None`: nodes never fail).
    pub node_mtbf_hours: Option<f64>,
    /// How long a failed node stays down, minutes.
    pub repair_minutes: f64,
    /// Seed of the demand, the failures and the network.
    pub seed: u64,
    /// Node-disjoint paths per relay (1: single-path relay, the core's default).
    pub paths: u8,
    /// Shares that rebuild a key (`1 ≤ threshold ≤ paths`).
    pub threshold: u8,
}

impl Default for StudyOptions {
    fn default() -> Self {
        Self {
            hours: 1.0,
            saes_per_node: 4,
            requests_per_hour: 60.0,
            keys_per_request: 1,
            key_bits: 256,
            rate_multiplier: 1.0,
            diurnal: false,
            node_mtbf_hours: None,
            repair_minutes: 10.0,
            seed: 1,
            paths: 1,
            threshold: 1,
        }
    }
}

/// Why a study could not run.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// Options out of range.
    #[error("invalid study options: {0}")]
    Options(String),
    /// The topology cannot carry a demand.
    #[error("topology: {0}")]
    Topology(String),
}

/// What one SAE pair got.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    /// Master SAE.
    pub a: String,
    /// Slave SAE.
    pub b: String,
    /// Node of the master.
    pub a_node: String,
    /// Node of the slave.
    pub b_node: String,
    /// Requests made.
    pub requests: u64,
    /// Requests answered with keys.
    pub served: u64,
    /// Key delivered, bit/s over the simulated time.
    pub delivered_bps: f64,
    /// Share of requests served.
    pub served_fraction: f64,
}

/// What one node pair got (all its SAE pairs, both directions).
#[derive(Debug, Clone, Serialize)]
pub struct NodePairReport {
    /// One node.
    pub a: String,
    /// The other.
    pub b: String,
    /// Requests made.
    pub requests: u64,
    /// Requests served.
    pub served: u64,
    /// Key delivered, bit/s.
    pub delivered_bps: f64,
    /// Share of requests served.
    pub served_fraction: f64,
}

/// What one link produced and what its ends spent.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Modelled rate used (after the multiplier), bit/s.
    pub rate_bps: f64,
}

/// The study's answer.
#[derive(Debug, Clone, Serialize)]
pub struct StudyReport {
    /// Simulated hours.
    pub hours: f64,
    /// Per SAE pair.
    pub pairs: Vec<PairReport>,
    /// Per node pair.
    pub node_pairs: Vec<NodePairReport>,
    /// Per link.
    pub links: Vec<LinkReport>,
    /// Share of all requests served.
    pub availability: f64,
    /// Requests made in all.
    pub requests: u64,
    /// Requests refused for lack of key (ETSI 014 503), node down included.
    pub refused_unavailable: u64,
    /// Requests refused as bad or unauthorised (400/401): a demand model error if not 0.
    pub refused_other: u64,
    /// Requests with no answer by the end.
    pub unanswered: u64,
    /// Key delivered to masters, bits.
    pub delivered_bits: u64,
    /// Link key the nodes counted as spent (OTP and authentication), bits, from the nodes'
    /// counters (a node that restarts starts its counters again).
    pub link_key_spent_bits: u64,
    /// Link key spent per delivered bit.
    pub key_spent_per_delivered_bit: f64,
    /// Node failures injected.
    pub node_failures: u64,
    /// Relays started, from the nodes' counters.
    pub relays_started: u64,
    /// Relays abandoned (timed out or aborted on their path), from the nodes' counters.
    pub relays_abandoned: u64,
}

/// One thing that happens at a virtual time.
enum Happening {
    Request,
    Down(String),
    Up(String),
}

/// Runs the study.
pub fn study(topo: &Topology, opt: &StudyOptions) -> Result<StudyReport, StudyError> {
    check(opt)?;
    let mut topo = topo.clone();
    if opt.saes_per_node > 0 {
        for n in &mut topo.nodes {
            n.saes = (0..opt.saes_per_node)
                .map(|i| format!("sae-{}-{i}", n.id))
                .collect();
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(opt.seed ^ 0x5717_d1e5);
    let pairs = demand_pairs(&topo, &mut rng)?;

    let supply = LinkSupply::default();
    // Each block carries both directions' key: the link's whole rate.
    let block_bits = supply.block_bytes as f64 * 8.0;
    let rates: Vec<f64> = topo
        .links
        .iter()
        .map(|l| topo.link_mean_rate_bps(l).max(0.0) * opt.rate_multiplier)
        .collect();
    let intervals = rates
        .iter()
        .map(|r| {
            // A link without key still ticks once a simulated year, so the queue stays small.
            let secs = if *r > 0.0 { block_bits / r } else { 3.15e7 };
            Duration::from_secs_f64(secs.min(3.15e7))
        })
        .collect();
    let faults = Faults {
        latency: (Duration::from_millis(1), Duration::from_millis(5)),
        ..Faults::default()
    };
    let mut policy = Policy::default();
    policy.routing.paths = opt.paths;
    policy.routing.threshold = opt.threshold;
    let mut sim = Sim::new(topo.clone(), opt.seed, faults, supply, policy);
    sim.set_link_intervals(intervals);

    let start = sim.now();
    let span = Duration::from_secs_f64(opt.hours * 3600.0);
    let mut agenda: BTreeMap<(Duration, u64), Happening> = BTreeMap::new();
    let mut seq = 0u64;
    let mut add = |agenda: &mut BTreeMap<_, _>, at: Duration, h: Happening| {
        seq += 1;
        agenda.insert((at, seq), h);
    };
    // Arrivals of all pairs merged: one Poisson stream at the peak rate, thinned by the profile.
    let total_per_s = opt.requests_per_hour / 3600.0 * pairs.len() as f64;
    let peak = if opt.diurnal { 1.5 } else { 1.0 };
    if total_per_s > 0.0 {
        let mut t = 0.0;
        loop {
            t += exp(&mut rng, total_per_s * peak);
            if t >= span.as_secs_f64() {
                break;
            }
            if rng.gen::<f64>() * peak <= profile(opt.diurnal, t) {
                add(&mut agenda, Duration::from_secs_f64(t), Happening::Request);
            }
        }
    }
    let mut node_failures = 0;
    if let Some(mtbf) = opt.node_mtbf_hours {
        for n in &topo.nodes {
            let mut t = 0.0;
            loop {
                t += exp(&mut rng, 1.0 / (mtbf * 3600.0));
                if t >= span.as_secs_f64() {
                    break;
                }
                node_failures += 1;
                add(
                    &mut agenda,
                    Duration::from_secs_f64(t),
                    Happening::Down(n.id.clone()),
                );
                t += opt.repair_minutes * 60.0;
                add(
                    &mut agenda,
                    Duration::from_secs_f64(t),
                    Happening::Up(n.id.clone()),
                );
            }
        }
    }

    let mut tally = vec![(0u64, 0u64, 0u64); pairs.len()];
    let (mut unavailable, mut other) = (0u64, 0u64);
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut settle =
        |sim: &mut Sim, open: &mut BTreeMap<u64, usize>, tally: &mut [(u64, u64, u64)]| {
            open.retain(|req, pair| match sim.answer(*req) {
                None => true,
                Some(a) => {
                    match a.reply {
                        Ok(AppReply::Keys(keys)) => {
                            tally[*pair].1 += 1;
                            tally[*pair].2 += keys.len() as u64 * u64::from(opt.key_bits);
                        }
                        Ok(AppReply::Status(_)) => other += 1,
                        Err(Refusal::Unavailable(_)) => unavailable += 1,
                        Err(_) => other += 1,
                    }
                    false
                }
            });
        };
    for ((at, _), h) in agenda {
        let target = start + at;
        if target > sim.now() {
            sim.run_for(Duration::from_nanos(target.0 - sim.now().0));
        }
        settle(&mut sim, &mut open, &mut tally);
        match h {
            Happening::Request => {
                let i = rng.gen_range(0..pairs.len());
                let (master, slave, node, _) = &pairs[i];
                let req = sim.call(
                    node,
                    AppCall::EncKeys {
                        master: master.clone(),
                        slave: slave.clone(),
                        number: Some(u64::from(opt.keys_per_request)),
                        size_bits: Some(u64::from(opt.key_bits)),
                        additional_slaves: vec![],
                        route: None,
                    },
                );
                tally[i].0 += 1;
                open.insert(req, i);
            }
            Happening::Down(n) => sim.crash(&n),
            Happening::Up(n) => {
                if !sim.is_up(&n) {
                    sim.restart(&n);
                }
            }
        }
    }
    let end = start + span;
    if end > sim.now() {
        sim.run_for(Duration::from_nanos(end.0 - sim.now().0));
    }
    // Requests made just before the end get a moment to be answered.
    sim.run_for(Duration::from_secs(10));
    settle(&mut sim, &mut open, &mut tally);
    let unanswered = open.len() as u64;

    let secs = span.as_secs_f64();
    let pair_reports: Vec<PairReport> = pairs
        .iter()
        .zip(&tally)
        .map(|((a, b, an, bn), &(req, served, bits))| PairReport {
            a: a.clone(),
            b: b.clone(),
            a_node: an.clone(),
            b_node: bn.clone(),
            requests: req,
            served,
            delivered_bps: bits as f64 / secs,
            served_fraction: fraction(served, req),
        })
        .collect();
    let mut by_nodes: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    for (p, &(req, served, bits)) in pairs.iter().zip(&tally) {
        let key = if p.2 <= p.3 {
            (p.2.clone(), p.3.clone())
        } else {
            (p.3.clone(), p.2.clone())
        };
        let e = by_nodes.entry(key).or_default();
        e.0 += req;
        e.1 += served;
        e.2 += bits;
    }
    let node_pairs = by_nodes
        .into_iter()
        .map(|((a, b), (req, served, bits))| NodePairReport {
            a,
            b,
            requests: req,
            served,
            delivered_bps: bits as f64 / secs,
            served_fraction: fraction(served, req),
        })
        .collect();
    let requests: u64 = tally.iter().map(|t| t.0).sum();
    let served: u64 = tally.iter().map(|t| t.1).sum();
    let delivered_bits: u64 = tally.iter().map(|t| t.2).sum();
    let stats: Vec<_> = topo
        .nodes
        .iter()
        .filter_map(|n| sim.node(&n.id))
        .map(|km| km.stats())
        .collect();
    let link_key_spent_bits: u64 = stats.iter().map(|s| s.link_key_spent * 8).sum();
    Ok(StudyReport {
        hours: opt.hours,
        pairs: pair_reports,
        node_pairs,
        links: topo
            .links
            .iter()
            .zip(&rates)
            .map(|(l, r)| LinkReport {
                a: l.a.clone(),
                b: l.b.clone(),
                rate_bps: *r,
            })
            .collect(),
        availability: fraction(served, requests),
        requests,
        refused_unavailable: unavailable,
        refused_other: other,
        unanswered,
        delivered_bits,
        link_key_spent_bits,
        key_spent_per_delivered_bit: if delivered_bits > 0 {
            link_key_spent_bits as f64 / delivered_bits as f64
        } else {
            0.0
        },
        node_failures,
        relays_started: stats.iter().map(|s| s.relays_started).sum(),
        relays_abandoned: stats.iter().map(|s| s.relays_abandoned).sum(),
    })
}

fn check(opt: &StudyOptions) -> Result<(), StudyError> {
    let bad = |m: &str| Err(StudyError::Options(m.into()));
    if !(opt.hours.is_finite() && opt.hours > 0.0 && opt.hours <= 24.0 * 365.0) {
        return bad("hours must be in (0, 8760]");
    }
    if !(opt.requests_per_hour.is_finite() && opt.requests_per_hour >= 0.0) {
        return bad("requests per hour must be finite and not negative");
    }
    if !(opt.rate_multiplier.is_finite() && opt.rate_multiplier > 0.0) {
        return bad("the rate multiplier must be finite and positive");
    }
    if opt.keys_per_request == 0 || opt.key_bits == 0 || !opt.key_bits.is_multiple_of(8) {
        return bad("keys per request must be at least 1 and key bits a positive multiple of 8");
    }
    if opt.saes_per_node > 10_000 {
        return bad("at most 10,000 SAEs per node");
    }
    if let Some(m) = opt.node_mtbf_hours {
        if !(m.is_finite() && m > 0.0) {
            return bad("the node MTBF must be finite and positive");
        }
    }
    if !(opt.repair_minutes.is_finite() && opt.repair_minutes >= 0.0) {
        return bad("repair minutes must be finite and not negative");
    }
    if opt.paths == 0 || opt.paths > kagi_km::config::MAX_PATHS {
        return bad("paths must be between 1 and 8");
    }
    if opt.threshold == 0 || opt.threshold > opt.paths {
        return bad("threshold must be between 1 and paths");
    }
    Ok(())
}

/// Each SAE is the master of one pair, with a slave SAE at another node picked at random.
/// Returns `(master, slave, master's node, slave's node)`.
fn demand_pairs(
    topo: &Topology,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<(String, String, String, String)>, StudyError> {
    let all: Vec<(&str, &str)> = topo
        .nodes
        .iter()
        .flat_map(|n| n.saes.iter().map(move |s| (s.as_str(), n.id.as_str())))
        .collect();
    let mut pairs = Vec::new();
    for &(sae, node) in &all {
        let others: Vec<&(&str, &str)> = all.iter().filter(|(_, n)| *n != node).collect();
        if others.is_empty() {
            continue;
        }
        let (slave, slave_node) = others[rng.gen_range(0..others.len())];
        pairs.push((
            sae.into(),
            (*slave).into(),
            node.into(),
            (*slave_node).into(),
        ));
    }
    if pairs.is_empty() {
        return Err(StudyError::Topology(
            "no SAE pair across two nodes: give SAEs per node or a topology with SAEs".into(),
        ));
    }
    Ok(pairs)
}

/// Demand relative to the mean at `t` seconds from the start (a day starting at midnight).
fn profile(diurnal: bool, t: f64) -> f64 {
    if !diurnal {
        return 1.0;
    }
    let hour = (t / 3600.0) % 24.0;
    // Peak at 16:00, trough at 04:00.
    1.0 + 0.5 * ((hour - 10.0) / 24.0 * std::f64::consts::TAU).sin()
}

fn exp(rng: &mut ChaCha20Rng, rate: f64) -> f64 {
    -(1.0 - rng.gen::<f64>()).ln() / rate
}

fn fraction(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diurnal_profile_has_mean_one_and_its_extremes_at_4_and_16() {
        let n = 24 * 60;
        let mean: f64 = (0..n).map(|m| profile(true, m as f64 * 60.0)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        assert!((profile(true, 16.0 * 3600.0) - 1.5).abs() < 1e-9);
        assert!((profile(true, 4.0 * 3600.0) - 0.5).abs() < 1e-9);
        assert_eq!(profile(false, 16.0 * 3600.0), 1.0);
    }

    #[test]
    fn bad_options_are_refused() {
        let t = kagi_control::builtin::tokyo();
        for o in [
            StudyOptions {
                hours: 0.0,
                ..Default::default()
            },
            StudyOptions {
                key_bits: 12,
                ..Default::default()
            },
            StudyOptions {
                rate_multiplier: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(matches!(study(&t, &o), Err(StudyError::Options(_))));
        }
    }
}
