//! `kagi up`'s part of operations: management listener addresses, role certificates for
//! operators, and their entries in `network.json`.

use std::path::Path;

use anyhow::Context;
use kagi_node::config::NodeConfig;
use kagi_node::mgmt::Role;
use kagi_node::pki::Pki;
use serde::{Deserialize, Serialize};

/// A management client certificate in `network.json` (one per role).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkOperator {
    /// `operator`, `auditor` or `observer`.
    pub role: String,
    /// Client certificate (PEM), relative to DIR; its subject OU carries the role.
    pub cert: String,
    /// Private key (PEM), relative to DIR.
    pub key: String,
}

/// Makes sure one management certificate per role exists under `pki/operators/`.
pub fn operators(pki: &Pki, dir: &Path) -> anyhow::Result<Vec<NetworkOperator>> {
    Role::ALL
        .into_iter()
        .rev()
        .map(|r| {
            let p = pki.ensure_operator(r)?;
            Ok(NetworkOperator {
                role: r.name().to_owned(),
                cert: super::up::rel(&p.cert, dir),
                key: super::up::rel(&p.key, dir),
            })
        })
        .collect()
}

/// The management listen address of node `i` of `n`: after the ETSI/peer ports with
/// `--base-port` (BASE+2n+i), else the previous run's port when still free, else a free port.
pub fn management_addr(
    old: Option<&NodeConfig>,
    i: usize,
    n: usize,
    base_port: Option<u16>,
    taken: &mut Vec<u16>,
) -> anyhow::Result<String> {
    let port = if let Some(base) = base_port {
        u16::try_from(2 * n + i)
            .ok()
            .and_then(|o| base.checked_add(o))
            .context("--base-port too high for this many nodes")?
    } else {
        let prev = old
            .and_then(|c| c.management.as_ref())
            .and_then(|m| m.listen.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .filter(|p| !taken.contains(p) && super::up::port_free(*p));
        match prev {
            Some(p) => p,
            None => super::up::free_port(taken)?,
        }
    };
    taken.push(port);
    Ok(format!("127.0.0.1:{port}"))
}

/// The links of `topo` as an aligned table: ends, length, key source and modelled secret key
/// rate (after the rate multiplier).
pub fn links_table(topo: &kagi_control::Topology) -> String {
    let rows: Vec<Vec<String>> = topo
        .links
        .iter()
        .map(|l| {
            let source = l.source.clone().unwrap_or_else(|| "rate".into());
            let rate = if source == "rate" {
                let m = kagi_node::link_source::SimulatedLink::new(topo, &l.a, l);
                format!("{:.2} Mb/s", m.rate_bps / 1e6)
            } else {
                "(measured)".into()
            };
            vec![
                format!("{} — {}", l.a, l.b),
                format!("{:.1}", l.length_km),
                source,
                rate,
            ]
        })
        .collect();
    let t = super::net::table(&["link", "km", "source", "key rate"], &rows);
    t.lines().map(|l| format!("  {l}\n")).collect()
}
