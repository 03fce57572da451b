//! The Arrow form of the records: one schema per record kind, and a conversion from the serde
//! form to a `RecordBatch`.
//!
//! The conversion goes through arrow-json's serde decoder, so the Arrow and JSON forms cannot
//! drift apart: a field that serde writes but the Arrow schema lacks is an error in the golden
//! tests, not a silently dropped column.

use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use serde::Serialize;

use crate::records::{
    Action, Anomaly, AuditRecord, CollectorHealth, HostSample, Incident, Recommendation,
    RecordKind, VmSample,
};

/// Failure to build a `RecordBatch` from records.
#[derive(Debug, thiserror::Error)]
#[error("cannot convert {kind} records to Arrow")]
pub struct ToBatchError {
    kind: &'static str,
    #[source]
    source: ArrowError,
}

/// A record type with an Arrow form.
pub trait ArrowRecord: Serialize {
    /// The kind this type is.
    const KIND: RecordKind;
    /// Its Arrow schema (shared, built once).
    fn arrow_schema() -> SchemaRef;
}

/// Converts records of one kind into one `RecordBatch` with that kind's schema.
///
/// # Errors
///
/// Returns [`ToBatchError`] if a record does not fit the schema (a schema bug caught by the
/// golden tests, or a value out of the column's range).
pub fn to_record_batch<T: ArrowRecord>(rows: &[T]) -> Result<RecordBatch, ToBatchError> {
    let wrap = |source| ToBatchError {
        kind: T::KIND.as_str(),
        source,
    };
    let schema = T::arrow_schema();
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .with_strict_mode(true)
        .build_decoder()
        .map_err(wrap)?;
    decoder.serialize(rows).map_err(wrap)?;
    Ok(decoder
        .flush()
        .map_err(wrap)?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

fn ts(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        false,
    )
}
fn opt_ts(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        true,
    )
}
fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}
fn opt_utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
fn f64(name: &str) -> Field {
    Field::new(name, DataType::Float64, false)
}
fn u64(name: &str) -> Field {
    Field::new(name, DataType::UInt64, false)
}
fn opt_u64(name: &str) -> Field {
    Field::new(name, DataType::UInt64, true)
}
fn opt_f64(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}
fn u32(name: &str) -> Field {
    Field::new(name, DataType::UInt32, false)
}
fn opt_u32(name: &str) -> Field {
    Field::new(name, DataType::UInt32, true)
}
fn strukt(name: &str, fields: Vec<Field>, nullable: bool) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), nullable)
}
fn list(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, false))),
        false,
    )
}
fn struct_type(fields: Vec<Field>) -> DataType {
    DataType::Struct(Fields::from(fields))
}
fn string_map(name: &str) -> Field {
    let entries = Field::new(
        "entries",
        struct_type(vec![
            utf8("keys"),
            Field::new("values", DataType::Utf8, true),
        ]),
        false,
    );
    Field::new(name, DataType::Map(Arc::new(entries), false), false)
}
fn subject(name: &str) -> Field {
    strukt(name, vec![utf8("host"), opt_utf8("vm")], false)
}
fn spec(name: &str) -> Field {
    strukt(
        name,
        vec![utf8("action"), subject("target"), string_map("params")],
        false,
    )
}

macro_rules! arrow_record {
    ($ty:ty, $kind:expr, $fields:expr) => {
        impl ArrowRecord for $ty {
            const KIND: RecordKind = $kind;
            fn arrow_schema() -> SchemaRef {
                static SCHEMA: LazyLock<SchemaRef> =
                    LazyLock::new(|| Arc::new(Schema::new($fields)));
                SCHEMA.clone()
            }
        }
    };
}

arrow_record!(
    HostSample,
    RecordKind::HostSample,
    vec![
        ts("ts"),
        utf8("host"),
        u64("interval_ms"),
        u32("cpus"),
        strukt(
            "cpu",
            vec![
                f64("user_frac"),
                f64("system_frac"),
                f64("iowait_frac"),
                f64("steal_frac"),
                f64("idle_frac"),
                f64("busy_frac"),
            ],
            false,
        ),
        list(
            "per_cpu",
            struct_type(vec![u32("cpu"), f64("busy_frac"), f64("steal_frac")]),
        ),
        f64("load1"),
        u32("procs_running"),
        u32("procs_blocked"),
        f64("ctxt_per_s"),
        strukt(
            "mem",
            vec![
                u64("total_bytes"),
                u64("free_bytes"),
                u64("available_bytes"),
                u64("cached_bytes"),
                f64("used_frac"),
                u64("swap_total_bytes"),
                u64("swap_free_bytes"),
                u64("hugepages_total"),
                u64("hugepages_free"),
                u64("hugepage_size_bytes"),
            ],
            false,
        ),
        strukt(
            "psi",
            vec![
                f64("cpu_some_avg10"),
                f64("memory_some_avg10"),
                f64("memory_full_avg10"),
                f64("io_some_avg10"),
                f64("io_full_avg10"),
                f64("cpu_some_frac"),
                f64("memory_some_frac"),
                f64("io_some_frac"),
                f64("memory_full_frac"),
                f64("io_full_frac"),
            ],
            true,
        ),
        strukt(
            "vmstat",
            vec![
                f64("pgfault_per_s"),
                f64("pgmajfault_per_s"),
                f64("pswpin_per_s"),
                f64("pswpout_per_s"),
                f64("numa_miss_per_s"),
            ],
            false,
        ),
        list(
            "numa",
            struct_type(vec![
                u32("node"),
                u64("mem_total_bytes"),
                u64("mem_free_bytes"),
                u64("mem_used_bytes"),
                u64("hugepages_total"),
                u64("hugepages_free"),
                list("cpus", DataType::UInt32),
                list("distances", DataType::UInt32),
            ]),
        ),
    ]
);

arrow_record!(
    VmSample,
    RecordKind::VmSample,
    vec![
        ts("ts"),
        utf8("host"),
        utf8("vm"),
        utf8("name"),
        utf8("vmm"),
        u64("interval_ms"),
        u64("mem_bytes"),
        u64("rss_bytes"),
        list(
            "numa_resident",
            struct_type(vec![u32("node"), u64("bytes")])
        ),
        opt_u64("balloon_target_bytes"),
        opt_u64("balloon_actual_bytes"),
        opt_u64("guest_free_bytes"),
        opt_f64("dirty_bytes_per_s"),
        list(
            "vcpus",
            struct_type(vec![
                u32("vcpu"),
                opt_u32("tid"),
                f64("run_frac"),
                f64("wait_frac"),
                opt_u32("host_cpu"),
                list("affinity", DataType::UInt32),
                f64("exits_per_s"),
            ]),
        ),
        list(
            "exits",
            struct_type(vec![utf8("reason"), u64("total"), f64("per_s")])
        ),
    ]
);

arrow_record!(
    Anomaly,
    RecordKind::Anomaly,
    vec![
        utf8("id"),
        ts("ts"),
        subject("subject"),
        utf8("series"),
        f64("value"),
        f64("expected"),
        f64("score"),
        utf8("detector"),
    ]
);

fn evidence_type() -> DataType {
    struct_type(vec![
        subject("subject"),
        utf8("series"),
        ts("ts"),
        f64("value"),
        f64("expected"),
    ])
}

arrow_record!(
    Incident,
    RecordKind::Incident,
    vec![
        utf8("id"),
        ts("ts"),
        ts("opened_ts"),
        opt_ts("resolved_ts"),
        utf8("status"),
        utf8("class"),
        utf8("severity"),
        utf8("title"),
        list("subjects", struct_type(vec![utf8("host"), opt_utf8("vm")])),
        list("anomaly_ids", DataType::Utf8),
        list(
            "hypotheses",
            struct_type(vec![
                utf8("class"),
                subject("culprit"),
                f64("confidence"),
                list("evidence", evidence_type()),
            ]),
        ),
    ]
);

arrow_record!(
    Recommendation,
    RecordKind::Recommendation,
    vec![
        utf8("id"),
        ts("ts"),
        utf8("incident_id"),
        spec("spec"),
        utf8("rationale"),
        f64("expected_benefit"),
        u32("rank"),
        utf8("expected_effect"),
        strukt(
            "cost",
            vec![
                f64("duration_s"),
                u64("bytes"),
                f64("score"),
                utf8("summary"),
            ],
            false,
        ),
    ]
);

arrow_record!(
    Action,
    RecordKind::Action,
    vec![
        utf8("id"),
        ts("ts"),
        opt_utf8("recommendation_id"),
        spec("spec"),
        utf8("state"),
        utf8("actor"),
        utf8("reason"),
    ]
);

arrow_record!(
    AuditRecord,
    RecordKind::Audit,
    vec![
        u64("seq"),
        ts("ts"),
        utf8("actor"),
        utf8("event"),
        opt_utf8("action_id"),
        opt_utf8("policy"),
        opt_utf8("policy_version"),
        utf8("detail"),
        utf8("prev_hash"),
        utf8("hash"),
    ]
);

arrow_record!(
    CollectorHealth,
    RecordKind::CollectorHealth,
    vec![
        ts("ts"),
        utf8("host"),
        utf8("collector"),
        utf8("source"),
        Field::new("healthy", DataType::Boolean, false),
        opt_utf8("message"),
        u32("consecutive_failures"),
        opt_u64("retry_in_ms"),
    ]
);
