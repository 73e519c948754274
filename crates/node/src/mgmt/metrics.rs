//! Prometheus metrics of one node, in the text exposition format (`GET /metrics` on the
//! management listener), built with the `prometheus-client` crate.
//!
//! Two kinds of metric: those the node counts as events happen ([`Metrics`]: ETSI 014 requests
//! and their latency, refusals, store commit latency, link key intake per link, management
//! actions), and those read from the key manager's snapshot at scrape time ([`encode`]: link
//! buffers, pools, relays, keys served). Names follow Prometheus conventions: a `kagi_` prefix,
//! base units in the name (`_bytes`, `_seconds`), `_total` on counters.

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use kagi_km::KmStatus;

use super::ops::Ops;

type Labels = Vec<(String, String)>;
type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Metrics the node counts as events happen.
#[derive(Debug, Clone)]
pub struct Metrics {
    etsi_requests: Family<Labels, Counter>,
    etsi_latency: HistFamily,
    refusals: Family<Labels, Counter>,
    store_commit: Histogram,
    link_key_in: Family<Labels, Counter>,
    audit_events: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self {
            etsi_requests: Family::default(),
            etsi_latency: Family::new_with_constructor(latency_histogram),
            refusals: Family::default(),
            store_commit: latency_histogram(),
            link_key_in: Family::default(),
            audit_events: Family::default(),
        }
    }

    /// One ETSI 014 request answered: `endpoint` (`status`, `enc_keys`, `dec_keys`, `other`),
    /// HTTP `status`, time from request head to answer.
    pub fn etsi_request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.etsi_requests
            .get_or_create(&labels(&[
                ("endpoint", endpoint),
                ("status", &status.to_string()),
            ]))
            .inc();
        self.etsi_latency
            .get_or_create(&labels(&[("endpoint", endpoint)]))
            .observe(seconds);
    }

    /// A refusal, by reason class.
    pub fn refusal(&self, reason: &str) {
        self.refusals
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// A store batch became durable `seconds` after the core asked for it.
    pub fn store_commit(&self, seconds: f64) {
        self.store_commit.observe(seconds);
    }

    /// Link key arrived from the link to `peer`.
    pub fn link_key_in(&self, peer: &str, bytes: u64) {
        self.link_key_in
            .get_or_create(&labels(&[("peer", peer)]))
            .inc_by(bytes);
    }

    /// A management action was audited.
    pub fn audit_event(&self, action: &str, outcome: &str) {
        self.audit_events
            .get_or_create(&labels(&[("action", action), ("outcome", outcome)]))
            .inc();
    }
}

fn gauge_family() -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    Family::default()
}

/// The whole exposition for one scrape: event metrics from `ops`, the rest from `km` (absent
/// when the key manager did not answer; `kagi_up` is then 0).
pub fn encode(ops: &Ops, km: Option<&KmStatus>) -> String {
    let m = &ops.metrics;
    let mut r = Registry::with_prefix("kagi");
    r.register(
        "up",
        "1 when the key manager answered this scrape",
        ConstGauge::new(i64::from(km.is_some())),
    );
    r.register_with_unit(
        "uptime",
        "Time since the node process started",
        Unit::Seconds,
        ConstGauge::new(ops.uptime().as_secs_f64()),
    );
    r.register(
        "node_draining",
        "1 while an operator drains the node (new enc_keys refused)",
        ConstGauge::new(i64::from(ops.draining())),
    );
    r.register(
        "node_tampered",
        "1 once a tamper signal fenced the node (keys zeroized, every request refused)",
        ConstGauge::new(i64::from(ops.tampered().is_some())),
    );
    r.register(
        "audit_trail_writable",
        "1 while the audit trail can be written (key delivery stops when it cannot)",
        ConstGauge::new(i64::from(ops.trail().is_some_and(|t| t.fault().is_none()))),
    );
    r.register_with_unit(
        "live_key",
        "Bytes held by live key objects in this node process",
        Unit::Bytes,
        ConstGauge::new(kagi_keymat::live_bytes() as i64),
    );
    r.register(
        "etsi014_requests",
        "ETSI GS QKD 014 requests answered, by endpoint and HTTP status",
        m.etsi_requests.clone(),
    );
    r.register_with_unit(
        "etsi014_request_duration",
        "Time to answer an ETSI GS QKD 014 request, by endpoint",
        Unit::Seconds,
        m.etsi_latency.clone(),
    );
    r.register(
        "refusals",
        "Requests refused, by reason (no_key, draining, bad_request, unauthorized, forbidden, unavailable)",
        m.refusals.clone(),
    );
    r.register_with_unit(
        "store_commit_duration",
        "Time from the key manager asking for a store batch to the batch being durable",
        Unit::Seconds,
        m.store_commit.clone(),
    );
    r.register_with_unit(
        "link_key_in",
        "Link key received from each QKD link",
        Unit::Bytes,
        m.link_key_in.clone(),
    );
    r.register(
        "audit_events",
        "Management actions audited, by action and outcome",
        m.audit_events.clone(),
    );
    r.register(
        "peers_up",
        "Other nodes whose peer channel is up",
        ConstGauge::new(ops.peers_up().len() as i64),
    );
    if let Some(km) = km {
        let s = &km.stats;
        r.register(
            "node_fenced",
            "1 while the key manager is fenced after a storage fault",
            ConstGauge::new(i64::from(km.fenced)),
        );
        r.register(
            "link_adverts_signed",
            "1 when link-state adverts are signed and only adverts signed by their origin are accepted; 0: any node on the way can forge them",
            ConstGauge::new(i64::from(km.adverts_signed)),
        );
        let buf = gauge_family();
        let rate = gauge_family();
        let up = gauge_family();
        let service = gauge_family();
        for l in &km.links {
            let (_, bps) = ops.link_intake(&l.peer);
            for (dir, bytes) in [("tx", l.tx_bytes), ("rx", l.rx_bytes)] {
                let lab = labels(&[("peer", &l.peer), ("direction", dir)]);
                buf.get_or_create(&lab).set(bytes as f64);
                // Each block is split in two halves, one per direction.
                rate.get_or_create(&lab).set(bps / 2.0);
            }
            let lab = labels(&[("peer", &l.peer)]);
            up.get_or_create(&lab).set(f64::from(u8::from(l.peer_up)));
            service
                .get_or_create(&lab)
                .set(f64::from(u8::from(l.in_service)));
        }
        r.register_with_unit(
            "link_buffer",
            "Unspent link key per link and direction (tx: this end spends it)",
            Unit::Bytes,
            buf,
        );
        r.register(
            "link_key_rate_bytes_per_second",
            "Link key intake over the last 10 s per link and direction",
            rate,
        );
        r.register(
            "link_up",
            "1 when the peer at the other end is reachable",
            up,
        );
        r.register(
            "link_in_service",
            "1 unless an operator took the link out of service",
            service,
        );
        let pool = gauge_family();
        let inflight = gauge_family();
        for p in &km.pools {
            for (dir, bytes) in [("out", p.out_bytes), ("in", p.in_bytes)] {
                pool.get_or_create(&labels(&[("peer", &p.peer), ("direction", dir)]))
                    .set(bytes as f64);
            }
            inflight
                .get_or_create(&labels(&[("peer", &p.peer)]))
                .set(p.relays_in_flight as f64);
        }
        r.register_with_unit(
            "pool",
            "End-to-end key per destination (out: for masters here; in: relayed from there)",
            Unit::Bytes,
            pool,
        );
        r.register(
            "relays_in_flight",
            "Relays started towards a destination and not yet acknowledged",
            inflight,
        );
        for (name, help, v) in [
            ("relays_started", "Relays started here", s.relays_started),
            (
                "relays_acked",
                "Relays acknowledged by their destination",
                s.relays_acked,
            ),
            (
                "relays_abandoned",
                "Relays abandoned: timed out, aborted on their path, or lost with a node that restarted",
                s.relays_abandoned,
            ),
            (
                "peer_stores_replaced",
                "Peers seen to come back with another store (database lost, replaced or rolled back)",
                s.peer_stores_replaced,
            ),
            (
                "rollbacks_detected",
                "Times this node found its own store older than what a peer had seen",
                s.rollbacks_detected,
            ),
            (
                "dec_keys_refused_unreconciled",
                "Slave key requests refused until a restarted node has reconciled with every other node",
                s.refused_unreconciled,
            ),
            (
                "slave_keys_discarded",
                "Keys held for slaves discarded because the store was found rolled back",
                s.slave_keys_discarded,
            ),
            (
                "slave_refetches",
                "Keys served again to a slave within its delivery grace (its reply may have been lost)",
                s.slave_refetches,
            ),
            (
                "slave_graces_ended",
                "Keys erased when the delivery grace of their last slave ended",
                s.graces_ended,
            ),
            (
                "slave_keys_expired",
                "Keys held for slaves that a slave never fetched within their lifetime (orphans), erased for it",
                s.slave_keys_expired,
            ),
            (
                "slave_keys_revoked",
                "Keys held for slaves that their origin revoked (its master was never answered)",
                s.slave_keys_revoked,
            ),
            (
                "revokes_resent",
                "Revokes sent again to a slave node that had not acknowledged them",
                s.revokes_resent,
            ),
            (
                "revokes_given_up",
                "Revocations given up unacknowledged (too many waiting; the slave key lifetime ends them)",
                s.revokes_given_up,
            ),
            (
                "stale_dropped",
                "Relays or assignments dropped as not of their origin's current run",
                s.stale_dropped,
            ),
            (
                "pool_chunks_missing",
                "Pool chunks named by an assignment that this node no longer held",
                s.pool_chunks_missing,
            ),
            (
                "relay_hops_forwarded",
                "Relay hops forwarded for other nodes",
                s.hops_forwarded,
            ),
            (
                "relays_received",
                "Relayed keys received as destination",
                s.relays_received,
            ),
            (
                "relay_replays_rejected",
                "Relay hops refused as replays",
                s.replays_rejected,
            ),
            (
                "relay_bad_tags",
                "Relay hops or assignments refused for a bad tag",
                s.bad_tags,
            ),
            (
                "link_blocks_dropped",
                "Link key blocks dropped because the buffer was full",
                s.link_blocks_dropped,
            ),
            (
                "relay_shares_manipulated",
                "Multi-path relays to here whose shares failed the manipulation check at least once",
                s.shares_manipulated,
            ),
            (
                "link_adverts_rejected",
                "Link-state adverts dropped as invalid (origin outside the topology, or a link it does not have)",
                s.link_adverts_rejected,
            ),
            (
                "link_adverts_unauthenticated",
                "Link-state adverts dropped for a missing or bad signature of their origin",
                s.link_adverts_unauthenticated,
            ),
            (
                "link_adverts_replayed",
                "Signed link-state adverts dropped as older than the newest accepted from their silent origin (replayed, or the origin's clock set back)",
                s.link_adverts_replayed,
            ),
            (
                "relay_manipulation_aborts",
                "Multi-path relays to here aborted because no set of shares passed the manipulation check",
                s.manipulation_aborts,
            ),
        ] {
            r.register(name, help, ConstCounter::new(v));
        }
        r.register_with_unit(
            "link_key_discarded",
            "Unspent link key discarded in reconciliation (lost or rolled-back stores)",
            Unit::Bytes,
            ConstCounter::new(s.link_key_discarded),
        );
        r.register_with_unit(
            "pool_key_discarded",
            "Out-pool key dropped because the slave's node reported it no longer held it",
            Unit::Bytes,
            ConstCounter::new(s.pool_key_discarded),
        );
        r.register_with_unit(
            "link_key_spent",
            "Link key spent on relay hops (pads and MAC keys)",
            Unit::Bytes,
            ConstCounter::new(s.link_key_spent),
        );
        let served: Family<Labels, Counter> = Family::default();
        served
            .get_or_create(&labels(&[("side", "master")]))
            .inc_by(s.keys_served_master);
        served
            .get_or_create(&labels(&[("side", "slave")]))
            .inc_by(s.keys_served_slave);
        r.register("keys_served", "Keys delivered to SAEs, by side", served);
        let granted: Family<Labels, Counter> = Family::default();
        let refused: Family<Labels, Counter> = Family::default();
        let limited: Family<Labels, Counter> = Family::default();
        for (sae, u) in &km.sae_usage {
            let lab = labels(&[("sae", sae)]);
            granted.get_or_create(&lab).inc_by(u.granted_bytes);
            refused.get_or_create(&lab).inc_by(u.refused_bytes);
            limited.get_or_create(&lab).inc_by(u.refused_requests);
        }
        r.register_with_unit(
            "sae_key_granted",
            "Key granted to each master SAE here",
            Unit::Bytes,
            granted,
        );
        r.register_with_unit(
            "sae_key_refused",
            "Key asked for by each master SAE in requests refused for its rate limit or quota",
            Unit::Bytes,
            refused,
        );
        r.register(
            "sae_rate_limited_requests",
            "enc_keys requests refused for the master SAE's rate limit or quota",
            limited,
        );
    }
    let mut out = String::new();
    if text::encode(&mut out, &r).is_err() {
        return "# error: cannot encode metrics\n".to_owned();
    }
    out
}
