//! Flow-level planning for large networks (`kagi plan`): which key rate reaches which node pair
//! under the routing and multi-path policy, when every SAE pair gets a fair share of the links'
//! long-run key rates.
//!
//! The model: each link yields its technology's mean secret key rate; a relay draws, on every
//! hop, as many link key bits as it delivers plus the one-time MAC key per relay chunk (the key
//! manager's own accounting). With the fixed split each end spends only its half of a link, so
//! each direction is a separate resource. A node pair's demand is the number of SAE pairs
//! behind it, in each direction (a master at either end draws from the pool its own node
//! relays). Multi-path relay sends a full-size share over each node-disjoint path, so a key
//! costs its size on every path. Rates are then shared max-min fairly per SAE pair
//! (progressive filling).
//!
//! It is a steady-state model: no pool dynamics, no timeouts, no failures. `kagi sim` runs the
//! real key manager for those.

pub mod fair;
pub mod graph;
pub mod maxflow;
pub mod paths;
pub mod synth;

use kagi_control::Topology;
use rand::{Rng, SeedableRng};
use serde::Serialize;

pub use graph::Split;
pub use paths::Cost;

use fair::Demands;
use graph::Graph;

/// What to plan for.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Node-disjoint paths per relay (1: single path, as the node does today).
    pub paths: usize,
    /// Shares needed to rebuild a key (reported; the key cost is one share per path).
    pub threshold: usize,
    /// Route cost.
    pub cost: Cost,
    /// Direction split of link key.
    pub split: Split,
    /// SAEs per node (`None`: the SAEs the topology lists).
    pub saes_per_node: Option<u32>,
    /// Largest rate one SAE pair wants in one direction, bit/s (`None`: all it can get).
    pub demand_bps: Option<f64>,
    /// Bytes of key per relay chunk (the one-time MAC key is spent per chunk and hop).
    pub relay_chunk_bytes: u32,
    /// One-time MAC key bytes per chunk and hop.
    pub mac_key_bytes: u32,
    /// A disjoint path whose weakest link has less than this share of the best path's weakest
    /// link is dropped (while more than `threshold` paths remain): one satellite detour must
    /// not hold a pair's whole rate down.
    pub min_path_share: f64,
    /// Node pairs for which the min-cut bound is computed (seeded sample).
    pub cut_samples: usize,
    /// Seed of the sample.
    pub seed: u64,
    /// Include every pair in the report (large networks: millions of rows).
    pub all_pairs: bool,
    /// A directed demand instead of every SAE pair both ways: one `(master's node, slave's
    /// node)` entry per SAE pair, e.g. [`crate::study::sim_demand_pairs`] (what `kagi sim`
    /// asks for). Each entry draws key from its master's node to its slave's node only.
    pub directed: Option<Vec<(String, String)>>,
    /// Multiplies every link's modelled rate (as `kagi sim --rate-multiplier`).
    pub rate_multiplier: f64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            paths: 1,
            threshold: 1,
            cost: Cost::Hops,
            split: Split::Fixed,
            saes_per_node: None,
            demand_bps: None,
            relay_chunk_bytes: 4096,
            mac_key_bytes: 32,
            min_path_share: 0.1,
            cut_samples: 50,
            seed: 1,
            all_pairs: false,
            directed: None,
            rate_multiplier: 1.0,
        }
    }
}

/// What is wrong with a plan request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// `paths` or `threshold` out of range.
    #[error(
        "paths must be 1..=8 and threshold 1..=paths (got paths {paths}, threshold {threshold})"
    )]
    Policy {
        /// Paths asked for.
        paths: usize,
        /// Threshold asked for.
        threshold: usize,
    },
    /// A bad number.
    #[error("{0}")]
    Value(String),
    /// The topology does not validate.
    #[error(transparent)]
    Topology(#[from] kagi_control::TopologyError),
}

/// The key rate one node pair gets.
#[derive(Debug, Clone, Serialize)]
pub struct PairRate {
    /// One node.
    pub a: String,
    /// The other.
    pub b: String,
    /// SAE pairs between them (each direction; with a directed demand, the busier direction).
    pub sae_pairs: u64,
    /// Delivered end-to-end key, both directions, bit/s.
    pub delivered_bps: f64,
    /// Per SAE pair and direction, bit/s.
    pub per_sae_pair_bps: f64,
    /// Node-disjoint paths used a → b.
    pub paths: usize,
    /// Hops of the longest path used.
    pub hops: usize,
    /// What limits the pair: `"x-y"` (a link), or `"demand"`.
    pub limited_by: String,
}

/// One link's load.
#[derive(Debug, Clone, Serialize)]
pub struct LinkLoad {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Mean secret key rate, bit/s.
    pub rate_bps: f64,
    /// Key drawn by relays, bit/s (both directions).
    pub used_bps: f64,
    /// `used / rate`.
    pub utilisation: f64,
}

/// Min-cut bound against the policy's own rate for one pair, each alone on an idle network.
#[derive(Debug, Clone, Serialize)]
pub struct CutSample {
    /// One node.
    pub a: String,
    /// The other.
    pub b: String,
    /// What the policy's path set moves a → b alone, bit/s.
    pub policy_bps: f64,
    /// The min cut a → b: the most any scheme moves, network coding included, bit/s.
    pub min_cut_bps: f64,
}

/// Distribution of per-pair rates.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// Nodes.
    pub nodes: usize,
    /// Links.
    pub links: usize,
    /// SAEs.
    pub saes: u64,
    /// Node pairs with demand.
    pub pairs: usize,
    /// Node pairs that no path joins.
    pub unreachable_pairs: usize,
    /// Pairs that got fewer disjoint paths than asked (they use what exists).
    pub fewer_paths_pairs: usize,
    /// Pairs with fewer disjoint paths than the threshold (no loss of a path is survivable).
    pub below_threshold_pairs: usize,
    /// Policy: paths per relay.
    pub paths: usize,
    /// Policy: threshold.
    pub threshold: usize,
    /// Route cost.
    pub cost: Cost,
    /// Direction split.
    pub split: Split,
    /// Total delivered end-to-end key, bit/s.
    pub delivered_bps: f64,
    /// Link key spent per delivered key bit.
    pub link_key_per_delivered_bit: f64,
    /// Delivered rate per node pair.
    pub pair_bps: Spread,
    /// Delivered rate per SAE pair and direction.
    pub sae_pair_bps: Spread,
    /// The pair with the most hops, and its rate.
    pub farthest: Option<PairRate>,
    /// Rates per node pair (all when asked or when there are at most 10,000; otherwise the
    /// 100 lowest).
    pub pair_rates: Vec<PairRate>,
    /// Link loads.
    pub link_loads: Vec<LinkLoad>,
    /// Min-cut samples.
    pub cut_samples: Vec<CutSample>,
    /// Median of `min_cut / policy` over the samples (≥ 1): what coding or fractional routing
    /// could add for one pair alone.
    pub median_cut_gain: f64,
}

/// Plans `topo` under `opt`.
///
/// # Errors
/// An invalid policy or topology.
pub fn plan(topo: &Topology, opt: &PlanOptions) -> Result<PlanReport, PlanError> {
    if opt.paths == 0 || opt.paths > 8 || opt.threshold == 0 || opt.threshold > opt.paths {
        return Err(PlanError::Policy {
            paths: opt.paths,
            threshold: opt.threshold,
        });
    }
    if let Some(d) = opt.demand_bps {
        if !(d.is_finite() && d > 0.0) {
            return Err(PlanError::Value(format!(
                "demand must be a positive number of bit/s, not {d}"
            )));
        }
    }
    if opt.relay_chunk_bytes == 0 {
        return Err(PlanError::Value("relay chunk must be > 0 bytes".into()));
    }
    if !(opt.rate_multiplier.is_finite() && opt.rate_multiplier > 0.0) {
        return Err(PlanError::Value(format!(
            "the rate multiplier must be finite and positive, not {}",
            opt.rate_multiplier
        )));
    }
    topo.validate()?;
    let mut g = Graph::new(topo);
    for l in &mut g.links {
        l.rate_bps *= opt.rate_multiplier;
    }
    let n = g.len();
    let saes: Vec<u64> = (0..n)
        .map(|i| u64::from(opt.saes_per_node.unwrap_or(g.listed_saes[i])))
        .collect();
    let topo_costs: Vec<Option<f64>> = topo
        .links
        .iter()
        .filter(|l| topo.node(&l.a).is_some() && topo.node(&l.b).is_some())
        .map(|l| l.cost)
        .collect();
    let costs = paths::link_costs(&g, &topo_costs, opt.cost);
    // Node pairs (a < b) and the SAE pairs behind each direction.
    let (pairs, weights): (Vec<(u32, u32)>, Vec<[u64; 2]>) = match &opt.directed {
        None => (0..n as u32)
            .flat_map(|a| ((a + 1)..n as u32).map(move |b| (a, b)))
            .filter(|&(a, b)| saes[a as usize] * saes[b as usize] > 0)
            .map(|(a, b)| {
                let w = saes[a as usize] * saes[b as usize];
                ((a, b), [w, w])
            })
            .unzip(),
        Some(list) => directed_pairs(&g, list)?.into_iter().unzip(),
    };
    let mut path_sets = path_sets(&g, &costs, &pairs, opt.paths);
    for sets in &mut path_sets {
        for set in sets.iter_mut() {
            prune_weak_paths(&g, set, opt.threshold, opt.min_path_share);
        }
    }
    // Demands: a → b then b → a for every pair with a path.
    let mut demands = Demands::default();
    let mut owner = Vec::new(); // demand → pair index
    let mut unreachable = 0;
    let mut fewer = 0;
    let mut below = 0;
    for (pi, sets) in path_sets.iter().enumerate() {
        let [ab, ba] = sets;
        if ab.is_empty() || ba.is_empty() {
            unreachable += 1;
            continue;
        }
        if ab.len() < opt.paths {
            fewer += 1;
        }
        if ab.len() < opt.threshold {
            below += 1;
        }
        for (set, w) in [ab, ba].into_iter().zip(weights[pi]) {
            if w == 0 {
                continue;
            }
            let w = w as f64;
            demands.push(
                set.iter().flat_map(|p| {
                    p.windows(2).map(|h| {
                        let li = link_between(&g, h[0], h[1]);
                        g.resource(opt.split, h[0], li)
                    })
                }),
                w,
            );
            owner.push(pi);
        }
    }
    // Capacities net of the MAC key spent per chunk and hop.
    let overhead = 1.0 + f64::from(opt.mac_key_bytes) / f64::from(opt.relay_chunk_bytes);
    let r_n = g.resources(opt.split);
    let capacity: Vec<f64> = (0..r_n as u32)
        .map(|r| g.capacity(opt.split, r) / overhead)
        .collect();
    let alloc = fair::allocate(&capacity, &demands, opt.demand_bps.unwrap_or(f64::INFINITY));
    // Per pair results.
    let mut delivered = vec![0.0f64; pairs.len()];
    let mut per_sae = vec![f64::INFINITY; pairs.len()];
    let mut limit: Vec<Option<u32>> = vec![None; pairs.len()];
    for (di, &pi) in owner.iter().enumerate() {
        delivered[pi] += alloc.level[di] * demands.weight[di];
        if alloc.level[di] < per_sae[pi] {
            per_sae[pi] = alloc.level[di];
            limit[pi] = alloc.bottleneck[di];
        }
    }
    let mut rates: Vec<PairRate> = Vec::new();
    for (pi, &(a, b)) in pairs.iter().enumerate() {
        let [ab, _] = &path_sets[pi];
        if ab.is_empty() {
            continue;
        }
        let limited_by = match limit[pi] {
            Some(r) => {
                let l = &g.links[g.link_of(opt.split, r) as usize];
                format!("{}-{}", g.ids[l.a as usize], g.ids[l.b as usize])
            }
            None => "demand".into(),
        };
        rates.push(PairRate {
            a: g.ids[a as usize].clone(),
            b: g.ids[b as usize].clone(),
            sae_pairs: weights[pi].into_iter().max().unwrap_or(0),
            delivered_bps: delivered[pi],
            per_sae_pair_bps: per_sae[pi],
            paths: ab.len(),
            hops: ab.iter().map(|p| p.len() - 1).max().unwrap_or(0),
            limited_by,
        });
    }
    let total: f64 = rates.iter().map(|r| r.delivered_bps).sum();
    let spent: f64 = alloc.used.iter().sum::<f64>() * overhead;
    let mut link_used = vec![0.0f64; g.links.len()];
    for (r, u) in alloc.used.iter().enumerate() {
        link_used[g.link_of(opt.split, r as u32) as usize] += u * overhead;
    }
    let link_loads = g
        .links
        .iter()
        .zip(&link_used)
        .map(|(l, &u)| LinkLoad {
            a: g.ids[l.a as usize].clone(),
            b: g.ids[l.b as usize].clone(),
            rate_bps: l.rate_bps,
            used_bps: u,
            utilisation: if l.rate_bps > 0.0 {
                u / l.rate_bps
            } else {
                0.0
            },
        })
        .collect();
    let farthest = rates
        .iter()
        .max_by(|x, y| {
            x.hops
                .cmp(&y.hops)
                .then_with(|| y.delivered_bps.total_cmp(&x.delivered_bps))
        })
        .cloned();
    let cut_samples = cut_samples(&g, &pairs, &path_sets, &capacity, opt);
    let no_samples = cut_samples.is_empty();
    let median_cut_gain = spread(
        cut_samples
            .iter()
            .map(|c| {
                if c.policy_bps > 0.0 {
                    c.min_cut_bps / c.policy_bps
                } else {
                    1.0
                }
            })
            .collect(),
    )
    .median;
    let pair_bps = spread(rates.iter().map(|r| r.delivered_bps).collect());
    let sae_pair_bps = spread(rates.iter().map(|r| r.per_sae_pair_bps).collect());
    let shown = if opt.all_pairs || rates.len() <= 10_000 {
        rates
    } else {
        rates.sort_by(|x, y| x.delivered_bps.total_cmp(&y.delivered_bps));
        rates.truncate(100);
        rates
    };
    Ok(PlanReport {
        nodes: n,
        links: g.links.len(),
        saes: saes.iter().sum(),
        pairs: pairs.len(),
        unreachable_pairs: unreachable,
        fewer_paths_pairs: fewer,
        below_threshold_pairs: below,
        paths: opt.paths,
        threshold: opt.threshold,
        cost: opt.cost,
        split: opt.split,
        delivered_bps: total,
        link_key_per_delivered_bit: if total > 0.0 { spent / total } else { 0.0 },
        pair_bps,
        sae_pair_bps,
        farthest,
        pair_rates: shown,
        link_loads,
        cut_samples,
        median_cut_gain: if no_samples { 1.0 } else { median_cut_gain },
    })
}

/// A node pair (a < b) and its SAE pairs a → b and b → a.
type WeightedPair = ((u32, u32), [u64; 2]);

/// The node pairs of a directed demand, with their SAE pairs each way.
fn directed_pairs(g: &Graph, list: &[(String, String)]) -> Result<Vec<WeightedPair>, PlanError> {
    let index: std::collections::HashMap<&str, u32> = g
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u32))
        .collect();
    let find = |id: &str| {
        index
            .get(id)
            .copied()
            .ok_or_else(|| PlanError::Value(format!("demand names unknown node {id}")))
    };
    let mut by_pair: std::collections::BTreeMap<(u32, u32), [u64; 2]> = Default::default();
    for (from, to) in list {
        let (x, y) = (find(from)?, find(to)?);
        if x == y {
            return Err(PlanError::Value(format!(
                "demand {from} → {to} does not leave its node"
            )));
        }
        let (key, dir) = if x < y { ((x, y), 0) } else { ((y, x), 1) };
        by_pair.entry(key).or_default()[dir] += 1;
    }
    Ok(by_pair.into_iter().collect())
}

/// Drops the weakest paths of `set` (weakest link below `share` of the best path's) while more
/// than `keep` remain.
fn prune_weak_paths(g: &Graph, set: &mut Vec<Vec<u32>>, keep: usize, share: f64) {
    let weakest = |p: &Vec<u32>| {
        p.windows(2)
            .map(|h| g.links[link_between(g, h[0], h[1]) as usize].rate_bps)
            .fold(f64::INFINITY, f64::min)
    };
    let best = set.iter().map(weakest).fold(0.0, f64::max);
    while set.len() > keep {
        let (i, w) = set
            .iter()
            .enumerate()
            .map(|(i, p)| (i, weakest(p)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("non-empty");
        if w >= share * best {
            break;
        }
        set.remove(i);
    }
}

fn link_between(g: &Graph, u: u32, v: u32) -> u32 {
    g.neighbours(u)
        .iter()
        .find(|(x, _)| *x == v)
        .map(|(_, li)| *li)
        .expect("consecutive path nodes are neighbours")
}

/// Path sets a → b and b → a of every pair, computed on all cores.
fn path_sets(g: &Graph, costs: &[f64], pairs: &[(u32, u32)], k: usize) -> Vec<[Vec<Vec<u32>>; 2]> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    let rank = paths::id_ranks(g);
    let chunk = pairs.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .chunks(chunk)
            .map(|part| {
                let rank = &rank;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    let mut finder = paths::DisjointFinder::new(g, costs);
                    // Single path: one tree per source, reused while the source repeats.
                    let mut trees: Option<(u32, Vec<u32>)> = None;
                    let mut rev: std::collections::HashMap<u32, Vec<u32>> = Default::default();
                    for &(a, b) in part {
                        if k == 1 {
                            if trees.as_ref().is_none_or(|(src, _)| *src != a) {
                                trees = Some((a, paths::shortest_tree(g, costs, rank, a)));
                            }
                            let ab = paths::path_in_tree(&trees.as_ref().expect("set").1, a, b);
                            let tb = rev
                                .entry(b)
                                .or_insert_with(|| paths::shortest_tree(g, costs, rank, b));
                            let ba = paths::path_in_tree(tb, b, a);
                            out.push([ab.into_iter().collect(), ba.into_iter().collect()]);
                        } else {
                            let ab = finder.paths(a, b, k);
                            let ba = ab
                                .iter()
                                .map(|p| p.iter().rev().copied().collect())
                                .collect();
                            out.push([ab, ba]);
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("path worker"))
            .collect()
    })
}

/// Policy rate and min cut for a seeded sample of pairs, each alone on the network.
fn cut_samples(
    g: &Graph,
    pairs: &[(u32, u32)],
    sets: &[[Vec<Vec<u32>>; 2]],
    capacity: &[f64],
    opt: &PlanOptions,
) -> Vec<CutSample> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opt.seed);
    let candidates: Vec<usize> = (0..pairs.len())
        .filter(|&i| !sets[i][0].is_empty())
        .collect();
    let mut picked = Vec::new();
    if candidates.len() <= opt.cut_samples {
        picked = candidates;
    } else {
        let mut seen = std::collections::BTreeSet::new();
        while picked.len() < opt.cut_samples {
            let i = candidates[rng.gen_range(0..candidates.len())];
            if seen.insert(i) {
                picked.push(i);
            }
        }
    }
    picked
        .into_iter()
        .map(|pi| {
            let (a, b) = pairs[pi];
            let policy = sets[pi][0]
                .iter()
                .flat_map(|p| {
                    p.windows(2).map(|h| {
                        let li = link_between(g, h[0], h[1]);
                        capacity[g.resource(opt.split, h[0], li) as usize]
                    })
                })
                .fold(f64::INFINITY, f64::min);
            let mut fg = maxflow::FlowGraph::new(g.len());
            for (li, l) in g.links.iter().enumerate() {
                let li = li as u32;
                fg.arc(l.a, l.b, capacity[g.resource(opt.split, l.a, li) as usize]);
                fg.arc(l.b, l.a, capacity[g.resource(opt.split, l.b, li) as usize]);
            }
            CutSample {
                a: g.ids[a as usize].clone(),
                b: g.ids[b as usize].clone(),
                policy_bps: if policy.is_finite() { policy } else { 0.0 },
                min_cut_bps: fg.max_flow(a, b),
            }
        })
        .collect()
}

fn spread(mut v: Vec<f64>) -> Spread {
    if v.is_empty() {
        return Spread {
            min: 0.0,
            p10: 0.0,
            median: 0.0,
            max: 0.0,
        };
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Spread {
        min: v[0],
        p10: at(0.1),
        median: at(0.5),
        max: v[v.len() - 1],
    }
}
