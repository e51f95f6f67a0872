//! Process-wide counters, rendered in Prometheus' text format at `GET /metrics`.
//!
//! Plain atomics: nothing here needs labels yet, and a registry crate would add more code
//! than it saves. Gauges that have an owner (held waiters) are read from it at render time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the parts of one Herald instance.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events committed through this instance.
    pub events_ingested: AtomicU64,
    /// Reads the stream hub ran to serve waiters (one per stream per wake-up).
    pub hub_reads: AtomicU64,
    /// Long-polls answered with events.
    pub longpolls_answered: AtomicU64,
    /// Long-polls whose wait ran out.
    pub longpolls_timed_out: AtomicU64,
    /// Long-polls refused because `HERALD_MAX_WAITERS` was reached.
    pub longpolls_rejected: AtomicU64,
    /// Held requests freed because the client went away.
    pub waiters_disconnected: AtomicU64,
    /// NOTIFY messages sent.
    pub notifications_sent: AtomicU64,
    /// Stream-change hints received through LISTEN.
    pub notifications_received: AtomicU64,
    /// Times the LISTEN connection was (re)established.
    pub listener_connects: AtomicU64,
    /// Events deleted by retention.
    pub events_purged: AtomicU64,
    /// Webhook attempts that succeeded.
    pub deliveries_succeeded: AtomicU64,
    /// Webhook attempts that failed and will be retried.
    pub deliveries_retried: AtomicU64,
    /// Deliveries that failed for good.
    pub deliveries_failed: AtomicU64,
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The exposition text, with the gauges given by the caller.
    pub fn render(&self, waiters: usize, watched_streams: usize) -> String {
        let mut out = String::new();
        let counters = [
            (
                "herald_events_ingested_total",
                "Events committed through this instance.",
                &self.events_ingested,
            ),
            (
                "herald_hub_reads_total",
                "Database reads the stream hub ran to wake waiters.",
                &self.hub_reads,
            ),
            (
                "herald_longpolls_answered_total",
                "Long-polls answered with events.",
                &self.longpolls_answered,
            ),
            (
                "herald_longpolls_timed_out_total",
                "Long-polls whose wait ran out.",
                &self.longpolls_timed_out,
            ),
            (
                "herald_longpolls_rejected_total",
                "Long-polls refused past HERALD_MAX_WAITERS.",
                &self.longpolls_rejected,
            ),
            (
                "herald_waiters_disconnected_total",
                "Held requests freed because the client went away.",
                &self.waiters_disconnected,
            ),
            (
                "herald_notifications_sent_total",
                "NOTIFY messages sent.",
                &self.notifications_sent,
            ),
            (
                "herald_notifications_received_total",
                "Stream-change hints received through LISTEN.",
                &self.notifications_received,
            ),
            (
                "herald_deliveries_succeeded_total",
                "Webhook deliveries that succeeded.",
                &self.deliveries_succeeded,
            ),
            (
                "herald_delivery_retries_total",
                "Webhook attempts that failed and were scheduled again.",
                &self.deliveries_retried,
            ),
            (
                "herald_deliveries_failed_total",
                "Webhook deliveries that failed for good.",
                &self.deliveries_failed,
            ),
            (
                "herald_events_purged_total",
                "Events deleted because they were older than HERALD_RETENTION.",
                &self.events_purged,
            ),
            (
                "herald_listener_connects_total",
                "Times the LISTEN connection was established.",
                &self.listener_connects,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let gauges = [
            (
                "herald_waiters",
                "Long-polls and SSE streams held open now.",
                waiters,
            ),
            (
                "herald_watched_streams",
                "Streams with at least one held request.",
                watched_streams,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
