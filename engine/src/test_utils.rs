//! Record builders for tests: plausible samples without a collector.
//!
//! Compiled for this crate's tests and, with the `test-utils` feature, for crates that test
//! against the engine (the HTTP API).

use fleetmind_schema::{
    Anomaly, CpuFractions, HostSample, MemorySample, NumaNodeSample, PerCpuSample, PsiSample,
    Record, Subject, TimestampMs, VmstatRates,
};

/// Interval between the samples [`host_records`] builds, in milliseconds.
pub const SAMPLE_INTERVAL_MS: i64 = 10_000;

/// A 4-CPU, 16 GiB, one-node host sample at `ts`, 25 % busy.
#[must_use]
pub fn host_sample(host: &str, ts: TimestampMs) -> HostSample {
    const GIB: u64 = 1 << 30;
    HostSample {
        ts,
        host: host.to_owned(),
        interval_ms: 10_000,
        cpus: 4,
        cpu: CpuFractions {
            user_frac: 0.2,
            system_frac: 0.05,
            iowait_frac: 0.0,
            steal_frac: 0.0,
            idle_frac: 0.75,
            busy_frac: 0.25,
        },
        per_cpu: (0..4)
            .map(|cpu| PerCpuSample {
                cpu,
                busy_frac: 0.25,
                steal_frac: 0.0,
            })
            .collect(),
        load1: 1.0,
        procs_running: 2,
        procs_blocked: 0,
        ctxt_per_s: 1_000.0,
        mem: MemorySample {
            total_bytes: 16 * GIB,
            free_bytes: 8 * GIB,
            available_bytes: 12 * GIB,
            cached_bytes: 4 * GIB,
            used_frac: 0.25,
            ..MemorySample::default()
        },
        psi: Some(PsiSample::default()),
        vmstat: VmstatRates::default(),
        numa: vec![NumaNodeSample {
            node: 0,
            mem_total_bytes: 16 * GIB,
            mem_free_bytes: 8 * GIB,
            mem_used_bytes: 8 * GIB,
            hugepages_total: 0,
            hugepages_free: 0,
            cpus: vec![0, 1, 2, 3],
            distances: vec![10],
        }],
    }
}

/// `per_host` samples of each host, [`SAMPLE_INTERVAL_MS`] apart, the last at `end_ts`.
#[must_use]
pub fn host_records(hosts: &[&str], end_ts: TimestampMs, per_host: usize) -> Vec<Record> {
    let per_host = i64::try_from(per_host).unwrap_or(i64::MAX);
    (0..per_host)
        .flat_map(|i| {
            let ts = end_ts - (per_host - 1 - i) * SAMPLE_INTERVAL_MS;
            hosts
                .iter()
                .map(move |h| Record::HostSample(host_sample(h, ts)))
        })
        .collect()
}

/// An anomaly on a host's `cpu.busy_frac` at `ts`.
#[must_use]
pub fn anomaly(host: &str, ts: TimestampMs) -> Anomaly {
    Anomaly {
        id: format!("an-{host}-{ts}"),
        ts,
        subject: Subject {
            host: host.to_owned(),
            vm: None,
        },
        series: "cpu.busy_frac".to_owned(),
        value: 0.99,
        expected: 0.25,
        score: 0.9,
        detector: "test".to_owned(),
    }
}
