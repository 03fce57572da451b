//! The Parquet tier end to end: a real event log compacted into hourly Parquet files, queried
//! together with the memory tables, across restarts, crashes, retention and gaps in the log;
//! and the files read by DuckDB and pandas.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMillisecondType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use fleetmind_engine::test_utils::{anomaly, host_sample};
use fleetmind_engine::{ArchiveConfig, Compactor, PassReport, QueryLimits, Store, StoreConfig};
use fleetmind_schema::{Envelope, NodeBytes, Record, VcpuSample, VmSample, VmmKind};
use fleetmind_stream::{EventLog, EventSource as _, LogConfig, RetentionPolicy};
use serde_json::{Value, json};
use tempfile::TempDir;

/// 2023-11-14T22:13:20Z.
const NOW: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// Start of the hour `NOW` is in: 22:00.
const HOUR_22: i64 = NOW - 13 * MINUTE - 20_000;
/// The watermark with `compact_after` = 1 h at `NOW`: 21:00.
const W: i64 = HOUR_22 - HOUR;

fn vm_sample(host: &str, vm: &str, ts: i64) -> VmSample {
    VmSample {
        ts,
        host: host.to_owned(),
        vm: vm.to_owned(),
        name: format!("{vm}-name"),
        vmm: VmmKind::Builtin,
        interval_ms: 1000,
        mem_bytes: 4 << 30,
        rss_bytes: 1 << 30,
        numa_resident: vec![NodeBytes {
            node: 0,
            bytes: 1 << 30,
        }],
        balloon_target_bytes: None,
        balloon_actual_bytes: Some(0),
        guest_free_bytes: None,
        dirty_bytes_per_s: Some(1024.0),
        vcpus: (0..2)
            .map(|vcpu| VcpuSample {
                vcpu,
                tid: Some(1000 + vcpu),
                run_frac: 0.5,
                wait_frac: 0.01,
                host_cpu: Some(vcpu),
                affinity: vec![0, 1],
                exits_per_s: 100.0,
            })
            .collect(),
        exits: Vec::new(),
    }
}

/// Every `step` ms in `[from, to)`: a sample of hosts a and b, of VMs vm-1 and vm-2 on a, and
/// every sixth time an anomaly on a.
fn records(from: i64, to: i64, step: i64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut ts = from;
    let mut i = 0;
    while ts < to {
        out.push(Record::HostSample(host_sample("a", ts)));
        out.push(Record::HostSample(host_sample("b", ts)));
        out.push(Record::VmSample(vm_sample("a", "vm-1", ts)));
        out.push(Record::VmSample(vm_sample("a", "vm-2", ts)));
        if i % 6 == 0 {
            out.push(Record::Anomaly(anomaly("a", ts)));
        }
        ts += step;
        i += 1;
    }
    out
}

fn table_of(record: &Record) -> &'static str {
    record.kind().table_name()
}

fn ts_of(record: &Record) -> i64 {
    match record {
        Record::HostSample(r) => r.ts,
        Record::VmSample(r) => r.ts,
        Record::Anomaly(r) => r.ts,
        other => panic!("fixture has no {:?}", other.kind()),
    }
}

fn open_log(dir: &Path) -> EventLog {
    EventLog::open(dir.join("events"), LogConfig::default()).expect("log opens")
}

fn append(log: &EventLog, records: &[Record]) {
    let payloads: Vec<Vec<u8>> = records
        .iter()
        .map(|r| serde_json::to_vec(&Envelope::new(r.clone())).expect("encodes"))
        .collect();
    for chunk in payloads.chunks(500) {
        let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        log.append_blocking(&slices).expect("appends");
    }
}

fn config(dir: &Path) -> ArchiveConfig {
    ArchiveConfig::new(dir.join("parquet"))
}

fn compact(compactor: &mut Compactor, now: i64) -> PassReport {
    compactor
        .run(now, &AtomicBool::new(false))
        .expect("compaction pass")
}

/// A store with a long window (so memory holds every fixture row unless a test says
/// otherwise) and the compactor's tier attached.
fn store_with(window: Duration, compactor: &Compactor, records: &[Record], now: i64) -> Store {
    let store = Store::new(StoreConfig {
        memory_window: window,
        ..StoreConfig::default()
    });
    store.attach_archive(compactor.archive());
    store
        .ingest_at(records.iter().cloned(), now)
        .expect("ingests");
    store
}

async fn rows(store: &Store, sql: &str) -> Vec<Vec<Value>> {
    match store.query(sql, &QueryLimits::default()).await {
        Ok(result) => result.rows,
        Err(e) => panic!("{sql}: {e:?}"),
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    let result = rows(store, sql).await;
    result[0][0]
        .as_i64()
        .unwrap_or_else(|| panic!("{sql}: {result:?}"))
}

/// Every Parquet file of a table, by partition path relative to the table directory, with the
/// `ts` of its rows.
fn parquet_files(root: &Path, table: &str) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    let table_dir = root.join(table);
    let Ok(dates) = fs::read_dir(&table_dir) else {
        return out;
    };
    for date in dates {
        let date = date.expect("entry").path();
        for hour in fs::read_dir(&date).expect("hour dirs") {
            let hour = hour.expect("entry").path();
            for file in fs::read_dir(&hour).expect("files") {
                let file = file.expect("entry").path();
                let name = file
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                assert!(
                    name.starts_with("part-") && name.ends_with(".parquet"),
                    "unexpected file {}",
                    file.display()
                );
                let relative = file
                    .strip_prefix(&table_dir)
                    .expect("under the table")
                    .to_string_lossy()
                    .into_owned();
                out.insert(relative, read_ts(&file));
            }
        }
    }
    out
}

fn read_ts(file: &Path) -> Vec<i64> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(file).expect("open"))
        .expect("a Parquet file")
        .build()
        .expect("reader");
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("reads");
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("ts")
                .expect("ts column")
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec()
        })
        .collect()
}

/// The fixture's records below `watermark`, per table and hour partition.
fn expected_partitions(
    records: &[Record],
    watermark: i64,
) -> BTreeMap<(&'static str, String), usize> {
    let mut out = BTreeMap::new();
    for r in records {
        let ts = ts_of(r);
        if ts < watermark {
            let hour = (ts.div_euclid(HOUR)).rem_euclid(24);
            *out.entry((table_of(r), format!("date=2023-11-14/hour={hour:02}")))
                .or_default() += 1;
        }
    }
    out
}

fn all_files(root: &Path) -> BTreeMap<(&'static str, String), usize> {
    let mut out: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    for table in ["host_samples", "vm_samples", "anomalies"] {
        for (path, ts) in parquet_files(root, table) {
            let partition = Path::new(&path)
                .parent()
                .expect("partition")
                .to_string_lossy()
                .into_owned();
            *out.entry((table, partition)).or_default() += ts.len();
        }
    }
    out
}

#[tokio::test]
async fn compaction_writes_each_kind_into_its_hour_partition() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    // 18:00 to 22:10, every 10 minutes.
    let fixture = records(HOUR_22 - 4 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    append(&log, &fixture);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    let report = compact(&mut compactor, NOW);

    assert_eq!(report.watermark, Some(W));
    assert_eq!(report.scanned_to, log.end_offset());
    let expected = expected_partitions(&fixture, W);
    assert_eq!(
        expected
            .keys()
            .map(|(_, p)| p.as_str())
            .collect::<std::collections::BTreeSet<_>>(),
        [
            "date=2023-11-14/hour=18",
            "date=2023-11-14/hour=19",
            "date=2023-11-14/hour=20"
        ]
        .into_iter()
        .collect()
    );
    let root = dir.path().join("parquet");
    assert_eq!(all_files(&root), expected);
    assert_eq!(
        report.rows_written as usize,
        expected.values().sum::<usize>()
    );
    // Every row sits in the partition of its own hour, and nothing at or past the watermark
    // was written.
    for table in ["host_samples", "vm_samples", "anomalies"] {
        for (path, ts) in parquet_files(&root, table) {
            // date=YYYY-MM-DD/hour=HH/part-...
            let hour: i64 = path[21..23].parse().expect("hour");
            for t in ts {
                assert_eq!(t.div_euclid(HOUR).rem_euclid(24), hour, "{table}/{path}");
                assert!(t < W);
            }
        }
    }
    // The pending records (21:00 on) are the first not written.
    let first_pending = fixture
        .iter()
        .position(|r| ts_of(r) >= W)
        .expect("some pending");
    assert_eq!(compactor.pending_from().get(), first_pending as u64);

    // A second pass at the same time has nothing to do.
    let again = compact(&mut compactor, NOW);
    assert_eq!((again.rows_written, again.files_written), (0, 0));
    assert_eq!(all_files(&root), expected);
}

#[tokio::test]
async fn the_union_counts_each_row_once_across_the_watermark() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    let fixture = records(HOUR_22 - 4 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    append(&log, &fixture);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    // Memory holds everything (12 h window), Parquet everything before 21:00.
    let store = store_with(Duration::from_secs(12 * 3600), &compactor, &fixture, NOW);
    let before = count(&store, "select count(*) from vm_samples").await;
    compact(&mut compactor, NOW);
    let vm_rows = fixture
        .iter()
        .filter(|r| table_of(r) == "vm_samples")
        .count() as i64;
    assert_eq!(before, vm_rows);
    assert_eq!(
        count(&store, "select count(*) from vm_samples").await,
        vm_rows
    );
    for table in ["host_samples", "anomalies"] {
        let n = fixture.iter().filter(|r| table_of(r) == table).count() as i64;
        assert_eq!(
            count(&store, &format!("select count(*) from {table}")).await,
            n,
            "{table}"
        );
    }
    // Rows on either side of the cut, and a group-by across it.
    let below = fixture
        .iter()
        .filter(|r| table_of(r) == "host_samples" && ts_of(r) < W)
        .count() as i64;
    assert_eq!(
        count(
            &store,
            "select count(*) from host_samples where ts < '2023-11-14T21:00:00Z'"
        )
        .await,
        below
    );
    let per_host = rows(
        &store,
        "select host, count(*), min(ts), max(ts) from host_samples group by host order by host",
    )
    .await;
    let n = fixture
        .iter()
        .filter(|r| table_of(r) == "host_samples")
        .count() as i64
        / 2;
    assert_eq!(
        per_host,
        [
            vec![
                json!("a"),
                json!(n),
                json!("2023-11-14T18:00:00Z"),
                json!("2023-11-14T22:10:00Z")
            ],
            vec![
                json!("b"),
                json!(n),
                json!("2023-11-14T18:00:00Z"),
                json!("2023-11-14T22:10:00Z")
            ],
        ]
    );
    // Nested columns come back the same from both tiers.
    let nested = rows(
        &store,
        "select count(*), sum(cpu['busy_frac']), sum(per_cpu[1]['busy_frac']) from host_samples \
         where ts >= '2023-11-14T20:30:00Z' and ts < '2023-11-14T21:30:00Z'",
    )
    .await;
    assert_eq!(nested, [[json!(12), json!(3.0), json!(3.0)]]);
    let joined = count(
        &store,
        "select count(*) from vm_samples v join host_samples h on v.host = h.host and v.ts = h.ts",
    )
    .await;
    assert_eq!(joined, vm_rows);
}

#[tokio::test]
async fn memory_window_and_parquet_answer_a_query_spanning_both() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    // 12:00 to 22:10: far more than the memory window of 2 h.
    let fixture = records(HOUR_22 - 10 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    append(&log, &fixture);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    compact(&mut compactor, NOW);
    let store = store_with(Duration::from_secs(2 * 3600), &compactor, &fixture, NOW);
    let in_memory = store.row_counts()["host_samples"] as i64;
    let total = fixture
        .iter()
        .filter(|r| table_of(r) == "host_samples")
        .count() as i64;
    assert!(in_memory < total / 3, "memory holds {in_memory} of {total}");
    assert_eq!(
        count(&store, "select count(*) from host_samples").await,
        total
    );
    assert_eq!(
        rows(&store, "select min(ts), max(ts) from host_samples").await,
        [[json!("2023-11-14T12:00:00Z"), json!("2023-11-14T22:10:00Z")]]
    );
    // 19:30 to 21:30: some hours only on disk, one across the cut, one in memory.
    let span = count(
        &store,
        "select count(*) from host_samples \
         where ts >= '2023-11-14T19:30:00Z' and ts < '2023-11-14T21:30:00Z'",
    )
    .await;
    assert_eq!(span, 2 * 12);

    // Only the partitions the bounds reach are opened.
    let plan = rows(
        &store,
        "explain select count(*) from host_samples where ts >= '2023-11-14T19:30:00Z'",
    )
    .await;
    let text = serde_json::to_string(&plan).expect("json");
    assert!(
        text.contains("hour=19") && text.contains("hour=20"),
        "{text}"
    );
    for pruned in ["hour=12", "hour=18", "hour=21"] {
        assert!(!text.contains(pruned), "{pruned} was not pruned: {text}");
    }
}

#[tokio::test]
async fn the_tiers_keep_one_table_per_kind_and_the_query_limits() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    let fixture = records(HOUR_22 - 4 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    append(&log, &fixture);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    compact(&mut compactor, NOW);
    let store = store_with(Duration::from_secs(12 * 3600), &compactor, &fixture, NOW);

    let tables = rows(
        &store,
        "select table_name from information_schema.tables where table_schema = 'public' \
         order by table_name",
    )
    .await;
    assert_eq!(
        tables.len(),
        fleetmind_schema::RecordKind::ALL.len(),
        "{tables:?}"
    );
    // Tables with no Parquet files yet still answer.
    assert_eq!(count(&store, "select count(*) from audit").await, 0);

    let limits = QueryLimits {
        max_rows: 10,
        ..QueryLimits::default()
    };
    let result = store
        .query("select host, ts from host_samples order by ts", &limits)
        .await
        .expect("runs");
    assert_eq!((result.rows.len(), result.truncated), (10, true));
    assert_eq!(result.rows[0][1], json!("2023-11-14T18:00:00Z"));
    let refused = store
        .query(
            "insert into host_samples select * from host_samples",
            &QueryLimits::default(),
        )
        .await
        .expect_err("writes are refused");
    assert!(refused.is_client_error(), "{refused:?}");
    let timeout = QueryLimits {
        timeout: Duration::ZERO,
        ..QueryLimits::default()
    };
    let late = store
        .query("select count(*) from vm_samples", &timeout)
        .await
        .expect_err("times out");
    assert!(
        matches!(late, fleetmind_engine::QueryError::Timeout { .. }),
        "{late:?}"
    );
}

#[tokio::test]
async fn restart_from_the_persisted_offset_does_not_duplicate() {
    let dir = TempDir::new().expect("tempdir");
    let first = records(HOUR_22 - 4 * HOUR, HOUR_22 - 2 * HOUR, 10 * MINUTE);
    let second = records(HOUR_22 - 2 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    {
        let log = open_log(dir.path());
        append(&log, &first);
        let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
        compact(&mut compactor, NOW);
    }
    // A new process: the log and the compactor open again from their files.
    let log = open_log(dir.path());
    append(&log, &second);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("reopens");
    let report = compact(&mut compactor, NOW);
    assert_eq!(
        report.records_read as usize,
        second.len(),
        "read only the new records"
    );

    let all: Vec<Record> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        all_files(&dir.path().join("parquet")),
        expected_partitions(&all, W)
    );
    let store = store_with(Duration::from_secs(12 * 3600), &compactor, &all, NOW);
    let total = all.iter().filter(|r| table_of(r) == "vm_samples").count() as i64;
    assert_eq!(
        count(&store, "select count(*) from vm_samples").await,
        total
    );

    // An hour later the watermark moves on: the pending records are read again, and only
    // those of the hour that became old enough are written.
    let later = compact(&mut compactor, NOW + HOUR);
    assert_eq!(later.watermark, Some(W + HOUR));
    assert_eq!(
        all_files(&dir.path().join("parquet")),
        expected_partitions(&all, W + HOUR)
    );
}

#[tokio::test]
async fn a_crash_between_the_files_and_the_commit_does_not_duplicate() {
    let dir = TempDir::new().expect("tempdir");
    let root = dir.path().join("parquet");
    let first = records(HOUR_22 - 4 * HOUR, HOUR_22 - 3 * HOUR, 10 * MINUTE);
    let second = records(HOUR_22 - 3 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    let late = records(HOUR_22 - 4 * HOUR, HOUR_22 - 3 * HOUR, 30 * MINUTE);
    let log = open_log(dir.path());
    append(&log, &first);
    let committed = {
        let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
        compact(&mut compactor, NOW);
        fs::read(root.join("_progress.json")).expect("progress")
    };
    append(&log, &second);
    {
        // This step runs an hour later than the re-run will (the clock stepped back over the
        // restart, as after a reboot with a bad RTC), so it writes hour 21 too.
        let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
        compact(&mut compactor, NOW + HOUR);
        assert!(root.join("host_samples/date=2023-11-14/hour=21").exists());
    }
    // The crash: the step's files are durable, its progress commit never happened (the
    // committed progress is the one before it), and a temporary file of another step is
    // lying around.
    fs::write(root.join("_progress.json"), &committed).expect("roll back the commit");
    let stray = root.join("vm_samples/date=2023-11-14/hour=18/.part-000000000099.parquet.tmp");
    fs::write(&stray, b"half a file").expect("stray temp file");
    // Meanwhile more records arrived, some late for hour 18, so the re-run covers a different
    // range than the lost one.
    append(&log, &late);

    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("reopens");
    assert!(!stray.exists(), "temporary files are swept at open");
    compact(&mut compactor, NOW);
    let all: Vec<Record> = first.iter().chain(&second).chain(&late).cloned().collect();
    assert_eq!(all_files(&root), expected_partitions(&all, W));
    let store = store_with(Duration::from_secs(12 * 3600), &compactor, &all, NOW);
    let total = all.iter().filter(|r| table_of(r) == "host_samples").count() as i64;
    assert_eq!(
        count(&store, "select count(*) from host_samples").await,
        total
    );
    // And once the watermark really moves on, hour 21 is there once.
    compact(&mut compactor, NOW + HOUR);
    assert_eq!(all_files(&root), expected_partitions(&all, W + HOUR));
    assert_eq!(
        count(&store, "select count(*) from host_samples").await,
        total
    );
}

#[tokio::test]
async fn late_and_future_records_are_counted_once() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    let fixture = records(HOUR_22 - 3 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    append(&log, &fixture);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    compact(&mut compactor, NOW);
    let store = store_with(Duration::from_secs(12 * 3600), &compactor, &fixture, NOW);

    // An agent flushes an old buffer (19:05, below the watermark), and one with its clock a
    // day ahead reports.
    let late = Record::HostSample(host_sample("late", HOUR_22 - 3 * HOUR + 5 * MINUTE));
    let future = Record::HostSample(host_sample("future", NOW + 24 * HOUR));
    append(&log, &[late.clone(), future.clone()]);
    store.ingest_at([late, future], NOW).expect("ingests");
    // Until the next pass the late record is in memory but below the watermark: not counted.
    let hosts = "select host, count(*) from host_samples where host in ('late', 'future') \
                 group by host order by host";
    assert_eq!(rows(&store, hosts).await, [vec![json!("future"), json!(1)]]);

    let report = compact(&mut compactor, NOW);
    assert_eq!(
        report.rows_written, 2,
        "the late one, and the future one at once"
    );
    let both = [
        vec![json!("future"), json!(1)],
        vec![json!("late"), json!(1)],
    ];
    assert_eq!(rows(&store, hosts).await, both);
    // Once the watermark has passed every fixture record, nothing is pending: the future one
    // does not hold compaction back.
    compact(&mut compactor, NOW + 2 * HOUR);
    assert_eq!(compactor.pending_from(), log.end_offset());
    assert_eq!(rows(&store, hosts).await, both);
    // Still once each when the watermark has passed the future record too.
    let much_later = NOW + 26 * HOUR;
    compact(&mut compactor, much_later);
    store.enforce_window(much_later).expect("trims");
    assert_eq!(rows(&store, hosts).await, both);
}

#[tokio::test]
async fn retention_deletes_old_hours_and_caps_the_size() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    // Three days, one sample set an hour.
    let fixture = records(HOUR_22 - 72 * HOUR, NOW - 3 * MINUTE, HOUR);
    append(&log, &fixture);
    let mut compactor = Compactor::open(
        ArchiveConfig {
            retention: Duration::from_secs(24 * 3600),
            ..config(dir.path())
        },
        log.clone(),
    )
    .expect("opens");
    compact(&mut compactor, NOW);
    let root = dir.path().join("parquet");
    assert!(root.join("host_samples/date=2023-11-11").exists());

    let report = compactor.enforce_retention(NOW).expect("retention");
    // Hours ending at or before NOW - 24 h (22:13:20 the day before) go: 11-11 22:00 to
    // 11-13 21:00, i.e. 48 hours.
    assert_eq!(report.removed_hours, 48);
    assert!(!root.join("host_samples/date=2023-11-11").exists());
    assert!(!root.join("host_samples/date=2023-11-12").exists());
    assert!(root.join("host_samples/date=2023-11-13/hour=22").exists());
    assert!(!root.join("host_samples/date=2023-11-13/hour=21").exists());
    let store = store_with(Duration::from_secs(3600), &compactor, &[], NOW);
    assert_eq!(
        rows(&store, "select min(ts) from host_samples").await,
        [[json!("2023-11-13T22:00:00Z")]]
    );

    // The size cap takes the oldest hours next.
    drop(compactor);
    let capped = Compactor::open(
        ArchiveConfig {
            max_bytes: report.kept_bytes / 2,
            ..config(dir.path())
        },
        log.clone(),
    )
    .expect("opens")
    .enforce_retention(NOW)
    .expect("retention");
    assert!(capped.removed_hours > 0);
    assert!(capped.kept_bytes <= report.kept_bytes / 2);
    let min = rows(&store, "select min(ts) from host_samples").await;
    assert_ne!(min, [[json!("2023-11-13T22:00:00Z")]]);
}

#[tokio::test]
async fn records_the_log_dropped_before_compaction_are_a_gap_not_a_stop() {
    let dir = TempDir::new().expect("tempdir");
    let log = EventLog::open(
        dir.path().join("events"),
        LogConfig {
            segment_bytes: 64 << 10,
            retention: RetentionPolicy {
                max_bytes: Some(256 << 10),
                max_age: None,
            },
            ..LogConfig::default()
        },
    )
    .expect("log opens");
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    let fixture = records(HOUR_22 - 10 * HOUR, NOW - 3 * MINUTE, MINUTE);
    append(&log, &fixture);
    log.enforce_retention().expect("log retention");
    let earliest = log.earliest_offset().get();
    assert!(
        earliest > 0,
        "the log kept everything; shrink its retention"
    );

    let report = compact(&mut compactor, NOW);
    assert_eq!(report.lost_offsets, earliest);
    assert_eq!(report.scanned_to, log.end_offset());
    let kept = &fixture[usize::try_from(earliest).expect("fits")..];
    assert_eq!(
        all_files(&dir.path().join("parquet")),
        expected_partitions(kept, W)
    );
}

#[tokio::test]
async fn a_replaced_log_is_compacted_from_its_start() {
    let dir = TempDir::new().expect("tempdir");
    let before = records(HOUR_22 - 4 * HOUR, HOUR_22 - 2 * HOUR, 10 * MINUTE);
    let after = records(HOUR_22 - 2 * HOUR, HOUR_22 - HOUR, 20 * MINUTE);
    {
        let log = open_log(dir.path());
        append(&log, &before);
        let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
        compact(&mut compactor, NOW);
    }
    // The log was replaced: its offsets start again below what was read.
    fs::remove_dir_all(dir.path().join("events")).expect("remove the log");
    let log = open_log(dir.path());
    append(&log, &after);
    assert!(log.end_offset().get() < before.len() as u64);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("reopens");
    let report = compact(&mut compactor, NOW);
    assert_eq!(report.rows_written as usize, after.len());
    let all: Vec<Record> = before.iter().chain(&after).cloned().collect();
    assert_eq!(
        all_files(&dir.path().join("parquet")),
        expected_partitions(&all, W)
    );
}

#[test]
fn a_tier_that_lost_its_progress_file_is_refused_not_swept() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    append(
        &log,
        &records(HOUR_22 - 3 * HOUR, HOUR_22 - 2 * HOUR, 10 * MINUTE),
    );
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    compact(&mut compactor, NOW);
    drop(compactor);
    let root = dir.path().join("parquet");
    let before = all_files(&root);
    assert!(!before.is_empty());
    fs::remove_file(root.join("_progress.json")).expect("lose the progress");
    let err = Compactor::open(config(dir.path()), log.clone()).expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("_progress.json"), "{message}");
    assert_eq!(all_files(&root), before, "nothing was deleted");
}

#[tokio::test]
async fn undecodable_records_are_skipped() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    let fixture = records(HOUR_22 - 3 * HOUR, HOUR_22 - 2 * HOUR, 10 * MINUTE);
    append(&log, &fixture[..5]);
    log.append_blocking(&[&b"{\"not\": \"an envelope\"}"[..], &b"\xff"[..]])
        .expect("appends");
    append(&log, &fixture[5..]);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    let report = compact(&mut compactor, NOW);
    assert_eq!(report.skipped, 2);
    assert_eq!(report.rows_written as usize, fixture.len());
}

/// The Python of the venv `scripts/install-deps` makes, or `None` after printing why not.
fn python_or_skip(test: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("FLEETMIND_PYENV").map_or_else(
        || PathBuf::from("/var/cache/fleetmind/pyenv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    let reason = if python.is_file() {
        let probe = Command::new(&python)
            .args(["-c", "import duckdb, pandas, pyarrow"])
            .output();
        match probe {
            Ok(out) if out.status.success() => return Some(python),
            Ok(out) => format!(
                "{} cannot import duckdb, pandas and pyarrow: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => format!("cannot run {}: {e}", python.display()),
        }
    } else {
        format!(
            "no Python environment at {} (run scripts/install-deps, or set FLEETMIND_PYENV)",
            venv.display()
        )
    };
    eprintln!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("FLEETMIND_SKIP_LOG")
        && let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path)
    {
        use std::io::Write as _;
        let _ = file.write_all(format!("{test}: {reason}\n").as_bytes());
    }
    None
}

/// Reads the tier with DuckDB and with pandas (pyarrow engine) and prints what both found.
const READ_WITH_PYTHON: &str = r#"
import json, sys
import duckdb, pandas as pd
root = sys.argv[1]
con = duckdb.connect()
out = {"duckdb": {}, "pandas": {}}
for table in ["host_samples", "vm_samples", "anomalies"]:
    src = f"read_parquet('{root}/{table}/**/*.parquet', hive_partitioning = true)"
    n, lo, hi = con.execute(f"select count(*), min(epoch_ms(ts)), max(epoch_ms(ts)) from {src}").fetchone()
    parts = con.execute(f"select strftime(date, '%Y-%m-%d'), hour, count(*) from {src} group by all order by all").fetchall()
    out["duckdb"][table] = {"rows": n, "min_ts": lo, "max_ts": hi,
                            "partitions": [[d, int(h), c] for d, h, c in parts]}
    df = pd.read_parquet(f"{root}/{table}", engine="pyarrow")
    out["pandas"][table] = {"rows": len(df), "min_ts": df["ts"].min().value // 1_000_000,
                            "max_ts": df["ts"].max().value // 1_000_000}
hosts = con.execute(f"select host, count(*), sum(cpu.busy_frac), sum(len(per_cpu)) from read_parquet('{root}/host_samples/**/*.parquet') group by host order by host").fetchall()
out["duckdb"]["hosts"] = [[h, c, round(b, 6), int(p)] for h, c, b, p in hosts]
vms = con.execute(f"select vm, sum(rss_bytes), sum(len(vcpus)), max(vcpus[1].affinity[2]) from read_parquet('{root}/vm_samples/**/*.parquet') group by vm order by vm").fetchall()
out["duckdb"]["vms"] = [[v, int(r), int(c), int(a)] for v, r, c, a in vms]
df = pd.read_parquet(f"{root}/vm_samples", engine="pyarrow")
out["pandas"]["vm_names"] = sorted(df["name"].unique().tolist())
out["pandas"]["vm_rss"] = int(df["rss_bytes"].sum())
out["pandas"]["first_host"] = df.sort_values(["ts", "host"]).iloc[0]["host"]
print(json.dumps(out))
"#;

#[test]
fn duckdb_and_pandas_read_the_files() {
    let Some(python) = python_or_skip("engine::parquet::duckdb_and_pandas_read_the_files") else {
        return;
    };
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    let fixture = records(HOUR_22 - 4 * HOUR, NOW - 3 * MINUTE, 10 * MINUTE);
    append(&log, &fixture);
    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    compact(&mut compactor, NOW);

    let root = dir.path().join("parquet");
    let output = Command::new(&python)
        .args(["-c", READ_WITH_PYTHON])
        .arg(&root)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Value = serde_json::from_slice(&output.stdout).expect("JSON from python");

    let written: Vec<&Record> = fixture.iter().filter(|r| ts_of(r) < W).collect();
    let expected = expected_partitions(&fixture, W);
    for table in ["host_samples", "vm_samples", "anomalies"] {
        let mine: Vec<i64> = written
            .iter()
            .filter(|r| table_of(r) == table)
            .map(|r| ts_of(r))
            .collect();
        let (min, max) = (
            *mine.iter().min().expect("rows"),
            *mine.iter().max().expect("rows"),
        );
        let partitions: Vec<Value> = expected
            .iter()
            .filter(|((t, _), _)| *t == table)
            .map(|((_, p), n)| {
                json!([
                    "2023-11-14",
                    p[p.len() - 2..].parse::<i64>().expect("hour"),
                    n
                ])
            })
            .collect();
        assert_eq!(
            found["duckdb"][table],
            json!({"rows": mine.len(), "min_ts": min, "max_ts": max, "partitions": partitions}),
            "duckdb, {table}"
        );
        assert_eq!(
            found["pandas"][table],
            json!({"rows": mine.len(), "min_ts": min, "max_ts": max}),
            "pandas, {table}"
        );
    }
    let per_host = written
        .iter()
        .filter(|r| table_of(r) == "host_samples")
        .count()
        / 2;
    assert_eq!(
        found["duckdb"]["hosts"],
        json!([
            ["a", per_host, 0.25 * per_host as f64, 4 * per_host],
            ["b", per_host, 0.25 * per_host as f64, 4 * per_host]
        ])
    );
    let per_vm = written
        .iter()
        .filter(|r| table_of(r) == "vm_samples")
        .count()
        / 2;
    assert_eq!(
        found["duckdb"]["vms"],
        json!([
            ["vm-1", per_vm as u64 * (1 << 30), 2 * per_vm, 1],
            ["vm-2", per_vm as u64 * (1 << 30), 2 * per_vm, 1]
        ])
    );
    assert_eq!(
        found["pandas"]["vm_names"],
        json!(["vm-1-name", "vm-2-name"])
    );
    assert_eq!(
        found["pandas"]["vm_rss"],
        json!(2 * per_vm as u64 * (1 << 30))
    );
    assert_eq!(found["pandas"]["first_host"], json!("a"));
}

/// A small deterministic generator, so the measured sample has realistic entropy.
struct XorShift(u64);

impl XorShift {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Compaction throughput and Parquet size against the event log on a realistic sample: 20
/// 16-CPU hosts with 10 four-vCPU VMs each, sampled every 10 s for 3 hours. Run with
/// `cargo test --release -p fleetmind-engine --test parquet -- --ignored --nocapture measure`.
#[test]
#[ignore = "a measurement; run it with --release --ignored --nocapture"]
fn measure_compaction() {
    let dir = TempDir::new().expect("tempdir");
    let log = open_log(dir.path());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut log_bytes = 0u64;
    let mut records = 0u64;
    let mut exits_total = 0u64;
    let mut ts = HOUR_22 - 4 * HOUR;
    while ts < HOUR_22 - HOUR {
        let mut batch = Vec::new();
        for h in 0..20 {
            let host = format!("rack{}-h{h:02}", h / 8);
            let mut s = host_sample(&host, ts);
            s.cpus = 16;
            s.per_cpu = (0..16)
                .map(|cpu| fleetmind_schema::PerCpuSample {
                    cpu,
                    busy_frac: (rng.unit() * 1000.0).round() / 1000.0,
                    steal_frac: (rng.unit() * 20.0).round() / 1000.0,
                })
                .collect();
            s.cpu.busy_frac = rng.unit();
            s.cpu.user_frac = s.cpu.busy_frac * 0.8;
            s.load1 = rng.unit() * 16.0;
            s.ctxt_per_s = (rng.unit() * 50_000.0).round();
            s.mem.free_bytes = (rng.unit() * (64u64 << 30) as f64) as u64;
            s.vmstat.pgfault_per_s = (rng.unit() * 10_000.0).round();
            batch.push(Record::HostSample(s));
            for v in 0..10 {
                let mut vm = vm_sample(&host, &format!("{host}-vm{v}"), ts);
                vm.rss_bytes = (rng.unit() * (4u64 << 30) as f64) as u64;
                vm.dirty_bytes_per_s = Some((rng.unit() * 1e6).round());
                vm.vcpus = (0..4)
                    .map(|vcpu| VcpuSample {
                        vcpu,
                        tid: Some(10_000 + vcpu),
                        run_frac: (rng.unit() * 1000.0).round() / 1000.0,
                        wait_frac: (rng.unit() * 50.0).round() / 1000.0,
                        host_cpu: Some(vcpu * 2),
                        affinity: (0..16).collect(),
                        exits_per_s: (rng.unit() * 5000.0).round(),
                    })
                    .collect();
                exits_total += 1000;
                vm.exits = ["exits", "io_exits", "mmio_exits", "halt_exits"]
                    .iter()
                    .map(|reason| fleetmind_schema::ExitCounter {
                        reason: (*reason).to_owned(),
                        total: exits_total,
                        per_s: (rng.unit() * 1000.0).round(),
                    })
                    .collect();
                batch.push(Record::VmSample(vm));
            }
        }
        records += batch.len() as u64;
        log_bytes += batch
            .iter()
            .map(|r| {
                serde_json::to_vec(&Envelope::new(r.clone()))
                    .expect("encodes")
                    .len() as u64
            })
            .sum::<u64>();
        append(&log, &batch);
        ts += 10_000;
    }
    let on_disk: u64 = fs::read_dir(dir.path().join("events"))
        .expect("segments")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();

    let mut compactor = Compactor::open(config(dir.path()), log.clone()).expect("opens");
    let report = compact(&mut compactor, NOW);
    let secs = report.elapsed.as_secs_f64();
    println!(
        "compacted {} records ({:.1} MB of JSON payloads, {:.1} MB of segment files) into {} \
         Parquet files of {:.1} MB in {secs:.2} s: {:.0} rows/s, {:.1} MB/s of log; Parquet is \
         {:.1}% of the payload bytes ({:.1} bytes a row)",
        report.rows_written,
        log_bytes as f64 / 1e6,
        on_disk as f64 / 1e6,
        report.files_written,
        report.bytes_written as f64 / 1e6,
        report.rows_written as f64 / secs,
        log_bytes as f64 / 1e6 / secs,
        100.0 * report.bytes_written as f64 / log_bytes as f64,
        report.bytes_written as f64 / report.rows_written as f64,
    );
    assert_eq!(report.rows_written, records);
    assert!(report.bytes_written < log_bytes / 4);
}
