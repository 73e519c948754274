//! One ETSI 014 request → one [`AppCall`] → one response. Every answer is built here, and the
//! mapping from [`Refusal`] to HTTP status happens in exactly one place ([`refusal`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use kagi_control::Topology;
use kagi_km::app::{AppCall, AppReply, DeliveredKey, Refusal, StatusInfo};
use serde_json::json;
use uuid::Uuid;

use super::path::{self, parse_u64, show, Method};
use super::route_ext;
use super::wire;
use crate::config::Etsi014Config;
use crate::service::KeyService;

/// Largest request body accepted (bytes); a larger one is answered 400.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed to receive a request body once its head has arrived.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Shared state of one server.
pub(crate) struct Ctx<S> {
    pub(crate) params: Etsi014Config,
    pub(crate) topology: Arc<Topology>,
    pub(crate) service: S,
}

/// Who is calling, fixed per TLS connection.
#[derive(Debug)]
pub(crate) enum Caller {
    /// A known SAE.
    Sae(String),
    /// The certificate has no usable CN, or its SAE is not in the topology.
    Unknown(Option<String>),
}

impl Caller {
    /// Maps a certificate CN to an SAE through `sae_map` (default: the CN itself, unless the map is
    /// strict) and checks the topology.
    pub(crate) fn resolve(cn: Option<String>, params: &Etsi014Config, topo: &Topology) -> Self {
        let Some(cn) = cn else {
            return Self::Unknown(None);
        };
        let sae = match params.sae_map.get(&cn) {
            Some(sae) => sae.clone(),
            None if params.strict_sae_map => return Self::Unknown(Some(cn)),
            None => cn.clone(),
        };
        if topo.node_of_sae(&sae).is_some() {
            Self::Sae(sae)
        } else {
            Self::Unknown(Some(cn))
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Resp {
    let Ok(bytes) = serde_json::to_vec(body) else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"message": "internal error: cannot encode the answer"}),
        );
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_response(
        status,
        &wire::Error {
            message: message.into(),
            details: None,
        },
    )
}

fn bad(message: impl Into<String>) -> Resp {
    error(StatusCode::BAD_REQUEST, message)
}

fn bad_with(message: &str, detail: String) -> Resp {
    json_response(
        StatusCode::BAD_REQUEST,
        &wire::Error {
            message: message.to_owned(),
            details: Some(vec![json!({ "reason": detail })]),
        },
    )
}

/// The one place where a key manager refusal becomes an HTTP answer. A message that starts
/// with one of the standard's fixed texts keeps it verbatim; the reason goes to `details`.
fn refusal(r: &Refusal) -> Resp {
    let status = match r {
        Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    match r.standard_and_reason() {
        (fixed, Some(why)) => json_response(
            status,
            &wire::Error {
                message: fixed.to_owned(),
                details: Some(vec![json!({ "reason": why })]),
            },
        ),
        (m, None) => error(status, m),
    }
}

fn internal(what: &str) -> Resp {
    tracing::error!("ETSI 014: {what}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("internal error: {what}"),
    )
}

/// Handles one request; never panics on client input and answers only 200/400/401/503.
pub(crate) async fn handle<S: KeyService, B>(ctx: &Ctx<S>, caller: &Caller, req: Request<B>) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let caller = match caller {
        Caller::Sae(s) => s.clone(),
        Caller::Unknown(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "client certificate has no usable subject CN",
            )
        }
        Caller::Unknown(Some(cn)) => {
            return error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "client certificate CN {} does not map to any SAE of this network",
                    show(cn)
                ),
            )
        }
    };
    let (id, method) = match path::parse_path(req.uri().path()) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let is_post = match (req.method(), method) {
        (&hyper::Method::GET, _) => false,
        (&hyper::Method::POST, Method::EncKeys | Method::DecKeys) => true,
        (m, Method::Status) => return bad(format!("method {m} not allowed: status takes GET")),
        (m, _) => return bad(format!("method {m} not allowed: use GET or POST")),
    };
    if ctx.topology.node_of_sae(&id).is_none() {
        return bad(format!("unknown SAE ID {}", show(&id)));
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = if is_post {
        if !query.is_empty() {
            return bad("query parameters are not allowed with POST; put them in the JSON body");
        }
        let read = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
        let Ok(read) = tokio::time::timeout(BODY_TIMEOUT, read).await else {
            return bad(format!(
                "request body not received within {} s",
                BODY_TIMEOUT.as_secs()
            ));
        };
        match read {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return bad(format!(
                        "request body is larger than {MAX_BODY_BYTES} bytes"
                    ));
                }
                return bad("could not read the request body");
            }
        }
    } else {
        Bytes::new()
    };
    match method {
        Method::Status => status(ctx, caller, id, &query).await,
        Method::EncKeys => enc_keys(ctx, caller, id, is_post, &query, &body).await,
        Method::DecKeys => dec_keys(ctx, caller, id, is_post, &query, &body).await,
    }
}

async fn status<S: KeyService>(ctx: &Ctx<S>, master: String, slave: String, query: &str) -> Resp {
    if !query.is_empty() {
        return bad("status takes no query parameters");
    }
    match ctx.service.call(AppCall::Status { master, slave }).await {
        Ok(AppReply::Status(s)) => json_response(StatusCode::OK, &status_wire(s)),
        Ok(_) => internal("key manager answered status with keys"),
        Err(r) => refusal(&r),
    }
}

fn status_wire(s: StatusInfo) -> wire::Status {
    wire::Status {
        source_KME_ID: s.source_kme_id,
        target_KME_ID: s.target_kme_id,
        master_SAE_ID: s.master_sae_id,
        slave_SAE_ID: s.slave_sae_id,
        key_size: s.key_size,
        stored_key_count: s.stored_key_count,
        max_key_count: s.max_key_count,
        max_key_per_request: s.max_key_per_request,
        max_key_size: s.max_key_size,
        min_key_size: s.min_key_size,
        max_SAE_ID_count: s.max_sae_id_count,
        status_extension: None,
    }
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_object(body)
}

/// Parses a request body that must be a JSON object: serde would otherwise also accept the
/// struct's fields as a JSON array (`[3, 512]`), which the standard does not allow.
fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    if !v.is_object() {
        return Err("malformed JSON: the request body must be a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| format!("malformed JSON: {e}"))
}

fn parse_enc_query(query: &str) -> Result<wire::KeyRequest, String> {
    let mut req = wire::KeyRequest::default();
    for (k, v) in path::parse_query(query)? {
        match k.as_str() {
            "number" => req.number = Some(parse_u64("number", &v)?),
            "size" => req.size = Some(parse_u64("size", &v)?),
            _ => {
                return Err(format!(
                    "unknown query parameter {} (GET enc_keys takes only number and size; use POST for more)",
                    show(&k)
                ))
            }
        }
    }
    Ok(req)
}

async fn enc_keys<S: KeyService>(
    ctx: &Ctx<S>,
    master: String,
    slave: String,
    is_post: bool,
    query: &str,
    body: &[u8],
) -> Resp {
    let req = if is_post {
        parse_json::<wire::KeyRequest>(body)
    } else {
        parse_enc_query(query)
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    // Numbers (`number`, `size`, how many slaves, the route constraint's) are the core's to
    // judge: it owns the limits. Mandatory extensions other than `kagi_route` are refused here.
    let route = match route_ext::parse(
        req.extension_mandatory.as_deref(),
        req.extension_optional.as_deref(),
    ) {
        Ok(r) => r,
        Err((m, None)) => return bad(m),
        Err((m, Some(detail))) => return bad_with(&m, detail),
    };
    let mandatory = route.as_ref().map(|r| r.mandatory);
    let additional = req.additional_slave_sae_ids.unwrap_or_default();
    for s in &additional {
        if ctx.topology.node_of_sae(s).is_none() {
            return bad(format!(
                "unknown SAE ID {} in additional_slave_SAE_IDs",
                show(s)
            ));
        }
    }
    let call = AppCall::EncKeys {
        master,
        slave,
        number: req.number,
        size_bits: req.size,
        additional_slaves: additional,
        route,
    };
    match ctx.service.call(call).await {
        Ok(AppReply::Keys(keys)) => {
            let number = req.number.unwrap_or(1);
            let size = req.size.unwrap_or(ctx.params.limits.key_size);
            let n = usize::try_from(number).unwrap_or(usize::MAX);
            let bytes = usize::try_from(size / 8).unwrap_or(usize::MAX);
            if keys.len() != n || keys.iter().any(|k| k.key.len() != bytes) {
                return internal("key manager returned keys that do not match the request");
            }
            match mandatory {
                Some(m) => routed_keys_response(m, &keys),
                None => keys_response(&keys),
            }
        }
        Ok(_) => internal("key manager answered enc_keys with a status"),
        Err(r) => refusal(&r),
    }
}

/// A key container that reports the paths each key came over (`kagi_route` asked for).
fn routed_keys_response(mandatory: bool, keys: &[DeliveredKey]) -> Resp {
    let (per_key, all) = route_ext::report(mandatory, keys);
    let b64 = base64::engine::general_purpose::STANDARD;
    let container = wire::KeyContainer {
        keys: keys
            .iter()
            .zip(per_key)
            .map(|(k, ext)| wire::KeyEntry {
                key_ID: k.id.as_hyphenated().to_string(),
                key_ID_extension: None,
                key: b64.encode(k.key.expose()),
                key_extension: ext,
            })
            .collect(),
        key_container_extension: Some(all),
    };
    json_response(StatusCode::OK, &container)
}

fn keys_response(keys: &[DeliveredKey]) -> Resp {
    let b64 = base64::engine::general_purpose::STANDARD;
    let container = wire::KeyContainer {
        keys: keys
            .iter()
            .map(|k| wire::KeyEntry {
                key_ID: k.id.as_hyphenated().to_string(),
                key_ID_extension: None,
                key: b64.encode(k.key.expose()),
                key_extension: None,
            })
            .collect(),
        key_container_extension: None,
    };
    json_response(StatusCode::OK, &container)
}

/// Parses a key ID: a UUID in hyphenated form, any case. A malformed ID cannot name a key on
/// this KME, so the caller answers with the standard's "not found" message and the reason in
/// `details`.
fn parse_key_id(s: &str) -> Option<Uuid> {
    Uuid::try_parse(s).ok().filter(|_| s.len() == 36)
}

async fn dec_keys<S: KeyService>(
    ctx: &Ctx<S>,
    slave: String,
    master: String,
    is_post: bool,
    query: &str,
    body: &[u8],
) -> Resp {
    let raw_ids: Vec<String> =
        if is_post {
            if body.iter().all(u8::is_ascii_whitespace) {
                return bad("dec_keys needs a JSON body with key_IDs");
            }
            match parse_object::<wire::KeyIds>(body) {
                Ok(k) => k.key_IDs.into_iter().map(|e| e.key_ID).collect(),
                Err(e) => return bad(e),
            }
        } else {
            let q = match path::parse_query(query) {
                Ok(q) => q,
                Err(e) => return bad(e),
            };
            match q.as_slice() {
                [(k, v)] if k == "key_ID" => vec![v.clone()],
                _ => return bad(
                    "GET dec_keys takes exactly one query parameter, key_ID (use POST for more)",
                ),
            }
        };
    let mut key_ids = Vec::with_capacity(raw_ids.len());
    let mut seen = BTreeSet::new();
    for s in &raw_ids {
        let Some(id) = parse_key_id(s) else {
            return bad_with(
                Refusal::KEYS_NOT_FOUND,
                format!("key_ID {} is not a UUID", show(s)),
            );
        };
        if !seen.insert(id) {
            return bad_with(
                Refusal::KEYS_NOT_FOUND,
                format!("key_ID {id} appears more than once"),
            );
        }
        key_ids.push(id);
    }
    let n = key_ids.len();
    match ctx
        .service
        .call(AppCall::DecKeys {
            slave,
            master,
            key_ids: key_ids.clone(),
        })
        .await
    {
        Ok(AppReply::Keys(keys)) => {
            if keys.len() != n || keys.iter().zip(&key_ids).any(|(k, id)| k.id != *id) {
                return internal("key manager returned keys that do not match the request");
            }
            keys_response(&keys)
        }
        Ok(_) => internal("key manager answered dec_keys with a status"),
        Err(r) => refusal(&r),
    }
}
