//! AWS Signature Version 4 for the XKS proxy API (spec Appendix A): the proxy recomputes the
//! signature of every request with the secret named by the access key ID and compares it in
//! constant time, and refuses requests whose `X-Amz-Date` is more than five minutes away from
//! its clock. Pure functions: the caller passes the clock in.
//!
//! The canonical request is `METHOD\nURI\nQUERY\nHEADERS\nSIGNED\nHEX(SHA256(body))`, the string
//! to sign `AWS4-HMAC-SHA256\nDATE\nSCOPE\nHEX(SHA256(canonical request))`, and the signing
//! key `HMAC(HMAC(HMAC(HMAC("AWS4"+secret, day), region), service), "aws4_request")`.
//! [`sign`] builds the same for kagi's own clients (bench, tests); independent clients (curl,
//! botocore) are checked against [`verify`] in the conformance tests.

use aws_lc_rs::{digest, hmac};

use crate::time::{format_amz_date, parse_amz_date};

/// The service name in the credential scope.
pub const SERVICE: &str = "kms-xks-proxy";
/// Largest accepted clock difference between signer and proxy (seconds).
pub const MAX_SKEW_SECS: i64 = 300;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a request failed authentication. The proxy answers every one of these with
/// `401 AuthenticationFailedException`; the reason goes to the log, not to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header, or not SigV4.
    #[error("missing or non-SigV4 Authorization header")]
    Missing,
    /// The header does not parse.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// `X-Amz-Date` missing or malformed, or not the day of the credential scope.
    #[error("bad X-Amz-Date: {0}")]
    BadDate(&'static str),
    /// The request time is too far from the proxy's clock.
    #[error("request time {skew_secs} s away from the proxy's clock (limit {MAX_SKEW_SECS} s)")]
    Skew {
        /// Signed request time minus now.
        skew_secs: i64,
    },
    /// The scope names another service or region.
    #[error("credential scope {0:?} is not for this proxy")]
    Scope(String),
    /// `host` or `x-amz-date` is not among the signed headers, or a signed header is absent.
    #[error("signed headers: {0}")]
    Headers(&'static str),
    /// The access key ID is not configured for this URI prefix.
    #[error("unknown access key ID {0:?}")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("signature mismatch")]
    Mismatch,
}

/// What the verifier needs from an HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `POST`, `GET`, ...
    pub method: &'a str,
    /// The path as received (not decoded).
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    /// All headers, names in any case; repeated names allowed.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

/// A verified request's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key ID that signed it.
    pub access_key_id: String,
    /// Region of the credential scope.
    pub region: String,
}

struct Parsed<'a> {
    access_key_id: &'a str,
    day: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Parsed<'_>, AuthError> {
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .ok_or(AuthError::Missing)?;
    if !rest.starts_with(' ') {
        return Err(AuthError::Missing);
    }
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part
            .split_once('=')
            .ok_or(AuthError::Malformed("component without '='"))?;
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return Err(AuthError::Malformed("unknown component")),
        };
        if slot.replace(v).is_some() {
            return Err(AuthError::Malformed("repeated component"));
        }
    }
    let cred = cred.ok_or(AuthError::Malformed("no Credential"))?;
    let signed = signed.ok_or(AuthError::Malformed("no SignedHeaders"))?;
    let signature = sig.ok_or(AuthError::Malformed("no Signature"))?;
    let mut c = cred.split('/');
    let (Some(access_key_id), Some(day), Some(region), Some(service), Some(term), None) =
        (c.next(), c.next(), c.next(), c.next(), c.next(), c.next())
    else {
        return Err(AuthError::Malformed(
            "Credential is not KEY/DAY/REGION/SERVICE/aws4_request",
        ));
    };
    if term != "aws4_request" || access_key_id.is_empty() || region.is_empty() {
        return Err(AuthError::Malformed("Credential scope"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Malformed("Signature is not 64 hex digits"));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return Err(AuthError::Malformed("empty signed header name"));
    }
    Ok(Parsed {
        access_key_id,
        day,
        region,
        service,
        signed_headers,
        signature,
    })
}

fn header_values<'a>(headers: &'a [(&'a str, &'a str)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .collect()
}

/// Trims a header value and collapses runs of spaces, as SigV4 requires.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SigV4 URI encoding: unreserved characters stay, everything else is `%XX` (upper case).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query: pairs sorted by encoded name, then value.
fn canonical_query(q: &str) -> String {
    if q.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

fn canonical_request(req: &Request<'_>, signed: &[&str]) -> Result<String, AuthError> {
    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    // Non-S3 services encode each path segment once more on top of what was sent.
    out.push_str(&uri_encode(
        if req.path.is_empty() { "/" } else { req.path },
        true,
    ));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed {
        let values = header_values(req.headers, name);
        if values.is_empty() {
            return Err(AuthError::Headers(
                "a signed header is missing from the request",
            ));
        }
        let joined: Vec<String> = values.iter().map(|v| canonical_value(v)).collect();
        out.push_str(&name.to_ascii_lowercase());
        out.push(':');
        out.push_str(&joined.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(&sha256_hex(req.body));
    Ok(out)
}

fn signature(
    secret: &str,
    amz_date: &str,
    day: &str,
    region: &str,
    service: &str,
    creq: &str,
) -> String {
    let scope = format!("{day}/{region}/{service}/aws4_request");
    let sts = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(creq.as_bytes())
    );
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    let k = hmac_sha256(k.as_ref(), region.as_bytes());
    let k = hmac_sha256(k.as_ref(), service.as_bytes());
    let k = hmac_sha256(k.as_ref(), b"aws4_request");
    hex(hmac_sha256(k.as_ref(), sts.as_bytes()).as_ref())
}

/// Verifies a SigV4-signed request at unix time `now`. `secret_for` maps an access key ID to its
/// secret (the credentials of the request's URI prefix); `region` restricts the credential
/// scope's region when given.
pub fn verify<'s>(
    req: &Request<'_>,
    now_unix: i64,
    region: Option<&str>,
    secret_for: impl Fn(&str) -> Option<&'s str>,
) -> Result<Verified, AuthError> {
    let auth = header_values(req.headers, "authorization");
    let [auth] = auth.as_slice() else {
        return Err(AuthError::Missing);
    };
    let p = parse_authorization(auth)?;
    if p.service != SERVICE || region.is_some_and(|r| r != p.region) {
        return Err(AuthError::Scope(format!("{}/{}", p.region, p.service)));
    }
    let lower: Vec<String> = p
        .signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if !lower.iter().any(|h| h == "host") || !lower.iter().any(|h| h == "x-amz-date") {
        return Err(AuthError::Headers("host and x-amz-date must be signed"));
    }
    let dates = header_values(req.headers, "x-amz-date");
    let [amz_date] = dates.as_slice() else {
        return Err(AuthError::BadDate(
            "exactly one X-Amz-Date header is required",
        ));
    };
    let t = parse_amz_date(amz_date).ok_or(AuthError::BadDate("not YYYYMMDDTHHMMSSZ"))?;
    if !amz_date.starts_with(p.day) || p.day.len() != 8 {
        return Err(AuthError::BadDate(
            "credential scope day differs from X-Amz-Date",
        ));
    }
    let skew = t - now_unix;
    if skew.abs() > MAX_SKEW_SECS {
        return Err(AuthError::Skew { skew_secs: skew });
    }
    let secret = secret_for(p.access_key_id)
        .ok_or_else(|| AuthError::UnknownKey(p.access_key_id.to_string()))?;
    let creq = canonical_request(req, &p.signed_headers)?;
    let expected = signature(secret, amz_date, p.day, p.region, p.service, &creq);
    let given = p.signature.to_ascii_lowercase();
    if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes())
        .is_err()
    {
        return Err(AuthError::Mismatch);
    }
    Ok(Verified {
        access_key_id: p.access_key_id.to_string(),
        region: p.region.to_string(),
    })
}

/// Signs a request for kagi's own clients: returns the `X-Amz-Date` and `Authorization` header
/// values. `headers` must already hold `host`; the signed headers are `host;x-amz-date` plus
/// `content-type` when present.
pub fn sign(
    req: &Request<'_>,
    now_unix: i64,
    region: &str,
    access_key_id: &str,
    secret: &str,
) -> (String, String) {
    let amz_date = format_amz_date(now_unix);
    let mut headers: Vec<(&str, &str)> = req.headers.to_vec();
    headers.push(("x-amz-date", &amz_date));
    let mut signed: Vec<&str> = vec!["host", "x-amz-date"];
    if req
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        signed.insert(0, "content-type");
    }
    let full = Request {
        headers: &headers,
        ..*req
    };
    // Every signed header is present (host is the caller's duty): canonicalisation cannot fail.
    let creq = canonical_request(&full, &signed).unwrap_or_default();
    let day = &amz_date[..8];
    let sig = signature(secret, &amz_date, day, region, SERVICE, &creq);
    let auth = format!(
        "{ALGORITHM} Credential={access_key_id}/{day}/{region}/{SERVICE}/aws4_request, SignedHeaders={}, Signature={sig}",
        signed.join(";")
    );
    (amz_date, auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published SigV4 test suite case `get-vanilla` (service "service", not ours): the
    /// canonicalisation and key derivation are the same for every service.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let headers = [
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let creq = canonical_request(&req, &["host", "x-amz-date"]).unwrap();
        let sig = signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            "20150830",
            "us-east-1",
            "service",
            &creq,
        );
        assert_eq!(
            sig,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    fn signed_request(now: i64, body: &[u8]) -> (String, String) {
        let headers = [
            ("host", "xks.example.com"),
            ("content-type", "application/json"),
        ];
        let req = Request {
            method: "POST",
            path: "/p/kms/xks/v1/health",
            query: "",
            headers: &headers,
            body,
        };
        sign(&req, now, "us-east-1", "AKIDEXAMPLEAKIDEXAMPL", "secret-1")
    }

    fn check(
        now: i64,
        date: &str,
        auth: &str,
        body: &[u8],
        path: &str,
    ) -> Result<Verified, AuthError> {
        let headers = [
            ("Host", "xks.example.com"),
            ("Content-Type", "application/json"),
            ("X-Amz-Date", date),
            ("Authorization", auth),
        ];
        let req = Request {
            method: "POST",
            path,
            query: "",
            headers: &headers,
            body,
        };
        verify(&req, now, None, |k| {
            (k == "AKIDEXAMPLEAKIDEXAMPL").then_some("secret-1")
        })
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let now = 1_700_000_000;
        let body = br#"{"requestMetadata":{}}"#;
        let (date, auth) = signed_request(now, body);
        let path = "/p/kms/xks/v1/health";
        assert!(check(now, &date, &auth, body, path).is_ok());
        // Within the skew window either way, then outside it.
        assert!(check(now + 299, &date, &auth, body, path).is_ok());
        assert!(check(now - 299, &date, &auth, body, path).is_ok());
        assert!(matches!(
            check(now + 301, &date, &auth, body, path),
            Err(AuthError::Skew { .. })
        ));
        assert!(matches!(
            check(now - 301, &date, &auth, body, path),
            Err(AuthError::Skew { .. })
        ));
        // Body, path, signature, key changed.
        assert_eq!(
            check(now, &date, &auth, br#"{"requestMetadata":{ }}"#, path),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            check(now, &date, &auth, body, "/q/kms/xks/v1/health"),
            Err(AuthError::Mismatch)
        );
        let mut bad = auth.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            check(now, &date, &bad, body, path),
            Err(AuthError::Mismatch)
        );
        let other = auth.replace("AKIDEXAMPLEAKIDEXAMPL", "AKIDOTHERAKIDOTHERAKI");
        assert!(matches!(
            check(now, &date, &other, body, path),
            Err(AuthError::UnknownKey(_))
        ));
        // Another service in the scope.
        let svc = auth.replace("kms-xks-proxy", "kms");
        assert!(matches!(
            check(now, &date, &svc, body, path),
            Err(AuthError::Scope(_))
        ));
        // Unsigned host.
        let nohost = auth.replace("content-type;host;x-amz-date", "content-type;x-amz-date");
        assert!(matches!(
            check(now, &date, &nohost, body, path),
            Err(AuthError::Headers(_))
        ));
        assert_eq!(
            check(now, &date, "Bearer x", body, path),
            Err(AuthError::Missing)
        );
        assert!(check(now, "garbage", &auth, body, path).is_err());
    }
}
