//! The Parquet tier: records older than the memory tier serves, in Parquet files partitioned by
//! hour, queried together with memory as one table.
//!
//! # Tiers and the watermark
//!
//! Every record reaches the engine twice: live, from the event log into the memory tables
//! ([`Store`](crate::Store)), and later, from the same log, through the [`Compactor`] into
//! Parquet. A query must count each record once, so the two tiers are cut by one timestamp,
//! the *watermark* `W` ([`Archive::watermark`]):
//!
//! * a table name in SQL is the union of its Parquet files filtered to `ts < W` and its memory
//!   rows filtered to `ts >= W` (module `table`);
//! * the compactor writes a record to Parquet at the latest by the time `W` passes its `ts`,
//!   and moves `W` (to the start of the hour `compact_after` ago) only in the same commit as
//!   the files that make it true;
//! * the memory tier keeps every row with `ts >= W`, even past its window (up to
//!   [`Archive::hold`] more), so no row falls between the tiers while compaction catches up.
//!
//! A record appended to the log after `W` has passed its `ts` (an agent flushing an old buffer)
//! is hidden from the memory side and reaches Parquet with the next compaction pass, one
//! `compact_interval` later at most. Writing a record early is harmless: it is filtered out of
//! the Parquet side until `W` passes it.
//!
//! # Layout
//!
//! `<data_dir>/parquet/<table>/date=YYYY-MM-DD/hour=HH/part-<step>.parquet`, Hive-style
//! partitions of `ts` in UTC (module `layout`), zstd-compressed, with the same Arrow schema as the
//! memory table (so DuckDB, pandas or Spark read them directly; `date` and `hour` become
//! columns there). One compaction step writes at most one file per table and hour; in steady
//! state that is one file per table and hour, since `W` moves an hour at a time.
//!
//! # Durability
//!
//! A step writes each file under a hidden temporary name, fsyncs it, renames it into place,
//! fsyncs the directories, and only then replaces `_progress.json` (atomically, fsynced) with
//! the log offsets it covered. A crash before the progress commit leaves files whose step
//! number is above the committed one; they are deleted when the compactor opens (before
//! queries see the tier), and the step runs again under the same number. A crash after the
//! commit loses nothing. So a row is in Parquet once, never twice and never not at all, short
//! of the event log deleting records before they were compacted, which is logged as a gap.
//!
//! # Retention
//!
//! [`Compactor::enforce_retention`] deletes whole hours (of every table) older than
//! `retention`, then the oldest hours while the files add up to more than `max_bytes`.

mod compactor;
mod layout;
mod progress;
mod retention;
pub(crate) mod table;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use fleetmind_schema::{RecordKind, TimestampMs};

pub use compactor::{CompactError, Compactor, PassReport};
pub use progress::ProgressError;
pub use retention::{ArchiveRetentionError, ArchiveRetentionReport};
pub use writer::WriteError;

/// How the Parquet tier behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Root directory of the files (the daemon uses `<data_dir>/parquet`).
    pub dir: PathBuf,
    /// Age after which a record is served from Parquet rather than memory: the watermark is
    /// the start of the hour this long ago. Default 1 h.
    pub compact_after: Duration,
    /// How often the caller runs [`Compactor::run`]; only bounds how long memory holds rows
    /// for the archive ([`Archive::hold`]). Default 5 min.
    pub compact_interval: Duration,
    /// Hours older than this are deleted. Default 30 days.
    pub retention: Duration,
    /// The files add up to at most this many bytes; the oldest hours go first. Default 10 GiB.
    pub max_bytes: u64,
    /// Log records one compaction step reads at most (one step, one commit). Default 1,000,000.
    pub step_records: u64,
}

impl ArchiveConfig {
    /// The defaults, with the files under `dir`.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            compact_after: Duration::from_secs(3600),
            compact_interval: Duration::from_secs(300),
            retention: Duration::from_secs(30 * 86_400),
            max_bytes: 10 << 30,
            step_records: 1_000_000,
        }
    }
}

/// The Parquet tier as queries see it: where the files are and where the tiers are cut.
/// Shared between the [`Compactor`] (which moves the watermark) and the
/// [`Store`](crate::Store) (see [`Store::attach_archive`](crate::Store::attach_archive)).
#[derive(Debug)]
pub struct Archive {
    root: PathBuf,
    /// `i64::MIN` while nothing has been compacted.
    watermark: AtomicI64,
    hold: Duration,
}

impl Archive {
    fn new(root: PathBuf, watermark: TimestampMs, hold: Duration) -> Self {
        Self {
            root,
            watermark: AtomicI64::new(watermark),
            hold,
        }
    }

    /// Root directory of the files.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of one table's files.
    #[must_use]
    pub fn table_dir(&self, kind: RecordKind) -> PathBuf {
        self.root.join(kind.table_name())
    }

    /// The cut-over: Parquet serves `ts < watermark`, memory `ts >= watermark`. `None` before
    /// the first compaction step (then memory serves everything).
    #[must_use]
    pub fn watermark(&self) -> Option<TimestampMs> {
        Some(self.watermark.load(Ordering::Acquire)).filter(|&w| w != TimestampMs::MIN)
    }

    /// How much older than its window the memory tier may keep rows that the archive does not
    /// serve yet: `compact_after` + 1 h (the watermark moves by whole hours) + two compaction
    /// intervals.
    #[must_use]
    pub fn hold(&self) -> Duration {
        self.hold
    }

    fn publish(&self, watermark: TimestampMs) {
        self.watermark.fetch_max(watermark, Ordering::AcqRel);
    }
}

/// The `ts` of any record.
pub(crate) fn record_ts(record: &fleetmind_schema::Record) -> TimestampMs {
    use fleetmind_schema::Record;
    match record {
        Record::HostSample(r) => r.ts,
        Record::VmSample(r) => r.ts,
        Record::Anomaly(r) => r.ts,
        Record::Incident(r) => r.ts,
        Record::Recommendation(r) => r.ts,
        Record::Action(r) => r.ts,
        Record::Audit(r) => r.ts,
        Record::CollectorHealth(r) => r.ts,
    }
}
