//! Durations as users write them: humantime strings (`90s`, `1h30m`) or integer seconds.
//!
//! Whether zero is allowed depends on the field (a retry delay may be zero, a timeout may not); that
//! rule lives in validation, not here.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time, at millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// Pattern of the accepted strings (humantime units, optionally repeated: `1h30m`, `1h 30m`, `250ms`).
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*(ns|nsec|us|usec|ms|msec|millis|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|w|week|weeks)\s*)+$";

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// Parses `90s`, `1h30m` or a bare integer number of seconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("a duration must not be empty".into());
        }
        if trimmed.starts_with('-') {
            return Err(format!("duration {text:?} must not be negative"));
        }
        if let Ok(secs) = trimmed.parse::<u64>() {
            return Ok(Self::from_secs(secs));
        }
        humantime::parse_duration(trimmed)
            .map(Self)
            .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 90s, 1h30m, 250ms)"))
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        // Whole milliseconds keep the output short (`1h 30m`, not nanosecond noise).
        let ms = std::time::Duration::from_millis(self.0.as_millis() as u64);
        let text = humantime::format_duration(ms).to_string();
        f.write_str(&text.replace(' ', ""))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"90s\" or \"1h30m\", or an integer number of seconds",
                )
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom(format!("duration {v} must not be negative")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                if v.is_finite() && (0.0..1e12).contains(&v) {
                    Ok(Duration(std::time::Duration::from_secs_f64(v)))
                } else {
                    Err(E::custom(format!(
                        "duration {v} must be a non-negative number of seconds"
                    )))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Duration")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: a humantime string such as \"90s\", \"10m\" or \"1h30m\", or an integer number of seconds.",
            // One schema rather than `anyOf` [integer, string]: `minimum` binds only numbers and
            // `pattern` only strings, and an editor then reports the pattern's message instead
            // of "expected integer".
            "type": ["integer", "string"],
            "minimum": 0,
            "pattern": DURATION_PATTERN,
            "patternErrorMessage": "invalid duration (examples: 90s, 10m, 1h30m, or an integer number of seconds)",
            "examples": ["30s", "10m", "1h30m", 90],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strings_and_seconds() {
        assert_eq!(Duration::parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(Duration::parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            Duration::parse("1h 30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            Duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(Duration::parse("12").unwrap(), Duration::from_secs(12));
        assert!(Duration::parse("-5s").is_err());
        assert!(Duration::parse("soon").is_err());
        assert!(Duration::parse("").is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in ["90s", "1h30m", "250ms", "2d"] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(Duration::parse(&d.to_string()).unwrap(), d, "{text}");
        }
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
    }

    #[test]
    fn pattern_accepts_what_parse_accepts() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in ["90s", "1h30m", "1h 30m", "250ms", "2days"] {
            assert!(re.is_match(text), "{text}");
            assert!(Duration::parse(text).is_ok(), "{text}");
        }
        assert!(!re.is_match("soon"));
    }
}
