//! Retention of the Parquet tier: whole hours go, for every table at once, first those older
//! than the retention age, then the oldest while the files exceed the size cap.
//!
//! Deleting by hour keeps the tier simple to reason about: it always covers one contiguous
//! span of time, the same for every table. A query that is reading a file as it is deleted
//! fails with an I/O error and can be run again.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmind_schema::{RecordKind, TimestampMs};

use super::layout::{self, FileKind, Hour};

/// The Parquet retention could not run to its end; what it deleted before stays deleted.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {} for the Parquet retention", path.display())]
pub struct ArchiveRetentionError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveRetentionReport {
    /// Hours deleted (each for every table that had files in it).
    pub removed_hours: usize,
    /// Bytes of the Parquet files deleted.
    pub removed_bytes: u64,
    /// Bytes of the Parquet files left.
    pub kept_bytes: u64,
}

/// One hour of every table.
#[derive(Default)]
struct HourGroup {
    dirs: Vec<PathBuf>,
    bytes: u64,
}

/// Deletes the hours that end at or before `now - max_age`, then the oldest hours while the
/// files add up to more than `max_bytes`.
pub(crate) fn enforce(
    root: &Path,
    now: TimestampMs,
    max_age: Duration,
    max_bytes: u64,
) -> Result<ArchiveRetentionReport, ArchiveRetentionError> {
    let err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveRetentionError {
            action,
            path,
            source,
        }
    };
    let mut hours: BTreeMap<Hour, HourGroup> = BTreeMap::new();
    for kind in RecordKind::ALL {
        let table_dir = root.join(kind.table_name());
        for partition in layout::partitions(&table_dir, TimestampMs::MIN, TimestampMs::MAX)
            .map_err(err("list", &table_dir))?
        {
            let bytes = parquet_bytes(&partition.path).map_err(err("list", &partition.path))?;
            let group = hours.entry(partition.hour).or_default();
            group.dirs.push(partition.path);
            group.bytes += bytes;
        }
    }
    let age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now.saturating_sub(age_ms);
    let mut total: u64 = hours.values().map(|g| g.bytes).sum();
    let mut report = ArchiveRetentionReport::default();
    while let Some(entry) = hours.first_entry() {
        let too_old = entry.key().end_ms() <= cutoff;
        if !too_old && total <= max_bytes {
            break;
        }
        let (hour, group) = entry.remove_entry();
        for dir in &group.dirs {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(err("delete", dir)(e)),
            }
            // The date directory goes with its last hour.
            if let Some(date_dir) = dir.parent() {
                let _ = fs::remove_dir(date_dir);
            }
        }
        total -= group.bytes;
        report.removed_hours += 1;
        report.removed_bytes += group.bytes;
        tracing::info!(
            hour = %hour.dir().display(),
            bytes = group.bytes,
            reason = if too_old { "older than engine.parquet_retention" } else { "over engine.parquet_max_bytes" },
            "Parquet hour deleted"
        );
    }
    report.kept_bytes = total;
    Ok(report)
}

/// Bytes of the finished Parquet files in one partition directory.
fn parquet_bytes(dir: &Path) -> io::Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if matches!(
            layout::classify(&entry.file_name().to_string_lossy()),
            FileKind::Part(_)
        ) {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::layout::HOUR_MS;

    fn make(root: &Path, table: &str, hour: Hour, bytes: usize) {
        let dir = layout::partition_dir(root, table, hour);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(layout::file_name(1)), vec![0u8; bytes]).expect("write");
    }

    #[test]
    fn old_hours_go_then_oldest_beyond_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_700_000_000_000;
        let hour = |back: i64| Hour::of(now - back * HOUR_MS);
        for back in 0..10 {
            make(dir.path(), "host_samples", hour(back), 100);
            make(dir.path(), "vm_samples", hour(back), 1000);
        }
        // 8 h of age: the hour 9 h back ends before now - 8 h and goes; the hour 8 h back
        // holds now - 8 h and stays.
        let report =
            enforce(dir.path(), now, Duration::from_secs(8 * 3600), u64::MAX).expect("retention");
        assert_eq!(report.removed_hours, 1);
        assert_eq!(report.removed_bytes, 1100);
        assert!(!layout::partition_dir(dir.path(), "vm_samples", hour(9)).exists());
        assert!(!layout::partition_dir(dir.path(), "host_samples", hour(9)).exists());
        assert!(layout::partition_dir(dir.path(), "vm_samples", hour(8)).exists());

        // Cap at 3.5 hours' worth: the oldest go until it fits.
        let report =
            enforce(dir.path(), now, Duration::from_secs(30 * 86_400), 3850).expect("retention");
        assert_eq!(report.kept_bytes, 3 * 1100);
        assert_eq!(report.removed_hours, 6);
        let left = layout::partitions(
            &dir.path().join("host_samples"),
            TimestampMs::MIN,
            TimestampMs::MAX,
        )
        .expect("lists");
        assert_eq!(
            left.iter().map(|p| p.hour).collect::<Vec<_>>(),
            [hour(2), hour(1), hour(0)]
        );
    }
}
