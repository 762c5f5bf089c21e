//! Human-friendly durations for `expiresIn`, `controllerTimer` and friends.
//!
//! The syntax is humantime's: one or more `<number><unit>` terms such as `90s`, `5m`, `48h`,
//! `1d`, `2w`, `6months`, `1y`, `1.5h` or `1h 30m`. `m` is minutes (`M`, `month`, `months` are months);
//! a month is 30.44 days and a year 365.25 days. The value keeps the text it was written with,
//! so a resource round-trips through the API unchanged.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units humantime accepts, longest first so the pattern below prefers whole words.
const UNITS: &str = "nanoseconds|nanosecond|nsec|ns|microseconds|microsecond|usec|us|milliseconds|millisecond|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y";

/// The longest duration text accepted; keeps CEL cost estimates small.
pub const MAX_LEN: usize = 64;

/// The most digits a number in a duration may have.
const MAX_DIGITS: usize = 10;

/// The longest duration any setting accepts: ten years (of 365.25 days). Longer values are
/// mistakes, and added to a timestamp they can overflow the calendar.
pub const MAX: StdDuration = StdDuration::from_secs(10 * 31_557_600);

/// Seconds per unit, as humantime counts them (a month is 30.44 days, a year 365.25 days);
/// sub-second units count as zero in the CEL bound below, which never matters next to ten
/// years.
const UNIT_SECONDS: &[(&str, u64)] = &[
    ("years|year|y", 31_557_600),
    ("months|month|M", 2_630_016),
    ("weeks|week|w", 604_800),
    ("days|day|d", 86_400),
    ("hours|hour|hrs|hr|h", 3_600),
    ("minutes|minute|mins|min|m", 60),
    ("seconds|second|secs|sec|s", 1),
];

/// CEL rule for a duration field: at most `max_secs` seconds.
pub(crate) fn at_most_rule(max_secs: u64, message: &str) -> kube::core::Rule {
    kube::core::Rule::new(sum_at_most(max_secs)).message(message)
}

/// CEL rule for a duration field: at least `min_secs` whole seconds (sub-second terms count
/// as zero: Kubernetes takes these settings in whole seconds, where `500ms` would be 0).
pub(crate) fn at_least_rule(min_secs: u64, message: &str) -> kube::core::Rule {
    kube::core::Rule::new(format!("{} >= {min_secs}", seconds_of("self"))).message(message)
}

/// CEL expression: the duration adds up to at most `max_secs`.
fn sum_at_most(max_secs: u64) -> String {
    format!("{} <= {max_secs}", seconds_of("self"))
}

/// CEL expression: the whole seconds the duration text `var` adds up to. Each
/// `<number><unit>` term is weighed by its unit and the terms summed (at most five ten-digit
/// terms fit in [`MAX_LEN`], so the sum cannot overflow a CEL int); sub-second terms weigh 0.
pub(crate) fn seconds_of(var: &str) -> String {
    let mut weight = String::new();
    for (units, secs) in UNIT_SECONDS {
        weight.push_str(&format!("t.matches('^[0-9]+\\\\s*({units})$') ? {secs} : "));
    }
    weight.push('0');
    format!(
        "{var}.findAll('[0-9]+\\\\s*[a-zA-Z]+').map(t, int(t.find('^[0-9]+')) * ({weight})).sum()"
    )
}

/// Regular expression (RE2 syntax, as the API server evaluates it) for a duration. Numbers are
/// whole and at most ten digits long so that every text the API server accepts also parses:
/// a longer number, or a fraction (humantime counts fractional terms in nanoseconds, which
/// overflow past 584 years and underflow below 1 ns), makes the parser fail, and an object
/// the operator cannot read would stall its watch.
pub fn pattern() -> String {
    format!(r"^\s*([0-9]{{1,{MAX_DIGITS}}}\s*({UNITS})\s*)+$")
}

/// Why a duration text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not a humantime duration.
    #[error(
        "invalid duration {text:?}: {reason}; use a number and a unit such as 90s, 5m, 48h, 1d, 2w, 6months or 1y"
    )]
    Syntax {
        /// The text as written.
        text: String,
        /// humantime's explanation.
        reason: String,
    },
    /// The duration is zero, which no setting of this operator accepts.
    #[error("invalid duration {text:?}: must be greater than zero")]
    Zero {
        /// The text as written.
        text: String,
    },
    /// The duration is longer than [`MAX`].
    #[error("invalid duration {text:?}: must be at most 10y (ten years)")]
    TooLarge {
        /// The text as written.
        text: String,
    },
    /// The text is longer than [`MAX_LEN`].
    #[error("invalid duration: longer than {MAX_LEN} characters")]
    TooLong,
}

/// A positive duration written in humantime syntax.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: StdDuration,
}

impl Duration {
    /// Parses `text`, keeping it for serialisation.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        if text.len() > MAX_LEN {
            return Err(DurationError::TooLong);
        }
        let syntax = |reason: &str| DurationError::Syntax {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.contains('.') {
            return Err(syntax("fractions are not supported (write 90m, not 1.5h)"));
        }
        if text
            .split(|c: char| !c.is_ascii_digit())
            .any(|number| number.len() > MAX_DIGITS)
        {
            return Err(syntax("a number has more than 10 digits"));
        }
        let value = humantime::parse_duration(text.trim()).map_err(|e| DurationError::Syntax {
            text: text.to_owned(),
            reason: e.to_string(),
        })?;
        if value.is_zero() {
            return Err(DurationError::Zero {
                text: text.to_owned(),
            });
        }
        if value > MAX {
            return Err(DurationError::TooLarge {
                text: text.to_owned(),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            value,
        })
    }

    /// A duration from a literal written in this crate (defaults). Tests check that each such
    /// literal parses to the same value.
    pub(crate) fn literal(text: &str, secs: u64) -> Self {
        Self {
            text: text.to_owned(),
            value: StdDuration::from_secs(secs),
        }
    }

    /// The duration as written in the resource.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed duration.
    pub fn as_std(&self) -> StdDuration {
        self.value
    }
}

/// Under this, an `expiresIn` is probably a mistake (minutes written for months).
const SHORT_EXPIRY: StdDuration = StdDuration::from_secs(3_600);

impl Duration {
    /// A warning when this `expiresIn` (at `field`, e.g. `spec.expiresIn`) is under one hour:
    /// valid, but AMIs would stop being eligible almost as soon as they are built — usually
    /// `m` (minutes) written for months.
    pub fn short_expiry_warning(&self, field: &str) -> Option<String> {
        if self.value >= SHORT_EXPIRY {
            return None;
        }
        let text = self.text.trim();
        let minutes = text
            .strip_suffix('m')
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        Some(match minutes {
            Some(n) => format!(
                "{field} is {text:?}, which is {n} minute(s): an AMI stops being eligible {n} minute(s) after it is built. `m` is minutes; {n} month(s) is \"{n}months\" (or \"{n}M\")"
            ),
            None => format!(
                "{field} is {text:?}, under one hour: an AMI stops being eligible that soon after it is built. Write days (\"30d\"), weeks (\"2w\") or months (\"6months\") if that is what you mean"
            ),
        })
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({:?} = {:?})", self.text, self.value)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.value
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": MAX_LEN,
            "pattern": pattern(),
            "x-kubernetes-validations": [{
                "rule": "!self.matches('^[\\\\s0.]*[a-zA-Z]*([\\\\s0.]+[a-zA-Z]+)*\\\\s*$')",
                "message": "must be greater than zero",
            }, {
                "rule": sum_at_most(MAX.as_secs()),
                "message": "must be at most 10y (ten years)",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    #[test]
    fn accepts_upstream_and_common_values() {
        let cases: &[(&str, u64)] = &[
            ("48h", 48 * HOUR),
            ("5m", 5 * 60),
            ("1d", DAY),
            ("1w", 7 * DAY),
            ("1y", 31_557_600),
            ("90s", 90),
            ("2w", 14 * DAY),
            ("6months", 6 * 2_630_016),
            ("1M", 2_630_016),
            ("1h 30m", 5400),
            ("1h30m", 5400),
            ("30 days", 30 * DAY),
            ("720h", 30 * DAY),
        ];
        for (text, secs) in cases {
            let d = Duration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.as_std(), StdDuration::from_secs(*secs), "{text}");
            assert_eq!(d.as_str(), *text);
        }
    }

    #[test]
    fn rejects_bad_values_with_a_useful_message() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid duration"),
            ("5", "invalid duration"),
            ("m", "invalid duration"),
            ("5x", "invalid duration"),
            ("-5m", "invalid duration"),
            ("forever", "invalid duration"),
            ("0s", "greater than zero"),
            ("0h 0m", "greater than zero"),
        ];
        for (text, expected) in cases {
            let err = Duration::parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let long = "1s ".repeat(30);
        assert_eq!(Duration::parse(&long), Err(DurationError::TooLong));
    }

    #[test]
    fn schema_pattern_agrees_with_the_parser() {
        let re = regex_lite(&pattern());
        let texts = [
            "48h", "5m", "1d", "1w", "1y", "6months", "1h 30m", "90s", "30 days", "", "5", "5x",
            "-5m", "1.5h", "1.h", "forever", "m",
        ];
        for text in texts {
            assert_eq!(
                re.is_match(text),
                Duration::parse(text).is_ok(),
                "pattern and parser disagree on {text:?}"
            );
        }
    }

    #[test]
    fn an_expiry_under_an_hour_is_spelled_out() {
        let warn = |t: &str| {
            Duration::parse(t)
                .unwrap()
                .short_expiry_warning("spec.expiresIn")
        };
        let w = warn("5m").unwrap();
        assert!(
            w.contains("spec.expiresIn is \"5m\", which is 5 minute(s)"),
            "{w}"
        );
        assert!(w.contains("5 month(s) is \"5months\""), "{w}");
        let w = warn("30s").unwrap();
        assert!(w.contains("under one hour"), "{w}");
        assert_eq!(warn("1h"), None);
        assert_eq!(warn("48h"), None);
        assert_eq!(warn("6months"), None);
    }

    #[test]
    fn at_most_ten_years() {
        for text in [
            "10y",
            "119months",
            "3652d 12h",
            "9999999999ns",
            "315576000s",
        ] {
            assert!(
                Duration::parse(text).is_ok(),
                "{text}: {:?}",
                Duration::parse(text)
            );
        }
        for text in ["11y", "10y 1s", "9999999999y", "3653d", "315576001s"] {
            assert_eq!(
                Duration::parse(text),
                Err(DurationError::TooLarge {
                    text: text.to_owned()
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn every_text_the_pattern_accepts_gets_a_parser_answer_even_at_its_bounds() {
        let re = regex_lite(&pattern());
        for text in [
            "9999999999y",
            "9999999999years",
            "9999999999y 9999999999y 9999999999y 9999999999y 9999999999y",
            "9999999999ns",
        ] {
            assert!(re.is_match(text), "{text:?}");
            // Either a value or the ten-year bound (which the CRD's CEL rule also enforces),
            // never an overflow.
            assert!(
                matches!(
                    Duration::parse(text),
                    Ok(_) | Err(DurationError::TooLarge { .. })
                ),
                "{text:?}: {:?}",
                Duration::parse(text)
            );
        }
        // Beyond the bounds the API server refuses what would overflow the parser.
        for text in ["99999999999999999999999y", "1000.5y", "0.5ns", "1.5h"] {
            assert!(!re.is_match(text), "{text:?}");
            assert!(Duration::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn round_trips_the_original_text() {
        let d: Duration = serde_json::from_str("\"1h 30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h 30m\"");
        let err = serde_json::from_str::<Duration>("\"soon\"").unwrap_err();
        assert!(
            err.to_string().contains("invalid duration \"soon\""),
            "{err}"
        );
    }

    fn regex_lite(pattern: &str) -> regex::Regex {
        regex::Regex::new(pattern).unwrap()
    }
}
