//! Request-target parsing: the ETSI 014 path, percent-decoding and query strings.

/// The three methods of the standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Status,
    EncKeys,
    DecKeys,
}

/// The base path of every ETSI 014 method.
pub(crate) const BASE: &str = "/api/v1/keys/";

/// Splits `/api/v1/keys/{id}/{method}` into the decoded SAE ID and the method.
pub(crate) fn parse_path(path: &str) -> Result<(String, Method), String> {
    let usage = "unknown path: expected /api/v1/keys/{SAE_ID}/status, /enc_keys or /dec_keys";
    let Some(rest) = path.strip_prefix(BASE) else {
        return Err(usage.to_owned());
    };
    let mut parts = rest.split('/');
    let (Some(id), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage.to_owned());
    };
    let method = match method {
        "status" => Method::Status,
        "enc_keys" => Method::EncKeys,
        "dec_keys" => Method::DecKeys,
        _ => return Err(usage.to_owned()),
    };
    let id = percent_decode(id).map_err(|e| format!("SAE ID in path: {e}"))?;
    if id.is_empty() {
        return Err("SAE ID in path is empty".to_owned());
    }
    Ok((id, method))
}

/// Decodes `%XX` escapes; the result must be UTF-8 without control characters.
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or("truncated percent-escape")?;
            let hi = (hex[0] as char).to_digit(16);
            let lo = (hex[1] as char).to_digit(16);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("invalid percent-escape".to_owned());
            };
            // hi, lo < 16, so this fits a byte.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| "percent-escapes do not decode to UTF-8")?;
    if s.chars().any(char::is_control) {
        return Err("control characters are not allowed".to_owned());
    }
    Ok(s)
}

/// Parses a query string into decoded `(name, value)` pairs; a name given twice is an error.
/// `+` is not treated as a space (no form decoding: values here are numbers and UUIDs).
pub(crate) fn parse_query(q: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for piece in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let k = percent_decode(k).map_err(|e| format!("query: {e}"))?;
        let v = percent_decode(v).map_err(|e| format!("query parameter {}: {e}", show(&k)))?;
        if out.iter().any(|(n, _)| *n == k) {
            return Err(format!(
                "query parameter {} is given more than once",
                show(&k)
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Parses a non-negative decimal integer that fits in 64 bits (no sign, no exponent).
pub(crate) fn parse_u64(name: &str, v: &str) -> Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{name} must be a non-negative integer, got {}",
            show(v)
        ));
    }
    v.parse::<u64>()
        .map_err(|_| format!("{name} is too large: {}", show(v)))
}

/// Quotes client-supplied text for an error message, cut to a sane length.
pub(crate) fn show(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("/api/v1/keys/sae-1/status").unwrap(),
            ("sae-1".into(), Method::Status)
        );
        assert_eq!(
            parse_path("/api/v1/keys/sae%2D1/enc_keys").unwrap().0,
            "sae-1"
        );
        assert_eq!(parse_path("/api/v1/keys/a%2Fb/dec_keys").unwrap().0, "a/b");
        for bad in [
            "/",
            "/api/v1/keys/",
            "/api/v1/keys/x",
            "/api/v1/keys/x/status/",
            "/api/v1/keys/x/y/status",
            "/api/v1/keys//status",
            "/api/v1/keys/x/keys",
            "/api/v1/keys/%zz/status",
            "/api/v1/keys/%/status",
            "/api/v1/keys/%ff%fe/status",
            "/api/v1/keys/a%00b/status",
            "/API/v1/keys/x/status",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_and_numbers() {
        let q = parse_query("number=3&size=1024").unwrap();
        assert_eq!(
            q,
            vec![
                ("number".into(), "3".into()),
                ("size".into(), "1024".into())
            ]
        );
        assert!(parse_query("number=1&number=2").is_err());
        assert!(parse_query("a=%G0").is_err());
        assert_eq!(parse_u64("n", "18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            "18446744073709551616",
            "-1",
            "+1",
            "1e3",
            "",
            "0x10",
            " 1",
            "1.0",
        ] {
            assert!(parse_u64("n", bad).is_err(), "{bad}");
        }
        assert!(show(&"x".repeat(1000)).len() < 80);
    }
}
