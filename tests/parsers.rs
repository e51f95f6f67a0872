//! Property tests for every parser at Herald's edge: whatever the input, each answers
//! Ok or Err (never panics), and what it accepts is exactly what it should.

use std::time::Duration;

use herald::api::streams::{parse_cursor, parse_wait, wait_preference};
use herald::domain::destination::DestinationGuard;
use herald::domain::retry::RetrySchedule;
use herald::domain::signature::SigningSecret;
use herald::domain::units::{parse_bytes, parse_duration};
use herald::domain::{EndpointUrl, EventType, StreamName, StreamPattern};
use proptest::prelude::*;

fn stream_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn stream_names_accept_exactly_the_documented_alphabet(raw in ".{0,260}") {
        match StreamName::parse(&raw) {
            Ok(name) => {
                prop_assert_eq!(name.as_str(), raw.as_str());
                prop_assert!(!raw.is_empty() && raw.len() <= 200);
                prop_assert!(raw.chars().all(stream_char));
            }
            Err(detail) => prop_assert!(!detail.is_empty()),
        }
    }

    #[test]
    fn valid_stream_names_are_accepted(raw in "[A-Za-z0-9._:/-]{1,200}") {
        prop_assert!(StreamName::parse(&raw).is_ok());
        // Event types share the alphabet, up to 100 characters.
        prop_assert_eq!(EventType::parse(&raw).is_ok(), raw.len() <= 100);
    }

    #[test]
    fn event_types_and_patterns_never_panic(raw in "\\PC{0,300}") {
        let _ = EventType::parse(&raw);
        let _ = StreamPattern::parse(&raw);
    }

    #[test]
    fn cursors_are_exactly_non_negative_integers(raw in "[ +-]?[0-9]{0,25}[a-z ]?") {
        let expected = raw.trim().parse::<i64>().ok().filter(|n| *n >= 0);
        prop_assert_eq!(parse_cursor("after", &raw).ok(), expected);
    }

    #[test]
    fn cursors_never_panic(raw in "\\PC{0,64}") {
        let _ = parse_cursor("after", &raw);
    }

    #[test]
    fn prefer_headers_and_waits_never_panic(raw in "\\PC{0,120}") {
        if let Some(wait) = wait_preference(std::iter::once(raw.as_str())) {
            let _ = parse_wait("Prefer", wait);
        }
        let _ = parse_wait("wait", &raw);
    }

    #[test]
    fn waits_are_exactly_non_negative_numbers_of_seconds(raw in "[ -]?[0-9]{0,6}(\\.[0-9]{0,4})?(e[0-9]{1,3})?|inf|NaN|-0") {
        let expected = raw.trim().parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0);
        let got = parse_wait("wait", &raw).ok();
        prop_assert_eq!(got.is_some(), expected.is_some());
        if let (Some(got), Some(n)) = (got, expected) {
            prop_assert_eq!(got, Duration::try_from_secs_f64(n).unwrap_or(Duration::MAX));
        }
    }

    #[test]
    fn waits_with_a_unit_are_scaled(n in 0u32..100_000, frac in 0u32..10, unit in prop::sample::select(vec!["ms", "s", "m", "h"])) {
        let raw = format!("{n}.{frac}{unit}");
        let scale = match unit { "ms" => 0.001, "s" => 1.0, "m" => 60.0, _ => 3600.0 };
        let secs = format!("{n}.{frac}").parse::<f64>().unwrap() * scale;
        prop_assert_eq!(parse_wait("wait", &raw).ok(), Some(Duration::from_secs_f64(secs)));
    }

    #[test]
    fn the_first_wait_preference_is_found(n in 0u32..100_000, other in "[a-z]{1,10}=[a-z0-9]{1,5}") {
        let header = format!("{other}, wait={n}, wait=7");
        let expected = n.to_string();
        prop_assert_eq!(wait_preference(std::iter::once(header.as_str())), Some(expected.as_str()));
    }

    #[test]
    fn durations_parse_what_they_say(n in 0u64..1_000_000, unit in prop::sample::select(vec!["ms", "s", "m", "h", "d", ""])) {
        let per = match unit { "ms" => 1, "s" | "" => 1000, "m" => 60_000, "h" => 3_600_000, _ => 86_400_000 };
        let raw = format!("{n}{unit}");
        prop_assert_eq!(parse_duration(&raw).unwrap(), Duration::from_millis(n * per));
    }

    #[test]
    fn durations_sizes_and_schedules_never_panic(raw in "\\PC{0,80}") {
        let _ = parse_duration(&raw);
        let _ = parse_bytes(&raw);
        let _ = RetrySchedule::parse(&raw);
    }

    #[test]
    fn huge_durations_are_refused_not_wrapped(n in (u64::MAX / 1000)..u64::MAX) {
        let raw = format!("{n}d");
        prop_assert!(parse_duration(&raw).is_err());
    }

    #[test]
    fn endpoint_urls_never_panic(raw in "\\PC{0,200}") {
        let _ = EndpointUrl::parse(&raw, &DestinationGuard::new(Vec::new()));
    }

    #[test]
    fn private_and_loopback_addresses_are_refused(
        net in prop::sample::select(vec![10u8, 127, 169, 192, 172, 0]),
        b in 0u8..=255, c in 0u8..=255, d in 0u8..=255,
        scheme in prop::sample::select(vec!["http", "https"]),
    ) {
        let host = match net {
            169 => format!("169.254.{c}.{d}"),
            192 => format!("192.168.{c}.{d}"),
            172 => format!("172.{}.{c}.{d}", 16 + b % 16),
            _ => format!("{net}.{b}.{c}.{d}"),
        };
        let url = format!("{scheme}://{host}/hook");
        let refused = EndpointUrl::parse(&url, &DestinationGuard::new(Vec::new())).is_err();
        prop_assert!(refused, "{}", url);
    }

    #[test]
    fn signatures_verify_with_the_reference_implementation(
        id in "[a-z0-9_-]{1,40}",
        body in "\\PC{0,1000}",
    ) {
        // Webhook bodies are JSON text (the reference verifier reads them as UTF-8).
        let body = body.into_bytes();
        // The reference verifier checks the timestamp against its clock.
        let timestamp = chrono::Utc::now().timestamp();
        let secret = SigningSecret::generate();
        let signature = secret.sign(&id, timestamp, &body);
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        let verifier = standardwebhooks::Webhook::new(&secret.expose()).unwrap();
        prop_assert!(verifier.verify(&body, &headers).is_ok());
    }

    #[test]
    fn signing_secrets_never_panic(raw in "\\PC{0,120}") {
        let _ = SigningSecret::parse(&raw);
    }
}
