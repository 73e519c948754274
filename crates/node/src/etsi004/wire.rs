//! The JSON encoding of ETSI GS QKD 004's three calls, its status codes and its QoS, and the
//! checks on what a caller sends. See the module docs of [`crate::etsi004`] for the mapping.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Etsi004Config;

/// A 004 status code (clause 6 of ETSI GS QKD 004 V2.1.1), plus three of kagi's own above the
/// standard's range for what the standard leaves unnamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0: successful.
    Successful,
    /// 1: successful connection, but the peer application is not connected.
    PeerNotConnected,
    /// 2: GET_KEY failed because not enough key is available.
    InsufficientKey,
    /// 3: GET_KEY failed because the peer application is not (yet) connected.
    PeerNotConnectedGetKey,
    /// 4: no QKD connection is available between the two applications' nodes.
    NoQkdConnection,
    /// 5: OPEN_CONNECT failed because the Key_stream_ID is already in use.
    KsidInUse,
    /// 6: the call failed because its timeout expired.
    Timeout,
    /// 7: OPEN_CONNECT failed because the QoS cannot be met; the answer carries a counter-proposal.
    QosNotMet,
    /// 8: GET_KEY failed because the metadata buffer is too small; the answer names the size needed.
    MetadataTooSmall,
    /// 9 (kagi): no key stream with this Key_stream_ID is open for the caller.
    UnknownStream,
    /// 10 (kagi): the request is malformed or a parameter is out of range.
    BadRequest,
    /// 11 (kagi): the caller's certificate names no SAE, or the SAE is not part of the stream.
    Unauthorized,
}

impl Status {
    /// The number in the `status` field.
    pub fn code(self) -> u32 {
        match self {
            Status::Successful => 0,
            Status::PeerNotConnected => 1,
            Status::InsufficientKey => 2,
            Status::PeerNotConnectedGetKey => 3,
            Status::NoQkdConnection => 4,
            Status::KsidInUse => 5,
            Status::Timeout => 6,
            Status::QosNotMet => 7,
            Status::MetadataTooSmall => 8,
            Status::UnknownStream => 9,
            Status::BadRequest => 10,
            Status::Unauthorized => 11,
        }
    }

    /// The status with this number, if any.
    pub fn from_code(c: u32) -> Option<Self> {
        Some(match c {
            0 => Status::Successful,
            1 => Status::PeerNotConnected,
            2 => Status::InsufficientKey,
            3 => Status::PeerNotConnectedGetKey,
            4 => Status::NoQkdConnection,
            5 => Status::KsidInUse,
            6 => Status::Timeout,
            7 => Status::QosNotMet,
            8 => Status::MetadataTooSmall,
            9 => Status::UnknownStream,
            10 => Status::BadRequest,
            11 => Status::Unauthorized,
            _ => return None,
        })
    }

    /// The HTTP status the answer travels with: 200 for success, 400 for what the caller must
    /// change, 401 for identity, 503 for what may succeed later (key, connection, time).
    pub fn http(self) -> u16 {
        match self {
            Status::Successful | Status::PeerNotConnected => 200,
            Status::Unauthorized => 401,
            Status::InsufficientKey | Status::NoQkdConnection | Status::Timeout => 503,
            Status::PeerNotConnectedGetKey
            | Status::KsidInUse
            | Status::QosNotMet
            | Status::MetadataTooSmall
            | Status::UnknownStream
            | Status::BadRequest => 400,
        }
    }
}

/// A refused call: the status and a human-readable reason (never key bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The 004 status.
    pub status: Status,
    /// Why.
    pub message: String,
}

impl Failure {
    /// A failure with `status` and `message`.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The only metadata MIME type kagi produces.
pub const METADATA_MIMETYPE: &str = "application/json";

/// QoS as the caller sends it: every field optional (absent or `null`: kagi's default).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QosIn {
    /// Key_chunk_size: bytes per GET_KEY.
    pub key_chunk_size: Option<u32>,
    /// Max_bps: most key bits per second this stream delivers to one side.
    pub max_bps: Option<u32>,
    /// Min_bps: least key bits per second the application needs.
    pub min_bps: Option<u32>,
    /// Jitter: largest deviation from the expected delivery time (milliseconds).
    pub jitter: Option<u32>,
    /// Priority (0 highest).
    pub priority: Option<u32>,
    /// Timeout: longest a GET_KEY waits for key (milliseconds).
    pub timeout: Option<u32>,
    /// TTL: the stream's lifetime (seconds).
    pub ttl: Option<u32>,
    /// Metadata_mimetype: the format of GET_KEY metadata.
    pub metadata_mimetype: Option<String>,
}

/// QoS as granted: every field set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Qos {
    /// Bytes per GET_KEY.
    pub key_chunk_size: u32,
    /// Most bits per second delivered to one side.
    pub max_bps: u32,
    /// Least bits per second asked for (advisory: kagi does not reserve rate).
    pub min_bps: u32,
    /// Advisory; echoed.
    pub jitter: u32,
    /// Advisory; echoed (kagi serves streams first come, first served).
    pub priority: u32,
    /// GET_KEY timeout (milliseconds).
    pub timeout: u32,
    /// Stream lifetime (seconds).
    pub ttl: u32,
    /// Always `application/json`.
    pub metadata_mimetype: String,
}

impl Qos {
    /// Fills defaults into `q` and checks it against `cfg`. `Err` carries the counter-proposal:
    /// the nearest QoS kagi would grant, and why.
    pub fn grant(q: &QosIn, cfg: &Etsi004Config) -> Result<Qos, (Qos, String)> {
        let max_rate = u32::try_from(u64::from(cfg.max_chunk_bytes) * 8 * 1000).unwrap_or(u32::MAX);
        let mut g = Qos {
            key_chunk_size: q.key_chunk_size.unwrap_or(32),
            max_bps: q.max_bps.unwrap_or(max_rate),
            min_bps: q.min_bps.unwrap_or(0),
            jitter: q.jitter.unwrap_or(0),
            priority: q.priority.unwrap_or(0),
            timeout: q.timeout.unwrap_or(1000),
            ttl: q.ttl.unwrap_or(3600),
            metadata_mimetype: q
                .metadata_mimetype
                .clone()
                .unwrap_or_else(|| METADATA_MIMETYPE.into()),
        };
        let mut why = Vec::new();
        if g.key_chunk_size == 0 || g.key_chunk_size > cfg.max_chunk_bytes {
            why.push(format!(
                "key_chunk_size must be 1..={} bytes",
                cfg.max_chunk_bytes
            ));
            g.key_chunk_size = g.key_chunk_size.clamp(1, cfg.max_chunk_bytes);
        }
        if g.max_bps == 0 || g.max_bps > max_rate {
            why.push(format!("max_bps must be 1..={max_rate}"));
            g.max_bps = g.max_bps.clamp(1, max_rate);
        }
        if g.min_bps > g.max_bps {
            why.push("min_bps exceeds max_bps".to_string());
            g.min_bps = g.max_bps;
        }
        if g.timeout > cfg.max_timeout_ms {
            why.push(format!("timeout must be at most {} ms", cfg.max_timeout_ms));
            g.timeout = cfg.max_timeout_ms;
        }
        if g.ttl == 0 || g.ttl > cfg.max_ttl_s {
            why.push(format!("ttl must be 1..={} s", cfg.max_ttl_s));
            g.ttl = g.ttl.clamp(1, cfg.max_ttl_s);
        }
        if g.metadata_mimetype != METADATA_MIMETYPE {
            why.push(format!("metadata_mimetype must be {METADATA_MIMETYPE}"));
            g.metadata_mimetype = METADATA_MIMETYPE.into();
        }
        if why.is_empty() {
            Ok(g)
        } else {
            Err((g, why.join("; ")))
        }
    }
}

/// OPEN_CONNECT(source, destination, QoS, Key_stream_ID).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenConnect {
    /// The source application, `qkd://SAE_ID` (or a bare SAE ID).
    pub source: String,
    /// The destination application, same form.
    pub destination: String,
    /// Requested QoS (absent: defaults).
    #[serde(default)]
    pub qos: QosIn,
    /// The stream to join (the peer's answer), or absent/null for a new one.
    #[serde(default)]
    pub key_stream_id: Option<Uuid>,
}

/// GET_KEY's metadata argument: how many bytes of metadata the caller accepts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataIn {
    /// Metadata_size: the caller's buffer size in bytes.
    pub size: u32,
}

/// GET_KEY(Key_stream_ID, index, Metadata).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GetKey {
    /// The stream.
    pub key_stream_id: Uuid,
    /// The chunk's position in the stream (absent: the next one for this caller).
    #[serde(default)]
    pub index: Option<u32>,
    /// Metadata buffer (absent: no metadata returned).
    #[serde(default)]
    pub metadata: Option<MetadataIn>,
}

/// CLOSE(Key_stream_ID).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Close {
    /// The stream.
    pub key_stream_id: Uuid,
}

/// The SAE ID in a 004 URI: `qkd://SAE_ID` (nothing after the authority) or a bare SAE ID.
pub fn sae_of_uri(uri: &str) -> Option<&str> {
    let id = match uri.strip_prefix("qkd://") {
        Some(rest) => rest.strip_suffix('/').unwrap_or(rest),
        None if uri.contains(':') || uri.contains('/') => return None,
        None => uri,
    };
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_only_retryable_statuses_are_5xx() {
        for c in 0..12 {
            let s = Status::from_code(c).unwrap();
            assert_eq!(s.code(), c);
            let h = s.http();
            assert!(h == 200 || h == 400 || h == 401 || h == 503);
            if h == 503 {
                assert!(matches!(
                    s,
                    Status::InsufficientKey | Status::NoQkdConnection | Status::Timeout
                ));
            }
        }
        assert!(Status::from_code(12).is_none());
    }

    #[test]
    fn qos_defaults_and_counter_proposals() {
        let cfg = Etsi004Config::new("127.0.0.1:0");
        let g = Qos::grant(&QosIn::default(), &cfg).unwrap();
        assert_eq!(g.key_chunk_size, 32);
        assert_eq!(g.metadata_mimetype, METADATA_MIMETYPE);
        let ask = QosIn {
            key_chunk_size: Some(cfg.max_chunk_bytes + 1),
            min_bps: Some(10),
            max_bps: Some(5),
            timeout: Some(cfg.max_timeout_ms * 2),
            ttl: Some(0),
            metadata_mimetype: Some("text/plain".into()),
            ..Default::default()
        };
        let (counter, why) = Qos::grant(&ask, &cfg).unwrap_err();
        assert_eq!(counter.key_chunk_size, cfg.max_chunk_bytes);
        assert_eq!(counter.min_bps, 5);
        assert_eq!(counter.timeout, cfg.max_timeout_ms);
        assert_eq!(counter.ttl, 1);
        assert!(why.contains("key_chunk_size") && why.contains("metadata_mimetype"));
        // The counter-proposal is itself granted as is.
        let again = QosIn {
            key_chunk_size: Some(counter.key_chunk_size),
            max_bps: Some(counter.max_bps),
            min_bps: Some(counter.min_bps),
            jitter: Some(counter.jitter),
            priority: Some(counter.priority),
            timeout: Some(counter.timeout),
            ttl: Some(counter.ttl),
            metadata_mimetype: Some(counter.metadata_mimetype.clone()),
        };
        assert_eq!(Qos::grant(&again, &cfg).unwrap(), counter);
    }

    #[test]
    fn uris_name_one_sae() {
        assert_eq!(sae_of_uri("qkd://sae-a"), Some("sae-a"));
        assert_eq!(sae_of_uri("qkd://sae-a/"), Some("sae-a"));
        assert_eq!(sae_of_uri("sae-a"), Some("sae-a"));
        for bad in [
            "",
            "qkd://",
            "http://sae-a",
            "qkd://a/b",
            "qkd://a b",
            "x:y",
        ] {
            assert_eq!(sae_of_uri(bad), None, "{bad}");
        }
    }
}
