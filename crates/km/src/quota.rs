//! Per-application key rates, quotas and priorities (X.1712 AVL.2), so one application draining
//! `enc_keys` cannot starve the others at the same node:
//!
//! - a token bucket of key bytes (sustained bytes per second plus a burst) and an optional quota
//!   per 24 hours, per master SAE (`[quotas.sae."<id>"]`, or `[quotas] default`) and per
//!   (master, slave) pair (`[quotas.pair."<master>"."<slave>"]`); every limit that applies must
//!   allow a request, and a refused request is charged to none of them;
//! - a priority (`high`, `normal`, `low`) per SAE or pair: when the end-to-end pool towards a
//!   destination runs low, a request may not take it below its priority's reserve, a share of
//!   the pool's current target (`[quotas.reserve]`: `normal_percent`, `low_percent`; `high` has
//!   none), so a flood from low-priority applications leaves key for high-priority ones.
//!
//! Time is the core's [`Instant`]; the "day" is a rolling 24-hour window that starts at the
//! first charged request after the previous window ended.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::{Refusal, SaeId};
use crate::time::Instant;

/// Largest rate or size accepted in a limit (bytes), far beyond any QKD network, so that a typo
/// is a config error and arithmetic stays exact in `f64`.
pub const MAX_LIMIT_BYTES: u64 = 1 << 48;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SAE key rate limit: {0}")]
pub struct QuotaError(String);

/// How an application's requests fare when an end-to-end pool runs low.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// May take a pool down to empty.
    High,
    /// May not take a pool below `[quotas.reserve] normal_percent` of its target.
    #[default]
    Normal,
    /// May not take a pool below `[quotas.reserve] low_percent` of its target.
    Low,
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        })
    }
}

/// The key rate and priority of one SAE (as master) or one (master, slave) pair. Every field
/// is optional: an entry without `bytes_per_second` has no rate limit, one without
/// `daily_bytes` no daily quota, one without `priority` inherits it (pair → SAE → normal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeLimit {
    /// Sustained rate (key bytes per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// Bytes it may take at once (the bucket's size); one request can never exceed it.
    /// Defaults to one second of `bytes_per_second`; needs `bytes_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
    /// Most key bytes per rolling 24 hours (none: no daily quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_bytes: Option<u64>,
    /// Priority when pools run low (none: inherited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

impl SaeLimit {
    /// A rate limit of `bytes_per_second` with a burst of `burst_bytes`.
    pub fn rate(bytes_per_second: u64, burst_bytes: u64) -> Self {
        Self {
            bytes_per_second: Some(bytes_per_second),
            burst_bytes: Some(burst_bytes),
            ..Self::default()
        }
    }

    /// The bucket size (none: no rate limit).
    pub fn burst(&self) -> Option<u64> {
        self.bytes_per_second.map(|r| self.burst_bytes.unwrap_or(r))
    }

    /// Checks that the numbers are usable: not above [`MAX_LIMIT_BYTES`], a burst of at least
    /// one byte (a zero burst would refuse every request forever), no burst without a rate.
    pub fn validate(&self, what: &str) -> Result<(), QuotaError> {
        let err = |m: String| Err(QuotaError(format!("{what}: {m}")));
        for (field, v) in [
            ("bytes_per_second", self.bytes_per_second),
            ("burst_bytes", self.burst_bytes),
            ("daily_bytes", self.daily_bytes),
        ] {
            if let Some(v) = v.filter(|v| *v > MAX_LIMIT_BYTES) {
                return err(format!(
                    "{field} = {v} must be at most {MAX_LIMIT_BYTES} bytes"
                ));
            }
        }
        if self.bytes_per_second.is_none() && self.burst_bytes.is_some() {
            return err("burst_bytes needs bytes_per_second (the rate that refills it)".into());
        }
        if self.burst() == Some(0) {
            return err("burst_bytes (or bytes_per_second, its default) must be at least 1".into());
        }
        Ok(())
    }
}

/// The share of a destination's pool target held back from lower priorities
/// (`[quotas.reserve]`). `high` has no reserve: it may take a pool down to empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reserve {
    /// Percent of the pool's target that `normal` requests leave for `high` ones.
    pub normal_percent: u8,
    /// Percent of the pool's target that `low` requests leave for `normal` and `high` ones
    /// (at least `normal_percent`).
    pub low_percent: u8,
}

impl Default for Reserve {
    /// `normal` takes a pool to empty (as before priorities existed); `low` leaves a quarter,
    /// below the default refill point (`[pool] low_water = 0.5`) so the pool refills while low
    /// requests wait.
    fn default() -> Self {
        Self {
            normal_percent: 0,
            low_percent: 25,
        }
    }
}

impl Reserve {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The percent of a pool's target that requests of `p` may not take.
    pub fn percent(&self, p: Priority) -> u8 {
        match p {
            Priority::High => 0,
            Priority::Normal => self.normal_percent,
            Priority::Low => self.low_percent,
        }
    }

    /// Checks `normal_percent ≤ low_percent ≤ 100`.
    pub fn validate(&self) -> Result<(), QuotaError> {
        if self.low_percent > 100 {
            return Err(QuotaError(format!(
                "quotas.reserve.low_percent = {} must be at most 100",
                self.low_percent
            )));
        }
        if self.normal_percent > self.low_percent {
            return Err(QuotaError(format!(
                "quotas.reserve.normal_percent = {} must be at most low_percent = {} (a lower \
                 priority never keeps less back than a higher one)",
                self.normal_percent, self.low_percent
            )));
        }
        Ok(())
    }
}

/// Rate limits and priorities, as in the node's `[quotas]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// The entry of every master SAE without its own (none: unlimited, normal priority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<SaeLimit>,
    /// Entries of named master SAEs (`[quotas.sae."<id>"]`); one replaces `default` entirely.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sae: BTreeMap<SaeId, SaeLimit>,
    /// Entries of (master, slave) pairs (`[quotas.pair."<master>"."<slave>"]`), applied on top
    /// of the master's own: a request must pass both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pair: BTreeMap<SaeId, BTreeMap<SaeId, SaeLimit>>,
    /// Pool shares held back from lower priorities.
    #[serde(default, skip_serializing_if = "Reserve::is_default")]
    pub reserve: Reserve,
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
        for (m, slaves) in &self.pair {
            for (s, l) in slaves {
                l.validate(&format!("quotas.pair.{m:?}.{s:?}"))?;
            }
        }
        self.reserve.validate()
    }

    /// No limits at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none()
            && self.sae.is_empty()
            && self.pair.is_empty()
            && self.reserve.is_default()
    }

    /// The entry that applies to master `sae` (its own, else the default).
    pub fn limit_of(&self, sae: &str) -> Option<&SaeLimit> {
        self.sae.get(sae).or(self.default.as_ref())
    }

    /// The entry of the pair (`master`, `slave`), if any.
    pub fn pair_limit(&self, master: &str, slave: &str) -> Option<&SaeLimit> {
        self.pair.get(master)?.get(slave)
    }

    /// The priority of requests by `master` for `slave`: the pair's, else the master's, else
    /// normal.
    pub fn priority_of(&self, master: &str, slave: &str) -> Priority {
        self.pair_limit(master, slave)
            .and_then(|l| l.priority)
            .or_else(|| self.limit_of(master).and_then(|l| l.priority))
            .unwrap_or_default()
    }

    /// Bytes of a pool whose current target is `target` that requests of `p` may not take.
    pub fn reserve_bytes(&self, p: Priority, target: u64) -> u64 {
        target / 100 * u64::from(self.reserve.percent(p))
            + target % 100 * u64::from(self.reserve.percent(p)) / 100
    }

    /// This configuration with `overrides` (set at run time) replacing the entries they name.
    pub fn with_overrides(&self, overrides: &QuotaOverrides) -> QuotaConfig {
        let mut c = self.clone();
        for (sae, l) in &overrides.sae {
            c.sae.insert(sae.clone(), *l);
        }
        for (m, slaves) in &overrides.pair {
            for (s, l) in slaves {
                c.pair.entry(m.clone()).or_default().insert(s.clone(), *l);
            }
        }
        c
    }
}

/// Entries set at run time (the management API) that replace `node.toml`'s for the same SAE or
/// pair, kept across restarts and reloads by the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    /// Per master SAE.
    #[serde(default)]
    pub sae: BTreeMap<SaeId, SaeLimit>,
    /// Per (master, slave) pair.
    #[serde(default)]
    pub pair: BTreeMap<SaeId, BTreeMap<SaeId, SaeLimit>>,
}

impl QuotaOverrides {
    /// No overrides.
    pub fn is_empty(&self) -> bool {
        self.sae.is_empty() && self.pair.is_empty()
    }

    /// Checks every entry.
    pub fn validate(&self) -> Result<(), QuotaError> {
        QuotaConfig {
            sae: self.sae.clone(),
            pair: self.pair.clone(),
            ..QuotaConfig::default()
        }
        .validate()
    }
}

/// What one SAE drew and was refused (for metrics and the management API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SaeUsage {
    /// Key bytes granted to it as master.
    pub granted_bytes: u64,
    /// Key bytes it asked for in requests refused for a rate limit or quota (its own or a
    /// pair's).
    pub refused_bytes: u64,
    /// Requests refused for a rate limit or quota (its own or a pair's).
    pub refused_requests: u64,
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
    day_start: Instant,
    day_used: u64,
}

impl Bucket {
    fn new(now: Instant, l: &SaeLimit) -> Self {
        Self {
            tokens: l.burst().unwrap_or(0) as f64,
            last: now,
            day_start: now,
            day_used: 0,
        }
    }

    /// Brings the bucket up to `now`.
    fn refill(&mut self, now: Instant, l: &SaeLimit) {
        if let (Some(rate), Some(burst)) = (l.bytes_per_second, l.burst()) {
            let dt = now.saturating_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * rate as f64).min(burst as f64);
        }
        self.last = now;
        if now.saturating_since(self.day_start) >= DAY {
            self.day_start = now;
            self.day_used = 0;
        }
    }

    /// Why `bytes` may not be taken now under `l` (`who` names the limit), if they may not.
    fn refusal(&self, bytes: u64, l: &SaeLimit, who: &str) -> Option<Refusal> {
        if let Some(burst) = l.burst().filter(|b| bytes > *b) {
            return Some(Refusal::BadRequest(format!(
                "{who} asked for {bytes} bytes of key in one request, more than its burst limit of {burst} bytes; ask for fewer keys per request"
            )));
        }
        if let Some(d) = l.daily_bytes.filter(|d| self.day_used + bytes > *d) {
            return Some(Refusal::Unavailable(format!(
                "{who} is over its daily key quota ({} of {d} bytes used in this 24-hour window); retry after the window ends",
                self.day_used
            )));
        }
        if let (Some(rate), Some(burst)) = (l.bytes_per_second, l.burst()) {
            if (bytes as f64) > self.tokens {
                let wait = (bytes as f64 - self.tokens) / (rate.max(1) as f64);
                return Some(Refusal::Unavailable(format!(
                    "{who} is over its key rate limit of {rate} bytes/s (burst {burst} bytes); retry in {} ms",
                    (wait * 1000.0).ceil() as u64
                )));
            }
        }
        None
    }

    fn take(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
        self.day_used += bytes;
    }
}

/// Which bucket: a master SAE's or a (master, slave) pair's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Holder {
    Sae(SaeId),
    Pair(SaeId, SaeId),
}

/// Buckets and counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Quotas {
    cfg: QuotaConfig,
    buckets: BTreeMap<Holder, Bucket>,
    /// Charged on every request and listed only in a status (sorted there), so hashed.
    usage: crate::fixed_hash::FixedMap<SaeId, SaeUsage>,
}

impl Quotas {
    pub(crate) fn new(cfg: QuotaConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    fn limit(cfg: &QuotaConfig, h: &Holder) -> Option<SaeLimit> {
        match h {
            Holder::Sae(s) => cfg.limit_of(s).copied(),
            Holder::Pair(m, s) => cfg.pair_limit(m, s).copied(),
        }
    }

    /// Replaces the limits (a reload). Buckets keep what they hold, capped at the new burst.
    pub(crate) fn set(&mut self, cfg: QuotaConfig) {
        self.cfg = cfg;
        let cfg = &self.cfg;
        self.buckets.retain(|h, b| match Self::limit(cfg, h) {
            Some(l) => {
                b.tokens = b.tokens.min(l.burst().unwrap_or(0) as f64);
                true
            }
            None => false,
        });
    }

    /// `master`'s usage entry, made on its first request.
    fn usage_of(&mut self, master: &str) -> &mut SaeUsage {
        if !self.usage.contains_key(master) {
            self.usage.insert(master.to_string(), SaeUsage::default());
        }
        self.usage.get_mut(master).expect("just made")
    }

    pub(crate) fn config(&self) -> &QuotaConfig {
        &self.cfg
    }

    /// Every master's usage, in order of name.
    pub(crate) fn usage(&self) -> BTreeMap<SaeId, SaeUsage> {
        self.usage
            .iter()
            .map(|(s, u)| (s.clone(), u.clone()))
            .collect()
    }

    /// Charges `bytes` to `master` and to each pair (`master`, slave) for `slaves` if every
    /// limit that applies allows them now; otherwise refuses (503 naming the limit, or 400 when
    /// one request is larger than a burst) and charges nothing.
    pub(crate) fn charge(
        &mut self,
        now: Instant,
        master: &str,
        slaves: &[SaeId],
        bytes: u64,
    ) -> Result<(), Refusal> {
        if self.cfg.default.is_none() && self.cfg.sae.is_empty() && self.cfg.pair.is_empty() {
            // No limit applies to anyone (the usual case): only the accounting, and no names
            // copied for it once the master has an entry.
            match self.usage.get_mut(master) {
                Some(u) => u.granted_bytes += bytes,
                None => self.usage_of(master).granted_bytes += bytes,
            }
            return Ok(());
        }
        let mut holders = vec![Holder::Sae(master.to_string())];
        holders.extend(
            slaves
                .iter()
                .map(|s| Holder::Pair(master.to_string(), s.clone())),
        );
        let mut applies = Vec::with_capacity(holders.len());
        for h in holders {
            if let Some(l) = Self::limit(&self.cfg, &h) {
                let b = self
                    .buckets
                    .entry(h.clone())
                    .or_insert_with(|| Bucket::new(now, &l));
                b.refill(now, &l);
                applies.push((h, l));
            }
        }
        let refused = applies.iter().find_map(|(h, l)| {
            let who = match h {
                Holder::Sae(s) => format!("SAE {s}"),
                Holder::Pair(m, s) => format!("the pair master SAE {m} → slave SAE {s}"),
            };
            self.buckets.get(h)?.refusal(bytes, l, &who)
        });
        let u = self.usage_of(master);
        if let Some(r) = refused {
            u.refused_bytes += bytes;
            u.refused_requests += 1;
            return Err(r);
        }
        u.granted_bytes += bytes;
        for (h, _) in &applies {
            if let Some(b) = self.buckets.get_mut(h) {
                b.take(bytes);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }

    fn rate(rate: u64, burst: Option<u64>, daily: Option<u64>) -> SaeLimit {
        SaeLimit {
            bytes_per_second: Some(rate),
            burst_bytes: burst,
            daily_bytes: daily,
            priority: None,
        }
    }

    fn cfg(r: u64, burst: Option<u64>, daily: Option<u64>) -> QuotaConfig {
        let mut c = QuotaConfig::default();
        c.sae.insert("a".into(), rate(r, burst, daily));
        c
    }

    fn pair(c: &mut QuotaConfig, m: &str, s: &str, l: SaeLimit) {
        c.pair.entry(m.into()).or_default().insert(s.into(), l);
    }

    fn charge(q: &mut Quotas, t: u64, sae: &str, bytes: u64) -> Result<(), Refusal> {
        q.charge(at(t), sae, &["s".to_string()], bytes)
    }

    #[test]
    fn bucket_allows_burst_then_the_rate() {
        let mut q = Quotas::new(cfg(1000, Some(2000), None));
        assert!(charge(&mut q, 0, "a", 2000).is_ok());
        let r = charge(&mut q, 0, "a", 32).unwrap_err();
        assert_eq!(r.http_status(), 503);
        assert!(r.message().contains("1000 bytes/s"), "{}", r.message());
        // Half a second later, 500 bytes are back.
        assert!(charge(&mut q, 500, "a", 500).is_ok());
        assert!(charge(&mut q, 500, "a", 1).is_err());
        // Others are not limited.
        assert!(charge(&mut q, 500, "b", 1 << 30).is_ok());
        let usage = q.usage();
        let u = &usage["a"];
        assert_eq!(
            (u.granted_bytes, u.refused_bytes, u.refused_requests),
            (2500, 33, 2)
        );
    }

    #[test]
    fn a_request_larger_than_the_burst_is_a_bad_request() {
        let mut q = Quotas::new(cfg(100, None, None));
        let r = charge(&mut q, 0, "a", 101).unwrap_err();
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
        assert!(charge(&mut q, 0, "a", 1000).is_ok());
        let r = charge(&mut q, 10_000, "a", 1000).unwrap_err();
        assert!(r.message().contains("daily key quota"), "{}", r.message());
        assert!(charge(&mut q, 10_000, "a", 500).is_ok());
        assert!(charge(&mut q, 24 * 3600 * 1000 + 1, "a", 1000).is_ok());
    }

    #[test]
    fn reload_changes_limits_and_caps_buckets() {
        let mut q = Quotas::new(cfg(10, Some(10_000), None));
        q.set(cfg(10, Some(100), None));
        assert!(charge(&mut q, 0, "a", 100).is_ok());
        assert!(charge(&mut q, 0, "a", 1).is_err());
        q.set(QuotaConfig::default());
        assert!(charge(&mut q, 0, "a", 1 << 20).is_ok());
    }

    /// A pair's bucket holds that pair to its rate while the master's other pairs go on, both
    /// limits apply, the refusal names the pair, and a refused request charges nobody.
    #[test]
    fn a_pair_limit_holds_the_pair_and_not_the_masters_other_pairs() {
        let mut c = cfg(10_000, Some(10_000), None);
        pair(&mut c, "a", "s1", rate(100, Some(300), None));
        let mut q = Quotas::new(c);
        let s1 = ["s1".to_string()];
        let s2 = ["s2".to_string()];
        assert!(q.charge(at(0), "a", &s1, 300).is_ok());
        let r = q.charge(at(0), "a", &s1, 100).unwrap_err();
        assert_eq!(r.http_status(), 503);
        let m = r.message();
        assert!(
            m.contains("master SAE a → slave SAE s1") && m.contains("100 bytes/s"),
            "{m}"
        );
        // The refused 100 bytes were not taken from the master's bucket: 9,700 are left.
        assert!(q.charge(at(0), "a", &s2, 9_700).is_ok());
        let r = q.charge(at(0), "a", &s2, 1).unwrap_err();
        assert!(r.message().starts_with("SAE a is over"), "{}", r.message());
        // A second later the pair has 100 bytes again, the master 10,000.
        assert!(q.charge(at(1000), "a", &s1, 100).is_ok());
        assert!(q.charge(at(1000), "a", &s1, 1).is_err());
        // Multicast: every (master, slave) pair named must pass.
        assert!(q
            .charge(at(1000), "a", &["s2".into(), "s1".into()], 1)
            .is_err());
        assert!(q.charge(at(1000), "a", &s2, 1000).is_ok());
        // Over the pair's burst in one request: 400.
        let r = q.charge(at(9000), "a", &s1, 301).unwrap_err();
        assert_eq!(r.http_status(), 400);
        assert!(
            r.message().contains("burst limit of 300"),
            "{}",
            r.message()
        );
    }

    #[test]
    fn a_pair_daily_quota_needs_no_rate() {
        let mut c = QuotaConfig::default();
        pair(
            &mut c,
            "a",
            "s",
            SaeLimit {
                daily_bytes: Some(1000),
                ..SaeLimit::default()
            },
        );
        c.validate().unwrap();
        let mut q = Quotas::new(c);
        assert!(charge(&mut q, 0, "a", 1000).is_ok());
        let r = charge(&mut q, 1, "a", 1).unwrap_err();
        assert!(r.message().contains("daily key quota"), "{}", r.message());
        assert!(charge(&mut q, 1, "b", 1 << 20).is_ok());
    }

    #[test]
    fn priority_comes_from_the_pair_then_the_sae_then_normal() {
        let mut c = QuotaConfig {
            default: Some(SaeLimit {
                priority: Some(Priority::Low),
                ..SaeLimit::default()
            }),
            ..QuotaConfig::default()
        };
        c.sae.insert(
            "vip".into(),
            SaeLimit {
                priority: Some(Priority::High),
                ..SaeLimit::default()
            },
        );
        c.sae.insert("plain".into(), rate(10, None, None));
        pair(
            &mut c,
            "vip",
            "bulk",
            SaeLimit {
                priority: Some(Priority::Low),
                ..SaeLimit::default()
            },
        );
        assert_eq!(c.priority_of("vip", "x"), Priority::High);
        assert_eq!(c.priority_of("vip", "bulk"), Priority::Low);
        assert_eq!(c.priority_of("anyone", "x"), Priority::Low);
        // An SAE's own entry replaces the default entirely.
        assert_eq!(c.priority_of("plain", "x"), Priority::Normal);
        assert_eq!(
            QuotaConfig::default().priority_of("a", "b"),
            Priority::Normal
        );
        // Reserves: high none; defaults normal 0 %, low 25 %.
        assert_eq!(c.reserve_bytes(Priority::High, 4096), 0);
        assert_eq!(c.reserve_bytes(Priority::Normal, 4096), 0);
        assert_eq!(c.reserve_bytes(Priority::Low, 4096), 1024);
        assert_eq!(c.reserve_bytes(Priority::Low, u64::MAX), u64::MAX / 4);
    }

    #[test]
    fn overrides_replace_the_entries_they_name() {
        let mut file = cfg(10, None, None);
        file.sae.insert("b".into(), rate(20, None, None));
        pair(&mut file, "a", "s", rate(5, None, None));
        let mut o = QuotaOverrides::default();
        o.sae.insert("a".into(), rate(99, None, None));
        o.pair
            .entry("b".into())
            .or_default()
            .insert("s".into(), rate(7, None, None));
        let c = file.with_overrides(&o);
        assert_eq!(c.limit_of("a").unwrap().bytes_per_second, Some(99));
        assert_eq!(c.limit_of("b").unwrap().bytes_per_second, Some(20));
        assert_eq!(c.pair_limit("a", "s").unwrap().bytes_per_second, Some(5));
        assert_eq!(c.pair_limit("b", "s").unwrap().bytes_per_second, Some(7));
    }

    #[test]
    fn bad_limits_are_config_errors() {
        assert!(cfg(0, None, None).validate().is_err());
        assert!(cfg(MAX_LIMIT_BYTES + 1, None, None).validate().is_err());
        assert!(cfg(1, Some(0), None).validate().is_err());
        assert!(cfg(0, Some(100), None).validate().is_ok());
        assert!(cfg(1, None, Some(MAX_LIMIT_BYTES + 1)).validate().is_err());
        let no_rate = SaeLimit {
            burst_bytes: Some(10),
            ..SaeLimit::default()
        };
        let err = no_rate.validate("x").unwrap_err().to_string();
        assert!(err.contains("burst_bytes needs bytes_per_second"), "{err}");
        let mut c = QuotaConfig::default();
        pair(&mut c, "m", "s", rate(1, Some(MAX_LIMIT_BYTES + 1), None));
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("quotas.pair.\"m\".\"s\"") && err.contains("burst_bytes"),
            "{err}"
        );
        for (normal, low, field) in [(0, 101, "low_percent"), (30, 20, "normal_percent")] {
            let c = QuotaConfig {
                reserve: Reserve {
                    normal_percent: normal,
                    low_percent: low,
                },
                ..QuotaConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn the_toml_syntax_reads_back() {
        let c: QuotaConfig = toml::from_str(
            r#"
            default = { bytes_per_second = 1000 }
            [sae."sae-1"]
            bytes_per_second = 64
            priority = "high"
            [pair."sae-1"."sae-2"]
            bytes_per_second = 8
            burst_bytes = 32
            priority = "low"
            [reserve]
            low_percent = 40
            normal_percent = 10
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.pair_limit("sae-1", "sae-2").unwrap().burst(), Some(32));
        assert_eq!(c.priority_of("sae-1", "sae-2"), Priority::Low);
        assert_eq!(c.reserve.normal_percent, 10);
        assert!(toml::from_str::<QuotaConfig>("[reserve]\nlow_percent = -1").is_err());
        assert!(toml::from_str::<QuotaConfig>("[sae.x]\npriority = \"urgent\"").is_err());
        let back: QuotaConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
