//! Shared set-up for the tamper tests: a two-node topology whose epoch is now, and a wait until
//! a node answers its SAE.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kagi_control::Topology;
use kagi_node::client::Etsi014Client;

/// Nodes `a` and `b` 10 km apart, one SAE each, with the link epoch one second ago.
pub fn pair_now() -> Topology {
    let mut topo = Topology::line("pair", &["a", "b"], 10.0, |n| vec![format!("sae-{n}")]);
    topo.epoch_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    topo
}

/// Waits up to 30 s until `GET path` answers 200; panics naming the node otherwise.
pub async fn wait_until_answers(sae: &Etsi014Client, path: &str, node: &str) {
    for _ in 0..300 {
        if let Ok(r) = sae.request("GET", path, None, false).await {
            if r.status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {node} never answered");
}
