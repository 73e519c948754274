//! The XKS proxy's request handling, independent of the transport: [`Proxy::handle`] takes a
//! method, path, headers and body and returns a status and JSON body. Order of checks:
//!
//! 1. the path: one of the configured URI paths followed by `/health` or
//!    `/keys/{id}/{metadata|encrypt|decrypt}` (else `404 InvalidUriPathException`);
//! 2. the method: POST (a GET or anything else gets `405`);
//! 3. SigV4 with the credentials of that URI path (`401 AuthenticationFailedException`);
//! 4. the body (`400 ValidationException`, `InvalidCiphertextException` for bad decrypt inputs);
//! 5. the key: unknown or revoked → `404 KeyNotFoundException`; disabled → metadata says
//!    `DISABLED`, encrypt and decrypt get `400 InvalidStateException`;
//! 6. the material: from the cache, or rebuilt from the vault sites (`503
//!    DependencyTimeoutException` when they cannot be reached in time).
//!
//! Every outcome is audited with the `kmsRequestId`; no plaintext is ever logged.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::aead;
use crate::audit::Audit;
use crate::backend::{Backend, BackendError};
use crate::cache::KeyCache;
use crate::creds::Credentials;
use crate::registry::{KeyStatus, Registry};
use crate::sigv4;
use crate::wire::{
    self, EncryptResponse, ErrorName, FleetMember, HealthResponse, MetadataResponse, Operation,
    XksError,
};

/// Requests handled at once before `429 ThrottlingException`.
pub const MAX_IN_FLIGHT: usize = 4096;
/// A rebuild from shares that takes longer than this answers `503`; the rebuild goes on and
/// the next request finds the key cached.
pub const REBUILD_TIMEOUT: Duration = Duration::from_secs(5);
/// A health result is reused for up to this long (the spec allows one minute).
pub const HEALTH_MAX_AGE: Duration = Duration::from_secs(30);

/// Settings of a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Required credential-scope region (None: any).
    pub region: Option<String>,
    /// Idle time after which cached material is zeroized.
    pub idle_zeroize: Duration,
}

/// A file re-read when its modification time or size changes.
struct Watched<T> {
    path: Option<std::path::PathBuf>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
    value: RwLock<Arc<T>>,
}

impl<T> Watched<T> {
    fn new(path: Option<std::path::PathBuf>, value: T) -> Self {
        let stamp = path.as_deref().and_then(stamp_of);
        Self {
            path,
            stamp: Mutex::new(stamp),
            value: RwLock::new(Arc::new(value)),
        }
    }

    fn get(&self) -> Arc<T> {
        self.value
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set(&self, v: T) {
        if let Ok(mut w) = self.value.write() {
            *w = Arc::new(v);
        }
    }

    /// Re-reads the file if it changed; `Some(Ok)` with the new value, `Some(Err)` when it no
    /// longer parses (the old value stays), `None` when unchanged.
    fn poll(
        &self,
        load: impl Fn(&std::path::Path) -> Result<T, String>,
    ) -> Option<Result<Arc<T>, String>> {
        let path = self.path.as_deref()?;
        let now = stamp_of(path);
        let mut st = self.stamp.lock().ok()?;
        if *st == now {
            return None;
        }
        *st = now;
        Some(load(path).map(|v| {
            self.set(v);
            self.get()
        }))
    }
}

fn stamp_of(p: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Counters shown by the proxy's log line and `kagi bench xks`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful encrypts.
    pub encrypts: AtomicU64,
    /// Successful decrypts.
    pub decrypts: AtomicU64,
    /// Refused requests (any error).
    pub errors: AtomicU64,
    /// Rebuilds from shares.
    pub rebuilds: AtomicU64,
    /// Entries zeroized for idleness.
    pub zeroized: AtomicU64,
}

/// The proxy.
pub struct Proxy {
    settings: ProxySettings,
    creds: Watched<Credentials>,
    registry: Watched<Registry>,
    cache: KeyCache,
    backend: Arc<dyn Backend>,
    audit: Audit,
    in_flight: AtomicUsize,
    health: tokio::sync::Mutex<Option<(Instant, Vec<FleetMember>)>>,
    /// Counters.
    pub stats: Stats,
}

/// An answer: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: String,
}

impl From<XksError> for Answer {
    fn from(e: XksError) -> Self {
        Self {
            status: e.name.status(),
            body: e.body(),
        }
    }
}

fn ok(v: &impl serde::Serialize) -> Answer {
    Answer {
        status: 200,
        body: serde_json::to_string(v).unwrap_or_default(),
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
struct Route<'a> {
    uri_path: String,
    op: Operation,
    key: Option<&'a str>,
}

fn route<'a>(creds: &Credentials, path: &'a str) -> Option<Route<'a>> {
    let (p, rest) = creds.route(path)?;
    let (op, key) = match rest {
        "/health" => (Operation::Health, None),
        _ => {
            let r = rest.strip_prefix("/keys/")?;
            let (key, op) = r.rsplit_once('/')?;
            let op = match op {
                "metadata" => Operation::Metadata,
                "encrypt" => Operation::Encrypt,
                "decrypt" => Operation::Decrypt,
                _ => return None,
            };
            if key.is_empty() || key.contains('/') {
                return None;
            }
            (op, Some(key))
        }
    };
    Some(Route {
        uri_path: p.uri_path.clone(),
        op,
        key,
    })
}

impl Proxy {
    /// A proxy over `backend`. `creds_path`/`registry_path` are watched for changes when given
    /// (see [`Proxy::reload`]).
    pub fn new(
        settings: ProxySettings,
        creds: Credentials,
        creds_path: Option<std::path::PathBuf>,
        registry: Registry,
        registry_path: Option<std::path::PathBuf>,
        backend: Arc<dyn Backend>,
        audit: Audit,
    ) -> Self {
        Self {
            settings,
            creds: Watched::new(creds_path, creds),
            registry: Watched::new(registry_path, registry),
            cache: KeyCache::default(),
            backend,
            audit,
            in_flight: AtomicUsize::new(0),
            health: tokio::sync::Mutex::new(None),
            stats: Stats::default(),
        }
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The key registry as last read.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.get()
    }

    /// Replaces the credentials (tests; files are watched by [`Proxy::reload`]).
    pub fn set_credentials(&self, c: Credentials) {
        self.creds.set(c);
    }

    /// Replaces the registry and drops material of keys no longer enabled.
    pub fn set_registry(&self, r: Registry) {
        self.registry.set(r);
        self.evict_not_enabled();
    }

    fn evict_not_enabled(&self) {
        let reg = self.registry.get();
        for id in self.cache.held() {
            if reg.get(&id).is_none_or(|k| k.status != KeyStatus::Enabled) && self.cache.evict(&id)
            {
                tracing::info!(key = %id, "key no longer enabled: cached material zeroized");
            }
        }
    }

    /// Re-reads the credential and registry files if they changed, then zeroizes idle and
    /// no-longer-enabled material. Call it periodically ([`Proxy::spawn_maintenance`]).
    pub fn reload(&self) {
        match self.creds.poll(Credentials::load) {
            Some(Ok(c)) => {
                let n: usize = c.uri_paths.iter().map(|p| p.credentials.len()).sum();
                tracing::info!(
                    uri_paths = c.uri_paths.len(),
                    credential_sets = n,
                    "XKS credentials reloaded"
                );
                self.audit_or_log(json!({"op": "credentials.reload", "uri_paths": c.uri_paths.len(), "credential_sets": n}));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "XKS credentials file unreadable; keeping the previous credentials")
            }
            None => {}
        }
        match self.registry.poll(Registry::load) {
            Some(Ok(_)) => self.evict_not_enabled(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "XKS key registry unreadable; keeping the previous one")
            }
            None => {}
        }
        for id in self.cache.sweep(Instant::now(), self.settings.idle_zeroize) {
            self.stats.zeroized.fetch_add(1, Ordering::Relaxed);
            tracing::info!(key = %id, "idle key material zeroized");
            self.audit_or_log(json!({"op": "material.zeroize", "key": id, "reason": "idle"}));
        }
        self.audit.tick();
    }

    /// Keys whose material is in memory now.
    pub fn cached_keys(&self) -> Vec<String> {
        self.cache.held()
    }

    /// Runs [`Proxy::reload`] every `every` until the runtime stops.
    pub fn spawn_maintenance(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(p) = me.upgrade() else { return };
                tokio::task::spawn_blocking(move || p.reload()).await.ok();
            }
        });
    }

    /// Handles one request at unix time `now_unix`.
    pub async fn handle(
        self: &Arc<Self>,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        now_unix: i64,
    ) -> Answer {
        let started = Instant::now();
        let creds = self.creds.get();
        let Some(r) = route(&creds, path) else {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.audit_or_log(json!({"op": "unknown", "path": path.chars().take(256).collect::<String>(), "outcome": "InvalidUriPathException"}));
            return XksError::new(ErrorName::InvalidUriPath, "no XKS API at this path").into();
        };
        if method != "POST" {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Answer {
                status: 405,
                body: XksError::validation(format!("{} accepts POST only", r.op.as_str())).body(),
            };
        }
        let uri = r.uri_path.clone();
        let auth = sigv4::verify(
            &sigv4::Request {
                method,
                path,
                query,
                headers,
                body,
            },
            now_unix,
            self.settings.region.as_deref(),
            |ak| {
                creds
                    .uri_paths
                    .iter()
                    .find(|p| p.uri_path == uri)?
                    .credentials
                    .iter()
                    .find(|c| c.access_key_id == ak)
                    .map(|c| c.secret_access_key.as_str())
            },
        );
        let caller = match auth {
            Ok(v) => v,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(op = r.op.as_str(), uri_path = %r.uri_path, reason = %e, "XKS request failed authentication");
                self.audit_or_log(json!({"op": r.op.as_str(), "key": r.key, "uri_path": r.uri_path, "outcome": "AuthenticationFailedException", "reason": e.to_string()}));
                return XksError::new(
                    ErrorName::AuthenticationFailed,
                    "SigV4 authentication failed",
                )
                .into();
            }
        };
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return XksError::new(ErrorName::Throttling, "too many requests in flight").into();
        }
        let parsed = wire::parse(r.op, body);
        let (meta, result) = match parsed {
            Ok(p) => {
                let meta = p.meta.clone();
                (Some(meta), self.operate(&r, p).await)
            }
            Err(e) => (None, Err(e)),
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.name.as_str(),
        };
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let m = meta.unwrap_or_default();
        let micros = started.elapsed().as_micros() as u64;
        tracing::info!(
            op = r.op.as_str(),
            key = r.key.unwrap_or(""),
            kms_request_id = m.kms_request_id.as_deref().unwrap_or(""),
            kms_operation = m.kms_operation.as_deref().unwrap_or(""),
            principal = m.aws_principal_arn.as_deref().unwrap_or(""),
            access_key_id = %caller.access_key_id,
            outcome,
            micros,
            "XKS request"
        );
        let audited = self.audit.record(json!({
            "op": r.op.as_str(),
            "key": r.key,
            "uri_path": r.uri_path,
            "kmsRequestId": m.kms_request_id,
            "kmsOperation": m.kms_operation,
            "awsPrincipalArn": m.aws_principal_arn,
            "kmsKeyArn": m.kms_key_arn,
            "kmsViaService": m.kms_via_service,
            "accessKeyId": caller.access_key_id,
            "region": caller.region,
            "outcome": outcome,
            "micros": micros,
        }));
        // Fail closed: an operation that could not be audited is not answered.
        if let Err(why) = audited {
            tracing::error!(error = %why, "XKS audit trail cannot be written; refusing requests");
            return XksError::new(ErrorName::Internal, "the audit trail cannot be written").into();
        }
        match result {
            Ok(a) => a,
            Err(e) => e.into(),
        }
    }

    /// Records an event outside a request's answer; a failure is logged (and the next request
    /// is refused, since the trail stays failed).
    fn audit_or_log(&self, event: serde_json::Value) {
        if let Err(e) = self.audit.record(event) {
            tracing::error!(error = %e, "XKS audit trail cannot be written");
        }
    }

    async fn operate(self: &Arc<Self>, r: &Route<'_>, p: wire::Parsed) -> Result<Answer, XksError> {
        if r.op == Operation::Health {
            return self.health().await.map(|h| ok(&h));
        }
        let id = r.key.unwrap_or_default();
        let not_found = || XksError::new(ErrorName::KeyNotFound, format!("no external key {id:?}"));
        if !crate::registry::check_key_id(id) {
            return Err(not_found());
        }
        let mut reg = self.registry.get();
        if reg.get(id).is_none() {
            // A key created a moment ago may not have been picked up by the periodic reload.
            if let Some(Ok(r)) = self.registry.poll(Registry::load) {
                reg = r;
            }
        }
        let rec = reg.get(id).ok_or_else(not_found)?;
        match (rec.status, r.op) {
            (KeyStatus::Revoked, _) => return Err(not_found()),
            (status, Operation::Metadata) => {
                return Ok(ok(&MetadataResponse {
                    key_spec: "AES_256".into(),
                    key_usage: vec!["ENCRYPT".into(), "DECRYPT".into()],
                    key_status: if status == KeyStatus::Enabled {
                        "ENABLED"
                    } else {
                        "DISABLED"
                    }
                    .into(),
                }));
            }
            (KeyStatus::Disabled, _) => {
                return Err(XksError::new(
                    ErrorName::InvalidState,
                    format!("external key {id:?} is disabled"),
                ));
            }
            (KeyStatus::Enabled, _) => {}
        }
        let key = self.material(id, &rec.object).await?;
        let aad = p.aad.unwrap_or_default();
        match r.op {
            Operation::Encrypt => {
                let pt = p.plaintext.unwrap_or_default();
                let sealed = aead::encrypt(&key, pt.expose(), &aad)?;
                // Appendix C: the CDIV first, then prove the output decrypts.
                let cdiv = p.cdiv.then(|| aead::cdiv(&aad, &sealed));
                if p.cdiv {
                    let back = aead::decrypt(
                        &key,
                        &sealed.ciphertext,
                        &sealed.iv,
                        &sealed.tag,
                        &aad,
                        &sealed.metadata,
                    )
                    .map_err(|_| {
                        XksError::new(ErrorName::Internal, "encryption self-check failed")
                    })?;
                    if back != pt {
                        return Err(XksError::new(
                            ErrorName::Internal,
                            "encryption self-check failed",
                        ));
                    }
                }
                self.stats.encrypts.fetch_add(1, Ordering::Relaxed);
                Ok(ok(&EncryptResponse {
                    ciphertext: wire::encode(&sealed.ciphertext),
                    ciphertext_metadata: Some(wire::encode(&sealed.metadata)),
                    initialization_vector: wire::encode(&sealed.iv),
                    authentication_tag: wire::encode(&sealed.tag),
                    ciphertext_data_integrity_value: cdiv.map(|c| wire::encode(&c)),
                }))
            }
            Operation::Decrypt => {
                let pt = aead::decrypt(
                    &key,
                    &p.ciphertext.unwrap_or_default(),
                    &p.iv.unwrap_or_default(),
                    &p.tag.unwrap_or_default(),
                    &aad,
                    &p.ciphertext_metadata.unwrap_or_default(),
                )?;
                self.stats.decrypts.fetch_add(1, Ordering::Relaxed);
                // The Base64 text of the plaintext is built here and goes only to the caller.
                Ok(Answer {
                    status: 200,
                    body: json!({"plaintext": wire::encode(pt.expose())}).to_string(),
                })
            }
            Operation::Metadata | Operation::Health => {
                Err(XksError::new(ErrorName::Internal, "unreachable operation"))
            }
        }
    }

    /// The material of key `id` (vault object `object`): cached, or rebuilt once for all
    /// concurrent callers.
    async fn material(
        self: &Arc<Self>,
        id: &str,
        object: &str,
    ) -> Result<Arc<kagi_keymat::Key>, XksError> {
        if let Some(k) = self.cache.get(id, object, Instant::now()) {
            return Ok(k);
        }
        let lock = self.cache.rebuild_lock(id);
        let _g = lock.lock().await;
        if let Some(k) = self.cache.get(id, object, Instant::now()) {
            return Ok(k);
        }
        let backend = self.backend.clone();
        let obj = object.to_string();
        let started = Instant::now();
        let job = tokio::task::spawn_blocking(move || backend.rebuild(&obj));
        let res = tokio::time::timeout(REBUILD_TIMEOUT, job).await;
        let key = match res {
            Err(_) => {
                return Err(XksError::new(
                    ErrorName::DependencyTimeout,
                    "the vault sites did not return the key's shares in time",
                ));
            }
            Ok(Err(_)) => return Err(XksError::new(ErrorName::Internal, "rebuild task failed")),
            Ok(Ok(Err(BackendError::NotFound(_)))) => {
                self.audit_or_log(
                    json!({"op": "material.rebuild", "key": id, "outcome": "not found (revoked?)"}),
                );
                return Err(XksError::new(
                    ErrorName::KeyNotFound,
                    format!("the material of external key {id:?} no longer exists"),
                ));
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(key = %id, error = %e, "cannot rebuild key material");
                return Err(XksError::new(
                    ErrorName::DependencyTimeout,
                    "the key manager cannot rebuild the key now",
                ));
            }
            Ok(Ok(Ok(k))) => k,
        };
        if key.len() != 32 {
            return Err(XksError::new(
                ErrorName::Internal,
                "rebuilt material is not 256 bits",
            ));
        }
        // A key disabled or revoked while it was being rebuilt is not cached.
        if self
            .registry
            .get()
            .get(id)
            .is_none_or(|r| r.status != KeyStatus::Enabled)
        {
            return Err(XksError::new(
                ErrorName::InvalidState,
                format!("external key {id:?} changed state"),
            ));
        }
        self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(key = %id, ms, "key material rebuilt from shares");
        self.audit_or_log(json!({"op": "material.rebuild", "key": id, "outcome": "ok", "ms": ms}));
        Ok(self.cache.put(id, object, key, Instant::now()))
    }

    /// The deep health answer: each key-manager member checked (cached up to
    /// [`HEALTH_MAX_AGE`]) and an AES-GCM round trip with an ephemeral test key, never a
    /// customer key.
    pub async fn health(&self) -> Result<HealthResponse, XksError> {
        let test = {
            let mut k = kagi_keymat::Key::zeroed(32);
            aws_lc_rs::rand::fill(k.expose_mut())
                .map_err(|_| XksError::new(ErrorName::Internal, "no randomness"))?;
            k
        };
        let s = aead::encrypt(&test, b"kagi xks health", b"health")?;
        let back = aead::decrypt(&test, &s.ciphertext, &s.iv, &s.tag, b"health", &s.metadata)?;
        if back.expose() != b"kagi xks health" {
            return Err(XksError::new(
                ErrorName::Internal,
                "AES-GCM self-test failed",
            ));
        }
        let mut h = self.health.lock().await;
        let fresh = h
            .as_ref()
            .is_some_and(|(t, _)| t.elapsed() < HEALTH_MAX_AGE);
        if !fresh {
            let b = self.backend.clone();
            let members = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || b.health()),
            )
            .await
            .map_err(|_| {
                XksError::new(
                    ErrorName::DependencyTimeout,
                    "health check of the key manager timed out",
                )
            })?
            .map_err(|_| XksError::new(ErrorName::Internal, "health task failed"))?;
            *h = Some((Instant::now(), members));
        }
        let mut members = h.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        members.truncate(10);
        if members.is_empty() {
            members.push(FleetMember {
                id: "kagi".into(),
                model: "kagi".into(),
                health_status: "UNAVAILABLE".into(),
            });
        }
        Ok(HealthResponse {
            xks_proxy_fleet_size: 1,
            xks_proxy_vendor: "kagi".into(),
            xks_proxy_model: format!("kagi XKS proxy {}", env!("CARGO_PKG_VERSION")),
            ekm_vendor: "kagi (QKD-keyed secret-shared vault)".into(),
            ekm_fleet_details: members,
        })
    }

    /// Forgets the cached health result (tests).
    pub async fn clear_health_cache(&self) {
        *self.health.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let c = Credentials {
            uri_paths: vec![crate::creds::UriPath {
                uri_path: "/a/kms/xks/v1".into(),
                credentials: vec![],
            }],
        };
        assert_eq!(
            route(&c, "/a/kms/xks/v1/health").unwrap().op,
            Operation::Health
        );
        let r = route(&c, "/a/kms/xks/v1/keys/k-1.x/decrypt").unwrap();
        assert_eq!((r.op, r.key), (Operation::Decrypt, Some("k-1.x")));
        for bad in [
            "/a/kms/xks/v1/keys/k/sign",
            "/a/kms/xks/v1/keys//encrypt",
            "/a/kms/xks/v1/keys/a/b/encrypt",
            "/a/kms/xks/v1/healthz",
            "/b/kms/xks/v1/health",
            "/a/kms/xks/v1/keys/k",
        ] {
            assert!(route(&c, bad).is_none(), "{bad}");
        }
    }

    /// Fail closed: once the trail cannot be written, a request that would succeed is answered
    /// 500 InternalException instead of being served unaudited.
    #[tokio::test]
    async fn an_operation_that_cannot_be_audited_is_refused() {
        use crate::backend::MemoryBackend;
        use crate::creds::{Credential, UriPath};
        use crate::registry::KeyRecord;
        let dir = std::env::temp_dir().join(format!("kagi-xks-failclosed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let backend = Arc::new(MemoryBackend::default());
        let created = backend.create("k1").unwrap();
        let cred = Credential {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        };
        let creds = Credentials {
            uri_paths: vec![UriPath {
                uri_path: "/kms/xks/v1".into(),
                credentials: vec![cred.clone()],
            }],
        };
        let reg = Registry {
            keys: vec![KeyRecord {
                id: "k1".into(),
                object: created.object,
                status: KeyStatus::Enabled,
                created_unix: 0,
                changed_unix: 0,
                k: 1,
                n: 1,
                sites: created.sites,
                qkd_key_bytes: 0,
            }],
        };
        let audit = Audit::open(&crate::audit::trail_path(&dir, "proxy")).unwrap();
        let proxy = Arc::new(Proxy::new(
            ProxySettings {
                region: None,
                idle_zeroize: Duration::from_secs(60),
            },
            creds,
            None,
            reg,
            None,
            backend,
            audit,
        ));
        let call = || async {
            let path = "/kms/xks/v1/keys/k1/metadata";
            let body = br#"{"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::1:user/a", "kmsOperation": "DescribeKey", "kmsRequestId": "r-1"}}"#;
            let now = crate::time::now_unix();
            let base = [
                ("host", "xks.example"),
                ("content-type", "application/json"),
            ];
            let (date, auth) = sigv4::sign(
                &sigv4::Request {
                    method: "POST",
                    path,
                    query: "",
                    headers: &base,
                    body,
                },
                now,
                "us-east-1",
                &cred.access_key_id,
                &cred.secret_access_key,
            );
            let mut headers = base.to_vec();
            headers.push(("x-amz-date", &date));
            headers.push(("authorization", &auth));
            proxy.handle("POST", path, "", &headers, body, now).await
        };
        let a = call().await;
        assert_eq!(a.status, 200, "{}", a.body);
        proxy.audit().inject_write_fault();
        let a = call().await;
        assert_eq!(a.status, 500, "{}", a.body);
        assert!(a.body.contains("InternalException"), "{}", a.body);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
