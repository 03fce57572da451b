//! A VM's statistics as the control API reports them: what the VMM counted, what the guest
//! counted, what KVM counted, and what procfs says about its threads and memory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{ControlError, ControlErrorKind};
use crate::host_facts::{
    MappingFilter, NumaMapping, PerNode, read_numa_maps, residency, thread_allowed_cpus,
    thread_last_cpu, thread_schedstat,
};
use crate::stats::{KvmStats, StatsSnapshot};
use crate::vmm::{BalloonStatus, ExitCounts, GuestCounters, VmHandle, VmState};

/// The KVM binary-stats files of a VM and its vCPUs, opened once.
#[derive(Debug)]
pub(super) struct KvmStatsFds {
    vm: KvmStats,
    vcpus: Vec<KvmStats>,
}

/// One vCPU thread as procfs shows it. Fields are absent when the thread is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcpuThread {
    /// vCPU index.
    pub vcpu: u32,
    /// Kernel thread id.
    pub tid: i32,
    /// Nanoseconds run on a CPU.
    pub run_ns: Option<u64>,
    /// Nanoseconds runnable but waiting for a CPU (contention).
    pub wait_ns: Option<u64>,
    /// The CPU it last ran on.
    pub last_cpu: Option<u32>,
    /// CPUs it may run on.
    pub allowed_cpus: Vec<u32>,
}

/// Where a VM's guest memory is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryPlacement {
    /// Guest memory size.
    pub guest_bytes: u64,
    /// Resident bytes, all nodes.
    pub resident_bytes: u64,
    /// Resident bytes per NUMA node (empty on kernels without NUMA).
    pub resident_per_node: PerNode,
}

/// KVM's own counters: every statistic by the kernel's name; single values as numbers,
/// histograms as arrays of bucket counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvmCounters {
    /// The VM's statistics.
    pub vm: BTreeMap<String, Value>,
    /// Each vCPU's statistics.
    pub vcpus: Vec<BTreeMap<String, Value>>,
}

/// Everything known about a VM at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmStats {
    /// The VM's id in its VMM process (with the process id, it changes when the VM restarts).
    pub id: u64,
    /// The VM.
    pub name: String,
    /// Its state.
    #[serde(flatten)]
    pub state: VmState,
    /// Milliseconds since the Unix epoch when read.
    pub ts: u64,
    /// Exits to the VMM by reason, whole VM.
    pub exits: ExitCounts,
    /// Exits to the VMM by reason, per vCPU.
    pub vcpu_exits: Vec<ExitCounts>,
    /// The guest's own counters, whole VM.
    pub guest: GuestCounters,
    /// KVM's counters.
    pub kvm: KvmCounters,
    /// vCPU threads.
    pub threads: Vec<VcpuThread>,
    /// Guest memory placement.
    pub memory: MemoryPlacement,
    /// The balloon.
    pub balloon: BalloonStatus,
    /// Guest TSC frequency the compute budgets use.
    pub tsc_khz: u32,
}

fn snapshot_json(snapshot: &StatsSnapshot) -> BTreeMap<String, Value> {
    snapshot
        .values
        .iter()
        .map(|v| {
            let value = match v.value() {
                Some(one) => Value::from(one),
                None => Value::from(v.values.clone()),
            };
            (v.name.to_string(), value)
        })
        .collect()
}

fn internal(e: &dyn std::error::Error) -> ControlError {
    ControlError::from_error(ControlErrorKind::Internal, e)
}

/// This process's `numa_maps`, read once for several VMs (it lists every mapping of the
/// process, so reading it per VM costs as many times more).
pub(super) fn own_numa_maps(proc_root: &Path) -> Vec<NumaMapping> {
    read_numa_maps(proc_root, own_pid()).unwrap_or_default()
}

/// Opens the stats fds at first use, reads everything; `mappings` is this process's
/// `numa_maps` (see [`own_numa_maps`]).
pub(super) fn collect(
    handle: &VmHandle,
    fds: &mut Option<KvmStatsFds>,
    proc_root: &Path,
    mappings: &[NumaMapping],
) -> Result<VmStats, ControlError> {
    if fds.is_none() {
        let vm = KvmStats::open(&handle.vm_fd()).map_err(|e| internal(&e))?;
        let vcpus = handle
            .vcpu_fds()
            .iter()
            .map(KvmStats::open)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(&e))?;
        *fds = Some(KvmStatsFds { vm, vcpus });
    }
    let fds = fds.as_ref().expect("opened just above");
    let vm = fds.vm.read().map_err(|e| internal(&e))?;
    let vcpus = fds
        .vcpus
        .iter()
        .map(|s| s.read().map(|snap| snapshot_json(&snap)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal(&e))?;
    let threads = handle
        .vcpu_tids()
        .into_iter()
        .enumerate()
        .map(|(i, tid)| vcpu_thread(proc_root, i as u32, tid))
        .collect();
    let vcpu_exits = handle.vcpu_exit_counts();
    Ok(VmStats {
        id: handle.id(),
        name: handle.name(),
        state: handle.state(),
        ts: now_ms(),
        exits: ExitCounts::sum(&vcpu_exits),
        vcpu_exits,
        guest: handle.guest_counters(),
        kvm: KvmCounters {
            vm: snapshot_json(&vm),
            vcpus,
        },
        threads,
        memory: placement_in(mappings, handle),
        balloon: handle.balloon(),
        tsc_khz: handle.tsc_khz(),
    })
}

fn own_pid() -> i32 {
    i32::try_from(std::process::id()).expect("Linux pids fit in i32")
}

/// What procfs says about one vCPU thread; fields the kernel does not give are absent.
pub(super) fn vcpu_thread(proc_root: &Path, vcpu: u32, tid: i32) -> VcpuThread {
    let pid = own_pid();
    let sched = thread_schedstat(proc_root, pid, tid).ok();
    VcpuThread {
        vcpu,
        tid,
        run_ns: sched.map(|s| s.run_ns),
        wait_ns: sched.map(|s| s.wait_ns),
        last_cpu: thread_last_cpu(proc_root, pid, tid).ok(),
        allowed_cpus: thread_allowed_cpus(proc_root, pid, tid).unwrap_or_default(),
    }
}

/// Residency of the VM's guest memory per node, from `numa_maps`.
pub(super) fn memory_placement(proc_root: &Path, handle: &VmHandle) -> MemoryPlacement {
    placement_in(&own_numa_maps(proc_root), handle)
}

/// Residency of the VM's guest memory per node among `mappings`.
fn placement_in(mappings: &[NumaMapping], handle: &VmHandle) -> MemoryPlacement {
    let range = handle.guest_memory();
    let start = range.addr as u64;
    let per_node = residency(
        mappings,
        MappingFilter::StartIn {
            start,
            end: start + range.len as u64,
        },
    );
    MemoryPlacement {
        guest_bytes: range.len as u64,
        resident_bytes: per_node.values().sum(),
        resident_per_node: per_node,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
