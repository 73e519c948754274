//! A simulated QKD device pair (`kagi device`): the two boxes at the ends of one QKD link, each
//! serving ETSI GS QKD 014 to its own key manager over mutual TLS, as commercial devices do.
//!
//! Key accrues at the link model's rate (shared by both boxes: what one end takes with
//! `enc_keys`, the other end gets with `dec_keys` by ID, once). Each listener answers only its
//! own node (the client certificate's CN) and knows the other node as the only SAE. Faults can
//! be injected ([`Fault`]) so that the key managers' handling of a misbehaving device is
//! testable with a real process: down, slow, 503, other key IDs, different bytes at the two
//! ends.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kagi_keymat::Key;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

use crate::config::TlsConfig;
use crate::etsi014::wire;

/// Smallest key size served (bits).
pub const MIN_KEY_BITS: u64 = 64;
/// Largest key size served (bits).
pub const MAX_KEY_BITS: u64 = 8192;
/// Default key size (bits), reported by `status`.
pub const DEFAULT_KEY_BITS: u64 = 256;
/// Most keys per `enc_keys` or `dec_keys` call.
pub const MAX_KEYS_PER_CALL: u64 = 128;
/// Keys handed to one end and not yet fetched by the other that the device holds at most.
pub const MAX_PENDING: usize = 8192;
/// How long a key handed to one end waits for the other end.
pub const PENDING_TTL: Duration = Duration::from_secs(120);
/// How long a device buffers key nobody takes.
pub const BUFFER: Duration = Duration::from_secs(10);
/// Largest request body.
const MAX_BODY: usize = 64 * 1024;

/// A failure to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// A working device.
    #[default]
    None,
    /// The other end's `dec_keys` returns bytes that differ from what `enc_keys` gave.
    Differ,
    /// `dec_keys` returns the keys under other IDs than were asked.
    WrongIds,
    /// Every call is answered 503.
    Unavailable,
    /// Every answer comes 30 s late.
    Slow,
    /// Connections are accepted and dropped at once.
    Down,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Self::None,
            "differ" => Self::Differ,
            "wrong-ids" => Self::WrongIds,
            "unavailable" | "503" => Self::Unavailable,
            "slow" => Self::Slow,
            "down" => Self::Down,
            o => {
                return Err(format!(
                    "unknown fault {o:?} (none, differ, wrong-ids, unavailable, slow, down)"
                ))
            }
        })
    }
}

/// One box of the pair.
#[derive(Debug, Clone)]
pub struct DeviceEnd {
    /// The node (key manager) this box serves: its certificate CN.
    pub node: String,
    /// Where it listens (`HOST:PORT`).
    pub listen: String,
}

/// A device pair's settings.
#[derive(Debug, Clone)]
pub struct DevicePairConfig {
    /// Device name (the KME ID it reports).
    pub name: String,
    /// The two boxes.
    pub ends: [DeviceEnd; 2],
    /// Secret key rate, bit/s.
    pub rate_bps: f64,
    /// Injected failure.
    pub fault: Fault,
    /// Server certificate, key and the CA its clients' certificates must chain to.
    pub tls: TlsConfig,
}

struct Held {
    key: Key,
    /// The end allowed to fetch it.
    for_end: usize,
    at: Instant,
}

/// Key shared by the two boxes.
struct Pool {
    bits: f64,
    cap_bits: f64,
    rate: f64,
    last: Instant,
    pending: BTreeMap<Uuid, Held>,
}

impl Pool {
    fn refill(&mut self) {
        let now = Instant::now();
        self.bits = (self.bits + self.rate * now.duration_since(self.last).as_secs_f64())
            .min(self.cap_bits);
        self.last = now;
        self.pending
            .retain(|_, h| now.duration_since(h.at) < PENDING_TTL);
    }
}

struct Ctx {
    cfg: DevicePairConfig,
    pool: Mutex<Pool>,
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &impl serde::Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Resp {
    json(
        status,
        &wire::Error {
            message: message.to_owned(),
            details: None,
        },
    )
}

fn query_u64(q: &str, name: &str) -> Result<Option<u64>, String> {
    for part in q.split('&') {
        if let Some((k, v)) = part.split_once('=') {
            if k == name {
                return v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name} is not a number"));
            }
        }
    }
    Ok(None)
}

impl Ctx {
    async fn handle(
        &self,
        end: usize,
        caller: Option<&str>,
        req: Request<hyper::body::Incoming>,
    ) -> Resp {
        let me = &self.cfg.ends[end];
        let other = &self.cfg.ends[1 - end];
        if caller != Some(me.node.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        match self.cfg.fault {
            Fault::Unavailable => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "device unavailable (injected fault)",
                )
            }
            Fault::Slow => tokio::time::sleep(Duration::from_secs(30)).await,
            _ => {}
        }
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let [api, v1, keys, sae, op] = parts.as_slice() else {
            return error(StatusCode::BAD_REQUEST, "unknown path");
        };
        if (*api, *v1, *keys) != ("api", "v1", "keys") {
            return error(StatusCode::BAD_REQUEST, "unknown path");
        }
        if *sae != other.node {
            return error(StatusCode::BAD_REQUEST, "unknown SAE ID");
        }
        let method = req.method().clone();
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "body too large or broken"),
        };
        match (*op, method.as_str()) {
            ("status", "GET") => self.status(end),
            ("enc_keys", "GET") => match (query_u64(&query, "number"), query_u64(&query, "size")) {
                (Ok(n), Ok(s)) => self.enc_keys(end, n, s),
                (Err(e), _) | (_, Err(e)) => error(StatusCode::BAD_REQUEST, &e),
            },
            ("enc_keys", "POST") => match serde_json::from_slice::<wire::KeyRequest>(&body) {
                Ok(r) => self.enc_keys(end, r.number, r.size),
                Err(e) => error(StatusCode::BAD_REQUEST, &format!("bad key request: {e}")),
            },
            ("dec_keys", "POST") => match serde_json::from_slice::<wire::KeyIds>(&body) {
                Ok(ids) => self.dec_keys(end, ids.key_IDs.iter().map(|k| k.key_ID.as_str())),
                Err(e) => error(StatusCode::BAD_REQUEST, &format!("bad key IDs: {e}")),
            },
            ("dec_keys", "GET") => {
                let id = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("key_ID="))
                    .unwrap_or("");
                self.dec_keys(end, std::iter::once(id))
            }
            _ => error(StatusCode::BAD_REQUEST, "unknown method"),
        }
    }

    fn status(&self, end: usize) -> Resp {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.refill();
        json(
            StatusCode::OK,
            &wire::Status {
                source_KME_ID: format!("{}@{}", self.cfg.name, self.cfg.ends[end].node),
                target_KME_ID: format!("{}@{}", self.cfg.name, self.cfg.ends[1 - end].node),
                master_SAE_ID: self.cfg.ends[end].node.clone(),
                slave_SAE_ID: self.cfg.ends[1 - end].node.clone(),
                key_size: DEFAULT_KEY_BITS,
                stored_key_count: (pool.bits / DEFAULT_KEY_BITS as f64) as u64,
                max_key_count: (pool.cap_bits / DEFAULT_KEY_BITS as f64) as u64,
                max_key_per_request: MAX_KEYS_PER_CALL,
                max_key_size: MAX_KEY_BITS,
                min_key_size: MIN_KEY_BITS,
                max_SAE_ID_count: 0,
                status_extension: None,
            },
        )
    }

    fn enc_keys(&self, end: usize, number: Option<u64>, size: Option<u64>) -> Resp {
        let number = number.unwrap_or(1);
        let size = size.unwrap_or(DEFAULT_KEY_BITS);
        if !(1..=MAX_KEYS_PER_CALL).contains(&number) {
            return error(StatusCode::BAD_REQUEST, "number out of range");
        }
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&size) || !size.is_multiple_of(8) {
            return error(StatusCode::BAD_REQUEST, "size out of range");
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.refill();
        let bits = (number * size) as f64;
        if pool.bits < bits {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not enough key in the device",
            );
        }
        if pool.pending.len() + number as usize > MAX_PENDING {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many keys waiting for the other end",
            );
        }
        pool.bits -= bits;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut rng = rand::rngs::OsRng;
        let mut out = Vec::with_capacity(number as usize);
        for _ in 0..number {
            let mut k = Key::zeroed((size / 8) as usize);
            rng.fill_bytes(k.expose_mut());
            let id = Uuid::new_v4();
            out.push(wire::KeyEntry {
                key_ID: id.to_string(),
                key_ID_extension: None,
                key: b64.encode(k.expose()),
                key_extension: None,
            });
            pool.pending.insert(
                id,
                Held {
                    key: k,
                    for_end: 1 - end,
                    at: Instant::now(),
                },
            );
        }
        json(
            StatusCode::OK,
            &wire::KeyContainer {
                keys: out,
                key_container_extension: None,
            },
        )
    }

    fn dec_keys<'a>(&self, end: usize, ids: impl Iterator<Item = &'a str>) -> Resp {
        let ids: Vec<&str> = ids.collect();
        if ids.is_empty() || ids.len() as u64 > MAX_KEYS_PER_CALL {
            return error(StatusCode::BAD_REQUEST, "number of key IDs out of range");
        }
        let mut parsed = Vec::with_capacity(ids.len());
        for id in ids {
            match Uuid::try_parse(id) {
                Ok(u) => parsed.push(u),
                Err(_) => return error(StatusCode::BAD_REQUEST, "key ID is not a UUID"),
            }
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.refill();
        if !parsed
            .iter()
            .all(|id| pool.pending.get(id).is_some_and(|h| h.for_end == end))
        {
            return error(StatusCode::BAD_REQUEST, "key not found");
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let n = parsed.len();
        let mut out = Vec::with_capacity(n);
        for (i, id) in parsed.iter().enumerate() {
            let Some(mut held) = pool.pending.remove(id) else {
                continue;
            };
            if self.cfg.fault == Fault::Differ && i + 1 == n {
                // One bit of the last key: the part that would become link key.
                let last = held.key.len() - 1;
                held.key.expose_mut()[last] ^= 1;
            }
            let id = if self.cfg.fault == Fault::WrongIds {
                Uuid::new_v4()
            } else {
                *id
            };
            out.push(wire::KeyEntry {
                key_ID: id.to_string(),
                key_ID_extension: None,
                key: b64.encode(held.key.expose()),
                key_extension: None,
            });
        }
        json(
            StatusCode::OK,
            &wire::KeyContainer {
                keys: out,
                key_container_extension: None,
            },
        )
    }
}

/// Serves both boxes of a device pair until `shutdown` completes.
///
/// # Errors
/// TLS material does not load, or a listener cannot bind.
pub async fn serve_pair(
    cfg: DevicePairConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = crate::tls::etsi_server_config(&cfg.tls)?;
    let mut listeners = Vec::new();
    for e in &cfg.ends {
        let l = TcpListener::bind(&e.listen)
            .await
            .map_err(|err| anyhow::anyhow!("bind {}: {err}", e.listen))?;
        listeners.push(l);
    }
    let rate = cfg.rate_bps.max(0.0);
    let ctx = Arc::new(Ctx {
        pool: Mutex::new(Pool {
            bits: 0.0,
            cap_bits: (rate * BUFFER.as_secs_f64()).max(65536.0 * 8.0),
            rate,
            last: Instant::now(),
            pending: BTreeMap::new(),
        }),
        cfg,
    });
    tracing::info!(device = %ctx.cfg.name, rate_bps = rate, fault = ?ctx.cfg.fault, a = %ctx.cfg.ends[0].listen, b = %ctx.cfg.ends[1].listen, "simulated QKD device pair serving ETSI 014");
    let acceptor = TlsAcceptor::from(tls);
    let mut tasks = Vec::new();
    for (end, l) in listeners.into_iter().enumerate() {
        tasks.push(tokio::spawn(accept(end, l, acceptor.clone(), ctx.clone())));
    }
    shutdown.await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn accept(end: usize, l: TcpListener, acceptor: TlsAcceptor, ctx: Arc<Ctx>) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if ctx.cfg.fault == Fault::Down {
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let caller = crate::tls::peer_identity(tls.get_ref().1.peer_certificates());
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(ctx.handle(end, caller.as_deref(), req).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}
