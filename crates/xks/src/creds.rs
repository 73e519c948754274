//! SigV4 credentials per URI path, from a JSON file the proxy re-reads when it changes (so that
//! credentials rotate without a restart, as the spec's "SigV4 credentials rotation" asks):
//!
//! ```json
//! {"uri_paths": [{"uri_path": "/tenant-a/kms/xks/v1",
//!                 "credentials": [{"access_key_id": "AKIA…", "secret_access_key": "…"},
//!                                 {"access_key_id": "…", "secret_access_key": "…"}]}]}
//! ```
//!
//! Each `uri_path` is a customer's `XksProxyUriPath` (an optional prefix, then `/kms/xks/v1`);
//! each has its own credential sets, any number of them valid at once.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One access key ID and its secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credential {
    /// 20–30 characters `A`–`Z`, `2`–`7`.
    pub access_key_id: String,
    /// The shared secret.
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// The credentials of one URI path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UriPath {
    /// `[/prefix]/kms/xks/v1`.
    pub uri_path: String,
    /// Every credential set accepted on it.
    pub credentials: Vec<Credential>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// URI paths served.
    pub uri_paths: Vec<UriPath>,
}

/// The API's fixed suffix of every URI path.
pub const API_SUFFIX: &str = "/kms/xks/v1";

/// Checks an `XksProxyUriPath` as the spec constrains it.
pub fn check_uri_path(p: &str) -> Result<(), String> {
    if !p.ends_with(API_SUFFIX) || !p.starts_with('/') {
        return Err(format!("{p:?} must be [/prefix]{API_SUFFIX}"));
    }
    if p.len() > 128
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_'))
    {
        return Err(format!(
            "{p:?}: at most 128 characters from a-z A-Z 0-9 / - _"
        ));
    }
    Ok(())
}

impl Credentials {
    /// Parses and checks the file's text.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let c: Self = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let mut ids = std::collections::BTreeSet::new();
        for p in &c.uri_paths {
            check_uri_path(&p.uri_path)?;
            for cred in &p.credentials {
                let id = &cred.access_key_id;
                if !(20..=30).contains(&id.len())
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
                {
                    return Err(format!("access key ID {id:?}: 20-30 characters A-Z, 2-7"));
                }
                if cred.secret_access_key.len() < 32 {
                    return Err(format!(
                        "secret of {id:?}: at least 32 characters (256 bits of entropy)"
                    ));
                }
                // An access key ID must identify its secret unambiguously.
                if !ids.insert((p.uri_path.clone(), id.clone())) {
                    return Err(format!(
                        "access key ID {id:?} appears twice under {}",
                        p.uri_path
                    ));
                }
            }
        }
        Ok(c)
    }

    /// Reads the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let t = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&t).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The URI path a request path falls under, and the rest after it (`/health`,
    /// `/keys/ID/encrypt`…).
    pub fn route<'a>(&self, path: &'a str) -> Option<(&UriPath, &'a str)> {
        self.uri_paths
            .iter()
            .filter_map(|p| {
                let rest = path.strip_prefix(p.uri_path.as_str())?;
                rest.starts_with('/').then_some((p, rest))
            })
            // The longest match wins when one path is a prefix of another.
            .max_by_key(|(p, _)| p.uri_path.len())
    }

    /// A fresh credential set: a random access key ID (26 characters of base32) and a
    /// Base64-encoded 256-bit secret.
    pub fn generate() -> Credential {
        const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut r = [0u8; 58];
        // aws-lc's DRBG: a failure here means no entropy at all.
        if aws_lc_rs::rand::fill(&mut r).is_err() {
            panic!("no operating-system randomness");
        }
        let id: String = r[..26]
            .iter()
            .map(|b| B32[(b & 31) as usize] as char)
            .collect();
        Credential {
            access_key_id: id,
            secret_access_key: crate::wire::encode(&r[26..58]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_route_generate() {
        let a = Credentials::generate();
        let b = Credentials::generate();
        assert_ne!(a, b);
        let c = Credentials {
            uri_paths: vec![
                UriPath {
                    uri_path: "/kms/xks/v1".into(),
                    credentials: vec![a.clone()],
                },
                UriPath {
                    uri_path: "/t1/kms/xks/v1".into(),
                    credentials: vec![a.clone(), b],
                },
            ],
        };
        let text = serde_json::to_vec(&c).unwrap();
        let back = Credentials::parse(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            back.route("/t1/kms/xks/v1/health")
                .unwrap()
                .0
                .credentials
                .len(),
            2
        );
        assert_eq!(
            back.route("/kms/xks/v1/keys/x/encrypt").unwrap().1,
            "/keys/x/encrypt"
        );
        assert!(back.route("/t2/kms/xks/v1/health").is_none());
        assert!(back.route("/kms/xks/v1").is_none());
        assert!(!format!("{a:?}").contains(&a.secret_access_key));
        for bad in [
            r#"{"uri_paths":[{"uri_path":"/x","credentials":[]}]}"#,
            r#"{"uri_paths":[{"uri_path":"/a b/kms/xks/v1","credentials":[]}]}"#,
            r#"{"uri_paths":[{"uri_path":"/kms/xks/v1","credentials":[{"access_key_id":"short","secret_access_key":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}]}"#,
        ] {
            assert!(Credentials::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
