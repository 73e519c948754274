//! Per-SAE key rates and quotas (X.1712 AVL.2): a token bucket of key bytes per master SAE
//! (sustained bytes per second plus a burst) and an optional quota per 24 hours, so one
//! application draining `enc_keys` cannot starve the others at the same node.
//!
//! Time is the core's [`Instant`]; the "day" is a rolling 24-hour window that starts at the
//! SAE's first charged request after the previous window ended.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::{Refusal, SaeId};
use crate::time::Instant;

/// Largest rate or size accepted in a limit (bytes), far beyond any QKD network, so that a typo
/// is a config error and arithmetic stays exact in `f64`.
pub const MAX_LIMIT_BYTES: u64 = 1 << 48;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A per-SAE limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SAE key rate limit: {0}")]
pub struct QuotaError(String);

/// The key rate one SAE may draw as master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeLimit {
    /// Sustained rate (key bytes per second).
    pub bytes_per_second: u64,
    /// Bytes it may take at once (the bucket's size); one request can never exceed it.
    /// Defaults to one second of `bytes_per_second`.
    #[serde(default)]
    pub burst_bytes: Option<u64>,
    /// Most key bytes per rolling 24 hours (none: no daily quota).
    #[serde(default)]
    pub daily_bytes: Option<u64>,
}

impl SaeLimit {
    /// The bucket size.
    pub fn burst(&self) -> u64 {
        self.burst_bytes.unwrap_or(self.bytes_per_second)
    }

    /// Checks that the numbers are usable: not above [`MAX_LIMIT_BYTES`], and a burst of at
    /// least one byte (a zero burst would refuse every request forever).
    pub fn validate(&self, what: &str) -> Result<(), QuotaError> {
        let err = |m: String| Err(QuotaError(format!("{what}: {m}")));
        if self.bytes_per_second > MAX_LIMIT_BYTES
            || self.burst() > MAX_LIMIT_BYTES
            || self.daily_bytes.unwrap_or(0) > MAX_LIMIT_BYTES
        {
            return err(format!("limits must be at most {MAX_LIMIT_BYTES} bytes"));
        }
        if self.burst() == 0 {
            return err("burst_bytes (or bytes_per_second, its default) must be at least 1".into());
        }
        Ok(())
    }
}

/// Rate limits per master SAE, as in the node's `[quotas]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// The limit of every SAE without its own entry (none: unlimited).
    #[serde(default)]
    pub default: Option<SaeLimit>,
    /// Limits of named SAEs.
    #[serde(default)]
    pub sae: BTreeMap<SaeId, SaeLimit>,
}

impl QuotaConfig {
    /// Checks every limit.
    pub fn validate(&self) -> Result<(), QuotaError> {
        if let Some(d) = &self.default {
            d.validate("quotas.default")?;
        }
        for (sae, l) in &self.sae {
            l.validate(&format!("quotas.sae.{sae:?}"))?;
        }
        Ok(())
    }

    /// No limits at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.sae.is_empty()
    }

    /// The limit that applies to `sae`.
    pub fn limit_of(&self, sae: &str) -> Option<&SaeLimit> {
        self.sae.get(sae).or(self.default.as_ref())
    }
}

/// What one SAE drew and was refused (for metrics and the management API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SaeUsage {
    /// Key bytes granted to it as master.
    pub granted_bytes: u64,
    /// Key bytes it asked for in requests refused for its rate or quota.
    pub refused_bytes: u64,
    /// Requests refused for its rate or quota.
    pub refused_requests: u64,
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
    day_start: Instant,
    day_used: u64,
}

/// Per-SAE buckets and counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Quotas {
    cfg: QuotaConfig,
    buckets: BTreeMap<SaeId, Bucket>,
    usage: BTreeMap<SaeId, SaeUsage>,
}

impl Quotas {
    pub(crate) fn new(cfg: QuotaConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    /// Replaces the limits (a reload). Buckets keep what they hold, capped at the new burst.
    pub(crate) fn set(&mut self, cfg: QuotaConfig) {
        self.cfg = cfg;
        let cfg = &self.cfg;
        self.buckets.retain(|sae, b| match cfg.limit_of(sae) {
            Some(l) => {
                b.tokens = b.tokens.min(l.burst() as f64);
                true
            }
            None => false,
        });
    }

    pub(crate) fn config(&self) -> &QuotaConfig {
        &self.cfg
    }

    pub(crate) fn usage(&self) -> &BTreeMap<SaeId, SaeUsage> {
        &self.usage
    }

    /// Charges `bytes` to `sae` if its limits allow them now; otherwise refuses (503 with the
    /// limit named, or 400 when one request is larger than the SAE's burst) and charges nothing.
    pub(crate) fn charge(&mut self, now: Instant, sae: &str, bytes: u64) -> Result<(), Refusal> {
        let Some(l) = self.cfg.limit_of(sae).copied() else {
            self.usage.entry(sae.to_string()).or_default().granted_bytes += bytes;
            return Ok(());
        };
        let burst = l.burst();
        let b = self.buckets.entry(sae.to_string()).or_insert(Bucket {
            tokens: burst as f64,
            last: now,
            day_start: now,
            day_used: 0,
        });
        let dt = now.saturating_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * l.bytes_per_second as f64).min(burst as f64);
        b.last = now;
        if now.saturating_since(b.day_start) >= DAY {
            b.day_start = now;
            b.day_used = 0;
        }
        let refused = if bytes > burst {
            Some(Refusal::BadRequest(format!(
                "SAE {sae} asked for {bytes} bytes of key in one request, more than its burst limit of {burst} bytes; ask for fewer keys per request"
            )))
        } else if l.daily_bytes.is_some_and(|d| b.day_used + bytes > d) {
            Some(Refusal::Unavailable(format!(
                "SAE {sae} is over its daily key quota ({} of {} bytes used in this 24-hour window); retry after the window ends",
                b.day_used,
                l.daily_bytes.unwrap_or(0)
            )))
        } else if (bytes as f64) > b.tokens {
            let wait = (bytes as f64 - b.tokens) / (l.bytes_per_second.max(1) as f64);
            Some(Refusal::Unavailable(format!(
                "SAE {sae} is over its key rate limit of {} bytes/s (burst {burst} bytes); retry in {} ms",
                l.bytes_per_second,
                (wait * 1000.0).ceil() as u64
            )))
        } else {
            None
        };
        let u = self.usage.entry(sae.to_string()).or_default();
        if let Some(r) = refused {
            u.refused_bytes += bytes;
            u.refused_requests += 1;
            return Err(r);
        }
        b.tokens -= bytes as f64;
        b.day_used += bytes;
        u.granted_bytes += bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }

    fn cfg(rate: u64, burst: Option<u64>, daily: Option<u64>) -> QuotaConfig {
        let mut c = QuotaConfig::default();
        c.sae.insert(
            "a".into(),
            SaeLimit {
                bytes_per_second: rate,
                burst_bytes: burst,
                daily_bytes: daily,
            },
        );
        c
    }

    #[test]
    fn bucket_allows_burst_then_the_rate() {
        let mut q = Quotas::new(cfg(1000, Some(2000), None));
        assert!(q.charge(at(0), "a", 2000).is_ok());
        let r = q.charge(at(0), "a", 32).unwrap_err();
        assert_eq!(r.http_status(), 503);
        assert!(r.message().contains("1000 bytes/s"), "{}", r.message());
        // Half a second later, 500 bytes are back.
        assert!(q.charge(at(500), "a", 500).is_ok());
        assert!(q.charge(at(500), "a", 1).is_err());
        // Others are not limited.
        assert!(q.charge(at(500), "b", 1 << 30).is_ok());
        let u = &q.usage()["a"];
        assert_eq!(
            (u.granted_bytes, u.refused_bytes, u.refused_requests),
            (2500, 33, 2)
        );
    }

    #[test]
    fn a_request_larger_than_the_burst_is_a_bad_request() {
        let mut q = Quotas::new(cfg(100, None, None));
        let r = q.charge(at(0), "a", 101).unwrap_err();
        assert_eq!(r.http_status(), 400);
        assert!(
            r.message().contains("burst limit of 100"),
            "{}",
            r.message()
        );
    }

    #[test]
    fn daily_quota_holds_then_resets() {
        let mut q = Quotas::new(cfg(1000, None, Some(1500)));
        assert!(q.charge(at(0), "a", 1000).is_ok());
        let r = q.charge(at(10_000), "a", 1000).unwrap_err();
        assert!(r.message().contains("daily key quota"), "{}", r.message());
        assert!(q.charge(at(10_000), "a", 500).is_ok());
        assert!(q.charge(at(24 * 3600 * 1000 + 1), "a", 1000).is_ok());
    }

    #[test]
    fn reload_changes_limits_and_caps_buckets() {
        let mut q = Quotas::new(cfg(10, Some(10_000), None));
        q.set(cfg(10, Some(100), None));
        assert!(q.charge(at(0), "a", 100).is_ok());
        assert!(q.charge(at(0), "a", 1).is_err());
        q.set(QuotaConfig::default());
        assert!(q.charge(at(0), "a", 1 << 20).is_ok());
    }

    #[test]
    fn bad_limits_are_config_errors() {
        assert!(cfg(0, None, None).validate().is_err());
        assert!(cfg(MAX_LIMIT_BYTES + 1, None, None).validate().is_err());
        assert!(cfg(1, Some(0), None).validate().is_err());
        assert!(cfg(0, Some(100), None).validate().is_ok());
        assert!(cfg(1, None, Some(MAX_LIMIT_BYTES + 1)).validate().is_err());
    }
}
