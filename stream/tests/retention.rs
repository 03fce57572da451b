//! Retention by size and by age: oldest segments go, the active one stays, readers learn the
//! earliest offset.

mod common;

use std::fs::OpenOptions;
use std::time::{Duration, SystemTime};

use common::{SMALL_SEGMENT, append_n, assert_records, replay_all, segment_files, small};
use fleetmind_stream::{
    EventLog, EventSource, FsyncPolicy, LogConfig, Offset, ReadError, ReplayError, RetentionPolicy,
    SubscribeError,
};

fn with_retention(retention: RetentionPolicy) -> LogConfig {
    LogConfig {
        retention,
        ..small(FsyncPolicy::Never)
    }
}

#[test]
fn size_retention_keeps_the_newest_segments_and_replay_reports_the_earliest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = with_retention(RetentionPolicy {
        max_bytes: Some(3 * SMALL_SEGMENT),
        max_age: None,
    });
    let log = EventLog::open(dir.path(), config).expect("open");
    append_n(&log, 2000, 10);

    let files = segment_files(dir.path());
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("stat").len())
        .sum();
    // Retention runs at each roll, so the new active segment may add up to one segment.
    assert!(total <= 4 * SMALL_SEGMENT, "{total} bytes retained");
    assert!(total > 2 * SMALL_SEGMENT, "{total} bytes retained");
    assert!(files.len() >= 2, "{files:?}");
    assert_eq!(files.len(), log.segment_bases().len());

    let earliest = log.earliest_offset();
    assert!(earliest > Offset(0));
    assert_eq!(log.segment_bases()[0], earliest);
    match log.replay(Offset(0)) {
        Err(ReplayError::Expired {
            requested,
            earliest: reported,
        }) => assert_eq!((requested, reported), (Offset(0), earliest)),
        other => panic!("expected Expired, got {other:?}"),
    }
    match log.subscribe(Offset(earliest.0 - 1)) {
        Err(SubscribeError::Expired {
            earliest: reported, ..
        }) => assert_eq!(reported, earliest),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_records(&replay_all(&log, earliest.0), earliest.0, 2000);

    // Retention survives a reopen: offsets stay where they were.
    drop(log);
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("reopen");
    assert_eq!(log.earliest_offset(), earliest);
    assert_eq!(log.end_offset(), Offset(2000));
}

#[test]
fn size_retention_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = with_retention(RetentionPolicy {
        max_bytes: Some(1),
        max_age: None,
    });
    let log = EventLog::open(dir.path(), config).expect("open");
    append_n(&log, 500, 10);
    let report = log.enforce_retention().expect("retention");
    assert_eq!(report.removed_segments, 0, "already enforced on roll");
    assert_eq!(segment_files(dir.path()).len(), 1);
    let earliest = log.earliest_offset();
    assert_eq!(report.earliest_offset, earliest);
    assert_records(&replay_all(&log, earliest.0), earliest.0, 500);
}

#[test]
fn age_retention_removes_old_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = with_retention(RetentionPolicy {
        max_bytes: None,
        max_age: Some(Duration::from_secs(3600)),
    });
    let log = EventLog::open(dir.path(), config).expect("open");
    append_n(&log, 600, 10);
    let files = segment_files(dir.path());
    assert!(files.len() >= 4);
    assert_eq!(
        log.enforce_retention().expect("retention").removed_segments,
        0
    );

    // Age every segment but the two newest past the limit; then also the active one.
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    for file in &files[..files.len() - 2] {
        set_mtime(file, old);
    }
    let report = log.enforce_retention().expect("retention");
    assert_eq!(report.removed_segments, files.len() - 2);
    assert_eq!(segment_files(dir.path()), files[files.len() - 2..].to_vec());

    for file in &files[files.len() - 2..] {
        set_mtime(file, old);
    }
    let report = log.enforce_retention().expect("retention");
    assert_eq!(
        report.removed_segments, 1,
        "everything but the active segment"
    );
    let active = log.segment_bases();
    assert_eq!(active.len(), 1);
    assert_eq!(report.earliest_offset, active[0]);
    assert!(matches!(
        log.replay(Offset(0)),
        Err(ReplayError::Expired { earliest, .. }) if earliest == active[0]
    ));
    append_n(&log, 60, 10);
    // The aged segment was rolled away and removed by the retention pass of that roll.
    let earliest = log.earliest_offset();
    assert!(earliest > active[0], "{earliest:?}");
    assert_records(&replay_all(&log, earliest.0), earliest.0, 660);
}

#[tokio::test]
async fn a_subscriber_overtaken_by_retention_gets_the_earliest_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = with_retention(RetentionPolicy {
        max_bytes: Some(2 * SMALL_SEGMENT),
        max_age: None,
    });
    let log = EventLog::open(dir.path(), config).expect("open");
    let mut sub = log.subscribe(Offset(0)).expect("subscribe at 0");
    append_n(&log, 1000, 10);
    match sub.next().await {
        Some(Err(ReadError::Expired {
            requested,
            earliest,
        })) => {
            assert_eq!(requested, Offset(0));
            assert_eq!(earliest, log.earliest_offset());
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    assert!(
        sub.next().await.is_none(),
        "a subscription ends after an error"
    );
}

fn set_mtime(path: &std::path::Path, when: SystemTime) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(when)
        .expect("set mtime");
}
