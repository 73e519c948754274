//! A SigV4-signing XKS client over one kept-alive HTTPS connection (HTTP/1.1, TLS 1.3 against a
//! given CA): what `kagi bench xks` drives. Independent clients (curl, botocore) are what the
//! conformance tests use.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::sigv4;

/// One connection to a proxy.
pub struct XksClient {
    host: String,
    base_path: String,
    region: String,
    access_key_id: String,
    secret: String,
    sender: SendRequest<Full<Bytes>>,
}

impl XksClient {
    /// Connects to `url` (`https://HOST:PORT/…/kms/xks/v1`), trusting `ca`.
    pub async fn connect(
        url: &str,
        ca: &Path,
        region: &str,
        access_key_id: &str,
        secret: &str,
    ) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow::anyhow!("{url}: expected https://"))?;
        let (host, base_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let roots = kagi_node::tls::load_roots(ca)?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(kagi_node::tls::etsi_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h).to_string();
        let tcp = TcpStream::connect(host).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(name)?, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            host: host.to_string(),
            base_path: base_path.to_string(),
            region: region.to_string(),
            access_key_id: access_key_id.to_string(),
            secret: secret.to_string(),
            sender,
        })
    }

    /// POSTs `body` to `base + op_path` (`/health`, `/keys/ID/encrypt`…), signed; returns the
    /// status and body.
    pub async fn call(&mut self, op_path: &str, body: &[u8]) -> anyhow::Result<(u16, Bytes)> {
        let path = format!("{}{op_path}", self.base_path);
        let headers = [
            ("host", self.host.as_str()),
            ("content-type", "application/json"),
        ];
        let req = sigv4::Request {
            method: "POST",
            path: &path,
            query: "",
            headers: &headers,
            body,
        };
        let (date, auth) = sigv4::sign(
            &req,
            crate::time::now_unix(),
            &self.region,
            &self.access_key_id,
            &self.secret,
        );
        let r = hyper::Request::post(&path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .header("x-amz-date", date)
            .header("authorization", auth)
            .body(Full::new(Bytes::copy_from_slice(body)))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(r).await?;
        let status = resp.status().as_u16();
        let b = resp.into_body().collect().await?.to_bytes();
        Ok((status, b))
    }
}
