//! The management listener: one per node, separate from ETSI GS QKD 014, for operators.
//!
//! Mutual TLS against the network CA ([`crate::tls::mgmt_server_config`]); the caller's role
//! comes from its certificate's subject OU ([`role`]), so SAE and node certificates, signed by
//! the same CA, get 403 on every request. JSON endpoints under `/api/v1/` ([`api::ROUTES`]),
//! Prometheus text at `/metrics` ([`metrics`]), the OpenAPI description at
//! `/api/v1/openapi.json`. Every change an operator makes is audited ([`Ops::audit`]).

pub mod api;
pub mod metrics;
pub mod ops;
pub mod role;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use api::MgmtCtx;
pub use ops::{AuditEvent, Ops, RefusalEvent};
pub use role::{Caller, Permission, Role};

/// Most management connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to receive a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the management API on `listener` until `shutdown` completes.
///
/// `tls` must require client certificates (normally [`crate::tls::mgmt_server_config`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<MgmtCtx>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = api::router(ctx);
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(addr = ?listener.local_addr().ok(), "management listening");
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "management accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "management: too many connections, closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "management TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let caller = Arc::new(Caller::from_certs(stream.get_ref().1.peer_certificates()));
            tracing::debug!(%remote, caller = %caller.name, role = ?caller.role, "management connection");
            let svc = TowerToHyperService::new(app.layer(Extension(caller)));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, error = %e, "management connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    Ok(())
}
