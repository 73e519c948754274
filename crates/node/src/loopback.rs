//! A whole network on 127.0.0.1 in one directory, for tests, benchmarks and demos that start
//! nodes themselves (`kagi up` does the same with its own re-run rules).

use std::path::Path;

use kagi_control::Topology;

use crate::client::Etsi014Client;
use crate::config::{NodeConfig, TlsConfig};
use crate::pki::Pki;

/// A fresh, empty directory under the system temp dir, unique to this process and call (tests,
/// benchmarks and demos that set up a network of their own).
pub fn scratch_dir(tag: &str) -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "kagi-{tag}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A port that was free a moment ago on 127.0.0.1 (see [`free_port_except`]).
pub fn free_port() -> std::io::Result<u16> {
    free_port_except(&[])
}

/// Whether nothing listens on `port` of 127.0.0.1 right now.
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Every port this process handed out: a port is free until its listener starts, so two
/// networks prepared at once in one process (tests run in parallel) could otherwise both pick
/// it, and one node would fail to start with "address in use".
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Records `p` as handed out; false if this process handed it out before.
fn hand_out(p: u16) -> bool {
    HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(p)
}

/// A port for a listener that starts a moment later: free now, not in `taken`, never handed out
/// before by this process, and, where the system says which ports it hands to outgoing
/// connections, outside that range. A port from `bind(0)` comes from the same ephemeral range as
/// the source ports of outgoing connections, so a node that connects to its neighbours while
/// another starts could take the port meant for that one's listener ("address in use" at
/// start-up). A random pick also keeps networks started at the same moment by different
/// processes apart.
pub fn free_port_except(taken: &[u16]) -> std::io::Result<u16> {
    if let Some((lo, hi)) = listener_port_range() {
        for _ in 0..256 {
            let p = rand::Rng::gen_range(&mut rand::thread_rng(), lo..=hi);
            if !taken.contains(&p) && port_free(p) && hand_out(p) {
                return Ok(p);
            }
        }
    }
    for _ in 0..100 {
        let p = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !taken.contains(&p) && hand_out(p) {
            return Ok(p);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port on 127.0.0.1",
    ))
}

/// Ports below the system's ephemeral range and above the well-known ones, when that leaves a
/// wide enough choice (Linux: `/proc/sys/net/ipv4/ip_local_port_range`).
fn listener_port_range() -> Option<(u16, u16)> {
    const LOWEST: u16 = 10_000;
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_lo: u16 = text.split_whitespace().next()?.parse().ok()?;
    (ephemeral_lo > LOWEST + 4096).then(|| (LOWEST, ephemeral_lo - 1))
}

/// Gives every node of `topo` fresh loopback addresses, writes `dir/topology.toml`, issues the
/// CA, every node and SAE certificate and every node's advert signing key under `dir/pki`, seals a fresh secret per link into its
/// two nodes' stores, and returns one config per node (stores under `dir/db`, default settings
/// adjusted by `tune`).
pub fn prepare(
    dir: &Path,
    topo: &mut Topology,
    tune: impl Fn(&mut NodeConfig),
) -> anyhow::Result<Vec<NodeConfig>> {
    std::fs::create_dir_all(dir)?;
    for n in &mut topo.nodes {
        n.peer_addr = Some(format!("127.0.0.1:{}", free_port()?));
        n.etsi014_addr = Some(format!("127.0.0.1:{}", free_port()?));
    }
    let topo_path = dir.join("topology.toml");
    std::fs::write(&topo_path, topo.to_toml())?;
    let pki = Pki::open_or_create(&dir.join("pki"))?;
    let advert_keys = pki.ensure_advert_keys(topo.nodes.iter().map(|n| n.id.as_str()))?;
    let mut cfgs = Vec::with_capacity(topo.nodes.len());
    for n in &topo.nodes {
        let p = pki.ensure_node(&n.id)?;
        for s in &n.saes {
            pki.ensure_sae(s)?;
        }
        let mut cfg = NodeConfig {
            node_id: n.id.clone(),
            topology: topo_path.clone(),
            data_dir: dir.join("db"),
            tls: TlsConfig {
                ca: pki.ca_cert_path(),
                cert: p.cert,
                key: p.key,
            },
            etsi014: Default::default(),
            pool: Default::default(),
            routing: Default::default(),
            peers: Default::default(),
            link_state: crate::config::LinkStateConfig {
                signing_key: Some(pki.advert_key_path(&n.id)),
                public_keys: Some(advert_keys.clone()),
            },
            store: Default::default(),
            delivery: Default::default(),
            skip_addr: None,
            etsi004: None,
            management: None,
            tamper: Default::default(),
            quotas: Default::default(),
            source: None,
        };
        tune(&mut cfg);
        cfgs.push(cfg);
    }
    crate::seal::links::provision(topo, &cfgs)?;
    Ok(cfgs)
}

/// A chain of nodes `ids` 20 km apart, each with one SAE `sae-<id>`, its simulated links started
/// a second ago at five times the real rate (fast enough for tests), [`prepare`]d under `dir`
/// with pools of `pool_bytes` filled in 1 KiB relays; `tune` adjusts each config further.
pub fn line_network(
    dir: &Path,
    ids: &[&str],
    seed: u64,
    pool_bytes: u64,
    tune: impl Fn(&mut NodeConfig),
) -> anyhow::Result<(Topology, Vec<NodeConfig>)> {
    let mut topo = Topology::line("line", ids, 20.0, |n| vec![format!("sae-{n}")]);
    topo.seed = seed;
    topo.epoch_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .saturating_sub(1);
    topo.rate_multiplier = 5.0;
    let cfgs = prepare(dir, &mut topo, |c| {
        c.pool = crate::config::PoolConfig {
            target_bytes: pool_bytes,
            relay_chunk_bytes: 1024,
            ..Default::default()
        };
        tune(c);
    })?;
    Ok((topo, cfgs))
}

/// An ETSI 014 client for `sae` at its node of a network [`prepare`]d in `dir`.
pub fn sae_client(dir: &Path, topo: &Topology, sae: &str) -> anyhow::Result<Etsi014Client> {
    let pki = Pki::open_or_create(&dir.join("pki"))?;
    let p = pki.sae_paths(sae);
    let addr = topo
        .node_of_sae(sae)
        .and_then(|n| n.etsi014_addr.clone())
        .ok_or_else(|| anyhow::anyhow!("SAE {sae} has no node with an ETSI 014 address"))?;
    Ok(Etsi014Client::from_files(
        &format!("https://{addr}"),
        &pki.ca_cert_path(),
        &p.cert,
        &p.key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two networks prepared at once in one process (parallel tests) must not get the same
    /// port: 2,000 picks from a range of ~20,000 would repeat some ~90 times by chance.
    #[test]
    fn a_process_never_hands_out_a_port_twice() {
        let picks: Vec<u16> = std::thread::scope(|s| {
            let a = s.spawn(|| (0..1000).map(|_| free_port().unwrap()).collect::<Vec<_>>());
            let b = s.spawn(|| (0..1000).map(|_| free_port().unwrap()).collect::<Vec<_>>());
            let mut v = a.join().unwrap();
            v.extend(b.join().unwrap());
            v
        });
        let distinct: std::collections::BTreeSet<u16> = picks.iter().copied().collect();
        assert_eq!(distinct.len(), picks.len(), "a port was handed out twice");
    }
}
