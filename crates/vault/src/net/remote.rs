//! The owner's handle on a site process: [`crate::api::SiteApi`] over HTTP/1.1 on mutual TLS
//! (hyper client connection over tokio-rustls, one kept-alive connection).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_rustls::TlsConnector;

use super::wire::{decode_envelopes, encode_envelopes, encode_repair};
use super::{Progress, KEY_BYTES_HEADER, MAX_BODY_BYTES};
use crate::api::{ObjectState, SiteApi};
use crate::envelope::Envelope;
use crate::error::{Result, VaultError};
use crate::site::Manifest;

/// Time allowed for one request (large shares are written and fsync'd before the answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// A storage site in another process. Methods block on `handle`: call them from outside the
/// async context of a multi-thread runtime.
pub struct RemoteSite {
    id: String,
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    handle: Handle,
    conn: Option<SendRequest<Full<Bytes>>>,
    used: u64,
    wait: Duration,
    progress: Option<Progress>,
}

impl std::fmt::Debug for RemoteSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSite")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RemoteSite {
    /// Site `id` listening at `url` (`https://HOST:PORT`); `tls` presents the owner's SAE
    /// certificate and trusts the network CA; the server must present a certificate for `id`.
    /// While the site answers that key is short, calls are repeated for up to `wait`.
    pub fn new(
        id: &str,
        url: &str,
        tls: Arc<rustls::ClientConfig>,
        handle: Handle,
        wait: Duration,
    ) -> Result<Self> {
        let addr = url
            .strip_prefix("https://")
            .map(|a| a.trim_end_matches('/').to_string())
            .ok_or_else(|| VaultError::Malformed(format!("site URL {url:?}: expected https://")))?;
        let server_name = ServerName::try_from(id.to_string())
            .map_err(|_| VaultError::Malformed(format!("site ID {id:?} is not a DNS name")))?;
        Ok(Self {
            id: id.to_string(),
            addr,
            server_name,
            connector: TlsConnector::from(tls),
            handle,
            conn: None,
            used: 0,
            wait,
            progress: None,
        })
    }

    /// Reports progress lines to `p` while the site waits for key.
    pub fn with_progress(mut self, p: Progress) -> Self {
        self.progress = Some(p);
        self
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> VaultError {
        VaultError::Site {
            site: self.id.clone(),
            reason: format!("unreachable at {}: {reason}", self.addr),
        }
    }

    async fn connect(
        addr: &str,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> std::result::Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request; `Ok((status, body, key bytes))`.
    fn send(&mut self, method: &str, path: &str, body: &Bytes) -> Result<(u16, Bytes, u64)> {
        let mut last_err = String::new();
        // A kept-alive connection may have been closed by the site (restart, idle) just as the
        // request went out: the first failure on a reused connection is retried once on a fresh
        // one. Should the site have acted on the first try after all, the repeat fails cleanly
        // (its transfer keys were served once) or is idempotent (commit, abort, reads).
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            let conn = self.conn.take();
            let addr = self.addr.clone();
            let connector = self.connector.clone();
            let name = self.server_name.clone();
            let mut req = hyper::Request::new(Full::new(body.clone()));
            *req.method_mut() = hyper::Method::from_bytes(method.as_bytes())
                .map_err(|_| VaultError::Malformed(method.into()))?;
            *req.uri_mut() = path
                .parse()
                .map_err(|_| VaultError::Malformed(format!("path {path:?}")))?;
            if let Ok(h) = HeaderValue::from_str(&addr) {
                req.headers_mut().insert(HOST, h);
            }
            req.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let fut = async move {
                let mut sender = match conn {
                    Some(mut s) if !s.is_closed() => match s.ready().await {
                        Ok(()) => s,
                        Err(_) => Self::connect(&addr, &connector, name).await?,
                    },
                    _ => Self::connect(&addr, &connector, name).await?,
                };
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let spent = resp
                    .headers()
                    .get(KEY_BYTES_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?
                    .to_bytes();
                Ok::<_, String>((status, body, spent, sender))
            };
            let r = self
                .handle
                .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, fut).await });
            match r {
                Ok(Ok((status, body, spent, sender))) => {
                    if !sender.is_closed() {
                        self.conn = Some(sender);
                    }
                    return Ok((status, body, spent));
                }
                Ok(Err(e)) => {
                    last_err = e;
                    if !(reused && attempt == 0) {
                        break;
                    }
                }
                Err(_) => {
                    last_err = format!("no answer within {REQUEST_TIMEOUT:?}");
                    break;
                }
            }
        }
        Err(self.unreachable(last_err))
    }

    /// A request, repeated with progress while the site answers that key is short.
    fn call(&mut self, method: &str, path: &str, body: Vec<u8>) -> Result<Bytes> {
        let body = Bytes::from(body);
        let deadline = Instant::now() + self.wait;
        let started = Instant::now();
        let mut last_note = Instant::now();
        loop {
            let (status, resp, spent) = self.send(method, path, &body)?;
            self.used += spent;
            if status == 200 {
                return Ok(resp);
            }
            let v: serde_json::Value = serde_json::from_slice(&resp).unwrap_or_default();
            let kind = v["error"].as_str().unwrap_or("");
            let message = v["message"].as_str().unwrap_or("").to_string();
            match (status, kind) {
                (503, "key_shortage") => {
                    let needed = v["needed"].as_u64().unwrap_or(0);
                    let available = v["available"].as_u64().unwrap_or(0);
                    if Instant::now() >= deadline {
                        return Err(VaultError::KeyShortage { needed, available });
                    }
                    if last_note.elapsed() >= Duration::from_secs(5) {
                        if let Some(p) = &self.progress {
                            p(&format!(
                                "waiting for QKD key at site {}: {available} of {needed} bytes \
                                 after {:.0} s (its node's pool is refilling)",
                                self.id,
                                started.elapsed().as_secs_f64()
                            ));
                        }
                        last_note = Instant::now();
                    }
                    // The site already waited a few seconds for this answer.
                    std::thread::sleep(Duration::from_millis(100));
                }
                (404, "unknown_object") => {
                    let object = path.split('/').nth(3).unwrap_or("").to_string();
                    return Err(VaultError::UnknownObject(object));
                }
                _ => {
                    return Err(VaultError::Site {
                        site: self.id.clone(),
                        reason: if message.is_empty() {
                            format!("answered HTTP {status}")
                        } else {
                            message
                        },
                    })
                }
            }
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, b: &[u8]) -> Result<T> {
        serde_json::from_slice(b).map_err(|e| VaultError::Site {
            site: self.id.clone(),
            reason: format!("unexpected answer: {e}"),
        })
    }

    /// The site's SAE ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The site's address (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One request on a route without a typed wrapper (repeated while the site is short of
    /// key); the answer's body.
    pub fn request(&mut self, method: &str, path: &str, body: Vec<u8>) -> Result<Bytes> {
        self.call(method, path, body)
    }

    /// Checks that the site answers (and is who it should be).
    pub fn health(&mut self) -> Result<()> {
        let b = self.call("GET", "/v1/health", Vec::new())?;
        let v: serde_json::Value = self.json(&b)?;
        if v["site"].as_str() != Some(self.id.as_str()) {
            return Err(self.unreachable("another site answered"));
        }
        Ok(())
    }
}

fn obj(object: &str, rest: &str) -> Result<String> {
    crate::site::check_object_id(object)?;
    Ok(format!("/v1/objects/{object}{rest}"))
}

impl SiteApi for RemoteSite {
    fn id(&self) -> &str {
        &self.id
    }
    fn key_bytes_used(&self) -> u64 {
        self.used
    }
    fn receive_share(&mut self, env: &Envelope) -> Result<()> {
        self.call("POST", "/v1/put", env.0.clone()).map(|_| ())
    }
    fn commit(&mut self, object: &str) -> Result<()> {
        self.call("POST", &obj(object, "/commit")?, Vec::new())
            .map(|_| ())
    }
    fn abort(&mut self, object: &str) -> Result<()> {
        self.call("POST", &obj(object, "/abort")?, Vec::new())
            .map(|_| ())
    }
    fn state(&mut self, object: &str) -> Result<ObjectState> {
        let b = self.call("GET", &obj(object, "")?, Vec::new())?;
        self.json(&b)
    }
    fn send_share(&mut self, object: &str, _to: &str) -> Result<Envelope> {
        // The site seals for the caller, whoever `to` says: identity comes from the certificate.
        let b = self.call("POST", &obj(object, "/share")?, Vec::new())?;
        Ok(Envelope(b.to_vec()))
    }
    fn list(&mut self) -> Result<Vec<Manifest>> {
        let b = self.call("GET", "/v1/objects", Vec::new())?;
        self.json(&b)
    }
    fn refresh_deal(&mut self, object: &str) -> Result<Vec<Envelope>> {
        let b = self.call("POST", &obj(object, "/refresh/deal")?, Vec::new())?;
        decode_envelopes(&b)
    }
    fn refresh_apply(&mut self, object: &str, updates: &[Envelope]) -> Result<()> {
        self.call(
            "POST",
            &obj(object, "/refresh/apply")?,
            encode_envelopes(updates),
        )
        .map(|_| ())
    }
    fn refresh_commit(&mut self, object: &str) -> Result<()> {
        self.call("POST", &obj(object, "/refresh/commit")?, Vec::new())
            .map(|_| ())
    }
    fn refresh_abort(&mut self, object: &str) -> Result<()> {
        self.call("POST", &obj(object, "/refresh/abort")?, Vec::new())
            .map(|_| ())
    }
    fn repair_contribute(
        &mut self,
        object: &str,
        target: usize,
        helpers: &[u8],
    ) -> Result<Vec<Envelope>> {
        let hs: Vec<String> = helpers.iter().map(|h| h.to_string()).collect();
        let path = obj(
            object,
            &format!(
                "/repair/contribute?target={target}&helpers={}",
                hs.join(",")
            ),
        )?;
        let b = self.call("POST", &path, Vec::new())?;
        decode_envelopes(&b)
    }
    fn repair_aggregate(&mut self, object: &str, received: &[Envelope]) -> Result<Envelope> {
        let b = self.call(
            "POST",
            &obj(object, "/repair/aggregate")?,
            encode_envelopes(received),
        )?;
        Ok(Envelope(b.to_vec()))
    }
    fn repair_receive(&mut self, manifest: &Manifest, sums: &[Envelope]) -> Result<()> {
        self.call("POST", "/v1/repair/receive", encode_repair(manifest, sums)?)
            .map(|_| ())
    }
}
