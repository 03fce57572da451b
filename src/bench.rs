//! `fleetmind bench ...`: benchmarks that print figures (never pass/fail).

use fleetmind_stream::FsyncPolicy;

use crate::cli::{BenchFsync, BenchLogArgs};

/// `fleetmind bench log`: event log append and replay against a plain buffered write and
/// read of the same bytes in the same directory.
pub fn log(args: &BenchLogArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("fleetmind-bench-log-")
        .tempdir_in(&args.dir)?;
    let fsync = match args.fsync {
        BenchFsync::Always => FsyncPolicy::Always,
        BenchFsync::Interval => FsyncPolicy::Interval(std::time::Duration::from_secs(1)),
        BenchFsync::Never => FsyncPolicy::Never,
    };
    println!(
        "fleetmind bench log: {} records of {} bytes, fsync {:?}, in {}",
        args.records,
        args.payload_bytes,
        args.fsync,
        args.dir.display()
    );
    let report = fleetmind_stream::bench_log(dir.path(), args.records, args.payload_bytes, fsync)?;
    println!("{report}");
    Ok(())
}
