//! `kagi up`: a Cisco SKIP port for every node (kept across runs while free).

use std::path::Path;

use kagi_control::Topology;
use kagi_node::config::NodeConfig;

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// `cfg` with `skip_addr` set: the port of the config at `cfg_path` from an earlier run if it is
/// still free, else a free port that no node of `topo` uses.
pub fn with_skip_port(mut cfg: NodeConfig, cfg_path: &Path, topo: &Topology) -> NodeConfig {
    let taken: Vec<u16> = topo
        .nodes
        .iter()
        .flat_map(|n| [n.etsi014_addr.as_deref(), n.peer_addr.as_deref()])
        .flatten()
        .filter_map(port_of)
        .collect();
    let free =
        |p: u16| !taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let old = NodeConfig::load(cfg_path)
        .ok()
        .and_then(|c| c.skip_addr)
        .and_then(|a| port_of(&a))
        .filter(|p| free(*p));
    let port = old.or_else(|| {
        (0..100).find_map(|_| {
            let p = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            (!taken.contains(&p)).then_some(p)
        })
    });
    cfg.skip_addr = port.map(|p| format!("127.0.0.1:{p}"));
    cfg
}
