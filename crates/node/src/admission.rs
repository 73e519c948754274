//! Admission control for every mutual-TLS listener (ETSI 014, peers, vault sites, management).
//!
//! A connection is counted in one of two budgets:
//! - **pending**: accepted by TCP, TLS handshake not finished. The budget is bounded and, when full,
//!   the *oldest* pending connection is evicted to make room. Idle or slowloris connections from
//!   someone without a certificate therefore cannot lock out a client that handshakes promptly: its
//!   handshake finishes in milliseconds, long before thousands of newer connections could push it
//!   out. Every pending connection also has a handshake deadline.
//! - **authenticated**: the handshake succeeded and the certificate named an identity. Bounded in
//!   total and per identity, so one authenticated client cannot take every slot either.
//!
//! Refusals are counted per reason ([`AdmissionStats`]) and logged at most once per
//! [`LOG_EVERY`] per listener and reason, with the count since the last line, so a flood cannot
//! turn into a flood of log lines.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// First wait after a failed accept.
pub const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(5);
/// Longest wait between two accepts while they keep failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Shortest interval between two log lines about refusals of one kind on one listener.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections allowed to be handshaking at once; the oldest is evicted beyond this.
    pub max_pending: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Authenticated connections served at once.
    pub max_authenticated: usize,
    /// Authenticated connections served at once for one identity.
    pub max_per_identity: usize,
}

impl Limits {
    /// Defaults for a listener that applications reach (ETSI 014, SKIP, management).
    pub const APPLICATIONS: Limits = Limits {
        max_pending: 512,
        handshake_timeout: Duration::from_secs(5),
        max_authenticated: 4096,
        max_per_identity: 512,
    };
    /// Defaults for the node-to-node listener: few identities, a handful of connections each.
    pub const PEERS: Limits = Limits {
        max_pending: 256,
        handshake_timeout: Duration::from_secs(5),
        max_authenticated: 1024,
        max_per_identity: 8,
    };
}

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Evicted while handshaking because newer connections needed the slot.
    Evicted,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The handshake failed (no or bad certificate, protocol error, reset).
    HandshakeFailed,
    /// The certificate names no identity this listener accepts.
    UnknownIdentity,
    /// Every authenticated slot is taken.
    Full,
    /// This identity already holds its share of authenticated slots.
    IdentityFull,
    /// The certificate names a node but lacks the node role (an SAE or management certificate
    /// on the peer port).
    NotANode,
}

impl Refused {
    const ALL: [Refused; 7] = [
        Refused::Evicted,
        Refused::HandshakeTimeout,
        Refused::HandshakeFailed,
        Refused::UnknownIdentity,
        Refused::Full,
        Refused::IdentityFull,
        Refused::NotANode,
    ];

    /// Stable name, used in logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Evicted => "evicted",
            Refused::HandshakeTimeout => "handshake_timeout",
            Refused::HandshakeFailed => "handshake_failed",
            Refused::UnknownIdentity => "unknown_identity",
            Refused::Full => "full",
            Refused::IdentityFull => "identity_full",
            Refused::NotANode => "not_a_node",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one listener, readable at any time (for status and metrics).
#[derive(Debug, Default)]
pub struct AdmissionStats {
    accepted: AtomicU64,
    authenticated: AtomicU64,
    refused: [AtomicU64; 7],
}

impl AdmissionStats {
    /// TCP connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections that completed the handshake with an accepted identity.
    pub fn authenticated(&self) -> u64 {
        self.authenticated.load(Ordering::Relaxed)
    }
    /// Connections refused for `why`.
    pub fn refused(&self, why: Refused) -> u64 {
        self.refused[why.index()].load(Ordering::Relaxed)
    }
    /// Every refusal reason with its count.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Refused::ALL
            .iter()
            .map(|r| (r.name(), self.refused(*r)))
            .collect()
    }
}

struct Pending {
    next_id: u64,
    /// Oldest first; dropping the sender wakes the handshake's eviction watch.
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

struct LogGate {
    last: Option<Instant>,
    unreported: u64,
}

/// Admission state of one listener; cheap to clone.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    limits: Limits,
    pending: Mutex<Pending>,
    authenticated: Mutex<HashMap<String, usize>>,
    total_authenticated: AtomicU64,
    stats: AdmissionStats,
    log: Mutex<[LogGate; 7]>,
}

impl Admission {
    /// Admission for the listener called `name` (used in logs).
    pub fn new(name: &'static str, limits: Limits) -> Self {
        let gate = || LogGate {
            last: None,
            unreported: 0,
        };
        Self {
            inner: Arc::new(Inner {
                name,
                limits,
                pending: Mutex::new(Pending {
                    next_id: 0,
                    waiting: BTreeMap::new(),
                }),
                authenticated: Mutex::new(HashMap::new()),
                total_authenticated: AtomicU64::new(0),
                stats: AdmissionStats::default(),
                log: Mutex::new(std::array::from_fn(|_| gate())),
            }),
        }
    }

    /// The listener's counters.
    pub fn stats(&self) -> &AdmissionStats {
        &self.inner.stats
    }

    /// The listener's limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        lock(&self.inner.pending).waiting.len()
    }

    /// Authenticated connections being served.
    pub fn authenticated(&self) -> usize {
        self.inner.total_authenticated.load(Ordering::Relaxed) as usize
    }

    /// Accepts the next TCP connection, backing off (up to a second) while accept fails, e.g.
    /// when the process is out of file descriptors.
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
        let (tcp, remote) = self.accept_with(|| listener.accept()).await;
        let _ = tcp.set_nodelay(true);
        (tcp, remote)
    }

    /// The accept loop of [`Admission::accept`] over any source of connections: a failed
    /// accept (out of descriptors, say) is retried after [`ACCEPT_BACKOFF_START`], doubling up
    /// to [`ACCEPT_BACKOFF_MAX`], so a failing listener neither spins a core nor floods the log.
    async fn accept_with<S, F, Fut>(&self, mut next: F) -> (S, std::net::SocketAddr)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::io::Result<(S, std::net::SocketAddr)>>,
    {
        let mut backoff = ACCEPT_BACKOFF_START;
        loop {
            match next().await {
                Ok(x) => {
                    self.inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    return x;
                }
                Err(e) => {
                    tracing::warn!(listener = self.inner.name, error = %e, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    /// Runs `handshake` in the pending budget: it is abandoned when its deadline passes or when
    /// newer connections evict it. On success the caller must then call [`Admission::admit`].
    pub async fn handshake<T, E>(
        &self,
        handshake: impl Future<Output = Result<T, E>>,
    ) -> Result<T, (Refused, Option<E>)> {
        let (id, evicted) = self.enter_pending();
        let _leave = LeavePending {
            inner: &self.inner,
            id,
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.inner.limits.handshake_timeout, handshake) => match r {
                Ok(Ok(t)) => Ok(t),
                Ok(Err(e)) => Err((Refused::HandshakeFailed, Some(e))),
                Err(_) => Err((Refused::HandshakeTimeout, None)),
            },
            _ = evicted => Err((Refused::Evicted, None)),
        };
        if let Err((why, _)) = &outcome {
            self.refuse(*why, "");
        }
        outcome
    }

    fn enter_pending(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut p = lock(&self.inner.pending);
        while p.waiting.len() >= self.inner.limits.max_pending {
            // Dropping the oldest sender wakes its handshake, which gives up.
            if p.waiting.pop_first().is_none() {
                break;
            }
        }
        let id = p.next_id;
        p.next_id += 1;
        p.waiting.insert(id, tx);
        (id, rx)
    }

    /// Takes an authenticated slot for `identity`, or refuses (counted and logged). The slot is
    /// held until the returned guard drops.
    pub fn admit(&self, identity: &str) -> Result<AdmitGuard, Refused> {
        let mut map = lock(&self.inner.authenticated);
        let total = self.inner.total_authenticated.load(Ordering::Relaxed) as usize;
        if total >= self.inner.limits.max_authenticated {
            drop(map);
            self.refuse(Refused::Full, identity);
            return Err(Refused::Full);
        }
        let held = map.entry(identity.to_owned()).or_insert(0);
        if *held >= self.inner.limits.max_per_identity {
            drop(map);
            self.refuse(Refused::IdentityFull, identity);
            return Err(Refused::IdentityFull);
        }
        *held += 1;
        self.inner
            .total_authenticated
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .stats
            .authenticated
            .fetch_add(1, Ordering::Relaxed);
        Ok(AdmitGuard {
            inner: self.inner.clone(),
            identity: identity.to_owned(),
        })
    }

    /// Counts and (rate-limited) logs a refusal for `why`; `detail` names the identity or
    /// certificate when there is one.
    pub fn refuse(&self, why: Refused, detail: &str) {
        self.inner.stats.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.log_gate(why, Instant::now()) {
            let noisy = matches!(
                why,
                Refused::Evicted | Refused::HandshakeTimeout | Refused::HandshakeFailed
            );
            if noisy {
                tracing::info!(
                    listener = self.inner.name,
                    reason = why.name(),
                    count,
                    "connections refused (counted since the last line)"
                );
            } else {
                tracing::warn!(
                    listener = self.inner.name,
                    reason = why.name(),
                    count,
                    detail,
                    "connections refused (counted since the last line)"
                );
            }
        }
    }
}

impl Admission {
    /// Whether a refusal for `why` at `now` gets a log line: at most one per [`LOG_EVERY`] per
    /// reason, carrying the refusals counted since the last line (`None`: stay quiet).
    fn log_gate(&self, why: Refused, now: Instant) -> Option<u64> {
        let mut gates = lock(&self.inner.log);
        let g = &mut gates[why.index()];
        g.unreported += 1;
        if g.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            g.last = Some(now);
            Some(std::mem::take(&mut g.unreported))
        } else {
            None
        }
    }
}

struct LeavePending<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for LeavePending<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pending).waiting.remove(&self.id);
    }
}

/// An authenticated slot; released on drop.
pub struct AdmitGuard {
    inner: Arc<Inner>,
    identity: String,
}

impl Drop for AdmitGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.inner.authenticated);
        if let Some(n) = map.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.identity);
            }
        }
        self.inner
            .total_authenticated
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a few map operations).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Limits {
        Limits {
            max_pending: 2,
            handshake_timeout: Duration::from_millis(200),
            max_authenticated: 3,
            max_per_identity: 2,
        }
    }

    #[tokio::test]
    async fn oldest_pending_handshake_is_evicted_when_full() {
        let a = Admission::new("test", tiny());
        let stuck = || async {
            a.handshake(std::future::pending::<Result<(), ()>>())
                .await
                .map_err(|(r, _)| r)
        };
        // Two stuck handshakes fill the budget; a third evicts the first.
        let first = tokio::spawn({
            let a = a.clone();
            async move {
                a.handshake(std::future::pending::<Result<(), ()>>())
                    .await
                    .map_err(|(r, _)| r)
            }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let a = a.clone();
            async move {
                a.handshake(std::future::pending::<Result<(), ()>>())
                    .await
                    .map_err(|(r, _)| r)
            }
        });
        tokio::task::yield_now().await;
        let quick = a.handshake(async { Ok::<_, ()>(7) }).await;
        assert_eq!(quick.ok(), Some(7), "a prompt handshake gets through");
        assert_eq!(first.await.unwrap(), Err(Refused::Evicted));
        assert_eq!(second.await.unwrap(), Err(Refused::HandshakeTimeout));
        assert_eq!(stuck().await, Err(Refused::HandshakeTimeout));
        assert_eq!(a.stats().refused(Refused::Evicted), 1);
        assert_eq!(a.stats().refused(Refused::HandshakeTimeout), 2);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn refusals_are_all_counted_and_logged_once_per_interval() {
        let a = Admission::new("test", tiny());
        for _ in 0..1000 {
            a.refuse(Refused::Full, "sae-x");
        }
        assert_eq!(a.stats().refused(Refused::Full), 1000);
        // The burst above spoke once; within the interval every further refusal stays quiet,
        // and the next line carries the count of those it held back.
        let t0 = Instant::now();
        for i in 0..1000 {
            assert_eq!(
                a.log_gate(Refused::Full, t0 + Duration::from_millis(i)),
                None,
                "refusal {i} logged within {LOG_EVERY:?} of the last line"
            );
        }
        // Each reason has its own gate.
        assert_eq!(a.log_gate(Refused::IdentityFull, t0), Some(1));
        assert_eq!(
            a.log_gate(Refused::Full, t0 + LOG_EVERY),
            Some(1000 + 999 + 1)
        );
    }

    #[test]
    fn authenticated_slots_are_bounded_in_total_and_per_identity() {
        let a = Admission::new("test", tiny());
        let g1 = a.admit("sae-a").unwrap();
        let _g2 = a.admit("sae-a").unwrap();
        assert_eq!(a.admit("sae-a").err(), Some(Refused::IdentityFull));
        let _g3 = a.admit("sae-b").unwrap();
        assert_eq!(a.admit("sae-c").err(), Some(Refused::Full));
        drop(g1);
        assert!(a.admit("sae-c").is_ok(), "a released slot is reusable");
        assert_eq!(a.stats().refused(Refused::Full), 1);
        assert_eq!(a.stats().refused(Refused::IdentityFull), 1);
    }

    /// A listener whose accept keeps failing (out of file descriptors) is retried with a
    /// doubling back-off, not in a loop that spins a core and logs a line per attempt.
    #[tokio::test]
    async fn failing_accepts_back_off() {
        let a = Admission::new("test", tiny());
        let tries = std::sync::atomic::AtomicU32::new(0);
        // Each attempt yields once, so that without a back-off the timeout still ends the test.
        let failing = || {
            tries.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::task::yield_now().await;
                Err::<((), std::net::SocketAddr), _>(std::io::Error::from_raw_os_error(24))
            }
        };
        let start = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_millis(1300), a.accept_with(failing)).await;
        assert!(r.is_err(), "nothing was accepted");
        let n = tries.load(Ordering::Relaxed);
        // 5 + 10 + … + 640 ms = 1,275 ms: eight tries fit in 1.3 s (one more on a slow timer).
        assert!((5..=10).contains(&n), "{n} accept attempts in 1.3 s");
        // After failures it accepts again, and counts the connection.
        let tries = std::sync::atomic::AtomicU32::new(0);
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let flaky = || {
            let n = tries.fetch_add(1, Ordering::Relaxed);
            std::future::ready(if n < 5 {
                Err(std::io::Error::from_raw_os_error(24))
            } else {
                Ok(((), addr))
            })
        };
        a.accept_with(flaky).await;
        assert!(start.elapsed() >= Duration::from_millis(1300 + 150));
        assert_eq!(a.stats().accepted(), 1);
    }
}
