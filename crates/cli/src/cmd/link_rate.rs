//! `kagi link-rate`: secret key rate against distance for the QKD link models of
//! `kagi-quantum`, as a table, JSON, or an SVG/PNG plot with a log axis.
//!
//! Flags use the literature's names. A flag that none of the chosen protocols uses is an
//! error rather than silently ignored. Defaults are each model's documented defaults
//! (docs/LINK-MODELS.md).

mod plot;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use kagi_quantum::repeater::{HeraldScheme, RepeaterParams, RepeaterSegment};
use kagi_quantum::satellite::{SatelliteLink, SatelliteParams};
use kagi_quantum::{
    CvGg02, CvGg02Params, DecoyBb84, DecoyBb84Params, DecoyMethod, Detection, FiniteDecoyBb84,
    FiniteDecoyBb84Params, LinkModel, RatePoint, TfSns, TfSnsParams,
};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// Protocols of `kagi link-rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Decoy-state BB84, vacuum + weak decoy (Ma, Qi, Zhao, Lo 2005).
    Bb84Decoy,
    /// Decoy-state BB84, infinite-decoy limit.
    Bb84DecoyInf,
    /// Finite-key decoy-state BB84 (Lim, Curty, Walenta, Xu, Zbinden 2014).
    Bb84Finite,
    /// CV-QKD GG02, reverse reconciliation, collective attacks.
    CvGg02,
    /// Twin-field QKD, sending-or-not-sending (Wang, Yu, Hu 2018).
    TfSns,
    /// LEO satellite downlink: key per pass and per day.
    Satellite,
    /// Memory-based repeater segment: entanglement events per second.
    Repeater,
}

/// Bob's CV detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectionArg {
    /// Homodyne (one quadrature).
    Homodyne,
    /// Heterodyne (both quadratures).
    Heterodyne,
}

/// Repeater heralding scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemeArg {
    /// Two-photon (Barrett–Kok).
    TwoPhoton,
    /// Single-photon (Cabrillo), with --alpha-b.
    SinglePhoton,
}

/// Arguments of `kagi link-rate`.
#[derive(clap::Args, Debug)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  kagi link-rate --protocol bb84-decoy --distance 0:200:10\n  \
    kagi link-rate --protocol bb84-decoy,tf-sns,cv-gg02 --distance 0:500:5 --plot rates.svg\n  \
    kagi link-rate --protocol bb84-finite --n-x 1e8 --distance 50 --json\n  \
    kagi link-rate --protocol satellite --altitude 500 --weather-outage 0.3\n  \
    kagi link-rate --protocol repeater --distance 10:50:10 --modes 100"
)]
pub struct Args {
    /// Protocols (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    protocol: Vec<Protocol>,
    /// Distance in km: one value (`50`) or `start:end:step` (`0:200:10`).
    #[arg(long)]
    distance: Option<String>,
    /// Print one JSON array of rows instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw rate against distance (log axis) into FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Plot bit/s instead of bit per pulse (PLOB drawn at the first protocol's pulse rate).
    #[arg(long, requires = "plot")]
    plot_bps: bool,

    // ---- fibre and detector ----
    /// Fibre attenuation α, dB/km.
    #[arg(long)]
    alpha: Option<f64>,
    /// Bob's efficiency η_Bob (transmittance × detector efficiency).
    #[arg(long)]
    eta_bob: Option<f64>,
    /// Background yield Y0 per pulse (both detectors).
    #[arg(long)]
    y0: Option<f64>,
    /// Misalignment error e_d (e_mis for bb84-finite).
    #[arg(long)]
    e_d: Option<f64>,
    /// Error-correction inefficiency f.
    #[arg(long)]
    f: Option<f64>,
    /// Sifting factor q.
    #[arg(long)]
    q: Option<f64>,
    /// Signal intensity μ (μ1 for bb84-finite; fixes μ for tf-sns).
    #[arg(long)]
    mu: Option<f64>,
    /// Decoy intensity ν (μ2 for bb84-finite).
    #[arg(long)]
    nu: Option<f64>,
    /// Afterpulse probability p_ap.
    #[arg(long)]
    p_ap: Option<f64>,
    /// Detector dead time, s.
    #[arg(long)]
    dead_time: Option<f64>,
    /// Dark-count probability p_dc per detector per window (bb84-finite).
    #[arg(long)]
    p_dc: Option<f64>,
    /// Repetition (symbol) rate, Hz.
    #[arg(long)]
    rep_rate: Option<f64>,
    /// Dark-count rate per detector, Hz; with --time-window sets Y0 (two detectors),
    /// p_dc or p_d per window.
    #[arg(long, requires = "time_window")]
    dark_count_rate: Option<f64>,
    /// Detection time window (gate width), s.
    #[arg(long, requires = "dark_count_rate")]
    time_window: Option<f64>,

    // ---- finite key ----
    /// Block size n_X (detected X-basis events per block).
    #[arg(long)]
    n_x: Option<f64>,
    /// Secrecy parameter ε_sec.
    #[arg(long)]
    eps_sec: Option<f64>,
    /// Correctness parameter ε_cor.
    #[arg(long)]
    eps_cor: Option<f64>,
    /// Secrecy per key bit κ: ε_sec = κ·ℓ (Lim et al. 2014 use 1e-15); overrides --eps-sec.
    #[arg(long)]
    kappa: Option<f64>,
    /// X-basis probability p_X = q_x (fixes it for bb84-finite).
    #[arg(long)]
    p_x: Option<f64>,
    /// Weakest intensity μ3 (bb84-finite; fixes the intensities).
    #[arg(long)]
    mu3: Option<f64>,
    /// Probability p_μ1 of the signal intensity (bb84-finite; fixes it, p_μ3 = 1 − p_μ1 − p_μ2).
    #[arg(long)]
    p_mu1: Option<f64>,
    /// Probability p_μ2 of the decoy intensity (bb84-finite; fixes it).
    #[arg(long)]
    p_mu2: Option<f64>,

    // ---- CV-QKD ----
    /// Modulation variance V_A, shot-noise units.
    #[arg(long)]
    va: Option<f64>,
    /// Excess noise ξ at the channel input, shot-noise units.
    #[arg(long)]
    xi: Option<f64>,
    /// Detector efficiency η (CV, trusted).
    #[arg(long)]
    eta_det: Option<f64>,
    /// Electronic noise v_el, shot-noise units (trusted).
    #[arg(long)]
    v_el: Option<f64>,
    /// Reconciliation efficiency β.
    #[arg(long)]
    beta: Option<f64>,
    /// Homodyne or heterodyne detection.
    #[arg(long, value_enum)]
    detection: Option<DetectionArg>,

    // ---- twin field ----
    /// Sending probability ε (fixes it).
    #[arg(long)]
    eps: Option<f64>,
    /// Detector efficiency η_d at Charlie.
    #[arg(long)]
    eta_d: Option<f64>,
    /// Dark-count probability p_d per detector per window.
    #[arg(long)]
    p_d: Option<f64>,

    // ---- satellite ----
    /// Orbit altitude, km.
    #[arg(long)]
    altitude: Option<f64>,
    /// Minimum tracking elevation, degrees.
    #[arg(long)]
    min_elevation: Option<f64>,
    /// Culmination elevation of the pass, degrees.
    #[arg(long)]
    max_elevation: Option<f64>,
    /// Full-angle beam divergence, µrad.
    #[arg(long)]
    divergence: Option<f64>,
    /// Receive aperture diameter, m.
    #[arg(long)]
    rx_aperture: Option<f64>,
    /// Transmit aperture diameter, m.
    #[arg(long)]
    tx_aperture: Option<f64>,
    /// Atmospheric transmittance at zenith.
    #[arg(long)]
    zenith_transmittance: Option<f64>,
    /// Pointing and optics loss, dB.
    #[arg(long)]
    fixed_loss: Option<f64>,
    /// Usable passes per day.
    #[arg(long, conflicts_with = "latitude")]
    passes_per_day: Option<f64>,
    /// Ground-station latitude, degrees: passes per day from polar-orbit geometry (night
    /// passes only: half of them).
    #[arg(long)]
    latitude: Option<f64>,
    /// Probability that a pass is lost to weather.
    #[arg(long)]
    weather_outage: Option<f64>,
    /// Print every N-th second of the pass (table and JSON samples).
    #[arg(long, default_value_t = 30)]
    sample_every: usize,

    // ---- repeater ----
    /// Memory photon emission and collection efficiency.
    #[arg(long)]
    eta_emit: Option<f64>,
    /// Local attempt-rate limit per mode, Hz.
    #[arg(long)]
    max_attempt_rate: Option<f64>,
    /// Multiplexed memory modes.
    #[arg(long)]
    modes: Option<u32>,
    /// Memory coherence time, s.
    #[arg(long)]
    coherence_time: Option<f64>,
    /// Heralding scheme.
    #[arg(long, value_enum)]
    scheme: Option<SchemeArg>,
    /// Bright-state population α_b (single-photon scheme).
    #[arg(long)]
    alpha_b: Option<f64>,
}

/// Which protocols use a flag.
fn flag_users(a: &Args) -> Vec<(&'static str, bool, &'static [Protocol])> {
    use Protocol::*;
    const FIBRE: &[Protocol] = &[Bb84Decoy, Bb84DecoyInf, Bb84Finite, CvGg02, TfSns, Repeater];
    const BB84: &[Protocol] = &[Bb84Decoy, Bb84DecoyInf, Satellite];
    const BB84F: &[Protocol] = &[Bb84Decoy, Bb84DecoyInf, Bb84Finite, Satellite];
    vec![
        ("--alpha", a.alpha.is_some(), FIBRE),
        ("--eta-bob", a.eta_bob.is_some(), BB84F),
        ("--y0", a.y0.is_some(), BB84),
        (
            "--e-d",
            a.e_d.is_some(),
            &[Bb84Decoy, Bb84DecoyInf, Bb84Finite, TfSns, Satellite],
        ),
        (
            "--f",
            a.f.is_some(),
            &[Bb84Decoy, Bb84DecoyInf, Bb84Finite, TfSns, Satellite],
        ),
        ("--q", a.q.is_some(), BB84),
        (
            "--mu",
            a.mu.is_some(),
            &[Bb84Decoy, Bb84DecoyInf, Bb84Finite, TfSns, Satellite],
        ),
        ("--nu", a.nu.is_some(), BB84F),
        ("--p-ap", a.p_ap.is_some(), BB84F),
        ("--dead-time", a.dead_time.is_some(), BB84),
        ("--p-dc", a.p_dc.is_some(), &[Bb84Finite]),
        (
            "--rep-rate",
            a.rep_rate.is_some(),
            &[
                Bb84Decoy,
                Bb84DecoyInf,
                Bb84Finite,
                CvGg02,
                TfSns,
                Satellite,
            ],
        ),
        ("--n-x", a.n_x.is_some(), &[Bb84Finite]),
        ("--eps-sec", a.eps_sec.is_some(), &[Bb84Finite]),
        ("--eps-cor", a.eps_cor.is_some(), &[Bb84Finite]),
        ("--kappa", a.kappa.is_some(), &[Bb84Finite]),
        ("--p-x", a.p_x.is_some(), &[Bb84Finite]),
        ("--mu3", a.mu3.is_some(), &[Bb84Finite]),
        ("--p-mu1", a.p_mu1.is_some(), &[Bb84Finite]),
        ("--p-mu2", a.p_mu2.is_some(), &[Bb84Finite]),
        ("--va", a.va.is_some(), &[CvGg02]),
        ("--xi", a.xi.is_some(), &[CvGg02]),
        ("--eta-det", a.eta_det.is_some(), &[CvGg02, Repeater]),
        ("--v-el", a.v_el.is_some(), &[CvGg02]),
        ("--beta", a.beta.is_some(), &[CvGg02]),
        ("--detection", a.detection.is_some(), &[CvGg02]),
        ("--eps", a.eps.is_some(), &[TfSns]),
        ("--eta-d", a.eta_d.is_some(), &[TfSns]),
        ("--p-d", a.p_d.is_some(), &[TfSns]),
        ("--altitude", a.altitude.is_some(), &[Satellite]),
        ("--min-elevation", a.min_elevation.is_some(), &[Satellite]),
        ("--max-elevation", a.max_elevation.is_some(), &[Satellite]),
        ("--divergence", a.divergence.is_some(), &[Satellite]),
        ("--rx-aperture", a.rx_aperture.is_some(), &[Satellite]),
        ("--tx-aperture", a.tx_aperture.is_some(), &[Satellite]),
        (
            "--zenith-transmittance",
            a.zenith_transmittance.is_some(),
            &[Satellite],
        ),
        ("--fixed-loss", a.fixed_loss.is_some(), &[Satellite]),
        ("--passes-per-day", a.passes_per_day.is_some(), &[Satellite]),
        ("--weather-outage", a.weather_outage.is_some(), &[Satellite]),
        ("--latitude", a.latitude.is_some(), &[Satellite]),
        (
            "--dark-count-rate",
            a.dark_count_rate.is_some(),
            &[Bb84Decoy, Bb84DecoyInf, Bb84Finite, TfSns, Satellite],
        ),
        ("--eta-emit", a.eta_emit.is_some(), &[Repeater]),
        (
            "--max-attempt-rate",
            a.max_attempt_rate.is_some(),
            &[Repeater],
        ),
        ("--modes", a.modes.is_some(), &[Repeater]),
        ("--coherence-time", a.coherence_time.is_some(), &[Repeater]),
        ("--scheme", a.scheme.is_some(), &[Repeater]),
        ("--alpha-b", a.alpha_b.is_some(), &[Repeater]),
        ("--distance", a.distance.is_some(), FIBRE),
    ]
}

fn set<T: Copy>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

/// Parses `50` or `start:end:step` (km, end inclusive).
pub fn parse_distances(s: &str) -> Result<Vec<f64>> {
    let num = |t: &str| -> Result<f64> {
        let v: f64 = t
            .trim()
            .parse()
            .with_context(|| format!("--distance: `{t}` is not a number"))?;
        if !v.is_finite() || v < 0.0 {
            bail!("--distance: {v} km is not a non-negative length");
        }
        Ok(v)
    };
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [one] => Ok(vec![num(one)?]),
        [a, b, step] => {
            let (a, b, step) = (num(a)?, num(b)?, num(step)?);
            if step <= 0.0 {
                bail!("--distance: step must be greater than 0");
            }
            if b < a {
                bail!("--distance: end {b} is below start {a}");
            }
            let n = ((b - a) / step + 1e-9).floor() as usize + 1;
            if n > 100_000 {
                bail!("--distance: {n} points is too many (at most 100000)");
            }
            Ok((0..n).map(|i| a + i as f64 * step).collect())
        }
        _ => bail!("--distance: expected `50` or `start:end:step`, got `{s}`"),
    }
}

/// Dark-count probability per detector per window from --dark-count-rate × --time-window.
fn p_dark(a: &Args) -> Option<f64> {
    match (a.dark_count_rate, a.time_window) {
        (Some(r), Some(w)) => Some(r * w),
        _ => None,
    }
}

fn decoy_params(a: &Args) -> DecoyBb84Params {
    let mut p = DecoyBb84Params::default();
    if let Some(pd) = p_dark(a) {
        p.y0 = 1.0 - (1.0 - pd.clamp(0.0, 1.0)).powi(2);
    }
    set(&mut p.alpha_db_per_km, a.alpha);
    set(&mut p.eta_bob, a.eta_bob);
    set(&mut p.y0, a.y0);
    set(&mut p.e_d, a.e_d);
    set(&mut p.f, a.f);
    set(&mut p.q, a.q);
    set(&mut p.mu, a.mu);
    set(&mut p.nu, a.nu);
    set(&mut p.p_ap, a.p_ap);
    set(&mut p.dead_time_s, a.dead_time);
    set(&mut p.rep_rate_hz, a.rep_rate);
    p
}

/// Builds the rate model of a fibre protocol from the flags.
fn model(proto: Protocol, a: &Args) -> Result<Box<dyn LinkModel>> {
    Ok(match proto {
        Protocol::Bb84Decoy => Box::new(DecoyBb84::new(decoy_params(a), DecoyMethod::VacuumWeak)?),
        Protocol::Bb84DecoyInf => Box::new(DecoyBb84::infinite(decoy_params(a))?),
        Protocol::Bb84Finite => {
            let mut p = FiniteDecoyBb84Params::default();
            set(&mut p.alpha_db_per_km, a.alpha);
            set(&mut p.eta_bob, a.eta_bob);
            set(&mut p.p_dc, p_dark(a));
            set(&mut p.p_dc, a.p_dc);
            set(&mut p.p_ap, a.p_ap);
            set(&mut p.e_mis, a.e_d);
            set(&mut p.f, a.f);
            set(&mut p.mu[0], a.mu);
            set(&mut p.mu[1], a.nu);
            set(&mut p.mu[2], a.mu3);
            set(&mut p.p_mu[0], a.p_mu1);
            set(&mut p.p_mu[1], a.p_mu2);
            p.p_mu[2] = 1.0 - p.p_mu[0] - p.p_mu[1];
            set(&mut p.p_x, a.p_x);
            set(&mut p.n_x, a.n_x);
            set(&mut p.eps_sec, a.eps_sec);
            set(&mut p.eps_cor, a.eps_cor);
            if a.kappa.is_some() {
                p.kappa = a.kappa;
            }
            set(&mut p.rep_rate_hz, a.rep_rate);
            // Fixing an intensity or p_X by hand turns the optimiser off.
            if a.mu.is_some()
                || a.nu.is_some()
                || a.p_x.is_some()
                || a.mu3.is_some()
                || a.p_mu1.is_some()
                || a.p_mu2.is_some()
            {
                p.optimize = false;
            }
            Box::new(FiniteDecoyBb84::new(p)?)
        }
        Protocol::CvGg02 => {
            let mut p = CvGg02Params::default();
            set(&mut p.alpha_db_per_km, a.alpha);
            set(&mut p.v_a, a.va);
            set(&mut p.xi, a.xi);
            set(&mut p.eta_det, a.eta_det);
            set(&mut p.v_el, a.v_el);
            set(&mut p.beta, a.beta);
            set(&mut p.rep_rate_hz, a.rep_rate);
            if let Some(d) = a.detection {
                p.detection = match d {
                    DetectionArg::Homodyne => Detection::Homodyne,
                    DetectionArg::Heterodyne => Detection::Heterodyne,
                };
            }
            Box::new(CvGg02::new(p)?)
        }
        Protocol::TfSns => {
            let mut p = TfSnsParams::default();
            set(&mut p.alpha_db_per_km, a.alpha);
            set(&mut p.eta_d, a.eta_d);
            set(&mut p.p_d, p_dark(a));
            set(&mut p.p_d, a.p_d);
            set(&mut p.e_d, a.e_d);
            set(&mut p.f, a.f);
            set(&mut p.mu, a.mu);
            set(&mut p.eps, a.eps);
            set(&mut p.rep_rate_hz, a.rep_rate);
            if a.mu.is_some() || a.eps.is_some() {
                p.optimize = false;
            }
            Box::new(TfSns::new(p)?)
        }
        Protocol::Satellite | Protocol::Repeater => unreachable!("not a fibre rate model"),
    })
}

fn row_json(proto: &str, p: &RatePoint) -> Value {
    let mut m = Map::new();
    m.insert("protocol".into(), json!(proto));
    m.insert("distance_km".into(), json!(p.distance_km));
    m.insert("rate_per_pulse".into(), json!(p.rate_per_pulse));
    m.insert("rate_bps".into(), json!(p.rate_bps));
    // JSON has no infinity: the PLOB bound at 0 km is written as null.
    m.insert(
        "plob_per_use".into(),
        if p.plob_per_use.is_finite() {
            json!(p.plob_per_use)
        } else {
            Value::Null
        },
    );
    for (k, v) in &p.intermediates {
        m.insert(
            (*k).into(),
            if v.is_finite() { json!(v) } else { Value::Null },
        );
    }
    Value::Object(m)
}

fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v:.4e}")
    }
}

/// Checks the flag combination; returns the protocols, deduplicated.
fn validate(a: &Args) -> Result<Vec<Protocol>> {
    let mut protos = a.protocol.clone();
    protos.dedup();
    for (flag, given, users) in flag_users(a) {
        if given && !protos.iter().any(|p| users.contains(p)) {
            let names: Vec<String> = users
                .iter()
                .map(|p| {
                    p.to_possible_value()
                        .map(|v| v.get_name().to_string())
                        .unwrap_or_default()
                })
                .collect();
            bail!(
                "{flag} is not used by the chosen protocol(s); it applies to: {}",
                names.join(", ")
            );
        }
    }
    let special = protos
        .iter()
        .filter(|p| matches!(p, Protocol::Satellite | Protocol::Repeater))
        .count();
    if special > 0 && protos.len() > 1 {
        bail!(
            "--protocol satellite and repeater cannot be combined with other protocols in one run"
        );
    }
    Ok(protos)
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<()> {
    let protos = validate(&a)?;
    match protos[0] {
        Protocol::Satellite => return run_satellite(&a),
        Protocol::Repeater => return run_repeater(&a),
        _ => {}
    }
    let default_range = if protos.contains(&Protocol::TfSns) {
        "0:600:10"
    } else {
        "0:200:5"
    };
    let distances = parse_distances(a.distance.as_deref().unwrap_or(default_range))?;
    let mut rows = Vec::new();
    let mut series = Vec::new();
    let mut plob = Vec::new();
    let mut plob_label = String::new();
    for &proto in &protos {
        let m = model(proto, &a)?;
        let scale = if a.plot_bps {
            m.repetition_rate_hz()
        } else {
            1.0
        };
        let mut pts = Vec::new();
        let first = plob.is_empty();
        for &d in &distances {
            let p = m.evaluate(d)?;
            pts.push((d, p.rate_per_pulse * scale));
            if first {
                plob.push((d, p.plob_per_use * scale));
            }
            rows.push((m.name(), p));
        }
        if first {
            plob_label = if a.plot_bps {
                format!(
                    "PLOB ({} dB/km, {:.3e} Hz)",
                    m.alpha_db_per_km(),
                    m.repetition_rate_hz()
                )
            } else {
                format!("PLOB bound ({} dB/km)", m.alpha_db_per_km())
            };
        }
        series.push(plot::Series {
            label: m.name().to_string(),
            points: pts,
            dashed: false,
        });
    }
    if let Some(path) = &a.plot {
        series.push(plot::Series {
            label: plob_label,
            points: plob,
            dashed: true,
        });
        let p = plot::Plot {
            title: "Secret key rate against distance".into(),
            x_label: "distance (km)".into(),
            y_label: if a.plot_bps {
                "secret key rate (bit/s)".into()
            } else {
                "secret key rate (bit per pulse)".into()
            },
            series,
        };
        write_plot(path, &p)?;
    }
    if a.json {
        let v: Vec<Value> = rows.iter().map(|(n, p)| row_json(n, p)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut last = "";
    for (name, p) in &rows {
        if *name != last {
            if !last.is_empty() {
                println!();
            }
            println!("# {name}");
            let inter: Vec<String> = p
                .intermediates
                .iter()
                .map(|(k, _)| format!("{k:>12}"))
                .collect();
            println!(
                "{:>11} {:>14} {:>12} {:>12} {}",
                "distance_km",
                "rate_per_pulse",
                "rate_bps",
                "plob_per_use",
                inter.join(" ")
            );
            last = name;
        }
        let inter: Vec<String> = p
            .intermediates
            .iter()
            .map(|(_, v)| format!("{:>12}", sci(*v)))
            .collect();
        println!(
            "{:>11.2} {:>14} {:>12} {:>12} {}",
            p.distance_km,
            sci(p.rate_per_pulse),
            sci(p.rate_bps),
            sci(p.plob_per_use),
            inter.join(" ")
        );
    }
    Ok(())
}

fn write_plot(path: &std::path::Path, p: &plot::Plot) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = match ext.as_deref() {
        Some("svg") => p.to_svg().into_bytes(),
        Some("png") => p.to_png(),
        _ => bail!("--plot: {} must end in .svg or .png", path.display()),
    };
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn run_satellite(a: &Args) -> Result<()> {
    let mut p = SatelliteParams::default();
    set(&mut p.altitude_km, a.altitude);
    set(&mut p.min_elevation_deg, a.min_elevation);
    set(&mut p.max_elevation_deg, a.max_elevation);
    set(&mut p.divergence_urad, a.divergence);
    set(&mut p.rx_aperture_m, a.rx_aperture);
    set(&mut p.tx_aperture_m, a.tx_aperture);
    set(&mut p.zenith_transmittance, a.zenith_transmittance);
    set(&mut p.fixed_loss_db, a.fixed_loss);
    set(&mut p.passes_per_day, a.passes_per_day);
    set(&mut p.weather_outage, a.weather_outage);
    set(&mut p.link.eta_bob, a.eta_bob);
    if let Some(pd) = p_dark(a) {
        p.link.y0 = 1.0 - (1.0 - pd.clamp(0.0, 1.0)).powi(2);
    }
    if let Some(lat) = a.latitude {
        if !(lat.is_finite() && lat.abs() < 90.0) {
            bail!("--latitude must lie strictly between -90 and 90 degrees, got {lat}");
        }
        p.passes_per_day = 0.5
            * kagi_quantum::satellite::polar_passes_per_day(
                p.altitude_km,
                p.min_elevation_deg,
                lat,
            );
    }
    set(&mut p.link.y0, a.y0);
    set(&mut p.link.e_d, a.e_d);
    set(&mut p.link.f, a.f);
    set(&mut p.link.q, a.q);
    set(&mut p.link.mu, a.mu);
    set(&mut p.link.nu, a.nu);
    set(&mut p.link.p_ap, a.p_ap);
    set(&mut p.link.dead_time_s, a.dead_time);
    set(&mut p.link.rep_rate_hz, a.rep_rate);
    let link = SatelliteLink::new(p)?;
    let s = link.pass();
    let every = a.sample_every.max(1);
    let samples: Vec<_> = s.samples.iter().step_by(every).collect();
    if let Some(path) = &a.plot {
        // Rate against time through the pass (both halves).
        let mut pts: Vec<(f64, f64)> = s
            .samples
            .iter()
            .rev()
            .map(|x| (-x.time_s, x.rate_bps))
            .collect();
        pts.extend(s.samples.iter().skip(1).map(|x| (x.time_s, x.rate_bps)));
        let pl = plot::Plot {
            title: format!("Satellite pass: {:.0} kbit per pass", s.key_bits / 1e3),
            x_label: "time from culmination (s)".into(),
            y_label: "secret key rate (bit/s)".into(),
            series: vec![plot::Series {
                label: "satellite downlink".into(),
                points: pts,
                dashed: false,
            }],
        };
        write_plot(path, &pl)?;
    }
    if a.json {
        let v = json!({
            "protocol": "satellite",
            "pass_duration_s": s.duration_s,
            "key_bits_per_pass": s.key_bits,
            "mean_key_bits_per_pass": s.mean_key_bits_per_pass,
            "key_bits_per_day": s.key_bits_per_day,
            "passes_per_day": p.passes_per_day,
            "weather_outage": p.weather_outage,
            "loss_db_min": s.loss_db_range.0,
            "loss_db_max": s.loss_db_range.1,
            "range_km_min": s.range_km_range.0,
            "range_km_max": s.range_km_range.1,
            "samples": samples.iter().map(|x| json!({
                "time_s": x.time_s, "elevation_deg": x.elevation_deg, "range_km": x.range_km,
                "loss_db": x.loss_db, "rate_bps": x.rate_bps,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "# satellite: {:.0} km orbit, pass above {:.0}° lasts {:.0} s (culmination {:.0}°)",
        p.altitude_km, p.min_elevation_deg, s.duration_s, p.max_elevation_deg
    );
    println!(
        "# channel loss {:.1}–{:.1} dB over slant range {:.0}–{:.0} km",
        s.loss_db_range.0, s.loss_db_range.1, s.range_km_range.0, s.range_km_range.1
    );
    println!(
        "# key this pass {:.4e} bit; mean pass {:.4e} bit; per day {:.4e} bit ({:.2} passes, weather outage {})",
        s.key_bits, s.mean_key_bits_per_pass, s.key_bits_per_day, p.passes_per_day, p.weather_outage
    );
    println!(
        "{:>8} {:>13} {:>9} {:>8} {:>12}",
        "time_s", "elevation_deg", "range_km", "loss_db", "rate_bps"
    );
    for x in samples {
        println!(
            "{:>8.0} {:>13.1} {:>9.1} {:>8.2} {:>12}",
            x.time_s,
            x.elevation_deg,
            x.range_km,
            x.loss_db,
            sci(x.rate_bps)
        );
    }
    Ok(())
}

fn run_repeater(a: &Args) -> Result<()> {
    let mut p = RepeaterParams::default();
    set(&mut p.alpha_db_per_km, a.alpha);
    set(&mut p.eta_emit, a.eta_emit);
    set(&mut p.eta_det, a.eta_det);
    set(&mut p.max_attempt_rate_hz, a.max_attempt_rate);
    set(&mut p.modes, a.modes);
    set(&mut p.coherence_time_s, a.coherence_time);
    match (a.scheme, a.alpha_b) {
        (Some(SchemeArg::SinglePhoton), ab) => {
            p.scheme = HeraldScheme::SinglePhoton {
                alpha_b: ab.unwrap_or(0.1),
            }
        }
        (_, Some(_)) => bail!("--alpha-b needs --scheme single-photon"),
        _ => {}
    }
    let seg = RepeaterSegment::new(p)?;
    let distances = parse_distances(a.distance.as_deref().unwrap_or("10:100:10"))?;
    let pts: Vec<_> = distances
        .iter()
        .map(|&d| seg.evaluate(d))
        .collect::<Result<_, _>>()?;
    if let Some(path) = &a.plot {
        let pl = plot::Plot {
            title: "Repeater segment: heralded entanglement".into(),
            x_label: "segment length (km)".into(),
            y_label: "entanglement events per second".into(),
            series: vec![plot::Series {
                label: "repeater segment".into(),
                points: pts.iter().map(|x| (x.length_km, x.events_per_s)).collect(),
                dashed: false,
            }],
        };
        write_plot(path, &pl)?;
    }
    if a.json {
        let v: Vec<Value> = pts
            .iter()
            .map(|x| {
                json!({
                    "protocol": "repeater", "distance_km": x.length_km,
                    "attempt_rate_hz": x.attempt_rate_hz, "eta_arm": x.eta_arm,
                    "success_probability": x.success_probability, "events_per_s": x.events_per_s,
                    "herald_delay_s": x.herald_delay_s, "fidelity": x.fidelity,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "# repeater segment ({:?}, {} mode(s), T_coh {} s)",
        p.scheme, p.modes, p.coherence_time_s
    );
    println!(
        "{:>11} {:>15} {:>12} {:>19} {:>12} {:>9}",
        "distance_km",
        "attempt_rate_hz",
        "eta_arm",
        "success_probability",
        "events_per_s",
        "fidelity"
    );
    for x in pts {
        println!(
            "{:>11.2} {:>15} {:>12} {:>19} {:>12} {:>9.4}",
            x.length_km,
            sci(x.attempt_rate_hz),
            sci(x.eta_arm),
            sci(x.success_probability),
            sci(x.events_per_s),
            x.fidelity
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    /// JSON rows as `--json` prints them, for fibre protocols.
    fn rows(args: &[&str]) -> Result<Vec<Value>> {
        let mut argv = vec!["kagi-link-rate"];
        argv.extend_from_slice(args);
        let a = T::try_parse_from(argv)?.a;
        let protos = validate(&a)?;
        let distances = parse_distances(a.distance.as_deref().unwrap_or("0:100:50"))?;
        let mut out = Vec::new();
        for p in protos {
            let m = model(p, &a)?;
            for &d in &distances {
                out.push(row_json(m.name(), &m.evaluate(d)?));
            }
        }
        Ok(out)
    }

    #[test]
    fn json_rows_have_the_documented_fields() {
        let r = rows(&[
            "--protocol",
            "bb84-decoy,bb84-decoy-inf,bb84-finite,cv-gg02,tf-sns",
        ])
        .unwrap();
        assert_eq!(r.len(), 5 * 3);
        for row in &r {
            for k in [
                "protocol",
                "distance_km",
                "rate_per_pulse",
                "rate_bps",
                "plob_per_use",
            ] {
                assert!(row.get(k).is_some(), "{k} missing in {row}");
            }
            let d = row["distance_km"].as_f64().unwrap();
            // PLOB is infinite at 0 km and written as null; elsewhere a number.
            assert_eq!(row["plob_per_use"].is_null(), d == 0.0, "{row}");
        }
        let bb84 = &r[1];
        assert_eq!(bb84["protocol"], "bb84-decoy");
        for k in ["gain", "qber", "y1_lower", "e1_upper"] {
            assert!(bb84[k].as_f64().unwrap() > 0.0, "{k}");
        }
        // rate_bps = rate_per_pulse × 1 GHz for the default BB84 link.
        let (rp, rb) = (
            bb84["rate_per_pulse"].as_f64().unwrap(),
            bb84["rate_bps"].as_f64().unwrap(),
        );
        assert!((rb / rp - 1e9).abs() < 1.0);
    }

    #[test]
    fn flags_reach_the_models_and_bad_input_is_an_error() {
        let base = rows(&["--protocol", "bb84-decoy", "--distance", "50"]).unwrap();
        let lossy = rows(&[
            "--protocol",
            "bb84-decoy",
            "--distance",
            "50",
            "--alpha",
            "0.3",
        ])
        .unwrap();
        assert!(lossy[0]["rate_per_pulse"].as_f64() < base[0]["rate_per_pulse"].as_f64());
        let e = rows(&["--protocol", "bb84-decoy", "--mu", "0.1", "--nu", "0.2"]).unwrap_err();
        assert!(e.to_string().contains("mu > nu"), "{e}");
        let e = rows(&["--protocol", "bb84-decoy", "--alpha", "-0.2"]).unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
        let e = rows(&["--protocol", "bb84-decoy", "--va", "4"]).unwrap_err();
        assert!(e.to_string().contains("--va"), "{e}");
        let e = rows(&["--protocol", "tf-sns", "--eps", "1.5"]).unwrap_err();
        assert!(e.to_string().contains("eps"), "{e}");
        assert!(rows(&["--protocol", "satellite,bb84-decoy"]).is_err());
        assert!(rows(&["--protocol", "nonsense"]).is_err());
    }

    #[test]
    fn finite_key_fixed_parameters_match_the_topology_link() {
        // μ1, μ2, μ3, p_μ1, p_μ2, q_x fixed by flags give the same rate as a topology link with
        // the same parameter names (one set of names for planning and for the network).
        let flags = [
            ("mu", 0.6),
            ("nu", 0.15),
            ("mu3", 3e-4),
            ("p-mu1", 0.8),
            ("p-mu2", 0.15),
            ("p-x", 0.85),
            ("n-x", 1e9),
        ];
        let mut argv = vec![
            "--protocol".to_string(),
            "bb84-finite".into(),
            "--distance".into(),
            "50".into(),
        ];
        for (k, v) in flags {
            argv.push(format!("--{k}"));
            argv.push(v.to_string());
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let r = rows(&argv).unwrap();
        assert_eq!(r[0]["mu1"].as_f64(), Some(0.6));
        assert_eq!(r[0]["p_x"].as_f64(), Some(0.85));
        let cli = r[0]["rate_bps"].as_f64().unwrap();
        let params = flags
            .iter()
            .map(|(k, v)| (k.to_string(), kagi_quantum::tech::ParamValue::Num(*v)))
            .collect();
        let topo = kagi_quantum::tech::LinkTech::from_params("bb84-finite", &params)
            .unwrap()
            .mean_rate_bps(50.0);
        // The topology delivers whole key bits per block (ℓ rounded down).
        assert!(
            cli > 0.0 && (cli / topo - 1.0).abs() < 1e-6,
            "{cli} vs {topo}"
        );
        let optimised = rows(&["--protocol", "bb84-finite", "--distance", "50"]).unwrap();
        assert!(optimised[0]["rate_bps"].as_f64().unwrap() >= cli);
        let e = rows(&[
            "--protocol",
            "bb84-finite",
            "--p-mu1",
            "0.95",
            "--p-mu2",
            "0.1",
        ]);
        assert!(e.is_err());
        assert!(rows(&["--protocol", "bb84-decoy", "--mu3", "0.001"]).is_err());
    }

    #[test]
    fn distance_ranges() {
        assert_eq!(parse_distances("50").unwrap(), vec![50.0]);
        assert_eq!(parse_distances("0:20:10").unwrap(), vec![0.0, 10.0, 20.0]);
        assert_eq!(parse_distances("0:0.3:0.1").unwrap().len(), 4);
        assert!(parse_distances("-5").is_err());
        assert!(parse_distances("10:0:1").is_err());
        assert!(parse_distances("0:10:0").is_err());
        assert!(parse_distances("a:b").is_err());
    }
}
