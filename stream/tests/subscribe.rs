//! Live tail subscriptions: many readers, catch-up then tail, waiting without polling, closing.

mod common;

use std::pin::pin;

use common::{append_n, payload_for, small};
use fleetmind_stream::{EventLog, EventSink, EventSource, FsyncPolicy, Offset, Subscription};
use futures::poll;

async fn expect_records(sub: &mut Subscription, from: u64, to: u64) {
    for offset in from..to {
        let record = sub
            .next()
            .await
            .unwrap_or_else(|| panic!("subscription ended before {offset}"))
            .unwrap_or_else(|e| panic!("reading {offset}: {e}"));
        assert_eq!(record.offset, Offset(offset));
        assert_eq!(record.payload, payload_for(offset), "payload of {offset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_subscribers_receive_every_record_in_order_while_the_writer_appends() {
    const RECORDS: u64 = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");

    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut sub = log.subscribe(Offset(0)).expect("subscribe");
        readers.push(tokio::spawn(async move {
            expect_records(&mut sub, 0, RECORDS).await;
        }));
    }
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut next = 0;
            let mut batch = 1;
            while next < RECORDS {
                let n = batch.min(RECORDS - next);
                let payloads: Vec<Vec<u8>> = (next..next + n).map(payload_for).collect();
                let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                let ack = log.append(&refs).await.expect("append");
                assert_eq!(ack.first_offset, Offset(next));
                next += n;
                batch = batch % 50 + 1;
                tokio::task::yield_now().await;
            }
        })
    };
    writer.await.expect("writer task");
    for reader in readers {
        reader.await.expect("reader task");
    }
    assert!(
        log.segment_bases().len() > 50,
        "the readers crossed many rolls"
    );
}

#[tokio::test]
async fn a_subscriber_at_an_old_offset_catches_up_then_tails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    append_n(&log, 1000, 25);

    let mut sub = log.subscribe(Offset(100)).expect("subscribe");
    expect_records(&mut sub, 100, 1000).await;

    // Caught up: the next record is not there yet and the subscription waits for it.
    {
        let mut waiting = pin!(sub.next());
        assert!(poll!(&mut waiting).is_pending());
        append_n(&log, 1, 1);
        let record = waiting.await.expect("open").expect("record");
        assert_eq!(record.offset, Offset(1000));
    }
    append_n(&log, 300, 7);
    expect_records(&mut sub, 1001, 1301).await;
}

#[tokio::test]
async fn a_subscription_from_a_future_offset_waits_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    append_n(&log, 10, 10);
    let mut sub = log.subscribe(Offset(15)).expect("subscribe");
    {
        let mut waiting = pin!(sub.next());
        assert!(poll!(&mut waiting).is_pending());
        append_n(&log, 3, 3); // up to 13: still before 15
        assert!(poll!(&mut waiting).is_pending());
        append_n(&log, 5, 5);
        let record = waiting.await.expect("open").expect("record");
        assert_eq!(record.offset, Offset(15));
    }
    expect_records(&mut sub, 16, 18).await;
}

#[tokio::test]
async fn subscriptions_drain_and_end_when_the_log_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(
        dir.path(),
        small(FsyncPolicy::Interval(std::time::Duration::from_millis(50))),
    )
    .expect("open");
    let mut behind = log.subscribe(Offset(0)).expect("subscribe");
    let mut caught_up = log.subscribe(Offset(0)).expect("subscribe");
    append_n(&log, 30, 4);
    expect_records(&mut caught_up, 0, 30).await;
    let mut waiting = pin!(caught_up.next());
    assert!(poll!(&mut waiting).is_pending());

    drop(log);
    assert!(
        waiting.await.is_none(),
        "a waiting subscription ends on close"
    );
    expect_records(&mut behind, 0, 30).await;
    assert!(behind.next().await.is_none());
}

#[tokio::test]
async fn subscribing_at_the_end_sees_only_new_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    append_n(&log, 500, 50);
    let mut sub = log.subscribe(log.end_offset()).expect("subscribe");
    append_n(&log, 20, 3);
    expect_records(&mut sub, 500, 520).await;
}

#[tokio::test]
async fn a_subscriber_never_trusts_buffered_bytes_past_the_committed_end() {
    // Bytes past the committed end can change: a failed append is truncated back and the next
    // append rewrites the same positions. Simulate that with junk appended behind the log's back
    // while the subscriber reads, then removed before the next real append.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), small(FsyncPolicy::Never)).expect("open");
    append_n(&log, 10, 10);
    let segment = common::segment_files(dir.path()).pop().expect("segment");
    let committed_len = std::fs::metadata(&segment).expect("stat").len();
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("open segment");
        file.write_all(&[0xAB; 700]).expect("junk");
    }

    let mut sub = log.subscribe(Offset(0)).expect("subscribe");
    expect_records(&mut sub, 0, 10).await; // its read buffer now holds the junk too
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment")
        .set_len(committed_len)
        .expect("drop junk");
    append_n(&log, 5, 5);
    expect_records(&mut sub, 10, 15).await;
}
