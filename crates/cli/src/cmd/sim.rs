//! `kagi sim`: a planning study on the real key managers under virtual time — what each SAE pair
//! and node pair gets from a demand model, with seeded node failures (`kagi_sim::study`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use kagi_control::Topology;
use kagi_sim::study::{study, FailureMode, StudyOptions, StudyReport};

use super::netmap::MapLink;

/// Arguments of `kagi sim`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kagi sim --hours 1\n  kagi sim --topology docs/examples/japan24.toml --hours 0.5 --saes-per-node 4 --json\n  \
    kagi sim --hours 6 --diurnal --node-mtbf-hours 2 --repair-minutes 15\n  \
    kagi sim --grid-mesh 48 --warmup-minutes 2 --hours 0.1 --far-pair-flood\n  \
    kagi sim --hours 0.5 --svg map.svg --svg-series series.svg"
)]
pub struct Args {
    /// Topology file (default: the built-in Tokyo network).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Simulate a synthetic mesh of N nodes (jittered grid, 10–80 km links) instead of a file.
    #[arg(long, conflicts_with = "topology")]
    grid_mesh: Option<usize>,
    /// Node-disjoint paths per relay (1: single path).
    #[arg(long, default_value_t = 1)]
    paths: u8,
    /// Shares that rebuild a key (1 ≤ threshold ≤ paths).
    #[arg(long, default_value_t = 1)]
    threshold: u8,
    /// Simulated hours.
    #[arg(long, default_value_t = 1.0)]
    hours: f64,
    /// Simulated minutes of demand before the measured hours (pools warm up; not counted).
    #[arg(long, default_value_t = 0.0)]
    warmup_minutes: f64,
    /// Add an SAE pair at the two ends of the farthest node pair that asks for key as fast as
    /// its nodes have it, both ways, and report its rate against its best route's bottleneck.
    #[arg(long)]
    far_pair_flood: bool,
    /// SAEs per node (0: the SAEs the topology lists).
    #[arg(long, default_value_t = 4)]
    saes_per_node: usize,
    /// Mean requests per hour of each SAE pair.
    #[arg(long, default_value_t = 60.0)]
    requests_per_hour: f64,
    /// Keys per request.
    #[arg(long, default_value_t = 1)]
    keys_per_request: u32,
    /// Bits per key.
    #[arg(long, default_value_t = 256)]
    key_bits: u32,
    /// Multiplies every link's modelled key rate.
    #[arg(long, default_value_t = 1.0)]
    rate_multiplier: f64,
    /// Demand follows a day (0.5× at 04:00, 1.5× at 16:00).
    #[arg(long)]
    diurnal: bool,
    /// How each SAE pair's requests are spread in time: `poisson` (independent users) or
    /// `periodic` (one request per period at a random phase, as devices that rekey on a timer).
    #[arg(long, value_enum, default_value_t = ArrivalsArg::Poisson)]
    arrivals: ArrivalsArg,
    /// Mean time between failures of each node, hours (default: no failures).
    #[arg(long)]
    node_mtbf_hours: Option<f64>,
    /// How long a failed node stays down, minutes.
    #[arg(long, default_value_t = 10.0)]
    repair_minutes: f64,
    /// How nodes fail: `crash` (peers see the connection drop) or `freeze` (as SIGSTOP:
    /// connections stay open; only heartbeats tell).
    #[arg(long, value_enum, default_value_t = FailureArg::Crash)]
    failure_mode: FailureArg,
    /// Only nodes without SAEs fail (with --saes-per-node 0 and a topology whose end nodes
    /// list SAEs): failures hit intermediate nodes only.
    #[arg(long)]
    fail_transit_only: bool,
    /// Switch heartbeats off (a silent node is then never routed around).
    #[arg(long)]
    no_heartbeats: bool,
    /// Which nodes each node sends heartbeats to and watches for silence: `neighbours` (the
    /// default, as a node's `[peers] connect`: a far node's silence is learnt from its
    /// neighbours' link-state adverts) or `all` (every node, as `connect = "all"`).
    #[arg(long, value_enum, default_value_t = PeerScopeArg::Neighbours)]
    peer_scope: PeerScopeArg,
    /// Switch link-state adverts off: routes follow the topology's static link costs (hop
    /// count) instead of the key each link has.
    #[arg(long)]
    static_routes: bool,
    /// Switch link key grants off: each end of a link spends only its fixed half, however
    /// one-sided the demand (grants are on by default, as in a node's `[pool] link_grants`).
    #[arg(long)]
    no_link_grants: bool,
    /// Seed of the demand, the failures and the network.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Produce every link block's key bytes at delivery instead of only where a node reads
    /// them (the same run, slower: for checking and measuring).
    #[arg(long)]
    materialise_link_key: bool,
    /// Check every key answered against the safety invariants (one ID, one set of bytes;
    /// served once to each end; no pad spent twice). It holds every key served until the run
    /// ends: gigabytes over a simulated day of a large network, so it is off unless asked.
    #[arg(long)]
    check_keys: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the network map (links by modelled key rate) into this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Also draw time series into this SVG file: key delivered and requests served per
    /// interval (all pairs and the node pairs with the most SAE pairs) and the key the nodes
    /// hold, sampled at a fixed simulated interval (at most 720 samples).
    #[arg(long)]
    svg_series: Option<PathBuf>,
}

/// `--peer-scope`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PeerScopeArg {
    All,
    Neighbours,
}

/// `--arrivals`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ArrivalsArg {
    Poisson,
    Periodic,
}

/// `--failure-mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FailureArg {
    Crash,
    Freeze,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<()> {
    let topo = match (&a.topology, a.grid_mesh) {
        (Some(p), _) => Topology::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("topology {}", p.display()))?,
        (None, Some(n)) if (2..=1000).contains(&n) => kagi_sim::plan::synth::grid_mesh(n, a.seed),
        (None, Some(_)) => anyhow::bail!("--grid-mesh takes 2..=1000 nodes"),
        (None, None) => kagi_control::builtin::tokyo(),
    };
    let opt = StudyOptions {
        hours: a.hours,
        saes_per_node: a.saes_per_node,
        requests_per_hour: a.requests_per_hour,
        keys_per_request: a.keys_per_request,
        key_bits: a.key_bits,
        rate_multiplier: a.rate_multiplier,
        diurnal: a.diurnal,
        arrivals: match a.arrivals {
            ArrivalsArg::Poisson => kagi_sim::study::Arrivals::Poisson,
            ArrivalsArg::Periodic => kagi_sim::study::Arrivals::Periodic,
        },
        node_mtbf_hours: a.node_mtbf_hours,
        repair_minutes: a.repair_minutes,
        failure_mode: match a.failure_mode {
            FailureArg::Crash => FailureMode::Crash,
            FailureArg::Freeze => FailureMode::Freeze,
        },
        fail_transit_only: a.fail_transit_only,
        heartbeats: !a.no_heartbeats,
        peers: match a.peer_scope {
            PeerScopeArg::All => kagi_km::PeerScope::All,
            PeerScopeArg::Neighbours => kagi_km::PeerScope::Neighbours,
        },
        link_state: !a.static_routes,
        link_grants: !a.no_link_grants,
        seed: a.seed,
        paths: a.paths,
        threshold: a.threshold,
        warmup_minutes: a.warmup_minutes,
        far_pair_flood: a.far_pair_flood,
        lazy_link_key: !a.materialise_link_key,
        check_keys: a.check_keys,
    };
    let spin = super::progress::spinner(&format!(
        "simulating {} h of {} nodes",
        a.hours,
        topo.nodes.len()
    ));
    let start = Instant::now();
    let report = study(&topo, &opt);
    spin.finish_and_clear();
    let report = report?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(path) = &a.svg {
        let links: Vec<MapLink> = report
            .links
            .iter()
            .map(|l| MapLink {
                a: l.a.clone(),
                b: l.b.clone(),
                rate_bps: l.rate_bps,
                load: None,
            })
            .collect();
        let title = format!(
            "{}: kagi sim, {} h, {:.1} % of requests served",
            topo.name,
            a.hours,
            100.0 * report.pairs.iter().map(|p| p.served).sum::<u64>() as f64
                / report.requests.max(1) as f64
        );
        std::fs::write(path, super::netmap::svg(&title, &topo, &links))
            .with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &a.svg_series {
        let title = format!(
            "{}: kagi sim, {} h measured, seed {}",
            topo.name, a.hours, a.seed
        );
        std::fs::write(path, kagi_sim::series_svg::svg(&title, &report))
            .with_context(|| format!("write {}", path.display()))?;
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["topology"] = serde_json::json!(topo.name);
        v["seconds"] = serde_json::json!(secs);
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?))
    } else {
        emit(&text(&topo, &report, secs))
    }
}

/// Writes the report; a reader that went away (`| head`) is not an error.
pub(crate) fn emit(s: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(s.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn text(topo: &Topology, r: &StudyReport, secs: f64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    macro_rules! println {
        () => { out.push('\n') };
        ($($t:tt)*) => {{ let _ = writeln!(out, $($t)*); }};
    }
    println!(
        "{}: {} nodes, {} links, {} SAE pairs, {} simulated hour(s) in {secs:.1} s",
        topo.name,
        topo.nodes.len(),
        topo.links.len(),
        r.pairs.len(),
        r.hours
    );
    println!(
        "availability {:.2} % ({} of {} requests served; {} refused for lack of key or a node \
         down, {} unanswered); {} node failure(s)",
        100.0 * r.availability,
        r.requests - r.refused_unavailable - r.refused_other - r.unanswered,
        r.requests,
        r.refused_unavailable,
        r.unanswered,
        r.node_failures
    );
    println!(
        "availability with both end nodes up {:.2} % ({} requests)",
        100.0 * r.availability_ends_up,
        r.requests_ends_up
    );
    println!(
        "key delivered {} bits; link key spent {} bits ({:.2} per delivered bit)",
        r.delivered_bits, r.link_key_spent_bits, r.key_spent_per_delivered_bit
    );
    println!(
        "relays started {}, abandoned {} ({:.2} %)",
        r.relays_started,
        r.relays_abandoned,
        100.0 * r.relays_abandoned as f64 / r.relays_started.max(1) as f64
    );
    if let Some(f) = &r.far_pair {
        println!(
            "farthest pair {}–{} ({} hops): served {:.0} bit/s both ways, relayed {:.0} bit/s: \
             {:.1} % of its best route's bottleneck ({:.0} bit/s)",
            f.a,
            f.b,
            f.hops,
            f.delivered_bps,
            f.relayed_bps,
            100.0 * f.fraction_of_bottleneck,
            f.bottleneck_bps
        );
    }
    for p in &r.photon_links {
        println!(
            "photon link {}–{}: {} blocks delivered at both ends ({} key bits), {} failed, {} at \
             one end only; {} with different keys, {} delivered twice",
            p.a,
            p.b,
            p.blocks_delivered,
            p.key_bits,
            p.blocks_failed,
            p.blocks_one_end,
            p.mismatched_blocks,
            p.duplicate_blocks
        );
    }
    for v in &r.photon_violations {
        println!("photon link check failed: {v}");
    }
    println!();
    println!(
        "{:<14} {:<14} {:>9} {:>8} {:>14}",
        "node", "node", "requests", "served", "delivered b/s"
    );
    let mut rows = r.node_pairs.clone();
    rows.sort_by(|x, y| x.served_fraction.total_cmp(&y.served_fraction));
    for p in rows.iter().take(20) {
        println!(
            "{:<14} {:<14} {:>9} {:>7.1}% {:>14.1}",
            p.a,
            p.b,
            p.requests,
            100.0 * p.served_fraction,
            p.delivered_bps
        );
    }
    if rows.len() > 20 {
        println!("({} more node pairs in --json)", rows.len() - 20);
    }
    out
}
