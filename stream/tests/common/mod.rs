//! Fixtures shared by the integration tests: deterministic payloads, small-segment configs and
//! helpers that append and read back.

#![allow(dead_code)] // each test crate uses a different subset

use std::fs;
use std::path::{Path, PathBuf};

use fleetmind_stream::segment::{frame_len, parse_segment_file_name};
use fleetmind_stream::{EventLog, FsyncPolicy, LogConfig, Offset, Record};

/// Segment size used by tests that want many rolls.
pub const SMALL_SEGMENT: u64 = 4096;

/// The payload stored at `offset`: its length varies (5..=120 bytes) and its bytes name it.
pub fn payload_for(offset: u64) -> Vec<u8> {
    let len = 5 + (offset * 37 % 116) as usize;
    let stamp = format!("record-{offset}|");
    stamp.bytes().cycle().take(len).collect()
}

/// Bytes the record at `offset` takes on disk.
pub fn disk_len(offset: u64) -> u64 {
    frame_len(payload_for(offset).len())
}

/// A config with small segments, no retention and the given fsync policy.
pub fn small(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: SMALL_SEGMENT,
        fsync,
        ..LogConfig::default()
    }
}

/// Appends `count` records at the log's end, `batch` per call, checking every ack.
pub fn append_n(log: &EventLog, count: u64, batch: u64) {
    use fleetmind_stream::EventSource;
    let mut done = 0;
    while done < count {
        let n = batch.min(count - done);
        let first = log.end_offset().0;
        let payloads: Vec<Vec<u8>> = (first..first + n).map(payload_for).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let ack = log.append_blocking(&refs).expect("append");
        assert_eq!(ack.first_offset, Offset(first));
        assert_eq!(ack.last_offset, Offset(first + n - 1));
        done += n;
    }
}

/// Every record from `from` to the end, panicking on errors.
pub fn replay_all(log: &EventLog, from: u64) -> Vec<Record> {
    log.replay(Offset(from))
        .expect("replay starts")
        .map(|r| r.expect("record reads"))
        .collect()
}

/// Asserts that `records` are exactly the offsets `from..to` with their expected payloads.
pub fn assert_records(records: &[Record], from: u64, to: u64) {
    assert_eq!(records.len() as u64, to - from, "record count");
    for (record, offset) in records.iter().zip(from..to) {
        assert_eq!(record.offset, Offset(offset));
        assert_eq!(record.payload, payload_for(offset), "payload of {offset}");
    }
}

/// Segment files of a log directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.file_name().and_then(parse_segment_file_name).is_some())
        .collect();
    files.sort();
    files
}
