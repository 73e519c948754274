//! Certificate revocation for every mutual-TLS surface.
//!
//! `kagi pki revoke` records a certificate's serial number and re-signs the CA's revocation
//! list, `crl.pem` beside `ca.pem`. Every listener (client certificates) and every outbound
//! connection (server certificates) checks that list on each handshake through webpki, and
//! picks up a new list when the file changes, without a restart. Connections already open are
//! not cut; a revoked peer or application cannot open a new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

use crate::pki::{Pki, PkiError};

/// The revocation list that goes with the CA certificate at `ca`.
pub fn crl_path(ca: &Path) -> PathBuf {
    ca.with_file_name("crl.pem")
}

/// One revoked certificate, as kept in `revoked.json` beside the CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number, hex.
    pub serial: String,
    /// Subject CN of the certificate, for people reading the list.
    pub subject: String,
    /// When it was revoked (seconds since the Unix epoch).
    pub revoked_unix: u64,
}

/// Revokes the certificate in the PEM file `cert`: adds it to `revoked.json` and writes a freshly
/// signed `crl.pem` next to the CA. Revoking twice is harmless.
pub fn revoke(pki: &Pki, cert: &Path) -> Result<Revoked, PkiError> {
    let der = CertificateDer::from_pem_file(cert)
        .map_err(|e| PkiError::Other(format!("cannot read {}: {e}", cert.display())))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| PkiError::Other(format!("{} is not a certificate: {e}", cert.display())))?;
    let serial = hex(parsed.raw_serial());
    let subject = crate::tls::common_name(&der).unwrap_or_default();
    let list_path = pki.dir().join("revoked.json");
    let mut list: Vec<Revoked> = match std::fs::read_to_string(&list_path) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| PkiError::Other(format!("{}: {e}", list_path.display())))?,
        Err(_) => Vec::new(),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let entry = match list.iter().find(|r| r.serial == serial) {
        Some(r) => r.clone(),
        None => {
            let r = Revoked {
                serial,
                subject,
                revoked_unix: now,
            };
            list.push(r.clone());
            r
        }
    };
    write_crl(pki, &list, now)?;
    let json = serde_json::to_string_pretty(&list).map_err(|e| PkiError::Other(e.to_string()))?;
    crate::pki::write_public(&list_path, &json)?;
    Ok(entry)
}

/// Signs and writes `crl.pem` for `list`, valid for a year (kagi up's CA has no distribution
/// point to refresh it from; an operator re-signs with `kagi pki revoke` or `kagi pki crl`).
pub fn write_crl(pki: &Pki, list: &[Revoked], now_unix: u64) -> Result<(), PkiError> {
    let now = time::OffsetDateTime::from_unix_timestamp(now_unix as i64)
        .map_err(|e| PkiError::Other(e.to_string()))?;
    let revoked_certs = list
        .iter()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&unhex(&r.serial)),
            revocation_time: time::OffsetDateTime::from_unix_timestamp(r.revoked_unix as i64)
                .unwrap_or(now),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(365),
        crl_number: SerialNumber::from(now_unix),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let pem = pki.sign_crl(&params)?;
    crate::pki::write_public(&crl_path(&pki.ca_cert_path()), &pem)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Reads the revocation list at `path`, if there is one.
fn load_crls(path: &Path) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bad CRL in {}: {e}", path.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A verifier rebuilt whenever the revocation list file changes.
struct Reloading<V: ?Sized> {
    crl: PathBuf,
    build: Box<
        dyn Fn(Vec<CertificateRevocationListDer<'static>>) -> anyhow::Result<Arc<V>> + Send + Sync,
    >,
    current: RwLock<(Option<SystemTime>, Arc<V>)>,
}

impl<V: ?Sized> Reloading<V> {
    fn new(
        crl: PathBuf,
        build: Box<
            dyn Fn(Vec<CertificateRevocationListDer<'static>>) -> anyhow::Result<Arc<V>>
                + Send
                + Sync,
        >,
    ) -> anyhow::Result<Self> {
        let stamp = modified(&crl);
        let v = build(load_crls(&crl)?)?;
        Ok(Self {
            crl,
            build,
            current: RwLock::new((stamp, v)),
        })
    }

    /// The verifier for the list on disk now. A list that cannot be read or parsed keeps the
    /// previous one (logged): a half-written file must not open the door.
    fn get(&self) -> Arc<V> {
        let stamp = modified(&self.crl);
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.0 == stamp {
                return cur.1.clone();
            }
        }
        let rebuilt = load_crls(&self.crl).and_then(|c| (self.build)(c));
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        match rebuilt {
            Ok(v) => {
                tracing::info!(crl = %self.crl.display(), "revocation list reloaded");
                *cur = (stamp, v);
            }
            Err(e) => {
                tracing::error!(crl = %self.crl.display(), error = %e, "revocation list unusable; keeping the previous one")
            }
        }
        cur.1.clone()
    }
}

/// Client-certificate verification against `roots` and the revocation list at `crl`.
pub struct RevocationClientVerifier {
    inner: Reloading<dyn ClientCertVerifier>,
    hints: Vec<DistinguishedName>,
}

impl std::fmt::Debug for RevocationClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationClientVerifier")
            .field("crl", &self.inner.crl)
            .finish()
    }
}

impl RevocationClientVerifier {
    /// A verifier requiring a client certificate from `roots`, not revoked by the list at `crl`.
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        crl: PathBuf,
    ) -> anyhow::Result<Arc<Self>> {
        let build = move |crls: Vec<CertificateRevocationListDer<'static>>| {
            let v = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crls)
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| anyhow::anyhow!("client verifier: {e}"))?;
            Ok(v as Arc<dyn ClientCertVerifier>)
        };
        let inner = Reloading::new(crl, Box::new(build))?;
        let hints = inner.get().root_hint_subjects().to_vec();
        Ok(Arc::new(Self { inner, hints }))
    }
}

impl ClientCertVerifier for RevocationClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.get().supported_verify_schemes()
    }
}

/// Server-certificate verification against `roots` and the revocation list at `crl`.
pub struct RevocationServerVerifier {
    inner: Reloading<dyn ServerCertVerifier>,
}

impl std::fmt::Debug for RevocationServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationServerVerifier")
            .field("crl", &self.inner.crl)
            .finish()
    }
}

impl RevocationServerVerifier {
    /// A verifier for servers certified by `roots`, not revoked by the list at `crl`.
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        crl: PathBuf,
    ) -> anyhow::Result<Arc<Self>> {
        let build = move |crls: Vec<CertificateRevocationListDer<'static>>| {
            let v = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crls)
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| anyhow::anyhow!("server verifier: {e}"))?;
            Ok(v as Arc<dyn ServerCertVerifier>)
        };
        Ok(Arc::new(Self {
            inner: Reloading::new(crl, Box::new(build))?,
        }))
    }
}

impl ServerCertVerifier for RevocationServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.get().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.get().supported_verify_schemes()
    }
}
