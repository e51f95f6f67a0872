//! The retry schedule: how long to wait after each failed attempt.
//!
//! A pure function of the attempt number (plus the jitter draw), so the next attempt time
//! can be computed once and stored in the database: durable retries survive restarts, which
//! an in-process backoff loop (and the unmaintained `backoff` crate, RUSTSEC-2025-0012)
//! cannot give.

use std::time::Duration;

use super::units::parse_duration;

/// Each delay is jittered by up to this fraction either way.
pub const JITTER: f64 = 0.2;
/// The longest a `Retry-After` answer can postpone the next attempt.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The longest delay a schedule may hold (a longer one would outlive any retention).
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Delays after the first, second, ... failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    /// 5s, 5m, 30m, 2h, 5h, 10h, 14h, 20h, 24h: ten attempts over about three days.
    fn default() -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Self(vec![
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(1800),
            hours(2),
            hours(5),
            hours(10),
            hours(14),
            hours(20),
            hours(24),
        ])
    }
}

impl RetrySchedule {
    /// Parses `1s,2s,4s` (`HERALD_RETRY_SCHEDULE`). An empty schedule means one attempt.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(Self(Vec::new()));
        }
        let delays = raw
            .split(',')
            .map(|part| parse_duration(part.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("expected comma-separated durations like 5s,5m,2h: {e}"))?;
        if let Some(long) = delays.iter().find(|d| **d > MAX_DELAY) {
            return Err(format!(
                "each delay must be at most 30d (found {}s)",
                long.as_secs()
            ));
        }
        Ok(Self(delays))
    }

    /// Attempts in all: the first plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The wait after `attempts` failed attempts (1 after the first), jittered by `draw`
    /// (uniform in -1..=1) times 20%; `None` when the schedule is exhausted.
    pub fn delay_after(&self, attempts: u32, draw: f64) -> Option<Duration> {
        let base = *self
            .0
            .get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
        let draw = if draw.is_finite() {
            draw.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let factor = 1.0 + JITTER * draw;
        Some(base.mul_f64(factor))
    }
}

/// The next delay given a receiver's `Retry-After`: at least that long (capped).
pub fn honour_retry_after(delay: Duration, retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(delay, |asked| delay.max(asked.min(MAX_RETRY_AFTER)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_delay_over_30_days_is_refused() {
        assert!(RetrySchedule::parse("5s,30d").is_ok());
        let err = RetrySchedule::parse("5s,31d").unwrap_err();
        assert!(err.contains("at most 30d"), "{err}");
        assert!(RetrySchedule::parse("300000000d").is_err());
    }

    #[test]
    fn the_default_schedule_spans_about_three_days() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 10);
        let total: Duration = (1..10).filter_map(|n| schedule.delay_after(n, 0.0)).sum();
        assert_eq!(
            total.as_secs(),
            5 + 300 + 1800 + (2 + 5 + 10 + 14 + 20 + 24) * 3600
        );
        assert_eq!(schedule.delay_after(1, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(schedule.delay_after(10, 0.0), None);
        assert_eq!(schedule.delay_after(0, 0.0), None);
    }

    #[test]
    fn a_configured_schedule_replaces_the_default() {
        let schedule = RetrySchedule::parse("1s, 2s,4s").unwrap();
        assert_eq!(schedule.max_attempts(), 4);
        assert_eq!(schedule.delay_after(3, 0.0), Some(Duration::from_secs(4)));
        assert!(RetrySchedule::parse("1s,soon").is_err());
        assert_eq!(RetrySchedule::parse("").unwrap().max_attempts(), 1);
    }

    #[test]
    fn retry_after_postpones_but_is_capped() {
        let five = Duration::from_secs(5);
        assert_eq!(honour_retry_after(five, None), five);
        assert_eq!(
            honour_retry_after(five, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(
            honour_retry_after(Duration::from_secs(600), Some(Duration::from_secs(60))),
            Duration::from_secs(600)
        );
        assert_eq!(
            honour_retry_after(five, Some(Duration::from_secs(10 * 86_400))),
            MAX_RETRY_AFTER
        );
    }

    proptest! {
        #[test]
        fn delays_stay_within_twenty_percent(attempt in 1_u32..9, draw in -1.0_f64..=1.0) {
            let schedule = RetrySchedule::default();
            let base = schedule.delay_after(attempt, 0.0).unwrap().as_secs_f64();
            let delay = schedule.delay_after(attempt, draw).unwrap().as_secs_f64();
            prop_assert!(delay >= base * 0.8 - 1e-6 && delay <= base * 1.2 + 1e-6);
        }

        #[test]
        fn the_schedule_ends_after_its_last_delay(n in 0_usize..20, extra in 0_u32..100) {
            let schedule = RetrySchedule::parse(&vec!["1s"; n].join(",")).unwrap();
            let last = u32::try_from(n).unwrap();
            prop_assert_eq!(schedule.max_attempts(), last + 1);
            prop_assert!(schedule.delay_after(last + 1 + extra, 0.0).is_none());
            if n > 0 {
                prop_assert!(schedule.delay_after(last, 0.0).is_some());
            }
        }

        #[test]
        fn jitter_never_makes_a_delay_negative_or_zero(attempt in 1_u32..9, draw in proptest::num::f64::ANY) {
            let delay = RetrySchedule::default().delay_after(attempt, draw).unwrap();
            prop_assert!(delay >= Duration::from_secs(4));
        }
    }
}
