//! Relay-internal events for the audit trail, aggregated so that the trail grows with time, not
//! with traffic: the core counts relays started, forwarded, received, acknowledged, abandoned and
//! aborted, and the hops it refused (bad tags, replays, altered shares) in
//! [`kagi_km::NodeStats`]; the driver writes what changed as one `relay.summary` line at most
//! every [`EVERY`] and when the core stops. A relay of one 4 KiB chunk every millisecond thus
//! costs the trail at most 8,640 summary lines a day, not 86 million.

use std::time::Duration;

use kagi_km::NodeStats;

/// At most one summary line per this period (plus one when the core stops).
pub const EVERY: Duration = Duration::from_secs(10);

/// A counter's name in the line, how to read it, and whether a rise is an integrity alert (the
/// line's outcome is then `alert`).
type Field = (&'static str, fn(&NodeStats) -> u64, bool);

/// The counters summarised.
const FIELDS: &[Field] = &[
    ("started", |s| s.relays_started, false),
    ("multipath", |s| s.multipath_relays_started, false),
    ("forwarded", |s| s.hops_forwarded, false),
    ("received", |s| s.relays_received, false),
    ("acked", |s| s.relays_acked, false),
    ("abandoned", |s| s.relays_abandoned, false),
    ("aborted", |s| s.relays_aborted, false),
    ("hops_expired", |s| s.hops_expired, false),
    ("shares_lost", |s| s.shares_lost, false),
    ("bad_tags", |s| s.bad_tags, true),
    ("replays_rejected", |s| s.replays_rejected, true),
    ("shares_manipulated", |s| s.shares_manipulated, true),
    ("manipulation_aborts", |s| s.manipulation_aborts, true),
    (
        "late_shares_inconsistent",
        |s| s.late_shares_inconsistent,
        true,
    ),
    ("rollbacks_detected", |s| s.rollbacks_detected, true),
];

/// What the last summary line covered.
#[derive(Debug, Default)]
pub struct RelaySummary {
    last: Vec<u64>,
}

impl RelaySummary {
    /// The next line's outcome and detail (`started=3 forwarded=12 ...`, changed counters only),
    /// or `None` when nothing changed since the last call. A core restarted from the store
    /// counts from zero again; call [`Self::restarted`] then.
    pub fn next(&mut self, stats: &NodeStats) -> Option<(&'static str, String)> {
        let now: Vec<u64> = FIELDS.iter().map(|(_, f, _)| f(stats)).collect();
        let mut detail = Vec::new();
        let mut alert = false;
        for (i, (name, _, is_alert)) in FIELDS.iter().enumerate() {
            let d = now[i].saturating_sub(self.last.get(i).copied().unwrap_or(0));
            if d > 0 {
                detail.push(format!("{name}={d}"));
                alert |= is_alert;
            }
        }
        self.last = now;
        (!detail.is_empty()).then(|| (if alert { "alert" } else { "ok" }, detail.join(" ")))
    }

    /// The core was restarted: its counters begin again at zero.
    pub fn restarted(&mut self) {
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_carry_only_what_changed_and_flag_integrity_failures() {
        let mut s = RelaySummary::default();
        let mut st = NodeStats::default();
        assert_eq!(s.next(&st), None, "nothing happened");
        st.relays_started = 3;
        st.relays_acked = 2;
        assert_eq!(s.next(&st), Some(("ok", "started=3 acked=2".into())));
        assert_eq!(s.next(&st), None, "no change, no line");
        st.relays_acked = 3;
        st.bad_tags = 1;
        assert_eq!(s.next(&st), Some(("alert", "acked=1 bad_tags=1".into())));
        s.restarted();
        let fresh = NodeStats {
            hops_forwarded: 5,
            ..NodeStats::default()
        };
        assert_eq!(s.next(&fresh), Some(("ok", "forwarded=5".into())));
    }
}
