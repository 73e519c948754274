//! The management API's routes and handlers (JSON over HTTP/1.1, behind mutual TLS).
//!
//! Every route is listed once in [`ROUTES`] with the permission it needs; the checked-in
//! OpenAPI description (`docs/management-openapi.json`, served at `/api/v1/openapi.json`) is
//! compared against that table by a test. Errors are JSON `{"message": ...}` with 400 (bad
//! input), 403 (role), 404 (no such route), 405, 500 (an erase step failed) or 503 (key manager
//! not answering).

// Handlers return their error answer early through `Result<_, Response>`; the answer is built
// once per failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use kagi_control::Topology;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ops::{Ops, RefusalEvent};
use super::role::{Caller, Permission};
use crate::config::Etsi014Config;
use crate::driver::DriverHandle;

/// The OpenAPI description of this API, as checked in under `docs/`.
pub const OPENAPI: &str = include_str!("../../../../docs/management-openapi.json");

/// Largest request body accepted (bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Every route: method, path (OpenAPI template syntax) and the permission it needs.
pub const ROUTES: &[(&str, &str, Permission)] = &[
    ("GET", "/api/v1/status", Permission::Read),
    ("GET", "/api/v1/links", Permission::Read),
    ("PUT", "/api/v1/links/{peer}/service", Permission::Operate),
    ("GET", "/api/v1/pools", Permission::Read),
    ("GET", "/api/v1/relays", Permission::Read),
    ("GET", "/api/v1/saes", Permission::Read),
    ("PUT", "/api/v1/saes/{sae}/limits", Permission::Operate),
    ("DELETE", "/api/v1/saes/{sae}/limits", Permission::Operate),
    (
        "PUT",
        "/api/v1/saes/{sae}/pairs/{slave}/limits",
        Permission::Operate,
    ),
    (
        "DELETE",
        "/api/v1/saes/{sae}/pairs/{slave}/limits",
        Permission::Operate,
    ),
    ("GET", "/api/v1/refusals", Permission::Read),
    ("GET", "/api/v1/audit", Permission::ReadAudit),
    ("GET", "/api/v1/audit/trail", Permission::ReadAudit),
    ("PUT", "/api/v1/drain", Permission::Operate),
    ("POST", "/api/v1/tamper", Permission::Operate),
    ("POST", "/api/v1/erase", Permission::Operate),
    ("GET", "/api/v1/openapi.json", Permission::Read),
    ("GET", super::qkdn::PATH, Permission::Read),
    ("GET", "/metrics", Permission::Read),
];

/// What the handlers reach.
pub struct MgmtCtx {
    /// The node's operational state.
    pub ops: Arc<Ops>,
    /// The key manager.
    pub driver: DriverHandle,
    /// The network.
    pub topology: Arc<Topology>,
    /// ETSI 014 limits served by this node.
    pub etsi014: Etsi014Config,
    /// Modelled secret key rate (bit/s) of this node's simulated links, by neighbour.
    pub model_rates: BTreeMap<String, f64>,
    /// The node's ETSI 004 key streams, when it serves ETSI 004 (shown in the 015 view).
    pub streams: Option<Arc<dyn crate::etsi004::StreamsView>>,
}

type Ctx = State<Arc<MgmtCtx>>;
type Who = Extension<Arc<Caller>>;

/// A JSON error answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": message.into() }))).into_response()
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// Refuses unless the caller's role allows `p`; the refusal is recorded.
fn need(ctx: &MgmtCtx, who: &Caller, p: Permission, what: &str) -> Result<(), Response> {
    allowed(ctx, who, p, what).map_err(|m| error(StatusCode::FORBIDDEN, m))
}

/// Whether `who` may do `what`; a refusal is recorded and its message returned.
fn allowed(ctx: &MgmtCtx, who: &Caller, p: Permission, what: &str) -> Result<(), String> {
    match who.role {
        Some(r) if r.may(p) => Ok(()),
        role => {
            let message = match role {
                Some(r) => format!("role {} may not {what}", r.name()),
                None => "certificate carries no management role (OU kagi-operator, kagi-auditor or kagi-observer)".to_owned(),
            };
            ctx.ops.refusal(RefusalEvent {
                time_ms: 0,
                endpoint: format!("management/{what}"),
                status: 403,
                reason: "forbidden".into(),
                caller: Some(who.name.clone()),
                message: message.clone(),
            });
            Err(message)
        }
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    if body.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "key manager is not answering; retry",
    )
}

/// The router; the caller's identity is added per connection as an `Extension<Arc<Caller>>`.
pub fn router(ctx: Arc<MgmtCtx>) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/links", get(links))
        .route("/api/v1/links/{peer}/service", put(link_service))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/relays", get(relays))
        .route("/api/v1/saes", get(saes))
        .route(
            "/api/v1/saes/{sae}/limits",
            put(sae_limits).delete(sae_limits),
        )
        .route(
            "/api/v1/saes/{sae}/pairs/{slave}/limits",
            put(pair_limits).delete(pair_limits),
        )
        .route("/api/v1/refusals", get(refusals))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/trail", get(audit_trail))
        .route("/api/v1/drain", put(drain))
        .route("/api/v1/tamper", post(tamper))
        .route("/api/v1/erase", post(erase))
        .route("/api/v1/openapi.json", get(openapi))
        .route(super::qkdn::PATH, get(qkd_node))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

/// An error in the format of the path's interface: RESTCONF's under `/restconf`, else this API's.
fn error_for(uri: &Uri, status: StatusCode, message: String) -> Response {
    if uri.path().starts_with("/restconf") {
        super::qkdn::error(status, message)
    } else {
        error(status, message)
    }
}

async fn not_found(State(ctx): Ctx, Extension(who): Who, uri: Uri) -> Response {
    if let Err(m) = allowed(&ctx, &who, Permission::Read, "read") {
        return error_for(&uri, StatusCode::FORBIDDEN, m);
    }
    let m = if uri.path().starts_with("/restconf") {
        format!("no such resource; this node serves {}", super::qkdn::PATH)
    } else {
        "no such management endpoint; see /api/v1/openapi.json".into()
    };
    error_for(&uri, StatusCode::NOT_FOUND, m)
}

async fn not_allowed(State(ctx): Ctx, Extension(who): Who, method: Method, uri: Uri) -> Response {
    if let Err(m) = allowed(&ctx, &who, Permission::Read, "read") {
        return error_for(&uri, StatusCode::FORBIDDEN, m);
    }
    let m = if uri.path().starts_with("/restconf") {
        format!("method {method} is not supported: this RESTCONF view is read-only (GET)")
    } else {
        format!("method {method} is not allowed here; see /api/v1/openapi.json")
    };
    error_for(&uri, StatusCode::METHOD_NOT_ALLOWED, m)
}

fn stats_json(s: &kagi_km::NodeStats) -> Value {
    json!({
        "link_key_in_bytes": s.link_key_in,
        "link_key_spent_bytes": s.link_key_spent,
        "link_blocks_dropped": s.link_blocks_dropped,
        "link_bytes": s.link_bytes,
        "pool_bytes": s.pool_bytes,
        "relays_started": s.relays_started,
        "relays_acked": s.relays_acked,
        "relays_abandoned": s.relays_abandoned,
        "relays_received": s.relays_received,
        "hops_forwarded": s.hops_forwarded,
        "replays_rejected": s.replays_rejected,
        "bad_tags": s.bad_tags,
        "keys_served_master": s.keys_served_master,
        "keys_served_slave": s.keys_served_slave,
        "slave_refetches": s.slave_refetches,
        "graces_ended": s.graces_ended,
        "slave_keys_expired": s.slave_keys_expired,
        "slave_keys_revoked": s.slave_keys_revoked,
        "revokes_resent": s.revokes_resent,
        "revokes_given_up": s.revokes_given_up,
        "refused_no_key": s.refused_no_key,
        "refused_for_priority": s.refused_for_priority,
        "refused_unreconciled": s.refused_unreconciled,
        "link_adverts_rejected": s.link_adverts_rejected,
        "link_adverts_unauthenticated": s.link_adverts_unauthenticated,
        "link_adverts_replayed": s.link_adverts_replayed,
    })
}

/// The state of the links of this node, as JSON (shared by `/links` and `/status`).
fn links_json(ctx: &MgmtCtx, km: &kagi_km::KmStatus) -> Value {
    let up = ctx.ops.peers_up();
    let me = ctx.ops.node_id();
    let list: Vec<Value> = km
        .links
        .iter()
        .map(|l| {
            let spec = ctx.topology.link(me, &l.peer);
            let connected = up.contains(l.peer.as_str());
            let (key_in, rate) = ctx.ops.link_intake(&l.peer);
            let state = if !l.in_service {
                "out_of_service"
            } else if !connected {
                "down"
            } else {
                "up"
            };
            json!({
                "peer": l.peer,
                "state": state,
                "peer_connected": connected,
                "in_service": l.in_service,
                "length_km": spec.map(|s| s.length_km),
                "source": spec.and_then(|s| s.source.clone()).unwrap_or_else(|| "rate".into()),
                "source_state": ctx.ops.link_source_state(&l.peer),
                "tx_bytes": l.tx_bytes,
                "rx_bytes": l.rx_bytes,
                "key_in_bytes": key_in,
                "key_rate_bytes_per_second": rate,
                "model_rate_bps": ctx.model_rates.get(l.peer.as_str()),
                "high_water_block": l.high_water,
            })
        })
        .collect();
    Value::Array(list)
}

fn pools_json(km: &kagi_km::KmStatus) -> Value {
    Value::Array(
        km.pools
            .iter()
            .map(|p| {
                json!({
                    "peer": p.peer,
                    "out_bytes": p.out_bytes,
                    "in_bytes": p.in_bytes,
                    "relays_in_flight": p.relays_in_flight,
                    "route": p.route,
                    "paths": p.paths,
                    "threshold": p.threshold,
                    "route_note": p.route_note,
                    "slave_keys_expired": p.slave_keys_expired,
                })
            })
            .collect(),
    )
}

async fn status(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    if let Some(t) = ctx.ops.tampered() {
        // The core is gone: report the fence instead of its state.
        return ok(json!({
            "node_id": ctx.ops.node_id(),
            "uptime_seconds": ctx.ops.uptime().as_secs_f64(),
            "draining": ctx.ops.draining(),
            "fenced": true,
            "tampered": t,
            "live_key_bytes": kagi_keymat::live_bytes(),
        }));
    }
    let Some(km) = ctx.driver.status().await else {
        return unavailable();
    };
    let up = ctx.ops.peers_up();
    ok(json!({
        "node_id": ctx.ops.node_id(),
        "uptime_seconds": ctx.ops.uptime().as_secs_f64(),
        "draining": ctx.ops.draining(),
        "fenced": km.fenced,
        "link_adverts_signed": km.adverts_signed,
        "peers_up": up,
        "peers_total": ctx.topology.nodes.len().saturating_sub(1),
        "saes": ctx.topology.node(ctx.ops.node_id()).map(|n| n.saes.clone()).unwrap_or_default(),
        "links": links_json(&ctx, &km),
        "pools": pools_json(&km),
        "stats": stats_json(&km.stats),
        "refusals_recent": ctx.ops.recent_refusals().len(),
        "tampered": null,
        "live_key_bytes": kagi_keymat::live_bytes(),
    }))
}

/// The ETSI GS QKD 015 RESTCONF view (see [`super::qkdn`]); its errors are RESTCONF's.
async fn qkd_node(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(m) = allowed(&ctx, &who, Permission::Read, "read") {
        return super::qkdn::error(StatusCode::FORBIDDEN, m);
    }
    let Some(km) = ctx.driver.status().await else {
        return super::qkdn::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "key manager is not answering; retry",
        );
    };
    let streams = match &ctx.streams {
        Some(s) => s.snapshot().await,
        None => Vec::new(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, super::qkdn::MEDIA_TYPE)],
        super::qkdn::view(&ctx, &km, &streams).to_string(),
    )
        .into_response()
}

async fn links(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    match ctx.driver.status().await {
        Some(km) => ok(links_json(&ctx, &km)),
        None => unavailable(),
    }
}

async fn pools(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    match ctx.driver.status().await {
        Some(km) => ok(pools_json(&km)),
        None => unavailable(),
    }
}

async fn relays(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    let Some(km) = ctx.driver.status().await else {
        return unavailable();
    };
    let s = &km.stats;
    let in_flight: Vec<Value> = km
        .pools
        .iter()
        .filter(|p| p.relays_in_flight > 0)
        .map(|p| json!({"dest": p.peer, "count": p.relays_in_flight, "route": p.route}))
        .collect();
    ok(json!({
        "in_flight_total": km.pools.iter().map(|p| p.relays_in_flight).sum::<u64>(),
        "in_flight": in_flight,
        "started": s.relays_started,
        "acked": s.relays_acked,
        "abandoned": s.relays_abandoned,
        "received": s.relays_received,
        "hops_forwarded": s.hops_forwarded,
    }))
}

async fn saes(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    let km = ctx.driver.status().await;
    let e = &ctx.etsi014;
    let me = ctx.ops.node_id();
    let list: Vec<Value> = ctx
        .topology
        .nodes
        .iter()
        .flat_map(|n| n.saes.iter().map(move |s| (n.id.clone(), s.clone())))
        .map(|(node, sae)| {
            json!({
                "sae": sae,
                "node": node,
                "local": node == me,
                "rate_limit": km.as_ref().filter(|_| node == me).and_then(|k| k.quotas.limit_of(&sae)),
                "pair_limits": km.as_ref().filter(|_| node == me).and_then(|k| k.quotas.pair.get(&sae)),
                "usage": km.as_ref().filter(|_| node == me).and_then(|k| k.sae_usage.get(&sae)),
            })
        })
        .collect();
    ok(json!({
        "limits": e.limits,
        "saes": list,
    }))
}

async fn refusals(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    ok(json!(ctx.ops.recent_refusals()))
}

async fn audit(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::ReadAudit, "read the audit trail") {
        return r;
    }
    ok(json!(ctx.ops.recent_audit()))
}

/// The node's audit trail: its head, signing key, whether it can be written, and its most
/// recent entries (each with its line hash).
async fn audit_trail(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::ReadAudit, "read the audit trail") {
        return r;
    }
    let Some(t) = ctx.ops.trail() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs without an audit trail",
        );
    };
    let (seq, hash) = t.head();
    let entries: Vec<Value> = t
        .recent()
        .into_iter()
        .map(|(e, h)| {
            let mut v = json!(e);
            v["hash"] = json!(h);
            v
        })
        .collect();
    ok(json!({
        "node_id": t.node(),
        "path": t.path().display().to_string(),
        "head": {"seq": seq, "hash": hash},
        "signing_key": {"alg": crate::audit::signer::ALG, "fingerprint": t.signer().fingerprint()},
        "writable": t.fault().is_none(),
        "fault": t.fault(),
        "entries": entries,
    }))
}

async fn openapi(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(ctx): Ctx, Extension(who): Who) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Read, "read") {
        return r;
    }
    let km = ctx.driver.status().await;
    let text = super::metrics::encode(&ctx.ops, km.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Body of `PUT /api/v1/links/{peer}/service`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkServiceBody {
    in_service: bool,
    #[serde(default)]
    reason: String,
}

fn audit_and(ctx: &MgmtCtx, who: &Caller, action: &str, target: &str, outcome: &str, detail: &str) {
    let role = who.role.map(|r| r.name()).unwrap_or("none");
    ctx.ops
        .audit(&who.name, role, action, target, outcome, detail);
}

async fn link_service(
    State(ctx): Ctx,
    Extension(who): Who,
    Path(peer): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Operate, "change links") {
        return r;
    }
    let b: LinkServiceBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let action = if b.in_service {
        "link.in_service"
    } else {
        "link.out_of_service"
    };
    if ctx.topology.node(&peer).is_none() {
        audit_and(&ctx, &who, action, &peer, "refused", "unknown node");
        return error(StatusCode::BAD_REQUEST, format!("unknown node {peer:?}"));
    }
    match ctx.driver.set_link_in_service(&peer, b.in_service).await {
        None => {
            audit_and(
                &ctx,
                &who,
                action,
                &peer,
                "error",
                "key manager not answering",
            );
            unavailable()
        }
        Some(false) => {
            audit_and(&ctx, &who, action, &peer, "refused", "not a neighbour");
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "node {peer:?} is not a neighbour of {}: there is no link to it",
                    ctx.ops.node_id()
                ),
            )
        }
        Some(true) => {
            if let Err(e) = ctx.ops.save_admin() {
                audit_and(&ctx, &who, action, &peer, "error", &e.to_string());
                return not_saved(e);
            }
            audit_and(&ctx, &who, action, &peer, "ok", &b.reason);
            ok(json!({"peer": peer, "in_service": b.in_service}))
        }
    }
}

/// The answer when an action took effect but could not be saved for the next start.
fn not_saved(e: super::admin_store::AdminStoreError) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("applied until the next restart only; saving it failed: {e}"),
    )
}

/// Body of `PUT /api/v1/drain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    draining: bool,
    #[serde(default)]
    reason: String,
}

async fn drain(State(ctx): Ctx, Extension(who): Who, body: Bytes) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Operate, "drain the node") {
        return r;
    }
    let b: DrainBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let was = ctx.ops.set_draining(b.draining);
    let action = if b.draining {
        "node.drain"
    } else {
        "node.undrain"
    };
    if let Err(e) = ctx.ops.save_admin() {
        audit_and(
            &ctx,
            &who,
            action,
            ctx.ops.node_id(),
            "error",
            &e.to_string(),
        );
        return not_saved(e);
    }
    audit_and(&ctx, &who, action, ctx.ops.node_id(), "ok", &b.reason);
    ok(json!({"node_id": ctx.ops.node_id(), "draining": b.draining, "was_draining": was}))
}

async fn sae_limits(
    State(ctx): Ctx,
    Extension(who): Who,
    method: Method,
    Path(sae): Path<String>,
    body: Bytes,
) -> Response {
    set_limit(ctx, who, method, sae, None, body).await
}

async fn pair_limits(
    State(ctx): Ctx,
    Extension(who): Who,
    method: Method,
    Path((sae, slave)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    set_limit(ctx, who, method, sae, Some(slave), body).await
}

/// Sets (PUT) or drops (DELETE: back to `node.toml`) the key rate and priority of master `sae`,
/// or of the pair (`sae`, `slave`): applied to the running core as a SIGHUP reload is, and
/// saved so that it outlives restarts and reloads.
async fn set_limit(
    ctx: Arc<MgmtCtx>,
    who: Arc<Caller>,
    method: Method,
    sae: String,
    slave: Option<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Operate, "change SAE limits") {
        return r;
    }
    let target = match &slave {
        Some(s) => format!("{sae}/{s}"),
        None => sae.clone(),
    };
    // The core's own limit type: optional `bytes_per_second`, `burst_bytes`, `daily_bytes`,
    // `priority`.
    let limit: Option<kagi_km::SaeLimit> = if method == Method::DELETE {
        None
    } else {
        match parse(&body) {
            Ok(b) => Some(b),
            Err(r) => return r,
        }
    };
    let refuse = |why: String| {
        audit_and(&ctx, &who, "sae.limits", &target, "refused", &why);
        error(StatusCode::BAD_REQUEST, why)
    };
    match ctx.topology.node_of_sae(&sae) {
        None => return refuse(format!("unknown SAE {sae:?}")),
        Some(n) if n.id != ctx.ops.node_id() => {
            return refuse(format!(
                "SAE {sae:?} is attached to node {}; set its limits there",
                n.id
            ))
        }
        Some(_) => {}
    }
    if let Some(s) = &slave {
        if ctx.topology.node_of_sae(s).is_none() {
            return refuse(format!("unknown slave SAE {s:?}"));
        }
        if *s == sae {
            return refuse(format!("SAE {sae:?} cannot be its own slave"));
        }
    }
    if let Some(l) = &limit {
        if let Err(e) = l.validate(&format!("SAE {target}")) {
            return refuse(e.to_string());
        }
    }
    let quotas = match ctx.ops.set_limit_override(&sae, slave.as_deref(), limit) {
        Ok(q) => q,
        Err(e) => return refuse(e.to_string()),
    };
    let detail = match &limit {
        Some(l) => format!(
            "bytes_per_second={:?} burst_bytes={:?} daily_bytes={:?} priority={:?}",
            l.bytes_per_second,
            l.burst(),
            l.daily_bytes,
            l.priority
        ),
        None => "override dropped: node.toml's limit applies".to_owned(),
    };
    match ctx.driver.set_quotas(quotas.clone()).await {
        Some(Ok(())) => {}
        Some(Err(e)) => return refuse(e.to_string()),
        None => {
            audit_and(
                &ctx,
                &who,
                "sae.limits",
                &target,
                "error",
                "key manager not answering",
            );
            return unavailable();
        }
    }
    if let Err(e) = ctx.ops.save_admin() {
        audit_and(&ctx, &who, "sae.limits", &target, "error", &e.to_string());
        return not_saved(e);
    }
    audit_and(&ctx, &who, "sae.limits", &target, "ok", &detail);
    // What now applies (after a DELETE: node.toml's entry, if any).
    let applies = match &slave {
        Some(s) => quotas.pair_limit(&sae, s).copied(),
        None => quotas.limit_of(&sae).copied(),
    };
    let mut body = json!({
        "sae": sae,
        "limit": applies,
        "burst_bytes": applies.and_then(|l| l.burst()),
        "overridden": limit.is_some(),
    });
    if let Some(s) = slave {
        body["slave"] = json!(s);
    }
    ok(body)
}

/// Body of `POST /api/v1/tamper`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    /// Must equal this node's ID: a guard against sending it to the wrong node.
    confirm_node: String,
    #[serde(default)]
    reason: String,
}

async fn tamper(State(ctx): Ctx, Extension(who): Who, body: Bytes) -> Response {
    tamper_action(ctx, who, body, "node.tamper").await
}

/// Body of `POST /api/v1/erase`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseBody {
    /// Must read `erase <node-id>`: a stray or misdirected request cannot destroy a node.
    confirm: String,
    #[serde(default)]
    reason: String,
}

/// Crypto-erase: fence the node, then destroy its wrapped data keys, link secrets, key tables
/// and key file (see [`crate::seal::erase`]), audited and checkpointed before anything goes.
async fn erase(State(ctx): Ctx, Extension(who): Who, body: Bytes) -> Response {
    const ACTION: &str = "node.erase";
    if let Err(r) = need(&ctx, &who, Permission::Operate, "erase the node") {
        return r;
    }
    let b: EraseBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let node = ctx.ops.node_id();
    let expected = format!("erase {node}");
    if b.confirm != expected {
        audit_and(&ctx, &who, ACTION, node, "refused", "confirmation mismatch");
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "confirm must read {expected:?} (got {:?}): erasing destroys every key this \
                 node stored, irrecoverably",
                b.confirm
            ),
        );
    }
    // The driver records the erase in the signed trail (before and after); the operator's
    // request is in the operations log here.
    audit_and(&ctx, &who, ACTION, node, "accepted", &b.reason);
    match ctx.driver.erase(&who.name, b.reason.trim()).await {
        None => unavailable(),
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Some(Ok(destroyed)) => ok(json!({
            "node_id": node,
            "fenced": true,
            "erased": true,
            "destroyed": destroyed,
        })),
    }
}

async fn tamper_action(ctx: Arc<MgmtCtx>, who: Arc<Caller>, body: Bytes, action: &str) -> Response {
    if let Err(r) = need(&ctx, &who, Permission::Operate, "trigger tamper response") {
        return r;
    }
    let b: ConfirmBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.confirm_node != ctx.ops.node_id() {
        audit_and(
            &ctx,
            &who,
            action,
            &b.confirm_node,
            "refused",
            "confirm_node mismatch",
        );
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "confirm_node {:?} does not name this node ({})",
                b.confirm_node,
                ctx.ops.node_id()
            ),
        );
    }
    let reason = format!("{} (by {})", b.reason, who.name);
    if !ctx.driver.tamper("management", reason.trim()).await {
        audit_and(
            &ctx,
            &who,
            action,
            ctx.ops.node_id(),
            "error",
            "key manager not answering",
        );
        return unavailable();
    }
    audit_and(&ctx, &who, action, ctx.ops.node_id(), "ok", &b.reason);
    ok(json!({
        "node_id": ctx.ops.node_id(),
        "fenced": true,
        "tampered": ctx.ops.tampered(),
    }))
}
