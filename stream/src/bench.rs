//! `bench_log`: how fast the embedded log appends and replays, next to the ceiling of plain
//! file I/O of the same bytes on the same disk. Backs `fleetmind bench log`.
//!
//! Inside a fresh scratch directory under the given one (removed afterwards), [`ROUNDS`]
//! rounds alternate the two sides, and each figure is the best of its rounds:
//! 1. *log append*: [`EventLog::append_blocking`] in batches of [`BENCH_BATCH_RECORDS`], then a
//!    flush unless the policy is `Never`;
//! 2. *log replay*: [`EventLog::replay`] from offset 0 to the end (frames parsed, checksums
//!    verified, one allocation per record);
//! 3. *plain write* (the ceiling): exactly the bytes the log writes (the frames of a batch,
//!    encoded once before timing) written with one `write` per batch into one file, with
//!    fsyncs matching the policy (after every batch for `Always`, once at the end otherwise
//!    unless `Never`);
//! 4. *plain read* (the ceiling): that file read back raw in 1 MiB chunks.
//!
//! The plain side does no framing, checksumming or parsing, so the ratios (log / plain, on
//! records per second) say what the log's own work costs over raw I/O: 1.0 means nothing.
//! Throughput counts payload bytes (MB = 10^6 bytes). Reads usually come from the page cache,
//! since the data was just written. Nothing here asserts on timings.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Offset;
use crate::api::{AppendError, FlushError, ReadError};
use crate::config::{FsyncPolicy, LogConfig};
use crate::log::{EventLog, OpenLogError, ReplayError};
use crate::segment::encode_frame;

/// Records per append call in the benchmark.
pub const BENCH_BATCH_RECORDS: usize = 256;

/// Rounds of each phase; the best of them is reported.
pub const ROUNDS: usize = 3;

/// Throughput of one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Wall-clock duration of the phase.
    pub elapsed: Duration,
    /// Records per second.
    pub records_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
}

impl Throughput {
    fn measure(records: usize, payload_bytes: usize, elapsed: Duration) -> Throughput {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let (records, bytes) = (records as f64, (records * payload_bytes) as f64);
        Throughput {
            elapsed,
            records_per_sec: records / seconds,
            mb_per_sec: bytes / 1e6 / seconds,
        }
    }
}

/// Every figure of one [`bench_log`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Records written and read in each phase.
    pub records: usize,
    /// Bytes of each payload.
    pub payload_bytes: usize,
    /// Records per append call.
    pub batch_records: usize,
    /// The fsync policy of the log (and the matching fsyncs of the plain write).
    pub fsync: FsyncPolicy,
    /// Appending to the log.
    pub log_append: Throughput,
    /// Writing the same framed bytes, one write per batch (the ceiling).
    pub plain_write: Throughput,
    /// Replaying the log from offset 0.
    pub log_replay: Throughput,
    /// Reading those bytes back raw (the ceiling).
    pub plain_read: Throughput,
    /// `log_append` / `plain_write`, on records per second.
    pub append_ratio: f64,
    /// `log_replay` / `plain_read`, on records per second.
    pub replay_ratio: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "event log benchmark: {} records x {} B payload, {} records per append, fsync {:?}",
            self.records, self.payload_bytes, self.batch_records, self.fsync
        )?;
        writeln!(
            f,
            "{:<24} {:>14} {:>10} {:>10}",
            "phase", "records/s", "MB/s", "seconds"
        )?;
        let rows = [
            ("log append", &self.log_append),
            ("plain write (same bytes)", &self.plain_write),
            ("log replay", &self.log_replay),
            ("plain read (raw)", &self.plain_read),
        ];
        for (name, t) in rows {
            writeln!(
                f,
                "{name:<24} {:>14.0} {:>10.1} {:>10.3}",
                t.records_per_sec,
                t.mb_per_sec,
                t.elapsed.as_secs_f64()
            )?;
        }
        writeln!(f, "log append / plain write: {:.2}", self.append_ratio)?;
        write!(f, "log replay / plain read:  {:.2}", self.replay_ratio)
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Asked for zero records.
    #[error("the benchmark needs at least one record")]
    NoRecords,
    /// The scratch directory or the plain file could not be created, written or read.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The log could not be opened.
    #[error("could not open the benchmark log")]
    Open(#[from] OpenLogError),
    /// An append failed.
    #[error("append failed during the benchmark")]
    Append(#[from] AppendError),
    /// The final flush failed.
    #[error("flush failed during the benchmark")]
    Flush(#[from] FlushError),
    /// The replay could not start.
    #[error("replay failed to start during the benchmark")]
    Replay(#[from] ReplayError),
    /// The replay failed.
    #[error("reading the log back failed during the benchmark")]
    Read(#[from] ReadError),
    /// A phase read back a different number of records than written.
    #[error("{phase}: read back {got}, but {expected} were written")]
    Mismatch {
        /// The phase.
        phase: &'static str,
        /// Records written.
        expected: usize,
        /// Records read.
        got: usize,
    },
}

/// Measures the embedded log against plain buffered file I/O in a scratch directory under
/// `dir` (removed afterwards); see the module docs.
///
/// # Errors
/// [`BenchError::NoRecords`] for `records == 0`, and any failure of the log or of the plain
/// file I/O (e.g. [`BenchError::Append`] with [`AppendError::RecordTooLarge`] for an oversized
/// `payload_bytes`).
pub fn bench_log(
    dir: &Path,
    records: usize,
    payload_bytes: usize,
    fsync: FsyncPolicy,
) -> Result<BenchReport, BenchError> {
    if records == 0 {
        return Err(BenchError::NoRecords);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let work = dir.join(format!("fleetmind-bench-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = run(&work, records, payload_bytes, fsync);
    // Best effort: a leftover scratch directory is harmless and named for what it is.
    let _ = fs::remove_dir_all(&work);
    result
}

fn run(
    work: &Path,
    records: usize,
    payload_bytes: usize,
    fsync: FsyncPolicy,
) -> Result<BenchReport, BenchError> {
    let payloads = make_payloads(BENCH_BATCH_RECORDS.min(records), payload_bytes);
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let batches = batch_sizes(records);
    // The bytes of every distinct batch size, framed exactly as the log frames them.
    let framed = |n: usize| {
        let mut bytes = Vec::new();
        for payload in &refs[..n] {
            encode_frame(&mut bytes, payload);
        }
        bytes
    };
    let full_batch = framed(BENCH_BATCH_RECORDS.min(records));
    let last_batch = batches.last().map_or_else(Vec::new, |&n| framed(n));

    let mut best: [Option<Duration>; 4] = [None; 4];
    let keep_best = |slot: &mut Option<Duration>, elapsed: Duration| {
        *slot = Some(slot.map_or(elapsed, |b| b.min(elapsed)));
    };
    for round in 0..ROUNDS {
        let dir = work.join(format!("log-{round}"));
        let log = EventLog::open(
            &dir,
            LogConfig {
                fsync,
                ..LogConfig::default()
            },
        )?;
        let started = Instant::now();
        for &n in &batches {
            log.append_blocking(&refs[..n])?;
        }
        if fsync != FsyncPolicy::Never {
            log.flush_blocking()?;
        }
        keep_best(&mut best[0], started.elapsed());

        let started = Instant::now();
        let mut read = 0usize;
        for record in log.replay(Offset::ZERO)? {
            let record = record?;
            read += usize::from(record.payload.len() == payload_bytes);
        }
        keep_best(&mut best[1], started.elapsed());
        check_count("log replay", records, read)?;
        drop(log);
        let _ = fs::remove_dir_all(&dir);

        let plain = work.join(format!("plain-{round}.bin"));
        let started = Instant::now();
        let written = plain_write(&plain, &batches, &full_batch, &last_batch, fsync)
            .map_err(io_err(&plain))?;
        keep_best(&mut best[2], started.elapsed());

        let started = Instant::now();
        let read = plain_read(&plain).map_err(io_err(&plain))?;
        keep_best(&mut best[3], started.elapsed());
        if read != written {
            return Err(BenchError::Mismatch {
                phase: "plain read (bytes)",
                expected: written,
                got: read,
            });
        }
        let _ = fs::remove_file(&plain);
    }
    let [log_append, log_replay, plain_write, plain_read] =
        best.map(|b| Throughput::measure(records, payload_bytes, b.unwrap_or_default()));
    Ok(BenchReport {
        records,
        payload_bytes,
        batch_records: BENCH_BATCH_RECORDS,
        fsync,
        append_ratio: log_append.records_per_sec / plain_write.records_per_sec,
        replay_ratio: log_replay.records_per_sec / plain_read.records_per_sec,
        log_append,
        plain_write,
        log_replay,
        plain_read,
    })
}

/// `count` distinct pseudo-random payloads (xorshift), reused for every batch.
fn make_payloads(count: usize, payload_bytes: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|_| {
            (0..payload_bytes)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect()
        })
        .collect()
}

/// Sizes of the append calls covering `records`.
fn batch_sizes(records: usize) -> Vec<usize> {
    let mut sizes = vec![BENCH_BATCH_RECORDS; records / BENCH_BATCH_RECORDS];
    if !records.is_multiple_of(BENCH_BATCH_RECORDS) {
        sizes.push(records % BENCH_BATCH_RECORDS);
    }
    sizes
}

/// Writes the pre-framed batches, one `write` per batch; returns the bytes written.
fn plain_write(
    path: &Path,
    batches: &[usize],
    full_batch: &[u8],
    last_batch: &[u8],
    fsync: FsyncPolicy,
) -> io::Result<usize> {
    let mut out = File::create(path)?;
    let mut written = 0;
    for (i, &n) in batches.iter().enumerate() {
        let bytes = if i + 1 == batches.len() && n != BENCH_BATCH_RECORDS {
            last_batch
        } else {
            full_batch
        };
        out.write_all(bytes)?;
        written += bytes.len();
        if fsync == FsyncPolicy::Always {
            out.sync_data()?;
        }
    }
    if matches!(fsync, FsyncPolicy::Interval(_)) {
        out.sync_data()?;
    }
    Ok(written)
}

/// Reads the whole file raw in 1 MiB chunks; returns the bytes read.
fn plain_read(path: &Path) -> io::Result<usize> {
    let mut input = File::open(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match input.read(&mut chunk)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

fn check_count(phase: &'static str, expected: usize, got: usize) -> Result<(), BenchError> {
    if expected == got {
        Ok(())
    } else {
        Err(BenchError::Mismatch {
            phase,
            expected,
            got,
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_record() {
        assert_eq!(batch_sizes(600), vec![256, 256, 88]);
        assert_eq!(batch_sizes(512), vec![256, 256]);
        assert_eq!(batch_sizes(3), vec![3]);
    }

    #[test]
    fn small_run_reports_every_phase_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = bench_log(dir.path(), 1000, 100, FsyncPolicy::Never).expect("benchmark runs");
        assert_eq!(report.records, 1000);
        assert!(report.log_append.records_per_sec > 0.0);
        assert!(report.plain_read.mb_per_sec > 0.0);
        let table = report.to_string();
        assert!(table.contains("log replay / plain read"), "{table}");
        let left: Vec<_> = fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "scratch directory removed");
    }

    #[test]
    fn zero_records_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            bench_log(dir.path(), 0, 10, FsyncPolicy::Never),
            Err(BenchError::NoRecords)
        ));
    }
}
