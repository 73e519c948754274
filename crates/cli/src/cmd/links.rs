//! `kagi links`: each link of a topology with its technology, mean key rate and how its key
//! arrives; for satellite links, the coming pass windows with each station's weather that day
//! (the status an operator asks for: "when is the next pass?").

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kagi_control::{KeySource, Topology};
use serde_json::{json, Value};

/// Arguments of `kagi links`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kagi links --topology docs/examples/mixed.toml\n  \
    kagi links --data-dir ./kagi-data --hours 12 --json"
)]
pub struct Args {
    /// Topology file (default: DIR/topology.toml of a network started by `kagi up`).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Directory of a network started by `kagi up`.
    #[arg(long, default_value = "./kagi-data")]
    data_dir: PathBuf,
    /// List satellite passes over the next H hours (wall clock).
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Start of the listing, Unix seconds (default: now).
    #[arg(long)]
    at: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<()> {
    let path = a
        .topology
        .clone()
        .unwrap_or_else(|| a.data_dir.join("topology.toml"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let topo = Topology::from_toml(&text)?;
    if !(a.hours.is_finite() && a.hours > 0.0 && a.hours <= 24.0 * 31.0) {
        anyhow::bail!("--hours must be in (0, 744]");
    }
    let now = a.at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    let rows = report(&topo, now, a.hours * 3600.0)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for r in &rows {
        println!(
            "{:<24} {:<11} {:>7.1} km  {:>12} bit/s  source {}",
            format!(
                "{}-{}",
                r["a"].as_str().unwrap_or(""),
                r["b"].as_str().unwrap_or("")
            ),
            r["protocol"].as_str().unwrap_or(""),
            r["length_km"].as_f64().unwrap_or(0.0),
            format!("{:.4e}", r["mean_rate_bps"].as_f64().unwrap_or(0.0)),
            r["source"].as_str().unwrap_or(""),
        );
        if let Some(passes) = r["passes"].as_array() {
            if passes.is_empty() {
                println!("    no pass in the next {} h", a.hours);
            }
            for p in passes.iter().take(12) {
                println!(
                    "    pass over {} in {:>8.1} s, {:>6.1} s long, max elevation {:>4.1}°, {}",
                    p["station"].as_str().unwrap_or(""),
                    p["starts_in_s"].as_f64().unwrap_or(0.0),
                    p["duration_s"].as_f64().unwrap_or(0.0),
                    p["max_elevation_deg"].as_f64().unwrap_or(0.0),
                    if p["clear"].as_bool().unwrap_or(false) {
                        "clear"
                    } else {
                        "cloudy: cancelled"
                    }
                );
            }
            if passes.len() > 12 {
                println!("    … {} more passes (--json lists all)", passes.len() - 12);
            }
        }
    }
    Ok(())
}

/// One JSON row per link; satellite links list their passes in [now, now + span_s).
pub fn report(topo: &Topology, now_unix: f64, span_s: f64) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for l in &topo.links {
        let tech = l
            .technology()
            .map_err(|e| anyhow::anyhow!("link {}-{}: {e}", l.a, l.b))?;
        let source = match l.key_source() {
            Ok(KeySource::Photon) => "photon",
            _ => l.source.as_deref().unwrap_or("rate"),
        };
        let mut row = json!({
            "a": l.a,
            "b": l.b,
            "protocol": tech.name(),
            "length_km": l.length_km,
            "source": source,
            "mean_rate_bps": topo.link_mean_rate_bps(l) * topo.rate_multiplier.max(0.0),
        });
        let sched = topo
            .link_schedule(l, 8192, 0.1)
            .map_err(|e| anyhow::anyhow!("link {}-{}: {e}", l.a, l.b))?;
        if let Some(ps) = sched.passes() {
            let names = [l.a.as_str(), l.b.as_str()];
            let epoch = topo.epoch_unix as f64;
            let mut passes = Vec::new();
            // A demo clock runs the orbit faster: list at most 30 days of orbit time.
            let span_s = span_s.min(30.0 * 86_400.0 / ps.setup().clock_speedup);
            let mut t = now_unix - epoch;
            while let Some(p) = ps.next_pass(t) {
                if p.start_unix >= now_unix + span_s || passes.len() >= 1000 {
                    break;
                }
                // One orbit second past the end: the next search starts outside this pass.
                let speedup = ps.setup().clock_speedup;
                t = p.end_unix - epoch + 1.0 / speedup;
                if (p.end_unix - p.start_unix) * speedup < 0.5 {
                    continue; // the tail of a pass we started inside of
                }
                // With one station the other end is the satellite: name the ground end.
                let a_is_station = l.params.contains_key("lat-a") || l.params.contains_key("lat_a");
                let end = if p.station == 0 && a_is_station {
                    names[0]
                } else {
                    names[1]
                };
                passes.push(json!({
                    "station": end,
                    "start_unix": p.start_unix,
                    "starts_in_s": p.start_unix - now_unix,
                    "duration_s": p.end_unix - p.start_unix,
                    "max_elevation_deg": p.max_elevation_deg,
                    "clear": p.clear,
                }));
            }
            row["passes"] = Value::Array(passes);
        }
        rows.push(row);
    }
    Ok(rows)
}
