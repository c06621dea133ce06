//! Wall-clock timestamps for manifests, run records and the store lock.
//!
//! The store only needs to record "when" and show it to people, so this is a thin wrapper over
//! Unix seconds with UTC formatting. Doing the calendar arithmetic here keeps a date-time crate
//! out of the runtime's dependency tree.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time, stored as seconds since the Unix epoch (UTC).
///
/// It serialises as a plain JSON number (for example `1795722003.123`), which every tool can
/// read; [`Display`](fmt::Display) renders it as `2026-11-26 19:40:03 UTC` for people.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(f64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts a [`SystemTime`]; times before 1970 become negative seconds.
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self(after.as_secs_f64()),
            Err(before) => Self(-before.duration().as_secs_f64()),
        }
    }

    /// Builds a timestamp from seconds since the Unix epoch.
    pub fn from_unix_seconds(seconds: f64) -> Self {
        Self(seconds)
    }

    /// Seconds since the Unix epoch.
    pub fn unix_seconds(self) -> f64 {
        self.0
    }

    /// The same instant as a [`SystemTime`] (non-finite values map to the epoch).
    pub fn to_system_time(self) -> SystemTime {
        if !self.0.is_finite() {
            return UNIX_EPOCH;
        }
        let magnitude = Duration::from_secs_f64(self.0.abs().min(u64::MAX as f64));
        if self.0 >= 0.0 {
            UNIX_EPOCH + magnitude
        } else {
            UNIX_EPOCH - magnitude
        }
    }

    /// RFC 3339 with millisecond precision, e.g. `2026-11-26T19:40:03.123Z`.
    pub fn rfc3339(self) -> String {
        let parts = self.parts();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            parts.year,
            parts.month,
            parts.day,
            parts.hour,
            parts.minute,
            parts.second,
            parts.millis
        )
    }

    /// A compact form that sorts chronologically and is safe in file names, e.g.
    /// `20261126T194003.123Z`. Run ids start with it.
    pub fn compact(self) -> String {
        let parts = self.parts();
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
            parts.year,
            parts.month,
            parts.day,
            parts.hour,
            parts.minute,
            parts.second,
            parts.millis
        )
    }

    fn parts(self) -> CivilTime {
        // Clamp absurd values so formatting never overflows; such timestamps only come from
        // hand-edited files and only need to print as something.
        let total_millis = if self.0.is_finite() {
            (self.0 * 1000.0).floor().clamp(-1e17, 1e17) as i64
        } else {
            0
        };
        let millis = total_millis.rem_euclid(1000) as u32;
        let seconds = total_millis.div_euclid(1000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        CivilTime {
            year,
            month,
            day,
            hour: second_of_day / 3600,
            minute: second_of_day / 60 % 60,
            second: second_of_day % 60,
            millis,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self.parts();
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            parts.year, parts.month, parts.day, parts.hour, parts.minute, parts.second
        )
    }
}

struct CivilTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// This is Howard Hinnant's `civil_from_days` algorithm
/// (<https://howardhinnant.github.io/date_algorithms.html>), exact for every representable day.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(seconds: f64, display: &str, rfc3339: &str, compact: &str) {
        let time = Timestamp::from_unix_seconds(seconds);
        assert_eq!(time.to_string(), display);
        assert_eq!(time.rfc3339(), rfc3339);
        assert_eq!(time.compact(), compact);
    }

    #[test]
    fn epoch() {
        check(
            0.0,
            "1970-01-01 00:00:00 UTC",
            "1970-01-01T00:00:00.000Z",
            "19700101T000000.000Z",
        );
    }

    #[test]
    fn leap_day() {
        check(
            951_782_400.5,
            "2000-02-29 00:00:00 UTC",
            "2000-02-29T00:00:00.500Z",
            "20000229T000000.500Z",
        );
    }

    #[test]
    fn recent() {
        check(
            1_795_722_003.25,
            "2026-11-26 19:40:03 UTC",
            "2026-11-26T19:40:03.250Z",
            "20261126T194003.250Z",
        );
    }

    #[test]
    fn before_epoch() {
        check(
            -1.0,
            "1969-12-31 23:59:59 UTC",
            "1969-12-31T23:59:59.000Z",
            "19691231T235959.000Z",
        );
    }

    #[test]
    fn system_time_round_trip() {
        let time = Timestamp::from_unix_seconds(1_795_722_003.5);
        assert_eq!(Timestamp::from_system_time(time.to_system_time()), time);
    }
}
