//! Crash recovery at open: torn tails are truncated, real corruption is reported with file and
//! byte position.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::{append_n, assert_records, disk_len, replay_all, segment_files, small};
use fleetmind_stream::segment::{FRAME_HEADER_LEN, HEADER_LEN, segment_file_name};
use fleetmind_stream::{
    EventLog, EventSource, FsyncPolicy, LogConfig, Offset, OpenLogError, ReadError,
};

fn truncate_by(path: &Path, bytes: u64) {
    let file = OpenOptions::new().write(true).open(path).expect("open");
    let len = file.metadata().expect("stat").len();
    file.set_len(len - bytes).expect("truncate");
}

fn flip_byte(path: &Path, position: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[position as usize] ^= 0x20;
    fs::write(path, bytes).expect("write");
}

/// A log of `count` records in one segment; returns the segment path.
fn one_segment_log(dir: &Path, count: u64) -> std::path::PathBuf {
    let config = LogConfig {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let log = EventLog::open(dir, config).expect("open");
    append_n(&log, count, 4);
    let mut files = segment_files(dir);
    assert_eq!(files.len(), 1);
    files.pop().expect("a segment")
}

#[test]
fn torn_tail_is_truncated_at_every_cut_point() {
    let count = 20;
    let last = disk_len(count - 1);
    let cuts = [
        (1, count - 1),                       // payload short by one byte
        (last - FRAME_HEADER_LEN, count - 1), // only the frame header left
        (last - 3, count - 1),                // frame header cut short
        (last - 1, count - 1),                // one byte of the frame left
        (last, count - 1),                    // exactly at a record boundary: nothing torn
        (last + 2, count - 2),                // into the record before
    ];
    for (cut, expected_end) in cuts {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = one_segment_log(dir.path(), count);
        truncate_by(&segment, cut);

        let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("recovering open");
        assert_eq!(log.end_offset(), Offset(expected_end), "cut {cut}");
        assert_records(&replay_all(&log, 0), 0, expected_end);
        // Later appends continue at the recovered end and read back intact.
        append_n(&log, 5, 2);
        drop(log);
        let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("reopen");
        assert_records(&replay_all(&log, 0), 0, expected_end + 5);
    }
}

#[test]
fn flipped_byte_in_the_last_payload_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = one_segment_log(dir.path(), 12);
    let len = fs::metadata(&segment).expect("stat").len();
    flip_byte(&segment, len - 2);

    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("recovering open");
    assert_eq!(log.end_offset(), Offset(11));
    assert_eq!(
        fs::metadata(&segment).expect("stat").len(),
        len - disk_len(11)
    );
    append_n(&log, 3, 3);
    assert_records(&replay_all(&log, 0), 0, 14);
}

#[test]
fn zero_filled_tail_after_power_loss_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = one_segment_log(dir.path(), 8);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    file.write_all(&[0u8; 4096]).expect("zeros");
    drop(file);

    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("recovering open");
    assert_eq!(log.end_offset(), Offset(8));
    append_n(&log, 2, 2);
    assert_records(&replay_all(&log, 0), 0, 10);
}

#[test]
fn corruption_before_the_tail_of_the_last_segment_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = one_segment_log(dir.path(), 10);
    let third_payload = HEADER_LEN + disk_len(0) + disk_len(1) + FRAME_HEADER_LEN + 2;
    flip_byte(&segment, third_payload);

    match EventLog::open(dir.path(), small(FsyncPolicy::Never)) {
        Err(OpenLogError::Corrupt { path, position, .. }) => {
            assert_eq!(path, segment);
            assert_eq!(position, HEADER_LEN + disk_len(0) + disk_len(1));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was truncated.
    assert!(fs::metadata(&segment).expect("stat").len() > third_payload + 100);
}

#[test]
fn corruption_in_an_older_segment_is_an_error_naming_file_and_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
        append_n(&log, 400, 10);
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let victim = &files[0];
    let bad_record_at = HEADER_LEN + disk_len(0) + disk_len(1) + disk_len(2);
    flip_byte(victim, bad_record_at + FRAME_HEADER_LEN + 1);

    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open succeeds");
    let mut replay = log.replay(Offset(0)).expect("replay starts");
    for offset in 0..3 {
        assert_eq!(
            replay.next().expect("some").expect("intact").offset,
            Offset(offset)
        );
    }
    match replay.next() {
        Some(Err(ReadError::Corrupt {
            path,
            position,
            reason,
        })) => {
            assert_eq!(&path, victim);
            assert_eq!(position, bad_record_at);
            assert!(reason.contains("checksum"), "{reason}");
            let message = ReadError::Corrupt {
                path,
                position,
                reason,
            }
            .to_string();
            assert!(message.contains(&segment_file_name(0)), "{message}");
            assert!(
                message.contains(&format!("byte {bad_record_at}")),
                "{message}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(replay.next().is_none(), "a replay stops after an error");
    assert!(matches!(log.verify(), Err(ReadError::Corrupt { .. })));

    // Later segments still read, and appends still work.
    let second_base = log.segment_bases()[1].0;
    assert_records(&replay_all(&log, second_base), second_base, 400);
    append_n(&log, 1, 1);
}

#[test]
fn an_older_segment_missing_its_last_record_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
        append_n(&log, 300, 10);
    }
    let files = segment_files(dir.path());
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    let next_base = log.segment_bases()[1].0;
    drop(log);
    truncate_by(&files[0], disk_len(next_base - 1));

    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    let error = log
        .replay(Offset(0))
        .expect("replay starts")
        .find_map(Result::err)
        .expect("an error");
    match error {
        ReadError::Corrupt { path, reason, .. } => {
            assert_eq!(path, files[0]);
            assert!(
                reason.contains(&format!("next segment starts at {next_base}")),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn torn_header_of_a_new_last_segment_is_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
        append_n(&log, 50, 5);
    }
    // A crash right after creating the next segment, mid-header.
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    let end = log.end_offset().0;
    drop(log);
    fs::write(dir.path().join(segment_file_name(end)), b"FME").expect("torn header");

    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("recovering open");
    assert_eq!(log.end_offset(), Offset(end));
    assert_eq!(log.segment_bases().last(), Some(&Offset(end)));
    append_n(&log, 5, 5);
    assert_records(&replay_all(&log, 0), 0, end + 5);
}

#[test]
fn a_bad_header_in_an_older_segment_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
        append_n(&log, 200, 10);
    }
    let files = segment_files(dir.path());
    flip_byte(&files[0], 1);
    match EventLog::open(dir.path(), small(FsyncPolicy::Never)) {
        Err(OpenLogError::BadHeader { path, reason }) => {
            assert_eq!(path, files[0]);
            assert!(reason.contains("magic"), "{reason}");
        }
        other => panic!("expected BadHeader, got {other:?}"),
    }
}
