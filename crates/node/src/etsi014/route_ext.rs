//! The `kagi_route` vendor extension of ETSI 014 `enc_keys`: JSON syntax only. Its meaning
//! (ranges, known nodes, whether the paths exist, which key meets it) is the core's
//! ([`kagi_km::route`]).
//!
//! Request: `{"kagi_route": {"min_disjoint_paths": 3, "avoid_nodes": ["b"], "max_hops": 4}}` in
//! `extension_mandatory` (serve only key relayed under it, or 400) or `extension_optional`
//! (honoured where possible). Answer: `key_container_extension.kagi_route` lists the distinct
//! sets of paths the keys came over (`path_sets`, and `paths`/`threshold` when there is one),
//! each key's `key_extension.kagi_route` its own.

use kagi_km::app::{DeliveredKey, KeyPaths, Refusal};
use kagi_km::NodeId;
use kagi_km::{RelayRoute, RouteRequest};
use serde_json::{json, Map, Value};

/// The extension's name.
pub const NAME: &str = "kagi_route";

/// A request's extensions, read: the route constraint if one was given.
pub(crate) fn parse(
    mandatory: Option<&[Map<String, Value>]>,
    optional: Option<&[Map<String, Value>]>,
) -> Result<Option<RouteRequest>, (String, Option<String>)> {
    let mut found: Option<RouteRequest> = None;
    for (list, is_mandatory) in [(mandatory, true), (optional, false)] {
        for ext in list.unwrap_or_default() {
            for (name, value) in ext {
                if name != NAME {
                    if is_mandatory {
                        return Err((
                            Refusal::EXT_MANDATORY_UNSUPPORTED.into(),
                            Some(format!("unsupported extension {}", shorten(name))),
                        ));
                    }
                    continue; // the standard: unknown optional extensions are ignored
                }
                if found.is_some() {
                    return Err((format!("{NAME} is given more than once"), None));
                }
                found = Some(parse_one(value, is_mandatory).map_err(|e| (e, None))?);
            }
        }
    }
    Ok(found)
}

fn shorten(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    format!("{cut:?}")
}

fn parse_one(v: &Value, mandatory: bool) -> Result<RouteRequest, String> {
    let bad = |m: &str| Err(format!("malformed {NAME} extension: {m}"));
    let Some(obj) = v.as_object() else {
        return bad("it must be a JSON object");
    };
    let mut r = RouteRequest {
        min_disjoint_paths: 1,
        avoid_nodes: Vec::new(),
        max_hops: None,
        mandatory,
    };
    let whole = |field: &str, v: &Value| -> Result<u64, String> {
        v.as_u64().ok_or_else(|| {
            format!("malformed {NAME} extension: {field} must be a whole number ≥ 0 that fits in 64 bits")
        })
    };
    for (k, v) in obj {
        match k.as_str() {
            "min_disjoint_paths" => r.min_disjoint_paths = whole(k, v)?,
            "max_hops" => r.max_hops = Some(whole(k, v)?),
            "avoid_nodes" => {
                let Some(items) = v.as_array() else {
                    return bad("avoid_nodes must be an array of node IDs");
                };
                for i in items {
                    let Some(n) = i.as_str() else {
                        return bad("avoid_nodes must be an array of node IDs (strings)");
                    };
                    r.avoid_nodes.push(NodeId::from(n));
                }
            }
            other => {
                return bad(&format!(
                    "unknown field {} (known: min_disjoint_paths, avoid_nodes, max_hops)",
                    shorten(other)
                ))
            }
        }
    }
    Ok(r)
}

fn route_json(r: &Option<RelayRoute>) -> Value {
    match r {
        Some(r) => json!({"paths": r.paths, "threshold": r.threshold}),
        None => json!({"paths": null, "note": "stored before paths were recorded"}),
    }
}

fn summary(mandatory: bool, sets: &[&Option<RelayRoute>]) -> Value {
    let mut m = Map::new();
    m.insert("mandatory".into(), Value::Bool(mandatory));
    m.insert(
        "path_sets".into(),
        Value::Array(sets.iter().map(|r| route_json(r)).collect()),
    );
    match sets {
        [] => {
            // Master and slave share the KME: the key never travelled.
            m.insert("paths".into(), json!([]));
        }
        [Some(r)] => {
            m.insert("paths".into(), json!(r.paths));
            m.insert("threshold".into(), json!(r.threshold));
        }
        _ => {}
    }
    json!({ NAME: Value::Object(m) })
}

/// Each key's `key_extension`, and the container's `key_container_extension`.
pub(crate) fn report(mandatory: bool, keys: &[DeliveredKey]) -> (Vec<Option<Value>>, Value) {
    let mut all: Vec<&Option<RelayRoute>> = Vec::new();
    let per_key = keys
        .iter()
        .map(|k| {
            k.paths.as_ref().map(|KeyPaths { relays }| {
                for r in relays {
                    if !all.contains(&r) {
                        all.push(r);
                    }
                }
                summary(mandatory, &relays.iter().collect::<Vec<_>>())
            })
        })
        .collect();
    (per_key, summary(mandatory, &all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Vec<Map<String, Value>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn parses_the_extension_in_either_list() {
        let m = obj(
            json!([{"kagi_route": {"min_disjoint_paths": 3, "avoid_nodes": ["b"], "max_hops": 4}}]),
        );
        let r = parse(Some(&m), None).unwrap().unwrap();
        assert_eq!(
            (
                r.min_disjoint_paths,
                r.avoid_nodes.clone(),
                r.max_hops,
                r.mandatory
            ),
            (3, vec!["b".into()], Some(4), true)
        );
        let o = obj(json!([{"abc_x": 1}, {"kagi_route": {}}]));
        let r = parse(None, Some(&o)).unwrap().unwrap();
        assert_eq!((r.min_disjoint_paths, r.mandatory), (1, false));
        assert_eq!(
            parse(None, Some(&obj(json!([{"abc_x": 1}])))).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_extensions_are_refused_with_the_reason() {
        for (m, o, want) in [
            (
                json!([{"abc_x": 1}]),
                json!([]),
                "not all extension_mandatory parameters are supported",
            ),
            (
                json!([{"kagi_route": 3}]),
                json!([]),
                "must be a JSON object",
            ),
            (
                json!([{"kagi_route": {"min_disjoint_paths": -1}}]),
                json!([]),
                "whole number",
            ),
            (
                json!([{"kagi_route": {"min_disjoint_paths": 2.5}}]),
                json!([]),
                "whole number",
            ),
            (
                json!([{"kagi_route": {"max_hops": 1e300}}]),
                json!([]),
                "whole number",
            ),
            (
                json!([{"kagi_route": {"max_hops": "4"}}]),
                json!([]),
                "whole number",
            ),
            (
                json!([{"kagi_route": {"avoid_nodes": "b"}}]),
                json!([]),
                "array of node IDs",
            ),
            (
                json!([{"kagi_route": {"avoid_nodes": [1]}}]),
                json!([]),
                "(strings)",
            ),
            (
                json!([{"kagi_route": {"via": ["b"]}}]),
                json!([]),
                "unknown field \"via\"",
            ),
            (
                json!([{"kagi_route": {}}]),
                json!([{"kagi_route": {}}]),
                "more than once",
            ),
            (
                json!([]),
                json!([{"kagi_route": []}]),
                "must be a JSON object",
            ),
        ] {
            let (m, o) = (obj(m), obj(o));
            let e = parse(Some(&m), Some(&o)).unwrap_err();
            assert!(e.0.contains(want), "{e:?} lacks {want}");
        }
    }

    #[test]
    fn the_report_lists_the_paths_of_every_key() {
        let p = |v: &[&str]| v.iter().map(|s| NodeId::from(*s)).collect::<Vec<_>>();
        let r = RelayRoute {
            paths: vec![p(&["a", "b", "f"]), p(&["a", "c", "f"])],
            threshold: 2,
        };
        let key = |relays: Vec<Option<RelayRoute>>| DeliveredKey {
            id: uuid::Uuid::nil(),
            key: kagi_keymat::Key::from_slice(&[1; 4]),
            paths: Some(KeyPaths { relays }),
        };
        let (per, all) = report(
            true,
            &[key(vec![Some(r.clone())]), key(vec![Some(r.clone())])],
        );
        assert_eq!(
            all["kagi_route"]["paths"],
            json!([["a", "b", "f"], ["a", "c", "f"]])
        );
        assert_eq!(all["kagi_route"]["threshold"], 2);
        assert_eq!(
            per[1].as_ref().unwrap()["kagi_route"]["paths"],
            all["kagi_route"]["paths"]
        );
        let (_, mixed) = report(false, &[key(vec![Some(r)]), key(vec![None])]);
        assert_eq!(
            mixed["kagi_route"]["path_sets"].as_array().unwrap().len(),
            2
        );
        assert!(mixed["kagi_route"].get("paths").is_none());
        assert_eq!(mixed["kagi_route"]["path_sets"][1]["paths"], Value::Null);
    }
}
