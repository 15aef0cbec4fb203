//! UTC calendar arithmetic for time stamps and budget periods, from Unix time.
//!
//! Days from the epoch to a civil date use Howard Hinnant's `civil_from_days` algorithm
//! (<https://howardhinnant.github.io/date_algorithms.html>).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of month, 1–31.
    pub day: u32,
    /// Seconds into the day.
    pub secs_of_day: u64,
    /// Milliseconds into the second.
    pub millis: u64,
}

impl Utc {
    /// The UTC date and time of `ms` milliseconds since the epoch.
    pub fn from_ms(ms: u64) -> Utc {
        let secs = ms / 1000;
        let days = (secs / 86_400) as i64;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc { year, month, day, secs_of_day: secs % 86_400, millis: ms % 1000 }
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `YYYY-MM`.
    pub fn month_str(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    /// The first day of the next month, `YYYY-MM-01`.
    pub fn next_month(&self) -> String {
        let (y, m) = if self.month == 12 { (self.year + 1, 1) } else { (self.year, self.month + 1) };
        format!("{y:04}-{m:02}-01")
    }
}

/// Milliseconds since the epoch of 00:00 UTC on `year`-`month`-`day` (Hinnant's
/// `days_from_civil`).
pub fn ms_of_date(year: i64, month: u32, day: u32) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days.max(0) as u64) * 86_400_000
}

/// RFC 3339 UTC text of `ms`, e.g. `2026-11-30T04:24:44.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    let s = t.secs_of_day;
    format!("{}T{:02}:{:02}:{:02}.{:03}Z", t.date(), s / 3600, s / 60 % 60, s % 60, t.millis)
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as [`rfc3339`] writes it
/// (`2026-11-30T04:24:44.123Z`; the fraction and `Z` optional), or of a date `YYYY-MM-DD`.
/// `None` for anything else.
pub fn ms_of_rfc3339(s: &str) -> Option<u64> {
    let num = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<u64>().ok());
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.get(4..5) != Some("-") || s.get(7..8) != Some("-") || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let day = ms_of_date(y as i64, mo as u32, d as u32);
    if s.len() == 10 {
        return Some(day);
    }
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let ms = match s.get(19..20) {
        Some(".") => {
            let frac: String = s[20..].chars().take_while(char::is_ascii_digit).take(3).collect();
            format!("{frac:0<3}").parse::<u64>().ok()?
        }
        _ => 0,
    };
    Some(day + ((h * 60 + mi) * 60 + sec) * 1000 + ms)
}

/// The ISO 8601 week of `ms`, e.g. `2026-W48` (weeks start on Monday; week 1 holds the year's
/// first Thursday).
pub fn iso_week(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    // 1970-01-01 was a Thursday: weekday 0 = Monday.
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let year = Utc::from_ms((thursday.max(0) as u64) * 86_400_000).year;
    let jan1 = (ms_of_date(year, 1, 1) / 86_400_000) as i64;
    format!("{year:04}-W{:02}", (thursday - jan1) / 7 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day) 12:34:56.789
        assert_eq!(rfc3339(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(1_796_012_684_000), "2026-11-30T04:24:44.000Z");
        let t = Utc::from_ms(1_796_012_684_000);
        assert_eq!((t.month_str(), t.next_month()), ("2026-11".to_owned(), "2026-12-01".to_owned()));
        assert_eq!(Utc::from_ms(1_797_000_000_000).next_month(), "2027-01-01");
        assert_eq!(ms_of_date(2026, 11, 30), 1_796_012_684_000 - (4 * 3600 + 24 * 60 + 44) * 1000);
        assert_eq!(ms_of_date(2000, 3, 1), 951_868_800_000);
    }

    #[test]
    fn rfc3339_parses_back_and_weeks_follow_iso_8601() {
        for ms in [0, 951_827_696_789, 1_796_012_684_000, 1_796_012_684_007] {
            assert_eq!(ms_of_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(ms_of_rfc3339("2026-11-30"), Some(ms_of_date(2026, 11, 30)));
        assert_eq!(ms_of_rfc3339("2026-11-30T04:24:44Z"), Some(1_796_012_684_000));
        assert_eq!(ms_of_rfc3339("not a time"), None);
        assert_eq!(ms_of_rfc3339("2026-13-01"), None);
        // 2026-11-30 is a Monday of week 49; 2027-01-01 (a Friday) is in 2026-W53;
        // 2024-12-30 (a Monday) starts 2025-W01.
        assert_eq!(iso_week(ms_of_date(2026, 11, 30)), "2026-W49");
        assert_eq!(iso_week(ms_of_date(2026, 11, 29)), "2026-W48");
        assert_eq!(iso_week(ms_of_date(2027, 1, 1)), "2026-W53");
        assert_eq!(iso_week(ms_of_date(2024, 12, 30)), "2025-W01");
        assert_eq!(iso_week(0), "1970-W01");
    }
}
