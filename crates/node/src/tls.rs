//! rustls configurations for kagi's two TLS surfaces.
//!
//! * **Node to node** ([`peer_server_config`], [`peer_client_config`]): mutual TLS against the
//!   network CA, TLS 1.3 only, key exchange restricted to the X25519MLKEM768 hybrid group. A peer
//!   that cannot do the hybrid group fails the handshake: post-quantum key exchange is required,
//!   not merely preferred. After the handshake, [`peer_identity`] gives the peer's node ID (the CN
//!   of its certificate).
//! * **ETSI GS QKD 014** ([`etsi_server_config`], [`etsi_client_config`]): the server requires a
//!   client certificate signed by the CA. It accepts TLS 1.3 and TLS 1.2 (the standard asks for
//!   1.2 or newer and deployed encryptors still speak 1.2) and prefers X25519MLKEM768, then falls
//!   back to X25519, P-256 and P-384. kagi's own client speaks TLS 1.3 only, hybrid first.
//!
//! Every surface checks the CA's revocation list (`crl.pem` beside the CA certificate, see
//! [`crate::revocation`]) on each handshake.
//!
//! Certificates are ECDSA P-256 (see [`crate::pki`]) so that stock `curl`/OpenSSL clients work.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::revocation::{crl_path, RevocationClientVerifier, RevocationServerVerifier};

/// ALPN protocol offered and accepted on the ETSI 014 surface.
pub const ETSI_ALPN: &[u8] = b"http/1.1";

/// The crypto provider for node-to-node links: aws-lc-rs with key exchange limited to
/// X25519MLKEM768.
pub fn peer_provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = vec![aws_lc_rs::kx_group::X25519MLKEM768];
    Arc::new(p)
}

/// The crypto provider for the ETSI 014 surface: aws-lc-rs defaults, X25519MLKEM768 first.
pub fn etsi_provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    // `prefer-post-quantum` already puts the hybrid first; make it explicit and independent of
    // feature flags.
    p.kx_groups
        .retain(|g| g.name() != rustls::NamedGroup::X25519MLKEM768);
    p.kx_groups.insert(0, aws_lc_rs::kx_group::X25519MLKEM768);
    Arc::new(p)
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bad certificate PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate found in {}", path.display());
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) in a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("cannot read private key from {}: {e}", path.display()))
}

/// A root store holding the CA certificate(s) in `path`.
pub fn load_roots(path: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| anyhow::anyhow!("unusable CA certificate in {}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

fn server_config(
    tls: &TlsConfig,
    provider: Arc<CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<ServerConfig> {
    let roots = load_roots(&tls.ca)?;
    let verifier = RevocationClientVerifier::new(roots, provider.clone(), crl_path(&tls.ca))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)
        .map_err(|e| anyhow::anyhow!("node certificate {}: {e}", tls.cert.display()))?;
    // No session resumption: a resumed session skips certificate verification, so a revoked
    // client could keep reconnecting on an old ticket.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// Server side of node-to-node TLS: client certificate required and verified against the CA,
/// TLS 1.3 only, X25519MLKEM768 only.
pub fn peer_server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    Ok(Arc::new(server_config(
        tls,
        peer_provider(),
        &[&rustls::version::TLS13],
    )?))
}

/// Client side of node-to-node TLS: presents the node certificate, verifies the peer against
/// the CA (the server name to use is the peer's node ID or `localhost`/`127.0.0.1`, all of
/// which node certificates carry), TLS 1.3 only, X25519MLKEM768 only.
pub fn peer_client_config(tls: &TlsConfig) -> anyhow::Result<Arc<ClientConfig>> {
    client_config(&tls.ca, &tls.cert, &tls.key, peer_provider())
}

/// Server side of ETSI GS QKD 014: client certificate required and verified against the CA;
/// TLS 1.3 and 1.2, X25519MLKEM768 preferred; ALPN `http/1.1`.
pub fn etsi_server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = server_config(
        tls,
        etsi_provider(),
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )?;
    cfg.alpn_protocols = vec![ETSI_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Server side of the management listener: client certificate required and verified against
/// the CA (the role is read from it afterwards, see [`crate::mgmt::role`]); TLS 1.3 only,
/// X25519MLKEM768 preferred (classical groups stay possible so that stock `curl` works);
/// ALPN `http/1.1`.
pub fn mgmt_server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = server_config(tls, etsi_provider(), &[&rustls::version::TLS13])?;
    cfg.alpn_protocols = vec![ETSI_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Server side of ETSI GS QKD 014 for deployments that require post-quantum key exchange
/// (`[etsi014] require_pq = true`): like [`etsi_server_config`] but TLS 1.3 with X25519MLKEM768
/// only, so classical-only and TLS 1.2 clients fail the handshake.
pub fn etsi_server_config_pq_only(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = server_config(tls, peer_provider(), &[&rustls::version::TLS13])?;
    cfg.alpn_protocols = vec![ETSI_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Client side of ETSI GS QKD 014 for kagi's own client: trusts `ca`, presents `cert`/`key`,
/// TLS 1.3 only, X25519MLKEM768 preferred.
pub fn etsi_client_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let cfg = client_config(ca, cert, key, etsi_provider())?;
    let mut cfg = Arc::unwrap_or_clone(cfg);
    cfg.alpn_protocols = vec![ETSI_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = load_roots(ca)?;
    let verifier = RevocationServerVerifier::new(roots, provider.clone(), crl_path(ca))?;
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| anyhow::anyhow!("client certificate {}: {e}", cert.display()))?;
    Ok(Arc::new(cfg))
}

/// The subject CN of the end-entity (first) certificate of a peer's chain, as presented after
/// a TLS handshake (`conn.peer_certificates()`). `None` when there is no certificate, it does
/// not parse or it has no UTF-8 CN.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let ee = certs?.first()?;
    common_name(ee)
}

/// Whether the end-entity certificate of a peer's chain carries the node role: extended key
/// usage for TLS servers as well as clients, as `kagi pki` issues node certificates. SAE and
/// management certificates are client-only, so one is refused on the peer port whatever its
/// CN (the CN alone would let an SAE certificate named like a node speak as that node).
pub fn has_node_role(certs: Option<&[CertificateDer<'_>]>) -> bool {
    let Some(ee) = certs.and_then(|c| c.first()) else {
        return false;
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(ee.as_ref()) else {
        return false;
    };
    matches!(
        parsed.extended_key_usage(),
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth
    )
}

/// The subject CN of a DER certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::pki::Pki;

    fn setup() -> (tempdir::Dir, TlsConfig, TlsConfig) {
        let dir = tempdir::Dir::new("tls");
        let pki = Pki::open_or_create(dir.path()).unwrap();
        let a = pki.ensure_node("node-a").unwrap();
        let b = pki.ensure_node("node-b").unwrap();
        let ta = TlsConfig {
            ca: pki.ca_cert_path(),
            cert: a.cert,
            key: a.key,
        };
        let tb = TlsConfig {
            ca: pki.ca_cert_path(),
            cert: b.cert,
            key: b.key,
        };
        (dir, ta, tb)
    }

    async fn serve_once(
        cfg: Arc<ServerConfig>,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Option<(String, String)>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(cfg).accept(s).await.ok()?;
            let (_, conn) = tls.get_ref();
            let group = format!("{:?}", conn.negotiated_key_exchange_group()?.name());
            let who = peer_identity(conn.peer_certificates())?;
            tls.write_all(b"hi").await.ok()?;
            tls.shutdown().await.ok()?;
            Some((group, who))
        });
        (addr, h)
    }

    #[tokio::test]
    async fn peers_negotiate_the_hybrid_group_and_see_each_other() {
        let (_d, ta, tb) = setup();
        let (addr, server) = serve_once(peer_server_config(&tb).unwrap()).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("node-b").unwrap();
        let mut tls = TlsConnector::from(peer_client_config(&ta).unwrap())
            .connect(name, tcp)
            .await
            .unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.negotiated_key_exchange_group().unwrap().name(),
            rustls::NamedGroup::X25519MLKEM768
        );
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            peer_identity(conn.peer_certificates()).as_deref(),
            Some("node-b")
        );
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hi");
        let (group, who) = server.await.unwrap().unwrap();
        assert_eq!(group, "X25519MLKEM768");
        assert_eq!(who, "node-a");
    }

    /// Connects `client` to one handshake on a listener with `server`; true if both ends finished
    /// and the client read the server's greeting.
    async fn handshake_ok(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> bool {
        let (addr, srv) = serve_once(server).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client_ok = match TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
        {
            Ok(mut tls) => {
                let mut buf = Vec::new();
                let _ = tls.read_to_end(&mut buf).await;
                buf == b"hi"
            }
            Err(_) => false,
        };
        let server_ok = srv.await.unwrap().is_some();
        client_ok && server_ok
    }

    #[tokio::test]
    async fn revoked_certificates_are_refused_without_a_restart() {
        let (d, ta, tb) = setup();
        let pki = Pki::open_or_create(d.path()).unwrap();
        let sae = pki.ensure_sae("sae-x").unwrap();
        // Configurations built once, before any revocation, as a running node holds them.
        let peer_server = peer_server_config(&tb).unwrap();
        let etsi_server = etsi_server_config(&tb).unwrap();
        let a_client = peer_client_config(&ta).unwrap();
        let b_server_for_a = peer_server_config(&ta).unwrap();
        let b_client = peer_client_config(&tb).unwrap();
        let sae_client = etsi_client_config(&ta.ca, &sae.cert, &sae.key).unwrap();
        assert!(handshake_ok(peer_server.clone(), a_client.clone()).await);
        assert!(handshake_ok(etsi_server.clone(), sae_client.clone()).await);
        assert!(handshake_ok(b_server_for_a.clone(), b_client.clone()).await);

        crate::revocation::revoke(&pki, &sae.cert).unwrap();
        assert!(
            !handshake_ok(etsi_server.clone(), sae_client.clone()).await,
            "a revoked SAE certificate still gets in"
        );
        assert!(handshake_ok(peer_server.clone(), a_client.clone()).await);

        crate::revocation::revoke(&pki, &ta.cert).unwrap();
        assert!(
            !handshake_ok(peer_server.clone(), a_client.clone()).await,
            "a revoked node certificate is still accepted by its peers"
        );
        assert!(
            !handshake_ok(b_server_for_a, b_client).await,
            "a peer still connects to a server whose certificate is revoked"
        );
        let listed: Vec<crate::revocation::Revoked> =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("revoked.json")).unwrap())
                .unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].subject, "node-a");
    }

    #[tokio::test]
    async fn classical_only_peer_is_refused() {
        let (_d, ta, tb) = setup();
        let (addr, server) = serve_once(peer_server_config(&tb).unwrap()).await;
        // Same identity and CA, but a client that only offers X25519.
        let mut p = aws_lc_rs::default_provider();
        p.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        let cfg = client_config(&ta.ca, &ta.cert, &ta.key, Arc::new(p)).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let res = TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        assert!(
            res.is_err(),
            "a classical-only client must not complete the handshake"
        );
        assert!(server.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn peer_server_refuses_client_without_certificate() {
        let (_d, _ta, tb) = setup();
        let (addr, server) = serve_once(peer_server_config(&tb).unwrap()).await;
        let cfg = ClientConfig::builder_with_provider(peer_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(load_roots(&tb.ca).unwrap())
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        // TLS 1.3: the client may think it succeeded; the server must not.
        if let Ok(mut tls) = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
        {
            let mut buf = Vec::new();
            let _ = tls.read_to_end(&mut buf).await;
            assert!(buf.is_empty());
        }
        assert!(server.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn etsi_server_prefers_hybrid() {
        let (_d, ta, tb) = setup();
        let (addr, server) = serve_once(etsi_server_config(&tb).unwrap()).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(etsi_client_config(&ta.ca, &ta.cert, &ta.key).unwrap())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.unwrap();
        let (group, who) = server.await.unwrap().unwrap();
        assert_eq!(group, "X25519MLKEM768");
        assert_eq!(who, "node-a");
    }

    /// Deployed clients (OpenSSL 3.0 curl, TLS 1.2 encryptors) still get in on the ETSI surface,
    /// with a classical group; peers never do (see `classical_only_peer_is_refused`).
    #[tokio::test]
    async fn etsi_server_falls_back_for_classical_and_tls12_clients() {
        let (_d, ta, tb) = setup();
        for (version, group) in [
            (&rustls::version::TLS13, aws_lc_rs::kx_group::X25519),
            (&rustls::version::TLS12, aws_lc_rs::kx_group::SECP256R1),
        ] {
            let (addr, server) = serve_once(etsi_server_config(&tb).unwrap()).await;
            let mut p = aws_lc_rs::default_provider();
            p.kx_groups = vec![group];
            let cfg = ClientConfig::builder_with_provider(Arc::new(p))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(load_roots(&ta.ca).unwrap())
                .with_client_auth_cert(load_certs(&ta.cert).unwrap(), load_key(&ta.key).unwrap())
                .unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = TlsConnector::from(Arc::new(cfg))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"hi");
            let (got, who) = server.await.unwrap().unwrap();
            assert_eq!(got, format!("{:?}", group.name()));
            assert_eq!(who, "node-a");
        }
    }

    #[tokio::test]
    async fn etsi_server_requiring_pq_refuses_classical_and_tls12_clients() {
        let (_d, ta, tb) = setup();
        for (version, group) in [
            (&rustls::version::TLS13, aws_lc_rs::kx_group::X25519),
            (&rustls::version::TLS12, aws_lc_rs::kx_group::SECP256R1),
        ] {
            let mut p = aws_lc_rs::default_provider();
            p.kx_groups = vec![group];
            let cfg = ClientConfig::builder_with_provider(Arc::new(p))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(load_roots(&ta.ca).unwrap())
                .with_client_auth_cert(load_certs(&ta.cert).unwrap(), load_key(&ta.key).unwrap())
                .unwrap();
            assert!(
                !handshake_ok(etsi_server_config_pq_only(&tb).unwrap(), Arc::new(cfg)).await,
                "{version:?} {:?} got through",
                group.name()
            );
        }
        let ours = etsi_client_config(&ta.ca, &ta.cert, &ta.key).unwrap();
        assert!(handshake_ok(etsi_server_config_pq_only(&tb).unwrap(), ours).await);
    }

    /// A tiny self-deleting temporary directory (no extra dependency).
    pub(crate) mod tempdir {
        use std::path::{Path, PathBuf};

        pub(crate) struct Dir(PathBuf);
        impl Dir {
            pub(crate) fn new(tag: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "kagi-{tag}-{}-{}",
                    std::process::id(),
                    uuid::Uuid::new_v4()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
            pub(crate) fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
