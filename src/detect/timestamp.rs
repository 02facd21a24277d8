//! Reading event times from the start of log lines, for `scan` of old files (live following
//! uses the agent's clock).
//!
//! Formats, each at the very start of the line:
//! - [`TimestampFormat::Exim`]: `2026-12-03 16:13:52` or `2026-12-03 16:13:52.417`;
//! - [`TimestampFormat::Syslog`]: `Dec  3 16:20:01` / `Dec 03 16:30:01` (no year);
//! - [`TimestampFormat::Rfc3339`]: `2026-12-03T16:18:41.123456+00:00` (or `Z`);
//! - [`TimestampFormat::None`]: no time in the line (`sshd -E`): the caller's clock;
//! - [`TimestampFormat::Auto`]: the first of the above that fits.
//!
//! Times without a zone (Exim, syslog) are read as UTC: only differences matter for windows,
//! and no time zone database is carried. A DST change can stretch or shrink one window by an
//! hour; that is the known cost.
//!
//! Syslog has no year. [`TimeReader`] keeps state per file: the first line takes the year of
//! the reference time (file modification time for `scan`), or the year before when that would
//! put the line more than a day in the future; afterwards a month going backwards by more than
//! six (December → January) starts the next year.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a rule reads the time of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampFormat {
    /// `YYYY-MM-DD HH:MM:SS[.fff]`.
    Exim,
    /// `Mmm dd HH:MM:SS`, no year.
    Syslog,
    /// `YYYY-MM-DDTHH:MM:SS[.f+](Z|±HH:MM)`.
    Rfc3339,
    /// No timestamp: arrival time.
    #[default]
    None,
    /// Whichever of RFC 3339, Exim or syslog the line starts with (built-in rules whose
    /// daemon may log either way); none of them: arrival time.
    Auto,
}

/// Per-file time reader (holds the syslog year state).
#[derive(Debug, Clone)]
pub struct TimeReader {
    reference: SystemTime,
    year: Option<i64>,
    last_month: u32,
}

impl TimeReader {
    /// `reference` anchors syslog years (the file's modification time, or now).
    pub fn new(reference: SystemTime) -> Self {
        TimeReader {
            reference,
            year: None,
            last_month: 0,
        }
    }

    /// The time at the start of `line` in `format`, or `None` when absent or malformed.
    pub fn read(&mut self, format: TimestampFormat, line: &[u8]) -> Option<SystemTime> {
        match format {
            TimestampFormat::Exim => parse_exim(line),
            TimestampFormat::Rfc3339 => parse_rfc3339(line),
            TimestampFormat::Syslog => self.read_syslog(line),
            TimestampFormat::None => None,
            TimestampFormat::Auto => parse_rfc3339(line)
                .or_else(|| parse_exim(line))
                .or_else(|| self.read_syslog(line)),
        }
    }

    fn read_syslog(&mut self, line: &[u8]) -> Option<SystemTime> {
        let (month, day, secs_of_day) = parse_syslog_parts(line)?;
        let year = match self.year {
            None => {
                let (ref_year, _, _) = civil_from_secs(secs_since_epoch(self.reference));
                let candidate = to_time(ref_year, month, day, secs_of_day)?;
                // A line dated more than a day after the reference belongs to last year.
                if candidate > self.reference + Duration::from_secs(86_400) {
                    ref_year - 1
                } else {
                    ref_year
                }
            }
            Some(y) if month + 6 < self.last_month => y + 1,
            Some(y) => y,
        };
        self.year = Some(year);
        self.last_month = month;
        to_time(year, month, day, secs_of_day)
    }
}

fn secs_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Parses `N` ASCII digits at `s[at..]`.
fn digits(s: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = s.get(at..at + n)?;
    part.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// `YYYY-MM-DD?HH:MM:SS` with `sep` between date and time; returns (y, m, d, secs of day).
fn parse_date_time(s: &[u8], sep: u8) -> Option<(i64, u32, u32, u32)> {
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || s[10] != sep || s[13] != b':' {
        return None;
    }
    if s[16] != b':' {
        return None;
    }
    let y = digits(s, 0, 4)? as i64;
    let mo = digits(s, 5, 2)?;
    let d = digits(s, 8, 2)?;
    let h = digits(s, 11, 2)?;
    let mi = digits(s, 14, 2)?;
    let se = digits(s, 17, 2)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some((y, mo, d, h * 3600 + mi * 60 + se.min(59)))
}

/// Digits of a fraction after a `.` at `s[at]`: (nanoseconds, bytes consumed incl. the dot).
fn fraction(s: &[u8], at: usize) -> (u32, usize) {
    if s.get(at) != Some(&b'.') {
        return (0, 0);
    }
    let n = s[at + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let mut nanos = 0u32;
    for i in 0..9 {
        let d = if i < n {
            u32::from(s[at + 1 + i] - b'0')
        } else {
            0
        };
        nanos = nanos * 10 + d;
    }
    (nanos, 1 + n)
}

/// Exim: `YYYY-MM-DD HH:MM:SS[.fff]` followed by a space or the end.
pub fn parse_exim(line: &[u8]) -> Option<SystemTime> {
    let (y, mo, d, sod) = parse_date_time(line, b' ')?;
    let (nanos, used) = fraction(line, 19);
    match line.get(19 + used) {
        None | Some(b' ') => {}
        _ => return None,
    }
    to_time(y, mo, d, sod).map(|t| t + Duration::from_nanos(u64::from(nanos)))
}

/// RFC 3339: `YYYY-MM-DDTHH:MM:SS[.f+](Z|±HH:MM)`.
pub fn parse_rfc3339(line: &[u8]) -> Option<SystemTime> {
    let (y, mo, d, sod) = parse_date_time(line, b'T')?;
    let (nanos, used) = fraction(line, 19);
    let z = 19 + used;
    let offset: i64 = match line.get(z)? {
        b'Z' | b'z' => 0,
        &sign @ (b'+' | b'-') => {
            if line.get(z + 3) != Some(&b':') {
                return None;
            }
            let h = i64::from(digits(line, z + 1, 2)?);
            let m = i64::from(digits(line, z + 4, 2)?);
            let off = h * 3600 + m * 60;
            if sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let local = to_time(y, mo, d, sod)?;
    // Local time minus its offset is UTC.
    let t = if offset >= 0 {
        local.checked_sub(Duration::from_secs(offset as u64))?
    } else {
        local.checked_add(Duration::from_secs((-offset) as u64))?
    };
    Some(t + Duration::from_nanos(u64::from(nanos)))
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Mmm dd HH:MM:SS` (day space- or zero-padded): (month, day, seconds of day).
fn parse_syslog_parts(s: &[u8]) -> Option<(u32, u32, u32)> {
    if s.len() < 15 || s[3] != b' ' || s[9] != b':' || s[12] != b':' {
        return None;
    }
    let month = MONTHS.iter().position(|m| &s[..3] == *m)? as u32 + 1;
    let day = match (s[4], s[5]) {
        (b' ', d) if d.is_ascii_digit() => u32::from(d - b'0'),
        _ => digits(s, 4, 2)?,
    };
    let h = digits(s, 7, 2)?;
    let mi = digits(s, 10, 2)?;
    let se = digits(s, 13, 2)?;
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some((month, day, h * 3600 + mi * 60 + se.min(59)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a Unix time in seconds.
fn civil_from_secs(secs: i64) -> (i64, u32, u32) {
    civil_from_days(secs.div_euclid(86_400))
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: the epoch shifted to 0000-03-01 so leap days end each 400-year era).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn to_time(y: i64, m: u32, d: u32, secs_of_day: u32) -> Option<SystemTime> {
    let secs = days_from_civil(y, m, d) * 86_400 + i64::from(secs_of_day);
    if secs < 0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(t: SystemTime) -> f64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }

    #[test]
    fn exim_with_and_without_millis() {
        // 2026-12-03 16:13:51 UTC = 1796314431
        let t = parse_exim(b"2026-12-03 16:13:51 exim 4.96 daemon started").unwrap();
        assert_eq!(unix(t), 1_796_314_431.0);
        let t = parse_exim(b"2026-12-03 16:14:17.417 [22139] exim").unwrap();
        assert!((unix(t) - 1_796_314_457.417).abs() < 1e-6);
        assert!(parse_exim(b"2026-13-03 16:13:51 x").is_none());
        assert!(parse_exim(b"2026-12-03T16:13:51 x").is_none());
        assert!(parse_exim(b"2026-12-03 16:13").is_none());
        assert!(parse_exim(b"garbage").is_none());
        assert!(parse_exim("2026-12-03 16:13:5é".as_bytes()).is_none());
    }

    #[test]
    fn rfc3339_with_zones() {
        let a = parse_rfc3339(b"2026-12-03T16:18:41.123456+00:00 lab-ssh").unwrap();
        assert!((unix(a) - 1_796_314_721.123456).abs() < 1e-6);
        let b = parse_rfc3339(b"2026-12-03T17:18:41.123456+01:00 x").unwrap();
        assert_eq!(a, b);
        let c = parse_rfc3339(b"2026-12-03T11:18:41.123456-05:00 x").unwrap();
        assert_eq!(a, c);
        let z = parse_rfc3339(b"2026-12-03T16:18:41Z x").unwrap();
        assert_eq!(unix(z), 1_796_314_721.0);
        assert!(parse_rfc3339(b"2026-12-03T16:18:41 x").is_none());
        assert!(parse_rfc3339(b"2026-12-03T16:18:41+0100 x").is_none());
    }

    #[test]
    fn syslog_day_padding_and_year_from_reference() {
        let reference = to_time(2026, 12, 3, 17 * 3600).unwrap();
        let mut r = TimeReader::new(reference);
        let a = r.read(
            TimestampFormat::Syslog,
            b"Dec  3 16:20:01 lab-ssh sshd[1]: x",
        );
        assert_eq!(a, to_time(2026, 12, 3, 16 * 3600 + 20 * 60 + 1));
        let b = r.read(TimestampFormat::Syslog, b"Dec 03 16:30:01 imap-login: x");
        assert_eq!(b, to_time(2026, 12, 3, 16 * 3600 + 30 * 60 + 1));
        assert!(
            r.read(TimestampFormat::Syslog, b"Foo  3 16:20:01 x")
                .is_none()
        );
    }

    #[test]
    fn syslog_year_change() {
        // A file written across New Year, scanned on 2 January 2027.
        let reference = to_time(2027, 1, 2, 0).unwrap();
        let mut r = TimeReader::new(reference);
        let dec = r
            .read(TimestampFormat::Syslog, b"Dec 31 23:59:58 h sshd[1]: x")
            .unwrap();
        assert_eq!(Some(dec), to_time(2026, 12, 31, 86_398));
        let jan = r
            .read(TimestampFormat::Syslog, b"Jan  1 00:00:01 h sshd[1]: x")
            .unwrap();
        assert_eq!(Some(jan), to_time(2027, 1, 1, 1));
        assert_eq!(jan.duration_since(dec).unwrap(), Duration::from_secs(3));
        // Lines after the change stay in the new year.
        let later = r
            .read(TimestampFormat::Syslog, b"Jan  1 00:10:00 h x")
            .unwrap();
        assert_eq!(Some(later), to_time(2027, 1, 1, 600));
    }

    #[test]
    fn syslog_leap_day_and_civil_round_trip() {
        let reference = to_time(2028, 3, 1, 0).unwrap();
        let mut r = TimeReader::new(reference);
        let t = r.read(TimestampFormat::Syslog, b"Feb 29 12:00:00 h x");
        assert_eq!(t, to_time(2028, 2, 29, 43_200));
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 12, 31), (2100, 3, 1)] {
            let secs = days_from_civil(y, m, d) * 86_400;
            assert_eq!(civil_from_secs(secs), (y, m, d));
        }
    }
}
