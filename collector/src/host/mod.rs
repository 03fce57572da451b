//! The host collector: one [`HostSample`] per interval from a host's procfs and sysfs.
//!
//! This module keeps the counters between reads and assembles samples; reading and parsing
//! `/proc` is in `procfs`, sysfs NUMA nodes in `numa`, and the counter arithmetic in `rates`.

mod error;
mod numa;
mod procfs;
mod rates;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetmind_schema::{
    CpuFractions, HostSample, MemorySample, NumaNodeSample, PerCpuSample, PsiSample, TimestampMs,
    VmstatRates,
};

pub use error::SampleError;

use procfs::{CpuStat, PsiReading, VmCounters};
use rates::{JiffyDelta, per_second, stall_fraction};

/// Where a [`HostCollector`] reads, and the name it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCollectorConfig {
    /// Host name written in every sample.
    pub host: String,
    /// Root of procfs, normally `/proc`.
    pub proc_root: PathBuf,
    /// Root of sysfs, normally `/sys`.
    pub sys_root: PathBuf,
}

impl HostCollectorConfig {
    /// Reads this machine's `/proc` and `/sys`.
    #[must_use]
    pub fn local(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

/// The counters of one read, kept until the next.
#[derive(Debug, Clone)]
struct Counters {
    cpu: CpuStat,
    vm: VmCounters,
    psi: Option<PsiReading>,
}

/// Everything one read produces: the counters to keep, and the gauges of this moment.
#[derive(Debug)]
struct Reading {
    counters: Counters,
    mem: MemorySample,
    load1: f64,
    numa: Vec<NumaNodeSample>,
}

/// Samples one host from the procfs and sysfs under its configured roots.
///
/// Most of a sample is rates and fractions, i.e. differences between two reads of cumulative
/// kernel counters, so the collector keeps the counters of its last successful read. The first
/// call only primes them. A failed read leaves them as they were, so the next success covers
/// the whole time since the last good read.
///
/// Sources, and what their absence means:
///
/// | source                                             | when absent                          |
/// |----------------------------------------------------|--------------------------------------|
/// | `/proc/stat`, `/proc/meminfo`, `/proc/loadavg`, `/proc/vmstat` | error (every Linux procfs has them) |
/// | a key of `/proc/vmstat` (`numa_miss` without NUMA) | its rate is 0                        |
/// | `/proc/pressure/*` (absent, or EOPNOTSUPP with `psi=0`) | `psi` is `None`                 |
/// | `/sys/devices/system/node`                         | one node 0 with all memory and CPUs, distance `[10]` |
///
/// A source that is present but malformed is an error, whether or not it is optional.
///
/// # Example
///
/// Two reads of this machine, the first priming the counters:
///
/// ```
/// use fleetmind_collector::{HostCollector, HostCollectorConfig};
///
/// let mut collector = HostCollector::new(HostCollectorConfig::local("this-host"));
/// assert!(collector.sample(fleetmind_schema::now_ms())?.is_none());
/// let sample = collector.sample(fleetmind_schema::now_ms())?.expect("primed");
/// assert!(sample.mem.total_bytes > 0);
/// # Ok::<(), fleetmind_collector::SampleError>(())
/// ```
#[derive(Debug)]
pub struct HostCollector {
    config: HostCollectorConfig,
    last: Option<(Instant, Counters)>,
}

impl HostCollector {
    /// A collector that has read nothing yet.
    #[must_use]
    pub fn new(config: HostCollectorConfig) -> Self {
        Self { config, last: None }
    }

    /// The configuration it was built with.
    #[must_use]
    pub fn config(&self) -> &HostCollectorConfig {
        &self.config
    }

    /// Reads the host and returns the sample of the interval since the previous successful
    /// read, timed with a monotonic clock and stamped `ts`; `None` on the first read, which
    /// only primes the counters.
    ///
    /// # Errors
    ///
    /// [`SampleError`] when a required file is missing, unreadable or malformed. The counters
    /// of the previous read are kept, so the next call can succeed.
    pub fn sample(&mut self, ts: TimestampMs) -> Result<Option<HostSample>, SampleError> {
        let now = Instant::now();
        let elapsed = self
            .last
            .as_ref()
            .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at));
        self.sample_inner(ts, elapsed, now)
    }

    /// As [`sample`](Self::sample), with the time since the previous read given rather than
    /// measured: for replaying recorded trees, where the clock means nothing.
    ///
    /// # Errors
    ///
    /// As [`sample`](Self::sample).
    pub fn sample_at(
        &mut self,
        ts: TimestampMs,
        elapsed: Duration,
    ) -> Result<Option<HostSample>, SampleError> {
        self.sample_inner(ts, elapsed, Instant::now())
    }

    fn sample_inner(
        &mut self,
        ts: TimestampMs,
        elapsed: Duration,
        now: Instant,
    ) -> Result<Option<HostSample>, SampleError> {
        let reading = self.read()?;
        let sample = self
            .last
            .take()
            .map(|(_, prev)| self.build(ts, elapsed, &prev, &reading));
        self.last = Some((now, reading.counters));
        Ok(sample)
    }

    /// Reads every source once.
    fn read(&self) -> Result<Reading, SampleError> {
        let proc_root = &self.config.proc_root;
        let counters = Counters {
            cpu: procfs::read_stat(proc_root)?,
            vm: procfs::read_vmstat(proc_root)?,
            psi: procfs::read_psi(proc_root)?,
        };
        let mem = procfs::read_meminfo(proc_root)?;
        let load1 = procfs::read_load1(proc_root)?;
        let numa = match numa::read_nodes(&self.config.sys_root)? {
            Some(nodes) => nodes,
            None => {
                let cpus = counters.cpu.per_cpu.iter().map(|(id, _)| *id).collect();
                vec![numa::single_node(&mem, cpus)]
            }
        };
        Ok(Reading {
            counters,
            mem,
            load1,
            numa,
        })
    }

    fn build(
        &self,
        ts: TimestampMs,
        elapsed: Duration,
        prev: &Counters,
        now: &Reading,
    ) -> HostSample {
        let cur = &now.counters;
        let (cpu, per_cpu) = cpu_fractions(&prev.cpu, &cur.cpu);
        HostSample {
            ts,
            host: self.config.host.clone(),
            interval_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            cpus: u32::try_from(cur.cpu.per_cpu.len()).unwrap_or(u32::MAX),
            cpu,
            per_cpu,
            load1: now.load1,
            procs_running: cur.cpu.procs_running,
            procs_blocked: cur.cpu.procs_blocked,
            ctxt_per_s: per_second(prev.cpu.ctxt, cur.cpu.ctxt, elapsed),
            mem: now.mem,
            psi: psi_sample(prev.psi.as_ref(), cur.psi.as_ref(), elapsed),
            vmstat: vmstat_rates(&prev.vm, &cur.vm, elapsed),
            numa: now.numa.clone(),
        }
    }
}

/// Whole-host and per-CPU fractions. A CPU without data for the interval (offline at either
/// read, counters reset, or less than a jiffy) is left out of `per_cpu`. If the aggregate line
/// has no data, the aggregate is the sum of the CPUs that have; failing that, all zeros.
fn cpu_fractions(prev: &CpuStat, cur: &CpuStat) -> (CpuFractions, Vec<PerCpuSample>) {
    let before: BTreeMap<u32, _> = prev.per_cpu.iter().copied().collect();
    let deltas: Vec<(u32, JiffyDelta)> = cur
        .per_cpu
        .iter()
        .filter_map(|(id, now)| Some((*id, now.since(before.get(id)?)?)))
        .collect();
    let per_cpu = deltas
        .iter()
        .filter_map(|(id, delta)| {
            let f = delta.fractions()?;
            Some(PerCpuSample {
                cpu: *id,
                busy_frac: f.busy_frac,
                steal_frac: f.steal_frac,
            })
        })
        .collect();
    let aggregate = cur
        .total
        .since(&prev.total)
        .and_then(|d| d.fractions())
        .or_else(|| {
            let sum = deltas.iter().map(|(_, d)| *d).reduce(|a, b| a + b)?;
            sum.fractions()
        })
        .unwrap_or_default();
    (aggregate, per_cpu)
}

fn vmstat_rates(prev: &VmCounters, cur: &VmCounters, elapsed: Duration) -> VmstatRates {
    VmstatRates {
        pgfault_per_s: per_second(prev.pgfault, cur.pgfault, elapsed),
        pgmajfault_per_s: per_second(prev.pgmajfault, cur.pgmajfault, elapsed),
        pswpin_per_s: per_second(prev.pswpin, cur.pswpin, elapsed),
        pswpout_per_s: per_second(prev.pswpout, cur.pswpout, elapsed),
        numa_miss_per_s: per_second(prev.numa_miss, cur.numa_miss, elapsed),
    }
}

/// PSI needs both reads: without the previous one the stall fractions are unknown, and the
/// interval reports `None` rather than zeros that would read as "no pressure".
fn psi_sample(
    prev: Option<&PsiReading>,
    cur: Option<&PsiReading>,
    elapsed: Duration,
) -> Option<PsiSample> {
    let (prev, cur) = (prev?, cur?);
    let frac = |p: &procfs::Pressure, c: &procfs::Pressure| {
        stall_fraction(p.some.total_us, c.some.total_us, elapsed)
    };
    let full_frac = |p: &procfs::Pressure, c: &procfs::Pressure| match (p.full, c.full) {
        (Some(p), Some(c)) => stall_fraction(p.total_us, c.total_us, elapsed),
        _ => 0.0,
    };
    Some(PsiSample {
        cpu_some_avg10: cur.cpu.some.avg10,
        memory_some_avg10: cur.memory.some.avg10,
        memory_full_avg10: cur.memory.full.map_or(0.0, |r| r.avg10),
        io_some_avg10: cur.io.some.avg10,
        io_full_avg10: cur.io.full.map_or(0.0, |r| r.avg10),
        cpu_some_frac: frac(&prev.cpu, &cur.cpu),
        memory_some_frac: frac(&prev.memory, &cur.memory),
        io_some_frac: frac(&prev.io, &cur.io),
        memory_full_frac: full_frac(&prev.memory, &cur.memory),
        io_full_frac: full_frac(&prev.io, &cur.io),
    })
}

/// The kernel's host name (`<proc_root>/sys/kernel/hostname`, trimmed), or `"localhost"` when
/// it cannot be read or is empty.
#[must_use]
pub fn hostname(proc_root: impl AsRef<Path>) -> String {
    std::fs::read_to_string(proc_root.as_ref().join("sys/kernel/hostname"))
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_trimmed_and_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(hostname(dir.path()), "localhost");
        std::fs::create_dir_all(dir.path().join("sys/kernel")).expect("mkdir");
        std::fs::write(dir.path().join("sys/kernel/hostname"), "  \n").expect("write");
        assert_eq!(hostname(dir.path()), "localhost");
        std::fs::write(dir.path().join("sys/kernel/hostname"), "kvm-07\n").expect("write");
        assert_eq!(hostname(dir.path()), "kvm-07");
    }
}
