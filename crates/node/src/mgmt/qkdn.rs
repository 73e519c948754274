//! A read-only ETSI GS QKD 015-shaped view of this node for SDN controllers: RESTCONF JSON
//! (RFC 8040) of the `etsi-qkd-sdn-node` YANG module's `qkd_node` container, built from the same
//! live status as `/api/v1/status`.
//!
//! What maps to what:
//! - `qkd_node`: `qkdn_id` (a UUID derived from the node ID, the same at every node that names
//!   it), `qkdn_location_id` (the node ID), `qkdn_status` (`OPERATING`, or `OUT` while fenced
//!   after a storage fault), `qkdn_version`, `qkdn_capabilities`.
//! - `qkd_interfaces/qkd_interface`: one per QKD link end (`qkdi_type` from the link's protocol:
//!   `CV-QKD` for cv-gg02, `DV-QKD` otherwise; `qkdi_model` names the protocol).
//! - `qkd_links/qkd_link`: one `PHYS` link per QKD link (`qkdl_enable` = in service,
//!   `qkdl_status` `ACTIVE` / `PASSIVE` (peer unreachable) / `OFF` (out of service),
//!   `qkdl_performance.skr` = the modelled secret key rate, `eskr` = the measured intake) and one
//!   `VIRT` link per other node reached by relay (`virt_next_hop` = the route's next node,
//!   `ACTIVE` while a route exists, else `PENDING`).
//! - `qkd_applications/qkd_app`: one `CLIENT` application per SAE attached to this node.
//!
//! Identity values carry the `etsi-qkd-node-types:` prefix as RESTCONF JSON requires.

use serde_json::{json, Value};
use uuid::Uuid;

use super::api::MgmtCtx;

/// The RESTCONF path of the view.
pub const PATH: &str = "/restconf/data/etsi-qkd-sdn-node:qkd_node";
/// RESTCONF's JSON media type.
pub const MEDIA_TYPE: &str = "application/yang-data+json";

const TYPES: &str = "etsi-qkd-node-types:";

/// A stable UUID for a name (node, link or application): the same at every node.
pub fn uuid_of(kind: &str, name: &str) -> Uuid {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("kagi-qkdn:{kind}:{name}").as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

fn id(x: &str) -> String {
    format!("{TYPES}{x}")
}

/// The `{"etsi-qkd-sdn-node:qkd_node": {...}}` document.
pub fn view(ctx: &MgmtCtx, km: &kagi_km::KmStatus) -> Value {
    let me = ctx.ops.node_id();
    let up = ctx.ops.peers_up();
    let node_uuid = uuid_of("node", me);
    let mut interfaces = Vec::new();
    let mut links = Vec::new();
    for (i, l) in km.links.iter().enumerate() {
        let spec = ctx.topology.link(me, &l.peer);
        let protocol = spec
            .map(|s| s.protocol_name().to_owned())
            .unwrap_or_default();
        let tech = if protocol == "cv-gg02" {
            "CV-QKD"
        } else {
            "DV-QKD"
        };
        let status = if !l.in_service {
            "OFF"
        } else if up.contains(&l.peer) {
            "ACTIVE"
        } else {
            "PASSIVE"
        };
        let qkdi = 100 + i as u32;
        interfaces.push(json!({
            "qkdi_id": qkdi,
            "qkdi_model": format!("kagi simulated {protocol}"),
            "qkdi_type": id(tech),
            "qkdi_status": id(if status == "ACTIVE" { "UP" } else { "DOWN" }),
        }));
        let mut pair = [me.to_owned(), l.peer.clone()];
        pair.sort();
        let (_, rate) = ctx.ops.link_intake(&l.peer);
        links.push(json!({
            "qkdl_id": uuid_of("link", &pair.join("--")),
            "qkdl_enable": l.in_service,
            "qkdl_local": {"qkdn_id": node_uuid, "qkdi_id": qkdi},
            "qkdl_remote": {"qkdn_id": uuid_of("node", &l.peer)},
            "qkdl_type": id("PHYS"),
            "qkdl_status": id(status),
            "qkdl_performance": {
                "skr": ctx.model_rates.get(&l.peer).map(|r| r.round() as u64),
                "eskr": (rate * 8.0).round() as u64,
                "expected_consumption": 0,
            },
        }));
    }
    for p in km.pools.iter().filter(|p| p.peer != me) {
        if ctx.topology.link(me, &p.peer).is_some() && p.route.len() == 2 {
            // A neighbour's end-to-end key rides the physical link listed above.
            continue;
        }
        links.push(json!({
            "qkdl_id": uuid_of("virt", &format!("{me}->{}", p.peer)),
            "qkdl_enable": true,
            "qkdl_local": {"qkdn_id": node_uuid},
            "qkdl_remote": {"qkdn_id": uuid_of("node", &p.peer)},
            "qkdl_type": id("VIRT"),
            "qkdl_status": id(if p.route.is_empty() { "PENDING" } else { "ACTIVE" }),
            "virt_next_hop": p.route.get(1).map(|n| vec![uuid_of("node", n)]).unwrap_or_default(),
            "virt_bandwidth": Value::Null,
        }));
    }
    let apps: Vec<Value> = ctx
        .topology
        .node(me)
        .map(|n| n.saes.clone())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            json!({
                "app_id": uuid_of("sae", s),
                "app_status": id("ON"),
                "app_type": id("CLIENT"),
                "server_app_id": format!("qkd://{s}"),
                "client_app_id": [],
                "local_qkdn_id": node_uuid,
            })
        })
        .collect();
    json!({
        "etsi-qkd-sdn-node:qkd_node": {
            "qkdn_id": node_uuid,
            "qkdn_location_id": me,
            "qkdn_status": id(if km.fenced { "OUT" } else { "OPERATING" }),
            "qkdn_version": format!("kagi {}", env!("CARGO_PKG_VERSION")),
            "qkdn_capabilities": {
                "link_stats_support": true,
                "application_stats_support": false,
                "key_relay_mode_enable": true,
            },
            "qkd_applications": {"qkd_app": apps},
            "qkd_interfaces": {"qkd_interface": interfaces},
            "qkd_links": {"qkd_link": links},
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(uuid_of("node", "a"), uuid_of("node", "a"));
        assert_ne!(uuid_of("node", "a"), uuid_of("node", "b"));
        assert_ne!(uuid_of("node", "a"), uuid_of("sae", "a"));
    }
}
