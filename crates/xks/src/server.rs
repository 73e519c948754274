//! HTTPS for the proxy: a tokio-rustls accept loop (TLS 1.3 and 1.2, X25519MLKEM768 preferred,
//! ALPN h2 and http/1.1, optional client certificates restricted to configured subject names)
//! and hyper serving [`Proxy::handle`]. Bodies are read up to [`wire::MAX_BODY_BYTES`]; larger
//! ones get `400 ValidationException` without being read further.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::proxy::Proxy;
use crate::wire::{self, XksError};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client-certificate verifier that also requires one of the configured subject CNs (the
/// spec: the proxy "MUST terminate the TLS handshake if the client presents a certificate
/// containing a different subject name or chained to a different certificate authority").
#[derive(Debug)]
struct SubjectVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    subjects: Vec<String>,
}

impl ClientCertVerifier for SubjectVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let v = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match kagi_node::tls::common_name(end_entity) {
            Some(cn) if self.subjects.contains(&cn) => Ok(v),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server TLS configuration: `cert`/`key` for the proxy, and when `mtls` is given, client
/// certificates chained to its CA with one of its subject CNs.
pub fn tls_config(
    cert: &Path,
    key: &Path,
    mtls: Option<&crate::config::MtlsConfig>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = kagi_node::tls::etsi_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match mtls {
        Some(m) => {
            let roots = kagi_node::tls::load_roots(&m.ca)?;
            let inner = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| anyhow::anyhow!("client verifier: {e}"))?;
            builder.with_client_cert_verifier(Arc::new(SubjectVerifier {
                inner,
                subjects: m.subjects.clone(),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(
            kagi_node::tls::load_certs(cert)?,
            kagi_node::tls::load_key(key)?,
        )
        .map_err(|e| anyhow::anyhow!("proxy certificate {}: {e}", cert.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn json_response(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == 405 {
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
    }
    r
}

/// Time allowed to receive a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// An oversized body is read and thrown away up to this many bytes, so that the client sees the
/// error answer instead of a reset; past it the connection is closed.
const MAX_DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// Reads a body of at most [`wire::MAX_BODY_BYTES`].
async fn read_body(mut body: Incoming) -> Result<Bytes, String> {
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "request body could not be read".to_string())?;
        if let Ok(d) = frame.into_data() {
            seen += d.len();
            if seen > MAX_DRAIN_BYTES {
                break;
            }
            if seen <= wire::MAX_BODY_BYTES {
                buf.extend_from_slice(&d);
            }
        }
    }
    if seen > wire::MAX_BODY_BYTES {
        return Err(format!(
            "request body is larger than {} bytes",
            wire::MAX_BODY_BYTES
        ));
    }
    Ok(Bytes::from(buf))
}

async fn serve_request(proxy: Arc<Proxy>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // HTTP/2 carries the host in the URI's authority, not in a Host header.
    let authority = parts.uri.authority().map(|a| a.as_str().to_string());
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(msg)) => return json_response(400, XksError::validation(msg).body()),
        Err(_) => {
            return json_response(
                400,
                XksError::validation("request body not received in time").body(),
            )
        }
    };
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(parts.headers.len() + 1);
    for (n, v) in &parts.headers {
        match v.to_str() {
            Ok(v) => headers.push((n.as_str(), v)),
            Err(_) => {
                return json_response(
                    400,
                    XksError::validation(format!("header {n} is not visible ASCII")).body(),
                );
            }
        }
    }
    if let Some(a) = authority.as_deref() {
        if !parts.headers.contains_key(hyper::header::HOST) {
            headers.push(("host", a));
        }
    }
    let a = proxy
        .handle(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            &headers,
            &body,
            crate::time::now_unix(),
        )
        .await;
    json_response(a.status, a.body)
}

/// Serves the proxy on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(addr = ?listener.local_addr().ok(), "XKS proxy listening");
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "XKS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "XKS: too many connections, closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "XKS TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(serve_request(proxy, req).await) }
            });
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .keep_alive(true);
            if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%remote, error = %e, "XKS connection ended with an error");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod mtls_tests {
    use super::*;
    use kagi_node::pki::Pki;
    use tokio::io::AsyncWriteExt;

    /// Whether the proxy's TLS (with `server`) accepts a handshake from a client presenting
    /// `client` (certificate, key), or none.
    async fn accepted(
        server: Arc<rustls::ServerConfig>,
        ca: &Path,
        client: Option<(&Path, &Path)>,
    ) -> bool {
        let cfg = match client {
            Some((c, k)) => kagi_node::tls::etsi_client_config(ca, c, k).unwrap(),
            None => Arc::new(
                rustls::ClientConfig::builder_with_provider(kagi_node::tls::etsi_provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(kagi_node::tls::load_roots(ca).unwrap())
                    .with_no_client_auth(),
            ),
        };
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let (s, _) = tokio::join!(TlsAcceptor::from(server).accept(b), async {
            let mut t = connector.connect(name, a).await?;
            t.write_all(b"x").await?;
            t.flush().await?;
            Ok::<_, std::io::Error>(t)
        });
        s.is_ok()
    }

    #[tokio::test]
    async fn mtls_admits_only_listed_subjects_from_the_ca() {
        let dir = kagi_node::loopback::scratch_dir("xks-mtls").unwrap();
        let pki = Pki::open_or_create(&dir.join("pki")).unwrap();
        let other = Pki::open_or_create(&dir.join("other-pki")).unwrap();
        let proxy = pki.ensure_node("xks-proxy").unwrap();
        let kms = pki.ensure_sae("cks.kms.us-east-1.amazonaws.com").unwrap();
        let stranger = pki.ensure_sae("someone-else").unwrap();
        let forged = other.ensure_sae("cks.kms.us-east-1.amazonaws.com").unwrap();
        let ca = pki.ca_cert_path();
        let mtls = crate::config::MtlsConfig {
            ca: ca.clone(),
            subjects: vec!["cks.kms.us-east-1.amazonaws.com".into()],
        };
        let with = tls_config(&proxy.cert, &proxy.key, Some(&mtls)).unwrap();
        let without = tls_config(&proxy.cert, &proxy.key, None).unwrap();
        assert!(accepted(with.clone(), &ca, Some((&kms.cert, &kms.key))).await);
        assert!(!accepted(with.clone(), &ca, Some((&stranger.cert, &stranger.key))).await);
        assert!(!accepted(with.clone(), &ca, Some((&forged.cert, &forged.key))).await);
        assert!(!accepted(with, &ca, None).await);
        // mTLS off (the default): any client gets a session; SigV4 is then the only gate.
        assert!(accepted(without, &ca, None).await);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
