//! A storage site's server: mutual TLS accept loop (tokio-rustls), HTTP/1.1 per connection
//! (hyper), the caller's SAE ID fixed per connection from its certificate's CN, and each request
//! run as one blocking step on the [`Site`] (its writes fsync, its key calls wait).

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kagi_node::admission::{Admission, Limits, Refused};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::wire::{decode_envelopes, decode_repair, encode_envelopes};
use super::{EtsiKeys, KEY_BYTES_HEADER, MAX_BODY_BYTES};
use crate::api::ObjectState;
use crate::envelope::{peek, Envelope};
use crate::error::{Result, VaultError};
use crate::site::{Manifest, Site};

/// Request bodies buffered at once: the site works on one request at a time, so more would only
/// hold memory (up to [`MAX_BODY_BYTES`] each).
const BODIES_IN_FLIGHT: usize = 2;
/// Time allowed to receive a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(300);

/// A site behind its server: one lock, so that protocol steps on the site's disk and its held
/// refresh/repair state never interleave.
#[derive(Clone)]
pub struct SiteServer {
    site: Arc<Mutex<Site<EtsiKeys>>>,
    bodies: Arc<tokio::sync::Semaphore>,
    mpc: Option<Arc<super::mpc::MpcSite>>,
}

impl SiteServer {
    /// Wraps a site.
    pub fn new(site: Site<EtsiKeys>) -> Self {
        Self {
            site: Arc::new(Mutex::new(site)),
            bodies: Self::new_slots(),
            mpc: None,
        }
    }

    /// The site's body slots ([`BODIES_IN_FLIGHT`]).
    fn new_slots() -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(BODIES_IN_FLIGHT))
    }

    /// Lets the site run queries on its tables as an MPC party ([`super::mpc`]).
    pub fn with_mpc(mut self, mpc: super::mpc::MpcSite) -> Self {
        self.mpc = Some(Arc::new(mpc));
        self
    }
}

enum Reply {
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

/// Serves `server` on `listener` until `shutdown` completes. `tls` must require client
/// certificates (normally `kagi_node::tls::peer_server_config` with the site's certificate).
pub async fn serve_site(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: SiteServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let admission = Admission::new("vault-site", Limits::APPLICATIONS);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _remote) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            c = admission.accept(&listener) => c,
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let Ok(stream) = admission.handshake(acceptor.accept(tcp)).await else {
                return;
            };
            let caller: Option<Arc<str>> =
                kagi_node::tls::peer_identity(stream.get_ref().1.peer_certificates())
                    .map(Arc::from);
            let Some(identity) = caller.clone() else {
                admission.refuse(Refused::UnknownIdentity, "");
                return;
            };
            let Ok(_slot) = admission.admit(&identity) else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(handle(server, caller, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Why a request body was not buffered.
#[derive(Debug)]
enum BodyError {
    /// The site is shutting down (its body slots are closed).
    Closed,
    /// The body did not arrive within the deadline.
    Late,
    /// The body could not be read, or is longer than the limit.
    Read(String),
}

/// Buffers a request body once one of the site's body slots is free: at most `limit` bytes
/// within `deadline`. The slot is held (returned permit) until the request is answered, so a
/// site holds at most [`BODIES_IN_FLIGHT`] bodies in memory whatever its callers send.
async fn buffer_body<B>(
    slots: &Arc<tokio::sync::Semaphore>,
    body: B,
    limit: usize,
    deadline: Duration,
) -> std::result::Result<(tokio::sync::OwnedSemaphorePermit, Bytes), BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| BodyError::Closed)?;
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok((slot, b.to_bytes())),
        Err(_) => Err(BodyError::Late),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}

async fn handle(
    server: SiteServer,
    caller: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(caller) = caller else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no client identity",
            None,
        );
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let buffered = buffer_body(
        &server.bodies,
        req.into_body(),
        MAX_BODY_BYTES,
        BODY_TIMEOUT,
    );
    let (_buffering, body) = match buffered.await {
        Ok(b) => b,
        Err(BodyError::Closed) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "site is shutting down",
                None,
            )
        }
        Err(BodyError::Late) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "malformed",
                "the request body did not arrive in time",
                None,
            )
        }
        Err(BodyError::Read(e)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "malformed",
                &format!("reading the body: {e}"),
                None,
            )
        }
    };
    if let Some(resp) = mpc_route(&server, &caller, method.as_str(), &path, &body).await {
        return resp;
    }
    let site = server.site.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut site = match site.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let before = site.key_bytes_used();
        let r = route(&mut site, &caller, method.as_str(), &path, &query, &body);
        (r, site.key_bytes_used() - before)
    })
    .await;
    let (result, spent) = match joined {
        Ok(x) => x,
        Err(e) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
                None,
            )
        }
    };
    let mut resp = match result {
        Ok(Reply::Json(v)) => {
            let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Ok(Reply::Bytes(b)) => {
            let mut r = Response::new(Full::new(Bytes::from(b)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Err(e) => vault_error_response(&e),
    };
    resp.headers_mut()
        .insert(KEY_BYTES_HEADER, HeaderValue::from(spent));
    resp
}

/// The MPC steps, which run outside the site's lock (a query takes seconds and involves the
/// other sites); `None` for any other route.
async fn mpc_route(
    server: &SiteServer,
    caller: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result: Result<(Reply, u64)> = match (method, parts.as_slice()) {
        ("POST", ["v1", "mpc", "open"]) => {
            let Some(m) = &server.mpc else {
                return Some(vault_error_response(&VaultError::Malformed(
                    "this site does not run queries".into(),
                )));
            };
            m.open_session().map(|(session, port)| {
                (
                    Reply::Json(serde_json::json!({"session": session, "port": port})),
                    0,
                )
            })
        }
        ("POST", ["v1", "tables", id, "mpc", "run"]) => {
            let Some(m) = &server.mpc else {
                return Some(vault_error_response(&VaultError::Malformed(
                    "this site does not run queries".into(),
                )));
            };
            let manifest = {
                let site = server.site.lock().unwrap_or_else(|p| p.into_inner());
                crate::tables::manifest(&site, id, false)
            };
            match (
                manifest,
                serde_json::from_slice::<super::mpc::RunRequest>(body),
            ) {
                (Some(man), Ok(req)) => super::mpc::run_party(m.clone(), man, caller, req)
                    .await
                    .map(|(env, spent)| (Reply::Bytes(env), spent)),
                (None, _) => Err(VaultError::UnknownObject(id.to_string())),
                (_, Err(e)) => Err(VaultError::Malformed(format!("run request: {e}"))),
            }
        }
        _ => return None,
    };
    Some(match result {
        Ok((Reply::Json(v), spent)) => {
            let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut()
                .insert(KEY_BYTES_HEADER, HeaderValue::from(spent));
            r
        }
        Ok((Reply::Bytes(b), spent)) => {
            let mut r = Response::new(Full::new(Bytes::from(b)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut()
                .insert(KEY_BYTES_HEADER, HeaderValue::from(spent));
            r
        }
        Err(e) => vault_error_response(&e),
    })
}

fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
    extra: Option<(u64, u64)>,
) -> Response<Full<Bytes>> {
    let mut v = serde_json::json!({ "error": kind, "message": message });
    if let Some((needed, available)) = extra {
        v["needed"] = needed.into();
        v["available"] = available.into();
    }
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The one place a [`VaultError`] becomes an HTTP answer.
fn vault_error_response(e: &VaultError) -> Response<Full<Bytes>> {
    let msg = e.to_string();
    match e {
        VaultError::UnknownObject(_) => {
            error_response(StatusCode::NOT_FOUND, "unknown_object", &msg, None)
        }
        VaultError::UnknownSite(_) => {
            error_response(StatusCode::NOT_FOUND, "unknown_site", &msg, None)
        }
        VaultError::KeyShortage { needed, available } => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "key_shortage",
            &msg,
            Some((*needed, *available)),
        ),
        VaultError::BadTransfer { .. } => {
            error_response(StatusCode::BAD_REQUEST, "bad_transfer", &msg, None)
        }
        VaultError::Malformed(_) | VaultError::Sharing(_) | VaultError::ObjectCorrupt(_) => {
            error_response(StatusCode::BAD_REQUEST, "malformed", &msg, None)
        }
        VaultError::NotEnoughSites { .. } => {
            error_response(StatusCode::CONFLICT, "not_enough_sites", &msg, None)
        }
        VaultError::Keys(_) | VaultError::Site { .. } => {
            error_response(StatusCode::BAD_GATEWAY, "keys", &msg, None)
        }
        _ => error_response(StatusCode::INTERNAL_SERVER_ERROR, "io", &msg, None),
    }
}

/// The caller's committed (or, with `pending`, uncommitted) manifest of `object`; an object
/// the caller does not own does not exist for it.
fn owned(site: &Site<EtsiKeys>, caller: &str, object: &str, pending: bool) -> Result<Manifest> {
    let m = site
        .manifest(object)
        .or_else(|| pending.then(|| site.pending_manifest(object)).flatten());
    match m {
        Some(m) if m.owner == caller => Ok(m),
        _ => Err(VaultError::UnknownObject(object.to_string())),
    }
}

fn one_envelope(body: &[u8]) -> Envelope {
    Envelope(body.to_vec())
}

fn route(
    site: &mut Site<EtsiKeys>,
    caller: &str,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<Reply> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = || Ok(Reply::Json(serde_json::json!({})));
    match (method, parts.as_slice()) {
        ("GET", ["v1", "health"]) => Ok(Reply::Json(serde_json::json!({ "site": site.id() }))),
        ("GET", ["v1", "objects"]) => {
            let mine: Vec<Manifest> = site
                .list()?
                .into_iter()
                .filter(|m| m.owner == caller)
                .collect();
            Ok(Reply::Json(json(&mine)?))
        }
        ("GET", ["v1", "objects", id]) => {
            let state = match owned(site, caller, id, false) {
                Ok(m) => ObjectState {
                    committed: Some(m),
                    prepared: site.has_prepared_refresh(id),
                },
                Err(_) => ObjectState::default(),
            };
            Ok(Reply::Json(json(&state)?))
        }
        ("GET", ["v1", "tables"]) => {
            let mine: Vec<crate::tables::TableManifest> = crate::tables::list(site)
                .into_iter()
                .filter(|m| m.owner == caller)
                .collect();
            Ok(Reply::Json(json(&mine)?))
        }
        ("GET", ["v1", "tables", id]) => match crate::tables::manifest(site, id, false) {
            Some(m) if m.owner == caller => Ok(Reply::Json(json(&m)?)),
            _ => Err(VaultError::UnknownObject(id.to_string())),
        },
        ("POST", ["v1", "tables", "put"]) => {
            let env = one_envelope(body);
            if peek(&env.0)?.from != caller {
                return Err(VaultError::Malformed(
                    "table sent by another SAE than the caller".into(),
                ));
            }
            crate::tables::receive(site, &env)?;
            ok()
        }
        ("POST", ["v1", "tables", id, step @ ("commit" | "abort")]) => {
            match crate::tables::manifest(site, id, true) {
                Some(m) if m.owner == caller => {}
                _ if *step == "abort" => return ok(),
                _ => return Err(VaultError::UnknownObject(id.to_string())),
            }
            if *step == "commit" {
                crate::tables::commit(site, id)?;
            } else {
                crate::tables::abort(site, id)?;
            }
            ok()
        }
        ("GET", ["v1", "tables", id, "state"]) => match crate::tables::manifest(site, id, false) {
            Some(m) if m.owner == caller => Ok(Reply::Json(serde_json::json!({
                "epoch": m.epoch,
                "prepared": crate::tables::prepared_epoch(site, id),
            }))),
            _ => Err(VaultError::UnknownObject(id.to_string())),
        },
        ("POST", ["v1", "tables", id, "refresh"]) => {
            match crate::tables::manifest(site, id, false) {
                Some(m) if m.owner == caller => {}
                _ => return Err(VaultError::UnknownObject(id.to_string())),
            }
            let env = one_envelope(body);
            if peek(&env.0)?.from != caller {
                return Err(VaultError::Malformed(
                    "table refresh sent by another SAE than the caller".into(),
                ));
            }
            crate::tables::refresh_receive(site, &env)?;
            ok()
        }
        ("POST", ["v1", "tables", id, step @ ("refresh-commit" | "refresh-abort")]) => {
            match crate::tables::manifest(site, id, false) {
                Some(m) if m.owner == caller => {}
                _ => return Err(VaultError::UnknownObject(id.to_string())),
            }
            if *step == "refresh-commit" {
                crate::tables::refresh_commit(site, id)?;
            } else {
                crate::tables::refresh_abort(site, id)?;
            }
            ok()
        }
        ("POST", ["v1", "put"]) => {
            let env = one_envelope(body);
            if peek(&env.0)?.from != caller {
                return Err(VaultError::Malformed(
                    "share sent by another SAE than the caller".into(),
                ));
            }
            site.receive_share(&env)?;
            ok()
        }
        ("POST", ["v1", "objects", id, "commit"]) => {
            owned(site, caller, id, true)?;
            site.commit(id)?;
            ok()
        }
        ("POST", ["v1", "objects", id, "abort"]) => {
            if owned(site, caller, id, true).is_ok() {
                site.abort(id)?;
            }
            ok()
        }
        ("POST", ["v1", "objects", id, "share"]) => {
            Ok(Reply::Bytes(site.send_share(id, caller)?.0))
        }
        ("POST", ["v1", "objects", id, "refresh", step]) => {
            owned(site, caller, id, false)?;
            match *step {
                "deal" => Ok(Reply::Bytes(encode_envelopes(&site.refresh_deal(id)?))),
                "apply" => {
                    site.refresh_apply(id, &decode_envelopes(body)?)?;
                    ok()
                }
                "commit" => {
                    site.refresh_commit(id)?;
                    ok()
                }
                "abort" => {
                    site.refresh_abort(id)?;
                    ok()
                }
                _ => Err(VaultError::Malformed(format!("no route {path}"))),
            }
        }
        ("POST", ["v1", "objects", id, "repair", "contribute"]) => {
            owned(site, caller, id, false)?;
            let (target, helpers) = repair_query(query)?;
            let envs = site.repair_contribute(id, target, &helpers)?;
            Ok(Reply::Bytes(encode_envelopes(&envs)))
        }
        ("POST", ["v1", "objects", id, "repair", "aggregate"]) => {
            owned(site, caller, id, false)?;
            let env = site.repair_aggregate(id, &decode_envelopes(body)?)?;
            Ok(Reply::Bytes(env.0))
        }
        ("POST", ["v1", "repair", "receive"]) => {
            let (manifest, sums) = decode_repair(body)?;
            if manifest.owner != caller {
                return Err(VaultError::Malformed(
                    "repair of an object the caller does not own".into(),
                ));
            }
            site.repair_receive(&manifest, &sums)?;
            ok()
        }
        _ => Err(VaultError::Malformed(format!("no route {method} {path}"))),
    }
}

fn repair_query(query: &str) -> Result<(usize, Vec<u8>)> {
    let bad = || VaultError::Malformed(format!("repair query {query:?}"));
    let mut target = None;
    let mut helpers = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("target", v)) => target = Some(v.parse::<usize>().map_err(|_| bad())?),
            Some(("helpers", v)) => {
                helpers = Some(
                    v.split(',')
                        .map(|h| h.parse::<u8>().map_err(|_| bad()))
                        .collect::<Result<Vec<u8>>>()?,
                )
            }
            _ => {}
        }
    }
    Ok((target.ok_or_else(bad)?, helpers.ok_or_else(bad)?))
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| VaultError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use hyper::body::Frame;
    use tokio::sync::{mpsc, Semaphore};

    use super::*;

    /// A request body fed from a channel that counts how many bodies were ever read from.
    struct Probe {
        read: Arc<AtomicUsize>,
        counted: bool,
        rx: mpsc::Receiver<Bytes>,
    }

    impl hyper::body::Body for Probe {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
            if !self.counted {
                self.counted = true;
                self.read.fetch_add(1, Ordering::SeqCst);
            }
            self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn probe(read: &Arc<AtomicUsize>) -> (mpsc::Sender<Bytes>, Probe) {
        let (tx, rx) = mpsc::channel(4);
        let body = Probe {
            read: read.clone(),
            counted: false,
            rx,
        };
        (tx, body)
    }

    /// Lets spawned tasks run until they block.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn at_most_two_bodies_are_buffered_at_once() {
        let slots = SiteServer::new_slots();
        let read = Arc::new(AtomicUsize::new(0));
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (tx, body) = probe(&read);
            senders.push(tx);
            let slots = slots.clone();
            tasks.push(tokio::spawn(async move {
                buffer_body(&slots, body, MAX_BODY_BYTES, BODY_TIMEOUT)
                    .await
                    .map(|(_slot, b)| b.len())
            }));
        }
        settle().await;
        assert_eq!(
            read.load(Ordering::SeqCst),
            BODIES_IN_FLIGHT,
            "bodies read while {BODIES_IN_FLIGHT} slots were taken by slow senders"
        );
        // The first body ends (tasks start in order on the test's one thread, so it holds a
        // slot): its slot goes back, and exactly one waiting body is read next.
        senders.remove(0);
        settle().await;
        assert_eq!(read.load(Ordering::SeqCst), BODIES_IN_FLIGHT + 1);
        drop(senders);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let slots = Arc::new(Semaphore::new(1));
        let read = Arc::new(AtomicUsize::new(0));
        let (tx, body) = probe(&read);
        tx.send(Bytes::from(vec![1; 600])).await.unwrap();
        tx.send(Bytes::from(vec![2; 600])).await.unwrap();
        drop(tx);
        let r = buffer_body(&slots, body, 1000, Duration::from_secs(5))
            .await
            .map(|(_slot, b)| b.len());
        assert!(matches!(r, Err(BodyError::Read(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_cut_off_at_the_deadline() {
        let slots = Arc::new(Semaphore::new(1));
        let read = Arc::new(AtomicUsize::new(0));
        // The sender stays open and sends nothing (the test gives the deadline 10 s).
        let (_tx, body) = probe(&read);
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            buffer_body(&slots, body, 1000, Duration::from_millis(200)),
        )
        .await;
        assert!(matches!(r, Ok(Err(BodyError::Late))), "{r:?}");
    }
}
