//! `kagi net`: the network as the management API sees it (nodes, links, pools), as aligned
//! tables or JSON, and the operator's link, drain and erase actions, for a network started by
//! `kagi up`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use kagi_node::client::Etsi014Client;
use kagi_node::dash::{assemble, NodeReport};
use serde_json::{json, Value};

use super::up::NetworkFile;

/// Arguments of `kagi net`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the network (where `kagi up` wrote network.json).
    #[arg(long, global = true, default_value = "./kagi-data")]
    pub data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<NetCommand>,
}

/// What to do (default: show the network).
#[derive(clap::Subcommand, Debug)]
pub enum NetCommand {
    /// Nodes, links and pools (the default).
    Show,
    /// Take the link between two nodes out of service at both ends (`--in` puts it back).
    Link {
        /// One end.
        a: String,
        /// The other end.
        b: String,
        /// Put the link back in service.
        #[arg(long = "in")]
        back: bool,
        /// Reason recorded in the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Drain a node before maintenance (`--undo` ends it).
    Drain {
        /// The node.
        node: String,
        /// End draining.
        #[arg(long)]
        undo: bool,
        /// Reason recorded in the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Crypto-erase a node: fence it and destroy every key it stored, irrecoverably; it will not
    /// start again (see OPERATIONS.md "Crypto-erase").
    Erase {
        /// The node.
        node: String,
        /// Must read `erase NODE`, as a guard against erasing the wrong node.
        #[arg(long)]
        confirm: String,
        /// Reason recorded in the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn client(dir: &Path, net: &NetworkFile, node: &str, role: &str) -> anyhow::Result<Etsi014Client> {
    let n = net
        .nodes
        .iter()
        .find(|n| n.id == node)
        .with_context(|| format!("node {node:?} is not in network.json"))?;
    let url = n
        .management_url
        .as_deref()
        .with_context(|| format!("node {node} has no management_url (run kagi up again)"))?;
    let op = net
        .operators
        .iter()
        .find(|o| o.role == role)
        .with_context(|| format!("network.json has no {role} certificate"))?;
    Ok(Etsi014Client::from_files(
        url,
        &dir.join(&net.ca),
        &dir.join(&op.cert),
        &dir.join(&op.key),
    )?
    .with_timeout(Duration::from_secs(5)))
}

/// Aligned text table: a header row and rows, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The network as the management API sees it, in the dashboard's JSON shape.
async fn snapshot(dir: &Path, net: &NetworkFile) -> anyhow::Result<Value> {
    let cfg = super::up_dash::config(dir, net, "kagi")?;
    let mut reports = Vec::new();
    for n in &net.nodes {
        let mut rep = NodeReport {
            id: n.id.clone(),
            status: None,
            refusals: Value::Null,
            audit: Value::Null,
            error: None,
        };
        match client(dir, net, &n.id, "observer")?
            .request("GET", "/api/v1/status", None, true)
            .await
        {
            Ok(r) if r.status == 200 => rep.status = Some(r.json()),
            Ok(r) => rep.error = Some(format!("HTTP {}", r.status)),
            Err(e) => rep.error = Some(e.to_string()),
        }
        reports.push(rep);
    }
    Ok(assemble(&cfg, &reports, 0))
}

fn render(v: &Value) -> String {
    let rows = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let nodes: Vec<Vec<String>> = rows("nodes")
        .iter()
        .map(|n| {
            vec![
                n["id"].as_str().unwrap_or("").to_owned(),
                n["state"].as_str().unwrap_or("").to_owned(),
                u(&n["peers_up"]).to_string(),
                u(&n["keys_served"]).to_string(),
                bytes(u(&n["pool_out_bytes"])),
                u(&n["relays_in_flight"]).to_string(),
                n["error"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    let links: Vec<Vec<String>> = rows("links")
        .iter()
        .map(|l| {
            vec![
                format!(
                    "{} — {}",
                    l["a"].as_str().unwrap_or(""),
                    l["b"].as_str().unwrap_or("")
                ),
                format!("{:.1}", l["length_km"].as_f64().unwrap_or(0.0)),
                l["state"].as_str().unwrap_or("").replace('_', " "),
                format!(
                    "{}/s",
                    bytes(l["rate_bytes_per_second"].as_f64().unwrap_or(0.0) as u64)
                ),
                bytes(u(&l["buffer_bytes"])),
            ]
        })
        .collect();
    let pools: Vec<Vec<String>> = rows("pools")
        .iter()
        .map(|p| {
            let route: Vec<&str> = p["route"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            vec![
                format!(
                    "{} → {}",
                    p["from"].as_str().unwrap_or(""),
                    p["to"].as_str().unwrap_or("")
                ),
                bytes(u(&p["out_bytes"])),
                if route.is_empty() {
                    "(unreachable)".into()
                } else {
                    route.join(" → ")
                },
            ]
        })
        .collect();
    format!(
        "NODES\n{}\nLINKS\n{}\nPOOLS (ready for masters at the first node)\n{}",
        table(
            &[
                "node",
                "state",
                "peers up",
                "keys served",
                "pools ready",
                "relays in flight",
                "error"
            ],
            &nodes
        ),
        table(&["link", "km", "state", "key rate", "buffer"], &links),
        table(&["from → to", "ready", "route"], &pools),
    )
}

async fn act(c: &Etsi014Client, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let r = c
        .request(method, path, Some(body.to_string().into_bytes()), true)
        .await?;
    if r.status != 200 {
        bail!(
            "{path}: HTTP {}: {}",
            r.status,
            r.json()["message"].as_str().unwrap_or("")
        );
    }
    Ok(r.json())
}

/// Runs `kagi net`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.data_dir.clone();
    let net = NetworkFile::load(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.command.unwrap_or(NetCommand::Show) {
            NetCommand::Show => {
                let v = snapshot(&dir, &net).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print!("{}", render(&v));
                }
            }
            NetCommand::Link { a, b, back, reason } => {
                let body = json!({"in_service": back, "reason": reason});
                let mut out = Vec::new();
                for (me, peer) in [(&a, &b), (&b, &a)] {
                    let c = client(&dir, &net, me, "operator")?;
                    out.push(
                        act(
                            &c,
                            "PUT",
                            &format!("/api/v1/links/{peer}/service"),
                            body.clone(),
                        )
                        .await?,
                    );
                }
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    println!(
                        "link {a} — {b}: {}",
                        if back { "in service" } else { "out of service" }
                    );
                }
            }
            NetCommand::Drain { node, undo, reason } => {
                let c = client(&dir, &net, &node, "operator")?;
                let v = act(
                    &c,
                    "PUT",
                    "/api/v1/drain",
                    json!({"draining": !undo, "reason": reason}),
                )
                .await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!(
                        "node {node}: {}",
                        if undo {
                            "serving"
                        } else {
                            "draining (new enc_keys refused)"
                        }
                    );
                }
            }
            NetCommand::Erase {
                node,
                confirm,
                reason,
            } => {
                let c = client(&dir, &net, &node, "operator")?;
                let v = act(
                    &c,
                    "POST",
                    "/api/v1/erase",
                    json!({"confirm": confirm, "reason": reason}),
                )
                .await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("node {node}: fenced and crypto-erased");
                    for d in v["destroyed"].as_array().into_iter().flatten() {
                        println!("  {}", d.as_str().unwrap_or_default());
                    }
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["a", "long header"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a    long header");
        assert_eq!(lines[1], "---  -----------");
        assert_eq!(lines[2], "xyz  1");
        assert_eq!(lines[3], "q    22");
    }
}
