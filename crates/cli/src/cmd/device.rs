//! `kagi device`: a simulated QKD device pair serving ETSI GS QKD 014 to the two nodes of one
//! `source = "etsi014"` link, at the link model's key rate (see `kagi_node::device`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use kagi_control::{KeySource, Topology};
use kagi_node::config::TlsConfig;
use kagi_node::device::{DeviceEnd, DevicePairConfig, Fault};

/// Arguments of `kagi device`.
#[derive(clap::Args)]
pub struct Args {
    /// The link, as `A-B` or `A:B` (its two node IDs).
    #[arg(long)]
    pub link: String,
    /// A network directory written by `kagi up`: its `topology.toml`, and a device certificate
    /// issued by its CA (`pki/nodes/device.A.B.pem`). Otherwise give --topology, --ca, --cert
    /// and --key.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The topology file (its `[links.device]` URLs say where each box listens).
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// CA that the nodes' client certificates chain to.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The device's server certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The device's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Secret key rate in bit/s (default: the link model's rate times the topology's
    /// rate_multiplier).
    #[arg(long)]
    pub rate_bps: Option<f64>,
    /// Failure to simulate: none, differ (the two ends return different bytes), wrong-ids,
    /// unavailable (503), slow (answers 30 s late), down (drops connections).
    #[arg(long, default_value = "none")]
    pub fault: Fault,
}

fn split_link(s: &str, topo: &Topology) -> anyhow::Result<(String, String)> {
    for l in &topo.links {
        for (x, y) in [(&l.a, &l.b), (&l.b, &l.a)] {
            if s == format!("{x}-{y}") || s == format!("{x}:{y}") {
                return Ok((l.a.clone(), l.b.clone()));
            }
        }
    }
    bail!("no link {s:?} in the topology (use A-B with the two node IDs)")
}

/// Runs the device pair until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let topo_path = match (&args.topology, &args.data_dir) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => d.join("topology.toml"),
        (None, None) => bail!("give --data-dir (a kagi up directory) or --topology"),
    };
    let text = std::fs::read_to_string(&topo_path)
        .with_context(|| format!("read {}", topo_path.display()))?;
    let topo = Topology::from_toml(&text).with_context(|| format!("{}", topo_path.display()))?;
    let (a, b) = split_link(&args.link, &topo)?;
    let spec = topo.link(&a, &b).context("link")?;
    if spec.key_source().ok() != Some(KeySource::Device) {
        bail!("link {a}-{b}: field source: must be \"etsi014\" for a device link");
    }
    let d = spec.device.clone().unwrap_or_default();
    let (Some(url_a), Some(url_b)) = (d.url_a, d.url_b) else {
        bail!("link {a}-{b}: field device.url_a/url_b: missing (where the two boxes listen)");
    };
    let listen = |u: &str| {
        u.trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned()
    };
    let tls = match (&args.ca, &args.cert, &args.key, &args.data_dir) {
        (Some(ca), Some(cert), Some(key), _) => TlsConfig {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None, None, Some(dir)) => {
            let pki = kagi_node::pki::Pki::open_or_create(&dir.join("pki"))?;
            let p = pki.ensure_node(&format!("device.{a}.{b}"))?;
            TlsConfig {
                ca: pki.ca_cert_path(),
                cert: p.cert,
                key: p.key,
            }
        }
        _ => bail!("give all of --ca, --cert and --key, or --data-dir"),
    };
    let rate_bps = match args.rate_bps {
        Some(r) if r.is_finite() && r >= 0.0 => r,
        Some(_) => bail!("--rate-bps must be a non-negative number"),
        None => topo.link_mean_rate_bps(spec) * topo.rate_multiplier.max(0.0),
    };
    let cfg = DevicePairConfig {
        name: format!("qkd-device-{a}-{b}"),
        ends: [
            DeviceEnd {
                node: a.clone(),
                listen: listen(&url_a),
            },
            DeviceEnd {
                node: b.clone(),
                listen: listen(&url_b),
            },
        ],
        rate_bps,
        fault: args.fault,
        tls,
    };
    println!(
        "kagi device: link {a}-{b}, {rate_bps:.0} bit/s, fault {:?}; {a} at {url_a}, {b} at {url_b}",
        args.fault
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(kagi_node::device::serve_pair(
        cfg,
        super::node::shutdown_signal(),
    ))
}
