//! Herald's metrics: handles from the `metrics` crate, recorded into this instance's own
//! Prometheus recorder (`metrics-exporter-prometheus`) and rendered by Herald's own
//! `GET /metrics` route (the exporter's HTTP listener is not used).
//!
//! The recorder belongs to the instance rather than being installed process-wide, so
//! several instances in one process (the test suite runs many) keep their own figures; the
//! handles are registered once here and recorded through directly, which is also the
//! cheapest way to record. Gauges that have an owner (held requests, the pool, the queue)
//! are read from it when `/metrics` is scraped.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Buckets for latencies, in seconds: 1 ms to 1 day (webhook retries run for days).
const LATENCY_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    600.0, 3600.0, 86400.0,
];

/// The metrics of one Herald instance.
pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Events committed through this instance.
    pub events_ingested: Counter,
    /// Reads the stream hub ran to serve waiters (one per stream per wake-up).
    pub hub_reads: Counter,
    /// Commits of this instance handed to waiting streams without a read.
    pub hub_pushes: Counter,
    /// Long-polls answered with events.
    pub longpolls_answered: Counter,
    /// Long-polls whose wait ran out.
    pub longpolls_timed_out: Counter,
    /// Long-polls and SSE streams refused because `HERALD_MAX_WAITERS` was reached.
    pub longpolls_rejected: Counter,
    /// Held requests freed because the client went away.
    pub waiters_disconnected: Counter,
    /// NOTIFY messages sent.
    pub notifications_sent: Counter,
    /// Stream-change hints not sent because no other instance was there to hear them.
    pub hints_unsent_alone: Counter,
    /// Stream-change hints received through LISTEN.
    pub notifications_received: Counter,
    /// Times the LISTEN connection was (re)established.
    pub listener_connects: Counter,
    /// Events deleted by retention.
    pub events_purged: Counter,
    /// Failed authentications answered 401/403.
    pub auth_refused: Counter,
    /// Failed authentications answered 429 (over the address's allowance).
    pub auth_throttled: Counter,
    /// Webhook deliveries that succeeded.
    pub deliveries_succeeded: Counter,
    /// Webhook attempts that failed and were scheduled again.
    pub deliveries_retried: Counter,
    /// Deliveries that failed for good.
    pub deliveries_failed: Counter,
    /// How long webhook attempts took, whatever their outcome.
    pub attempt_duration: Histogram,
    /// From an event's commit to its successful webhook delivery (not for replays).
    pub publish_to_delivery: Histogram,
    /// From an event's commit to the answer of a long-poll that was waiting for it.
    pub publish_to_answer: Histogram,
    /// Console live feeds (`GET /v1/deliveries/changes`) open now.
    pub console_feeds: Gauge,
    /// SSE streams open now.
    pub sse: OpenCount,
    /// WebSockets open now.
    pub ws_sockets: OpenCount,
    /// Streams followed over WebSockets now.
    pub ws_subscriptions: OpenCount,
    waiters: Gauge,
    held: Gauge,
    watched_streams: Gauge,
    due: Gauge,
    oldest_due_age: Gauge,
    pool_size: Gauge,
    pool_available: Gauge,
    pool_waiting: Gauge,
    pool_max: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A count of things open now, published as a gauge.
pub struct OpenCount {
    open: std::sync::atomic::AtomicUsize,
    gauge: Gauge,
}

impl std::fmt::Debug for OpenCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCount")
            .field("open", &self.get())
            .finish_non_exhaustive()
    }
}

impl OpenCount {
    fn new(gauge: Gauge) -> Self {
        Self {
            open: std::sync::atomic::AtomicUsize::new(0),
            gauge,
        }
    }

    /// One more is open.
    pub fn opened(&self) {
        let open = self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.gauge.set(open as f64);
    }

    /// One has closed.
    pub fn closed(&self) {
        let open = self
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(1);
        self.gauge.set(open as f64);
    }

    /// How many are open.
    pub fn get(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Adds one to a counter.
pub fn inc(counter: &Counter) {
    counter.increment(1);
}

/// What the owners of the scrape-time gauges report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Long-polls and SSE streams held open now.
    pub waiters: usize,
    /// Streams with at least one held request.
    pub watched_streams: usize,
    /// Pending deliveries whose time has come, if the database answered.
    pub due: Option<i64>,
    /// Age of the oldest of them, in seconds.
    pub oldest_due_age_seconds: Option<f64>,
    /// Pool: connections open, idle, requests waiting for one, and the maximum.
    pub pool: (usize, usize, usize, usize),
}

impl Metrics {
    /// Registers every metric with a new recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
            recorder.register_counter(&Key::from_static_name(name), &METADATA)
        };
        let labelled =
            |name: &'static str, help: &'static str, label: (&'static str, &'static str)| {
                recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
                let key = Key::from_parts(name, vec![Label::from_static_parts(label.0, label.1)]);
                recorder.register_counter(&key, &METADATA)
            };
        let gauge = |name: &'static str, help: &'static str| {
            recorder.describe_gauge(KeyName::from_const_str(name), None, help.into());
            recorder.register_gauge(&Key::from_static_name(name), &METADATA)
        };
        let pool_gauge = |state: &'static str| {
            let name = "herald_db_pool_connections";
            recorder.describe_gauge(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(
                    "Database pool: open connections, idle ones, requests waiting, and the maximum.",
                ),
            );
            let key = Key::from_parts(name, vec![Label::from_static_parts("state", state)]);
            recorder.register_gauge(&key, &METADATA)
        };
        let histogram = |name: &'static str, help: &'static str| {
            recorder.describe_histogram(
                KeyName::from_const_str(name),
                Some(metrics::Unit::Seconds),
                help.into(),
            );
            recorder.register_histogram(&Key::from_static_name(name), &METADATA)
        };
        let auth_failures = "Failed authentications (bad keys, sessions, CSRF tokens, sign-ins): refused, or throttled per client address.";
        let outcomes = "Webhook outcomes: deliveries that succeeded, attempts that will be retried, deliveries that failed for good.";
        Self {
            events_ingested: counter(
                "herald_events_ingested_total",
                "Events committed through this instance.",
            ),
            hub_reads: counter(
                "herald_hub_reads_total",
                "Database reads the stream hub ran to wake waiters.",
            ),
            hub_pushes: counter(
                "herald_hub_pushes_total",
                "Commits of this instance handed to waiting streams without a database read.",
            ),
            longpolls_answered: counter(
                "herald_longpolls_answered_total",
                "Long-polls answered with events.",
            ),
            longpolls_timed_out: counter(
                "herald_longpolls_timed_out_total",
                "Long-polls whose wait ran out.",
            ),
            longpolls_rejected: counter(
                "herald_longpolls_rejected_total",
                "Long-polls and SSE streams refused past HERALD_MAX_WAITERS.",
            ),
            waiters_disconnected: counter(
                "herald_waiters_disconnected_total",
                "Held requests freed because the client went away.",
            ),
            notifications_sent: counter("herald_notifications_sent_total", "NOTIFY messages sent."),
            hints_unsent_alone: counter(
                "herald_hints_unsent_alone_total",
                "Stream-change hints (one per stream and flush) not sent because no other instance was heard from lately.",
            ),
            notifications_received: counter(
                "herald_notifications_received_total",
                "Stream-change hints received through LISTEN.",
            ),
            listener_connects: counter(
                "herald_listener_connects_total",
                "Times the LISTEN connection was established (more than one: reconnects).",
            ),
            events_purged: counter(
                "herald_events_purged_total",
                "Events deleted because they were older than HERALD_RETENTION.",
            ),
            auth_refused: labelled(
                "herald_auth_failures_total",
                auth_failures,
                ("outcome", "refused"),
            ),
            auth_throttled: labelled(
                "herald_auth_failures_total",
                auth_failures,
                ("outcome", "throttled"),
            ),
            deliveries_succeeded: labelled(
                "herald_webhook_outcomes_total",
                outcomes,
                ("outcome", "succeeded"),
            ),
            deliveries_retried: labelled(
                "herald_webhook_outcomes_total",
                outcomes,
                ("outcome", "retry"),
            ),
            deliveries_failed: labelled(
                "herald_webhook_outcomes_total",
                outcomes,
                ("outcome", "failed"),
            ),
            attempt_duration: histogram(
                "herald_webhook_attempt_duration_seconds",
                "How long webhook attempts took, whatever their outcome.",
            ),
            publish_to_delivery: histogram(
                "herald_publish_to_delivery_seconds",
                "From an event's commit to its successful webhook delivery (replays excluded).",
            ),
            publish_to_answer: histogram(
                "herald_publish_to_answer_seconds",
                "From an event's commit to the answer of a long-poll that was waiting for it.",
            ),
            console_feeds: gauge(
                "herald_console_feeds",
                "Console live feeds (GET /v1/deliveries/changes) open now: one per browser.",
            ),
            sse: OpenCount::new(gauge("herald_sse_streams", "SSE streams open now.")),
            ws_sockets: OpenCount::new(gauge("herald_ws_sockets", "WebSockets open now.")),
            ws_subscriptions: OpenCount::new(gauge(
                "herald_ws_subscriptions",
                "Streams followed over WebSockets now.",
            )),
            waiters: gauge(
                "herald_waiters",
                "Long-polls, SSE streams and WebSocket subscriptions held open now.",
            ),
            held: gauge(
                "herald_held_longpolls",
                "Long-polls held open now, waiting for events.",
            ),
            watched_streams: gauge(
                "herald_watched_streams",
                "Streams with at least one held long-poll or SSE stream.",
            ),
            due: gauge(
                "herald_deliveries_due",
                "Pending webhook deliveries whose time has come (the due backlog).",
            ),
            oldest_due_age: gauge(
                "herald_oldest_due_delivery_age_seconds",
                "How long the oldest due delivery has been waiting (0 when none is due).",
            ),
            pool_size: pool_gauge("open"),
            pool_available: pool_gauge("idle"),
            pool_waiting: pool_gauge("waiting"),
            pool_max: pool_gauge("max"),
            recorder,
        }
    }

    /// The exposition text, after setting the scrape-time gauges.
    pub fn render(&self, gauges: Gauges) -> String {
        let others = self.sse.get() + self.ws_subscriptions.get();
        self.waiters.set(gauges.waiters as f64);
        self.held.set(gauges.waiters.saturating_sub(others) as f64);
        self.watched_streams.set(gauges.watched_streams as f64);
        if let Some(due) = gauges.due {
            self.due.set(due as f64);
            self.oldest_due_age
                .set(gauges.oldest_due_age_seconds.unwrap_or(0.0));
        }
        let (size, available, waiting, max) = gauges.pool;
        self.pool_size.set(size as f64);
        self.pool_available.set(available as f64);
        self.pool_waiting.set(waiting as f64);
        self.pool_max.set(max as f64);
        self.recorder.handle().render()
    }

    /// Folds recorded histogram values into their buckets. The recorder keeps raw values
    /// until then, so this runs every few seconds whether or not anyone scrapes.
    pub async fn run_upkeep(
        self: std::sync::Arc<Self>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => self.recorder.handle().run_upkeep(),
            }
        }
    }
}
