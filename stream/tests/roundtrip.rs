//! Append and replay through the public API: rolls, reopen, trait objects, argument errors.

mod common;

use std::sync::Arc;

use common::{SMALL_SEGMENT, append_n, assert_records, payload_for, replay_all, small};
use fleetmind_stream::segment::MAX_PAYLOAD_BYTES;
use fleetmind_stream::{
    AppendError, EventLog, EventSink, EventSource, FsyncPolicy, LogConfig, Offset, OpenLogError,
};

#[test]
fn append_and_replay_across_segment_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    assert_eq!(log.end_offset(), Offset(0));
    assert_eq!(replay_all(&log, 0).len(), 0, "empty log replays nothing");

    // Varying batch sizes, 1 to 37 records per call.
    let mut total = 0;
    for batch in 1..=37 {
        append_n(&log, batch * 3, batch);
        total += batch * 3;
    }
    assert_eq!(log.end_offset(), Offset(total));
    let bases = log.segment_bases();
    assert!(bases.len() > 10, "expected many rolls, got {bases:?}");
    assert_eq!(bases[0], Offset(0));
    assert!(bases.windows(2).all(|w| w[0] < w[1]));
    for path in common::segment_files(dir.path()) {
        let len = std::fs::metadata(&path).expect("stat").len();
        assert!(len <= SMALL_SEGMENT, "{} is {len} bytes", path.display());
    }

    assert_records(&replay_all(&log, 0), 0, total);
    // From the middle of a segment, and exactly at a segment base.
    assert_records(&replay_all(&log, 1234), 1234, total);
    let base = bases[5].0;
    assert_records(&replay_all(&log, base), base, total);
    // At and past the end: nothing.
    assert!(replay_all(&log, total).is_empty());
    assert!(replay_all(&log, total + 100).is_empty());
    assert_eq!(log.verify().expect("log verifies"), total);
}

#[test]
fn reopen_continues_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
        append_n(&log, 500, 7);
    }
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("reopen");
    assert_eq!(log.end_offset(), Offset(500));
    append_n(&log, 300, 11);
    drop(log);
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("reopen again");
    assert_eq!(log.end_offset(), Offset(800));
    assert_records(&replay_all(&log, 0), 0, 800);
}

#[test]
fn a_batch_larger_than_a_segment_goes_whole_into_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    append_n(&log, 10, 10);
    append_n(&log, 200, 200); // ~16 KiB in one call, segments are 4 KiB
    append_n(&log, 10, 10);
    assert_eq!(
        log.segment_bases(),
        vec![Offset(0), Offset(10), Offset(210)]
    );
    assert_records(&replay_all(&log, 0), 0, 220);
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), LogConfig::default()).expect("open");
    match EventLog::open(dir.path(), LogConfig::default()) {
        Err(OpenLogError::Locked { path }) => assert!(path.ends_with("LOCK")),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(log);
    EventLog::open(dir.path(), LogConfig::default()).expect("open after the first closed");
}

#[test]
fn invalid_configs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = LogConfig {
        segment_bytes: 10,
        ..LogConfig::default()
    };
    assert!(matches!(
        EventLog::open(dir.path(), tiny),
        Err(OpenLogError::InvalidConfig { .. })
    ));
    let zero = small(FsyncPolicy::Interval(std::time::Duration::ZERO));
    assert!(matches!(
        EventLog::open(dir.path(), zero),
        Err(OpenLogError::InvalidConfig { .. })
    ));
}

#[test]
fn empty_batches_and_oversized_records_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    assert!(matches!(
        log.append_blocking(&[]),
        Err(AppendError::EmptyBatch)
    ));
    let big = vec![1u8; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        log.append_blocking(&[b"fine", &big]),
        Err(AppendError::RecordTooLarge { index: 1, .. })
    ));
    assert_eq!(log.end_offset(), Offset(0));
    append_n(&log, 3, 3);
    assert_records(&replay_all(&log, 0), 0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_works_through_trait_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    let sink: Arc<dyn EventSink> = Arc::new(log.clone());
    let source: Arc<dyn EventSource> = Arc::new(log.clone());
    let mut sub = source.subscribe(Offset(0)).expect("subscribe");

    // Small batch (inline write) then a batch above the inline limit (blocking pool).
    let small_batch: Vec<Vec<u8>> = (0..5).map(payload_for).collect();
    let refs: Vec<&[u8]> = small_batch.iter().map(Vec::as_slice).collect();
    let ack = sink.append(&refs).await.expect("small append");
    assert_eq!((ack.first_offset, ack.len()), (Offset(0), 5));
    let large_batch: Vec<Vec<u8>> = (5..1500).map(payload_for).collect();
    let refs: Vec<&[u8]> = large_batch.iter().map(Vec::as_slice).collect();
    let ack = sink.append(&refs).await.expect("large append");
    assert_eq!(
        (ack.first_offset, ack.last_offset),
        (Offset(5), Offset(1499))
    );
    sink.flush().await.expect("flush");
    assert_eq!(source.end_offset(), Offset(1500));

    for offset in 0..1500 {
        let record = sub.next().await.expect("open").expect("record");
        assert_eq!(record.offset, Offset(offset));
        assert_eq!(record.payload, payload_for(offset));
    }
}
