//! The XKS proxy API v1 on the wire: request and response bodies and the spec's error names.
//!
//! Requests are parsed leniently where the spec asks for it (unknown fields anywhere, unknown
//! `kmsOperation` values and unknown `requestMetadata` fields are ignored) and strictly
//! everywhere else (types, Base64, sizes, algorithm names). Every error is
//! `{"errorName", "errorMessage"}` with the status the spec's table gives.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest request body accepted (bytes). The spec requires 4,300 bytes of plaintext or
/// ciphertext, 8,192 bytes of AAD and 2,048-character ARNs; this leaves room for all of them
/// Base64-encoded several times over.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest plaintext or ciphertext (bytes, decoded).
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Largest AAD (bytes, decoded); the AAD length goes into 2 bytes of the GCM AAD.
pub const MAX_AAD_BYTES: usize = 65_535;
/// Largest `ciphertextMetadata` (bytes, decoded), fixed by the spec.
pub const MAX_METADATA_BYTES: usize = 20;

/// An error answer: one of the spec's names, its HTTP status, and a message (printable ASCII,
/// under 512 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksError {
    /// The spec's `errorName`.
    pub name: ErrorName,
    /// `errorMessage`.
    pub message: String,
}

/// The spec's error names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorName {
    /// 400: an input parameter is invalid.
    Validation,
    /// 400: the key is disabled.
    InvalidState,
    /// 400: ciphertext, IV, AAD or tag corrupted or invalid.
    InvalidCiphertext,
    /// 400: the key does not support the operation.
    InvalidKeyUsage,
    /// 401: bad SigV4 signature.
    AuthenticationFailed,
    /// 403: not authorized by request metadata.
    AccessDenied,
    /// 404: no such key.
    KeyNotFound,
    /// 404: no such URI path.
    InvalidUriPath,
    /// 429: too many requests.
    Throttling,
    /// 501: operation not implemented.
    UnsupportedOperation,
    /// 503: a dependency (vault sites, the node) did not answer in time.
    DependencyTimeout,
    /// 500: generic failure.
    Internal,
}

impl ErrorName {
    /// The `errorName` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validation => "ValidationException",
            Self::InvalidState => "InvalidStateException",
            Self::InvalidCiphertext => "InvalidCiphertextException",
            Self::InvalidKeyUsage => "InvalidKeyUsageException",
            Self::AuthenticationFailed => "AuthenticationFailedException",
            Self::AccessDenied => "AccessDeniedException",
            Self::KeyNotFound => "KeyNotFoundException",
            Self::InvalidUriPath => "InvalidUriPathException",
            Self::Throttling => "ThrottlingException",
            Self::UnsupportedOperation => "UnsupportedOperationException",
            Self::DependencyTimeout => "DependencyTimeoutException",
            Self::Internal => "InternalException",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::Validation
            | Self::InvalidState
            | Self::InvalidCiphertext
            | Self::InvalidKeyUsage => 400,
            Self::AuthenticationFailed => 401,
            Self::AccessDenied => 403,
            Self::KeyNotFound | Self::InvalidUriPath => 404,
            Self::Throttling => 429,
            Self::UnsupportedOperation => 501,
            Self::DependencyTimeout => 503,
            Self::Internal => 500,
        }
    }
}

impl XksError {
    /// An error with a message (made printable ASCII and cut to 511 characters).
    pub fn new(name: ErrorName, message: impl Into<String>) -> Self {
        let mut m: String = message
            .into()
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
            .collect();
        m.truncate(511);
        Self { name, message: m }
    }

    /// `ValidationException`.
    pub fn validation(m: impl Into<String>) -> Self {
        Self::new(ErrorName::Validation, m)
    }

    /// `InvalidCiphertextException`.
    pub fn ciphertext(m: impl Into<String>) -> Self {
        Self::new(ErrorName::InvalidCiphertext, m)
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"errorName": self.name.as_str(), "errorMessage": self.message})
            .to_string()
    }
}

impl std::fmt::Display for XksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name.as_str(), self.message)
    }
}

impl std::error::Error for XksError {}

/// `requestMetadata`: what the proxy logs and audits. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMetadata {
    /// Caller principal (required except for health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_principal_arn: Option<String>,
    /// KMS key ARN (encrypt and decrypt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    /// The KMS operation (any value accepted).
    #[serde(default)]
    pub kms_operation: Option<String>,
    /// The KMS request ID (opaque; logged).
    #[serde(default)]
    pub kms_request_id: Option<String>,
    /// Calling AWS service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_via_service: Option<String>,
    /// Source VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_source_vpc: Option<String>,
    /// Source VPC endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_source_vpce: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBody {
    request_metadata: Option<serde_json::Value>,
    plaintext: Option<serde_json::Value>,
    ciphertext: Option<serde_json::Value>,
    ciphertext_metadata: Option<serde_json::Value>,
    encryption_algorithm: Option<serde_json::Value>,
    additional_authenticated_data: Option<serde_json::Value>,
    authentication_tag: Option<serde_json::Value>,
    initialization_vector: Option<serde_json::Value>,
    ciphertext_data_integrity_value_algorithm: Option<serde_json::Value>,
}

/// Which of the four operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// GetKeyMetadata.
    Metadata,
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// GetHealthStatus.
    Health,
}

impl Operation {
    /// Name as in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metadata => "GetKeyMetadata",
            Self::Encrypt => "Encrypt",
            Self::Decrypt => "Decrypt",
            Self::Health => "GetHealthStatus",
        }
    }
}

/// A parsed request body.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Request metadata.
    pub meta: RequestMetadata,
    /// Encrypt: plaintext.
    pub plaintext: Option<kagi_keymat::Key>,
    /// Decrypt: ciphertext.
    pub ciphertext: Option<Vec<u8>>,
    /// Decrypt: ciphertextMetadata.
    pub ciphertext_metadata: Option<Vec<u8>>,
    /// AAD.
    pub aad: Option<Vec<u8>>,
    /// Decrypt: tag.
    pub tag: Option<Vec<u8>>,
    /// Decrypt: IV.
    pub iv: Option<Vec<u8>>,
    /// Encrypt: CDIV requested.
    pub cdiv: bool,
}

fn string(v: Option<serde_json::Value>, field: &str) -> Result<Option<String>, XksError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(XksError::validation(format!("{field} must be a string"))),
    }
}

fn b64(
    v: Option<serde_json::Value>,
    field: &str,
    max: usize,
    err: fn(String) -> XksError,
) -> Result<Option<Vec<u8>>, XksError> {
    let Some(s) = string(v, field)? else {
        return Ok(None);
    };
    if s.len() > max.div_ceil(3) * 4 + 4 {
        return Err(err(format!("{field} is longer than {max} bytes")));
    }
    let bytes = B64
        .decode(s.as_bytes())
        .map_err(|_| err(format!("{field} is not valid Base64")))?;
    if bytes.len() > max {
        return Err(err(format!("{field} is longer than {max} bytes")));
    }
    Ok(Some(bytes))
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, XksError> {
    v.ok_or_else(|| XksError::validation(format!("{field} is required")))
}

/// Parses the body of `op`. Metadata fields the spec makes required are checked, unknown fields
/// anywhere are ignored.
pub fn parse(op: Operation, body: &[u8]) -> Result<Parsed, XksError> {
    let raw: RawBody = serde_json::from_slice(body).map_err(|e| {
        XksError::validation(format!("request body is not a valid JSON object: {e}"))
    })?;
    let meta_v = required(raw.request_metadata, "requestMetadata")?;
    if !meta_v.is_object() {
        return Err(XksError::validation("requestMetadata must be an object"));
    }
    let meta: RequestMetadata = serde_json::from_value(meta_v)
        .map_err(|e| XksError::validation(format!("requestMetadata: {e}")))?;
    required(meta.kms_request_id.as_ref(), "requestMetadata.kmsRequestId")?;
    required(meta.kms_operation.as_ref(), "requestMetadata.kmsOperation")?;
    let mut p = Parsed {
        meta: meta.clone(),
        ..Default::default()
    };
    match op {
        Operation::Health => {}
        Operation::Metadata => {
            required(
                meta.aws_principal_arn.as_ref(),
                "requestMetadata.awsPrincipalArn",
            )?;
        }
        Operation::Encrypt | Operation::Decrypt => {
            required(
                meta.aws_principal_arn.as_ref(),
                "requestMetadata.awsPrincipalArn",
            )?;
            required(meta.kms_key_arn.as_ref(), "requestMetadata.kmsKeyArn")?;
            let alg = required(
                string(raw.encryption_algorithm, "encryptionAlgorithm")?,
                "encryptionAlgorithm",
            )?;
            if alg != "AES_GCM" {
                return Err(XksError::validation(format!(
                    "encryptionAlgorithm must be AES_GCM, not {alg:?}"
                )));
            }
            p.aad = b64(
                raw.additional_authenticated_data,
                "additionalAuthenticatedData",
                MAX_AAD_BYTES,
                if op == Operation::Decrypt {
                    XksError::ciphertext
                } else {
                    XksError::validation
                },
            )?;
        }
    }
    if op == Operation::Encrypt {
        let pt = b64(
            raw.plaintext,
            "plaintext",
            MAX_DATA_BYTES,
            XksError::validation,
        )?;
        p.plaintext = Some(kagi_keymat::Key::from_vec(required(pt, "plaintext")?));
        if let Some(a) = string(
            raw.ciphertext_data_integrity_value_algorithm,
            "ciphertextDataIntegrityValueAlgorithm",
        )? {
            if a != "SHA_256" {
                return Err(XksError::validation(format!(
                    "ciphertextDataIntegrityValueAlgorithm must be SHA_256, not {a:?}"
                )));
            }
            p.cdiv = true;
        }
    }
    if op == Operation::Decrypt {
        let c = XksError::ciphertext;
        p.ciphertext = Some(required(
            b64(raw.ciphertext, "ciphertext", MAX_DATA_BYTES, c)?,
            "ciphertext",
        )?);
        p.ciphertext_metadata = b64(
            raw.ciphertext_metadata,
            "ciphertextMetadata",
            MAX_METADATA_BYTES,
            c,
        )?;
        p.iv = Some(required(
            b64(raw.initialization_vector, "initializationVector", 16, c)?,
            "initializationVector",
        )?);
        p.tag = Some(required(
            b64(raw.authentication_tag, "authenticationTag", 16, c)?,
            "authenticationTag",
        )?);
    }
    Ok(p)
}

/// Base64 (standard, padded).
pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Encrypt's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptResponse {
    /// Base64 ciphertext.
    pub ciphertext: String,
    /// Base64 metadata (kagi's format version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_metadata: Option<String>,
    /// Base64 IV (12 bytes).
    pub initialization_vector: String,
    /// Base64 tag (16 bytes).
    pub authentication_tag: String,
    /// Base64 SHA-256 CDIV when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_data_integrity_value: Option<String>,
}

/// GetKeyMetadata's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataResponse {
    /// `AES_256`.
    pub key_spec: String,
    /// `ENCRYPT`, `DECRYPT`.
    pub key_usage: Vec<String>,
    /// `ENABLED` or `DISABLED`.
    pub key_status: String,
}

/// One member of the external key manager fleet in a health answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FleetMember {
    /// Identifier.
    pub id: String,
    /// Model.
    pub model: String,
    /// `ACTIVE`, `DEGRADED` or `UNAVAILABLE`.
    pub health_status: String,
}

/// GetHealthStatus's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthResponse {
    /// Proxies in the fleet.
    pub xks_proxy_fleet_size: u32,
    /// Proxy vendor.
    pub xks_proxy_vendor: String,
    /// Proxy model and version.
    pub xks_proxy_model: String,
    /// Key manager vendor.
    pub ekm_vendor: String,
    /// One to ten key-manager members.
    pub ekm_fleet_details: Vec<FleetMember>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> &'static str {
        r#""requestMetadata":{"awsPrincipalArn":"a","kmsKeyArn":"k","kmsOperation":"Encrypt","kmsRequestId":"r"}"#
    }

    #[test]
    fn lenient_where_the_spec_says_strict_elsewhere() {
        let ok = format!(
            r#"{{{},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","future":1}}"#,
            meta()
        );
        let p = parse(Operation::Encrypt, ok.as_bytes()).unwrap();
        assert_eq!(p.meta.kms_request_id.as_deref(), Some("r"));
        assert_eq!(p.plaintext.unwrap().expose(), b"Hello");
        let unknown_meta = r#"{"requestMetadata":{"kmsOperation":"BulkThing","kmsRequestId":"x","newField":{"a":1}}}"#;
        assert!(parse(Operation::Health, unknown_meta.as_bytes()).is_ok());
        for bad in [
            "not json".to_string(),
            "[]".to_string(),
            r#"{"requestMetadata":5}"#.to_string(),
            format!(
                r#"{{{},"plaintext":"***","encryptionAlgorithm":"AES_GCM"}}"#,
                meta()
            ),
            format!(
                r#"{{{},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_CBC"}}"#,
                meta()
            ),
            format!(
                r#"{{{},"plaintext":7,"encryptionAlgorithm":"AES_GCM"}}"#,
                meta()
            ),
            format!(r#"{{{},"encryptionAlgorithm":"AES_GCM"}}"#, meta()),
            format!(
                r#"{{{},"plaintext":"","encryptionAlgorithm":"AES_GCM","ciphertextDataIntegrityValueAlgorithm":"MD5"}}"#,
                meta()
            ),
            r#"{"requestMetadata":{"kmsOperation":"Encrypt"}}"#.to_string(),
        ] {
            let e = parse(Operation::Encrypt, bad.as_bytes()).unwrap_err();
            assert_eq!(e.name, ErrorName::Validation, "{bad}");
        }
        let long = format!(
            r#"{{{},"ciphertext":"AA==","encryptionAlgorithm":"AES_GCM","initializationVector":"AAAAAAAAAAAAAAAA","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA==","ciphertextMetadata":"{}"}}"#,
            meta(),
            encode(&[0u8; 21])
        );
        assert_eq!(
            parse(Operation::Decrypt, long.as_bytes()).unwrap_err().name,
            ErrorName::InvalidCiphertext
        );
    }

    #[test]
    fn error_messages_are_printable_and_short() {
        let e = XksError::validation("é\n".repeat(600));
        assert!(e.message.len() < 512 && e.message.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errorName"], "ValidationException");
    }
}
