//! The operator's view of the ETSI 014 server: counts and times every answer, records refusals,
//! and refuses new `enc_keys` while the node drains.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::handler::{self, Caller, Ctx};
use crate::mgmt::{Ops, RefusalEvent};
use crate::service::KeyService;

/// The endpoint label of a request path (`status`, `enc_keys`, `dec_keys` or `other`).
pub(crate) fn endpoint_of(path: &str) -> &'static str {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    match last {
        "status" => "status",
        "enc_keys" => "enc_keys",
        "dec_keys" => "dec_keys",
        _ => "other",
    }
}

/// The reason class of a refusal, from its status and message.
pub(crate) fn reason_of(status: u16, message: &str) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        503 if message.contains("draining") => "draining",
        503 if message.starts_with("not enough key") => "no_key",
        _ => "unavailable",
    }
}

/// The message answered while the node drains.
pub const DRAINING: &str =
    "KME is draining for maintenance: no new keys here; fetch keys already delivered with dec_keys, or retry later";

pub(crate) async fn handle<S: KeyService>(
    ctx: &Ctx<S>,
    caller: &Caller,
    ops: &Ops,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let endpoint = endpoint_of(req.uri().path());
    let resp = if ops.draining() && endpoint == "enc_keys" {
        handler::error(StatusCode::SERVICE_UNAVAILABLE, DRAINING)
    } else {
        handler::handle(ctx, caller, req).await
    };
    let status = resp.status().as_u16();
    ops.metrics
        .etsi_request(endpoint, status, start.elapsed().as_secs_f64());
    if status == 200 {
        return resp;
    }
    // Error bodies are small JSON objects built by the handler: read the message back.
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    ops.refusal(RefusalEvent {
        time_ms: 0,
        endpoint: format!("etsi014/{endpoint}"),
        status,
        reason: reason_of(status, &message).to_owned(),
        caller: match caller {
            Caller::Sae(s) => Some(s.clone()),
            Caller::Unknown(cn) => cn.clone(),
        },
        message,
    });
    Response::from_parts(parts, Full::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_reasons() {
        assert_eq!(endpoint_of("/api/v1/keys/s/enc_keys"), "enc_keys");
        assert_eq!(endpoint_of("/api/v1/keys/s/dec_keys/"), "dec_keys");
        assert_eq!(endpoint_of("/api/v1/keys/s/status"), "status");
        assert_eq!(endpoint_of("/x"), "other");
        assert_eq!(reason_of(503, DRAINING), "draining");
        assert_eq!(
            reason_of(503, "not enough key material for slave KME"),
            "no_key"
        );
        assert_eq!(reason_of(503, "storage fault"), "unavailable");
        assert_eq!(reason_of(401, ""), "unauthorized");
    }
}
