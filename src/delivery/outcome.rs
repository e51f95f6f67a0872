//! From an attempt's result to the delivery's next state: pure rules, no I/O.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::retry::{RetrySchedule, honour_retry_after};

/// What an attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP response with this status (and `Retry-After`, if it gave one).
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` it sent, if any.
        retry_after: Option<Duration>,
    },
    /// No usable response: the error class (`timeout`, `connect`, `dns`, `tls`,
    /// `blocked_destination`, `invalid_response`) and details.
    Error {
        /// The class.
        class: &'static str,
        /// Details.
        detail: String,
    },
}

/// Where the delivery goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A 2xx: done.
    Succeeded,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// No more attempts: the schedule is exhausted.
    Exhausted,
    /// The receiver answered `410 Gone`: fail and disable the endpoint.
    Gone,
}

/// Decides the next state after attempt number `attempts` (1 for the first), with `draw`
/// the jitter draw in -1..=1.
pub fn next(
    answer: &Answer,
    attempts: u32,
    schedule: &RetrySchedule,
    now: DateTime<Utc>,
    draw: f64,
) -> Next {
    let retry_after = match answer {
        Answer::Status {
            code: 200..=299, ..
        } => return Next::Succeeded,
        Answer::Status { code: 410, .. } => return Next::Gone,
        Answer::Status {
            code: 429 | 503,
            retry_after,
        } => *retry_after,
        _ => None,
    };
    match schedule.delay_after(attempts, draw) {
        Some(delay) => {
            let delay = honour_retry_after(delay, retry_after);
            let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            Next::Retry(
                now.checked_add_signed(delay)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            )
        }
        None => Next::Exhausted,
    }
}

/// Reads a `Retry-After` value: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn status(code: u16) -> Answer {
        Answer::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn two_hundreds_succeed_and_410_is_gone() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            next(&status(200), 1, &schedule, now(), 0.0),
            Next::Succeeded
        );
        assert_eq!(
            next(&status(204), 5, &schedule, now(), 0.0),
            Next::Succeeded
        );
        assert_eq!(next(&status(410), 1, &schedule, now(), 0.0), Next::Gone);
    }

    #[test]
    fn failures_follow_the_schedule_then_exhaust() {
        let schedule = RetrySchedule::parse("1s,2s").unwrap();
        let secs = |n| now() + chrono::Duration::seconds(n);
        assert_eq!(
            next(&status(500), 1, &schedule, now(), 0.0),
            Next::Retry(secs(1))
        );
        assert_eq!(
            next(&status(302), 2, &schedule, now(), 0.0),
            Next::Retry(secs(2))
        );
        assert_eq!(
            next(&status(500), 3, &schedule, now(), 0.0),
            Next::Exhausted
        );
        let timeout = Answer::Error {
            class: "timeout",
            detail: String::new(),
        };
        assert_eq!(
            next(&timeout, 1, &schedule, now(), 0.0),
            Next::Retry(secs(1))
        );
    }

    #[test]
    fn retry_after_postpones_429_and_503_only() {
        let schedule = RetrySchedule::parse("1s,2s").unwrap();
        let asked = |code| Answer::Status {
            code,
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            next(&asked(429), 1, &schedule, now(), 0.0),
            Next::Retry(now() + chrono::Duration::seconds(30))
        );
        assert_eq!(
            next(&asked(503), 1, &schedule, now(), 0.0),
            Next::Retry(now() + chrono::Duration::seconds(30))
        );
        assert_eq!(
            next(&asked(500), 1, &schedule, now(), 0.0),
            Next::Retry(now() + chrono::Duration::seconds(1))
        );
        // Retry-After does not extend the schedule past its end.
        assert_eq!(next(&asked(429), 3, &schedule, now(), 0.0), Next::Exhausted);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now()),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now()), None);
    }
}
