//! The management listener: one per node, separate from ETSI GS QKD 014, for operators.
//!
//! Mutual TLS against the network CA ([`crate::tls::mgmt_server_config`]); the caller's role
//! comes from its certificate's subject OU ([`role`]), so SAE and node certificates, signed by
//! the same CA, get 403 on every request. JSON endpoints under `/api/v1/` ([`api::ROUTES`]),
//! Prometheus text at `/metrics` ([`metrics`]), the OpenAPI description at
//! `/api/v1/openapi.json`, and a read-only ETSI GS QKD 015-shaped RESTCONF view ([`qkdn`]). Every change an operator makes is audited ([`Ops::audit`]).

pub mod admin_store;
pub mod api;
pub mod metrics;
pub mod ops;
pub mod qkdn;
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

use crate::admission::{Admission, Limits};

pub use api::MgmtCtx;
pub use ops::{AuditEvent, Ops, RefusalEvent, TamperState};
pub use role::{Caller, Permission, Role};

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
    // Bounded like every mutual-TLS listener: pending handshakes evicted oldest first,
    // authenticated slots per identity.
    let admission = Admission::new("management", Limits::APPLICATIONS);
    tracing::info!(addr = ?listener.local_addr().ok(), "management listening");
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            c = admission.accept(&listener) => c,
        };
        let admission = admission.clone();
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match admission.handshake(acceptor.accept(tcp)).await {
                Ok(s) => s,
                Err((_, e)) => {
                    tracing::debug!(%remote, error = ?e, "management TLS handshake refused");
                    return;
                }
            };
            let caller = Arc::new(Caller::from_certs(stream.get_ref().1.peer_certificates()));
            let Ok(_slot) = admission.admit(&caller.name) else {
                return;
            };
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
