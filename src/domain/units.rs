//! Durations (`25s`, `5m`, `30d`) and sizes (`256KiB`) as written in settings.

use std::time::Duration;

/// Parses a duration such as `500ms`, `25s`, `5m`, `2h` or `30d`. A bare number is seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("expected a duration like 25s, 5m, 2h or 30d, got {raw:?}"))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {raw:?} (use ms, s, m, h or d)"
            ));
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {raw:?} is too large"))
}

/// Parses a size such as `262144`, `256KiB`, `1MiB` or `64kB`.
pub fn parse_bytes(raw: &str) -> Result<usize, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let value: usize = digits
        .parse()
        .map_err(|_| format!("expected a size like 262144, 256KiB or 1MiB, got {raw:?}"))?;
    let multiplier: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {raw:?} (use B, KiB, MiB, kB or MB)"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {raw:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("25"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn bad_durations_say_what_was_expected() {
        assert!(
            parse_duration("")
                .unwrap_err()
                .contains("expected a duration")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("expected a duration")
        );
        assert!(
            parse_duration("5y")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert!(parse_duration("-5s").is_err());
        assert!(
            parse_duration("99999999999999999d")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_bytes("256KiB"), Ok(262_144));
        assert_eq!(parse_bytes("262144"), Ok(262_144));
        assert_eq!(parse_bytes("1MiB"), Ok(1_048_576));
        assert_eq!(parse_bytes("64kB"), Ok(64_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5TB").is_err());
    }
}
