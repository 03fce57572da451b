//! The names of the series fleetmind watches, and the functions that read them out of samples.
//!
//! One place owns these names: the series extractor feeds [`host_series`] and [`vm_series`]
//! to the detectors, whose anomalies carry the same names back in [`Anomaly::series`], and the
//! correlator matches them here. Host series have a host subject (`vm` = `None`); VM series a
//! VM subject. Per-vCPU series are `vcpu.<index>.<metric>` ([`vcpu_series`],
//! [`parse_vcpu_series`]).
//!
//! Non-finite values (a collector bug, a division by a zero interval) are left out rather than
//! passed on: a detector cannot learn from NaN.
//!
//! [`Anomaly::series`]: fleetmind_schema::Anomaly::series

use fleetmind_schema::{HostSample, VmSample};

/// Host: busy fraction of all CPUs (1 - idle - iowait).
pub const CPU_BUSY_FRAC: &str = "cpu.busy_frac";
/// Host: steal fraction of all CPUs.
pub const CPU_STEAL_FRAC: &str = "cpu.steal_frac";
/// Host: iowait fraction of all CPUs.
pub const CPU_IOWAIT_FRAC: &str = "cpu.iowait_frac";
/// Host: 1-minute load average.
pub const LOAD1: &str = "load1";
/// Host: runnable tasks at the end of the interval.
pub const PROCS_RUNNING: &str = "procs_running";
/// Host: used memory (total - available) as a fraction of total.
pub const MEM_USED_FRAC: &str = "mem.used_frac";
/// Host: fraction of the interval some task stalled on CPU.
pub const PSI_CPU_SOME_FRAC: &str = "psi.cpu_some_frac";
/// Host: fraction of the interval some task stalled on memory.
pub const PSI_MEMORY_SOME_FRAC: &str = "psi.memory_some_frac";
/// Host: fraction of the interval all non-idle tasks stalled on memory.
pub const PSI_MEMORY_FULL_FRAC: &str = "psi.memory_full_frac";
/// Host: fraction of the interval some task stalled on I/O.
pub const PSI_IO_SOME_FRAC: &str = "psi.io_some_frac";
/// Host: major page faults per second.
pub const PGMAJFAULT_PER_S: &str = "vmstat.pgmajfault_per_s";
/// Host: pages swapped out per second.
pub const PSWPOUT_PER_S: &str = "vmstat.pswpout_per_s";
/// Host: NUMA allocations that missed their intended node, per second.
pub const NUMA_MISS_PER_S: &str = "vmstat.numa_miss_per_s";

/// Every host series, in the order [`host_series`] emits them.
pub const HOST_SERIES: [&str; 13] = [
    CPU_BUSY_FRAC,
    CPU_STEAL_FRAC,
    CPU_IOWAIT_FRAC,
    LOAD1,
    PROCS_RUNNING,
    MEM_USED_FRAC,
    PSI_CPU_SOME_FRAC,
    PSI_MEMORY_SOME_FRAC,
    PSI_MEMORY_FULL_FRAC,
    PSI_IO_SOME_FRAC,
    PGMAJFAULT_PER_S,
    PSWPOUT_PER_S,
    NUMA_MISS_PER_S,
];

/// VM: KVM exits of the whole VM per second.
pub const EXITS_PER_S: &str = "exits_per_s";
/// VM: resident memory of the VMM process (or the VM's share of it).
pub const RSS_BYTES: &str = "rss_bytes";
/// VM: free memory the guest reports.
pub const GUEST_FREE_BYTES: &str = "guest_free_bytes";
/// VM: bytes the balloon holds.
pub const BALLOON_ACTUAL_BYTES: &str = "balloon_actual_bytes";
/// VM: guest memory written per second.
pub const DIRTY_BYTES_PER_S: &str = "dirty_bytes_per_s";

/// VM, derived by the correlator for its evidence (not emitted by [`vm_series`]): the share of
/// the VM's resident memory on NUMA nodes other than the one its vCPUs run on.
pub const NUMA_REMOTE_FRAC: &str = "numa.remote_frac";
/// Host, derived by the correlator for its evidence (not emitted by [`host_series`]): the
/// runnable vCPU demand of all VMs (run + run-queue wait) per host CPU.
pub const VCPU_DEMAND_PER_CPU: &str = "vcpu_demand_per_cpu";

/// The per-vCPU metrics, as the last part of `vcpu.<index>.<metric>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VcpuMetric {
    /// `run_frac`: fraction of the interval the vCPU thread ran.
    RunFrac,
    /// `wait_frac`: fraction of the interval it was runnable but waited (run-queue delay).
    WaitFrac,
    /// `exits_per_s`: its KVM exits per second.
    ExitsPerS,
}

impl VcpuMetric {
    /// All metrics, in the order [`vm_series`] emits them for each vCPU.
    pub const ALL: [VcpuMetric; 3] = [
        VcpuMetric::RunFrac,
        VcpuMetric::WaitFrac,
        VcpuMetric::ExitsPerS,
    ];

    /// The metric's name in a series.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            VcpuMetric::RunFrac => "run_frac",
            VcpuMetric::WaitFrac => "wait_frac",
            VcpuMetric::ExitsPerS => "exits_per_s",
        }
    }
}

/// The series name of one vCPU's metric: `vcpu.<vcpu>.<metric>`.
#[must_use]
pub fn vcpu_series(vcpu: u32, metric: VcpuMetric) -> String {
    format!("vcpu.{vcpu}.{}", metric.as_str())
}

/// The vCPU index and metric of a `vcpu.<index>.<metric>` series name; `None` for any other
/// name.
#[must_use]
pub fn parse_vcpu_series(series: &str) -> Option<(u32, VcpuMetric)> {
    let rest = series.strip_prefix("vcpu.")?;
    let (index, metric) = rest.split_once('.')?;
    let vcpu = index.parse().ok()?;
    let metric = VcpuMetric::ALL.into_iter().find(|m| m.as_str() == metric)?;
    Some((vcpu, metric))
}

/// Exits of the whole VM per second: the VMM's own `exits` counter where it reports one,
/// else the sum over the vCPUs.
#[must_use]
pub fn vm_exits_per_s(sample: &VmSample) -> f64 {
    sample
        .exits
        .iter()
        .find(|e| e.reason == "exits")
        .map(|e| e.per_s)
        .filter(|v| v.is_finite())
        .unwrap_or_else(|| {
            sample
                .vcpus
                .iter()
                .map(|v| v.exits_per_s)
                .filter(|v| v.is_finite())
                .sum()
        })
}

// Byte counts and task counts become f64 series; beyond 2^53 a few units of precision do not
// matter to a detector.
#[allow(clippy::cast_precision_loss)]
fn as_f64(v: u64) -> f64 {
    v as f64
}

fn finite(series: Vec<(String, f64)>) -> Vec<(String, f64)> {
    series.into_iter().filter(|(_, v)| v.is_finite()).collect()
}

/// The host series of one sample, named by the constants above (PSI series only where the
/// kernel has PSI).
#[must_use]
pub fn host_series(s: &HostSample) -> Vec<(String, f64)> {
    let mut out = vec![
        (CPU_BUSY_FRAC.to_owned(), s.cpu.busy_frac),
        (CPU_STEAL_FRAC.to_owned(), s.cpu.steal_frac),
        (CPU_IOWAIT_FRAC.to_owned(), s.cpu.iowait_frac),
        (LOAD1.to_owned(), s.load1),
        (PROCS_RUNNING.to_owned(), f64::from(s.procs_running)),
        (MEM_USED_FRAC.to_owned(), s.mem.used_frac),
    ];
    if let Some(psi) = &s.psi {
        out.extend([
            (PSI_CPU_SOME_FRAC.to_owned(), psi.cpu_some_frac),
            (PSI_MEMORY_SOME_FRAC.to_owned(), psi.memory_some_frac),
            (PSI_MEMORY_FULL_FRAC.to_owned(), psi.memory_full_frac),
            (PSI_IO_SOME_FRAC.to_owned(), psi.io_some_frac),
        ]);
    }
    out.extend([
        (PGMAJFAULT_PER_S.to_owned(), s.vmstat.pgmajfault_per_s),
        (PSWPOUT_PER_S.to_owned(), s.vmstat.pswpout_per_s),
        (NUMA_MISS_PER_S.to_owned(), s.vmstat.numa_miss_per_s),
    ]);
    finite(out)
}

/// The VM series of one sample: each vCPU's run, wait and exit rate, then the whole VM's exit
/// rate, resident memory, and the guest-free, balloon and dirty-rate series where the VMM
/// reports them.
#[must_use]
pub fn vm_series(s: &VmSample) -> Vec<(String, f64)> {
    let mut out = Vec::with_capacity(s.vcpus.len() * 3 + 5);
    for v in &s.vcpus {
        out.push((vcpu_series(v.vcpu, VcpuMetric::RunFrac), v.run_frac));
        out.push((vcpu_series(v.vcpu, VcpuMetric::WaitFrac), v.wait_frac));
        out.push((vcpu_series(v.vcpu, VcpuMetric::ExitsPerS), v.exits_per_s));
    }
    out.push((EXITS_PER_S.to_owned(), vm_exits_per_s(s)));
    out.push((RSS_BYTES.to_owned(), as_f64(s.rss_bytes)));
    if let Some(free) = s.guest_free_bytes {
        out.push((GUEST_FREE_BYTES.to_owned(), as_f64(free)));
    }
    if let Some(actual) = s.balloon_actual_bytes {
        out.push((BALLOON_ACTUAL_BYTES.to_owned(), as_f64(actual)));
    }
    if let Some(dirty) = s.dirty_bytes_per_s {
        out.push((DIRTY_BYTES_PER_S.to_owned(), dirty));
    }
    finite(out)
}

#[cfg(test)]
mod tests {
    use fleetmind_schema::ExitCounter;

    use super::*;
    use crate::correlate::test_utils::{HostSpec, VmSpec, host_sample, vm_sample};

    #[test]
    fn host_series_names_every_constant_once() {
        let s = host_sample(&HostSpec::new("h", 4), 1_000);
        let names: Vec<String> = host_series(&s).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, HOST_SERIES.map(str::to_owned));

        let mut no_psi = s.clone();
        no_psi.psi = None;
        let names: Vec<String> = host_series(&no_psi).into_iter().map(|(n, _)| n).collect();
        assert!(!names.iter().any(|n| n.starts_with("psi.")), "{names:?}");
        assert_eq!(names.len(), HOST_SERIES.len() - 4);
    }

    #[test]
    fn vm_series_cover_vcpus_and_optional_fields() {
        let mut spec = VmSpec::builtin("h/a", &[&[0], &[1]]);
        spec.balloon = None;
        let mut s = vm_sample(&spec, 1_000);
        s.guest_free_bytes = None;
        s.dirty_bytes_per_s = None;
        let names: Vec<String> = vm_series(&s).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "vcpu.0.run_frac",
                "vcpu.0.wait_frac",
                "vcpu.0.exits_per_s",
                "vcpu.1.run_frac",
                "vcpu.1.wait_frac",
                "vcpu.1.exits_per_s",
                "exits_per_s",
                "rss_bytes",
            ]
        );
        s.guest_free_bytes = Some(10);
        s.balloon_actual_bytes = Some(20);
        s.dirty_bytes_per_s = Some(f64::NAN);
        let series = vm_series(&s);
        assert!(series.contains(&(GUEST_FREE_BYTES.to_owned(), 10.0)));
        assert!(series.contains(&(BALLOON_ACTUAL_BYTES.to_owned(), 20.0)));
        assert!(
            !series.iter().any(|(n, _)| n == DIRTY_BYTES_PER_S),
            "NaN is left out"
        );
    }

    #[test]
    fn whole_vm_exits_prefer_the_vmm_counter() {
        let mut s = vm_sample(&VmSpec::builtin("h/a", &[&[0], &[1]]), 1_000);
        s.vcpus[0].exits_per_s = 10.0;
        s.vcpus[1].exits_per_s = 5.0;
        s.exits.clear();
        assert!((vm_exits_per_s(&s) - 15.0).abs() < 1e-9);
        s.exits.push(ExitCounter {
            reason: "exits".into(),
            total: 100,
            per_s: 40.0,
        });
        assert!((vm_exits_per_s(&s) - 40.0).abs() < 1e-9);
    }

    #[test]
    fn vcpu_series_names_round_trip() {
        for metric in VcpuMetric::ALL {
            let name = vcpu_series(12, metric);
            assert_eq!(parse_vcpu_series(&name), Some((12, metric)));
        }
        for other in ["vcpu.x.run_frac", "vcpu.1.steal", "cpu.busy_frac", "vcpu.1"] {
            assert_eq!(parse_vcpu_series(other), None, "{other}");
        }
    }
}
