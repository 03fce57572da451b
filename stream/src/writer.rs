//! The write side of [`EventLog`](crate::EventLog): the active segment behind a mutex, rolling,
//! fsync bookkeeping, the background fsync thread and retention.
//!
//! Kept out of `log.rs` so that the public handle there reads as API and this file holds the
//! state machine. Invariants, all under the writer mutex:
//! - `len` is the byte length of the active segment and `next` the offset the next record gets;
//!   the committed end published to readers always equals `next` once `append` returns.
//! - Every byte before `len` is a complete, acknowledged record (a failed write is truncated
//!   back, or the log is poisoned).
//! - `dirty` says the active segment has writes no fsync has covered; `unsynced` lists rolled
//!   segments in the same state; `dir_dirty` says a segment was created since the directory was
//!   last fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::{AppendError, FlushError};
use crate::config::FsyncPolicy;
use crate::log::{RetentionError, RetentionReport, SegmentMeta, Shared};
use crate::segment::{
    HEADER_LEN, INDEX_INTERVAL_BYTES, IndexEntry, MAX_PAYLOAD_BYTES, encode_frame, encode_header,
    frame_len, segment_file_name,
};
use crate::{AppendAck, Offset};

/// A batch of payloads framed into the exact bytes one write(2) call puts on disk.
pub(crate) struct FramedBatch {
    bytes: Vec<u8>,
    payload_lens: Vec<usize>,
}

impl FramedBatch {
    /// Checks and frames `payloads`.
    pub(crate) fn new(payloads: &[&[u8]]) -> Result<FramedBatch, AppendError> {
        if payloads.is_empty() {
            return Err(AppendError::EmptyBatch);
        }
        let mut total = 0usize;
        for (index, payload) in payloads.iter().enumerate() {
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(AppendError::RecordTooLarge {
                    index,
                    len: payload.len(),
                    max: MAX_PAYLOAD_BYTES,
                });
            }
            total += payload.len() + 8;
        }
        let mut bytes = Vec::with_capacity(total);
        for payload in payloads {
            encode_frame(&mut bytes, payload);
        }
        Ok(FramedBatch {
            bytes,
            payload_lens: payloads.iter().map(|p| p.len()).collect(),
        })
    }

    /// Bytes the batch takes on disk.
    pub(crate) fn byte_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Runs blocking work on tokio's blocking pool when a runtime is present, else inline.
pub(crate) async fn run_blocking<F, T>(work: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(work).await,
        Err(_) => Ok(work()),
    }
}

/// The writer: shared by every [`EventLog`](crate::EventLog) clone and the fsync thread.
pub(crate) struct WriterCore {
    pub(crate) shared: Arc<Shared>,
    /// The committed end offset, watched by subscriptions.
    pub(crate) end_tx: watch::Sender<Offset>,
    state: Mutex<WriterState>,
    /// Serialises fsync passes so a flush never returns while an earlier pass that took its
    /// work is still syncing.
    sync_serial: Mutex<()>,
}

struct WriterState {
    file: File,
    path: PathBuf,
    base: u64,
    len: u64,
    next: u64,
    next_index_at: u64,
    dirty: bool,
    unsynced: Vec<PathBuf>,
    dir_dirty: bool,
    poisoned: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WriterCore {
    /// `active` is the open (append mode) last segment: file, path, base offset, byte length.
    pub(crate) fn new(
        shared: Arc<Shared>,
        active: (File, PathBuf, u64, u64),
        next: u64,
    ) -> WriterCore {
        let (file, path, base, len) = active;
        let next_index_at = shared
            .segments()
            .last()
            .and_then(|s| s.index.last())
            .map_or(len, |e| e.position + INDEX_INTERVAL_BYTES);
        WriterCore {
            shared,
            end_tx: watch::Sender::new(Offset(next)),
            state: Mutex::new(WriterState {
                file,
                path,
                base,
                len,
                next,
                next_index_at,
                dirty: false,
                unsynced: Vec::new(),
                dir_dirty: false,
                poisoned: None,
            }),
            sync_serial: Mutex::new(()),
        }
    }

    /// Writes a batch with one write(2) call, rolling first when it would overflow the
    /// active segment, fsyncs under `Always`, then publishes the new end.
    pub(crate) fn append(&self, batch: &FramedBatch) -> Result<AppendAck, AppendError> {
        let config = &self.shared.config;
        let mut w = lock(&self.state);
        if let Some(reason) = &w.poisoned {
            return Err(AppendError::Poisoned {
                reason: reason.clone(),
            });
        }
        let size = batch.bytes.len() as u64;
        if w.len > HEADER_LEN && w.len + size > config.segment_bytes {
            self.roll(&mut w)?;
        }
        let start = w.len;
        if let Err(source) = w.file.write_all(&batch.bytes) {
            let path = w.path.clone();
            if let Err(undo) = w.file.set_len(start) {
                w.poisoned = Some(format!(
                    "could not truncate {} after a failed write: {undo}",
                    path.display()
                ));
            }
            return Err(AppendError::Write { path, source });
        }

        let first = w.next;
        let mut new_entries = Vec::new();
        let mut position = start;
        for (i, &len) in batch.payload_lens.iter().enumerate() {
            if position >= w.next_index_at {
                new_entries.push(IndexEntry {
                    offset: first + i as u64,
                    position,
                });
                w.next_index_at = position + INDEX_INTERVAL_BYTES;
            }
            position += frame_len(len);
        }
        w.len = position;
        w.next = first + batch.payload_lens.len() as u64;
        w.dirty = true;
        if !new_entries.is_empty() {
            let mut segments = self.shared.segments_mut();
            if let Some(active) = segments.last_mut().filter(|s| s.base == w.base) {
                active.index.extend(new_entries);
            }
        }
        if config.fsync == FsyncPolicy::Always {
            Self::sync_locked(&mut w, &self.shared)?;
        }
        self.end_tx.send_replace(Offset(w.next));
        Ok(AppendAck {
            first_offset: Offset(first),
            last_offset: Offset(w.next - 1),
        })
    }

    /// The `Always` path: fsync the active segment (and the directory after a roll) while
    /// holding the writer lock.
    fn sync_locked(w: &mut WriterState, shared: &Shared) -> Result<(), AppendError> {
        let result = w
            .file
            .sync_data()
            .map_err(|source| (w.path.clone(), source))
            .and_then(|()| {
                if w.dir_dirty {
                    sync_dir(shared).map_err(|source| (shared.dir.clone(), source))?;
                }
                Ok(())
            });
        match result {
            Ok(()) => {
                w.dirty = false;
                w.dir_dirty = false;
                Ok(())
            }
            Err((path, source)) => {
                w.poisoned = Some(format!("fsync of {} failed: {source}", path.display()));
                Err(AppendError::Sync { path, source })
            }
        }
    }

    /// Starts a new segment whose base is the next offset.
    fn roll(&self, w: &mut WriterState) -> Result<(), AppendError> {
        let base = w.next;
        let path = self.shared.dir.join(segment_file_name(base));
        let roll_err = |source| AppendError::Roll {
            path: path.clone(),
            source,
        };
        // A file of that name can only be the leftover of an earlier failed roll.
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(roll_err(e)),
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(roll_err)?;
        if let Err(e) = file.write_all(&encode_header(base)) {
            // Best effort: a leftover is removed by the next roll or repaired at open.
            let _ = fs::remove_file(&path);
            return Err(roll_err(e));
        }
        let old_path = std::mem::replace(&mut w.path, path.clone());
        if w.dirty {
            w.unsynced.push(old_path);
        }
        w.file = file;
        w.base = base;
        w.len = HEADER_LEN;
        w.next_index_at = HEADER_LEN;
        w.dirty = true;
        w.dir_dirty = true;
        self.shared.segments_mut().push(SegmentMeta {
            base,
            path: path.clone(),
            index: Vec::new(),
        });
        info!(segment = %path.display(), base_offset = base, "event log rolled to a new segment");
        if let Err(error) = self.retention_locked(w, SystemTime::now()) {
            warn!(%error, "event log retention failed after a roll");
        }
        Ok(())
    }

    /// Fsyncs everything written and not yet synced: rolled segments, the active one, the
    /// directory. Returns once all of it is durable.
    pub(crate) fn sync(&self) -> Result<(), FlushError> {
        let _serial = lock(&self.sync_serial);
        let (active, active_path, pending, dir_dirty) = {
            let mut w = lock(&self.state);
            if let Some(reason) = &w.poisoned {
                return Err(FlushError::Poisoned {
                    reason: reason.clone(),
                });
            }
            let active = if w.dirty {
                Some(w.file.try_clone().map_err(|source| FlushError::Sync {
                    path: w.path.clone(),
                    source,
                })?)
            } else {
                None
            };
            w.dirty = false;
            let pending = std::mem::take(&mut w.unsynced);
            let dir_dirty = std::mem::take(&mut w.dir_dirty);
            (active, w.path.clone(), pending, dir_dirty)
        };
        for path in pending {
            match File::open(&path).and_then(|f| f.sync_data()) {
                Ok(()) => {}
                // Retention removed it meanwhile: nothing left to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(self.poison_flush(path, source)),
            }
        }
        if let Some(file) = active
            && let Err(source) = file.sync_data()
        {
            return Err(self.poison_flush(active_path, source));
        }
        if dir_dirty && let Err(source) = sync_dir(&self.shared) {
            return Err(self.poison_flush(self.shared.dir.clone(), source));
        }
        Ok(())
    }

    fn poison_flush(&self, path: PathBuf, source: io::Error) -> FlushError {
        let mut w = lock(&self.state);
        if w.poisoned.is_none() {
            w.poisoned = Some(format!("fsync of {} failed: {source}", path.display()));
        }
        FlushError::Sync { path, source }
    }

    /// Applies the retention policy as of `now`.
    pub(crate) fn enforce_retention(
        &self,
        now: SystemTime,
    ) -> Result<RetentionReport, RetentionError> {
        let w = lock(&self.state);
        self.retention_locked(&w, now)
    }

    /// Deletes the oldest segments the policy no longer keeps; never the active one. The
    /// caller holds the writer lock, so no roll runs meanwhile.
    fn retention_locked(
        &self,
        w: &WriterState,
        now: SystemTime,
    ) -> Result<RetentionReport, RetentionError> {
        let policy = self.shared.config.retention;
        let mut report = RetentionReport {
            removed_segments: 0,
            removed_bytes: 0,
            earliest_offset: Offset(self.shared.earliest()),
        };
        if policy.max_bytes.is_none() && policy.max_age.is_none() {
            return Ok(report);
        }
        let candidates: Vec<(u64, PathBuf)> = self
            .shared
            .segments()
            .iter()
            .map(|s| (s.base, s.path.clone()))
            .collect();
        let mut sizes = Vec::with_capacity(candidates.len());
        for (_, path) in &candidates {
            let meta = fs::metadata(path).map_err(|source| RetentionError::Io {
                path: path.clone(),
                source,
            })?;
            let modified = meta.modified().map_err(|source| RetentionError::Io {
                path: path.clone(),
                source,
            })?;
            sizes.push((meta.len(), modified));
        }
        let mut total: u64 = sizes.iter().map(|(len, _)| len).sum();
        for ((base, path), (len, modified)) in candidates.iter().zip(&sizes) {
            if *base == w.base {
                break; // the active segment, always the last one
            }
            let too_big = policy.max_bytes.is_some_and(|max| total > max);
            let too_old = policy
                .max_age
                .is_some_and(|age| now.duration_since(*modified).is_ok_and(|d| d > age));
            if !too_big && !too_old {
                break;
            }
            {
                // Out of the list first, so no new reader picks it; open readers keep their
                // file descriptor and finish reading it.
                let mut segments = self.shared.segments_mut();
                if segments.first().is_some_and(|s| s.base == *base) {
                    segments.remove(0);
                }
            }
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RetentionError::Io {
                        path: path.clone(),
                        source,
                    });
                }
            }
            total -= len;
            report.removed_segments += 1;
            report.removed_bytes += len;
            info!(
                segment = %path.display(),
                bytes = len,
                reason = if too_big { "size" } else { "age" },
                "event log retention removed a segment"
            );
        }
        report.earliest_offset = Offset(self.shared.earliest());
        Ok(report)
    }
}

fn sync_dir(shared: &Shared) -> io::Result<()> {
    File::open(&shared.dir)?.sync_all()
}

/// The background fsync thread of [`FsyncPolicy::Interval`]. Dropping it stops the thread
/// after one last fsync pass and waits for it.
pub(crate) struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn spawn(core: Arc<WriterCore>, every: Duration) -> io::Result<Flusher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("fleetmind-log-fsync".to_owned())
            .spawn(move || {
                loop {
                    let stopping = !matches!(
                        stopped.recv_timeout(every),
                        Err(RecvTimeoutError::Timeout)
                    );
                    match core.sync() {
                        Ok(()) | Err(FlushError::Poisoned { .. }) => {}
                        Err(error) => error!(
                            %error,
                            "event log background fsync failed; the log refuses writes until reopened"
                        ),
                    }
                    if stopping {
                        break;
                    }
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("event log fsync thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_batch_checks_and_frames() {
        assert!(matches!(
            FramedBatch::new(&[]),
            Err(AppendError::EmptyBatch)
        ));
        let batch = FramedBatch::new(&[b"ab", b"", b"cde"]).expect("valid batch");
        assert_eq!(batch.byte_len(), 8 * 3 + 5);
        assert_eq!(batch.payload_lens, vec![2, 0, 3]);
        let big = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        match FramedBatch::new(&[b"ok", &big]) {
            Err(AppendError::RecordTooLarge { index, len, .. }) => {
                assert_eq!((index, len), (1, MAX_PAYLOAD_BYTES + 1));
            }
            other => panic!("expected RecordTooLarge, got {:?}", other.err()),
        }
    }

    #[test]
    fn run_blocking_works_without_a_runtime() {
        let value = futures::executor::block_on(run_blocking(|| 7)).expect("inline run");
        assert_eq!(value, 7);
    }
}
