//! The JSON data formats of ETSI GS QKD 014 (names are case-sensitive and follow the standard).
//! Shared by the server ([`super::serve`]) and kagi's client ([`crate::client`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// "Status" data format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct Status {
    /// KME serving the master (this KME).
    pub source_KME_ID: String,
    /// KME serving the slave.
    pub target_KME_ID: String,
    /// Master SAE.
    pub master_SAE_ID: String,
    /// Slave SAE.
    pub slave_SAE_ID: String,
    /// Default key size in bits.
    pub key_size: u64,
    /// Keys of the default size deliverable now for this pair.
    pub stored_key_count: u64,
    /// Most keys the KME can store for this pair.
    pub max_key_count: u64,
    /// Most keys per request.
    pub max_key_per_request: u64,
    /// Largest key size in bits.
    pub max_key_size: u64,
    /// Smallest key size in bits.
    pub min_key_size: u64,
    /// Most additional slaves per request (0: no multicast).
    pub max_SAE_ID_count: u64,
    /// Vendor extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_extension: Option<Value>,
}

/// "Key request" data format (POST body of `enc_keys`); every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// Number of keys (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// Size of each key in bits (default: the KME's `key_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Further slaves that receive the same keys (multicast).
    #[serde(
        default,
        rename = "additional_slave_SAE_IDs",
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_slave_sae_ids: Option<Vec<String>>,
    /// Extensions the KME must honour (or answer 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_mandatory: Option<Vec<Map<String, Value>>>,
    /// Extensions the KME may ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_optional: Option<Vec<Map<String, Value>>>,
}

/// One entry of a "Key container". `Debug` shows the key ID but never the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct KeyEntry {
    /// Key ID (UUID, lowercase with hyphens).
    pub key_ID: String,
    /// Vendor extension of the key ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ID_extension: Option<Value>,
    /// The key, standard base64 with padding.
    pub key: String,
    /// Vendor extension of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_extension: Option<Value>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("key_ID", &self.key_ID)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// "Key container" data format (answer of `enc_keys` and `dec_keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyContainer {
    /// The keys.
    pub keys: Vec<KeyEntry>,
    /// Vendor extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_container_extension: Option<Value>,
}

/// One entry of a "Key IDs" request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct KeyIdEntry {
    /// Key ID.
    pub key_ID: String,
    /// Vendor extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ID_extension: Option<Value>,
}

/// "Key IDs" data format (POST body of `dec_keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct KeyIds {
    /// The key IDs asked for.
    pub key_IDs: Vec<KeyIdEntry>,
    /// Vendor extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_IDs_extension: Option<Value>,
}

/// "Error" data format: every non-200 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// What went wrong.
    pub message: String,
    /// More detail, one object per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_material() {
        let c = KeyContainer {
            keys: vec![KeyEntry {
                key_ID: "0b5c7a4e-0d8e-4b44-9c1e-1f7f3b0e2d11".into(),
                key_ID_extension: None,
                key: "c2VjcmV0IGtleSBieXRlcw==".into(),
                key_extension: None,
            }],
            key_container_extension: None,
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(shown.contains("0b5c7a4e"));
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }

    #[test]
    fn names_follow_the_standard() {
        let s = serde_json::to_value(KeyRequest {
            number: Some(1),
            additional_slave_sae_ids: Some(vec!["x".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s,
            serde_json::json!({"number": 1, "additional_slave_SAE_IDs": ["x"]})
        );
        let ids: KeyIds =
            serde_json::from_str(r#"{"key_IDs":[{"key_ID":"a"}],"key_IDs_extension":{}}"#).unwrap();
        assert_eq!(ids.key_IDs[0].key_ID, "a");
    }
}
