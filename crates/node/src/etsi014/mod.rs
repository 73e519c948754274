//! ETSI GS QKD 014 key delivery over mutual TLS: the HTTP adapter between applications (SAEs)
//! and the key manager ([`KeyService`]).
//!
//! [`serve`] runs its own accept loop: a tokio-rustls handshake (client certificate required,
//! see [`crate::tls::etsi_server_config`]), then HTTP/1.1 served by hyper on that connection with
//! the caller's identity fixed for the connection's lifetime. The caller's SAE ID is the subject
//! CN of its certificate, mapped through [`Etsi014Config::sae_map`] (a CN absent there is its own
//! SAE ID); a caller whose SAE is not in the topology gets 401 on every request.
//!
//! Routes (base `/api/v1/keys/`): `{slave}/status` (GET), `{slave}/enc_keys` (GET with only
//! `number`/`size` query parameters, or POST with a Key request body), `{master}/dec_keys` (GET
//! with exactly one `key_ID`, or POST with a Key IDs body). Only 200, 400, 401 and 503 are ever
//! answered, always with a JSON body; errors carry `message` (the standard's fixed messages
//! verbatim where it fixes one) and sometimes `details`.
//!
//! What is checked where: syntax only here (path, query, JSON shape, mandatory extensions —
//! kagi supports `kagi_route` only, see `route_ext` — UUID syntax, IDs known to the topology); the standard's semantics in
//! the key manager core behind [`KeyService`]: the configured ranges of `number`, `size` and the
//! slave count ([`kagi_km::Limits`], which the node config embeds), who may fetch which key, pool
//! contents and the relay. Requests whose head hyper cannot parse (invalid bytes, too many
//! or too large headers, an over-long target) never reach the handler; the answer hyper writes
//! for them is rewritten on its way out into a JSON 400 (see `bare_errors`).

mod bare_errors;
mod handler;
mod observed;
mod path;
mod route_ext;
pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use kagi_control::Topology;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::config::Etsi014Config;
use crate::service::KeyService;

pub use handler::MAX_BODY_BYTES;

/// Time allowed to receive a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time given to open connections to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs one request through the ETSI 014 handler without a network: the whole syntax check and
/// answer mapping, with `cert_cn` as the caller's certificate CN. For fuzzing and property tests;
/// [`serve`] is the server.
#[doc(hidden)]
pub async fn handle_one<S: KeyService, B>(
    params: &Etsi014Config,
    topology: &Arc<Topology>,
    service: S,
    cert_cn: Option<String>,
    req: hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let ctx = handler::Ctx {
        params: params.clone(),
        topology: topology.clone(),
        service,
    };
    let caller = handler::Caller::resolve(cert_cn, params, topology);
    handler::handle(&ctx, &caller, req).await
}

/// Serves ETSI GS QKD 014 on `listener` until `shutdown` completes, then stops accepting and
/// gives open connections [`SHUTDOWN_GRACE`] to finish.
///
/// * `tls`: normally [`crate::tls::etsi_server_config`]; it must require client certificates.
/// * `params`: key size limits and the certificate → SAE mapping.
/// * `topology`: the SAEs that exist (callers and SAE IDs in paths are checked against it).
/// * `service`: the key manager.
/// * `admission`: connection budgets before and after the handshake (see [`crate::admission`]).
///
/// Returns an error only if the listener itself fails fatally; per-connection errors are logged
/// and never stop the server.
pub async fn serve<S: KeyService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    params: Etsi014Config,
    topology: Arc<Topology>,
    service: S,
    admission: Admission,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_observed(
        listener, tls, params, topology, service, admission, None, shutdown,
    )
    .await
}

/// [`serve`], reporting every answer to the node's operational state (request counts and
/// latency by endpoint and status, refusals) and refusing new `enc_keys` with 503 while an
/// operator drains the node (`dec_keys` for keys already handed out still works).
#[allow(clippy::too_many_arguments)] // `serve`'s arguments plus the operator's state
pub async fn serve_observed<S: KeyService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    params: Etsi014Config,
    topology: Arc<Topology>,
    service: S,
    admission: Admission,
    ops: Option<Arc<crate::mgmt::Ops>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ctx = Arc::new(handler::Ctx {
        params,
        topology,
        service,
    });
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "ETSI GS QKD 014 listening");
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            c = admission.accept(&listener) => c,
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let watcher = graceful.watcher();
        let ops = ops.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let stream = match admission.handshake(acceptor.accept(tcp)).await {
                Ok(s) => s,
                Err((_, Some(e))) => {
                    // A refused or unverifiable client certificate is an authentication
                    // failure worth an operator's attention; anything else (scanners, resets)
                    // is noise.
                    let auth = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .is_some_and(|r| {
                            matches!(
                                r,
                                rustls::Error::InvalidCertificate(_)
                                    | rustls::Error::NoCertificatesPresented
                            )
                        });
                    if auth {
                        tracing::debug!(%remote, error = %e, "ETSI 014 client certificate refused");
                    }
                    return;
                }
                Err((_, None)) => return,
            };
            let (_, conn) = stream.get_ref();
            let cn = crate::tls::peer_identity(conn.peer_certificates());
            let caller = Arc::new(handler::Caller::resolve(cn, &ctx.params, &ctx.topology));
            let group = conn.negotiated_key_exchange_group().map(|g| g.name());
            match &*caller {
                handler::Caller::Unknown(cn) => {
                    tracing::warn!(%remote, cn = ?cn, "ETSI 014 certificate maps to no SAE; answering 401");
                }
                handler::Caller::Sae(sae) if group != Some(rustls::NamedGroup::X25519MLKEM768) => {
                    tracing::warn!(%remote, %sae, group = ?group, "ETSI 014 client without post-quantum key exchange");
                }
                handler::Caller::Sae(sae) => {
                    tracing::debug!(%remote, %sae, group = ?group, "ETSI 014 connection");
                }
            }
            let slot_name = match &*caller {
                handler::Caller::Sae(sae) => sae.clone(),
                handler::Caller::Unknown(cn) => format!("unmapped:{}", cn.as_deref().unwrap_or("")),
            };
            let Ok(_slot) = admission.admit(&slot_name) else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let caller = caller.clone();
                let ops = ops.clone();
                async move {
                    let Some(ops) = ops else {
                        return Ok::<_, Infallible>(handler::handle(&ctx, &caller, req).await);
                    };
                    Ok(observed::handle(&ctx, &caller, &ops, req).await)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(bare_errors::JsonErrors::new(stream)), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, error = %e, "ETSI 014 connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("ETSI 014: connections still open after the shutdown grace period");
        }
    }
    Ok(())
}
