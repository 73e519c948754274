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

/// One entry of a "Key container".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
