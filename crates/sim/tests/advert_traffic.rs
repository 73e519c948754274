//! What signed link-state adverts cost on the wire: advert messages and bytes per node and
//! second on the 24-node japan24 example, measured on the real cores (docs/PERFORMANCE.md,
//! "Signed link-state adverts"). The simulator's tags are 16 bytes; a node's ML-DSA-65
//! signature is 3309, so the real bytes follow from the message count.
//!
//! `cargo test --release -p kagi-sim --test advert_traffic -- --nocapture` prints the numbers.

use std::time::Duration;

use kagi_km::Policy;
use kagi_sim::{Faults, LinkSupply, Sim};

/// ML-DSA-65 signature bytes, and the extra byte of its length prefix (postcard varint: one
/// byte below 128, two up to 16383) over the simulator's 16-byte tag.
const ML_DSA_65_SIG: u64 = 3309;
const SIM_TAG: u64 = 16;

#[test]
fn japan24_advert_traffic_is_one_copy_per_neighbour_and_origin() {
    let topo =
        kagi_control::Topology::from_toml(include_str!("../../../docs/examples/japan24.toml"))
            .unwrap();
    let n = topo.nodes.len() as u64;
    let degree_sum = 2 * topo.links.len() as u64;
    let supply = LinkSupply {
        interval: Duration::from_millis(100),
        block_bytes: 8192,
    };
    let mut sim = Sim::new(topo, 1, Faults::default(), supply, Policy::default());
    sim.run_for(Duration::from_secs(3));
    let (m0, b0) = (sim.advert_msgs, sim.advert_bytes);
    let secs = 60;
    sim.run_for(Duration::from_secs(secs));
    let msgs = sim.advert_msgs - m0;
    let bytes = sim.advert_bytes - b0;
    let per_node_s = msgs as f64 / (n * secs) as f64;
    let sim_bps = bytes as f64 / (n * secs) as f64;
    let mldsa_bytes = bytes + msgs * (ML_DSA_65_SIG - SIM_TAG + 1);
    let mldsa_bps = mldsa_bytes as f64 / (n * secs) as f64;
    eprintln!(
        "japan24: {n} nodes, {} links; per node and second: {per_node_s:.1} advert messages, \
         {sim_bps:.0} B with 16-byte tags, {mldsa_bps:.0} B with ML-DSA-65 signatures \
         ({:.0} bytes per message unsigned)",
        degree_sum / 2,
        (bytes - msgs * SIM_TAG) as f64 / msgs as f64,
    );
    // Every node sends its own advert to each neighbour at least once per refresh interval
    // (more often while a link's cost class moves, at most once per check), and forwards each
    // other origin's newest advert once to each neighbour but the one it came from.
    let lp = Policy::default().link_state.unwrap();
    let refreshes = secs / lp.refresh_interval.as_secs();
    let checks = secs / lp.advert_interval.as_secs() + 1;
    assert!(
        msgs >= degree_sum * refreshes,
        "{msgs} advert messages in {secs} s: some node stopped advertising"
    );
    assert!(
        msgs <= n * degree_sum * checks,
        "{msgs} advert messages in {secs} s: adverts are flooded more than once per neighbour"
    );
    // Every node holds every origin's advert.
    for node in sim
        .topology()
        .nodes
        .iter()
        .map(|x| x.id.clone())
        .collect::<Vec<_>>()
    {
        let held = sim.node(&node).unwrap().link_adverts_held();
        assert_eq!(held.len() as u64, n, "{node}");
        assert_eq!(
            sim.node(&node)
                .unwrap()
                .stats()
                .link_adverts_unauthenticated,
            0,
            "{node} dropped a genuine advert"
        );
    }
}
