//! The SQL surface as the API uses it: ingest records, query them, and every way a query is
//! refused or bounded.

use std::sync::Arc;
use std::time::Duration;

use fleetmind_engine::test_utils::{host_records, host_sample};
use fleetmind_engine::{QueryError, QueryLimits, QueryResult, Store, StoreConfig};
use fleetmind_schema::{Record, RecordKind};
use serde_json::{Value, json};

const NOW: i64 = 1_700_000_000_000;

fn store_with_hosts(hosts: &[&str], per_host: usize) -> Store {
    let store = Store::default();
    store
        .ingest_at(host_records(hosts, NOW, per_host), NOW)
        .expect("ingests");
    store
}

async fn query(store: &Store, sql: &str) -> Result<QueryResult, QueryError> {
    store.query(sql, &QueryLimits::default()).await
}

async fn ok(store: &Store, sql: &str) -> QueryResult {
    match query(store, sql).await {
        Ok(result) => result,
        Err(e) => panic!("{sql}: {e:?}"),
    }
}

#[tokio::test]
async fn count_equals_ingested() {
    let store = store_with_hosts(&["a", "b", "c"], 7);
    let result = ok(&store, "select count(*) as n from host_samples").await;
    assert_eq!(result.columns, ["n"]);
    assert_eq!(result.rows, [[json!(21)]]);
    assert!(!result.truncated);
}

#[tokio::test]
async fn every_table_is_registered_even_when_empty() {
    let store = Store::default();
    for kind in RecordKind::ALL {
        let sql = format!("select count(*) from {}", kind.table_name());
        assert_eq!(ok(&store, &sql).await.rows, [[json!(0)]], "{sql}");
    }
    let tables = ok(
        &store,
        "select table_name from information_schema.tables \
         where table_schema = 'public' order by table_name",
    )
    .await;
    assert_eq!(tables.rows.len(), RecordKind::ALL.len());
}

#[tokio::test]
async fn struct_fields_and_timestamps_render() {
    let store = store_with_hosts(&["a"], 2);
    let result = ok(
        &store,
        "select host, cpu['busy_frac'] as busy, ts, per_cpu[1]['cpu'] as first_cpu \
         from host_samples order by ts",
    )
    .await;
    assert_eq!(result.columns, ["host", "busy", "ts", "first_cpu"]);
    assert_eq!(result.rows.len(), 2);
    assert_eq!(result.rows[1][0], json!("a"));
    assert_eq!(result.rows[1][1], json!(0.25));
    assert_eq!(result.rows[1][2], json!("2023-11-14T22:13:20Z"));
    assert_eq!(result.rows[1][3], json!(0));
}

#[tokio::test]
async fn whole_records_render_as_json_objects() {
    let store = store_with_hosts(&["a"], 1);
    let result = ok(&store, "select psi, numa from host_samples").await;
    let psi = &result.rows[0][0];
    assert_eq!(psi["cpu_some_avg10"], json!(0.0));
    assert_eq!(result.rows[0][1][0]["cpus"], json!([0, 1, 2, 3]));
}

#[tokio::test]
async fn row_limit_sets_truncated() {
    let store = store_with_hosts(&["a", "b"], 10);
    let limits = QueryLimits {
        max_rows: 5,
        ..QueryLimits::default()
    };
    let result = store
        .query("select host from host_samples", &limits)
        .await
        .expect("runs");
    assert_eq!(result.rows.len(), 5);
    assert!(result.truncated);

    let exact = QueryLimits {
        max_rows: 20,
        ..QueryLimits::default()
    };
    let result = store
        .query("select host from host_samples", &exact)
        .await
        .expect("runs");
    assert_eq!(result.rows.len(), 20);
    assert!(!result.truncated);
}

#[tokio::test]
async fn writes_and_session_changes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("x.csv");
    let target = target.to_str().expect("utf-8 path");
    let store = store_with_hosts(&["a"], 1);
    for (sql, kind) in [
        (
            "insert into host_samples select * from host_samples".to_owned(),
            "INSERT",
        ),
        ("create table t (x int)".to_owned(), "CREATE TABLE"),
        ("create table t as select 1".to_owned(), "CREATE TABLE"),
        ("create view v as select 1".to_owned(), "CREATE VIEW"),
        ("drop table host_samples".to_owned(), "DROP"),
        (format!("copy (select 1) to '{target}'"), "COPY"),
        (format!("copy host_samples to '{target}'"), "COPY"),
        (
            format!("explain analyze copy (select 1) to '{target}'"),
            "COPY",
        ),
        ("set datafusion.execution.batch_size = 1".to_owned(), "SET"),
        (
            format!("create external table t stored as csv location '{target}'"),
            "CREATE EXTERNAL TABLE",
        ),
        ("select 1 into t".to_owned(), "SELECT INTO"),
        ("delete from host_samples".to_owned(), "DELETE"),
    ] {
        let error = query(&store, &sql).await.expect_err(&sql);
        assert_eq!(
            error,
            QueryError::ReadOnly {
                statement: kind.into()
            },
            "{sql}"
        );
        assert!(error.is_client_error());
        assert!(
            error
                .to_string()
                .starts_with("only SELECT queries are allowed; ")
        );
    }
    assert!(!std::path::Path::new(target).exists(), "COPY wrote a file");
    // Nothing changed.
    assert_eq!(
        ok(&store, "select count(*) from host_samples").await.rows,
        [[json!(1)]]
    );
}

#[tokio::test]
async fn malformed_sql_is_a_parse_error_with_the_parsers_message() {
    let store = Store::default();
    for sql in [
        "selec 1",
        "select * from host_samples where",
        "select (1",
        "",
        "select 1; select 2",
    ] {
        match query(&store, sql).await {
            Err(e @ QueryError::Parse { .. }) => {
                assert!(
                    e.to_string().starts_with("sql parser error: "),
                    "{sql}: {e}"
                );
                assert!(e.is_client_error());
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    let e = query(&store, "select (1").await.expect_err("fails");
    assert!(e.to_string().contains("Expected"), "{e}");
}

#[tokio::test]
async fn unknown_tables_and_columns_are_plan_errors() {
    let store = Store::default();
    for (sql, needle) in [
        ("select * from nosuch", "nosuch"),
        ("select nosuch from host_samples", "nosuch"),
        ("select * from '/etc/passwd'", "/etc/passwd"),
        ("select host + 1 from host_samples", "Cannot coerce"),
    ] {
        match query(&store, sql).await {
            Err(e @ QueryError::Plan { .. }) => {
                assert!(e.to_string().contains(needle), "{sql}: {e}");
                assert!(e.is_client_error());
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn division_by_zero_is_the_querys_fault() {
    let store = store_with_hosts(&["a"], 1);
    let e = query(&store, "select cpus / (cpus - cpus) from host_samples")
        .await
        .expect_err("divides by zero");
    assert!(
        matches!(
            e,
            QueryError::Execution {
                client_fault: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("Divide by zero"), "{e}");
}

#[tokio::test]
async fn hostile_inputs_do_not_panic() {
    let store = store_with_hosts(&["a"], 1);
    let limits = QueryLimits {
        max_sql_bytes: 8 << 20,
        ..QueryLimits::default()
    };
    let deep_parens = format!("select {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let e = store
        .query(&deep_parens, &limits)
        .await
        .expect_err("too deep");
    assert!(matches!(e, QueryError::Parse { .. }), "{e:?}");

    // Chains parse without recursion into trees as deep as they are long.
    let long_or = format!(
        "select count(*) from host_samples where host = 'x'{}",
        " or host = 'y'".repeat(400)
    );
    let result = store.query(&long_or, &limits).await.expect("runs");
    assert_eq!(result.rows, [[json!(0)]]);
    let too_deep = format!("select 1{}", " + 1".repeat(16_000));
    let e = store.query(&too_deep, &limits).await.expect_err("too deep");
    assert!(matches!(e, QueryError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("IN lists"), "{e}");

    let huge_literal = format!("select length('{}') as n", "x".repeat(4 << 20));
    let result = store.query(&huge_literal, &limits).await.expect("runs");
    assert_eq!(result.rows, [[json!(4 << 20)]]);

    let too_long = format!(
        "select '{}'",
        "x".repeat(QueryLimits::default().max_sql_bytes)
    );
    let e = query(&store, &too_long)
        .await
        .expect_err("over the text limit");
    assert!(matches!(e, QueryError::TooLarge { .. }), "{e:?}");

    let huge_number = format!("select {}", "9".repeat(10_000));
    let _ = query(&store, &huge_number).await;
    // JSON has no NaN or infinity: they render as null.
    let result = ok(&store, "select 'NaN'::double, 1.0 / 0.0, 0.5").await;
    assert_eq!(result.rows, [[Value::Null, Value::Null, json!(0.5)]]);
    let result = ok(
        &store,
        "select arrow_cast(1, 'Duration(Second)'), interval '1 day'",
    )
    .await;
    assert_eq!(result.rows, [[json!("PT1S"), json!("1 days")]]);
}

#[tokio::test]
async fn memory_hungry_queries_are_too_large() {
    let store = Store::default();
    let limits = QueryLimits {
        max_memory_bytes: 1 << 20,
        ..QueryLimits::default()
    };
    let e = store
        .query(
            "select value from generate_series(1, 5000000) order by value desc",
            &limits,
        )
        .await
        .expect_err("sort needs more than 1 MiB");
    assert!(matches!(e, QueryError::TooLarge { .. }), "{e:?}");
    assert!(e.is_client_error());
}

/// A query that would run for many minutes: an aggregate over 10^12 generated rows, which
/// statistics cannot answer and which yields between batches.
const ENDLESS: &str = "select max(value % 3) from generate_series(1, 1000000000000)";

#[tokio::test]
async fn zero_timeout_times_out() {
    let store = Store::default();
    let limits = QueryLimits {
        timeout: Duration::ZERO,
        ..QueryLimits::default()
    };
    let e = store
        .query(ENDLESS, &limits)
        .await
        .expect_err("cannot finish");
    assert_eq!(
        e,
        QueryError::Timeout {
            limit: Duration::ZERO
        }
    );
    assert!(e.is_client_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_query_is_cancelled_at_the_timeout() {
    let store = Store::default();
    let limits = QueryLimits {
        timeout: Duration::from_millis(200),
        ..QueryLimits::default()
    };
    let e = store
        .query(ENDLESS, &limits)
        .await
        .expect_err("cannot finish");
    assert!(matches!(e, QueryError::Timeout { .. }), "{e:?}");
    // The runtime is free again.
    assert_eq!(ok(&store, "select 1").await.rows, [[json!(1)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_answers_even_when_datafusion_does_not_yield() {
    // One query slot: a query keeps it until its work has really stopped.
    let store = Store::new(StoreConfig {
        max_concurrent_queries: 1,
        ..StoreConfig::default()
    });
    let limits = QueryLimits {
        timeout: Duration::from_millis(200),
        ..QueryLimits::default()
    };
    // Each input batch of the right side makes 10^5 x 8192 rows without a yield point.
    let sql = "select count(*) from generate_series(1, 100000) a \
               cross join generate_series(1, 100000) b";
    let e = store.query(sql, &limits).await.expect_err("cannot finish");
    assert!(matches!(e, QueryError::Timeout { .. }), "{e:?}");
    // The answer came while the work was still inside that stretch: its slot is still taken,
    // so a second query is turned away rather than queued behind it.
    let busy = store
        .query("select 1", &limits)
        .await
        .expect_err("slot still held");
    assert!(matches!(busy, QueryError::Busy { limit: 1 }), "{busy:?}");
    assert!(!busy.is_client_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_slot_is_released_when_the_query_ends() {
    let store = Store::new(StoreConfig {
        max_concurrent_queries: 1,
        ..StoreConfig::default()
    });
    for _ in 0..3 {
        assert_eq!(ok(&store, "select 1").await.rows, [[json!(1)]]);
    }
}

#[tokio::test]
async fn retention_shows_in_queries() {
    let store = Store::new(StoreConfig {
        memory_window: Duration::from_secs(60),
        ..StoreConfig::default()
    });
    store
        .ingest_at(host_records(&["a"], NOW, 12), NOW)
        .expect("ingests");
    // 12 samples 10 s apart end at NOW: those at NOW-60 s and later are in the window.
    assert_eq!(
        ok(&store, "select count(*) from host_samples").await.rows,
        [[json!(7)]]
    );
    store.enforce_window(NOW + 30_000).expect("trims");
    let result = ok(&store, "select min(ts) from host_samples").await;
    assert_eq!(result.rows, [[json!("2023-11-14T22:12:50Z")]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingest_and_query() {
    let store = Arc::new(Store::default());
    let writer = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || {
            for i in 0..300 {
                let sample = host_sample(&format!("h{}", i % 10), NOW + i);
                store
                    .ingest_at([Record::HostSample(sample)], NOW)
                    .expect("ingests");
            }
        })
    };
    let mut last = 0;
    while !writer.is_finished() {
        let result = ok(&store, "select count(*) from host_samples").await;
        let n = result.rows[0][0].as_i64().expect("a count");
        assert!(n >= last, "count went back from {last} to {n}");
        last = n;
    }
    writer.await.expect("writer finished");
    let result = ok(
        &store,
        "select count(*), count(distinct host) from host_samples",
    )
    .await;
    assert_eq!(result.rows, [[json!(300), json!(10)]]);
    assert_eq!(store.latest_hosts().len(), 10);
}

#[tokio::test]
async fn explain_and_show_are_allowed() {
    let store = Store::default();
    let explained = ok(&store, "explain select count(*) from host_samples").await;
    assert!(!explained.rows.is_empty());
    let tables = ok(&store, "show tables").await;
    let names: Vec<&Value> = tables.rows.iter().map(|r| &r[2]).collect();
    assert!(names.contains(&&json!("host_samples")), "{names:?}");
}

#[test]
fn store_is_shareable_and_queries_can_be_spawned() {
    fn shareable<T: Send + Sync>(_: &T) {}
    fn spawnable<F: std::future::Future + Send>(_: F) {}
    let store = Store::default();
    shareable(&store);
    spawnable(store.query("select 1", &QueryLimits::default()));
}
