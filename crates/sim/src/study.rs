//! `kagi sim`: a planning study of a topology under virtual time, on the real key managers.
//!
//! Every node runs the real [`kagi_km::KeyManager`] inside [`Sim`]; each link produces key at its
//! technology's long-run mean rate ([`Topology::link_mean_rate_bps`], times a multiplier); a demand
//! model has SAE pairs ask for keys (Poisson or periodic arrivals, optionally following a diurnal profile); and
//! nodes fail and come back from a seed. The report says what the applications got: delivered key
//! rate and served share per SAE pair and per node pair, and the availability of the network,
//! with the link key the nodes spent per delivered bit.
//!
//! Links with `source = "photon"` run at photon level instead: the photon link's state machine at
//! both ends, the photon simulator's records, the full post-processing protocol (see
//! [`Sim::run_photon_links`]); the report counts their blocks and checks their keys.
//!
//! Link key is materialised (each block's bytes are generated), so a study's cost grows with the
//! key the links produce in the simulated time; see `docs/PERFORMANCE.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use kagi_control::Topology;
use kagi_km::{AppCall, AppReply, PeerScope, Policy, Refusal};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

pub use crate::arrivals::Arrivals;
use crate::arrivals::{exp, periodic, PoissonTimes};
use kagi_km::fixed_hash::FixedMap;

use crate::net::{Faults, LinkSupply, PhotonLinkStats, Sim};

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
    /// How each SAE pair's requests are spread in time: a Poisson stream, or one request per
    /// period at a random phase (devices that rekey on a timer).
    pub arrivals: Arrivals,
    /// Mean time between failures of each node, hours (`None`: nodes never fail).
    pub node_mtbf_hours: Option<f64>,
    /// How long a failed node stays down, minutes.
    pub repair_minutes: f64,
    /// How nodes fail: crash (peers see the connection drop at once) or freeze (as SIGSTOP:
    /// connections stay open, only heartbeats show the silence).
    pub failure_mode: FailureMode,
    /// Only nodes without SAEs fail: the ends of every demand stay up, so what is measured is
    /// how relays get past failed intermediate nodes.
    pub fail_transit_only: bool,
    /// Nodes send heartbeats and route around silent nodes (the core's liveness policy);
    /// `false` switches it off, to measure what it brings.
    pub heartbeats: bool,
    /// Which nodes each node sends heartbeats to and watches for silence: its neighbours only
    /// (`Neighbours`, the default, as a real node's `[peers] connect`: a far node's silence is
    /// learnt from its neighbours' link-state adverts) or every node (`All`, `connect =
    /// "all"`).
    pub peers: PeerScope,
    /// Nodes advertise link state and route by key availability (the core's link-state
    /// policy); `false` routes by the topology's static costs, to measure what it brings.
    pub link_state: bool,
    /// Adjacent nodes give each other unspent link key under one-way demand (the core's link
    /// grant policy, [`Policy::link_grants`]); `false` keeps the fixed half-and-half split, to
    /// measure what grants bring.
    pub link_grants: bool,
    /// Seed of the demand, the failures and the network.
    pub seed: u64,
    /// Node-disjoint paths per relay (1: single-path relay, the core's default).
    pub paths: u8,
    /// Shares that rebuild a key (`1 ≤ threshold ≤ paths`).
    pub threshold: u8,
    /// Simulated minutes before the measured hours: demand runs, nothing is counted (pools
    /// warm up).
    pub warmup_minutes: f64,
    /// Add one SAE at each end of the farthest node pair (most hops) that asks for key as fast
    /// as its node has it, both ways, and report what the pair got against the bottleneck of
    /// its best route.
    pub far_pair_flood: bool,
    /// Link blocks reach the nodes as lazy keys, produced only where a node reads them
    /// ([`Sim::lazy_link_key`]; the default): the same run as with bytes, minus the time and
    /// memory of producing key nobody reads.
    pub lazy_link_key: bool,
    /// The safety oracle checks every key answered ([`Sim::check_keys`]; the default). It
    /// holds every key served until the run ends: `false` for long planning runs.
    pub check_keys: bool,
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
            arrivals: Arrivals::Poisson,
            node_mtbf_hours: None,
            repair_minutes: 10.0,
            failure_mode: FailureMode::Crash,
            fail_transit_only: false,
            heartbeats: true,
            peers: Policy::default().peers,
            link_state: true,
            link_grants: Policy::default().link_grants.is_some(),
            seed: 1,
            paths: 1,
            threshold: 1,
            warmup_minutes: 0.0,
            far_pair_flood: false,
            lazy_link_key: true,
            check_keys: true,
        }
    }
}

/// How a node fails in a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// The process dies: its peers' connections drop and they route around it at once; it
    /// restarts from its store after the repair time.
    #[default]
    Crash,
    /// The process stops (SIGSTOP, a hang): connections stay open and peers are told nothing;
    /// it resumes after the repair time.
    Freeze,
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
    /// Share of the requests made while both end nodes were up that were served: what paths
    /// through the rest of the network decide (a request at a down node fails on any path).
    pub availability_ends_up: f64,
    /// Requests made while both end nodes were up.
    pub requests_ends_up: u64,
    /// Requests refused for lack of key (ETSI 014 503), node down included.
    pub refused_unavailable: u64,
    /// Requests refused as bad or unauthorised (400/401): a demand model error if not 0.
    pub refused_other: u64,
    /// Requests with no answer by the end.
    pub unanswered: u64,
    /// Keys the slaves fetched (`dec_keys` at the slave's node, once the master has its keys;
    /// counted after the warm-up).
    pub slave_keys_fetched: u64,
    /// Keys a slave asked for and did not get (its node was down, or the key was gone): a
    /// master holds a key its slave cannot read.
    pub slave_keys_missed: u64,
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
    /// Of those, relays a node on their path aborted (the rest timed out or lost a node).
    pub relays_aborted: u64,
    /// The flooding farthest pair, when asked for.
    pub far_pair: Option<FarPairReport>,
    /// Per photon-level link (`source = "photon"`): blocks delivered and failed, key bits, and
    /// the checks (keys identical at both ends, no block delivered twice).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub photon_links: Vec<PhotonLinkStats>,
    /// What the photon link checks found wrong (empty in a correct run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub photon_violations: Vec<String>,
    /// The measured time sampled at a fixed interval (for plots; not in the JSON report).
    #[serde(skip)]
    pub series: Series,
}

/// The measured time of a study, sampled at a fixed simulated interval: what `kagi sim
/// --svg-series` draws. Its memory is bounded: at most [`MAX_SAMPLES`] samples plus the last,
/// however long the run.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Simulated seconds between samples (a round step: 1 s, 2 s, 5 s, … 1 h, …).
    pub interval_s: f64,
    /// The node pairs followed one by one: those with the most SAE pairs (ties: by name),
    /// each as `(a, b)` with `a < b`.
    pub node_pairs: Vec<(String, String)>,
    /// Samples in time order. The first is taken when the measured time begins, the last after
    /// the run's final answers are in, so its counts are the report's totals.
    pub samples: Vec<Sample>,
}

/// One sample of a [`Series`]: counts since the measured time began (cumulative, as the report
/// counts them) and the key the nodes held at that moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Simulated seconds since the measured time began (the end of the warm-up).
    pub t_s: f64,
    /// Requests made.
    pub requests: u64,
    /// Requests served.
    pub served: u64,
    /// Requests answered, served or refused (a request is counted as made when made and as
    /// answered when its answer came).
    pub answered: u64,
    /// Key delivered to masters, bits.
    pub delivered_bits: u64,
    /// Per followed node pair (as [`Series::node_pairs`]): requests, served, delivered bits,
    /// answered.
    pub pairs: Vec<(u64, u64, u64, u64)>,
    /// End-to-end key ready in the pools of the nodes up, bytes.
    pub pool_bytes: u64,
    /// Link key held by the nodes up, bytes (both halves of every link).
    pub link_bytes: u64,
}

/// Most samples in a [`Series`] (the interval grows with the simulated time to stay under).
pub const MAX_SAMPLES: usize = 720;
/// Node pairs a [`Series`] follows one by one.
pub const SERIES_NODE_PAIRS: usize = 3;

/// The slave learns the key IDs from its master and fetches them at once (`dec_keys` at its
/// node), so its node holds each key only until then. Returns the request and the keys asked.
fn slave_fetch(
    sim: &mut Sim,
    slave_node: &str,
    slave: &str,
    master: &str,
    keys: &[kagi_km::DeliveredKey],
) -> (u64, u64) {
    let key_ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let n = key_ids.len() as u64;
    let req = sim.call(
        slave_node,
        AppCall::DecKeys {
            slave: slave.into(),
            master: master.into(),
            key_ids,
        },
    );
    (req, n)
}

/// The smallest round step that cuts `secs` into at most [`MAX_SAMPLES`] intervals.
fn series_interval(secs: f64) -> f64 {
    const STEPS: [f64; 16] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        21600.0, 86400.0,
    ];
    STEPS
        .into_iter()
        .find(|s| secs / s <= MAX_SAMPLES as f64)
        .unwrap_or(secs / MAX_SAMPLES as f64)
}

/// The node pairs (unordered, `a < b`) with the most SAE pairs, most first, ties by name;
/// and for each SAE pair, the index of its node pair among them.
fn followed_pairs(
    pairs: &[(String, String, String, String)],
) -> (Vec<(String, String)>, Vec<Option<usize>>) {
    let key = |p: &(String, String, String, String)| {
        if p.2 <= p.3 {
            (p.2.clone(), p.3.clone())
        } else {
            (p.3.clone(), p.2.clone())
        }
    };
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for p in pairs {
        *count.entry(key(p)).or_default() += 1;
    }
    let mut ranked: Vec<((String, String), usize)> = count.into_iter().collect();
    // Stable: equal counts stay in name order.
    ranked.sort_by_key(|x| std::cmp::Reverse(x.1));
    let chosen: Vec<(String, String)> = ranked
        .into_iter()
        .take(SERIES_NODE_PAIRS)
        .map(|(k, _)| k)
        .collect();
    let index = pairs
        .iter()
        .map(|p| {
            let k = key(p);
            chosen.iter().position(|c| *c == k)
        })
        .collect();
    (chosen, index)
}

/// A sample of the tallies and of the key the nodes hold now.
fn sample(
    sim: &Sim,
    topo: &Topology,
    t_s: f64,
    tally: &[(u64, u64, u64)],
    answered: &[u64],
    followed: &[Option<usize>],
    n_followed: usize,
) -> Sample {
    let mut s = Sample {
        t_s,
        pairs: vec![(0, 0, 0, 0); n_followed],
        ..Sample::default()
    };
    for ((t, a), f) in tally.iter().zip(answered).zip(followed) {
        s.requests += t.0;
        s.served += t.1;
        s.delivered_bits += t.2;
        s.answered += a;
        if let Some(i) = f {
            let p = &mut s.pairs[*i];
            (p.0, p.1, p.2, p.3) = (p.0 + t.0, p.1 + t.1, p.2 + t.2, p.3 + a);
        }
    }
    for km in topo.nodes.iter().filter_map(|n| sim.node(&n.id)) {
        let st = km.stats();
        s.pool_bytes += st.pool_bytes;
        s.link_bytes += st.link_bytes;
    }
    s
}

/// What the farthest node pair got while asking for key as fast as it could, both ways.
#[derive(Debug, Clone, Serialize)]
pub struct FarPairReport {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Hops of the shortest route.
    pub hops: usize,
    /// Key delivered a→b plus b→a, bit/s over the measured time.
    pub delivered_bps: f64,
    /// Key relayed to the pair's pools, bit/s: what was delivered less what the pools held at
    /// the end of the warm-up and no longer hold (the steady rate; the pools fill up during the
    /// warm-up).
    pub relayed_bps: f64,
    /// The best route's bottleneck: the largest, over all routes between the two, of the
    /// route's weakest link rate (bit/s, both directions). Each direction may spend half.
    pub bottleneck_bps: f64,
    /// `relayed_bps / bottleneck_bps`.
    pub fraction_of_bottleneck: f64,
}

/// One thing that happens at a virtual time.
enum Happening {
    /// A request of this SAE pair, or (`None`) of a pair drawn when it is due.
    Request(Option<usize>),
    Warm,
    FloodTick,
    /// Take a sample for the [`Series`].
    Sample,
    Down(String),
    Up(String),
}

/// Runs the study.
pub fn study(topo: &Topology, opt: &StudyOptions) -> Result<StudyReport, StudyError> {
    check(opt)?;
    let mut topo = with_saes(topo, opt.saes_per_node);
    let mut rng = demand_rng(opt.seed);
    let pairs = demand_pairs(&topo, &mut rng)?;
    let far = if opt.far_pair_flood {
        let f = far_pair(&topo)?;
        for (node, sae) in [(&f.a, FAR_A), (&f.b, FAR_B)] {
            if let Some(n) = topo.nodes.iter_mut().find(|n| &n.id == node) {
                n.saes.push(sae.to_string());
            }
        }
        Some(f)
    } else {
        None
    };

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
    if !opt.heartbeats {
        policy.liveness = None;
    }
    if !opt.link_state {
        policy.link_state = None;
    }
    policy.link_grants = opt
        .link_grants
        .then(|| policy.link_grants.unwrap_or_default());
    policy.peers = opt.peers;
    policy.routing.paths = opt.paths;
    policy.routing.threshold = opt.threshold;
    // The key managers read link rates from the topology (for their congestion limits).
    let mut sim_topo = topo.clone();
    sim_topo.rate_multiplier = opt.rate_multiplier;
    let mut sim = Sim::new(sim_topo, opt.seed, faults, supply, policy);
    sim.set_link_intervals(intervals);
    sim.lazy_link_key(opt.lazy_link_key);
    sim.check_keys(opt.check_keys);
    // Without node failures no node stops, so nothing reads a store back.
    sim.keep_stores(opt.node_mtbf_hours.is_some());
    // No study reads the trace hash (determinism is checked on `Sim` runs themselves).
    sim.keep_trace(false);
    // `source = "photon"` links run the photon link's state machines and simulator.
    sim.run_photon_links().map_err(StudyError::Topology)?;

    let start = sim.now();
    let warm = Duration::from_secs_f64(opt.warmup_minutes * 60.0);
    let span = warm + Duration::from_secs_f64(opt.hours * 3600.0);
    let mut agenda: BTreeMap<(Duration, u64), Happening> = BTreeMap::new();
    // Poisson: the arrivals of all pairs merged into one stream at the peak rate, thinned by
    // the profile, each request's pair drawn when it is due. The stream is drawn as the run
    // reaches it (a day of the 100-node mesh is 14 million requests, gigabytes held up
    // front); a first pass only counts them and moves `rng` past their draws, so every later
    // draw and every order is what it was when they were all queued here.
    let total_per_s = opt.requests_per_hour / 3600.0 * pairs.len() as f64;
    let mut poisson: Option<PoissonTimes> = None;
    // Each arrival takes the next `seq`, 1 up, as if queued.
    let mut seq = 0u64;
    if opt.arrivals == Arrivals::Poisson && total_per_s > 0.0 {
        let times = PoissonTimes::new(rng.clone(), total_per_s, opt.diurnal, span.as_secs_f64());
        let mut count = times.clone();
        seq = count.by_ref().count() as u64;
        rng = count.rng;
        poisson = Some(times);
    }
    let mut add = |agenda: &mut BTreeMap<_, _>, at: Duration, h: Happening| {
        seq += 1;
        agenda.insert((at, seq), h);
    };
    if opt.arrivals == Arrivals::Periodic {
        let mut due = periodic(
            &mut rng,
            pairs.len(),
            opt.requests_per_hour,
            span.as_secs_f64(),
            opt.diurnal,
        );
        due.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (t, pair) in due {
            add(
                &mut agenda,
                Duration::from_secs_f64(t),
                Happening::Request(Some(pair)),
            );
        }
    }
    add(&mut agenda, warm, Happening::Warm);
    // Samples: after everything else due at the same time (they only read).
    let interval_s = series_interval((span - warm).as_secs_f64());
    let mut k = 0u32;
    loop {
        let at = warm + Duration::from_secs_f64(interval_s * f64::from(k));
        if at >= span {
            break;
        }
        add(&mut agenda, at, Happening::Sample);
        k += 1;
    }
    if far.is_some() {
        let mut t = Duration::ZERO;
        while t < span {
            add(&mut agenda, t, Happening::FloodTick);
            t += FLOOD_TICK;
        }
    }
    let mut node_failures = 0;
    if let Some(mtbf) = opt.node_mtbf_hours {
        for n in &topo.nodes {
            if opt.fail_transit_only && !n.saes.is_empty() {
                continue;
            }
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
    let (followed_names, followed) = followed_pairs(&pairs);
    let mut samples: Vec<Sample> = Vec::new();
    let (mut unavailable, mut other) = (0u64, 0u64);
    // Requests made while both end nodes were up, and of those served.
    let (mut ends_up, mut ends_up_served) = (0u64, 0u64);
    // Request → (pair, counted: made after the warm-up, both end nodes up when made).
    let mut open: BTreeMap<u64, (usize, bool, bool)> = BTreeMap::new();
    // Counted requests answered (served or refused), per SAE pair: the series' denominator.
    let mut answered = vec![0u64; pairs.len()];
    // Slave fetches in flight: request → (keys asked, counted).
    let mut fetching: FixedMap<u64, (u64, bool)> = FixedMap::default();
    let (mut fetched, mut missed) = (0u64, 0u64);
    let mut settle = |sim: &mut Sim,
                      open: &mut BTreeMap<u64, (usize, bool, bool)>,
                      fetching: &mut FixedMap<u64, (u64, bool)>,
                      tally: &mut [(u64, u64, u64)],
                      answered: &mut [u64]| {
        // Only requests answered since the last call are looked at (walking every request in
        // flight at each arrival was a twentieth of a day's run): fetches first, then the
        // masters' requests in the order they were made, as a walk over both maps would.
        if !sim.has_answers() {
            return;
        }
        let ready = sim.answered_requests();
        for req in &ready {
            let Some((asked, counted)) = fetching.remove(req) else {
                continue;
            };
            let a = sim.answer(*req).expect("listed as answered");
            if counted {
                let got = match a.reply {
                    Ok(AppReply::Keys(keys)) => keys.len() as u64,
                    _ => 0,
                };
                fetched += got;
                missed += asked.saturating_sub(got);
            }
        }
        for req in &ready {
            let Some((pair, counted, up)) = open.remove(req) else {
                continue;
            };
            let a = sim.answer(*req).expect("listed as answered");
            if let Ok(AppReply::Keys(keys)) = &a.reply {
                let (master, slave, _, slave_node) = &pairs[pair];
                let (f, n) = slave_fetch(sim, slave_node, slave, master, keys);
                fetching.insert(f, (n, counted));
            }
            if !counted {
                continue;
            }
            answered[pair] += 1;
            match a.reply {
                Ok(AppReply::Keys(keys)) => {
                    ends_up_served += u64::from(up);
                    tally[pair].1 += 1;
                    tally[pair].2 += keys.len() as u64 * u64::from(opt.key_bits);
                }
                Ok(AppReply::Status(_)) => other += 1,
                Err(Refusal::Unavailable(_)) => unavailable += 1,
                Err(_) => other += 1,
            }
        }
    };
    let mut warm_stats = (0u64, 0u64, 0u64);
    let mut warm_pools = 0u64;
    let mut warmed = warm.is_zero();
    // The far pair's two masters: request in flight, key bits delivered after the warm-up.
    let mut flood: [(Option<u64>, u64); 2] = [(None, 0), (None, 0)];
    // The queued happenings and the Poisson arrivals (the k-th with `seq` k), in `(at, seq)`
    // order.
    let mut queued = agenda.into_iter().peekable();
    let mut arrivals = poisson
        .into_iter()
        .flatten()
        .zip(1u64..)
        .map(|(t, k)| ((Duration::from_secs_f64(t), k), Happening::Request(None)))
        .peekable();
    let happenings = std::iter::from_fn(|| match (queued.peek(), arrivals.peek()) {
        (Some((a, _)), Some((b, _))) if b < a => arrivals.next(),
        (Some(_), _) => queued.next(),
        (None, _) => arrivals.next(),
    });
    for ((at, _), h) in happenings {
        let target = start + at;
        if target > sim.now() {
            sim.run_for(Duration::from_nanos(target.0 - sim.now().0));
        }
        settle(
            &mut sim,
            &mut open,
            &mut fetching,
            &mut tally,
            &mut answered,
        );
        match h {
            Happening::Request(pair) => {
                let i = pair.unwrap_or_else(|| rng.gen_range(0..pairs.len()));
                let (master, slave, node, slave_node) = &pairs[i];
                let up = [node, slave_node]
                    .iter()
                    .all(|n| sim.is_up(n) && !sim.is_frozen(n));
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
                if warmed {
                    tally[i].0 += 1;
                    ends_up += u64::from(up);
                }
                open.insert(req, (i, warmed, up));
            }
            Happening::Warm => {
                warmed = true;
                warm_stats = relay_counts(&sim, &topo);
                warm_pools = far.as_ref().map_or(0, |f| far_pools(&sim, f));
            }
            Happening::FloodTick => {
                let Some(f) = &far else { continue };
                let ends = [(FAR_A, FAR_B, &f.a, &f.b), (FAR_B, FAR_A, &f.b, &f.a)];
                for (d, (master, slave, node, dest)) in ends.into_iter().enumerate() {
                    if let Some(req) = flood[d].0 {
                        match sim.answer(req) {
                            None => continue,
                            Some(a) => {
                                if let Ok(AppReply::Keys(keys)) = a.reply {
                                    if warmed {
                                        flood[d].1 += keys.len() as u64 * u64::from(opt.key_bits);
                                    }
                                    let (f, n) = slave_fetch(&mut sim, dest, slave, master, &keys);
                                    fetching.insert(f, (n, warmed));
                                }
                                flood[d].0 = None;
                            }
                        }
                    }
                    if !sim.is_up(node) {
                        continue;
                    }
                    // As a client that reads `stored_key_count` first: ask for what is there.
                    let unit = u64::from(opt.key_bits / 8);
                    let ready = sim.node(node).map_or(0, |km| km.pool_free(dest));
                    let number = (ready / unit).clamp(1, FLOOD_MAX_KEYS);
                    flood[d].0 = Some(sim.call(
                        node,
                        AppCall::EncKeys {
                            master: master.into(),
                            slave: slave.into(),
                            number: Some(number),
                            size_bits: Some(u64::from(opt.key_bits)),
                            additional_slaves: vec![],
                            route: None,
                        },
                    ));
                }
            }
            Happening::Sample => samples.push(sample(
                &sim,
                &topo,
                (at - warm).as_secs_f64(),
                &tally,
                &answered,
                &followed,
                followed_names.len(),
            )),
            Happening::Down(n) => match opt.failure_mode {
                FailureMode::Crash => sim.crash(&n),
                FailureMode::Freeze => sim.freeze(&n),
            },
            Happening::Up(n) => {
                sim.thaw(&n);
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
    settle(
        &mut sim,
        &mut open,
        &mut fetching,
        &mut tally,
        &mut answered,
    );
    // And the slaves' last fetches (each answer settled may start one).
    for _ in 0..10 {
        if fetching.is_empty() {
            break;
        }
        sim.run_for(Duration::from_secs(1));
        settle(
            &mut sim,
            &mut open,
            &mut fetching,
            &mut tally,
            &mut answered,
        );
    }
    let unanswered = open.len() as u64;
    samples.push(sample(
        &sim,
        &topo,
        (span - warm).as_secs_f64() + 10.0,
        &tally,
        &answered,
        &followed,
        followed_names.len(),
    ));

    let secs = (span - warm).as_secs_f64();
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
    let relays = relay_counts(&sim, &topo);
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
        availability_ends_up: fraction(ends_up_served, ends_up),
        requests_ends_up: ends_up,
        refused_unavailable: unavailable,
        refused_other: other,
        unanswered,
        slave_keys_fetched: fetched,
        slave_keys_missed: missed,
        delivered_bits,
        link_key_spent_bits,
        key_spent_per_delivered_bit: if delivered_bits > 0 {
            link_key_spent_bits as f64 / delivered_bits as f64
        } else {
            0.0
        },
        node_failures,
        relays_started: relays.0.saturating_sub(warm_stats.0),
        relays_abandoned: relays.1.saturating_sub(warm_stats.1),
        relays_aborted: relays.2.saturating_sub(warm_stats.2),
        far_pair: far.map(|f| {
            let delivered = flood[0].1 + flood[1].1;
            let delivered_bps = delivered as f64 / secs;
            let drained = warm_pools.saturating_sub(far_pools(&sim, &f)) * 8;
            let relayed_bps = delivered.saturating_sub(drained) as f64 / secs;
            let bottleneck_bps = f.bottleneck_bps * opt.rate_multiplier;
            FarPairReport {
                fraction_of_bottleneck: relayed_bps / bottleneck_bps,
                relayed_bps,
                a: f.a,
                b: f.b,
                hops: f.hops,
                delivered_bps,
                bottleneck_bps,
            }
        }),
        photon_links: sim.photon_stats(),
        photon_violations: sim.photon_violations().to_vec(),
        series: Series {
            interval_s,
            node_pairs: followed_names,
            samples,
        },
    })
}

/// The far pair's SAEs (added to the topology's).
const FAR_A: &str = "far-pair-a";
const FAR_B: &str = "far-pair-b";
/// How often the far pair's masters ask again.
const FLOOD_TICK: Duration = Duration::from_millis(20);
/// Most keys the far pair asks for at once.
const FLOOD_MAX_KEYS: u64 = 256;

/// Bytes ready in the far pair's two pools (a for b, b for a).
fn far_pools(sim: &Sim, f: &FarPairReport) -> u64 {
    let at = |x: &str, y: &str| sim.node(x).map_or(0, |km| km.pool_free(y));
    at(&f.a, &f.b) + at(&f.b, &f.a)
}

/// Relays started, abandoned and aborted, summed over the nodes up now.
fn relay_counts(sim: &Sim, topo: &Topology) -> (u64, u64, u64) {
    topo.nodes
        .iter()
        .filter_map(|n| sim.node(&n.id))
        .map(|km| km.stats())
        .fold((0, 0, 0), |a, s| {
            (
                a.0 + s.relays_started,
                a.1 + s.relays_abandoned,
                a.2 + s.relays_aborted,
            )
        })
}

/// The node pair with the most hops between them (ties: the first in topology order), and the
/// best route's bottleneck (before the rate multiplier).
fn far_pair(topo: &Topology) -> Result<FarPairReport, StudyError> {
    let mut best: Option<(usize, String, String)> = None;
    for n in &topo.nodes {
        let routes = kagi_control::Routes::compute(topo, &n.id, &[]);
        for m in &topo.nodes {
            if let Some(h) = routes.hops(&m.id) {
                if best.as_ref().is_none_or(|b| h > b.0) {
                    best = Some((h, n.id.clone(), m.id.clone()));
                }
            }
        }
    }
    let Some((hops, a, b)) = best.filter(|b| b.0 > 0) else {
        return Err(StudyError::Topology("no two connected nodes".into()));
    };
    let bottleneck_bps = widest_path(topo, &a, &b);
    Ok(FarPairReport {
        a,
        b,
        hops,
        delivered_bps: 0.0,
        relayed_bps: 0.0,
        bottleneck_bps,
        fraction_of_bottleneck: 0.0,
    })
}

/// The largest, over all routes from `a` to `b`, of the route's smallest link rate (bit/s).
fn widest_path(topo: &Topology, a: &str, b: &str) -> f64 {
    let mut width: BTreeMap<&str, f64> = BTreeMap::new();
    width.insert(a, f64::INFINITY);
    let mut done = std::collections::BTreeSet::new();
    loop {
        let Some((u, w)) = width
            .iter()
            .filter(|(n, _)| !done.contains(*n))
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(n, w)| (*n, *w))
        else {
            return 0.0;
        };
        if u == b {
            return w;
        }
        done.insert(u);
        for (v, l) in topo.neighbours(u) {
            let through = w.min(topo.link_mean_rate_bps(l));
            let e = width.entry(v).or_insert(0.0);
            if through > *e {
                *e = through;
            }
        }
    }
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
    if !(opt.warmup_minutes.is_finite() && (0.0..=24.0 * 60.0).contains(&opt.warmup_minutes)) {
        return bad("warm-up minutes must be between 0 and 1440");
    }
    if opt.paths == 0 || opt.paths > kagi_km::config::MAX_PATHS {
        return bad("paths must be between 1 and 8");
    }
    if opt.threshold == 0 || opt.threshold > opt.paths {
        return bad("threshold must be between 1 and paths");
    }
    Ok(())
}

/// The SAE pairs a study with `seed` and `saes_per_node` (0: the topology's own SAEs) asks
/// for key, as `(master, slave, master's node, slave's node)`: the demand `kagi plan
/// --sim-demand` plans for, so that plan and sim can be compared on the same pairs.
///
/// # Errors
/// No SAE pair across two nodes.
pub fn sim_demand_pairs(
    topo: &Topology,
    saes_per_node: usize,
    seed: u64,
) -> Result<Vec<(String, String, String, String)>, StudyError> {
    demand_pairs(&with_saes(topo, saes_per_node), &mut demand_rng(seed))
}

/// Mean key rate one SAE pair asks for under `opt`, bit/s.
pub fn sae_pair_demand_bps(opt: &StudyOptions) -> f64 {
    opt.requests_per_hour / 3600.0 * f64::from(opt.keys_per_request) * f64::from(opt.key_bits)
}

/// `topo` with `n` generated SAEs per node (`n` = 0: its own).
fn with_saes(topo: &Topology, n: usize) -> Topology {
    let mut topo = topo.clone();
    if n > 0 {
        for node in &mut topo.nodes {
            node.saes = (0..n).map(|i| format!("sae-{}-{i}", node.id)).collect();
        }
    }
    topo
}

/// The study's random stream: the demand pairs first, then arrivals and failures.
fn demand_rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed ^ 0x5717_d1e5)
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
