//! An ETSI GS QKD 014 client over mutual TLS: what an SAE uses to talk to a KME.
//!
//! Built on hyper's HTTP/1.1 client connection over tokio-rustls (no extra HTTP stack), with a
//! small pool of kept-alive connections so that repeated calls (benchmarks, the storage vault)
//! do not pay a handshake each time. Typed calls ([`Etsi014Client::status`],
//! [`Etsi014Client::enc_keys`], [`Etsi014Client::dec_keys`], and the GET forms) return kagi's
//! own types; [`Etsi014Client::request`] sends anything, for tests of hostile input.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use kagi_keymat::Key;
use kagi_km::app::{DeliveredKey, StatusInfo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use uuid::Uuid;

use crate::etsi014::wire;

/// Largest response body read (bytes).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not `https://HOST:PORT`.
    #[error("bad KME URL {0:?}: expected https://HOST:PORT")]
    BadUrl(String),
    /// Certificates or keys could not be loaded.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// TCP connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS handshake failed (wrong CA, certificate refused, no common group...).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP-level failure.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The KME answered with an error status and message.
    #[error("KME answered {status}: {message}")]
    Refused {
        /// HTTP status (400, 401 or 503 from a conforming KME).
        status: u16,
        /// The `message` of the error body.
        message: String,
    },
    /// The answer does not follow the standard.
    #[error("unexpected answer from KME: {0}")]
    Protocol(String),
}

/// An undecoded HTTP answer. `Debug` shows the body's length, not the body (it may hold keys).
#[derive(Clone)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Whether the server announced `Connection: close`.
    pub close: bool,
    /// The body.
    pub body: Bytes,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("close", &self.close)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl RawResponse {
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A client for one KME, authenticated as one SAE (the client certificate's identity).
pub struct Etsi014Client {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    timeout: Duration,
}

impl std::fmt::Debug for Etsi014Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etsi014Client")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Etsi014Client {
    /// A client for the KME at `base_url` (`https://HOST:PORT`) with a ready TLS configuration
    /// (see [`crate::tls::etsi_client_config`]).
    pub fn new(base_url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(base_url.to_owned());
        let rest = base_url.strip_prefix("https://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        let server_name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
        Ok(Self {
            host,
            port,
            server_name,
            connector: TlsConnector::from(tls),
            idle: Mutex::new(Vec::new()),
            timeout: Duration::from_secs(30),
        })
    }

    /// A client from PEM files: the CA to trust, the SAE's certificate and key.
    pub fn from_files(
        base_url: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Self, ClientError> {
        let tls = crate::tls::etsi_client_config(ca, cert, key)
            .map_err(|e| ClientError::Setup(format!("{e:#}")))?;
        Self::new(base_url, tls)
    }

    /// Sets the time allowed for one call (connect, handshake, answer). Default 30 s.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| ClientError::Handshake {
                addr: addr.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A ready connection: a kept-alive one if any (`true`), else a new one (`false`).
    async fn sender(&self) -> Result<(SendRequest<Full<Bytes>>, bool), ClientError> {
        loop {
            let next = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            match next {
                Some(mut s) => {
                    if !s.is_closed() && s.ready().await.is_ok() {
                        return Ok((s, true));
                    }
                }
                None => return Ok((self.connect().await?, false)),
            }
        }
    }

    /// Sends one request: `path_and_query` is sent as is (not encoded); `body`, if given, is
    /// sent with `Content-Type: application/json`; `close` adds `Connection: close`.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        close: bool,
    ) -> Result<RawResponse, ClientError> {
        tokio::time::timeout(
            self.timeout,
            self.request_inner(method, path_and_query, body, close),
        )
        .await
        .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn request_inner(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        close: bool,
    ) -> Result<RawResponse, ClientError> {
        let method = hyper::Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Protocol(format!("bad method {method:?}")))?;
        let has_body = body.is_some();
        let mut req = hyper::Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = path_and_query
            .parse()
            .map_err(|_| ClientError::Protocol(format!("bad request target {path_and_query:?}")))?;
        let host = HeaderValue::from_str(&format!("{}:{}", self.host, self.port))
            .map_err(|_| ClientError::BadUrl(self.host.clone()))?;
        req.headers_mut().insert(HOST, host);
        if has_body {
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if close {
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let (mut sender, reused) = self.sender().await?;
        let retry = reused.then(|| clone_request(&req));
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            // The server closed a kept-alive connection (idle timeout) just as the request
            // went out; it never saw the request, so sending it again on a new one is safe.
            Err(e) if e.is_canceled() || e.is_incomplete_message() => match retry {
                Some(again) => {
                    sender = self.connect().await?;
                    sender.send_request(again).await?
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let server_close = resp
            .headers()
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        if !close && !server_close && !sender.is_closed() {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < 64 {
                    idle.push(sender);
                }
            }
        }
        Ok(RawResponse {
            status,
            content_type,
            close: server_close,
            body,
        })
    }

    async fn call_json(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let r = self.request(method, path_and_query, body, false).await?;
        if r.status == 200 {
            return Ok(r.body);
        }
        let message = match serde_json::from_slice::<wire::Error>(&r.body) {
            Ok(e) => e.message,
            Err(_) => format!("(no JSON error body: {} bytes)", r.body.len()),
        };
        Err(ClientError::Refused {
            status: r.status,
            message,
        })
    }

    fn path(sae: &str, method: &str) -> String {
        format!("/api/v1/keys/{}/{method}", encode_segment(sae))
    }

    /// "Get status" for keys shared with `slave`.
    pub async fn status(&self, slave: &str) -> Result<StatusInfo, ClientError> {
        let body = self
            .call_json("GET", &Self::path(slave, "status"), None)
            .await?;
        let s: wire::Status = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("status: {e}")))?;
        Ok(StatusInfo {
            source_kme_id: s.source_KME_ID,
            target_kme_id: s.target_KME_ID,
            master_sae_id: s.master_SAE_ID,
            slave_sae_id: s.slave_SAE_ID,
            key_size: s.key_size,
            stored_key_count: s.stored_key_count,
            max_key_count: s.max_key_count,
            max_key_per_request: s.max_key_per_request,
            max_key_size: s.max_key_size,
            min_key_size: s.min_key_size,
            max_sae_id_count: s.max_SAE_ID_count,
        })
    }

    /// "Get key" (POST form): new keys shared with `slave` (and any additional slaves).
    pub async fn enc_keys(
        &self,
        slave: &str,
        req: &wire::KeyRequest,
    ) -> Result<Vec<DeliveredKey>, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self
            .call_json("POST", &Self::path(slave, "enc_keys"), Some(body))
            .await?;
        decode_keys(&resp)
    }

    /// "Get key" (GET form, `?number=&size=`).
    pub async fn enc_keys_get(
        &self,
        slave: &str,
        number: Option<u64>,
        size: Option<u64>,
    ) -> Result<Vec<DeliveredKey>, ClientError> {
        let mut q = Vec::new();
        if let Some(n) = number {
            q.push(format!("number={n}"));
        }
        if let Some(s) = size {
            q.push(format!("size={s}"));
        }
        let mut target = Self::path(slave, "enc_keys");
        if !q.is_empty() {
            target = format!("{target}?{}", q.join("&"));
        }
        let resp = self.call_json("GET", &target, None).await?;
        decode_keys(&resp)
    }

    /// "Get key with key IDs" (POST form): the keys `master` obtained, by ID.
    pub async fn dec_keys(
        &self,
        master: &str,
        ids: &[Uuid],
    ) -> Result<Vec<DeliveredKey>, ClientError> {
        let req = wire::KeyIds {
            key_IDs: ids
                .iter()
                .map(|id| wire::KeyIdEntry {
                    key_ID: id.to_string(),
                    key_ID_extension: None,
                })
                .collect(),
            key_IDs_extension: None,
        };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self
            .call_json("POST", &Self::path(master, "dec_keys"), Some(body))
            .await?;
        decode_keys(&resp)
    }

    /// "Get key with key IDs" (GET form, one `key_ID`).
    pub async fn dec_keys_get(
        &self,
        master: &str,
        id: Uuid,
    ) -> Result<Vec<DeliveredKey>, ClientError> {
        let target = format!("{}?key_ID={id}", Self::path(master, "dec_keys"));
        let resp = self.call_json("GET", &target, None).await?;
        decode_keys(&resp)
    }
}

fn clone_request(req: &hyper::Request<Full<Bytes>>) -> hyper::Request<Full<Bytes>> {
    let mut r = hyper::Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.headers_mut() = req.headers().clone();
    r
}

/// Decodes a Key container into IDs and keys.
pub fn decode_keys(body: &[u8]) -> Result<Vec<DeliveredKey>, ClientError> {
    let c: wire::KeyContainer = serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("key container: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    c.keys
        .into_iter()
        .map(|e| {
            let id = Uuid::try_parse(&e.key_ID).map_err(|_| {
                ClientError::Protocol(format!("key_ID {:?} is not a UUID", e.key_ID))
            })?;
            let bytes = b64
                .decode(e.key.as_bytes())
                .map_err(|_| ClientError::Protocol(format!("key {id} is not standard base64")))?;
            Ok(DeliveredKey {
                id,
                key: Key::from_vec(bytes),
                paths: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(crate::tls::etsi_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        let c = Etsi014Client::new("https://127.0.0.1:8443", tls.clone()).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8443));
        assert!(Etsi014Client::new("http://127.0.0.1:1", tls.clone()).is_err());
        assert!(Etsi014Client::new("https://127.0.0.1", tls.clone()).is_err());
        assert!(Etsi014Client::new("https://:99", tls).is_err());
        assert_eq!(encode_segment("sae-a.b_c"), "sae-a.b_c");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
