//! Cisco's Secure Key Integration Protocol (SKIP, draft-cisco-skip) for routers and VPN
//! gateways, on its own TLS 1.3 listener with certificates (client certificate required,
//! verified against the network CA; the caller's system ID is its certificate's SAE, as for
//! ETSI 014). The draft's other mode, TLS 1.3 with an external PSK, is not offered: rustls has no
//! external-PSK API (its PSKs are only its own session tickets); see docs/SECURITY.md.
//!
//! ```text
//! GET /capabilities                          {"entropy", "key", "algorithm", "localSystemID", "remoteSystemID": [...]}
//! GET /key?remoteSystemID=R[&size=BITS]      {"keyId": HEX, "key": HEX}   (a new key shared with R)
//! GET /key/{keyId}?remoteSystemID=R          {"keyId": HEX, "key": HEX}   (the key R obtained)
//! GET /entropy[?minentropy=BITS]             {"randomStr": HEX, "minentropy": BITS}
//! ```
//!
//! Keys come from the key manager through the same [`KeyService`] calls as ETSI 014
//! (`EncKeys` at the requesting node, `DecKeys` at the peer's node), so they draw on the same
//! pools and assignments: a router at one node and a router at another get the same key, served
//! once per side. A key ID is the UUID's 16 bytes in hex (32 digits).
//!
//! Errors are HTTP statuses with a JSON body `{"error": MESSAGE}`: 400 for bad parameters,
//! 401 for an unknown caller, 404 for an unknown path or key ID, 405 for a method other than
//! GET, 503 when no key is available yet. No answer is ever a 5xx other than 503.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kagi_control::Topology;
use kagi_km::app::{AppCall, AppReply, Refusal};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Etsi014Config, TlsConfig};
use crate::service::KeyService;

/// Most connections at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest key a router may ask for (bits).
pub const MAX_KEY_BITS: u64 = 8192;
/// Largest entropy request (bits).
pub const MAX_ENTROPY_BITS: u64 = 8192;

/// The server TLS configuration: TLS 1.3 only, client certificate from the CA required,
/// X25519MLKEM768 preferred.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = crate::tls::etsi_provider();
    let roots = crate::tls::load_roots(&tls.ca)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("client verifier: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            crate::tls::load_certs(&tls.cert)?,
            crate::tls::load_key(&tls.key)?,
        )
        .map_err(|e| anyhow::anyhow!("node certificate {}: {e}", tls.cert.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

type Resp = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    answer(status, json!({"error": msg.into()}))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn query(q: Option<&str>) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if m.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("parameter {k} given twice"));
        }
    }
    Ok(m)
}

fn refusal(r: Refusal) -> Resp {
    match r {
        Refusal::BadRequest(m) if m.contains("not found") => error(StatusCode::NOT_FOUND, m),
        Refusal::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        Refusal::Unauthorized(m) => error(StatusCode::UNAUTHORIZED, m),
        Refusal::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

struct Ctx<S> {
    topology: Arc<Topology>,
    service: S,
}

/// Handles one request from SAE `caller` (None: the certificate maps to no SAE).
async fn handle<S: KeyService>(
    ctx: &Ctx<S>,
    caller: Option<&str>,
    req: &Request<hyper::body::Incoming>,
) -> Resp {
    if req.method() != hyper::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "SKIP accepts GET only");
    }
    let Some(me) = caller else {
        return error(
            StatusCode::UNAUTHORIZED,
            "the client certificate names no system of this network",
        );
    };
    let q = match query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let path = req.uri().path();
    let remote = |q: &BTreeMap<String, String>| -> Result<String, Box<Resp>> {
        let r = q
            .get("remoteSystemID")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Box::new(error(StatusCode::BAD_REQUEST, "remoteSystemID is required"))
            })?;
        if ctx.topology.node_of_sae(r).is_none() {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("unknown remoteSystemID {r:?}"),
            )));
        }
        if r == me {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "remoteSystemID is the caller itself",
            )));
        }
        Ok(r.clone())
    };
    match path {
        "/capabilities" => {
            let mut others: Vec<&str> = ctx
                .topology
                .nodes
                .iter()
                .flat_map(|n| n.saes.iter().map(String::as_str))
                .filter(|s| *s != me)
                .collect();
            others.sort_unstable();
            answer(
                StatusCode::OK,
                json!({"entropy": true, "key": true, "algorithm": "qkd", "localSystemID": me, "remoteSystemID": others}),
            )
        }
        "/entropy" => {
            let bits = match q.get("minentropy").map(|v| v.parse::<u64>()) {
                None => 256,
                Some(Ok(b)) if b > 0 && b <= MAX_ENTROPY_BITS => b,
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("minentropy must be 1..={MAX_ENTROPY_BITS}"),
                    )
                }
            };
            let mut buf = kagi_keymat::Key::zeroed(bits.div_ceil(8) as usize);
            if let Err(e) = rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, buf.expose_mut())
            {
                return error(StatusCode::SERVICE_UNAVAILABLE, format!("no entropy: {e}"));
            }
            answer(
                StatusCode::OK,
                json!({"randomStr": hex(buf.expose()), "minentropy": bits}),
            )
        }
        "/key" => {
            let r = match remote(&q) {
                Ok(r) => r,
                Err(resp) => return *resp,
            };
            let size = match q.get("size").map(|v| v.parse::<u64>()) {
                None => None,
                Some(Ok(b)) if b > 0 && b % 8 == 0 && b <= MAX_KEY_BITS => Some(b),
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("size must be a multiple of 8 in 8..={MAX_KEY_BITS}"),
                    )
                }
            };
            let call = AppCall::EncKeys {
                master: me.into(),
                slave: r,
                number: Some(1),
                size_bits: size,
                additional_slaves: Vec::new(),
                route: None,
            };
            keys(ctx.service.call(call).await)
        }
        p => {
            let Some(id) = p.strip_prefix("/key/") else {
                return error(StatusCode::NOT_FOUND, format!("no SKIP resource {p:?}"));
            };
            let r = match remote(&q) {
                Ok(r) => r,
                Err(resp) => return *resp,
            };
            let Some(uuid) = unhex(id).and_then(|b| uuid::Uuid::from_slice(&b).ok()) else {
                return error(StatusCode::BAD_REQUEST, "keyId must be 32 hex digits");
            };
            let call = AppCall::DecKeys {
                slave: me.into(),
                master: r,
                key_ids: vec![uuid],
            };
            keys(ctx.service.call(call).await)
        }
    }
}

fn keys(r: Result<AppReply, Refusal>) -> Resp {
    match r {
        Ok(AppReply::Keys(k)) => match k.first() {
            Some(k) => answer(
                StatusCode::OK,
                json!({"keyId": hex(k.id.as_bytes()), "key": hex(k.key.expose())}),
            ),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no key returned"),
        },
        Ok(AppReply::Status(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "unexpected answer"),
        Err(e) => refusal(e),
    }
}

/// Serves SKIP on `listener` until `shutdown` completes. Callers are mapped to SAEs as for ETSI
/// 014 (`params.sae_map`).
pub async fn serve<S: KeyService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    params: Etsi014Config,
    topology: Arc<Topology>,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ctx = Arc::new(Ctx { topology, service });
    let params = Arc::new(params);
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(addr = ?listener.local_addr().ok(), "SKIP listening");
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (acceptor, ctx, params) = (acceptor.clone(), ctx.clone(), params.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "SKIP TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let cn = crate::tls::peer_identity(stream.get_ref().1.peer_certificates());
            let sae = cn.and_then(|cn| {
                let s = params.sae_map.get(&cn).cloned().unwrap_or(cn);
                ctx.topology.node_of_sae(&s).is_some().then_some(s)
            });
            let sae: Arc<Option<String>> = Arc::new(sae);
            let svc = hyper::service::service_fn(move |req| {
                let (ctx, sae) = (ctx.clone(), sae.clone());
                async move { Ok::<_, Infallible>(handle(&ctx, sae.as_deref(), &req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_query() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(unhex(&hex(id.as_bytes())).unwrap(), id.as_bytes());
        assert!(unhex("zz").is_none() && unhex("abc").is_none());
        let q = query(Some("remoteSystemID=b&size=256")).unwrap();
        assert_eq!(q["size"], "256");
        assert!(query(Some("a=1&a=2")).is_err());
    }
}
