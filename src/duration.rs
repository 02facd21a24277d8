//! Human durations as admins write them: `90s`, `30m`, `24h`, `7d`, `2w`, combinations such
//! as `1h30m`, and `permanent` (no expiry). One parser for the CLI and the config file.

use std::fmt;
use std::time::Duration;

/// A parse error that quotes the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {why} (examples: 90s, 30m, 24h, 7d, 1h30m, permanent)")]
pub struct DurationError {
    text: String,
    why: &'static str,
}

/// Parses a duration. `permanent` (also `0`) means "never expires" and yields `Duration::ZERO`,
/// which the kernel layer maps to an element without timeout.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        text: text.to_string(),
        why,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.eq_ignore_ascii_case("permanent") || s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u64 = 0;
    let mut rest = s.as_bytes();
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        // Digits only, so from_utf8 cannot fail; the value may still overflow.
        let n: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = match &rest[..unit_len] {
            b"ms" => {
                total = total
                    .checked_add(n / 1000)
                    .ok_or_else(|| err("too large"))?;
                rest = &rest[unit_len..];
                continue;
            }
            b"s" => 1,
            b"m" => 60,
            b"h" => 3600,
            b"d" => 86_400,
            b"w" => 7 * 86_400,
            b"" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("too large"))?;
    }
    if total == 0 {
        return Err(err("zero length; write `permanent` for no expiry"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration exactly, in the same syntax [`parse`] reads (`1d2h3m4s`, `permanent`).
pub fn exact(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "permanent".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        if s >= unit {
            out.push_str(&format!("{}{}", s / unit, name));
            s %= unit;
        }
    }
    out
}

/// Formats a duration compactly (`1d2h`, `45s`, `permanent` for zero).
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        if s == 0 {
            return if self.0.is_zero() {
                f.write_str("permanent")
            } else {
                write!(f, "{}ms", self.0.as_millis())
            };
        }
        let mut parts = 0;
        for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
            if s >= unit && parts < 2 {
                write!(f, "{}{}", s / unit, name)?;
                s %= unit;
                parts += 1;
            } else if parts > 0 {
                // Two significant units are enough for a human reader.
                parts += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        let cases = [
            ("90s", 90),
            ("30m", 1800),
            ("24h", 86_400),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("1h30m", 5400),
            (" 5m ", 300),
            ("permanent", 0),
        ];
        for (text, secs) in cases {
            assert_eq!(parse(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "h",
            "10",
            "10x",
            "-5m",
            "1.5h",
            "99999999999999999999s",
            "0s",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn exact_round_trips() {
        for secs in [1, 59, 61, 3600, 86_400, 93_784, 30 * 86_400] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&exact(d)).unwrap(), d, "{}", exact(d));
        }
        assert_eq!(exact(Duration::from_secs(93_784)), "1d2h3m4s");
    }

    #[test]
    fn formats_two_units() {
        assert_eq!(Human(Duration::from_secs(93_784)).to_string(), "1d2h");
        assert_eq!(Human(Duration::from_secs(45)).to_string(), "45s");
        assert_eq!(Human(Duration::ZERO).to_string(), "permanent");
        assert_eq!(Human(Duration::from_secs(3600)).to_string(), "1h");
    }
}
