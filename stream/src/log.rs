//! [`EventLog`]: the embedded event stream, a directory of append-only segment files.
//!
//! This is the daemon's default [`EventSink`] and [`EventSource`]. The byte layout is documented
//! in [`crate::segment`]; this module opens the directory (taking a lock, recovering the torn
//! tail of the last segment), and exposes appends, flush, replay, subscriptions and retention.
//!
//! # What an acknowledged append guarantees
//!
//! When `append` (or [`EventLog::append_blocking`]) returns `Ok`, the whole batch has been
//! written to the active segment with one write(2) call (repeated only if the kernel accepts a
//! short write) and is visible to readers. There is no
//! user-space buffer: the records survive a `kill -9` of the process whatever the
//! [`FsyncPolicy`]. Surviving a power loss or kernel crash depends on the policy:
//! - [`FsyncPolicy::Always`]: the segment has been fsynced (fdatasync) before `append` returns
//!   (and the directory too after a roll).
//! - [`FsyncPolicy::Interval`]: a background thread fsyncs the segments written since its last
//!   pass (and the directory after a roll) once per interval, and on flush and close; a power
//!   loss can lose about one interval of acknowledged records.
//! - [`FsyncPolicy::Never`]: only explicit flushes fsync.
//!
//! Subscribers and replays see exactly the acknowledged records: the committed end offset is
//! published after the write (and after the fsync under `Always`).
//!
//! The converse does not hold: records can be on disk without having been acknowledged, when
//! the process dies between the write and the return, or when the fsync of an `Always` append
//! fails. Callers that retry unacknowledged batches therefore get at-least-once delivery. A
//! failed write is truncated back; if even that fails, or an fsync fails, the log refuses further
//! writes ("poisoned") until it is reopened (after a failed fsync Linux may have dropped the
//! dirty pages, so a retry would prove nothing), and recovery at open sorts the tail out.
//!
//! # Blocking I/O and async callers
//!
//! The log does plain blocking file I/O. The async [`EventSink::append`] writes inline on the
//! calling task when the framed batch is at most [`INLINE_APPEND_MAX`] bytes and the policy is
//! not `Always` (a page-cache write of a few KB, like logging; when it rolls, it also creates
//! the new segment file, without fsync); larger batches, every `Always` append and every flush
//! run on tokio's blocking pool (`spawn_blocking`). Subscriptions read
//! segments on the blocking pool in batches. The `*_blocking` methods are for synchronous code
//! and must not be called on an async worker thread for large batches.
//!
//! # Concurrency
//!
//! [`EventLog`] is a cheap handle (`Clone`, `Send`, `Sync`); all clones share one writer behind
//! a mutex. Readers never take the writer's lock: they read committed bytes from the segment
//! files at their own pace, so a slow subscriber never slows appends. A second process (or a
//! second `open` in this one) on the same directory is refused through an flock on `LOCK`.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use tracing::{info, warn};

use crate::api::{
    AppendError, BoxFuture, EventSink, EventSource, FlushError, ReadError, SubscribeError,
    Subscription,
};
use crate::config::{FsyncPolicy, LogConfig, MIN_SEGMENT_BYTES};
use crate::reader::Replay;
use crate::segment::{
    HEADER_LEN, IndexEntry, check_header, encode_header, parse_segment_file_name, scan_segment,
    segment_file_name,
};
use crate::writer::{Flusher, FramedBatch, WriterCore, run_blocking};
use crate::{AppendAck, Offset};

/// Largest framed batch that the async `append` writes inline on the calling task (64 KiB).
pub const INLINE_APPEND_MAX: usize = 64 * 1024;

const LOCK_FILE: &str = "LOCK";

/// The embedded event log. See the module docs for its guarantees.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<WriterCore>,
    flusher: Option<Flusher>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Joining the flusher runs its final fsync pass (Interval policy).
        drop(self.flusher.take());
    }
}

/// State shared by the writer and every reader.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// Every retained segment, oldest first; the last one is active.
    segments: RwLock<Vec<SegmentMeta>>,
}

/// One retained segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    /// Sparse index; complete only for segments scanned or written by this process.
    pub(crate) index: Vec<IndexEntry>,
}

impl Shared {
    pub(crate) fn segments(&self) -> RwLockReadGuard<'_, Vec<SegmentMeta>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn segments_mut(&self) -> RwLockWriteGuard<'_, Vec<SegmentMeta>> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The offset of the oldest retained record (or the end, for an empty log).
    pub(crate) fn earliest(&self) -> u64 {
        self.segments().first().map_or(0, |s| s.base)
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenLogError {
    /// The configuration is unusable.
    #[error("invalid event log configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A file or the directory could not be created, listed, opened, read or written.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another handle in this one) has the log open.
    #[error("the event log {} is already open elsewhere (lock held)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A segment header is not what this version writes.
    #[error("segment {} has a bad header: {reason}", path.display())]
    BadHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The last segment is corrupt before its tail, so truncating would lose records.
    #[error("segment {} is corrupt at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the first bad record.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The background fsync thread could not be started.
    #[error("could not start the fsync thread")]
    Flusher(#[source] io::Error),
}

/// Why a replay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The requested records were removed by retention.
    #[error("offset {requested} is no longer retained; the earliest retained offset is {earliest}")]
    Expired {
        /// The offset asked for.
        requested: Offset,
        /// The earliest offset still available.
        earliest: Offset,
    },
}

/// Why retention could not be enforced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// A segment could not be inspected or deleted.
    #[error("could not inspect or delete segment {}", path.display())]
    Io {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub removed_segments: usize,
    /// Bytes of the deleted segments.
    pub removed_bytes: u64,
    /// The earliest offset still retained afterwards.
    pub earliest_offset: Offset,
}

impl EventLog {
    /// Opens (or creates) the log in `dir`: takes the directory lock, checks every segment
    /// header, recovers the last segment (a torn tail is truncated with a warning), starts the
    /// fsync thread for [`FsyncPolicy::Interval`] and applies retention.
    ///
    /// # Errors
    /// [`OpenLogError::Locked`] when the log is open elsewhere, [`OpenLogError::BadHeader`] or
    /// [`OpenLogError::Corrupt`] for damage that recovery must not paper over,
    /// [`OpenLogError::InvalidConfig`], and I/O errors naming the file.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<EventLog, OpenLogError> {
        let dir = dir.as_ref().to_path_buf();
        validate(&config)?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock = take_lock(&dir)?;

        let mut bases = list_segments(&dir)?;
        if bases.is_empty() {
            create_first_segment(&dir)?;
            bases.push(0);
        }
        let mut metas = Vec::with_capacity(bases.len());
        for &base in &bases {
            metas.push(SegmentMeta {
                base,
                path: dir.join(segment_file_name(base)),
                index: Vec::new(),
            });
        }
        let (last, older) = metas.split_last_mut().expect("at least one segment exists");
        for meta in older.iter() {
            check_segment_header(&meta.path, meta.base)?;
        }
        let recovered = recover_last(&last.path, last.base)?;
        last.index = recovered.index;
        let next = last.base + recovered.records;
        let active = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(io_err(&last.path))?;
        let writer_state = (active, last.path.clone(), last.base, recovered.len);

        let shared = Arc::new(Shared {
            dir: dir.clone(),
            config: config.clone(),
            segments: RwLock::new(metas),
        });
        let core = Arc::new(WriterCore::new(Arc::clone(&shared), writer_state, next));
        let flusher = match config.fsync {
            FsyncPolicy::Interval(every) => {
                Some(Flusher::spawn(Arc::clone(&core), every).map_err(OpenLogError::Flusher)?)
            }
            FsyncPolicy::Always | FsyncPolicy::Never => None,
        };
        let log = EventLog {
            inner: Arc::new(Inner {
                core,
                flusher,
                _lock: lock,
            }),
        };
        if let Err(error) = log.enforce_retention() {
            warn!(dir = %dir.display(), %error, "event log retention failed at open");
        }
        info!(
            dir = %dir.display(),
            segments = bases.len(),
            earliest_offset = log.earliest_offset().0,
            end_offset = next,
            "event log opened"
        );
        Ok(log)
    }

    /// Appends `payloads` as consecutive records on the calling thread; see the module docs for
    /// what the returned acknowledgement guarantees.
    ///
    /// # Errors
    /// [`AppendError::EmptyBatch`], [`AppendError::RecordTooLarge`] (nothing written),
    /// [`AppendError::Write`], [`AppendError::Roll`], [`AppendError::Sync`] and
    /// [`AppendError::Poisoned`] after an earlier unrecoverable failure.
    pub fn append_blocking(&self, payloads: &[&[u8]]) -> Result<AppendAck, AppendError> {
        let batch = FramedBatch::new(payloads)?;
        self.inner.core.append(&batch)
    }

    /// Fsyncs every segment written since the last fsync, and the directory after a roll, on
    /// the calling thread; whatever the policy, everything acknowledged before the call is
    /// durable when it returns `Ok`.
    ///
    /// # Errors
    /// [`FlushError::Sync`] (the log is poisoned afterwards) or [`FlushError::Poisoned`].
    pub fn flush_blocking(&self) -> Result<(), FlushError> {
        self.inner.core.sync()
    }

    /// A synchronous reader of the records from `from` up to the end offset at the time of the
    /// call. `from` at or past the end gives an empty replay.
    ///
    /// # Errors
    /// [`ReplayError::Expired`], carrying the earliest retained offset, when `from` is older.
    pub fn replay(&self, from: Offset) -> Result<Replay, ReplayError> {
        let shared = &self.inner.core.shared;
        let earliest = shared.earliest();
        if from.0 < earliest {
            return Err(ReplayError::Expired {
                requested: from,
                earliest: Offset(earliest),
            });
        }
        Ok(Replay::new(Arc::clone(shared), from.0, self.end_offset().0))
    }

    /// Reads every retained record and checks its checksum and the continuity of the segments;
    /// returns the number of records. Runs on the calling thread and reads the whole log.
    ///
    /// # Errors
    /// The first [`ReadError`] met, e.g. [`ReadError::Corrupt`] naming file and byte position.
    pub fn verify(&self) -> Result<u64, ReadError> {
        let mut replay = Replay::new(
            Arc::clone(&self.inner.core.shared),
            self.earliest_offset().0,
            self.end_offset().0,
        );
        replay.try_fold(0u64, |count, record| record.map(|_| count + 1))
    }

    /// The offset of the oldest retained record (equal to the end offset when no record is
    /// retained).
    #[must_use]
    pub fn earliest_offset(&self) -> Offset {
        Offset(self.inner.core.shared.earliest())
    }

    /// The base offsets of the retained segments, oldest first; the last one is active.
    #[must_use]
    pub fn segment_bases(&self) -> Vec<Offset> {
        let segments = self.inner.core.shared.segments();
        segments.iter().map(|s| Offset(s.base)).collect()
    }

    /// Deletes the oldest segments that the retention policy no longer keeps (never the active
    /// one). Also runs on every roll and at open.
    ///
    /// # Errors
    /// [`RetentionError::Io`] naming the segment that could not be inspected or deleted.
    pub fn enforce_retention(&self) -> Result<RetentionReport, RetentionError> {
        self.inner.core.enforce_retention(SystemTime::now())
    }

    /// The directory of the log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.core.shared.dir
    }

    /// The configuration the log was opened with.
    #[must_use]
    pub fn config(&self) -> &LogConfig {
        &self.inner.core.shared.config
    }
}

impl fmt::Debug for EventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("dir", &self.dir())
            .field("end_offset", &self.end_offset())
            .finish_non_exhaustive()
    }
}

impl EventSink for EventLog {
    fn append<'a>(
        &'a self,
        payloads: &'a [&'a [u8]],
    ) -> BoxFuture<'a, Result<AppendAck, AppendError>> {
        Box::pin(async move {
            let batch = FramedBatch::new(payloads)?;
            let inline =
                batch.byte_len() <= INLINE_APPEND_MAX && self.config().fsync != FsyncPolicy::Always;
            if inline {
                return self.inner.core.append(&batch);
            }
            let core = Arc::clone(&self.inner.core);
            run_blocking(move || core.append(&batch))
                .await
                .map_err(AppendError::Task)?
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), FlushError>> {
        let core = Arc::clone(&self.inner.core);
        Box::pin(async move {
            run_blocking(move || core.sync())
                .await
                .map_err(FlushError::Task)?
        })
    }
}

impl EventSource for EventLog {
    fn subscribe(&self, from: Offset) -> Result<Subscription, SubscribeError> {
        let core = &self.inner.core;
        crate::subscribe::subscribe(Arc::clone(&core.shared), core.end_tx.subscribe(), from)
    }

    fn end_offset(&self) -> Offset {
        *self.inner.core.end_tx.borrow()
    }
}

fn validate(config: &LogConfig) -> Result<(), OpenLogError> {
    if config.segment_bytes < MIN_SEGMENT_BYTES {
        return Err(OpenLogError::InvalidConfig {
            reason: format!(
                "segment_bytes is {}, the minimum is {MIN_SEGMENT_BYTES}",
                config.segment_bytes
            ),
        });
    }
    if config.fsync == FsyncPolicy::Interval(std::time::Duration::ZERO) {
        return Err(OpenLogError::InvalidConfig {
            reason: "the fsync interval must be longer than zero (use \"always\")".to_owned(),
        });
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenLogError + '_ {
    move |source| OpenLogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn take_lock(dir: &Path) -> Result<File, OpenLogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(OpenLogError::Locked { path }),
        Err(TryLockError::Error(source)) => Err(OpenLogError::Io { path, source }),
    }
}

/// Base offsets of the segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, OpenLogError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(base) = parse_segment_file_name(&entry.file_name()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn create_first_segment(dir: &Path) -> Result<(), OpenLogError> {
    let path = dir.join(segment_file_name(0));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(&encode_header(0)).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

fn check_segment_header(path: &Path, base: u64) -> Result<(), OpenLogError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut header = [0u8; HEADER_LEN as usize];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(OpenLogError::BadHeader {
                path: path.to_path_buf(),
                reason: "the file is shorter than a segment header".to_owned(),
            });
        }
        Err(e) => return Err(io_err(path)(e)),
    }
    check_header(&header, base).map_err(|reason| OpenLogError::BadHeader {
        path: path.to_path_buf(),
        reason,
    })
}

/// What recovery learnt about the last segment.
struct Recovered {
    records: u64,
    len: u64,
    index: Vec<IndexEntry>,
}

/// Scans the last segment and truncates a torn tail (or a torn header).
fn recover_last(path: &Path, base: u64) -> Result<Recovered, OpenLogError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    if file_len < HEADER_LEN {
        warn!(
            file = %path.display(),
            byte_offset = 0,
            file_len,
            "event log segment has a torn header (crash while rolling); rewriting it"
        );
        file.set_len(0).map_err(io_err(path))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        file.write_all(&encode_header(base)).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        return Ok(Recovered {
            records: 0,
            len: HEADER_LEN,
            index: Vec::new(),
        });
    }
    let mut reader = BufReader::with_capacity(256 * 1024, &file);
    let mut header = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut header).map_err(io_err(path))?;
    check_header(&header, base).map_err(|reason| OpenLogError::BadHeader {
        path: path.to_path_buf(),
        reason,
    })?;
    let scan = scan_segment(&mut reader, base, file_len).map_err(io_err(path))?;
    drop(reader);
    if let Some(problem) = scan.problem {
        if !problem.torn {
            return Err(OpenLogError::Corrupt {
                path: path.to_path_buf(),
                position: problem.position,
                reason: problem.reason,
            });
        }
        warn!(
            file = %path.display(),
            byte_offset = problem.position,
            dropped_bytes = file_len - problem.position,
            reason = %problem.reason,
            "truncating a torn record at the tail of the event log"
        );
        file.set_len(scan.valid_len).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok(Recovered {
        records: scan.records,
        len: scan.valid_len,
        index: scan.index,
    })
}
