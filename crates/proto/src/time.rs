//! Points in time on the wire: RFC 3339 text (what thin-edge writes) or unix seconds (what some
//! thin-edge clients write, e.g. `status/health`), read into one [`Timestamp`].
//!
//! Hand-written rather than a date-time crate: the contract needs parse and format of one format in
//! UTC, and `proto` stays a pure, small dependency of the agent.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant with nanosecond resolution, stored as nanoseconds since the unix epoch (UTC).
///
/// The representable range is 1677-09-21 to 2262-04-11, which covers every device clock we meet.
/// Serializes as RFC 3339 in UTC (`2024-05-01T12:00:00.25Z`); deserializes from RFC 3339 text with
/// any offset or from a JSON number of unix seconds (fractions allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_nanos: i64,
}

/// Why a time could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid time '{input}': {reason}")]
pub struct TimeError {
    /// The text that was read.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

impl Timestamp {
    /// The unix epoch, 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Self = Self { unix_nanos: 0 };

    /// The current system time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            unix_nanos: i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        }
    }

    /// From nanoseconds since the epoch.
    pub const fn from_unix_nanos(unix_nanos: i64) -> Self {
        Self { unix_nanos }
    }

    /// From milliseconds since the epoch (`None` outside the representable range).
    pub fn from_unix_millis(ms: i64) -> Option<Self> {
        ms.checked_mul(1_000_000).map(Self::from_unix_nanos)
    }

    /// From (possibly fractional) seconds since the epoch; `None` if not finite or out of range.
    pub fn from_unix_seconds(secs: f64) -> Option<Self> {
        // Whole seconds and the fraction separately: at today's magnitudes `secs * 1e9` has a
        // resolution of 256 ns, which would turn `.25` into `.249999872`.
        if !secs.is_finite() || secs.abs() >= 9.2e9 {
            return None;
        }
        let whole = secs.floor();
        let frac_nanos = ((secs - whole) * 1e9).round() as i64;
        (whole as i64)
            .checked_mul(NANOS_PER_SEC)
            .and_then(|n| n.checked_add(frac_nanos))
            .map(Self::from_unix_nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.unix_nanos
    }

    /// Milliseconds since the epoch (rounded towards negative infinity).
    pub const fn unix_millis(self) -> i64 {
        self.unix_nanos.div_euclid(1_000_000)
    }

    /// Seconds since the epoch, with the fraction.
    pub fn unix_seconds(self) -> f64 {
        self.unix_nanos as f64 / 1e9
    }

    /// Parses RFC 3339 (`2024-05-01T12:00:00Z`, `2013-06-22T17:03:14.000+02:00`). Also accepted, as
    /// thin-edge clients write them: a space or lowercase `t` as the separator, a lowercase `z`, and
    /// an offset without the colon (`+0200`). Up to nine fraction digits are kept; more are refused.
    pub fn parse_rfc3339(input: &str) -> Result<Self, TimeError> {
        let err = |reason| TimeError {
            input: input.to_owned(),
            reason,
        };
        let b = input.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Option<i64> {
            let digits = b.get(range)?;
            digits.iter().try_fold(0i64, |acc, d| {
                d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
            })
        };
        let sep = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
        if b.len() < 20 {
            return Err(err("too short for YYYY-MM-DDTHH:MM:SSZ"));
        }
        let (Some(year), Some(month), Some(day)) = (num(0..4), num(5..7), num(8..10)) else {
            return Err(err("date must be YYYY-MM-DD"));
        };
        if !sep(4, b"-") || !sep(7, b"-") || !sep(10, b"Tt ") {
            return Err(err("date must be YYYY-MM-DD followed by 'T'"));
        }
        let (Some(hour), Some(minute), Some(second)) = (num(11..13), num(14..16), num(17..19)) else {
            return Err(err("time must be HH:MM:SS"));
        };
        if !sep(13, b":") || !sep(16, b":") {
            return Err(err("time must be HH:MM:SS"));
        }
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(err("no such date"));
        }
        // 60 is a leap second; it is read as the first second of the next minute.
        if hour > 23 || minute > 59 || second > 60 {
            return Err(err("no such time of day"));
        }
        let mut i = 19;
        let mut fraction_nanos = 0i64;
        if sep(i, b".,") {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let digits = i - start;
            if digits == 0 || digits > 9 {
                return Err(err("fraction of a second must have 1 to 9 digits"));
            }
            let value = num(start..i).ok_or_else(|| err("bad fraction"))?;
            fraction_nanos = value * 10i64.pow(9 - digits as u32);
        }
        let offset_secs = match &b[i..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), rest @ ..] => {
                let (h, m) = match rest {
                    [_, _, b':', _, _] => (num(i + 1..i + 3), num(i + 4..i + 6)),
                    [_, _, _, _] => (num(i + 1..i + 3), num(i + 3..i + 5)),
                    _ => (None, None),
                };
                let (Some(h), Some(m)) = (h, m) else {
                    return Err(err("offset must be Z or +HH:MM"));
                };
                if h > 23 || m > 59 {
                    return Err(err("offset out of range"));
                }
                let secs = h * 3600 + m * 60;
                if *sign == b'-' { -secs } else { secs }
            }
            [] => return Err(err("missing offset (Z or +HH:MM)")),
            _ => return Err(err("unexpected text after the time")),
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
        // In i128: near the lower end of the range, whole seconds alone overflow i64 nanoseconds.
        let nanos = i128::from(secs) * i128::from(NANOS_PER_SEC) + i128::from(fraction_nanos);
        i64::try_from(nanos)
            .map(Self::from_unix_nanos)
            .map_err(|_| err("outside the years 1677 to 2262"))
    }

    /// RFC 3339 in UTC with `Z`; the fraction is omitted when zero, else written with 3, 6 or 9 digits.
    pub fn to_rfc3339(self) -> String {
        let secs = self.unix_nanos.div_euclid(NANOS_PER_SEC);
        let nanos = self.unix_nanos.rem_euclid(NANOS_PER_SEC);
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let mut s = format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        );
        if nanos != 0 {
            if nanos % 1_000_000 == 0 {
                s.push_str(&format!(".{:03}", nanos / 1_000_000));
            } else if nanos % 1000 == 0 {
                s.push_str(&format!(".{:06}", nanos / 1000));
            } else {
                s.push_str(&format!(".{nanos:09}"));
            }
        }
        s.push('Z');
        s
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, TimeError> {
        Self::parse_rfc3339(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time or unix seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse_rfc3339(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                Timestamp::from_unix_seconds(v)
                    .ok_or_else(|| E::custom(format!("unix time {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                v.checked_mul(NANOS_PER_SEC)
                    .map(Timestamp::from_unix_nanos)
                    .ok_or_else(|| E::custom(format!("unix time {v} is out of range")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom(format!("unix time {v} is out of range")))
                    .and_then(|v| self.visit_i64(v))
            }
        }
        d.deserialize_any(TimestampVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected_nanos: i64, formatted: &str) {
        let t = Timestamp::parse_rfc3339(input).unwrap();
        assert_eq!(t.unix_nanos(), expected_nanos, "{input}");
        assert_eq!(t.to_rfc3339(), formatted, "{input}");
        assert_eq!(Timestamp::parse_rfc3339(formatted).unwrap(), t);
    }

    #[test]
    fn rfc3339_with_offsets_fractions_and_thin_edge_variants() {
        check("1970-01-01T00:00:00Z", 0, "1970-01-01T00:00:00Z");
        check(
            "2013-06-22T17:03:14.000+02:00",
            1_371_913_394_000_000_000,
            "2013-06-22T15:03:14Z",
        );
        check(
            "2020-10-15T05:30:47+00:00",
            1_602_739_847_000_000_000,
            "2020-10-15T05:30:47Z",
        );
        check(
            "2024-02-29 23:59:59.5-0130",
            1_709_256_599_500_000_000,
            "2024-03-01T01:29:59.500Z",
        );
        check(
            "1969-12-31t23:59:59.000001z",
            -999_999_000,
            "1969-12-31T23:59:59.000001Z",
        );
        check(
            "2000-01-01T00:00:00.123456789Z",
            946_684_800_123_456_789,
            "2000-01-01T00:00:00.123456789Z",
        );
    }

    #[test]
    fn malformed_times_name_the_problem() {
        for (input, reason) in [
            ("2024-02-30T00:00:00Z", "no such date"),
            ("2023-02-29T00:00:00Z", "no such date"),
            ("2024-01-01T24:00:00Z", "no such time of day"),
            ("2024-01-01T00:00:00", "too short"),
            ("2024-01-01T00:00:00.Z", "fraction"),
            ("2024-01-01T00:00:00.1234567891Z", "fraction"),
            ("2024-01-01T00:00:00+2:00", "offset"),
            ("2024-01-01T00:00:00Zjunk", "unexpected text"),
            ("2024-1-01T00:00:00Z000", "date"),
            ("3000-01-01T00:00:00Z", "1677 to 2262"),
            ("yesterday at noon, roughly", "date"),
        ] {
            let e = Timestamp::parse_rfc3339(input).unwrap_err();
            assert!(e.to_string().contains(reason), "{input}: {e}");
        }
    }

    #[test]
    fn json_reads_text_and_unix_seconds_and_writes_text() {
        let t: Timestamp = serde_json::from_str("1674739912").unwrap();
        assert_eq!(t.to_rfc3339(), "2023-01-26T13:31:52Z");
        let t: Timestamp = serde_json::from_str("1674739912.25").unwrap();
        assert_eq!(t.unix_millis(), 1_674_739_912_250);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#""2023-01-26T13:31:52.250Z""#
        );
        assert!(serde_json::from_str::<Timestamp>("1e300").is_err());
        assert!(serde_json::from_str::<Timestamp>("true").is_err());
    }

    #[test]
    fn the_ends_of_the_range_survive_a_round_trip() {
        for t in [
            Timestamp::from_unix_nanos(i64::MIN),
            Timestamp::from_unix_nanos(i64::MAX),
        ] {
            assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        }
    }

    proptest::proptest! {
        #[test]
        fn formatted_times_parse_back_exactly(nanos in proptest::num::i64::ANY) {
            let t = Timestamp::from_unix_nanos(nanos);
            proptest::prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        }
    }

    #[test]
    fn civil_conversion_round_trips_over_the_whole_range() {
        for days in (-106_000..106_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=days_in_month(y, m)).contains(&d));
        }
    }
}
