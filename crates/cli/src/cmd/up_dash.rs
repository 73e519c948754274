//! The live dashboard for a network described by `network.json`: `kagi up` starts it in its
//! own process; `kagi dash` runs it alone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kagi_node::dash::{DashConfig, DashLink, DashNode};

use super::up::NetworkFile;

/// What the dashboard needs from `network.json` in `dir`: every node's management URL and a
/// management certificate (the auditor's, else the observer's).
pub fn config(dir: &Path, net: &NetworkFile, name: &str) -> anyhow::Result<DashConfig> {
    let op = ["auditor", "observer"]
        .iter()
        .find_map(|r| net.operators.iter().find(|o| o.role == *r))
        .context("network.json lists no auditor or observer certificate (run kagi up again)")?;
    let nodes = net
        .nodes
        .iter()
        .map(|n| {
            Ok(DashNode {
                id: n.id.clone(),
                management_url: n
                    .management_url
                    .clone()
                    .with_context(|| format!("node {} has no management_url", n.id))?,
                saes: n.saes.iter().map(|s| s.id.clone()).collect(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(DashConfig {
        name: name.to_owned(),
        nodes,
        links: net
            .links
            .iter()
            .map(|l| DashLink {
                a: l.a.clone(),
                b: l.b.clone(),
                length_km: l.length_km,
            })
            .collect(),
        positions: map_positions(dir),
        ca: dir.join(&net.ca),
        cert: dir.join(&op.cert),
        key: dir.join(&op.key),
    })
}

/// Node positions from the coordinates in `DIR/topology.toml`, if it has them for every node.
fn map_positions(dir: &Path) -> std::collections::BTreeMap<String, (f64, f64)> {
    std::fs::read_to_string(dir.join("topology.toml"))
        .ok()
        .and_then(|text| kagi_control::Topology::from_toml(&text).ok())
        .map(|t| kagi_node::dash::map::positions(&t))
        .unwrap_or_default()
}

/// Starts the dashboard on 127.0.0.1:`port` (0: the port of the previous run in `dir` when
/// free, else any free port) and returns its URL (with a fresh access token) and its task.
pub async fn start(
    dir: &Path,
    net: &NetworkFile,
    name: &str,
    port: u16,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let cfg = config(dir, net, name)?;
    let port_file: PathBuf = dir.join("dashboard.port");
    let port = if port != 0 {
        port
    } else {
        std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|p| super::up::port_free(*p))
            .unwrap_or(0)
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen for the dashboard on 127.0.0.1:{port}"))?;
    let port = listener.local_addr()?.port();
    let _ = std::fs::write(&port_file, format!("{port}\n"));
    let token = uuid::Uuid::new_v4().simple().to_string();
    let url = format!("http://127.0.0.1:{port}/?token={token}");
    let task = tokio::spawn(kagi_node::dash::serve(
        listener,
        cfg,
        token,
        std::future::pending(),
    ));
    Ok((url, task))
}
