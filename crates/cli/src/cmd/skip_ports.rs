//! `kagi up`: a Cisco SKIP port and an ETSI 004 port for every node (kept across runs while
//! free).

use std::path::Path;

use kagi_node::config::{Etsi004Config, NodeConfig};

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// `old` if it is still free, else a free port; never one in `taken` (every port this run has
/// handed out so far, to any node), which it joins. Nothing listens on a picked port until the
/// nodes start, so only this list keeps two nodes' listeners apart.
fn pick(old: Option<u16>, taken: &mut Vec<u16>) -> Option<u16> {
    let port = old
        .filter(|p| !taken.contains(p) && kagi_node::loopback::port_free(*p))
        .or_else(|| kagi_node::loopback::free_port_except(taken).ok())?;
    taken.push(port);
    Some(port)
}

/// `cfg` with `skip_addr` set: the port of the config at `cfg_path` from an earlier run if it is
/// still free, else a free port not in `taken` (which it joins).
pub fn with_skip_port(mut cfg: NodeConfig, cfg_path: &Path, taken: &mut Vec<u16>) -> NodeConfig {
    let old = NodeConfig::load(cfg_path)
        .ok()
        .and_then(|c| c.skip_addr)
        .and_then(|a| port_of(&a));
    cfg.skip_addr = pick(old, taken).map(|p| format!("127.0.0.1:{p}"));
    cfg
}

/// `cfg` with an `[etsi004]` listener: the earlier run's settings with its port if still free,
/// else defaults on a free port not in `taken` (which it joins).
pub fn with_etsi004_port(mut cfg: NodeConfig, cfg_path: &Path, taken: &mut Vec<u16>) -> NodeConfig {
    let old = NodeConfig::load(cfg_path).ok().and_then(|c| c.etsi004);
    let port = pick(old.as_ref().and_then(|c| port_of(&c.listen)), taken);
    cfg.etsi004 = port.map(|p| {
        let listen = format!("127.0.0.1:{p}");
        match old {
            Some(o) => Etsi004Config { listen, ..o },
            None => Etsi004Config::new(listen),
        }
    });
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on a picked port until the nodes start, so only the shared list keeps
    /// two nodes' SKIP and ETSI 004 listeners from being handed the same port.
    #[test]
    fn every_pick_joins_the_run_list_and_none_repeats() {
        let mut taken = vec![40_000, 40_001];
        let mut picked = Vec::new();
        for _ in 0..64 {
            picked.push(pick(None, &mut taken).expect("a free port"));
        }
        let mut unique = picked.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), picked.len(), "a port was handed out twice");
        assert!(picked.iter().all(|p| *p != 40_000 && *p != 40_001));
        assert_eq!(taken.len(), 2 + 64, "each pick joins the list");
        let kept = picked[0];
        assert_ne!(
            pick(Some(kept), &mut taken),
            Some(kept),
            "a taken old port is not reused"
        );
    }
}
