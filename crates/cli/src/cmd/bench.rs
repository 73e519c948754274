//! `kagi bench`: throughput and latency benchmarks whose results go in `docs/PERFORMANCE.md`.
//!
//! * `kagi bench etsi`: a real network in this process (real TLS, SQLite, peers, ETSI 014 over
//!   loopback), warm pools, concurrent clients doing `enc_keys` at the master's node and
//!   `dec_keys` at the slave's node; keys/s and p50/p99 latency over 1 and 3 hops.
//! * `kagi bench relay`: the key manager core alone (no I/O), relaying key over an intermediate
//!   node: verify the Wegman–Carter tag, decrypt, re-encrypt, tag again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use kagi_control::Topology;
use kagi_keymat::Key;
use kagi_km::NodeId;
use kagi_km::{Action, Input, KeyManager, KmConfig, Limits, Policy, Snapshot};
use kagi_node::client::Etsi014Client;
use kagi_node::config::PoolConfig;
use kagi_node::etsi014::wire::KeyRequest;

/// Arguments of `kagi bench`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// ETSI 014 enc_keys + dec_keys throughput and latency on a local network.
    Etsi(EtsiArgs),
    /// Raw relay throughput of the key manager core at an intermediate node.
    Relay(RelayArgs),
    /// XKS proxy requests/s and latency, cached and rebuilt from shares (`kagi up --xks`).
    Xks(super::bench_xks::XksArgs),
}

/// Arguments of `kagi bench etsi`.
#[derive(clap::Args)]
struct EtsiArgs {
    /// Concurrent clients (each a master/slave pair of connections).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds to measure, per hop count.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Keys per request.
    #[arg(long, default_value_t = 1)]
    number: u64,
    /// Key size in bits.
    #[arg(long, default_value_t = 256)]
    size: u64,
    /// Hop counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    hops: Vec<usize>,
    /// Demo speed-up of the simulated links (enough key to refill pools during the run).
    #[arg(long, default_value_t = 20.0)]
    rate_multiplier: f64,
    /// Store durability: `full` (fsync per commit, the default) or `normal`.
    #[arg(long, value_enum, default_value = "full")]
    sync: SyncArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// First run the same benchmark with the stores unsealed (values in the clear), then sealed,
    /// and print what sealing costs.
    #[arg(long)]
    unsealed_baseline: bool,
    /// With `--unsealed-baseline`: rounds of (unsealed, sealed), alternating which runs first;
    /// the cost is reported from the best and the median round of each.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

/// Store durability for the benchmark's nodes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SyncArg {
    Full,
    Normal,
}

impl From<SyncArg> for kagi_node::store::Sync {
    fn from(s: SyncArg) -> Self {
        match s {
            SyncArg::Full => Self::Full,
            SyncArg::Normal => Self::Normal,
        }
    }
}

/// Arguments of `kagi bench relay`.
#[derive(clap::Args)]
struct RelayArgs {
    /// Bytes of key per relay.
    #[arg(long, default_value_t = 4096)]
    chunk: u32,
    /// Megabytes of key to relay.
    #[arg(long, default_value_t = 256)]
    megabytes: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Etsi(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(etsi(a))
        }
        What::Relay(a) => relay(a),
        What::Xks(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(super::bench_xks::run(a)),
    }
}

async fn etsi(a: EtsiArgs) -> anyhow::Result<()> {
    if !a.unsealed_baseline {
        let results = etsi_once(&a, false).await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&results)?);
        }
        return Ok(());
    }
    type Run = BTreeMap<String, serde_json::Value>;
    let (mut plain, mut sealed): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
    let rounds = a.repeat.max(1);
    for round in 0..rounds {
        // Alternate which store goes first, so that neither always runs on a machine the other
        // has just warmed (page cache) or loaded (its nodes stopping).
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for unsealed in order {
            if !a.json {
                let what = if unsealed {
                    "unsealed store (baseline)"
                } else {
                    "sealed store"
                };
                println!("round {} of {rounds}, {what}:", round + 1);
            }
            let r = etsi_once(&a, unsealed).await?;
            if unsealed {
                plain.push(r)
            } else {
                sealed.push(r)
            }
        }
    }
    let mut cost = BTreeMap::new();
    for hops in sealed[0].keys() {
        let rates = |runs: &[Run]| {
            let mut v: Vec<f64> = runs
                .iter()
                .map(|m| {
                    m.get(hops)
                        .and_then(|r| r["keys_per_s"].as_f64())
                        .unwrap_or(0.0)
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let cpus = |runs: &[Run]| {
            let mut v: Vec<f64> = runs
                .iter()
                .filter_map(|m| m.get(hops).and_then(|r| r["cpu_us_per_key"].as_f64()))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (pc, qc) = (cpus(&plain), cpus(&sealed));
        let cpu_cost = (!pc.is_empty() && !qc.is_empty()).then(|| {
            let (pm, qm) = (pc[pc.len() / 2], qc[qc.len() / 2]);
            (pm, qm, (qm / pm - 1.0) * 100.0)
        });
        let (p, q) = (rates(&plain), rates(&sealed));
        let pct = |p: f64, q: f64| if q > 0.0 { (p / q - 1.0) * 100.0 } else { 0.0 };
        let (pb, qb) = (p[p.len() - 1], q[q.len() - 1]);
        let (pm, qm) = (p[p.len() / 2], q[q.len() / 2]);
        let (best, median) = (pct(pb, qb), pct(pm, qm));
        if !a.json {
            println!(
                "{hops} hop(s): sealing costs {best:+.1} % best of {rounds} ({pb:.0} -> {qb:.0} \
                 keys/s), {median:+.1} % median ({pm:.0} -> {qm:.0} keys/s){}",
                cpu_cost.map_or(String::new(), |(p, q, c)| format!(
                    "; CPU per key {c:+.1} % median ({p:.0} -> {q:.0} µs)"
                ))
            );
        }
        cost.insert(
            hops.clone(),
            serde_json::json!({"best": best, "median": median,
                "cpu_per_key_median": cpu_cost.map(|(_, _, c)| c)}),
        );
    }
    if a.json {
        let all =
            serde_json::json!({"unsealed": plain, "sealed": sealed, "sealing_cost_pct": cost});
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

async fn etsi_once(
    a: &EtsiArgs,
    unsealed: bool,
) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "kagi-bench-{}-{}",
        std::process::id(),
        if unsealed { "plain" } else { "sealed" }
    ));
    std::fs::create_dir_all(&dir)?;
    let ids = ["a", "b", "c", "d"];
    let clients = a.clients;
    let mut topo = Topology::line("bench", &ids, 20.0, |n| {
        (0..clients).map(|i| format!("sae-{n}-{i}")).collect()
    });
    topo.epoch_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    topo.rate_multiplier = a.rate_multiplier;
    let sync = a.sync.into();
    let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |c| {
        c.etsi014.limits.max_key_per_request = 4096;
        c.pool = PoolConfig {
            target_bytes: 4 << 20,
            relay_chunk_bytes: 4096,
            max_in_flight: 32,
            ..PoolConfig::default()
        };
        c.store.synchronous = sync;
        c.store.seal.unsealed_for_benchmarks = unsealed;
    })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for cfg in cfgs {
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(kagi_node::run_node(cfg, async move {
            let _ = rx.wait_for(|v| *v).await;
        })));
    }
    let client = |sae: &str| kagi_node::loopback::sae_client(&dir, &topo, sae);
    let mut results = BTreeMap::new();
    let bar = super::progress::bar(a.hops.len() as u64, "benchmark");
    for &hops in &a.hops {
        bar.set_message(format!("{hops} hop(s): filling pools"));
        let slave_node = ids.get(hops).context("hops must be 1..=3")?;
        // Warm the pool: wait until it is 90 % full (4 MiB target) or a minute has passed.
        let probe = client("sae-a-0")?;
        let want = (4u64 << 20) / (a.size / 8) * 9 / 10;
        let t0 = Instant::now();
        loop {
            // Nodes may still be binding their listeners: an error just means "not yet".
            let ready = probe
                .status(&format!("sae-{slave_node}-0"))
                .await
                .is_ok_and(|s| s.stored_key_count >= want);
            if ready || t0.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bar.set_message(format!("{hops} hop(s): measuring {} s", a.duration));
        let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
        let mut joins = Vec::new();
        for i in 0..a.clients {
            let m = Arc::new(client(&format!("sae-a-{i}"))?);
            let s = Arc::new(client(&format!("sae-{slave_node}-{i}"))?);
            let master_id = format!("sae-a-{i}");
            let slave_id = format!("sae-{slave_node}-{i}");
            let (number, size) = (a.number, a.size);
            joins.push(tokio::spawn(async move {
                let mut enc = Vec::new();
                let mut dec = Vec::new();
                let mut keys = 0u64;
                let mut refused = 0u64;
                let req = KeyRequest {
                    number: Some(number),
                    size: Some(size),
                    additional_slave_sae_ids: None,
                    extension_mandatory: None,
                    extension_optional: None,
                };
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let Ok(got) = m.enc_keys(&slave_id, &req).await else {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    enc.push(t.elapsed());
                    let ids: Vec<_> = got.iter().map(|k| k.id).collect();
                    let t = Instant::now();
                    let back = m_dec(&s, &master_id, &ids).await;
                    dec.push(t.elapsed());
                    match back {
                        Some(b)
                            if b.len() == got.len()
                                && b.iter().zip(&got).all(|(x, y)| x.key == y.key) =>
                        {
                            keys += got.len() as u64
                        }
                        _ => refused += 1,
                    }
                }
                (enc, dec, keys, refused)
            }));
        }
        let start = Instant::now();
        let cpu0 = process_cpu_secs();
        let seal0 = kagi_node::seal::work();
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        let mut keys = 0;
        let mut refused = 0;
        for j in joins {
            let (e, d, k, r) = j.await?;
            enc.extend(e);
            dec.extend(d);
            keys += k;
            refused += r;
        }
        let secs = start.elapsed().as_secs_f64();
        // CPU of the whole process (nodes, TLS, clients) per delivered key: unlike keys/s it
        // hardly moves with what else runs on the machine.
        let cpu_us_per_key = match (cpu0, process_cpu_secs()) {
            (Some(a), Some(b)) if keys > 0 => Some((b - a) * 1e6 / keys as f64),
            _ => None,
        };
        let seal1 = kagi_node::seal::work();
        let (seal_values, seal_bytes, seal_ns) =
            (seal1.0 - seal0.0, seal1.1 - seal0.1, seal1.2 - seal0.2);
        let per_key = |x: u64| {
            if keys > 0 {
                x as f64 / keys as f64
            } else {
                0.0
            }
        };
        enc.sort();
        dec.sort();
        let pct = |v: &[Duration], p: f64| {
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        let r = serde_json::json!({
            "hops": hops,
            "clients": a.clients,
            "keys_per_request": a.number,
            "key_bits": a.size,
            "keys_per_s": keys as f64 / secs,
            "requests": enc.len(),
            "refused_or_mismatched": refused,
            "enc_p50_ms": pct(&enc, 0.5), "enc_p99_ms": pct(&enc, 0.99),
            "dec_p50_ms": pct(&dec, 0.5), "dec_p99_ms": pct(&dec, 0.99),
            "cpu_us_per_key": cpu_us_per_key,
            // What the seal itself did per delivered key (0 for an unsealed store).
            "seal_values_per_key": per_key(seal_values),
            "seal_bytes_per_key": per_key(seal_bytes),
            "seal_us_per_key": per_key(seal_ns) / 1e3,
        });
        bar.inc(1);
        bar.suspend(|| {
            if !a.json {
                println!(
                    "{hops} hop(s): {:.0} keys/s delivered to master and slave ({} clients, {} x {}-bit keys/request); enc_keys p50 {:.2} ms p99 {:.2} ms; dec_keys p50 {:.2} ms p99 {:.2} ms; refused {}; CPU {} µs/key, of which sealing {:.1} µs ({:.1} values, {:.0} bytes)",
                    keys as f64 / secs, a.clients, a.number, a.size, pct(&enc, 0.5), pct(&enc, 0.99), pct(&dec, 0.5), pct(&dec, 0.99), refused,
                    cpu_us_per_key.map_or("?".into(), |c| format!("{c:.0}")),
                    per_key(seal_ns) / 1e3, per_key(seal_values), per_key(seal_bytes)
                );
            }
        });
        results.insert(format!("{hops}"), r);
    }
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, in USER_HZ = 100
/// ticks), or `None` where that file is not there.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is the
    // first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

async fn m_dec(
    s: &Etsi014Client,
    master: &str,
    ids: &[uuid::Uuid],
) -> Option<Vec<kagi_km::DeliveredKey>> {
    s.dec_keys(master, ids).await.ok()
}

/// Relays `megabytes` of key from `a` to `c` through `b`, with link keys fed as needed and every
/// store batch acknowledged at once; reports what `b` forwards per second.
fn relay(a: RelayArgs) -> anyhow::Result<()> {
    let ids = ["a", "b", "c"];
    let mut topo = Topology::line("relay", &ids, 10.0, |n| vec![format!("sae-{n}")]);
    topo.seed = 3;
    let topo = Arc::new(topo);
    let total = a.megabytes << 20;
    let policy = Policy {
        pool_target_bytes: total,
        relay_chunk_bytes: a.chunk,
        max_relays_in_flight: 64,
        link_buffer_cap_bytes: 1 << 30,
        refill_interval: Duration::from_millis(1),
        ..Policy::default()
    };
    // Only `a` fills a pool (for `c`); `b` just forwards.
    let mut kms: BTreeMap<&str, KeyManager> = ids
        .iter()
        .map(|n| {
            let policy = if *n == "a" {
                policy.clone()
            } else {
                Policy {
                    pool_target_bytes: 0,
                    ..policy.clone()
                }
            };
            let cfg = KmConfig {
                node_id: NodeId::from(*n),
                topology: topo.clone(),
                limits: Limits::default(),
                policy,
                advert_auth: None,
                advert_run_base: 0,
            };
            (
                *n,
                KeyManager::restore(cfg, Snapshot::default(), [7; 32], kagi_km::Instant(0)),
            )
        })
        .collect();
    // Link key blocks as the node's simulated links deliver them (8 KiB, two 4 KiB halves).
    let block = 8 * 1024;
    let mut next_block = [0u64; 2];
    let mut now = kagi_km::Instant(1);
    let start = Instant::now();
    let mut queue: Vec<(String, String, kagi_km::PeerMsg)> = Vec::new();
    let mut relayed_at_b = 0u64;
    // CPU time spent inside the intermediate node's core (handling hops, draining actions).
    let mut b_time = Duration::ZERO;
    let mut link_fed = 0u64;
    while kms["a"].pool_free("c") < total {
        now = kagi_km::Instant(now.0 + 1_000_000);
        // Keep link key ahead of demand on both links.
        for (li, (x, y)) in [("a", "b"), ("b", "c")].into_iter().enumerate() {
            let want = (4 * block as u64).max(2 * (u64::from(a.chunk) + 32));
            while kms[x].link_tx_free(y) < want {
                let bytes = Key::from_vec(vec![li as u8 + 1; block]);
                let n = next_block[li];
                next_block[li] += 1;
                link_fed += block as u64;
                kms.get_mut(x).expect("node").handle(
                    now,
                    Input::LinkKeys {
                        peer: y.into(),
                        block: n,
                        key: bytes.clone(),
                    },
                );
                kms.get_mut(y).expect("node").handle(
                    now,
                    Input::LinkKeys {
                        peer: x.into(),
                        block: n,
                        key: bytes,
                    },
                );
            }
        }
        for id in ids {
            kms.get_mut(id).expect("node").handle_timeout(now);
        }
        // Drain every node, acknowledging writes at once and delivering messages in order.
        loop {
            let mut progressed = false;
            for id in ids {
                let km = kms.get_mut(id).expect("node");
                let t = Instant::now();
                while let Some(act) = km.poll_action() {
                    progressed = true;
                    match act {
                        Action::Send { to, msg } => {
                            queue.push((id.to_string(), to.to_string(), msg))
                        }
                        Action::Store { write, .. } => {
                            km.handle(now, Input::Stored { write, ok: true })
                        }
                        Action::Answer { .. } => {}
                    }
                }
                if id == "b" {
                    b_time += t.elapsed();
                }
            }
            for (from, to, msg) in std::mem::take(&mut queue) {
                progressed = true;
                if from == "b" && matches!(msg, kagi_km::PeerMsg::RelayHop { .. }) {
                    relayed_at_b += u64::from(a.chunk);
                }
                let t = Instant::now();
                let is_b = to == "b";
                kms.get_mut(to.as_str()).expect("node").handle(
                    now,
                    Input::Peer {
                        from: NodeId::from(from),
                        msg,
                    },
                );
                if is_b {
                    b_time += t.elapsed();
                }
            }
            if !progressed {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let gbps = relayed_at_b as f64 * 8.0 / secs / 1e9;
    let b_gbps = relayed_at_b as f64 * 8.0 / b_time.as_secs_f64().max(1e-9) / 1e9;
    let out = serde_json::json!({
        "relayed_bytes": relayed_at_b,
        "seconds": secs,
        "gbit_per_s_whole_run": gbps,
        "intermediate_node_seconds": b_time.as_secs_f64(),
        "gbit_per_s_per_intermediate_core": b_gbps,
        "chunk_bytes": a.chunk,
        "link_key_fed_bytes": link_fed,
        "link_key_per_relayed_byte": (kms["b"].stats().link_key_spent as f64) / relayed_at_b.max(1) as f64,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "relay a→b→c, {} MiB in {}-byte relays (core only: tags, one-time pads, records, no I/O): \
             intermediate node b forwards {:.2} Gbit/s of key per core ({:.2} s of its time); \
             whole run incl. origin, destination and link feed {:.2} Gbit/s ({:.2} s)",
            relayed_at_b >> 20,
            a.chunk,
            b_gbps,
            b_time.as_secs_f64(),
            gbps,
            secs
        );
    }
    Ok(())
}
