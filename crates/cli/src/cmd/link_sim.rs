//! `kagi link-sim`: the photon-level decoy-BB84 simulator (`kagi_quantum::photon`) through the
//! whole post-processing pipeline (`kagi_postproc::protocol`): sifting, finite-key decoy
//! estimation, Cascade or LDPC reconciliation, verification, Toeplitz privacy amplification, Wegman–Carter
//! authentication of every message. Both ends run in this process over an in-memory channel;
//! the keys of both ends are compared at the end.

use std::time::Instant;

use anyhow::{bail, Context};
use kagi_keymat::Key;
use kagi_postproc::block_plan::{BlockModel, KNEE_SHARE};
use kagi_postproc::cascade::CascadeParams;
use kagi_postproc::finite_key::DecoySettings;
use kagi_postproc::ldpc::{CheckRule, LdpcParams};
use kagi_postproc::photon_records::{InterceptResend, RecordBuilder, Side};
use kagi_postproc::protocol::{
    run_block_parallel, Alice, AliceRaw, AuthKeyPool, Bob, BobRaw, Outcome, ProtocolConfig,
    Reconciliation,
};
use kagi_quantum::photon::{Detections, PhotonParams, PhotonSim};
use kagi_quantum::DecoyBb84Params;

/// Error-correction method.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Cascade (batched, Martinez-Mateo et al. block sizes).
    Cascade,
    /// Rate-adaptive blind LDPC (QC codes, min-sum decoder): few messages, fast.
    Ldpc,
}

/// Arguments of `kagi link-sim`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kagi link-sim --distance 45\n  \
    kagi link-sim --distance 25 --pulses 2e8\n  \
    kagi link-sim --distance 50 --pulses 5e8 --block-bits 1e6 --json\n  \
    kagi link-sim --distance 10 --pulses 1e8 --eve-intercept 0.5\n  \
    kagi link-sim --distance 5 --pulses 2e9 --block-bits 4e6 --reconciliation ldpc\n\n\
    throughput_sifted_bps is sifted key bits per second of post-processing (both ends, this \
    process); elapsed_s includes the photon simulation.")]
pub struct Args {
    /// QKD protocol, named as in `kagi link-rate`: the photon simulator models decoy-state BB84
    /// with finite-key post-processing (`bb84-decoy` or `bb84-finite`); the other protocols are
    /// modelled at rate level only (`kagi link-rate --protocol ...`).
    #[arg(long, default_value = "bb84-decoy")]
    protocol: String,
    /// Fibre length, km.
    #[arg(long, default_value_t = 25.0)]
    distance: f64,
    /// Pulses to simulate (accepts 2e9); `auto`: enough for one block of `--block-bits`.
    #[arg(long, default_value = "auto")]
    pulses: String,
    /// Sifted key bits per post-processing block (accepts 1e7); `auto`: chosen from the
    /// finite-key model for this link (the smallest block whose expected secret fraction is
    /// half the best any block up to 10^8 bits reaches).
    #[arg(long, default_value = "auto")]
    block_bits: String,
    /// Error-correction method.
    #[arg(long, value_enum, default_value_t = Method::Cascade)]
    reconciliation: Method,
    /// Fraction of pulses an intercept-resend eavesdropper measures and resends.
    #[arg(long, default_value_t = 0.0)]
    eve_intercept: f64,
    /// Seed of the simulation and of the protocol's public random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Fibre attenuation α, dB/km.
    #[arg(long)]
    alpha: Option<f64>,
    /// Bob's efficiency η_Bob (transmittance × detector efficiency).
    #[arg(long)]
    eta_bob: Option<f64>,
    /// Background yield Y0 per pulse (both detectors).
    #[arg(long)]
    y0: Option<f64>,
    /// Misalignment error e_d.
    #[arg(long)]
    e_d: Option<f64>,
    /// Signal intensity μ.
    #[arg(long)]
    mu: Option<f64>,
    /// Decoy intensity ν.
    #[arg(long)]
    nu: Option<f64>,
    /// Afterpulse probability p_ap.
    #[arg(long)]
    p_ap: Option<f64>,
    /// Detector dead time, s.
    #[arg(long)]
    dead_time: Option<f64>,
    /// Repetition rate, Hz.
    #[arg(long)]
    rep_rate: Option<f64>,
    /// Probability of a signal pulse. The defaults (0.5 / 0.3, key basis 0.5) suit blocks of
    /// a few 10^6 sifted bits, where the finite-key terms of the decoy and test-basis counts
    /// dominate; with blocks of 10^7–10^8 bits, --p-signal 0.6 --p-decoy 0.25 --p-x 0.7 gives
    /// more key per pulse.
    #[arg(long, default_value_t = 0.5)]
    p_signal: f64,
    /// Probability of a decoy pulse (the rest are vacuum).
    #[arg(long, default_value_t = 0.3)]
    p_decoy: f64,
    /// Key-basis probability (each end).
    #[arg(long, default_value_t = 0.5)]
    p_x: f64,
    /// Secrecy parameter ε_sec.
    #[arg(long, default_value_t = 1e-10)]
    eps_sec: f64,
    /// Correctness parameter ε_cor.
    #[arg(long, default_value_t = 1e-15)]
    eps_cor: f64,
    /// Cascade first block size factor α (k1 ≈ α / QBER): 1.4 gives f ≈ 1.04–1.07 at
    /// QBER 1–5 %; 0.73 discloses more parities but needs ~2.5× fewer messages, which costs
    /// less authentication key on blocks of ~10^6 bits.
    #[arg(long, default_value_t = CascadeParams::default().alpha)]
    cascade_alpha: f64,
    /// Cascade passes.
    #[arg(long, default_value_t = CascadeParams::default().passes)]
    cascade_passes: usize,
    /// LDPC frame length in bits (16384, 32768 or 65536).
    #[arg(long, default_value_t = LdpcParams::default().frame_bits)]
    ldpc_frame: usize,
    /// LDPC target efficiency f of the first decoding attempt.
    #[arg(long, default_value_t = LdpcParams::default().efficiency)]
    ldpc_efficiency: f64,
    /// LDPC blind reveal rounds after the first attempt (0: one attempt).
    #[arg(long, default_value_t = LdpcParams::default().blind_rounds)]
    ldpc_rounds: usize,
    /// LDPC: decode with the sum-product (box-plus) check rule instead of normalized min-sum
    /// (lower f, several times the CPU).
    #[arg(long)]
    ldpc_box_plus: bool,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// `auto` or a count.
fn parse_auto(s: &str, name: &str) -> anyhow::Result<Option<usize>> {
    if s.trim().eq_ignore_ascii_case("auto") {
        Ok(None)
    } else {
        parse_count(s, name).map(Some)
    }
}

/// Largest block the automatic choice considers, sifted bits.
const MAX_AUTO_BLOCK: u64 = 100_000_000;
/// Most pulses `--pulses auto` simulates (about 5–15 minutes on 2 cores).
const MAX_AUTO_PULSES: f64 = 2e11;

fn parse_count(s: &str, name: &str) -> anyhow::Result<usize> {
    let v: f64 = s
        .trim()
        .parse()
        .with_context(|| format!("--{name}: not a number: {s}"))?;
    if !(v.is_finite() && (1.0..=1e12).contains(&v)) {
        bail!("--{name} must be between 1 and 1e12, got {s}");
    }
    Ok(v.round() as usize)
}

/// SplitMix64 uniform in [0, 1) (the initial authentication key only).
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Default)]
struct Totals {
    sifted: u64,
    errors: u64,
    leaked: u64,
    leak_ideal: f64,
    secret_bits: u64,
    auth_bits: u64,
    blocks: u64,
    blocks_ok: u64,
    identical: bool,
    postproc_s: f64,
    /// Process CPU time (all threads) spent in post-processing.
    postproc_cpu_s: f64,
    /// Sifted Mb/s of each block (for the mean over blocks).
    block_mbps: Vec<f64>,
    messages: u64,
    aborts: Vec<String>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.protocol.as_str() {
        "bb84-decoy" | "bb84-finite" => {}
        p @ ("cv-gg02" | "tf-sns" | "satellite" | "repeater") => bail!(
            "--protocol {p}: the photon simulator models decoy-state BB84 only; \
             `kagi link-rate --protocol {p}` gives this protocol's key rate"
        ),
        p => bail!(
            "--protocol {p:?}: unknown (bb84-decoy, bb84-finite; cv-gg02, tf-sns, satellite and \
             repeater are rate-level only, see kagi link-rate)"
        ),
    }
    if !(0.0..=1.0).contains(&args.eve_intercept) {
        bail!("--eve-intercept must be a fraction in [0, 1]");
    }
    if !(args.cascade_alpha > 0.0 && args.cascade_alpha.is_finite())
        || args.cascade_passes == 0
        || args.cascade_passes > 64
    {
        bail!("--cascade-alpha must be positive and --cascade-passes between 1 and 64");
    }
    let pulses_arg = parse_auto(&args.pulses, "pulses")?;
    let block_arg = parse_auto(&args.block_bits, "block-bits")?.map(|b| b as u64);
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let mut link = DecoyBb84Params::default();
    if let Some(v) = args.alpha {
        link.alpha_db_per_km = v;
    }
    if let Some(v) = args.eta_bob {
        link.eta_bob = v;
    }
    if let Some(v) = args.y0 {
        link.y0 = v;
    }
    if let Some(v) = args.e_d {
        link.e_d = v;
    }
    if let Some(v) = args.mu {
        link.mu = v;
    }
    if let Some(v) = args.nu {
        link.nu = v;
    }
    if let Some(v) = args.p_ap {
        link.p_ap = v;
    }
    if let Some(v) = args.dead_time {
        link.dead_time_s = v;
    }
    if let Some(v) = args.rep_rate {
        link.rep_rate_hz = v;
    }
    let params = PhotonParams {
        link,
        length_km: args.distance,
        p_signal: args.p_signal,
        p_decoy: args.p_decoy,
        p_z: args.p_x,
        threads,
    };
    let cfg = ProtocolConfig {
        decoy: DecoySettings {
            mu: [link.mu, link.nu, 0.0],
            p: [
                args.p_signal,
                args.p_decoy,
                1.0 - args.p_signal - args.p_decoy,
            ],
            eps_sec: args.eps_sec,
            eps_cor: args.eps_cor,
        },
        reconciliation: match args.reconciliation {
            Method::Cascade => Reconciliation::Cascade(CascadeParams {
                alpha: args.cascade_alpha,
                passes: args.cascade_passes,
                ..CascadeParams::default()
            }),
            Method::Ldpc => {
                let p = LdpcParams {
                    frame_bits: args.ldpc_frame,
                    efficiency: args.ldpc_efficiency,
                    blind_rounds: args.ldpc_rounds,
                    check_rule: if args.ldpc_box_plus {
                        CheckRule::BoxPlus
                    } else {
                        CheckRule::MinSum
                    },
                    ..LdpcParams::default()
                };
                p.validate().context("LDPC parameters")?;
                Reconciliation::Ldpc(p)
            }
        },
        threads,
    };
    cfg.decoy.validate().context("decoy settings")?;
    params.validate().context("photon simulator parameters")?;

    // The finite-key model of this link: expected counts per pulse, the reconciliation's
    // typical efficiency and authentication cost per block.
    let (f_ec, auth_bits) = match args.reconciliation {
        Method::Cascade => (1.07, 500 * 128),
        Method::Ldpc => (1.3, 20 * 128),
    };
    let model = BlockModel::for_photon_link(&params, cfg.decoy, f_ec, auth_bits);
    let smallest = model.smallest_with_key(MAX_AUTO_BLOCK);
    let (block_bits, block_note) = match block_arg {
        Some(b) => (b, "given".to_string()),
        None => match model.choose(MAX_AUTO_BLOCK, KNEE_SHARE) {
            Some(e) => (
                e.sifted_bits,
                format!(
                    "chosen by the finite-key model: expected {:.1} % of it secret",
                    100.0 * e.fraction
                ),
            ),
            None => (
                MAX_AUTO_BLOCK,
                format!(
                    "the finite-key model expects no key from any block up to {MAX_AUTO_BLOCK} \
                     sifted bits (expected QBER {:.2} %)",
                    100.0 * model.qber()
                ),
            ),
        },
    };
    let spp = model.sifted_per_pulse();
    let pulses = match pulses_arg {
        Some(p) => p,
        // One block's worth, rounded up to whole simulator words, plus 1 % for fluctuations.
        None => {
            let p = block_bits as f64 / spp.max(1e-300) * 1.01;
            if smallest.is_none() || p > MAX_AUTO_PULSES {
                bail!(
                    "--pulses auto: the finite-key model expects {} at {} km with these settings \
                     (expected QBER {:.2} %, {:.3e} sifted bits per pulse; one block of {block_bits} \
                     sifted bits needs {p:.2e} pulses); give --pulses (and --block-bits) to \
                     simulate anyway",
                    if smallest.is_none() {
                        "no key from any block up to 10^8 sifted bits"
                    } else {
                        "key only from blocks too long to simulate by default"
                    },
                    args.distance,
                    100.0 * model.qber(),
                    spp
                );
            }
            (p as usize).div_ceil(64) * 64
        }
    };
    let mut notes = Vec::new();
    match smallest {
        Some(e) if block_bits < e.sifted_bits => notes.push(format!(
            "blocks of {block_bits} sifted bits are too small to yield key here: the finite-key \
             model needs about {} (--block-bits {:.1e}, about {:.2e} pulses per block)",
            e.sifted_bits, e.sifted_bits as f64, e.pulses
        )),
        None => notes.push(format!(
            "the finite-key model expects no key at {} km with these settings (QBER {:.2} %)",
            args.distance,
            100.0 * model.qber()
        )),
        _ => {}
    }
    let expected_sifted = pulses as f64 * spp;
    if expected_sifted < 0.9 * block_bits as f64 {
        notes.push(format!(
            "{pulses} pulses give about {expected_sifted:.3e} sifted bits, less than one block \
             of {block_bits}: use --pulses {:.2e} or more",
            block_bits as f64 / spp.max(1e-12)
        ));
    }

    // Pre-shared authentication key (both ends, 64 KiB: 4096 message tags), replenished from
    // produced key.
    let mut x = args.seed ^ 0x5eed;
    let initial: Vec<u8> = (0..65536)
        .map(|_| (uniform(&mut x) * 256.0) as u8)
        .collect();
    let mut pool_a = AuthKeyPool::new(Key::from_slice(&initial))?;
    let mut pool_b = AuthKeyPool::new(Key::from_slice(&initial))?;

    let mut sim = PhotonSim::new(params, args.seed).context("photon simulator parameters")?;
    let t0 = Instant::now();
    let chunk = (1usize << 22).min(pulses.div_ceil(64) * 64);
    let mut det = Detections::default();
    let new_buf = |eve: Option<InterceptResend>| {
        let b = RecordBuilder::new(Side::Both);
        match eve {
            Some(e) => b.with_eve(e),
            None => b,
        }
    };
    let mut buf = new_buf(
        (args.eve_intercept > 0.0)
            .then(|| InterceptResend::new(args.eve_intercept, args.seed ^ 0xe5e)),
    );
    let mut tot = Totals {
        identical: true,
        ..Default::default()
    };
    let mut done = 0usize;
    let mut block_id = 0u64;
    let bar = super::progress::counter(pulses as u64, "pulses simulated");
    while done < pulses {
        let n = chunk.min(pulses - done);
        // Keep block boundaries on whole words of pulses.
        sim.run_into(n, &mut det);
        buf.push(&det);
        done += n;
        bar.set_position(done as u64);
        // Close the block when it is full, unless what is left would make a tail of less than
        // half a block (then the tail joins this block).
        let tail = (pulses - done) as f64 * spp;
        if (buf.sifted_bits() >= block_bits && tail >= block_bits as f64 / 2.0) || done >= pulses {
            let b = std::mem::replace(&mut buf, RecordBuilder::new(Side::Both));
            let (sifted, errors) = (b.sifted_bits(), b.errors());
            let (alice, bob, eve) = b.finish();
            buf = new_buf(eve);
            let b = BlockIn {
                alice,
                bob,
                sifted,
                errors,
            };
            run_one(
                &cfg,
                block_id,
                b,
                &mut pool_a,
                &mut pool_b,
                &mut tot,
                args.seed,
            )?;
            block_id += 1;
            bar.set_message(format!("pulses simulated, {block_id} block(s)"));
        }
    }
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let qber = if tot.sifted > 0 {
        tot.errors as f64 / tot.sifted as f64
    } else {
        0.0
    };
    let f = (tot.leak_ideal > 0.0).then(|| tot.leaked as f64 / tot.leak_ideal);
    let mean_mbps = if tot.block_mbps.is_empty() {
        0.0
    } else {
        tot.block_mbps.iter().sum::<f64>() / tot.block_mbps.len() as f64
    };
    let obj = serde_json::json!({
        "pulses": pulses,
        "block_bits": block_bits,
        "block_bits_choice": block_note,
        "smallest_block_with_key": smallest.map(|e| e.sifted_bits),
        "notes": notes,
        "aborts": tot.aborts,
        "sifted_bits": tot.sifted,
        "qber": qber,
        "ec_efficiency": f,
        "secret_bits": tot.secret_bits,
        "secret_bits_per_pulse": tot.secret_bits as f64 / pulses as f64,
        "keys_identical": tot.identical,
        "auth_key_bits": tot.auth_bits,
        "elapsed_s": elapsed,
        "postprocessing_s": tot.postproc_s,
        "postprocessing_cpu_s": tot.postproc_cpu_s,
        "block_sifted_mbps": tot.block_mbps,
        "mean_block_sifted_mbps": mean_mbps,
        "throughput_sifted_bps": if tot.postproc_s > 0.0 { tot.sifted as f64 / tot.postproc_s } else { 0.0 },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    println!(
        "kagi link-sim: {} km, {pulses} pulses, {} blocks ({} with key)",
        args.distance, tot.blocks, tot.blocks_ok
    );
    let rows = [
        ("pulses", pulses.to_string()),
        ("block_bits", format!("{block_bits} ({block_note})")),
        ("sifted_bits", tot.sifted.to_string()),
        ("qber", format!("{qber:.5}")),
        ("ec_efficiency", f.map_or("-".into(), |f| format!("{f:.4}"))),
        ("secret_bits", tot.secret_bits.to_string()),
        (
            "secret_bits_per_pulse",
            format!("{:.3e}", tot.secret_bits as f64 / pulses as f64),
        ),
        ("keys_identical", tot.identical.to_string()),
        ("auth_key_bits", tot.auth_bits.to_string()),
        ("messages", tot.messages.to_string()),
        ("elapsed_s", format!("{elapsed:.3}")),
        (
            "postprocessing_s",
            format!("{:.3} (CPU {:.3})", tot.postproc_s, tot.postproc_cpu_s),
        ),
        (
            "block_sifted_mbps",
            format!(
                "mean {mean_mbps:.2} over blocks [{}]",
                tot.block_mbps
                    .iter()
                    .map(|m| format!("{m:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (
            "throughput_sifted_bps",
            format!(
                "{:.3e}",
                if tot.postproc_s > 0.0 {
                    tot.sifted as f64 / tot.postproc_s
                } else {
                    0.0
                }
            ),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<24} {v}");
    }
    for a in &tot.aborts {
        println!("  aborted: {a}");
    }
    for n in &notes {
        println!("  note: {n}");
    }
    Ok(())
}

/// One block's records and its ground truth.
struct BlockIn {
    alice: AliceRaw,
    bob: BobRaw,
    sifted: u64,
    errors: u64,
}

fn run_one(
    cfg: &ProtocolConfig,
    block_id: u64,
    b: BlockIn,
    pool_a: &mut AuthKeyPool,
    pool_b: &mut AuthKeyPool,
    tot: &mut Totals,
    seed: u64,
) -> anyhow::Result<()> {
    tot.blocks += 1;
    let mut rs = [0u8; 32];
    rs[..8].copy_from_slice(&seed.to_le_bytes());
    rs[8..16].copy_from_slice(&block_id.to_le_bytes());
    let t = Instant::now();
    let c0 = cpu_seconds();
    let spent_before = pool_b.spent_bytes();
    let (sifted, errors) = (b.sifted, b.errors);
    let b_sifted = sifted;
    let mut alice = Alice::new(*cfg, block_id, b.alice, rs)?;
    let mut bob = Bob::new(*cfg, block_id, b.bob)?;
    // Each end on its own thread, as two nodes: Alice's and Bob's work overlaps where the
    // protocol allows (both hash at once).
    let (oa, ob) = run_block_parallel(&mut alice, &mut bob, pool_a, pool_b);
    let dt = t.elapsed().as_secs_f64();
    tot.postproc_s += dt;
    tot.postproc_cpu_s += cpu_seconds() - c0;
    tot.block_mbps.push(b_sifted as f64 / dt / 1e6);
    tot.sifted += sifted;
    tot.errors += errors;
    tot.auth_bits += (pool_b.spent_bytes() - spent_before) * 8;
    match (oa, ob) {
        (Outcome::Key { key: ka, stats: sa }, Outcome::Key { key: kb, stats: sb }) => {
            tot.identical &= ka == kb && sa.secret_bits == sb.secret_bits;
            tot.blocks_ok += 1;
            tot.secret_bits += sb.secret_bits;
            tot.leaked += sb.leaked_ec_bits;
            tot.messages += sb.messages;
            let q = sb.qber_key.unwrap_or(0.0);
            tot.leak_ideal += sb.sifted_bits as f64 * kagi_postproc::cascade::h2(q);
        }
        (Outcome::Aborted(ea), Outcome::Aborted(_)) => {
            tot.aborts
                .push(format!("block {block_id} ({sifted} sifted bits): {ea}"));
        }
        (a, b) => {
            // One end has key and the other not: never acceptable.
            tot.identical = false;
            tot.aborts.push(format!(
                "block {block_id}: ends disagree ({} / {})",
                kind(&a),
                kind(&b)
            ));
        }
    }
    Ok(())
}

fn kind(o: &Outcome) -> String {
    match o {
        Outcome::Key { .. } => "key".into(),
        Outcome::Aborted(e) => format!("aborted: {e}"),
    }
}

/// Process CPU time (user + system, all threads) from /proc/self/stat, in seconds (0 where
/// that file does not exist). Shows the work apart from other load on a shared machine.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
