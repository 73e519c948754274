//! From what each node's management listener said to one picture of the network (pure; no
//! I/O, so the rules for colours and states are tested without a network).

use serde_json::{json, Value};

use super::DashConfig;

/// What one node answered in one polling round.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// Node ID.
    pub id: String,
    /// `GET /api/v1/status`, when the node answered.
    pub status: Option<Value>,
    /// `GET /api/v1/refusals` (array) or null.
    pub refusals: Value,
    /// `GET /api/v1/audit` (array) or null.
    pub audit: Value,
    /// Why the node did not answer.
    pub error: Option<String>,
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The state pushed to browsers: nodes, links, pools, relays, totals, refusals and alerts.
/// A node that did not answer is `down`, and so is every link that touches it.
pub fn assemble(cfg: &DashConfig, reports: &[NodeReport], time_ms: u64) -> Value {
    let report = |id: &str| reports.iter().find(|r| r.id == id);
    let status = |id: &str| report(id).and_then(|r| r.status.as_ref());
    let polled = !reports.is_empty();
    let mut totals = json!({
        "keys_delivered": 0u64, "keys_served": 0u64, "relays_started": 0u64,
        "relays_acked": 0u64, "relays_abandoned": 0u64, "relays_in_flight": 0u64,
        "link_key_in_bytes": 0u64, "refusals": 0u64, "nodes_up": 0u64, "links_up": 0u64,
    });
    let add = |t: &mut Value, k: &str, v: u64| {
        t[k] = json!(u(&t[k]) + v);
    };
    let mut alerts: Vec<Value> = Vec::new();
    let mut nodes = Vec::new();
    for n in &cfg.nodes {
        let st = status(&n.id);
        let state = match st {
            None if !polled => "unknown",
            None => "down",
            Some(s) if s["fenced"] == json!(true) => "fenced",
            Some(s) if s["draining"] == json!(true) => "draining",
            Some(_) => "up",
        };
        if state == "down" {
            alerts.push(json!({"time_ms": time_ms, "node": n.id, "level": "error",
                "text": format!("node {} is not answering", n.id)}));
        } else if state == "fenced" {
            alerts.push(json!({"time_ms": time_ms, "node": n.id, "level": "error",
                "text": format!("node {} is fenced after a storage fault", n.id)}));
        }
        let mut entry = json!({
            "id": n.id, "state": state, "saes": n.saes,
            "keys_served": 0, "pool_out_bytes": 0, "relays_in_flight": 0, "peers_up": 0,
            "error": report(&n.id).and_then(|r| r.error.clone()),
        });
        if let Some((x, y)) = cfg.positions.get(&n.id) {
            entry["x"] = json!(x);
            entry["y"] = json!(y);
        }
        if let Some(s) = st {
            let stats = &s["stats"];
            let served = u(&stats["keys_served_master"]) + u(&stats["keys_served_slave"]);
            entry["keys_served"] = json!(served);
            let pools = s["pools"].as_array().cloned().unwrap_or_default();
            entry["pool_out_bytes"] = json!(pools.iter().map(|p| u(&p["out_bytes"])).sum::<u64>());
            let inflight: u64 = pools.iter().map(|p| u(&p["relays_in_flight"])).sum();
            entry["relays_in_flight"] = json!(inflight);
            entry["peers_up"] = json!(s["peers_up"].as_array().map(Vec::len).unwrap_or(0));
            add(&mut totals, "nodes_up", 1);
            add(
                &mut totals,
                "keys_delivered",
                u(&stats["keys_served_master"]),
            );
            add(&mut totals, "keys_served", served);
            add(&mut totals, "relays_started", u(&stats["relays_started"]));
            add(&mut totals, "relays_acked", u(&stats["relays_acked"]));
            add(
                &mut totals,
                "relays_abandoned",
                u(&stats["relays_abandoned"]),
            );
            add(&mut totals, "relays_in_flight", inflight);
            add(
                &mut totals,
                "link_key_in_bytes",
                u(&stats["link_key_in_bytes"]),
            );
        }
        nodes.push(entry);
    }

    // A link as both ends see it.
    let end = |me: &str, peer: &str| -> Option<Value> {
        status(me)?["links"]
            .as_array()?
            .iter()
            .find(|l| l["peer"] == peer)
            .cloned()
    };
    let mut links = Vec::new();
    for l in &cfg.links {
        let (ea, eb) = (end(&l.a, &l.b), end(&l.b, &l.a));
        let node_down = |id: &str| polled && status(id).is_none();
        let ends: Vec<&Value> = [ea.as_ref(), eb.as_ref()].into_iter().flatten().collect();
        let state = if node_down(&l.a) || node_down(&l.b) {
            "down"
        } else if ends.iter().any(|e| e["state"] == "out_of_service") {
            "out_of_service"
        } else if ends.iter().any(|e| e["state"] == "down") {
            "down"
        } else if ends.is_empty() {
            "unknown"
        } else {
            "up"
        };
        if state == "up" {
            add(&mut totals, "links_up", 1);
        } else if state != "unknown" {
            alerts.push(json!({"time_ms": time_ms, "node": l.a, "level": if state == "down" {"error"} else {"warning"},
                "text": format!("link {}–{} is {}", l.a, l.b, state.replace('_', " "))}));
        }
        let rates: Vec<f64> = ends
            .iter()
            .filter_map(|e| e["key_rate_bytes_per_second"].as_f64())
            .collect();
        let rate = if rates.is_empty() {
            0.0
        } else {
            rates.iter().sum::<f64>() / rates.len() as f64
        };
        let tx = |e: &Option<Value>| e.as_ref().map(|e| u(&e["tx_bytes"]));
        let buffer = match (tx(&ea), tx(&eb)) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0,
        };
        links.push(json!({
            "id": format!("{}--{}", l.a, l.b), "a": l.a, "b": l.b, "length_km": l.length_km,
            "state": state, "rate_bytes_per_second": rate, "buffer_bytes": buffer,
            "a_to_b_bytes": tx(&ea), "b_to_a_bytes": tx(&eb),
            "model_rate_bps": ea.as_ref().or(eb.as_ref()).map(|e| e["model_rate_bps"].clone()),
        }));
    }

    let mut pools = Vec::new();
    let mut relays = Vec::new();
    for n in &cfg.nodes {
        let Some(s) = status(&n.id) else { continue };
        for p in s["pools"].as_array().into_iter().flatten() {
            // Multi-path relay: the node-disjoint paths the shares take and how many rebuild
            // a key; a single-path pool reports its route as its only path.
            let paths = match p["paths"].as_array() {
                Some(ps) if !ps.is_empty() => Value::Array(ps.clone()),
                _ if p["route"].as_array().is_some_and(|r| !r.is_empty()) => {
                    json!([p["route"].clone()])
                }
                _ => json!([]),
            };
            let threshold = p["threshold"].as_u64().unwrap_or(1);
            pools.push(
                json!({"from": n.id, "to": p["peer"], "out_bytes": p["out_bytes"],
                "in_bytes": p["in_bytes"], "route": p["route"], "paths": paths,
                "threshold": threshold}),
            );
            if u(&p["relays_in_flight"]) > 0 {
                relays.push(
                    json!({"from": n.id, "to": p["peer"], "count": p["relays_in_flight"],
                    "route": p["route"], "paths": paths, "threshold": threshold}),
                );
            }
        }
    }

    let mut refusals: Vec<Value> = Vec::new();
    let mut audit: Vec<Value> = Vec::new();
    for r in reports {
        for ev in r.refusals.as_array().into_iter().flatten() {
            let mut ev = ev.clone();
            ev["node"] = json!(r.id);
            refusals.push(ev);
        }
        for ev in r.audit.as_array().into_iter().flatten() {
            let mut ev = ev.clone();
            ev["node"] = json!(r.id);
            audit.push(ev);
        }
    }
    totals["refusals"] = json!(refusals.len());
    let newest = |v: &mut Vec<Value>, n: usize| {
        v.sort_by_key(|e| std::cmp::Reverse(u(&e["time_ms"])));
        v.truncate(n);
    };
    newest(&mut refusals, 20);
    newest(&mut audit, 20);
    json!({
        "name": cfg.name, "time_ms": time_ms, "polled": polled,
        "nodes": nodes, "links": links, "pools": pools, "relays": relays,
        "totals": totals, "refusals": refusals, "audit": audit, "alerts": alerts,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{DashLink, DashNode};
    use super::*;

    fn cfg() -> DashConfig {
        DashConfig {
            name: "t".into(),
            nodes: ["a", "b", "c"]
                .iter()
                .map(|id| DashNode {
                    id: id.to_string(),
                    management_url: String::new(),
                    saes: vec![],
                })
                .collect(),
            links: vec![
                DashLink {
                    a: "a".into(),
                    b: "b".into(),
                    length_km: 10.0,
                },
                DashLink {
                    a: "b".into(),
                    b: "c".into(),
                    length_km: 10.0,
                },
            ],
            positions: Default::default(),
            ca: "".into(),
            cert: "".into(),
            key: "".into(),
        }
    }

    fn up(id: &str, links: Value) -> NodeReport {
        NodeReport {
            id: id.into(),
            status: Some(json!({
                "fenced": false, "draining": false, "peers_up": [],
                "stats": {"keys_served_master": 2, "keys_served_slave": 1},
                "links": links,
                "pools": [{"peer": "z", "out_bytes": 100, "relays_in_flight": 1, "route": ["a", "z"],
                    "paths": [["a", "z"], ["a", "y", "z"]], "threshold": 2}],
            })),
            refusals: json!([{"time_ms": 5, "reason": "no_key"}]),
            audit: Value::Null,
            error: None,
        }
    }

    #[test]
    fn a_silent_node_is_down_and_so_are_its_links() {
        let reports = vec![
            up(
                "a",
                json!([{"peer": "b", "state": "up", "tx_bytes": 50, "key_rate_bytes_per_second": 10.0}]),
            ),
            up(
                "b",
                json!([{"peer": "a", "state": "up", "tx_bytes": 40, "key_rate_bytes_per_second": 20.0},
                           {"peer": "c", "state": "up", "tx_bytes": 9}]),
            ),
            NodeReport {
                id: "c".into(),
                status: None,
                refusals: Value::Null,
                audit: Value::Null,
                error: Some("refused".into()),
            },
        ];
        let v = assemble(&cfg(), &reports, 1);
        let states: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["up", "up", "down"]);
        assert_eq!(v["links"][0]["state"], "up");
        assert_eq!(v["links"][0]["buffer_bytes"], 40);
        assert_eq!(v["links"][0]["rate_bytes_per_second"], 15.0);
        assert_eq!(v["links"][1]["state"], "down");
        assert_eq!(v["totals"]["keys_served"], 6);
        assert_eq!(v["totals"]["keys_delivered"], 4);
        assert_eq!(v["totals"]["refusals"], 2);
        assert_eq!(v["relays"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["relays"][0]["paths"],
            json!([["a", "z"], ["a", "y", "z"]])
        );
        assert_eq!(v["relays"][0]["threshold"], 2);
        assert!(v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["text"] == "node c is not answering"));
    }

    #[test]
    fn out_of_service_wins_over_up_and_nothing_polled_is_unknown() {
        let reports = vec![
            up("a", json!([{"peer": "b", "state": "out_of_service"}])),
            up("b", json!([{"peer": "a", "state": "up"}])),
            up("c", json!([])),
        ];
        let v = assemble(&cfg(), &reports, 1);
        assert_eq!(v["links"][0]["state"], "out_of_service");
        let v = assemble(&cfg(), &[], 1);
        assert_eq!(v["nodes"][0]["state"], "unknown");
        assert_eq!(v["links"][0]["state"], "unknown");
    }
}
