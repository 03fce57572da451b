//! `kill -9` safety: a child process appends and prints every acknowledged offset; the parent
//! kills it mid-stream with SIGKILL, reopens the log and checks that every acknowledged record
//! is there, intact. Six rounds, each continuing the log the previous one left; odd rounds use
//! `FsyncPolicy::Always` in the child, even rounds `Never`.
//!
//! The child is this same test binary, re-executed with [`CHILD_ENV`] set so that
//! `child_append_forever` does the appending (run normally, that test does nothing).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::payload_for;
use fleetmind_stream::{EventLog, EventSource, FsyncPolicy, LogConfig, Offset};

const CHILD_ENV: &str = "FLEETMIND_STREAM_CRASH_CHILD_DIR";

const CHILD_FSYNC_ENV: &str = "FLEETMIND_STREAM_CRASH_CHILD_FSYNC_ALWAYS";

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        fsync,
        ..LogConfig::default()
    }
}

/// The child: appends batches of 1 to 64 records (every sixteenth batch 2000) and prints
/// `ack FIRST LAST` after each acknowledged append, until killed (or after a minute).
#[test]
fn child_append_forever() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let fsync = if std::env::var_os(CHILD_FSYNC_ENV).is_some() {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Never
    };
    let log = EventLog::open(&dir, config(fsync)).expect("child opens the log");
    let mut out = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(60);
    let batch_len = |round: u64| {
        if round.is_multiple_of(16) {
            2000
        } else {
            round % 64 + 1
        }
    };
    // The next batch is built before the previous ack is printed, so that the parent's kill
    // (sent as soon as it reads an ack) tends to land inside the next append.
    let mut round = 1;
    let mut first = log.end_offset().0;
    let mut payloads: Vec<Vec<u8>> = (first..first + batch_len(round)).map(payload_for).collect();
    let mut pending: Option<(u64, u64)> = None;
    while Instant::now() < deadline {
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        if let Some((acked_first, acked_last)) = pending.take() {
            writeln!(out, "ack {acked_first} {acked_last}").expect("print ack");
            out.flush().expect("flush stdout");
        }
        let ack = log.append_blocking(&refs).expect("child append");
        pending = Some((ack.first_offset.0, ack.last_offset.0));
        round += 1;
        first = ack.last_offset.0 + 1;
        payloads = (first..first + batch_len(round)).map(payload_for).collect();
    }
}

#[test]
fn killed_writer_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary path");
    let mut acked_end = 0u64;
    for round in 0..6u64 {
        let mut command = Command::new(&exe);
        // Odd rounds fsync every append: the kill then mostly lands in an fsync, after the
        // write, so records written but never acknowledged must be accepted too.
        command.env_remove(CHILD_FSYNC_ENV);
        if round % 2 == 1 {
            command.env(CHILD_FSYNC_ENV, "1");
        }
        let mut child = command
            .args([
                "--exact",
                "child_append_forever",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let kill_after = 150 + 41 * round;
        let mut acks = 0u64;
        let mut expected_first: Option<u64> = None;
        let mut killed = false;
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).expect("read child stdout");
            if n == 0 {
                break;
            }
            let Some(ack) = line.strip_prefix("ack ").and_then(|r| r.strip_suffix('\n')) else {
                continue;
            };
            let (first, last) = ack.split_once(' ').expect("ack FIRST LAST");
            let (first, last): (u64, u64) = (
                first.parse().expect("first offset"),
                last.parse().expect("last offset"),
            );
            // A new child starts at the recovered end, which holds at least every ack so far.
            match expected_first {
                Some(expected) => assert_eq!(first, expected, "acks are consecutive"),
                None => assert!(first >= acked_end, "child {round} restarted before an ack"),
            }
            expected_first = Some(last + 1);
            acked_end = last + 1;
            acks += 1;
            if acks == kill_after && !killed {
                // Jitter (not synchronisation: any kill point must pass) so the kill lands at
                // different points of the child's loop: framing, write(2), fsync.
                std::thread::sleep(Duration::from_micros(round * 337 % 1500));
                child.kill().expect("SIGKILL the child");
                killed = true;
            }
        }
        assert!(killed, "child {round} stopped before it was killed");
        let status = child.wait().expect("reap child");
        assert!(!status.success(), "child {round} was killed: {status:?}");

        let log =
            EventLog::open(dir.path(), config(FsyncPolicy::Never)).expect("reopen after SIGKILL");
        let end = log.end_offset().0;
        assert!(
            end >= acked_end,
            "round {round}: end {end} < acknowledged {acked_end}"
        );
        let mut count = 0u64;
        for record in log.replay(Offset(0)).expect("replay") {
            let record = record.expect("every record reads back");
            assert_eq!(record.offset, Offset(count));
            assert_eq!(record.payload, payload_for(count), "payload of {count}");
            count += 1;
        }
        assert_eq!(count, end);
    }
}
