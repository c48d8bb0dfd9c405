//! Durations as the mesh's flags, variables and annotations spell them: one whole number and
//! one unit, `500ms`, `10s`, `2m`, `24h`, `2d`.
//!
//! One parser for all of them, so a value the CLI, the controller, the injector and the proxy
//! read means the same everywhere:
//!
//! ```
//! use mesh_api::duration::parse_duration;
//! use std::time::Duration;
//! assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
//! assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
//! assert!(parse_duration("10").is_err(), "a unit is required");
//! assert!(parse_duration("1.5s").is_err(), "whole numbers only");
//! ```

use std::time::Duration;

/// A value that is not a duration, or one too long to hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseDurationError {
    /// Not a whole number followed by `ms`, `s`, `m`, `h` or `d`.
    #[error("{0:?} is not a duration: expected a whole number and a unit (ms, s, m, h or d), like 500ms, 10s, 2m or 24h")]
    Invalid(String),
    /// More milliseconds than a `u64` holds.
    #[error("{0:?} is too long a duration")]
    TooLong(String),
}

/// Parses one whole number followed by one unit: `ms`, `s`, `m`, `h` or `d`.
///
/// Nothing else is accepted: no bare numbers, fractions, signs, spaces or compound values
/// (`1m30s`). Callers that read a value with surrounding whitespace trim it first.
pub fn parse_duration(s: &str) -> Result<Duration, ParseDurationError> {
    let invalid = || ParseDurationError::Invalid(s.to_string());
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (number, unit) = s.split_at(split);
    // Only ASCII digits before `split`: this fails only when there are none or too many.
    let n: u64 = number.parse().map_err(|_| {
        if number.is_empty() {
            invalid()
        } else {
            ParseDurationError::TooLong(s.to_string())
        }
    })?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| ParseDurationError::TooLong(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str, expected: Option<Duration>) {
        assert_eq!(parse_duration(s).ok(), expected, "{s:?}");
    }

    #[test]
    fn a_number_and_a_unit() {
        let ms = |n| Some(Duration::from_millis(n));
        check("0s", ms(0));
        check("0ms", ms(0));
        check("250ms", ms(250));
        check("500ms", ms(500));
        check("5s", ms(5_000));
        check("90s", ms(90_000));
        check("1m", ms(60_000));
        check("2m", ms(120_000));
        check("1h", ms(3_600_000));
        check("24h", ms(86_400_000));
        check("2d", ms(172_800_000));
        check("18446744073709551615ms", ms(u64::MAX));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "5",
            "10",
            "s",
            "m",
            "h",
            "ms5",
            "1.5s",
            "1.5h",
            "-1s",
            "+1s",
            "1m30s",
            "10 parsecs",
            "10 s",
            " 10s",
            "10s ",
            "10S",
            "1w",
            "１s",
        ] {
            check(bad, None);
            assert!(
                matches!(parse_duration(bad), Err(ParseDurationError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn too_long_is_an_error_not_an_overflow() {
        for long in [
            "99999999999999999999h",
            "99999999999999999999d",
            "18446744073709551615s",
            "18446744073709551616ms",
        ] {
            assert_eq!(
                parse_duration(long),
                Err(ParseDurationError::TooLong(long.into())),
                "{long:?}"
            );
        }
    }

    #[test]
    fn errors_name_the_value_and_what_is_expected() {
        let e = parse_duration("10 parsecs").unwrap_err().to_string();
        assert!(e.contains("\"10 parsecs\""), "{e}");
        assert!(e.contains("500ms, 10s"), "{e}");
    }
}
