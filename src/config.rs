//! Settings, read once from the environment at start and validated there.
//!
//! Every setting is a `HERALD_*` variable (plus `DATABASE_URL`); the README's settings table
//! is the contract for their names and defaults. A bad value stops Herald with a message that names the
//! variable and what it expected. Nothing here is global: `Settings` is passed in, and tests
//! build their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::ApiKeySecret;
use crate::domain::destination::DestinationGuard;
use crate::domain::retry::RetrySchedule;
use crate::domain::units::{parse_bytes, parse_duration};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that may hold a credential: `Debug` shows only that it is set.
#[derive(Clone)]
pub struct Redacted(pub String);

impl Redacted {
    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Everything Herald can be told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HERALD_LISTEN`: address to serve.
    pub listen: SocketAddr,
    /// `DATABASE_URL`: unset means "start the embedded PostgreSQL". It may hold a
    /// password, so it never shows in `Debug` output.
    pub database_url: Option<Redacted>,
    /// `HERALD_DATA_DIR`: where the embedded cluster lives.
    pub data_dir: PathBuf,
    /// `HERALD_ADMIN_KEY`: bootstrap admin key.
    pub admin_key: Option<ApiKeySecret>,
    /// `HERALD_MAX_PAYLOAD`: largest accepted event payload, in bytes.
    pub max_payload: usize,
    /// `HERALD_MAX_BATCH_BYTES`: largest accepted body of `POST /v1/events/batch`.
    pub max_batch_bytes: usize,
    /// `HERALD_DB_POOL_SIZE`: pooled database connections per instance.
    pub db_pool_size: usize,
    /// `HERALD_DB_TIMEOUT`: how long a request waits for a database connection (or to
    /// connect) before it is answered `503`.
    pub db_timeout: Duration,
    /// `HERALD_BODY_TIMEOUT`: how long a request body may take to arrive, start to end;
    /// slower bodies are answered `408` and the connection closed.
    pub body_timeout: Duration,
    /// `HERALD_LONGPOLL_DEFAULT_WAIT`: how long a poll without `wait` is held.
    pub longpoll_default_wait: Duration,
    /// `HERALD_LONGPOLL_MAX_WAIT`: the longest hold; larger waits are clamped to it.
    pub longpoll_max_wait: Duration,
    /// `HERALD_MAX_WAITERS`: held long-polls and SSE streams per instance; beyond, `503`.
    pub max_waiters: usize,
    /// `HERALD_MAX_WAITERS_PER_KEY`: held requests one API key may have open per instance,
    /// unless the key has its own `max_held`.
    pub max_waiters_per_key: usize,
    /// `HERALD_LONGPOLL_FALLBACK_INTERVAL`: how often watched streams are re-checked in
    /// case a notification was lost.
    pub fallback_interval: Duration,
    /// `HERALD_SSE_HEARTBEAT`: comment line interval on idle SSE streams.
    pub sse_heartbeat: Duration,
    /// `HERALD_SSE_MAX_LIFETIME`: SSE connections are closed after this long, so that
    /// clients reconnect (and rebalance across instances).
    pub sse_max_lifetime: Duration,
    /// `HERALD_WS_PING`: how often an idle WebSocket is pinged; one that has sent nothing
    /// (not even a pong) for two of these is closed.
    pub ws_ping: Duration,
    /// `HERALD_WS_MAX_LIFETIME`: WebSockets are closed after this long (1001, going away),
    /// so that clients reconnect (and rebalance across instances).
    pub ws_max_lifetime: Duration,
    /// `HERALD_WS_MAX_SUBSCRIPTIONS`: streams one WebSocket may follow at once.
    pub ws_max_subscriptions: usize,
    /// `HERALD_WS_MAX_QUEUE`: messages queued for a WebSocket that does not read them;
    /// beyond, it is closed (4008) and resumes from its cursors when it reconnects.
    pub ws_max_queue: usize,
    /// `HERALD_RETRY_SCHEDULE`: delays between webhook attempts.
    pub retry_schedule: RetrySchedule,
    /// `HERALD_DELIVERY_TIMEOUT`: per webhook attempt.
    pub delivery_timeout: Duration,
    /// `HERALD_DISABLE_AFTER`: an endpoint with no success for this long is disabled.
    pub disable_after: Duration,
    /// `HERALD_DELIVERY_CONCURRENCY`: attempts in flight per instance; 0 sends none.
    pub delivery_concurrency: usize,
    /// `HERALD_ALLOWED_DESTINATIONS`: ranges webhooks may reach despite the guard.
    pub destinations: DestinationGuard,
    /// `HERALD_TRUSTED_PROXIES`: proxies whose forwarded client addresses are believed.
    pub trusted_proxies: crate::throttle::TrustedProxies,
    /// `HERALD_FORWARDED_HEADER`: the header those proxies write the client address into.
    pub forwarded_header: crate::throttle::ForwardedHeader,
    /// `HERALD_RETENTION`: events older than this are purged.
    pub retention: Duration,
    /// `HERALD_HTTP_WORKERS`: HTTP worker threads (default: one per CPU core).
    pub http_workers: Option<usize>,
    /// `HERALD_LOG_FORMAT`.
    pub log_format: LogFormat,
}

/// A setting that could not be used, naming the variable and what it expected.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What was wrong and what was expected.
    pub problem: String,
}

impl Settings {
    /// Reads settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, which returns a variable's value if it is set.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.trim().is_empty());
        fn parse_with<T>(
            raw: Option<String>,
            var: &'static str,
            default: &str,
            f: impl Fn(&str) -> Result<T, String>,
        ) -> Result<T, ConfigError> {
            let raw = raw.unwrap_or_else(|| default.to_owned());
            f(&raw).map_err(|problem| ConfigError { var, problem })
        }
        macro_rules! parse {
            ($var:literal, $default:literal, $f:expr) => {
                parse_with(get($var), $var, $default, $f)
            };
        }

        let listen = parse!("HERALD_LISTEN", "127.0.0.1:8080", |raw| {
            raw.parse::<SocketAddr>().map_err(|_| {
                format!("expected an address like 127.0.0.1:8080 or [::]:8080, got {raw:?}")
            })
        })?;
        let admin_key = get("HERALD_ADMIN_KEY")
            .map(|raw| ApiKeySecret::parse(raw.trim()))
            .transpose()
            .map_err(|problem| ConfigError {
                var: "HERALD_ADMIN_KEY",
                problem,
            })?;
        let max_payload = parse!("HERALD_MAX_PAYLOAD", "256KiB", parse_bytes)?;
        if max_payload == 0 {
            return Err(ConfigError {
                var: "HERALD_MAX_PAYLOAD",
                problem: "must be more than 0 bytes".into(),
            });
        }
        let max_batch_bytes = parse!("HERALD_MAX_BATCH_BYTES", "32MiB", parse_bytes)?;
        let db_pool_size = parse!("HERALD_DB_POOL_SIZE", "16", |raw| {
            match raw.trim().parse::<usize>() {
                Ok(n) if (2..=1000).contains(&n) => Ok(n),
                _ => Err(format!("expected a number from 2 to 1000, got {raw:?}")),
            }
        })?;
        let db_timeout = parse!("HERALD_DB_TIMEOUT", "5s", parse_duration)?;
        let body_timeout = parse!("HERALD_BODY_TIMEOUT", "30s", parse_duration)?;
        if body_timeout.is_zero() {
            return Err(ConfigError {
                var: "HERALD_BODY_TIMEOUT",
                problem: "must be more than 0".into(),
            });
        }
        let longpoll_default_wait = parse!("HERALD_LONGPOLL_DEFAULT_WAIT", "25s", parse_duration)?;
        let longpoll_max_wait = parse!("HERALD_LONGPOLL_MAX_WAIT", "55s", parse_duration)?;
        if longpoll_max_wait.is_zero() || longpoll_max_wait > Duration::from_secs(3600) {
            return Err(ConfigError {
                var: "HERALD_LONGPOLL_MAX_WAIT",
                problem: "must be between 1ms and 1h".into(),
            });
        }
        if longpoll_default_wait > longpoll_max_wait {
            return Err(ConfigError {
                var: "HERALD_LONGPOLL_DEFAULT_WAIT",
                problem: format!(
                    "must not exceed HERALD_LONGPOLL_MAX_WAIT ({}s)",
                    longpoll_max_wait.as_secs_f64()
                ),
            });
        }
        let max_waiters = parse!("HERALD_MAX_WAITERS", "50000", |raw| {
            raw.trim()
                .parse::<usize>()
                .map_err(|_| format!("expected a whole number, got {raw:?}"))
        })?;
        let max_waiters_per_key = parse!("HERALD_MAX_WAITERS_PER_KEY", "10000", |raw| {
            raw.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("expected a whole number above 0, got {raw:?}"))
        })?;
        let fallback_interval = parse!("HERALD_LONGPOLL_FALLBACK_INTERVAL", "1s", parse_duration)?;
        let sse_heartbeat = parse!("HERALD_SSE_HEARTBEAT", "15s", parse_duration)?;
        let sse_max_lifetime = parse!("HERALD_SSE_MAX_LIFETIME", "10m", parse_duration)?;
        let ws_ping = parse!("HERALD_WS_PING", "15s", parse_duration)?;
        let ws_max_lifetime = parse!("HERALD_WS_MAX_LIFETIME", "1h", parse_duration)?;
        let count = |raw: &str| {
            raw.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("expected a whole number above 0, got {raw:?}"))
        };
        let ws_max_subscriptions = parse!("HERALD_WS_MAX_SUBSCRIPTIONS", "1000", count)?;
        let ws_max_queue = parse!("HERALD_WS_MAX_QUEUE", "10000", count)?;
        for (var, value) in [
            ("HERALD_LONGPOLL_FALLBACK_INTERVAL", fallback_interval),
            ("HERALD_SSE_HEARTBEAT", sse_heartbeat),
            ("HERALD_SSE_MAX_LIFETIME", sse_max_lifetime),
            ("HERALD_WS_PING", ws_ping),
            ("HERALD_WS_MAX_LIFETIME", ws_max_lifetime),
        ] {
            if value.is_zero() {
                return Err(ConfigError {
                    var,
                    problem: "must be more than 0".into(),
                });
            }
        }
        let retry_schedule = match get("HERALD_RETRY_SCHEDULE") {
            Some(raw) => RetrySchedule::parse(&raw).map_err(|problem| ConfigError {
                var: "HERALD_RETRY_SCHEDULE",
                problem,
            })?,
            None => RetrySchedule::default(),
        };
        let delivery_timeout = parse!("HERALD_DELIVERY_TIMEOUT", "15s", parse_duration)?;
        if delivery_timeout.is_zero() {
            return Err(ConfigError {
                var: "HERALD_DELIVERY_TIMEOUT",
                problem: "must be more than 0".into(),
            });
        }
        let disable_after = parse!("HERALD_DISABLE_AFTER", "5d", parse_duration)?;
        let delivery_concurrency = parse!("HERALD_DELIVERY_CONCURRENCY", "256", |raw| {
            match raw.trim().parse::<usize>() {
                Ok(n) if n <= 100_000 => Ok(n),
                _ => Err(format!("expected a number from 0 to 100000, got {raw:?}")),
            }
        })?;
        let destinations = parse!(
            "HERALD_ALLOWED_DESTINATIONS",
            "",
            DestinationGuard::parse_allowed
        )?;
        let trusted_proxies = parse!(
            "HERALD_TRUSTED_PROXIES",
            "",
            crate::throttle::TrustedProxies::parse
        )?;
        let forwarded_header = parse!(
            "HERALD_FORWARDED_HEADER",
            "x-forwarded-for",
            crate::throttle::ForwardedHeader::parse
        )?;
        let retention = parse!("HERALD_RETENTION", "30d", parse_duration)?;
        if retention < Duration::from_secs(60) {
            return Err(ConfigError {
                var: "HERALD_RETENTION",
                problem: "must be at least 1m".into(),
            });
        }
        let http_workers = get("HERALD_HTTP_WORKERS")
            .map(|raw| match raw.trim().parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => Ok(n),
                _ => Err(ConfigError {
                    var: "HERALD_HTTP_WORKERS",
                    problem: format!("expected a number from 1 to 256, got {raw:?}"),
                }),
            })
            .transpose()?;
        let log_format = parse!("HERALD_LOG_FORMAT", "text", |raw| match raw.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected text or json, got {other:?}")),
        })?;

        Ok(Self {
            listen,
            database_url: get("DATABASE_URL").map(Redacted),
            data_dir: PathBuf::from(get("HERALD_DATA_DIR").unwrap_or_else(|| "./.herald".into())),
            admin_key,
            max_payload,
            max_batch_bytes,
            db_pool_size,
            db_timeout,
            body_timeout,
            longpoll_default_wait,
            longpoll_max_wait,
            max_waiters,
            max_waiters_per_key,
            fallback_interval,
            sse_heartbeat,
            sse_max_lifetime,
            ws_ping,
            ws_max_lifetime,
            ws_max_subscriptions,
            ws_max_queue,
            retry_schedule,
            delivery_timeout,
            disable_after,
            delivery_concurrency,
            destinations,
            trusted_proxies,
            forwarded_header,
            retention,
            http_workers,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_database_url_never_shows_in_debug_output() {
        let s = settings(&[("DATABASE_URL", "postgres://herald:s3cr3t@db/herald")]).unwrap();
        assert_eq!(
            s.database_url.as_ref().unwrap().expose(),
            "postgres://herald:s3cr3t@db/herald"
        );
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn defaults_follow_the_product_contract() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert!(s.database_url.is_none());
        assert_eq!(s.data_dir, PathBuf::from("./.herald"));
        assert_eq!(s.max_payload, 256 * 1024);
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(s.admin_key.is_none());
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_it_expected() {
        let err = settings(&[("HERALD_MAX_PAYLOAD", "huge")]).unwrap_err();
        assert_eq!(err.var, "HERALD_MAX_PAYLOAD");
        assert!(
            err.to_string()
                .starts_with("HERALD_MAX_PAYLOAD: expected a size")
        );

        let err = settings(&[("HERALD_LISTEN", "localhost")]).unwrap_err();
        assert_eq!(err.var, "HERALD_LISTEN");

        let err = settings(&[("HERALD_LOG_FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("expected text or json"));

        let err = settings(&[("HERALD_ADMIN_KEY", "short")]).unwrap_err();
        assert_eq!(err.var, "HERALD_ADMIN_KEY");

        let err = settings(&[("HERALD_TRUSTED_PROXIES", "10.0.0.0/8,nginx")]).unwrap_err();
        assert_eq!(err.var, "HERALD_TRUSTED_PROXIES");
        assert!(err.to_string().contains("\"nginx\""));

        let err = settings(&[("HERALD_FORWARDED_HEADER", "x-real-ip")]).unwrap_err();
        assert_eq!(err.var, "HERALD_FORWARDED_HEADER");
    }

    #[test]
    fn the_default_wait_may_not_exceed_the_maximum() {
        let err = settings(&[
            ("HERALD_LONGPOLL_DEFAULT_WAIT", "30s"),
            ("HERALD_LONGPOLL_MAX_WAIT", "20s"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "HERALD_LONGPOLL_DEFAULT_WAIT");
        let s = settings(&[]).unwrap();
        assert_eq!(s.longpoll_default_wait, Duration::from_secs(25));
        assert_eq!(s.longpoll_max_wait, Duration::from_secs(55));
        assert_eq!(s.max_waiters, 50_000);
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let s = settings(&[("DATABASE_URL", ""), ("HERALD_MAX_PAYLOAD", " ")]).unwrap();
        assert!(s.database_url.is_none());
        assert_eq!(s.max_payload, 256 * 1024);
    }
}
