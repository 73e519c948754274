//! `kagi bench xks`: the XKS proxy of a running `kagi up --xks` network under load.
//!
//! * **cached**: `--clients` connections, each looping Encrypt (32-byte data key, AAD, CDIV —
//!   what GenerateDataKey sends) then Decrypt of the result, for `--duration` seconds; requests
//!   per second and p50/p99 latency of each;
//! * **rebuilt**: `--rebuilds` times, the key is disabled (the proxy zeroizes its material) and
//!   enabled again, then one Encrypt is timed: it includes rebuilding the key from k shares
//!   fetched from the vault sites over one-time-padded transfers.
//!
//! Latencies are measured at the client, over TLS 1.3 on loopback, signatures included.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kagi_xks::client::XksClient;
use kagi_xks::registry::{KeyStatus, Registry};
use serde_json::{json, Value};

use super::up::NetworkFile;

/// Arguments of `kagi bench xks`.
#[derive(clap::Args)]
pub struct XksArgs {
    /// Directory of a network started with `kagi up --xks`.
    #[arg(long, default_value = "./kagi-data")]
    data_dir: PathBuf,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of the cached phase.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Timed rebuilds from shares.
    #[arg(long, default_value_t = 20)]
    rebuilds: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn meta(op: &str, i: u64) -> Value {
    json!({"awsPrincipalArn": "arn:aws:iam::123456789012:user/bench", "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/bench",
           "kmsOperation": op, "kmsRequestId": format!("bench-{i}")})
}

async fn connect(dir: &std::path::Path, net: &NetworkFile) -> anyhow::Result<XksClient> {
    let x = net
        .xks
        .as_ref()
        .context("network.json has no xks entry: start the network with `kagi up --xks`")?;
    XksClient::connect(
        &x.url,
        &dir.join(&net.ca),
        &x.region,
        &x.access_key_id,
        &x.secret_access_key,
    )
    .await
}

async fn encrypt(c: &mut XksClient, key: &str, i: u64) -> anyhow::Result<Value> {
    let body = json!({"requestMetadata": meta("GenerateDataKey", i), "plaintext": kagi_xks::wire::encode(&[i as u8; 32]),
        "encryptionAlgorithm": "AES_GCM", "additionalAuthenticatedData": "YmVuY2g=", "ciphertextDataIntegrityValueAlgorithm": "SHA_256"});
    let (s, b) = c
        .call(&format!("/keys/{key}/encrypt"), body.to_string().as_bytes())
        .await?;
    if s != 200 {
        bail!("encrypt answered {s}: {}", String::from_utf8_lossy(&b));
    }
    Ok(serde_json::from_slice(&b)?)
}

async fn decrypt(c: &mut XksClient, key: &str, e: &Value, i: u64) -> anyhow::Result<()> {
    let body = json!({"requestMetadata": meta("Decrypt", i), "encryptionAlgorithm": "AES_GCM", "ciphertext": e["ciphertext"],
        "ciphertextMetadata": e["ciphertextMetadata"], "initializationVector": e["initializationVector"],
        "authenticationTag": e["authenticationTag"], "additionalAuthenticatedData": "YmVuY2g="});
    let (s, b) = c
        .call(&format!("/keys/{key}/decrypt"), body.to_string().as_bytes())
        .await?;
    if s != 200 {
        bail!("decrypt answered {s}: {}", String::from_utf8_lossy(&b));
    }
    Ok(())
}

async fn status_is(c: &mut XksClient, key: &str, want: &str) -> anyhow::Result<bool> {
    let body = json!({"requestMetadata": meta("DescribeKey", 0)});
    let (_, b) = c
        .call(
            &format!("/keys/{key}/metadata"),
            body.to_string().as_bytes(),
        )
        .await?;
    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
    Ok(v["keyStatus"] == want)
}

fn set_status(path: &std::path::Path, key: &str, s: KeyStatus) -> anyhow::Result<()> {
    let mut r = Registry::load(path).map_err(anyhow::Error::msg)?;
    r.get_mut(key).context("key not in the registry")?.status = s;
    r.save(path)?;
    Ok(())
}

/// Runs `kagi bench xks`.
pub async fn run(a: XksArgs) -> anyhow::Result<()> {
    let dir = a
        .data_dir
        .canonicalize()
        .with_context(|| format!("{}", a.data_dir.display()))?;
    let net = NetworkFile::load(&dir)?;
    let key = net
        .xks
        .as_ref()
        .and_then(|x| x.key_ids.first().cloned())
        .context("network.json lists no XKS key")?;
    let mut c0 = connect(&dir, &net).await?;
    let e = encrypt(&mut c0, &key, 0).await?; // warm: the key is rebuilt once here
    decrypt(&mut c0, &key, &e, 0).await?;
    // Cached phase.
    let until = Instant::now() + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    for t in 0..a.clients {
        let mut c = connect(&dir, &net).await?;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let (mut enc, mut dec) = (Vec::new(), Vec::new());
            let mut i = (t as u64) << 32;
            while Instant::now() < until {
                i += 1;
                let t0 = Instant::now();
                let e = encrypt(&mut c, &key, i).await?;
                let t1 = Instant::now();
                decrypt(&mut c, &key, &e, i).await?;
                enc.push((t1 - t0).as_secs_f64() * 1e3);
                dec.push(t1.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok((enc, dec))
        }));
    }
    let started = Instant::now();
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    for t in tasks {
        let (e, d) = t.await??;
        enc.extend(e);
        dec.extend(d);
    }
    let secs = started.elapsed().as_secs_f64().max(a.duration);
    let tps = (enc.len() + dec.len()) as f64 / secs;
    // Rebuild phase.
    let cfg = kagi_xks::config::ProxyConfig::load(&dir.join("xks/proxy.json"), &dir)?;
    let mut rebuild = Vec::new();
    for i in 0..a.rebuilds {
        set_status(&cfg.registry, &key, KeyStatus::Disabled)?;
        let t = Instant::now();
        while !status_is(&mut c0, &key, "DISABLED").await? {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the proxy did not notice the disable");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        set_status(&cfg.registry, &key, KeyStatus::Enabled)?;
        while !status_is(&mut c0, &key, "ENABLED").await? {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t0 = Instant::now();
        encrypt(&mut c0, &key, 1_000_000 + i as u64).await?;
        rebuild.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (ep50, ep99) = (pct(&mut enc, 0.5), pct(&mut enc, 0.99));
    let (dp50, dp99) = (pct(&mut dec, 0.5), pct(&mut dec, 0.99));
    let (rp50, rp99, rmax) = (
        pct(&mut rebuild, 0.5),
        pct(&mut rebuild, 0.99),
        rebuild.last().copied().unwrap_or(f64::NAN),
    );
    if a.json {
        println!(
            "{}",
            json!({"clients": a.clients, "seconds": secs, "requests": enc.len() + dec.len(), "tps": tps,
                   "encrypt_ms": {"p50": ep50, "p99": ep99}, "decrypt_ms": {"p50": dp50, "p99": dp99},
                   "rebuilt_encrypt_ms": {"n": rebuild.len(), "p50": rp50, "p99": rp99, "max": rmax}})
        );
    } else {
        println!(
            "kagi bench xks: {} clients, {:.1} s, {} requests",
            a.clients,
            secs,
            enc.len() + dec.len()
        );
        println!("  cached   {tps:>8.0} requests/s   encrypt p50 {ep50:.2} ms p99 {ep99:.2} ms   decrypt p50 {dp50:.2} ms p99 {dp99:.2} ms");
        println!("  rebuilt from shares ({} runs): encrypt p50 {rp50:.1} ms p99 {rp99:.1} ms max {rmax:.1} ms", rebuild.len());
    }
    Ok(())
}
