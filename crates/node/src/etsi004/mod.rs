//! ETSI GS QKD 004 (V2.1.1) application interface with key streams, on the node's own mutual-TLS
//! listener (`[etsi004] listen`).
//!
//! The standard defines OPEN_CONNECT, GET_KEY and CLOSE abstractly; kagi carries them as JSON over
//! HTTPS (TLS 1.3, client certificate from the network CA required; the caller's SAE is its
//! certificate's CN mapped through `[etsi014] sae_map`, as for ETSI 014 and SKIP):
//!
//! ```text
//! POST /etsi004/v2/open_connect  {"source": "qkd://SAE", "destination": "qkd://SAE",
//!                                 "qos": {"key_chunk_size", "max_bps", "min_bps", "jitter",
//!                                         "priority", "timeout", "ttl", "metadata_mimetype"},
//!                                 "key_stream_id": UUID | null}
//!   → {"status": 0 | 1, "key_stream_id": UUID, "qos": {every field, as granted}}
//! POST /etsi004/v2/get_key       {"key_stream_id": UUID, "index": N | null, "metadata": {"size": N}?}
//!   → {"status": 0, "index": N, "key_buffer": BASE64,
//!      "metadata": {"size": N, "buffer": JSON}}       (metadata only when asked for)
//! POST /etsi004/v2/close         {"key_stream_id": UUID}   → {"status": 0}
//! ```
//!
//! Every answer is JSON with the 004 `status`; a failure adds `message`, status 7 adds the
//! counter-proposal in `qos`, status 8 the size needed in `metadata.size`. Statuses 0–8 are the
//! standard's; kagi adds 9 (no such stream open for the caller), 10 (malformed request or a
//! limit) and 11 (caller not allowed). The HTTP status follows the 004 status: 200 for 0 and 1,
//! 401 for 11, 503 for 2, 4 and 6 (worth retrying), 400 for the rest; 404 and 405 for other
//! paths and methods. Malformed input never gets a 5xx.
//!
//! Semantics (the standard leaves these to the implementation):
//! - QoS fields absent or `null` take kagi's defaults (32-byte chunks, 1 s timeout, 1 h TTL).
//!   `key_chunk_size`, `max_bps`, `timeout`, `ttl` and `metadata_mimetype` are enforced (GET_KEY
//!   is paced to `max_bps`); `min_bps`, `jitter` and `priority` are checked for consistency and
//!   echoed, not scheduled. Out-of-range QoS gets status 7 with the nearest QoS kagi grants.
//! - The source application opens first (`key_stream_id` null or chosen by it) and passes the
//!   stream's ID to the destination, which opens with it and the same source and destination.
//!   Status 1 means the other end has not opened yet; GET_KEY before it does gets status 3.
//! - `index` absent reads the caller's next chunk; a given index must not be below it (skipped
//!   chunks are forfeited) nor more than `window` chunks ahead of the slower side. Each chunk is
//!   delivered once to each side, identical at both.
//! - GET_KEY waits up to the stream's `timeout` for key: status 2 if the network had none, 6 if
//!   the source's node did not answer in time.
//!
//! See [`streams`] for how chunks come from the key manager.

pub mod msgs;
pub mod streams;
pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kagi_control::Topology;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::config::Etsi014Config;
use crate::service::KeyService;
pub use streams::{StreamInfo, StreamNet, Streams, StreamsView};
use wire::{Failure, Status};

/// Largest request body (bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Time allowed for a request head, and for its body once the head has arrived.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

type Resp = Response<Full<Bytes>>;

fn answer(http: u16, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(http).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn failure(f: &Failure) -> Resp {
    answer(
        f.status.http(),
        json!({"status": f.status.code(), "message": f.message}),
    )
}

fn bad(msg: impl Into<String>) -> Resp {
    failure(&Failure::new(Status::BadRequest, msg))
}

/// Parses a JSON object into `T` (an array is refused even where serde would read it as a
/// struct's fields in order).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("the body must be a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Handles one request from SAE `caller` (None: the certificate maps to no SAE of the network).
pub async fn handle<S: KeyService, N: StreamNet, B>(
    streams: &Streams<S, N>,
    caller: Option<&str>,
    req: Request<B>,
) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let op = match req.uri().path() {
        "/etsi004/v2/open_connect" => 0,
        "/etsi004/v2/get_key" => 1,
        "/etsi004/v2/close" => 2,
        p => {
            let mut r = bad(format!(
                "no ETSI 004 call at {:?}",
                p.chars().take(64).collect::<String>()
            ));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    if req.method() != hyper::Method::POST {
        let mut r = bad("ETSI 004 calls are POST with a JSON body");
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let Some(me) = caller else {
        return failure(&Failure::new(
            Status::Unauthorized,
            "the client certificate names no application of this network",
        ));
    };
    let read = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => return bad("request body not received in time"),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return bad(format!(
                "request body is larger than {MAX_BODY_BYTES} bytes"
            ))
        }
        Ok(Err(_)) => return bad("could not read the request body"),
        Ok(Ok(b)) => b.to_bytes(),
    };
    match op {
        0 => match parse::<wire::OpenConnect>(&body) {
            Err(e) => bad(format!("OPEN_CONNECT: {e}")),
            Ok(r) => match streams.open(me, r).await {
                Ok(o) => answer(
                    200,
                    json!({"status": o.status.code(), "key_stream_id": o.ksid, "qos": o.qos}),
                ),
                Err(f) => {
                    let mut v =
                        json!({"status": f.failure.status.code(), "message": f.failure.message});
                    if let Some(q) = f.counter {
                        v["qos"] = json!(q);
                    }
                    answer(f.failure.status.http(), v)
                }
            },
        },
        1 => match parse::<wire::GetKey>(&body) {
            Err(e) => bad(format!("GET_KEY: {e}")),
            Ok(r) => {
                let ksid = r.key_stream_id;
                let want_meta = r.metadata.is_some();
                match streams.get_key(me, r).await {
                    Ok(c) => {
                        let mut v = json!({
                            "status": 0,
                            "index": c.index,
                            "key_buffer": base64::engine::general_purpose::STANDARD.encode(c.key.expose()),
                        });
                        if want_meta {
                            let m = streams::metadata(ksid, c.index, c.key_id);
                            v["metadata"] = json!({"size": m.len(), "buffer": m});
                        }
                        answer(200, v)
                    }
                    Err(f) => {
                        let mut v = json!({"status": f.failure.status.code(), "message": f.failure.message});
                        if let Some(n) = f.metadata_needed {
                            v["metadata"] = json!({"size": n});
                        }
                        answer(f.failure.status.http(), v)
                    }
                }
            }
        },
        _ => match parse::<wire::Close>(&body) {
            Err(e) => bad(format!("CLOSE: {e}")),
            Ok(r) => match streams.close(me, r.key_stream_id).await {
                Ok(()) => answer(200, json!({"status": 0})),
                Err(f) => failure(&f),
            },
        },
    }
}

/// Serves ETSI 004 on `listener` until `shutdown` completes: TLS from `tls` (client certificates
/// required), callers mapped to SAEs through `params.sae_map`, connections budgeted by
/// `admission`; `inbox` carries other nodes' stream messages (from the peer channels).
#[allow(clippy::too_many_arguments)] // a listener's usual arguments plus the peer inbox
pub async fn serve<S: KeyService, N: StreamNet>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    params: Etsi014Config,
    topology: Arc<Topology>,
    streams: Arc<Streams<S, N>>,
    mut inbox: mpsc::Receiver<(String, Vec<u8>)>,
    admission: Admission,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    tracing::info!(addr = ?listener.local_addr().ok(), "ETSI GS QKD 004 listening");
    let peers = {
        let streams = streams.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    m = inbox.recv() => match m {
                        Some((from, bytes)) => match msgs::StreamMsg::decode(&bytes) {
                            Some(msg) => streams.on_msg(&from, msg),
                            None => tracing::debug!(%from, "malformed ETSI 004 stream message; dropped"),
                        },
                        None => return,
                    },
                    _ = tick.tick() => streams.expire().await,
                }
            }
        })
    };
    let params = Arc::new(params);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            c = admission.accept(&listener) => c,
        };
        let (acceptor, streams, params, topology, admission) = (
            acceptor.clone(),
            streams.clone(),
            params.clone(),
            topology.clone(),
            admission.clone(),
        );
        tokio::spawn(async move {
            let Ok(stream) = admission.handshake(acceptor.accept(tcp)).await else {
                return;
            };
            let cn = crate::tls::peer_identity(stream.get_ref().1.peer_certificates());
            let sae = cn.as_ref().and_then(|cn| {
                let s = match params.sae_map.get(cn) {
                    Some(s) => s.clone(),
                    None if params.strict_sae_map => return None,
                    None => cn.clone(),
                };
                topology.node_of_sae(&s).is_some().then_some(s)
            });
            let slot = match &sae {
                Some(s) => s.clone(),
                None => format!("unmapped:{}", cn.as_deref().unwrap_or("")),
            };
            let Ok(_slot) = admission.admit(&slot) else {
                return;
            };
            tracing::debug!(%remote, sae = ?sae, "ETSI 004 connection");
            let sae: Arc<Option<String>> = Arc::new(sae);
            let svc = hyper::service::service_fn(move |req| {
                let (streams, sae) = (streams.clone(), sae.clone());
                async move { Ok::<_, Infallible>(handle(&streams, sae.as_deref(), req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    peers.abort();
    Ok(())
}
#[cfg(test)]
mod tests;
