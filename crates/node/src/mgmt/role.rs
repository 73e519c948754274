//! Management roles and who may do what.
//!
//! A role comes from the client certificate, not from its CN: `kagi up`'s CA issues operator
//! certificates whose subject carries `OU=kagi-operator`, `OU=kagi-auditor` or
//! `OU=kagi-observer` (see [`crate::pki::Pki::issue_operator`]). Node and SAE certificates carry
//! no such OU, so they are refused (403) on the management listener even though the same CA
//! signed them. A certificate naming two different roles is refused too.

use rustls_pki_types::CertificateDer;

/// A management role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads state and metrics.
    Observer,
    /// Reads state, metrics and the audit trail.
    Auditor,
    /// Reads everything and changes the node (links, drain, limits, tamper).
    Operator,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Status, links, pools, relays, SAEs, refusals, metrics, the OpenAPI description.
    Read,
    /// The management audit events.
    ReadAudit,
    /// Any change to the node.
    Operate,
}

/// The subject OU prefix that marks a management role.
pub const OU_PREFIX: &str = "kagi-";

impl Role {
    /// All roles, least privileged first.
    pub const ALL: [Role; 3] = [Role::Observer, Role::Auditor, Role::Operator];

    /// The role's name (`observer`, `auditor`, `operator`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Observer => "observer",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }

    /// Parses a role name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The subject OU that carries this role.
    pub fn ou(self) -> String {
        format!("{OU_PREFIX}{}", self.name())
    }

    /// The role policy: whether this role may do what `p` covers.
    pub fn may(self, p: Permission) -> bool {
        match p {
            Permission::Read => true,
            Permission::ReadAudit => matches!(self, Role::Auditor | Role::Operator),
            Permission::Operate => self == Role::Operator,
        }
    }
}

/// Who is calling on one management connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The certificate's subject CN (for the audit trail), `?` when absent.
    pub name: String,
    /// The role, `None` for certificates without one (SAE, node): every request gets 403.
    pub role: Option<Role>,
}

impl Caller {
    /// Reads the caller from its verified certificate chain.
    pub fn from_certs(certs: Option<&[CertificateDer<'_>]>) -> Self {
        let name = crate::tls::peer_identity(certs).unwrap_or_else(|| "?".into());
        let role = certs.and_then(|c| c.first()).and_then(role_of);
        Self { name, role }
    }
}

/// The role a certificate carries in its subject OU; `None` when it carries none, or two
/// different ones.
pub fn role_of(cert: &CertificateDer<'_>) -> Option<Role> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut found: Option<Role> = None;
    for ou in parsed.subject().iter_organizational_unit() {
        let Some(r) = ou
            .as_str()
            .ok()
            .and_then(|s| s.strip_prefix(OU_PREFIX))
            .and_then(Role::from_name)
        else {
            continue;
        };
        match found {
            Some(f) if f != r => return None,
            _ => found = Some(r),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole policy table: a change to it must change this test.
    #[test]
    fn role_policy() {
        use Permission::*;
        let table = [
            (Role::Observer, [true, false, false]),
            (Role::Auditor, [true, true, false]),
            (Role::Operator, [true, true, true]),
        ];
        for (role, want) in table {
            let got = [role.may(Read), role.may(ReadAudit), role.may(Operate)];
            assert_eq!(got, want, "{role:?}");
        }
    }

    #[test]
    fn roles_come_from_the_ou_not_the_cn() {
        let dir = crate::loopback::scratch_dir("role").unwrap();
        let pki = crate::pki::Pki::open_or_create(&dir).unwrap();
        let der = |pem: &str| {
            use rustls_pki_types::pem::PemObject;
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        for r in Role::ALL {
            let c = pki.issue_operator(&format!("ops-{}", r.name()), r).unwrap();
            assert_eq!(role_of(&der(&c.cert_pem)), Some(r));
        }
        // An SAE or node certificate, even one whose CN reads like a role, has none.
        assert_eq!(
            role_of(&der(&pki.issue_client("operator").unwrap().cert_pem)),
            None
        );
        assert_eq!(
            role_of(&der(&pki.issue_sae("kagi-operator").unwrap().cert_pem)),
            None
        );
        assert_eq!(role_of(&der(&pki.issue_node("n1").unwrap().cert_pem)), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
