//! The fallback for any VMM: KVM's debugfs directory (`/sys/kernel/debug/kvm`), where the
//! kernel keeps one directory per VM, named `<pid>-<fd>` after the process that created it,
//! holding one text file per statistic (the VM's own, and its vCPUs' summed).
//!
//! It knows nothing of the VMM, so it gives what the kernel gives: exit counters per VM, the
//! process's resident memory, and the vCPU threads where their names say which vCPU they run
//! (QEMU's `CPU 0/KVM`, Firecracker's `fc_vcpu 0`, Cloud Hypervisor's `vcpu0`; only when the
//! process runs one VM, otherwise threads cannot be told apart). VMs are named after the
//! process (`-name` of a QEMU command line, else the command). Many kernels lock debugfs down
//! (files answer EPERM even to root); then this source reports that once per retry like any
//! failing source, and the stats-fd or QMP sources are the way in. Processes another source
//! already reads ([`CoveredPids`]) are left out, so no VM is counted twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fleetmind_schema::VmmKind;
use futures::future::BoxFuture;

use super::builtin::is_exit_counter;
use super::{SourceError, VcpuReading, VmReading, VmSource};
use fleetmind_vmm_probe::host_facts::{thread_allowed_cpus, thread_last_cpu, thread_schedstat};

/// Where to read.
#[derive(Debug, Clone)]
pub struct DebugfsConfig {
    /// KVM's debugfs directory, normally `/sys/kernel/debug/kvm`.
    pub kvm_dir: PathBuf,
    /// Root of procfs, normally `/proc`.
    pub proc_root: PathBuf,
    /// The host the VMs run on.
    pub host: String,
    /// Processes other sources read; their VMs are left out here.
    pub covered: Arc<CoveredPids>,
}

/// Processes whose VMs another source reads (built-in VMM hosts, QEMUs over QMP), as those
/// sources last saw them: the debugfs fallback leaves them out so that no VM is counted twice.
/// A process not seen for [`CoveredPids::TTL`] is forgotten (it exited; its pid may be reused).
#[derive(Debug, Default)]
pub struct CoveredPids(Mutex<HashMap<u32, Instant>>);

impl CoveredPids {
    /// How long a sighting counts.
    pub const TTL: Duration = Duration::from_secs(60);

    /// Another source read a VM of `pid` just now.
    pub fn mark(&self, pid: u32) {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        seen.retain(|_, at| now.duration_since(*at) < Self::TTL);
        seen.insert(pid, now);
    }

    /// Whether another source read a VM of `pid` lately.
    #[must_use]
    pub fn contains(&self, pid: u32) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .is_some_and(|at| at.elapsed() < Self::TTL)
    }
}

/// Every VM in KVM's debugfs directory.
#[derive(Debug)]
pub struct DebugfsSource {
    config: DebugfsConfig,
}

impl DebugfsSource {
    /// A source over `config.kvm_dir`.
    #[must_use]
    pub fn new(config: DebugfsConfig) -> Self {
        Self { config }
    }

    /// Whether `kvm_dir` exists (debugfs mounted and KVM loaded); readability is another
    /// matter, found out by reading.
    #[must_use]
    pub fn available(kvm_dir: &Path) -> bool {
        kvm_dir.is_dir()
    }

    /// Reads every VM directory now.
    ///
    /// # Errors
    ///
    /// A message naming the file when the directory or a counter cannot be read (EPERM on a
    /// locked-down debugfs).
    pub fn read_now(&self) -> Result<Vec<VmReading>, SourceError> {
        let dir = &self.config.kvm_dir;
        let fail = |path: &Path, e: &dyn std::fmt::Display| {
            SourceError::new(format!("{}: {e}", path.display()))
        };
        let entries = std::fs::read_dir(dir).map_err(|e| fail(dir, &e))?;
        let mut vm_dirs: Vec<(i32, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (pid, fd) = name.split_once('-')?;
                Some((pid.parse().ok()?, fd.parse().ok()?, e.path()))
            })
            .filter(|(pid, _, _)| {
                !u32::try_from(*pid).is_ok_and(|p| self.config.covered.contains(p))
            })
            .collect();
        vm_dirs.sort();
        let ts_ms = fleetmind_schema::now_ms();
        let at = Instant::now();
        let mut readings = Vec::with_capacity(vm_dirs.len());
        for (pid, fd, path) in &vm_dirs {
            let vms_of_pid = vm_dirs.iter().filter(|(p, _, _)| p == pid).count();
            readings.push(self.read_vm(*pid, *fd, path, vms_of_pid, ts_ms, at)?);
        }
        Ok(readings)
    }

    fn read_vm(
        &self,
        pid: i32,
        fd: u64,
        dir: &Path,
        vms_of_pid: usize,
        ts_ms: fleetmind_schema::TimestampMs,
        at: Instant,
    ) -> Result<VmReading, SourceError> {
        let mut exits = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| SourceError::new(format!("{}: {e}", dir.display())))?;
        for entry in entries.filter_map(Result::ok) {
            let Ok(stat) = entry.file_name().into_string() else {
                continue;
            };
            if !is_exit_counter(&stat) || !entry.path().is_file() {
                continue;
            }
            let text = std::fs::read_to_string(entry.path())
                .map_err(|e| SourceError::new(format!("{}: {e}", entry.path().display())))?;
            if let Ok(value) = text.trim().parse::<u64>() {
                exits.push((stat, value));
            }
        }
        exits.sort();
        let proc_root = &self.config.proc_root;
        let process = proc_root.join(pid.to_string());
        let name = process_name(&process).unwrap_or_else(|| format!("pid-{pid}"));
        let name = if vms_of_pid > 1 {
            format!("{name}-{fd}")
        } else {
            name
        };
        let vcpus = if vms_of_pid == 1 {
            vcpu_threads(proc_root, pid)
                .into_iter()
                .map(|(vcpu, tid)| {
                    let sched = thread_schedstat(proc_root, pid, tid).ok();
                    VcpuReading {
                        vcpu,
                        tid: u32::try_from(tid).ok(),
                        run_ns: sched.map(|s| s.run_ns),
                        wait_ns: sched.map(|s| s.wait_ns),
                        host_cpu: thread_last_cpu(proc_root, pid, tid).ok(),
                        affinity: thread_allowed_cpus(proc_root, pid, tid).unwrap_or_default(),
                        exits: None,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let host = &self.config.host;
        Ok(VmReading {
            ts_ms,
            at,
            host: host.clone(),
            vm: format!("{host}/{name}"),
            name,
            vmm: VmmKind::Qemu,
            instance: (u64::try_from(pid).unwrap_or(0) << 32) | (fd & 0xFFFF_FFFF),
            vmm_pid: u32::try_from(pid).ok(),
            mem_bytes: 0,
            rss_bytes: vm_rss_bytes(&process).unwrap_or(0),
            numa_resident: Vec::new(),
            balloon_target_bytes: None,
            balloon_actual_bytes: None,
            guest_free_bytes: None,
            dirty_bytes: None,
            vcpus,
            exits,
        })
    }
}

impl VmSource for DebugfsSource {
    fn name(&self) -> String {
        format!("debugfs:{}", self.config.kvm_dir.display())
    }

    fn read(&mut self) -> BoxFuture<'_, Result<Vec<VmReading>, SourceError>> {
        // Small pseudo-files: reading them inline is cheaper than a blocking-pool hop.
        Box::pin(std::future::ready(self.read_now()))
    }
}

/// The `-name` of a QEMU command line (`-name foo` or `-name guest=foo,...`), else `comm`.
fn process_name(process: &Path) -> Option<String> {
    if let Ok(cmdline) = std::fs::read(process.join("cmdline")) {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if let Some(value) = args
            .windows(2)
            .find(|w| w[0] == b"-name")
            .map(|w| String::from_utf8_lossy(w[1]).into_owned())
        {
            let first = value.split(',').next().unwrap_or_default();
            let name = first.strip_prefix("guest=").unwrap_or(first);
            if !name.is_empty() {
                return Some(name.to_owned());
            }
        }
    }
    let comm = std::fs::read_to_string(process.join("comm")).ok()?;
    Some(comm.trim().to_owned()).filter(|c| !c.is_empty())
}

/// `VmRSS` of a process, bytes.
fn vm_rss_bytes(process: &Path) -> Option<u64> {
    let status = std::fs::read_to_string(process.join("status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The vCPU index a thread name says it runs: `CPU 3/KVM` (QEMU), `fc_vcpu 3` (Firecracker),
/// `vcpu3` or `...-vcpu3` (Cloud Hypervisor, fleetmind).
#[must_use]
pub fn vcpu_of_thread_name(comm: &str) -> Option<u32> {
    let comm = comm.trim();
    if let Some(rest) = comm.strip_prefix("CPU ") {
        return rest.strip_suffix("/KVM")?.parse().ok();
    }
    if let Some(rest) = comm.strip_prefix("fc_vcpu ") {
        return rest.parse().ok();
    }
    let at = comm.rfind("vcpu")?;
    comm[at + 4..].parse().ok()
}

/// `(vCPU index, tid)` of a process's threads whose names say which vCPU they run.
fn vcpu_threads(proc_root: &Path, pid: i32) -> Vec<(u32, i32)> {
    let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, i32)> = tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            Some((vcpu_of_thread_name(&comm)?, tid))
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_say_the_vcpu() {
        assert_eq!(vcpu_of_thread_name("CPU 3/KVM\n"), Some(3));
        assert_eq!(vcpu_of_thread_name("fc_vcpu 1"), Some(1));
        assert_eq!(vcpu_of_thread_name("vcpu12"), Some(12));
        assert_eq!(vcpu_of_thread_name("fm-vm2-vcpu0"), Some(0));
        assert_eq!(vcpu_of_thread_name("qemu-system-x86"), None);
        assert_eq!(vcpu_of_thread_name("CPU 3/TCG"), None);
    }
}
