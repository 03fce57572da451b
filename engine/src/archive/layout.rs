//! Where the Parquet tier keeps its files, and the calendar arithmetic behind their names.
//!
//! ```text
//! <root>/_progress.json                                   the compactor's committed progress
//! <root>/<table>/date=YYYY-MM-DD/hour=HH/part-<seq>.parquet
//! <root>/<table>/date=YYYY-MM-DD/hour=HH/.part-<seq>.parquet.tmp   (being written)
//! ```
//!
//! The directories are Hive-style partitions of the records' `ts` in UTC, so DuckDB, pandas
//! and Spark read them as they are. `<seq>` is the number of the compaction step that wrote
//! the file (twelve digits): a step writes at most one file per partition, a step that is run
//! again after a crash writes the same names, and files of steps that were never committed
//! are recognised by their number.
//!
//! Dates are proleptic Gregorian, computed here (Howard Hinnant's `days_from_civil` and its
//! inverse) rather than with a calendar crate: any `i64` timestamp maps to a partition, even
//! absurd ones from a broken clock, without panicking.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fleetmind_schema::TimestampMs;

/// Milliseconds in an hour.
pub(crate) const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const PART_PREFIX: &str = "part-";
const PARQUET_SUFFIX: &str = ".parquet";
const TMP_PREFIX: &str = ".part-";
const TMP_SUFFIX: &str = ".parquet.tmp";

/// One hour of UTC time: the number of whole hours since the Unix epoch (negative before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Hour(i64);

impl Hour {
    /// The hour `ts` falls in.
    pub(crate) fn of(ts: TimestampMs) -> Hour {
        Hour(ts.div_euclid(HOUR_MS))
    }

    /// First millisecond of the hour.
    pub(crate) fn start_ms(self) -> TimestampMs {
        self.0.saturating_mul(HOUR_MS)
    }

    /// First millisecond after the hour.
    pub(crate) fn end_ms(self) -> TimestampMs {
        self.0.saturating_add(1).saturating_mul(HOUR_MS)
    }

    /// `date=YYYY-MM-DD/hour=HH`, relative to a table's directory.
    pub(crate) fn dir(self) -> PathBuf {
        let day = self.0.div_euclid(24);
        let hour = self.0.rem_euclid(24);
        Path::new(&format!("date={}", format_date(day))).join(format!("hour={hour:02}"))
    }
}

/// The hour directory a file of `table` with rows of `hour` goes to.
pub(crate) fn partition_dir(root: &Path, table: &str, hour: Hour) -> PathBuf {
    root.join(table).join(hour.dir())
}

/// Final name of the file step `seq` writes into a partition.
pub(crate) fn file_name(seq: u64) -> String {
    format!("{PART_PREFIX}{seq:012}{PARQUET_SUFFIX}")
}

/// Name of the same file while it is being written (hidden, and not `*.parquet`, so neither
/// the query nor other tools read it).
pub(crate) fn temp_name(seq: u64) -> String {
    format!("{TMP_PREFIX}{seq:012}{TMP_SUFFIX}")
}

/// What a file in a partition directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A finished file of step `seq`.
    Part(u64),
    /// A file still (or forever, after a crash) being written.
    Temp,
    /// Anything else: left alone.
    Other,
}

pub(crate) fn classify(name: &str) -> FileKind {
    if name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX) {
        return FileKind::Temp;
    }
    name.strip_prefix(PART_PREFIX)
        .and_then(|rest| rest.strip_suffix(PARQUET_SUFFIX))
        .and_then(|seq| seq.parse().ok())
        .map_or(FileKind::Other, FileKind::Part)
}

/// One hour directory of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    pub(crate) hour: Hour,
    pub(crate) path: PathBuf,
}

/// The partitions of a table whose hour overlaps `[lo, hi]` (both inclusive), oldest first.
/// Directories that are not partitions are ignored; a table without a directory has none.
///
/// # Errors
///
/// Reading a directory fails.
pub(crate) fn partitions(
    table_dir: &Path,
    lo: TimestampMs,
    hi: TimestampMs,
) -> io::Result<Vec<Partition>> {
    let mut out = Vec::new();
    for (day, date_dir) in sub_dirs(table_dir, parse_date_dir)? {
        let day_start = day.saturating_mul(DAY_MS);
        let day_end = day.saturating_add(1).saturating_mul(DAY_MS);
        if day_start > hi || day_end <= lo {
            continue;
        }
        for (hour_of_day, path) in sub_dirs(&date_dir, parse_hour_dir)? {
            let hour = Hour(day.saturating_mul(24).saturating_add(hour_of_day));
            if hour.start_ms() <= hi && hour.end_ms() > lo {
                out.push(Partition { hour, path });
            }
        }
    }
    out.sort_by_key(|p| p.hour);
    Ok(out)
}

/// The sub-directories of `dir` whose name `parse` accepts, with the parsed key. A missing
/// `dir` has none.
fn sub_dirs(dir: &Path, parse: fn(&str) -> Option<i64>) -> io::Result<Vec<(i64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(key) = entry.file_name().to_str().and_then(parse) else {
            continue;
        };
        if entry.file_type()?.is_dir() {
            out.push((key, entry.path()));
        }
    }
    Ok(out)
}

/// `date=YYYY-MM-DD` -> days since the epoch.
fn parse_date_dir(name: &str) -> Option<i64> {
    parse_date(name.strip_prefix("date=")?)
}

/// `hour=HH` -> 0..=23.
fn parse_hour_dir(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("hour=")?;
    if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|h| (0..24).contains(h))
}

/// Days since the epoch as `YYYY-MM-DD` (years before 0 get a `-`, years past 9999 more digits).
pub(crate) fn format_date(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    let sign = if y < 0 { "-" } else { "" };
    format!("{sign}{:04}-{m:02}-{d:02}", y.unsigned_abs())
}

/// `YYYY-MM-DD` (as [`format_date`] writes it) -> days since the epoch; `None` for anything
/// else, including dates that do not exist.
pub(crate) fn parse_date(text: &str) -> Option<i64> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut parts = rest.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str, len: usize| s.len() >= len && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(y, 4) || m.len() != 2 || d.len() != 2 || !digits(m, 2) || !digits(d, 2) {
        return None;
    }
    let year: i64 = y.parse().ok()?;
    let year = if negative { -year } else { year };
    let (month, day): (i64, i64) = (m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    // 2023-02-30 would come back as 2023-03-02.
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

/// Days since 1970-01-01 -> (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) -> days since 1970-01-01; `None` past the range of `i64` milliseconds.
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    // Beyond this the day would not fit a millisecond timestamp anyway.
    if year.abs() > 300_000_000 {
        return None;
    }
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_days() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_date(19_782), "2024-02-29");
        assert_eq!(format_date(10_956), "1999-12-31");
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
    }

    #[test]
    fn dates_round_trip_over_the_whole_timestamp_range() {
        let extremes = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX];
        let days = extremes
            .iter()
            .map(|&ts| ts.div_euclid(DAY_MS))
            .chain((-800_000..800_000).step_by(997));
        for day in days {
            let text = format_date(day);
            assert_eq!(parse_date(&text), Some(day), "{text}");
        }
    }

    #[test]
    fn bad_dates_are_refused() {
        for text in [
            "2023-02-29",
            "2023-13-01",
            "2023-00-10",
            "2023-1-01",
            "23-01-01",
            "2023-01-01x",
            "",
            "--",
            "2023-01",
            "+2023-01-01",
            "2023-01-32",
        ] {
            assert_eq!(parse_date(text), None, "{text}");
        }
    }

    #[test]
    fn hours_name_their_directories() {
        // 2023-11-14T22:13:20Z
        let hour = Hour::of(1_700_000_000_000);
        assert_eq!(hour.dir(), Path::new("date=2023-11-14/hour=22"));
        assert_eq!(hour.start_ms(), 1_699_999_200_000);
        assert_eq!(hour.end_ms() - hour.start_ms(), HOUR_MS);
        assert_eq!(Hour::of(-1).dir(), Path::new("date=1969-12-31/hour=23"));
        // No overflow at the ends of the range.
        let _ = (Hour::of(i64::MIN).dir(), Hour::of(i64::MAX).end_ms());
    }

    #[test]
    fn file_names_classify() {
        assert_eq!(classify(&file_name(42)), FileKind::Part(42));
        assert_eq!(classify("part-000000000042.parquet"), FileKind::Part(42));
        assert_eq!(classify(&temp_name(42)), FileKind::Temp);
        assert_eq!(classify("part-x.parquet"), FileKind::Other);
        assert_eq!(classify("notes.txt"), FileKind::Other);
    }

    #[test]
    fn partitions_are_found_by_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Hour::of(1_700_000_000_000);
        let hours: Vec<Hour> = (0..30).map(|i| Hour(base.0 + i)).collect();
        for hour in &hours {
            fs::create_dir_all(dir.path().join(hour.dir())).expect("mkdir");
        }
        fs::create_dir_all(dir.path().join("date=garbage/hour=01")).expect("mkdir");
        fs::create_dir_all(dir.path().join("date=2023-11-15/hour=24")).expect("mkdir");
        fs::write(dir.path().join("date=2023-11-20"), b"not a directory").expect("write");

        let all = partitions(dir.path(), i64::MIN, i64::MAX).expect("lists");
        assert_eq!(all.iter().map(|p| p.hour).collect::<Vec<_>>(), hours);
        // An inclusive range touching three hours by one millisecond at each end.
        let some =
            partitions(dir.path(), hours[4].end_ms() - 1, hours[6].start_ms()).expect("lists");
        assert_eq!(
            some.iter().map(|p| p.hour).collect::<Vec<_>>(),
            &hours[4..=6]
        );
        assert!(
            partitions(&dir.path().join("missing"), 0, 1)
                .expect("lists")
                .is_empty()
        );
    }
}
