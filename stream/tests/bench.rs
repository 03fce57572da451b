//! Prints `bench_log` figures; ignored by default (it is a measurement, not a check):
//! `cargo test -p fleetmind-stream --release --test bench -- --ignored --nocapture`.

use std::time::Duration;

use fleetmind_stream::{FsyncPolicy, bench_log};

#[test]
#[ignore = "a measurement: run on demand with --ignored --nocapture"]
fn print_bench_log_figures() {
    let records = std::env::var("FLEETMIND_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("tempdir");
    for fsync in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_secs(1)),
        FsyncPolicy::Always,
    ] {
        let report = bench_log(dir.path(), records, 200, fsync).expect("benchmark runs");
        println!("{report}\n");
    }
}
