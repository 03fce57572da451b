//! Golden tests: the JSON and Arrow forms of every record kind are compared with files under
//! `tests/golden/`. A difference means the wire or table format changed: if that was meant,
//! bump `SCHEMA_VERSION`, keep the change additive, and regenerate with
//! `FLEETMIND_UPDATE_GOLDEN=1 cargo test -p fleetmind-schema`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use arrow::datatypes::{DataType, Field};
use fleetmind_schema::*;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("FLEETMIND_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} unreadable ({e}); regenerate it",
            path.display()
        )
    });
    assert_eq!(
        expected, actual,
        "{name} differs from its golden file: see the module docs of this test"
    );
}

fn subject(vm: Option<&str>) -> Subject {
    Subject {
        host: "host-a".into(),
        vm: vm.map(Into::into),
    }
}

fn host_sample() -> HostSample {
    HostSample {
        ts: 1_763_892_000_000,
        host: "host-a".into(),
        interval_ms: 1000,
        cpus: 2,
        cpu: CpuFractions {
            user_frac: 0.25,
            system_frac: 0.125,
            iowait_frac: 0.0,
            steal_frac: 0.0625,
            idle_frac: 0.5625,
            busy_frac: 0.4375,
        },
        per_cpu: vec![
            PerCpuSample {
                cpu: 0,
                busy_frac: 0.5,
                steal_frac: 0.125,
            },
            PerCpuSample {
                cpu: 1,
                busy_frac: 0.375,
                steal_frac: 0.0,
            },
        ],
        load1: 0.75,
        procs_running: 3,
        procs_blocked: 1,
        ctxt_per_s: 2400.0,
        mem: MemorySample {
            total_bytes: 25_769_803_776,
            free_bytes: 20_000_000_000,
            available_bytes: 22_000_000_000,
            cached_bytes: 1_500_000_000,
            used_frac: 0.146_281_242_370_605_47,
            swap_total_bytes: 0,
            swap_free_bytes: 0,
            hugepages_total: 0,
            hugepages_free: 0,
            hugepage_size_bytes: 2_097_152,
        },
        psi: Some(PsiSample {
            cpu_some_avg10: 1.5,
            memory_some_avg10: 0.0,
            memory_full_avg10: 0.0,
            io_some_avg10: 0.25,
            io_full_avg10: 0.0,
            cpu_some_frac: 0.015,
            memory_some_frac: 0.0,
            io_some_frac: 0.002,
            memory_full_frac: 0.0,
            io_full_frac: 0.001,
        }),
        vmstat: VmstatRates {
            pgfault_per_s: 1200.0,
            pgmajfault_per_s: 0.0,
            pswpin_per_s: 0.0,
            pswpout_per_s: 0.0,
            numa_miss_per_s: 0.0,
        },
        numa: vec![
            NumaNodeSample {
                node: 0,
                mem_total_bytes: 12_884_901_888,
                mem_free_bytes: 10_000_000_000,
                mem_used_bytes: 2_884_901_888,
                hugepages_total: 512,
                hugepages_free: 128,
                cpus: vec![0],
                distances: vec![10, 21],
            },
            NumaNodeSample {
                node: 1,
                mem_total_bytes: 12_884_901_888,
                mem_free_bytes: 10_000_000_000,
                mem_used_bytes: 2_884_901_888,
                hugepages_total: 512,
                hugepages_free: 512,
                cpus: vec![1],
                distances: vec![21, 10],
            },
        ],
    }
}

fn vm_sample() -> VmSample {
    VmSample {
        ts: 1_763_892_000_000,
        host: "host-a".into(),
        vm: "host-a/vm-1".into(),
        name: "web-1".into(),
        vmm: VmmKind::Builtin,
        interval_ms: 1000,
        mem_bytes: 268_435_456,
        rss_bytes: 134_217_728,
        numa_resident: vec![NodeBytes {
            node: 0,
            bytes: 134_217_728,
        }],
        balloon_target_bytes: Some(67_108_864),
        balloon_actual_bytes: Some(33_554_432),
        guest_free_bytes: None,
        dirty_bytes_per_s: Some(4_096_000.0),
        vcpus: vec![VcpuSample {
            vcpu: 0,
            tid: Some(4242),
            run_frac: 0.5,
            wait_frac: 0.0625,
            host_cpu: Some(1),
            affinity: vec![0, 1],
            exits_per_s: 10_000.0,
        }],
        exits: vec![
            ExitCounter {
                reason: "exits".into(),
                total: 123_456,
                per_s: 10_000.0,
            },
            ExitCounter {
                reason: "io_exits".into(),
                total: 100_000,
                per_s: 9_000.0,
            },
        ],
    }
}

fn anomaly() -> Anomaly {
    Anomaly {
        id: "an-1".into(),
        ts: 1_763_892_000_000,
        subject: subject(Some("host-a/vm-1")),
        series: "vcpu.0.wait_frac".into(),
        value: 0.4,
        expected: 0.05,
        score: 0.97,
        detector: "seasonal-robust".into(),
    }
}

fn incident() -> Incident {
    Incident {
        id: "inc-1".into(),
        ts: 1_763_892_060_000,
        opened_ts: 1_763_892_000_000,
        resolved_ts: None,
        status: IncidentStatus::Open,
        class: IncidentClass::NoisyNeighbour,
        severity: Severity::Warning,
        title: "vm-2 starves its neighbours on host-a".into(),
        subjects: vec![subject(Some("host-a/vm-1")), subject(Some("host-a/vm-2"))],
        anomaly_ids: vec!["an-1".into()],
        hypotheses: vec![Hypothesis {
            class: IncidentClass::NoisyNeighbour,
            culprit: subject(Some("host-a/vm-2")),
            confidence: 0.8,
            evidence: vec![Evidence {
                subject: subject(Some("host-a/vm-1")),
                series: "vcpu.0.wait_frac".into(),
                ts: 1_763_892_000_000,
                value: 0.4,
                expected: 0.05,
            }],
        }],
    }
}

fn spec() -> ActionSpec {
    ActionSpec {
        action: ActionKind::PinVcpus,
        target: subject(Some("host-a/vm-2")),
        params: BTreeMap::from([("cpus".to_owned(), "1".to_owned())]),
    }
}

fn recommendation() -> Recommendation {
    Recommendation {
        id: "rec-1".into(),
        ts: 1_763_892_060_000,
        incident_id: "inc-1".into(),
        spec: spec(),
        rationale: "isolate the noisy VM on CPU 1".into(),
        expected_benefit: 0.6,
        rank: 1,
        expected_effect: "vm-1 vCPU 0 run-queue delay back under 5%".into(),
        cost: ActionCost {
            duration_s: 0.001,
            bytes: 0,
            score: 0.05,
            summary: "one sched_setaffinity call; no guest pause".into(),
        },
    }
}

fn action() -> Action {
    Action {
        id: "act-1".into(),
        ts: 1_763_892_070_000,
        recommendation_id: Some("rec-1".into()),
        spec: spec(),
        state: ActionState::Approved,
        actor: "user:alice".into(),
        reason: "looks right".into(),
    }
}

fn audit() -> AuditRecord {
    AuditRecord {
        seq: 0,
        ts: 1_763_892_070_000,
        actor: "user:alice".into(),
        event: "approve".into(),
        action_id: Some("act-1".into()),
        policy: Some("noisy_neighbour".into()),
        policy_version: Some("3f2a".into()),
        detail: "{}".into(),
        prev_hash: "0".repeat(64),
        hash: "ab".repeat(32),
    }
}

fn collector_health() -> CollectorHealth {
    CollectorHealth {
        ts: 1_763_892_000_000,
        host: "rack1-h07".into(),
        collector: "vm".into(),
        source: "qmp:/run/vm1.qmp".into(),
        healthy: false,
        message: Some("/run/vm1.qmp: connect: No such file or directory".into()),
        consecutive_failures: 3,
        retry_in_ms: Some(4000),
    }
}

fn all_records() -> Vec<Record> {
    vec![
        Record::HostSample(host_sample()),
        Record::VmSample(vm_sample()),
        Record::Anomaly(anomaly()),
        Record::Incident(incident()),
        Record::Recommendation(recommendation()),
        Record::Action(action()),
        Record::Audit(audit()),
        Record::CollectorHealth(collector_health()),
    ]
}

#[test]
fn json_forms_match_golden_and_round_trip() {
    for record in all_records() {
        let kind = record.kind();
        let envelope = Envelope::new(record);
        let json = serde_json::to_string_pretty(&envelope).expect("serialize");
        check_golden(&format!("{}.json", kind.as_str()), &format!("{json}\n"));
        // Reading the golden file back must give the same record: old logs stay readable.
        let golden = std::fs::read_to_string(golden_path(&format!("{}.json", kind.as_str())))
            .expect("golden exists");
        let back: Envelope = serde_json::from_str(&golden).expect("golden parses");
        assert_eq!(back, envelope, "{} does not round-trip", kind.as_str());
        assert_eq!(back.schema_version, SCHEMA_VERSION);
    }
}

fn describe_field(out: &mut String, prefix: &str, field: &Field) {
    let name = format!("{prefix}{}", field.name());
    let null = if field.is_nullable() {
        "null"
    } else {
        "not null"
    };
    match field.data_type() {
        DataType::Struct(children) => {
            let _ = writeln!(out, "{name}: Struct {null}");
            for child in children {
                describe_field(out, &format!("{name}."), child);
            }
        }
        DataType::List(item) => {
            let _ = writeln!(out, "{name}: List {null}");
            describe_field(out, &format!("{name}[]."), item);
        }
        DataType::Map(entries, _) => {
            let _ = writeln!(out, "{name}: Map {null}");
            describe_field(out, &format!("{name}."), entries);
        }
        other => {
            let _ = writeln!(out, "{name}: {other} {null}");
        }
    }
}

fn describe_schema<T: ArrowRecord>() -> String {
    let mut out = String::new();
    for field in T::arrow_schema().fields() {
        describe_field(&mut out, "", field);
    }
    out
}

#[test]
fn arrow_schemas_match_golden() {
    let schemas = [
        ("host_sample", describe_schema::<HostSample>()),
        ("vm_sample", describe_schema::<VmSample>()),
        ("anomaly", describe_schema::<Anomaly>()),
        ("incident", describe_schema::<Incident>()),
        ("recommendation", describe_schema::<Recommendation>()),
        ("action", describe_schema::<Action>()),
        ("audit", describe_schema::<AuditRecord>()),
        ("collector_health", describe_schema::<CollectorHealth>()),
    ];
    for (kind, text) in schemas {
        check_golden(&format!("{kind}.arrow.txt"), &text);
    }
}

/// Every record converts to a one-row batch with its kind's schema: strict mode makes a serde
/// field the Arrow schema lacks an error, and a non-null Arrow column serde lacks fails too.
#[test]
fn every_record_converts_to_its_arrow_schema() {
    fn one<T: ArrowRecord>(row: T) -> arrow::array::RecordBatch {
        let batch = to_record_batch(std::slice::from_ref(&row)).expect("converts");
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), T::arrow_schema());
        batch
    }
    let batch = one(host_sample());
    // Spot-check values made it through, nested ones included.
    let pretty = arrow::util::pretty::pretty_format_batches(&[batch])
        .expect("format")
        .to_string();
    assert!(pretty.contains("2025-11-23T10:00:00"), "{pretty}");
    assert!(pretty.contains("busy_frac: 0.4375"), "{pretty}");
    assert!(pretty.contains("distances: [21, 10]"), "{pretty}");
    one(vm_sample());
    one(anomaly());
    one(incident());
    one(recommendation());
    one(action());
    one(audit());
    one(collector_health());
}

#[test]
fn empty_input_gives_empty_batch() {
    let batch = to_record_batch::<HostSample>(&[]).expect("empty converts");
    assert_eq!(batch.num_rows(), 0);
}

/// A record written before a field was added still reads, with the field's default.
#[test]
fn records_without_later_fields_still_read() {
    let mut value =
        serde_json::to_value(Envelope::new(Record::HostSample(host_sample()))).expect("serialize");
    let obj = value.as_object_mut().expect("object");
    for later in ["procs_running", "procs_blocked", "ctxt_per_s"] {
        obj.remove(later);
    }
    let back: Envelope = serde_json::from_value(value).expect("older form reads");
    let Record::HostSample(sample) = back.record else {
        panic!("kind changed");
    };
    assert_eq!(sample.procs_running, 0);
    assert_eq!(sample.ctxt_per_s, 0.0);
}

#[test]
fn unknown_kind_and_bad_version_are_reported_not_guessed() {
    let err = serde_json::from_str::<Envelope>(r#"{"schema_version":1,"kind":"bogus"}"#)
        .expect_err("unknown kind must fail");
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn table_names_are_distinct() {
    let mut names: Vec<_> = RecordKind::ALL.iter().map(|k| k.table_name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), RecordKind::ALL.len());
}
