//! The live web dashboard: one small HTTP server on loopback that polls every node's
//! management listener about once a second and pushes the assembled network state to browsers
//! with server-sent events.
//!
//! `kagi up` runs it in its own process and prints its URL; `kagi dash` runs it alone against a
//! `network.json`. It reads the nodes with a management certificate (the auditor's, so that it
//! can show recent audit events), never changes anything, and shows no key material. The page,
//! its script and the graph library (Cytoscape.js, MIT, vendored under `assets/`) are compiled
//! into the binary: no CDN, nothing to install. The server listens on 127.0.0.1 only, and every
//! data request needs the random token that is part of the printed URL, so other local users
//! cannot read the network's state without it.

mod assemble;
pub mod map;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::client::Etsi014Client;

pub use assemble::{assemble, NodeReport};

/// How often the nodes are polled and the page updated.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long one node may take to answer one poll.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// A node that answers nothing for this long, but whose port still accepts connections (a
/// busy node), is shown down; a refused connection shows it down at once.
pub const STALE_AFTER: Duration = Duration::from_secs(6);

/// One node as the dashboard reaches it.
#[derive(Debug, Clone)]
pub struct DashNode {
    /// Node ID.
    pub id: String,
    /// Its management listener (`https://127.0.0.1:PORT`).
    pub management_url: String,
    /// SAEs attached to it.
    pub saes: Vec<String>,
}

/// A link to draw.
#[derive(Debug, Clone)]
pub struct DashLink {
    /// One end.
    pub a: String,
    /// Other end.
    pub b: String,
    /// Fibre length.
    pub length_km: f64,
}

/// What the dashboard shows and how it reaches the nodes.
#[derive(Debug, Clone)]
pub struct DashConfig {
    /// Network name.
    pub name: String,
    /// Nodes.
    pub nodes: Vec<DashNode>,
    /// Links.
    pub links: Vec<DashLink>,
    /// Node positions (any unit; scaled to the page), where the topology gives them.
    pub positions: BTreeMap<String, (f64, f64)>,
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Management client certificate (PEM), auditor or observer role.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

struct Shared {
    token: String,
    state: watch::Receiver<Arc<String>>,
}

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const CYTOSCAPE: &str = include_str!("assets/cytoscape.min.js");

/// Serves the dashboard on `listener` until `shutdown`, polling the nodes of `cfg`. Data
/// requests need `?token=TOKEN`.
pub async fn serve(
    listener: TcpListener,
    cfg: DashConfig,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let first = assemble(&cfg, &[], now_ms());
    let (tx, rx) = watch::channel(Arc::new(first.to_string()));
    let poller = tokio::spawn(poll(cfg, tx));
    let shared = Arc::new(Shared { token, state: rx });
    let app = Router::new()
        .route("/", get(|| async { html(INDEX) }))
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset(STYLE, "text/css") }),
        )
        .route(
            "/assets/cytoscape.min.js",
            get(|| async { asset(CYTOSCAPE, "text/javascript") }),
        )
        .route("/api/state", get(state))
        .route("/events", get(events))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "not found"})),
            )
        })
        .with_state(shared);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    poller.abort();
    r.map_err(Into::into)
}

fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn asset(body: &'static str, ty: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ty)], body).into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

#[allow(clippy::result_large_err)] // built once per refused request
fn authorised(shared: &Shared, q: &TokenQuery) -> Result<(), Response> {
    // Compared in constant time: the token is the only thing guarding the page.
    use subtle::ConstantTimeEq;
    if bool::from(q.token.as_bytes().ct_eq(shared.token.as_bytes())) {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "missing or wrong token: open the URL kagi up printed"})),
        )
            .into_response())
    }
}

async fn state(State(shared): State<Arc<Shared>>, Query(q): Query<TokenQuery>) -> Response {
    if let Err(r) = authorised(&shared, &q) {
        return r;
    }
    let body = shared.state.borrow().clone();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn events(State(shared): State<Arc<Shared>>, Query(q): Query<TokenQuery>) -> Response {
    if let Err(r) = authorised(&shared, &q) {
        return r;
    }
    let mut rx = shared.state.clone();
    rx.mark_changed();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let data = rx.borrow_and_update().clone();
        Some((
            Ok::<_, Infallible>(Event::default().event("state").data(data.as_str())),
            rx,
        ))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn poll(cfg: DashConfig, tx: watch::Sender<Arc<String>>) {
    let clients: Vec<(String, Option<Arc<Etsi014Client>>)> = cfg
        .nodes
        .iter()
        .map(|n| {
            let c = Etsi014Client::from_files(&n.management_url, &cfg.ca, &cfg.cert, &cfg.key)
                .map(|c| Arc::new(c.with_timeout(POLL_TIMEOUT)));
            if let Err(e) = &c {
                tracing::warn!(node = %n.id, error = %e, "dashboard cannot reach node");
            }
            (n.id.clone(), c.ok())
        })
        .collect();
    // Last good answer per node, kept while the node is merely slow.
    let mut last: Vec<Option<(tokio::time::Instant, NodeReport)>> = vec![None; clients.len()];
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut set = tokio::task::JoinSet::new();
        for (i, (id, c)) in clients.iter().enumerate() {
            let id = id.clone();
            let c = c.clone();
            set.spawn(async move { (i, fetch(id, c).await) });
        }
        let mut reports: Vec<(usize, (NodeReport, bool))> = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                reports.push(r);
            }
        }
        reports.sort_by_key(|(i, _)| *i);
        let now = tokio::time::Instant::now();
        let reports: Vec<NodeReport> = reports
            .into_iter()
            .map(|(i, (r, slow))| {
                if r.status.is_some() {
                    last[i] = Some((now, r.clone()));
                    return r;
                }
                match &last[i] {
                    Some((t, good)) if slow && now.duration_since(*t) < STALE_AFTER => good.clone(),
                    _ => r,
                }
            })
            .collect();
        let v = assemble(&cfg, &reports, now_ms());
        if tx.send(Arc::new(v.to_string())).is_err() {
            return;
        }
    }
}

/// One node's answers, and whether a failure was only slowness (a timeout).
async fn fetch(id: String, c: Option<Arc<Etsi014Client>>) -> (NodeReport, bool) {
    let mut rep = NodeReport {
        id,
        status: None,
        refusals: Value::Null,
        audit: Value::Null,
        error: None,
    };
    let Some(c) = c else {
        rep.error = Some("no client".into());
        return (rep, false);
    };
    let mut slow = false;
    match c.request("GET", "/api/v1/status", None, false).await {
        Ok(r) if r.status == 200 => rep.status = Some(r.json()),
        Ok(r) => rep.error = Some(format!("status {}", r.status)),
        Err(e) => {
            slow = matches!(e, crate::client::ClientError::Timeout(_));
            rep.error = Some(e.to_string());
        }
    }
    if rep.status.is_some() {
        if let Ok(r) = c.request("GET", "/api/v1/refusals", None, false).await {
            rep.refusals = r.json();
        }
        if let Ok(r) = c.request("GET", "/api/v1/audit", None, false).await {
            if r.status == 200 {
                rep.audit = r.json();
            }
        }
    }
    (rep, slow)
}
