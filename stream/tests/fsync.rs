//! Every fsync policy appends, flushes, closes and reopens correctly.

mod common;

use std::time::Duration;

use common::{append_n, assert_records, payload_for, replay_all, small};
use fleetmind_stream::{EventLog, EventSink, EventSource, FsyncPolicy, Offset};

const POLICIES: [FsyncPolicy; 3] = [
    FsyncPolicy::Always,
    FsyncPolicy::Interval(Duration::from_millis(5)),
    FsyncPolicy::Never,
];

#[test]
fn every_policy_round_trips_across_rolls_and_reopen() {
    for policy in POLICIES {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = EventLog::open(dir.path(), small(policy)).expect("open");
            append_n(&log, 300, 9);
            log.flush_blocking().expect("flush");
            append_n(&log, 100, 1);
            assert!(log.segment_bases().len() > 3, "{policy:?}");
        }
        let log = EventLog::open(dir.path(), small(policy)).expect("reopen");
        assert_eq!(log.end_offset(), Offset(400), "{policy:?}");
        assert_records(&replay_all(&log, 0), 0, 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_works_through_the_async_sink() {
    for policy in POLICIES {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(dir.path(), small(policy)).expect("open");
        for start in (0..200u64).step_by(20) {
            let payloads: Vec<Vec<u8>> = (start..start + 20).map(payload_for).collect();
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let ack = log.append(&refs).await.expect("append");
            assert_eq!(ack.first_offset, Offset(start));
        }
        log.flush().await.expect("flush");
        log.flush().await.expect("a second flush has nothing to do");
        assert_records(&replay_all(&log, 0), 0, 200);
    }
}

#[test]
fn closing_with_a_long_interval_does_not_wait_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(
        dir.path(),
        small(FsyncPolicy::Interval(Duration::from_secs(3600))),
    )
    .expect("open");
    append_n(&log, 50, 10);
    // Dropping stops the fsync thread at once (after its final pass); a hang fails the test run.
    drop(log);
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("reopen");
    assert_eq!(log.end_offset(), Offset(50));
}
