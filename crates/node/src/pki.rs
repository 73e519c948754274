//! A local certificate authority for a kagi network: the CA, node certificates and SAE client
//! certificates, as PEM files in one directory.
//!
//! Layout under the PKI directory:
//!
//! ```text
//! ca.pem, ca-key.pem                  the network CA
//! nodes/<node>.pem, nodes/<node>-key.pem   CN = node ID, SANs localhost, 127.0.0.1, ::1 and
//!                                     the node ID; TLS server and client (peers, ETSI 014)
//! saes/<sae>.pem, saes/<sae>-key.pem  CN = SAE ID; TLS client (ETSI 014 callers)
//! operators/<role>.pem, <role>-key.pem  OU = kagi-<role>; TLS client (management listener)
//! ```
//!
//! Keys are ECDSA P-256 with SHA-256 signatures so that stock OpenSSL/curl clients can use them;
//! the TLS key exchange is what carries the post-quantum protection (see [`crate::tls`]).
//! Private key files are written with mode 0600. Existing files are kept: re-running
//! [`Pki::open_or_create`] and the `ensure_*` methods only creates what is missing (and reissues
//! everything if the CA itself had to be created anew).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating, parsing or signing a certificate or key failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// An ID cannot be used as a certificate name.
    #[error("id {0:?} cannot be used in a certificate")]
    BadId(String),
    /// Anything else (a file that is not a certificate, an unreadable revocation list).
    #[error("{0}")]
    Other(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A freshly issued certificate and its private key, both PEM.
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The PKCS#8 private key (PEM). Sensitive: never logged, redacted in `Debug`.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Where a certificate and its key live on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// Certificate PEM file.
    pub cert: PathBuf,
    /// Private key PEM file (mode 0600).
    pub key: PathBuf,
}

/// The network CA, loaded from (or created in) a directory.
pub struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    fresh_ca: bool,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("fresh_ca", &self.fresh_ca)
            .finish()
    }
}

/// Calendar year now (approximate; used only for validity windows with a year of slack).
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

fn validity(params: &mut CertificateParams, years: i32) {
    let y = this_year();
    params.not_before = date_time_ymd(y - 1, 1, 1);
    params.not_after = date_time_ymd(y + years, 1, 1);
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kagi");
    dn.push(DnType::CommonName, cn);
    dn
}

fn check_id(id: &str) -> Result<(), PkiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadId(id.to_owned()))
    }
}

/// Writes a public (world-readable) file atomically.
pub(crate) fn write_public(path: &Path, data: &str) -> Result<(), PkiError> {
    write_file(path, data, false)
}

/// Writes `data` to `path` atomically (temporary file, then rename); `secret` files get 0600.
fn write_file(path: &Path, data: &str, secret: bool) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

impl Pki {
    /// Loads the CA from `dir/ca.pem` and `dir/ca-key.pem`, or creates a new CA there when
    /// either file is missing.
    pub fn open_or_create(dir: &Path) -> Result<Self, PkiError> {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca-key.pem");
        if cert.exists() && key.exists() {
            let cert_pem = std::fs::read_to_string(&cert).map_err(io_err(&cert))?;
            let key_pem = std::fs::read_to_string(&key).map_err(io_err(&key))?;
            let kp = KeyPair::from_pem(&key_pem)?;
            let ca = Issuer::from_ca_cert_pem(&cert_pem, kp)?;
            return Ok(Self {
                dir: dir.to_owned(),
                ca,
                fresh_ca: false,
            });
        }
        let kp = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("kagi local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 20);
        let ca_cert = params.self_signed(&kp)?;
        write_file(&key, &kp.serialize_pem(), true)?;
        write_file(&cert, &ca_cert.pem(), false)?;
        Ok(Self {
            dir: dir.to_owned(),
            ca: Issuer::new(params, kp),
            fresh_ca: true,
        })
    }

    /// Signs a certificate revocation list with the CA key (PEM).
    pub fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<String, PkiError> {
        Ok(params.signed_by(&self.ca)?.pem()?)
    }

    /// The directory this PKI lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate (PEM).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Paths of a node's certificate and key (whether or not they exist yet).
    pub fn node_paths(&self, node_id: &str) -> CertPaths {
        CertPaths {
            cert: self.dir.join("nodes").join(format!("{node_id}.pem")),
            key: self.dir.join("nodes").join(format!("{node_id}-key.pem")),
        }
    }

    /// Paths of an SAE's certificate and key (whether or not they exist yet).
    pub fn sae_paths(&self, sae_id: &str) -> CertPaths {
        CertPaths {
            cert: self.dir.join("saes").join(format!("{sae_id}.pem")),
            key: self.dir.join("saes").join(format!("{sae_id}-key.pem")),
        }
    }

    /// Issues a node certificate: CN = `node_id`, SANs `localhost`, `127.0.0.1`, `::1` and `node_id`,
    /// extended key usage server and client authentication.
    pub fn issue_node(&self, node_id: &str) -> Result<IssuedCert, PkiError> {
        check_id(node_id)?;
        let mut sans = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if node_id != "localhost" {
            sans.push(node_id.to_owned());
        }
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(node_id);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, 10)
    }

    /// Issues an SAE client certificate: CN = `sae_id`, extended key usage client authentication.
    pub fn issue_sae(&self, sae_id: &str) -> Result<IssuedCert, PkiError> {
        check_id(sae_id)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(sae_id);
        params.subject_alt_names = vec![SanType::DnsName(
            sae_id
                .to_owned()
                .try_into()
                .map_err(|_| PkiError::BadId(sae_id.to_owned()))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, 10)
    }

    /// Issues a client certificate with an arbitrary CN (for tests of unknown identities).
    pub fn issue_client(&self, cn: &str) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, 10)
    }

    /// Issues a management client certificate: CN = `name`, subject OU = the role's
    /// (`kagi-operator`, `kagi-auditor`, `kagi-observer`; see [`crate::mgmt::role`]), extended
    /// key usage client authentication.
    pub fn issue_operator(
        &self,
        name: &str,
        role: crate::mgmt::role::Role,
    ) -> Result<IssuedCert, PkiError> {
        check_id(name)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "kagi");
        dn.push(DnType::OrganizationalUnitName, role.ou());
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, 10)
    }

    /// Paths of the management certificate for `role` (whether or not they exist yet).
    pub fn operator_paths(&self, role: crate::mgmt::role::Role) -> CertPaths {
        CertPaths {
            cert: self
                .dir
                .join("operators")
                .join(format!("{}.pem", role.name())),
            key: self
                .dir
                .join("operators")
                .join(format!("{}-key.pem", role.name())),
        }
    }

    /// Makes sure the management certificate for `role` exists (CN `kagi-<role>`, kept when
    /// present) and returns its paths.
    pub fn ensure_operator(&self, role: crate::mgmt::role::Role) -> Result<CertPaths, PkiError> {
        self.ensure(self.operator_paths(role), || {
            self.issue_operator(&role.ou(), role)
        })
    }

    fn issue(&self, mut params: CertificateParams, years: i32) -> Result<IssuedCert, PkiError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, years);
        let kp = KeyPair::generate()?;
        let cert = params.signed_by(&kp, &self.ca)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: kp.serialize_pem(),
        })
    }

    fn ensure(
        &self,
        paths: CertPaths,
        issue: impl FnOnce() -> Result<IssuedCert, PkiError>,
    ) -> Result<CertPaths, PkiError> {
        if !self.fresh_ca && paths.cert.exists() && paths.key.exists() {
            return Ok(paths);
        }
        let issued = issue()?;
        write_file(&paths.key, &issued.key_pem, true)?;
        write_file(&paths.cert, &issued.cert_pem, false)?;
        Ok(paths)
    }

    /// Makes sure a node certificate exists on disk (keeps an existing one) and returns its paths.
    pub fn ensure_node(&self, node_id: &str) -> Result<CertPaths, PkiError> {
        check_id(node_id)?;
        self.ensure(self.node_paths(node_id), || self.issue_node(node_id))
    }

    /// Path of a node's link-state advert signing key (whether or not it exists yet).
    pub fn advert_key_path(&self, node_id: &str) -> PathBuf {
        self.dir
            .join("nodes")
            .join(format!("{node_id}-advert-key.pem"))
    }

    /// Path of the file of every node's advert public key.
    pub fn advert_keys_path(&self) -> PathBuf {
        self.dir.join("advert-keys.toml")
    }

    /// Makes sure each of `nodes` has an ML-DSA-65 advert signing key (keeps existing ones,
    /// writes new ones with mode 0600) and writes the file of all their public keys (see
    /// [`crate::advert_keys`]); returns that file's path.
    pub fn ensure_advert_keys<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Result<PathBuf, PkiError> {
        let mut public = std::collections::BTreeMap::new();
        for n in nodes {
            check_id(n)?;
            let path = self.advert_key_path(n);
            let other = |e: crate::advert_keys::AdvertKeyError| PkiError::Other(e.to_string());
            let key = if path.exists() {
                crate::advert_keys::public_key(
                    &crate::advert_keys::read_signing_key(&path).map_err(other)?,
                )
            } else {
                let (pem, key) = crate::advert_keys::generate().map_err(other)?;
                write_file(&path, &pem, true)?;
                key
            };
            public.insert(n.to_owned(), key);
        }
        let file = self.advert_keys_path();
        write_public(
            &file,
            &crate::advert_keys::PublicKeys::new(&public).to_toml(),
        )?;
        Ok(file)
    }

    /// Makes sure an SAE certificate exists on disk (keeps an existing one) and returns its paths.
    pub fn ensure_sae(&self, sae_id: &str) -> Result<CertPaths, PkiError> {
        check_id(sae_id)?;
        self.ensure(self.sae_paths(sae_id), || self.issue_sae(sae_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::common_name;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn creates_then_keeps_certificates() {
        let dir = crate::tls::tests::tempdir::Dir::new("pki");
        let pki = Pki::open_or_create(dir.path()).unwrap();
        let n = pki.ensure_node("koganei").unwrap();
        let s = pki.ensure_sae("sae-koganei-a").unwrap();
        let cert = CertificateDer::from_pem_file(&n.cert).unwrap();
        assert_eq!(common_name(&cert).as_deref(), Some("koganei"));
        let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
        let sans = format!("{:?}", x.subject_alternative_name().unwrap().unwrap().value);
        assert!(
            sans.contains("\"localhost\"") && sans.contains("[127, 0, 0, 1]"),
            "{sans}"
        );
        let scert = CertificateDer::from_pem_file(&s.cert).unwrap();
        assert_eq!(common_name(&scert).as_deref(), Some("sae-koganei-a"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&n.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&n.cert).unwrap();
        let ca_before = std::fs::read(pki.ca_cert_path()).unwrap();
        drop(pki);
        let again = Pki::open_or_create(dir.path()).unwrap();
        again.ensure_node("koganei").unwrap();
        assert_eq!(std::fs::read(&n.cert).unwrap(), before);
        assert_eq!(std::fs::read(again.ca_cert_path()).unwrap(), ca_before);
        // A certificate issued by the reloaded CA chains to the same root.
        let other = again.ensure_node("chofu").unwrap();
        let roots = crate::tls::load_roots(&again.ca_cert_path()).unwrap();
        assert_eq!(roots.len(), 1);
        assert!(other.cert.exists());
    }

    #[test]
    fn rejects_ids_that_cannot_be_names() {
        let dir = crate::tls::tests::tempdir::Dir::new("pki-bad");
        let pki = Pki::open_or_create(dir.path()).unwrap();
        assert!(matches!(
            pki.ensure_sae("../etc/passwd"),
            Err(PkiError::BadId(_))
        ));
        assert!(matches!(pki.ensure_node(""), Err(PkiError::BadId(_))));
    }

    #[test]
    fn issued_cert_debug_is_redacted() {
        let dir = crate::tls::tests::tempdir::Dir::new("pki-dbg");
        let pki = Pki::open_or_create(dir.path()).unwrap();
        let c = pki.issue_sae("x").unwrap();
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }
}
