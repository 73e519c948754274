//! `kagi plan`: flow-level planning of a topology — the key rate each node pair and SAE pair
//! gets under a routing and multi-path policy, link loads, the key spent per delivered bit, and
//! the min-cut bound (what coding or fractional routing could add).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use kagi_control::Topology;
use kagi_sim::plan::{plan, Cost, PlanOptions, PlanReport, Split};

/// Arguments of `kagi plan`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kagi plan --topology docs/examples/japan24.toml\n  kagi plan --grid-mesh 1000 --saes-per-node 1000\n  \
    kagi plan --topology net.toml --paths 3 --threshold 2 --saes-per-node 1000 --json"
)]
pub struct Args {
    /// Topology file (default: the built-in Tokyo network).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Plan a synthetic mesh of N nodes (jittered grid, 10–80 km links) instead of a file.
    #[arg(long, conflicts_with = "topology")]
    grid_mesh: Option<usize>,
    /// Write the planned topology to this file (TOML), e.g. to run it with `kagi up`.
    #[arg(long)]
    write_topology: Option<PathBuf>,
    /// Node-disjoint paths per relay (1: single path, as the nodes do today).
    #[arg(long, default_value_t = 1)]
    paths: usize,
    /// Shares needed to rebuild a key (default: paths, or 2 of 3).
    #[arg(long)]
    threshold: Option<usize>,
    /// Route cost: `hops` (the topology's link cost, else hop count) or `key` (prefer rich links).
    #[arg(long, value_enum, default_value = "hops")]
    cost: CostArg,
    /// Direction split of link key: `fixed` halves (today) or `adaptive`.
    #[arg(long, value_enum, default_value = "fixed")]
    split: SplitArg,
    /// SAEs per node (default: the SAEs the topology lists).
    #[arg(long)]
    saes_per_node: Option<u32>,
    /// Most key one SAE pair wants per direction, bit/s (default: all it can get; with
    /// --sim-demand: what its requests ask for).
    #[arg(long)]
    demand_bps: Option<f64>,
    /// Plan for the demand `kagi sim` runs with the same --seed and --saes-per-node (default
    /// 4): each SAE the master of one pair with a random slave elsewhere, asking for
    /// requests-per-hour × keys-per-request × key-bits.
    #[arg(long)]
    sim_demand: bool,
    /// With --sim-demand: mean requests per hour of each SAE pair.
    #[arg(long, default_value_t = 60.0, requires = "sim_demand")]
    requests_per_hour: f64,
    /// With --sim-demand: keys per request.
    #[arg(long, default_value_t = 1, requires = "sim_demand")]
    keys_per_request: u32,
    /// With --sim-demand: bits per key.
    #[arg(long, default_value_t = 256, requires = "sim_demand")]
    key_bits: u32,
    /// Multiplies every link's modelled key rate (as `kagi sim --rate-multiplier`).
    #[arg(long, default_value_t = 1.0)]
    rate_multiplier: f64,
    /// Node pairs sampled for the min-cut bound.
    #[arg(long, default_value_t = 50)]
    cut_samples: usize,
    /// Seed of the sample.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// List every node pair (large networks: millions of rows).
    #[arg(long)]
    all_pairs: bool,
    /// Drop a disjoint path whose weakest link has less than this share of the best path's
    /// (while more than the threshold remain).
    #[arg(long, default_value_t = 0.1)]
    min_path_share: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the network map (links by key rate and load) into this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CostArg {
    Hops,
    Key,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SplitArg {
    Fixed,
    Adaptive,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<()> {
    let topo = match (&a.topology, a.grid_mesh) {
        (_, Some(n)) if n == 0 || n > 100_000 => {
            anyhow::bail!("--grid-mesh takes 1..=100000 nodes")
        }
        (_, Some(n)) => kagi_sim::plan::synth::grid_mesh(n, a.seed),
        (Some(p), None) => Topology::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("topology {}", p.display()))?,
        (None, None) => kagi_control::builtin::tokyo(),
    };
    if let Some(p) = &a.write_topology {
        std::fs::write(p, topo.to_toml()).with_context(|| format!("write {}", p.display()))?;
    }
    let threshold = a.threshold.unwrap_or(match a.paths {
        3 => 2,
        p => p,
    });
    let (directed, saes_per_node, demand_bps) = if a.sim_demand {
        let study = kagi_sim::study::StudyOptions {
            requests_per_hour: a.requests_per_hour,
            keys_per_request: a.keys_per_request,
            key_bits: a.key_bits,
            ..Default::default()
        };
        let n = a.saes_per_node.unwrap_or(study.saes_per_node as u32);
        let pairs = kagi_sim::study::sim_demand_pairs(&topo, n as usize, a.seed)?;
        let demand = a
            .demand_bps
            .unwrap_or(kagi_sim::study::sae_pair_demand_bps(&study));
        (
            Some(pairs.into_iter().map(|p| (p.2, p.3)).collect()),
            (n > 0).then_some(n),
            Some(demand),
        )
    } else {
        (None, a.saes_per_node, a.demand_bps)
    };
    let opt = PlanOptions {
        paths: a.paths,
        threshold,
        cost: match a.cost {
            CostArg::Hops => Cost::Hops,
            CostArg::Key => Cost::Key,
        },
        split: match a.split {
            SplitArg::Fixed => Split::Fixed,
            SplitArg::Adaptive => Split::Adaptive,
        },
        saes_per_node,
        demand_bps,
        directed,
        rate_multiplier: a.rate_multiplier,
        cut_samples: a.cut_samples,
        seed: a.seed,
        all_pairs: a.all_pairs,
        min_path_share: a.min_path_share,
        ..PlanOptions::default()
    };
    let start = Instant::now();
    let spin = super::progress::spinner(&format!(
        "planning {} nodes, {} links",
        topo.nodes.len(),
        topo.links.len()
    ));
    let report = plan(&topo, &opt);
    spin.finish_and_clear();
    let report = report?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(path) = &a.svg {
        let links: Vec<super::netmap::MapLink> = report
            .link_loads
            .iter()
            .map(|l| super::netmap::MapLink {
                a: l.a.clone(),
                b: l.b.clone(),
                rate_bps: l.rate_bps,
                load: Some(l.utilisation),
            })
            .collect();
        let title = format!(
            "{}: kagi plan, {} path(s), {} delivered",
            topo.name,
            report.paths,
            bps(report.delivered_bps)
        );
        std::fs::write(path, super::netmap::svg(&title, &topo, &links))
            .with_context(|| format!("write {}", path.display()))?;
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["topology"] = serde_json::json!(topo.name);
        v["seconds"] = serde_json::json!(secs);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        super::sim::emit(&print_text(&topo, &report, secs))?;
    }
    Ok(())
}

/// A bit rate with its unit (`1.20 kb/s`).
pub(crate) fn bps(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.2} Mb/s", x / 1e6),
        x if x >= 1e3 => format!("{:.2} kb/s", x / 1e3),
        x if x >= 0.1 || x == 0.0 => format!("{x:.1} b/s"),
        x => format!("{x:.2e} b/s"),
    }
}

fn print_text(topo: &Topology, r: &PlanReport, secs: f64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} nodes, {} links, {} SAEs, {} node pairs with demand (planned in {secs:.2} s)",
        topo.name, r.nodes, r.links, r.saes, r.pairs
    );
    let _ = writeln!(
        out,
        "policy: {} path(s), threshold {}, cost {:?}, split {:?}",
        r.paths, r.threshold, r.cost, r.split
    );
    if r.unreachable_pairs > 0 {
        let _ = writeln!(out, "  {} pair(s) have no path at all", r.unreachable_pairs);
    }
    if r.fewer_paths_pairs > 0 {
        let _ = writeln!(
        out,
            "  {} pair(s) have fewer than {} node-disjoint paths ({} below the threshold: losing one path stops them)",
            r.fewer_paths_pairs, r.paths, r.below_threshold_pairs
        );
    }
    let _ = writeln!(
        out,
        "delivered: {} in all; per node pair min {} / p10 {} / median {} / max {}",
        bps(r.delivered_bps),
        bps(r.pair_bps.min),
        bps(r.pair_bps.p10),
        bps(r.pair_bps.median),
        bps(r.pair_bps.max)
    );
    let _ = writeln!(
        out,
        "per SAE pair and direction: min {} / median {} / max {}",
        bps(r.sae_pair_bps.min),
        bps(r.sae_pair_bps.median),
        bps(r.sae_pair_bps.max)
    );
    let _ = writeln!(
        out,
        "link key spent per delivered key bit: {:.2}",
        r.link_key_per_delivered_bit
    );
    if let Some(f) = &r.farthest {
        let _ = writeln!(
            out,
            "farthest pair {} ↔ {} ({} hops): {} (limited by {})",
            f.a,
            f.b,
            f.hops,
            bps(f.delivered_bps),
            f.limited_by
        );
    }
    let mut busiest: Vec<_> = r.link_loads.iter().collect();
    busiest.sort_by(|x, y| y.utilisation.total_cmp(&x.utilisation));
    let _ = writeln!(out, "busiest links:");
    for l in busiest.iter().take(5) {
        let _ = writeln!(
            out,
            "  {:<28} {:>12} of {:>12}  ({:.0} %)",
            format!("{}-{}", l.a, l.b),
            bps(l.used_bps),
            bps(l.rate_bps),
            100.0 * l.utilisation
        );
    }
    let _ = writeln!(
        out,
        "min-cut bound over {} sampled pair(s): median {:.2}× the policy's own rate (what \
         network coding or split routing could give one pair alone)",
        r.cut_samples.len(),
        r.median_cut_gain
    );
    let mut low: Vec<_> = r.pair_rates.iter().collect();
    low.sort_by(|x, y| x.delivered_bps.total_cmp(&y.delivered_bps));
    let _ = writeln!(out, "lowest pairs:");
    for p in low.iter().take(5) {
        let _ = writeln!(
            out,
            "  {:<28} {:>12}  {} path(s), {} hops, limited by {}",
            format!("{} ↔ {}", p.a, p.b),
            bps(p.delivered_bps),
            p.paths,
            p.hops,
            p.limited_by
        );
    }
    out
}
