//! What applications (SAEs) ask of the key manager and what it answers, free of HTTP.
//!
//! The ETSI GS QKD 014 adapter maps requests to [`AppCall`] and [`AppReply`]/[`Refusal`] back to
//! HTTP in exactly one place; the core never sees HTTP.

use kagi_keymat::Key;
use uuid::Uuid;

use crate::record::RelayRoute;
use crate::route::RouteRequest;

/// An SAE (secure application entity) identifier, unique across the network.
pub type SaeId = String;

/// A request from an application, already authenticated: the caller's SAE ID comes from its
/// client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCall {
    /// ETSI 014 "Get status": `caller` is the master, asking about keys for `slave`.
    Status {
        /// The calling (master) SAE.
        master: SaeId,
        /// The slave SAE named in the path.
        slave: SaeId,
    },
    /// ETSI 014 "Get key": `master` asks for `number` new keys of `size_bits` shared with
    /// `slave` and every SAE in `additional_slaves`.
    EncKeys {
        /// The calling (master) SAE.
        master: SaeId,
        /// The slave SAE named in the path.
        slave: SaeId,
        /// How many keys (None: default 1).
        number: Option<u64>,
        /// Size of each key in bits (None: the default key size).
        size_bits: Option<u64>,
        /// `additional_slave_SAE_IDs` (multicast).
        additional_slaves: Vec<SaeId>,
        /// The `kagi_route` extension: path constraints on the key (None: any key).
        route: Option<RouteRequest>,
    },
    /// ETSI 014 "Get key with key IDs": `slave` fetches keys that `master` obtained.
    DecKeys {
        /// The calling (slave) SAE.
        slave: SaeId,
        /// The master SAE named in the path.
        master: SaeId,
        /// The key IDs asked for, in order.
        key_ids: Vec<Uuid>,
    },
}

/// The KME's status for a (master, slave) pair, in ETSI 014 terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// This KME (the master's node).
    pub source_kme_id: String,
    /// The KME that serves the slave.
    pub target_kme_id: String,
    /// Master SAE.
    pub master_sae_id: SaeId,
    /// Slave SAE.
    pub slave_sae_id: SaeId,
    /// Default key size in bits.
    pub key_size: u64,
    /// Keys of the default size deliverable now for this pair.
    pub stored_key_count: u64,
    /// Most keys of the default size the pool can hold for this pair.
    pub max_key_count: u64,
    /// Most keys per request.
    pub max_key_per_request: u64,
    /// Largest key size in bits.
    pub max_key_size: u64,
    /// Smallest key size in bits.
    pub min_key_size: u64,
    /// Most additional slaves in one request (0: no multicast).
    pub max_sae_id_count: u64,
}

/// One delivered key and its ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredKey {
    /// The key ID (UUID v4).
    pub id: Uuid,
    /// The key bytes.
    pub key: Key,
    /// Over which paths it came (only when the request carried `kagi_route`).
    pub paths: Option<KeyPaths>,
}

/// Over which paths a key came from the master's KME to the slave's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    /// The relays whose key makes up this key (usually one), each with the node-disjoint paths
    /// its shares travelled over; `None` for key stored before paths were recorded. Empty when
    /// master and slave share a KME: the key never left it.
    pub relays: Vec<Option<RelayRoute>>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppReply {
    /// Answer to [`AppCall::Status`].
    Status(StatusInfo),
    /// Answer to [`AppCall::EncKeys`] and [`AppCall::DecKeys`], in request order.
    Keys(Vec<DeliveredKey>),
}

/// Why a request was refused. Maps one-to-one onto ETSI 014 status codes 400/401/503; the
/// message is the `message` field of the error body and never contains key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// HTTP 400: malformed or out-of-range request, unknown SAE or key IDs.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// HTTP 401: the caller is not allowed for this pair or key.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// HTTP 503: not enough key now, relay path down, node fenced or internal trouble (retryable).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// The ETSI 014 fixed message for unknown key IDs (used verbatim, status 400).
    pub const KEYS_NOT_FOUND: &'static str = "one or more keys specified are not found on KME";
    /// The ETSI 014 fixed message for sizes that are not a multiple of 8 (status 400).
    pub const SIZE_NOT_MULTIPLE_OF_8: &'static str = "size shall be a multiple of 8";
    /// The ETSI 014 fixed message for unsupported mandatory extensions (status 400).
    pub const EXT_MANDATORY_UNSUPPORTED: &'static str =
        "not all extension_mandatory parameters are supported";
    /// The ETSI 014 fixed message for mandatory extension options that cannot be met (400).
    pub const EXT_MANDATORY_UNMET: &'static str =
        "not all extension_mandatory request options could be met";

    /// A 400 with the standard's "could not be met" message and the reason after it.
    pub fn unmet(why: impl std::fmt::Display) -> Self {
        Refusal::BadRequest(format!("{}: {why}", Self::EXT_MANDATORY_UNMET))
    }

    /// The message split into the standard's fixed text and the reason after it, for adapters
    /// that report the reason apart (ETSI 014 `details`); `(message, None)` for other messages.
    pub fn standard_and_reason(&self) -> (&str, Option<&str>) {
        let m = self.message();
        for fixed in [Self::EXT_MANDATORY_UNMET, Self::EXT_MANDATORY_UNSUPPORTED] {
            if let Some(why) = m.strip_prefix(fixed).and_then(|r| r.strip_prefix(": ")) {
                return (fixed, Some(why));
            }
        }
        (m, None)
    }

    /// The HTTP status code ETSI 014 gives this refusal.
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized(_) => 401,
            Refusal::Unavailable(_) => 503,
        }
    }

    /// The message for the error body.
    pub fn message(&self) -> &str {
        match self {
            Refusal::BadRequest(m) | Refusal::Unauthorized(m) | Refusal::Unavailable(m) => m,
        }
    }
}
