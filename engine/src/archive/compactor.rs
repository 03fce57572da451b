//! The compactor: reads the event log from its committed progress and writes the records
//! that are old enough into the Parquet tier.
//!
//! # Which records a step writes
//!
//! The log is in arrival order, not `ts` order, so a step cannot simply write "everything up
//! to here". The progress ([`Progress`]) holds the log range read so far (`scanned_to`), the
//! watermark `W` and, from `pending_from` on, the records read but not written yet because
//! they were too recent. A step with the new watermark `W'` reads:
//!
//! * records already read (below `scanned_to`; read again only when `W` moves): such a record
//!   was written iff `ts < W` or `ts >= H(offset)`, the future horizon in force when it was
//!   first read. If not, it is written now iff `ts < W'`, and stays pending otherwise;
//! * records read for the first time: written iff `ts < W'` (old enough, or late) or
//!   `ts >= H'` (a clock far ahead: written at once, hidden by the query's `ts < W` filter
//!   until `W` passes it, so that it does not hold `pending_from` back for ever).
//!
//! Every rule depends only on the committed progress and the record, so a step run again after
//! a crash writes exactly what the lost run would have. `W` moves by whole hours, so records
//! already read are read again about once an hour (about `compact_after` + 1 h of log).
//!
//! # Gaps
//!
//! If the event log's retention deleted records the compactor had not written, they are
//! missing from Parquet for good: the compactor logs the gap as an error and goes on from the
//! earliest retained record.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleetmind_schema::{Envelope, RecordKind, TimestampMs};
use fleetmind_stream::{EventLog, EventSource as _, FlushError, Offset, ReadError, ReplayError};

use super::layout::{self, FileKind, HOUR_MS, Hour};
use super::progress::{Horizon, Progress, ProgressError};
use super::retention::{self, ArchiveRetentionError, ArchiveRetentionReport};
use super::writer::{StepWriter, WriteError};
use super::{Archive, ArchiveConfig, record_ts};

/// A step ends early, after what it has read so far, once it has this many files open.
const MAX_OPEN_FILES: usize = 512;

/// Failure of the compactor.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// A configuration value is unusable.
    #[error("invalid Parquet tier setting {key}: {reason}")]
    Config {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The archive directory could not be created or cleaned.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The progress file could not be read or written.
    #[error(transparent)]
    Progress(#[from] ProgressError),
    /// Reading the event log failed (not because records expired: that is a gap).
    #[error("cannot read the event log for compaction")]
    Read(#[source] ReadError),
    /// A replay of the event log could not start.
    #[error("cannot replay the event log for compaction")]
    Replay(#[source] ReplayError),
    /// The event log could not be made durable before reading it.
    #[error("cannot flush the event log before compaction")]
    Flush(#[source] FlushError),
    /// A Parquet file could not be written; the step is not committed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The Parquet retention failed.
    #[error(transparent)]
    Retention(#[from] ArchiveRetentionError),
}

/// What one [`Compactor::run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Steps committed.
    pub steps: u64,
    /// Log records read (records read again count again).
    pub records_read: u64,
    /// Bytes of the log records read.
    pub log_bytes_read: u64,
    /// Rows written to Parquet.
    pub rows_written: u64,
    /// Parquet files written.
    pub files_written: u64,
    /// Bytes of the Parquet files written.
    pub bytes_written: u64,
    /// Records skipped: undecodable, or not fitting their Arrow schema (each is logged).
    pub skipped: u64,
    /// Log offsets deleted by the log's retention before they were compacted.
    pub lost_offsets: u64,
    /// The watermark afterwards.
    pub watermark: Option<TimestampMs>,
    /// One past the last log offset read.
    pub scanned_to: Offset,
    /// Whether the pass stopped before the end of the log because it was asked to.
    pub interrupted: bool,
    /// Wall time of the pass.
    pub elapsed: Duration,
}

/// Moves records from the event log into the Parquet tier. See the module docs.
///
/// All its methods do blocking file I/O: call them from a blocking thread.
pub struct Compactor {
    log: EventLog,
    archive: Arc<Archive>,
    config: ArchiveConfig,
    progress: Progress,
    /// Files of an uncommitted step may be on disk.
    sweep_needed: bool,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor")
            .field("config", &self.config)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// What a step decides for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Write,
    Pending,
    Done,
}

impl Compactor {
    /// Opens the tier under `config.dir` (creating it), reads the committed progress and deletes
    /// the files of a step that crashed before its commit. After this the tier is consistent
    /// and [`Compactor::archive`] may be given to the store.
    ///
    /// # Errors
    ///
    /// [`CompactError::Config`] for unusable settings, [`CompactError::Progress`] for a
    /// progress file that cannot be read or is damaged, [`CompactError::Io`] if the directory
    /// cannot be created or cleaned.
    pub fn open(config: ArchiveConfig, log: EventLog) -> Result<Compactor, CompactError> {
        if config.step_records == 0 {
            return Err(CompactError::Config {
                key: "step_records",
                reason: "must be at least 1".into(),
            });
        }
        fs::create_dir_all(&config.dir).map_err(|source| CompactError::Io {
            action: "create the Parquet directory",
            path: config.dir.clone(),
            source,
        })?;
        let progress = match Progress::load(&config.dir)? {
            Some(progress) => progress,
            None => start_progress(&config.dir)?,
        };
        let hold = config
            .compact_after
            .saturating_add(Duration::from_secs(3600))
            .saturating_add(config.compact_interval.saturating_mul(2));
        let archive = Arc::new(Archive::new(config.dir.clone(), progress.watermark, hold));
        let mut compactor = Compactor {
            log,
            archive,
            config,
            progress,
            sweep_needed: true,
        };
        compactor.sweep()?;
        tracing::info!(
            dir = %compactor.config.dir.display(),
            scanned_to = compactor.progress.scanned_to,
            pending_from = compactor.progress.pending_from,
            watermark = ?compactor.archive.watermark(),
            "Parquet tier opened"
        );
        Ok(compactor)
    }

    /// The tier's shared view, for [`Store::attach_archive`](crate::Store::attach_archive).
    #[must_use]
    pub fn archive(&self) -> Arc<Archive> {
        Arc::clone(&self.archive)
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ArchiveConfig {
        &self.config
    }

    /// One past the last log offset read.
    #[must_use]
    pub fn scanned_to(&self) -> Offset {
        Offset(self.progress.scanned_to)
    }

    /// The first log offset that may hold a record not yet in Parquet.
    #[must_use]
    pub fn pending_from(&self) -> Offset {
        Offset(self.progress.pending_from)
    }

    /// Compacts everything the log holds now, as of `now`, in steps of at most
    /// `step_records`, each committed on its own; returns between steps when `stop` is set.
    /// The new watermark is published to queries when the pass ends.
    ///
    /// # Errors
    ///
    /// [`CompactError`]; the steps committed before the failure stay committed, and the files of
    /// the failed step are deleted before the next one.
    pub fn run(&mut self, now: TimestampMs, stop: &AtomicBool) -> Result<PassReport, CompactError> {
        let started = Instant::now();
        let mut report = PassReport::default();
        self.sweep()?;
        // Only records that survive a power loss are read, whatever the log's fsync policy:
        // a log that lost its tail would hand out offsets already read to new records.
        let end = self.log.end_offset().get();
        self.log.flush_blocking().map_err(CompactError::Flush)?;
        if end < self.progress.scanned_to {
            tracing::error!(
                log_end = end,
                scanned_to = self.progress.scanned_to,
                "the event log ends before the records compaction has read: it was replaced; \
                 compacting the new log from its start"
            );
            self.progress.scanned_to = 0;
            self.progress.pending_from = 0;
            self.progress.horizons.clear();
        }
        let result = loop {
            if stop.load(Ordering::Acquire) {
                report.interrupted = self.progress.scanned_to < end;
                break Ok(());
            }
            match self.step(now, end, &mut report) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => {
                    self.sweep_needed = true;
                    break Err(e);
                }
            }
        };
        self.archive.publish(self.progress.watermark);
        report.watermark = self.archive.watermark();
        report.scanned_to = Offset(self.progress.scanned_to);
        report.elapsed = started.elapsed();
        result.map(|()| report)
    }

    /// Applies the Parquet retention as of `now`: hours older than `retention`, then the
    /// oldest hours beyond `max_bytes`.
    ///
    /// # Errors
    ///
    /// [`ArchiveRetentionError`] naming the directory that could not be listed or deleted.
    pub fn enforce_retention(
        &self,
        now: TimestampMs,
    ) -> Result<ArchiveRetentionReport, ArchiveRetentionError> {
        retention::enforce(
            &self.config.dir,
            now,
            self.config.retention,
            self.config.max_bytes,
        )
    }

    /// One step: reads up to `step_records` new records (and the pending ones again if the
    /// watermark moves), writes, commits. Returns whether there is more to read before `end`.
    fn step(
        &mut self,
        now: TimestampMs,
        end: u64,
        report: &mut PassReport,
    ) -> Result<bool, CompactError> {
        let prev = self.progress.clone();
        let mut next = prev.clone();
        self.skip_gap(&mut next, report);

        let after_ms = i64::try_from(self.config.compact_after.as_millis()).unwrap_or(i64::MAX);
        let watermark = Hour::of(now.saturating_sub(after_ms))
            .start_ms()
            .max(prev.watermark);
        let horizon = Hour::of(now)
            .end_ms()
            .saturating_add(HOUR_MS)
            .max(next.horizons.last().map_or(TimestampMs::MIN, |h| h.ts));
        let reread = watermark > prev.watermark && next.pending_from < next.scanned_to;
        let start = if reread {
            next.pending_from
        } else {
            next.scanned_to
        };
        let limit = next
            .scanned_to
            .saturating_add(self.config.step_records)
            .min(end)
            .max(next.scanned_to);
        if start >= limit {
            // Nothing to read. A moving watermark with nothing pending still needs its commit.
            if next != prev || watermark != prev.watermark {
                next.watermark = watermark;
                next.seq = prev.seq + 1;
                next.store(&self.config.dir)?;
                self.progress = next;
                report.steps += 1;
            }
            return Ok(false);
        }

        let mut replay = match self.log.replay(Offset(start)) {
            Ok(replay) => replay,
            // Retention overtook us since `skip_gap`: go round again.
            Err(ReplayError::Expired { .. }) => return Ok(true),
            Err(e) => return Err(CompactError::Replay(e)),
        };
        let seq = prev.seq + 1;
        let mut writer = StepWriter::new(&self.config.dir, seq);
        let mut first_pending = None;
        let mut stop = limit;
        let mut skipped = 0;
        for item in replay.by_ref() {
            let record = match item {
                Ok(record) => record,
                Err(ReadError::Expired { .. }) => {
                    self.sweep_needed = true;
                    return Ok(true);
                }
                Err(e) => return Err(CompactError::Read(e)),
            };
            let offset = record.offset.get();
            if offset >= limit {
                break;
            }
            let first_sight = offset >= next.scanned_to;
            if first_sight && writer.open_files() >= MAX_OPEN_FILES {
                stop = offset;
                break;
            }
            report.records_read += 1;
            report.log_bytes_read += record.payload.len() as u64;
            let envelope = match serde_json::from_slice::<Envelope>(&record.payload) {
                Ok(envelope) => envelope,
                Err(e) => {
                    // Logged the first time only; a re-read skips it again quietly.
                    if first_sight {
                        skipped += 1;
                        tracing::warn!(offset, error = %e, "skipping an undecodable record; not compacted");
                    }
                    continue;
                }
            };
            let ts = record_ts(&envelope.record);
            let fate = if first_sight {
                if ts < watermark || ts >= horizon {
                    Fate::Write
                } else {
                    Fate::Pending
                }
            } else if ts < prev.watermark || ts >= next.horizon_of(offset) {
                Fate::Done
            } else if ts < watermark {
                Fate::Write
            } else {
                Fate::Pending
            };
            match fate {
                Fate::Write => writer.push(Hour::of(ts), envelope.record)?,
                Fate::Pending => {
                    first_pending.get_or_insert(offset);
                }
                Fate::Done => {}
            }
        }

        let pending_from = if !reread && next.pending_from < next.scanned_to {
            next.pending_from
        } else {
            first_pending.unwrap_or(stop)
        };
        if stop > next.scanned_to && next.horizons.last().is_none_or(|h| h.ts != horizon) {
            next.horizons.push(Horizon {
                from: next.scanned_to,
                ts: horizon,
            });
        }
        next.seq = seq;
        next.scanned_to = stop;
        next.pending_from = pending_from;
        next.watermark = watermark;
        prune_horizons(&mut next);

        let (written, unconvertible) = match writer.finish() {
            Ok(done) => done,
            Err(e) => {
                self.sweep_needed = true;
                return Err(e.into());
            }
        };
        if let Err(e) = next.store(&self.config.dir) {
            self.sweep_needed = true;
            return Err(e.into());
        }
        self.progress = next;
        report.steps += 1;
        report.skipped += skipped + unconvertible;
        report.files_written += written.len() as u64;
        report.rows_written += written.iter().map(|w| w.rows).sum::<u64>();
        report.bytes_written += written.iter().map(|w| w.bytes).sum::<u64>();
        tracing::debug!(
            seq,
            from = start,
            to = stop,
            files = written.len(),
            pending_from,
            watermark,
            "compaction step committed"
        );
        Ok(stop < end)
    }

    /// Moves `next` past records the log no longer holds, logging the gap.
    fn skip_gap(&self, next: &mut Progress, report: &mut PassReport) {
        let earliest = self.log.earliest_offset().get();
        if next.pending_from >= earliest {
            return;
        }
        let never_read = earliest.saturating_sub(next.scanned_to);
        let lost = earliest - next.pending_from;
        report.lost_offsets += lost;
        tracing::error!(
            from = next.pending_from,
            to = earliest,
            never_read,
            "the event log deleted records before they were compacted: they are missing from \
             the Parquet tier (raise stream.retention_bytes or stream.retention_age, or lower \
             engine.compact_after); compaction goes on from the earliest retained record"
        );
        next.pending_from = earliest;
        next.scanned_to = next.scanned_to.max(earliest);
        prune_horizons(next);
    }

    /// Deletes temporary files and files of uncommitted steps, if a step may have left any.
    fn sweep(&mut self) -> Result<(), CompactError> {
        if !self.sweep_needed {
            return Ok(());
        }
        let committed = self.progress.seq;
        let mut removed = 0usize;
        for kind in RecordKind::ALL {
            let table_dir = self.config.dir.join(kind.table_name());
            let partitions = layout::partitions(&table_dir, TimestampMs::MIN, TimestampMs::MAX)
                .map_err(|source| CompactError::Io {
                    action: "list the partitions of",
                    path: table_dir.clone(),
                    source,
                })?;
            for partition in partitions {
                removed += sweep_dir(&partition.path, committed)?;
            }
        }
        if removed > 0 {
            tracing::warn!(
                removed,
                committed_step = committed,
                "deleted Parquet files of a compaction step that did not commit; it runs again"
            );
        }
        self.sweep_needed = false;
        Ok(())
    }
}

/// The progress of a tier that has none yet, written at once so that a step that crashes before
/// its first commit is recognised by its files' step number. A tier with Parquet files but no
/// progress file is refused: sweeping it would delete them all, keeping them would write their
/// rows a second time.
fn start_progress(root: &Path) -> Result<Progress, CompactError> {
    for kind in RecordKind::ALL {
        let table_dir = root.join(kind.table_name());
        let partitions = layout::partitions(&table_dir, TimestampMs::MIN, TimestampMs::MAX)
            .map_err(|source| CompactError::Io {
                action: "list the partitions of",
                path: table_dir.clone(),
                source,
            })?;
        for partition in partitions {
            let entries = fs::read_dir(&partition.path).map_err(|source| CompactError::Io {
                action: "list",
                path: partition.path.clone(),
                source,
            })?;
            let has_parts = entries.filter_map(Result::ok).any(|e| {
                matches!(
                    layout::classify(&e.file_name().to_string_lossy()),
                    FileKind::Part(_)
                )
            });
            if has_parts {
                return Err(ProgressError::Invalid {
                    path: root.join(super::progress::PROGRESS_FILE),
                    reason: format!(
                        "it is missing although {} holds Parquet files",
                        partition.path.display()
                    ),
                }
                .into());
            }
        }
    }
    let progress = Progress::default();
    progress.store(root)?;
    Ok(progress)
}

/// Deletes the temporary files and the files of steps after `committed` in one partition.
fn sweep_dir(dir: &Path, committed: u64) -> Result<usize, CompactError> {
    let io = |action, path: &Path, source| CompactError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
        let entry = entry.map_err(|e| io("list", dir, e))?;
        let name = entry.file_name();
        let stale = match layout::classify(&name.to_string_lossy()) {
            FileKind::Temp => true,
            FileKind::Part(seq) => seq > committed,
            FileKind::Other => false,
        };
        if stale {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path, e)),
            }
        }
    }
    Ok(removed)
}

/// Drops the horizons that no longer cover any offset in `[pending_from, scanned_to)`.
fn prune_horizons(progress: &mut Progress) {
    if progress.pending_from >= progress.scanned_to {
        progress.horizons.clear();
        return;
    }
    // Keep the last entry starting at or before `pending_from` and everything after it.
    let covering = progress
        .horizons
        .partition_point(|h| h.from <= progress.pending_from);
    progress.horizons.drain(..covering.saturating_sub(1));
}
