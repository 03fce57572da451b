//! The compactor's committed progress, and the durable-write helpers it and the file writer
//! share.
//!
//! Progress is one small JSON file, replaced atomically (write a temporary file, fsync it,
//! rename it over the old one, fsync the directory). It is written only after every Parquet
//! file of a step is durable, so after a crash it never claims rows that are not on disk; files
//! that are on disk but not claimed carry a step number above [`Progress::seq`] and are
//! deleted before anything reads them.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use fleetmind_schema::TimestampMs;
use serde::{Deserialize, Serialize};

/// File name of the progress, in the archive's root.
pub(crate) const PROGRESS_FILE: &str = "_progress.json";
const PROGRESS_TMP: &str = "._progress.json.tmp";

/// Layout version of [`Progress`]; another version is refused rather than guessed at.
const VERSION: u32 = 1;

/// Where compaction stands. See the compactor's module docs for the rule these fields encode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Progress {
    /// [`VERSION`].
    pub(crate) version: u32,
    /// Steps committed; files of a higher step are leftovers of a crash.
    pub(crate) seq: u64,
    /// One past the last log offset read.
    pub(crate) scanned_to: u64,
    /// The first offset that may hold a record read but not yet written (one that was too
    /// recent); everything before it is written or was skipped.
    pub(crate) pending_from: u64,
    /// The tiers' cut-over: every record read with `ts` below it is in Parquet. `i64::MIN`
    /// before the first step.
    pub(crate) watermark: TimestampMs,
    /// For the offsets in `[pending_from, scanned_to)`, the future horizon in force when each
    /// was first read: records at or past it were written at once (a clock far ahead must not
    /// hold compaction back). Sorted by `from`; the first entry covers `pending_from`.
    pub(crate) horizons: Vec<Horizon>,
}

/// The future horizon for the records first read at offsets from `from` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Horizon {
    pub(crate) from: u64,
    pub(crate) ts: TimestampMs,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            version: VERSION,
            seq: 0,
            scanned_to: 0,
            pending_from: 0,
            watermark: TimestampMs::MIN,
            horizons: Vec::new(),
        }
    }
}

/// The progress file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// Reading or writing failed.
    #[error("cannot {action} the compaction progress file {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file exists but is not progress this version understands, or is missing although
    /// Parquet files exist; it is never replaced silently, because starting over would write
    /// every retained record a second time.
    #[error(
        "the compaction progress file {} is not valid ({reason}); move it away together with \
         the Parquet files beside it to compact the event log again from its start",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Progress {
    /// Reads the progress in `root`; `None` when there is no progress file.
    ///
    /// # Errors
    ///
    /// [`ProgressError`] if the file cannot be read or is not valid.
    pub(crate) fn load(root: &Path) -> Result<Option<Progress>, ProgressError> {
        let path = root.join(PROGRESS_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ProgressError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let invalid = |reason: String| ProgressError::Invalid {
            path: path.clone(),
            reason,
        };
        let progress: Progress =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if progress.version != VERSION {
            return Err(invalid(format!(
                "layout version {}, expected {VERSION}",
                progress.version
            )));
        }
        if progress.pending_from > progress.scanned_to {
            return Err(invalid("pending_from is past scanned_to".into()));
        }
        if !progress.horizons.is_sorted_by_key(|h| h.from) {
            return Err(invalid("horizons are not sorted".into()));
        }
        Ok(Some(progress))
    }

    /// Replaces the progress in `root` atomically and durably.
    ///
    /// # Errors
    ///
    /// [`ProgressError::Io`]; the previous progress is then still in place (or, if only the
    /// final directory fsync failed, possibly the new one).
    pub(crate) fn store(&self, root: &Path) -> Result<(), ProgressError> {
        let path = root.join(PROGRESS_FILE);
        let io = |action, source| ProgressError::Io {
            action,
            path: path.clone(),
            source,
        };
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| io("encode", io::Error::other(e)))?;
        let tmp = root.join(PROGRESS_TMP);
        write_durably(&tmp, &json).map_err(|e| io("write", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("replace", e))?;
        sync_dir(root).map_err(|e| io("sync the directory of", e))
    }

    /// The future horizon in force when the record at `offset` (below `scanned_to`) was first
    /// read.
    pub(crate) fn horizon_of(&self, offset: u64) -> TimestampMs {
        let at = self.horizons.partition_point(|h| h.from <= offset);
        at.checked_sub(1)
            .and_then(|i| self.horizons.get(i))
            .map_or(TimestampMs::MAX, |h| h.ts)
    }
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Fsyncs a directory, so that the entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Progress::load(dir.path()).expect("loads"), None);
        let progress = Progress {
            seq: 7,
            scanned_to: 100,
            pending_from: 40,
            watermark: 1_700_000_000_000,
            horizons: vec![Horizon { from: 40, ts: 10 }, Horizon { from: 90, ts: 20 }],
            ..Progress::default()
        };
        progress.store(dir.path()).expect("stores");
        assert_eq!(
            Progress::load(dir.path()).expect("loads"),
            Some(progress.clone())
        );
        assert_eq!(progress.horizon_of(40), 10);
        assert_eq!(progress.horizon_of(89), 10);
        assert_eq!(progress.horizon_of(99), 20);
        assert!(!dir.path().join(PROGRESS_TMP).exists());
    }

    #[test]
    fn damaged_progress_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(PROGRESS_FILE),
            b"{\"version\": 1, \"seq\": ",
        )
        .expect("write");
        let err = Progress::load(dir.path()).expect_err("truncated json");
        assert!(err.to_string().contains(PROGRESS_FILE), "{err}");

        let other = serde_json::json!({
            "version": 99, "seq": 0, "scanned_to": 0, "pending_from": 0,
            "watermark": 0, "horizons": []
        });
        fs::write(dir.path().join(PROGRESS_FILE), other.to_string()).expect("write");
        let err = Progress::load(dir.path()).expect_err("unknown version");
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
