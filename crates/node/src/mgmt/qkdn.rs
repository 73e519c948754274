//! A read-only ETSI GS QKD 015 (V2.1.1) view of this node for SDN controllers: RESTCONF JSON
//! (RFC 8040, RFC 7951 encoding) of the `qkd_node` container of the `etsi-qkd-sdn-node` YANG
//! module (revision 2022-01-30, namespace `urn:etsi:qkd:yang:etsi-qkd-node`), built from the
//! same live status as `/api/v1/status`. Names, nesting and value types follow that module and
//! its `etsi-qkd-node-types` identities; leaves kagi has nothing true to say about are left out
//! (all of them are optional), never filled with placeholders.
//!
//! What maps to what:
//! - `qkd_node`: `qkdn_id` (a UUID derived from the node ID, the same at every node that names
//!   it), `qkdn_location_id` (the node ID), `qkdn_status` (`OPERATING`, or `OUT` while fenced
//!   after a storage fault or a tamper signal), `qkdn_version`, `qkdn_capabilities`.
//! - `qkd_interfaces/qkd_interface`: one per QKD link end. `qkdi_id` is the neighbour's place
//!   (1-based) in this node's neighbours sorted by ID, so the far end can name it too;
//!   `qkdi_type` from the link's protocol (`CV-QKD` for cv-gg02, `DV-QKD` otherwise),
//!   `qkdi_model` names the protocol, `qkdi_status` `ENABLED` (in service, neighbour
//!   reachable), `DISABLED` (taken out of service) or `FAILED` (neighbour unreachable).
//! - `qkd_links/qkd_link`: one `PHYS` link per QKD link, with both ends' interface IDs;
//!   `qkdl_enable` = in service; `qkdl_status` per the module's identities: `ACTIVE` (making
//!   key), `PASSIVE` (not making key, unspent link key left), `OFF` (neither);
//!   `qkdl_performance`: `skr` the modelled secret key rate, `eskr` the measured intake (bit/s),
//!   `expected_consumption` the sum of `max_bandwidth` of the applications it backs. One `VIRT`
//!   link per other node reached by relay: `virt_next_hop` = the route's next node; `ACTIVE`
//!   while a route exists, `PASSIVE` without one while pooled key is left, else `PENDING`.
//!   `qkdl_applications` lists the key streams each link backs.
//! - `qkd_applications/qkd_app`: one `CLIENT` application per SAE attached to this node (ETSI
//!   014 and SKIP consumers; no peer is registered for them) and one per ETSI GS QKD 004 key
//!   stream known here: `app_id` = the Key_stream_ID, `server_app_id` / `client_app_id` = the
//!   source / destination `qkd://SAE` URIs, `app_status` `ON` while both ends are open, else
//!   `DISCONNECTED`; `app_qos` and `app_priority` from the QoS granted at OPEN_CONNECT;
//!   `creation_time`, `expiration_time` (TTL); `remote_qkdn_id` and `backing_qkdl_id` (the
//!   physical or virtual link towards the other end's node).
//!
//! Identity values carry the `etsi-qkd-node-types:` module prefix as RFC 7951 requires; `uint32`
//! leaves are JSON numbers, clamped to their range. Errors on `/restconf/` paths are RESTCONF
//! error documents ([`error`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kagi_control::Topology;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::api::MgmtCtx;
use crate::etsi004::StreamInfo;

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

/// The `qkdl_id` of the physical link between two nodes (either way round).
pub fn phys_link_id(x: &str, y: &str) -> Uuid {
    let mut pair = [x, y];
    pair.sort_unstable();
    uuid_of("link", &pair.join("--"))
}

/// The `qkdl_id` of `me`'s virtual (relayed) link to `peer`.
pub fn virt_link_id(me: &str, peer: &str) -> Uuid {
    uuid_of("virt", &format!("{me}->{peer}"))
}

/// The `qkdi_id` of `node`'s interface towards neighbour `peer`: its 1-based place among the
/// node's neighbours sorted by ID (computable at both ends).
pub fn qkdi_id(topology: &Topology, node: &str, peer: &str) -> Option<u32> {
    let mut n: Vec<&str> = topology.neighbours(node).map(|(p, _)| p).collect();
    n.sort_unstable();
    n.dedup();
    n.iter()
        .position(|p| *p == peer)
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// Drops empty arrays: RFC 7951 encodes a list or leaf-list with no entries by leaving it out.
fn prune(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, x| !matches!(x, Value::Array(a) if a.is_empty()));
            o.values_mut().for_each(prune);
        }
        Value::Array(a) => a.iter_mut().for_each(prune),
        _ => {}
    }
}

fn id(x: &str) -> String {
    format!("{TYPES}{x}")
}

/// A `uint32` leaf (RFC 7951: a JSON number), clamped to the type's range.
fn u32_leaf(x: f64) -> u32 {
    if x.is_finite() && x > 0.0 {
        x.round().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// `yang:date-and-time` (RFC 3339, UTC).
fn date_time(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A RESTCONF error document (RFC 8040 §7.1) with `status` and the matching `error-tag`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let tag = match status {
        StatusCode::FORBIDDEN => "access-denied",
        StatusCode::METHOD_NOT_ALLOWED => "operation-not-supported",
        StatusCode::SERVICE_UNAVAILABLE => "resource-denied",
        _ => "invalid-value",
    };
    let body = json!({"ietf-restconf:errors": {"error": [{
        "error-type": "protocol",
        "error-tag": tag,
        "error-message": message.into(),
    }]}});
    (
        status,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// One key stream as a `qkd_app`, and the link backing it (if its other end is elsewhere).
fn stream_app(me: &str, topology: &Topology, s: &StreamInfo) -> (Value, Option<Uuid>) {
    let other = if s.node[0] == me {
        &s.node[1]
    } else {
        &s.node[0]
    };
    let backing = (other != me).then(|| {
        if topology.link(me, other).is_some() {
            phys_link_id(me, other)
        } else {
            virt_link_id(me, other)
        }
    });
    let mut app = json!({
        "app_id": s.ksid,
        "app_status": id(if s.open[0] && s.open[1] { "ON" } else { "DISCONNECTED" }),
        "app_type": id("CLIENT"),
        "server_app_id": format!("qkd://{}", s.sae[0]),
        "client_app_id": [format!("qkd://{}", s.sae[1])],
        "local_qkdn_id": uuid_of("node", me),
        "remote_qkdn_id": uuid_of("node", other),
        "backing_qkdl_id": backing.into_iter().collect::<Vec<_>>(),
    });
    if let Some(q) = s.local.iter().flatten().next() {
        app["app_priority"] = json!(q.priority);
        app["app_qos"] = json!({
            "max_bandwidth": q.max_bps,
            "min_bandwidth": q.min_bps,
            "jitter": q.jitter,
            "ttl": q.ttl,
        });
    }
    if let Some(t) = date_time(s.created) {
        app["creation_time"] = json!(t);
    }
    if let Some(t) = date_time(s.expires) {
        app["expiration_time"] = json!(t);
    }
    (app, backing)
}

/// The `{"etsi-qkd-sdn-node:qkd_node": {...}}` document; `streams` are this node's ETSI 004
/// key streams.
pub fn view(ctx: &MgmtCtx, km: &kagi_km::KmStatus, streams: &[StreamInfo]) -> Value {
    let me = ctx.ops.node_id();
    let up = ctx.ops.peers_up();
    let node_uuid = uuid_of("node", me);

    // Applications first: the links list the ones they back.
    let mut apps: Vec<Value> = ctx
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
                "local_qkdn_id": node_uuid,
            })
        })
        .collect();
    // Per backing link: the applications and the bandwidth they may draw.
    let mut backed: BTreeMap<Uuid, (Vec<Uuid>, u64)> = BTreeMap::new();
    for s in streams {
        let (app, backing) = stream_app(me, &ctx.topology, s);
        if let Some(b) = backing {
            let e = backed.entry(b).or_default();
            e.0.push(s.ksid);
            e.1 += app["app_qos"]["max_bandwidth"].as_u64().unwrap_or(0);
        }
        apps.push(app);
    }
    let apps_of = |link: Uuid| backed.get(&link).cloned().unwrap_or_default();

    let mut interfaces = Vec::new();
    let mut links = Vec::new();
    for l in &km.links {
        let spec = ctx.topology.link(me, &l.peer);
        let protocol = spec.map(|s| s.protocol_name()).unwrap_or("unknown");
        let reachable = up.contains(l.peer.as_str());
        let making_key = l.in_service && reachable;
        let Some(qkdi) = qkdi_id(&ctx.topology, me, &l.peer) else {
            continue;
        };
        interfaces.push(json!({
            "qkdi_id": qkdi,
            "qkdi_model": format!("kagi simulated {protocol}"),
            "qkdi_type": id(if protocol == "cv-gg02" { "CV-QKD" } else { "DV-QKD" }),
            "qkdi_status": id(if !l.in_service {
                "DISABLED"
            } else if reachable {
                "ENABLED"
            } else {
                "FAILED"
            }),
        }));
        let status = if making_key {
            "ACTIVE"
        } else if l.tx_bytes + l.rx_bytes > 0 {
            "PASSIVE"
        } else {
            "OFF"
        };
        let lid = phys_link_id(me, &l.peer);
        let (app_ids, consumption) = apps_of(lid);
        let (_, rate) = ctx.ops.link_intake(&l.peer);
        let mut perf = Map::new();
        perf.insert(
            "expected_consumption".into(),
            json!(u32_leaf(consumption as f64)),
        );
        if let Some(skr) = ctx.model_rates.get(l.peer.as_str()) {
            perf.insert("skr".into(), json!(u32_leaf(*skr)));
        }
        perf.insert("eskr".into(), json!(u32_leaf(rate * 8.0)));
        let mut remote = json!({"qkdn_id": uuid_of("node", &l.peer)});
        if let Some(r) = qkdi_id(&ctx.topology, &l.peer, me) {
            remote["qkdi_id"] = json!(r);
        }
        links.push(json!({
            "qkdl_id": lid,
            "qkdl_status": id(status),
            "qkdl_enable": l.in_service,
            "qkdl_local": {"qkdn_id": node_uuid, "qkdi_id": qkdi},
            "qkdl_remote": remote,
            "qkdl_type": id("PHYS"),
            "qkdl_applications": app_ids,
            "qkdl_performance": perf,
        }));
    }
    for p in km.pools.iter().filter(|p| p.peer != me) {
        if ctx.topology.link(me, &p.peer).is_some() && p.route.len() == 2 {
            // A neighbour's end-to-end key rides the physical link listed above.
            continue;
        }
        let status = if !p.route.is_empty() {
            "ACTIVE"
        } else if p.out_bytes + p.in_bytes > 0 {
            "PASSIVE"
        } else {
            "PENDING"
        };
        let lid = virt_link_id(me, &p.peer);
        let (app_ids, consumption) = apps_of(lid);
        links.push(json!({
            "qkdl_id": lid,
            "qkdl_status": id(status),
            "qkdl_enable": true,
            "qkdl_local": {"qkdn_id": node_uuid},
            "qkdl_remote": {"qkdn_id": uuid_of("node", &p.peer)},
            "qkdl_type": id("VIRT"),
            "qkdl_applications": app_ids,
            "virt_next_hop": p.route.get(1).map(|n| vec![uuid_of("node", n)]).unwrap_or_default(),
            "qkdl_performance": {"expected_consumption": u32_leaf(consumption as f64)},
        }));
    }
    let mut doc = json!({
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
    });
    prune(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(uuid_of("node", "a"), uuid_of("node", "a"));
        assert_ne!(uuid_of("node", "a"), uuid_of("node", "b"));
        assert_ne!(uuid_of("node", "a"), uuid_of("sae", "a"));
        assert_eq!(phys_link_id("a", "b"), phys_link_id("b", "a"));
        assert_ne!(virt_link_id("a", "c"), virt_link_id("c", "a"));
    }

    #[test]
    fn interface_ids_are_known_at_both_ends() {
        let t = Topology::line("l", &["a", "b", "c"], 10.0, |_| vec![]);
        assert_eq!(qkdi_id(&t, "b", "a"), Some(1));
        assert_eq!(qkdi_id(&t, "b", "c"), Some(2));
        assert_eq!(qkdi_id(&t, "a", "b"), Some(1));
        assert_eq!(qkdi_id(&t, "a", "c"), None);
    }

    #[test]
    fn empty_lists_are_left_out() {
        let mut v = json!({"a": [], "b": {"c": [], "d": [{"e": []}], "f": 1}});
        prune(&mut v);
        assert_eq!(v, json!({"b": {"d": [{}], "f": 1}}));
    }

    #[test]
    fn uint32_leaves_are_clamped() {
        assert_eq!(u32_leaf(-1.0), 0);
        assert_eq!(u32_leaf(f64::NAN), 0);
        assert_eq!(u32_leaf(1.0e12), u32::MAX);
        assert_eq!(u32_leaf(12.4), 12);
    }
}
