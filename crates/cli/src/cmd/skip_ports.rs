//! `kagi up`: a Cisco SKIP port and an ETSI 004 port for every node (kept across runs while
//! free).

use std::path::Path;

use kagi_control::Topology;
use kagi_node::config::{Etsi004Config, NodeConfig};

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// `old` if it is still free, else a free port; never one a node of `topo` or `also` uses.
fn pick(old: Option<u16>, topo: &Topology, also: &[Option<u16>]) -> Option<u16> {
    let mut taken: Vec<u16> = topo
        .nodes
        .iter()
        .flat_map(|n| [n.etsi014_addr.as_deref(), n.peer_addr.as_deref()])
        .flatten()
        .filter_map(port_of)
        .collect();
    taken.extend(also.iter().flatten());
    old.filter(|p| !taken.contains(p) && kagi_node::loopback::port_free(*p))
        .or_else(|| kagi_node::loopback::free_port_except(&taken).ok())
}

/// `cfg` with `skip_addr` set: the port of the config at `cfg_path` from an earlier run if it is
/// still free, else a free port that no node of `topo` uses.
pub fn with_skip_port(mut cfg: NodeConfig, cfg_path: &Path, topo: &Topology) -> NodeConfig {
    let old = NodeConfig::load(cfg_path)
        .ok()
        .and_then(|c| c.skip_addr)
        .and_then(|a| port_of(&a));
    cfg.skip_addr = pick(old, topo, &[]).map(|p| format!("127.0.0.1:{p}"));
    cfg
}

/// `cfg` with an `[etsi004]` listener: the earlier run's settings with its port if still free,
/// else defaults on a free port that neither a node of `topo` nor the SKIP listener uses.
pub fn with_etsi004_port(mut cfg: NodeConfig, cfg_path: &Path, topo: &Topology) -> NodeConfig {
    let old = NodeConfig::load(cfg_path).ok().and_then(|c| c.etsi004);
    let skip = cfg.skip_addr.as_deref().and_then(port_of);
    let port = pick(old.as_ref().and_then(|c| port_of(&c.listen)), topo, &[skip]);
    cfg.etsi004 = port.map(|p| {
        let listen = format!("127.0.0.1:{p}");
        match old {
            Some(o) => Etsi004Config { listen, ..o },
            None => Etsi004Config::new(listen),
        }
    });
    cfg
}
