//! The operations of the VMM's control API, without the transport.
//!
//! A [`VmmControl`] is one VMM "host": it owns the VMs it created, by name, and answers what the
//! control API asks (list, create, stop, pause, resume, set the level, workload, mix or
//! balloon, read stats, pin a vCPU, move memory). Every answer is a serialisable value and
//! every failure a [`ControlError`] whose [`ControlErrorKind`] tells the transport which status
//! to send, and whose message names the offending field. The HTTP routes live in the
//! dashboards crate; the demo fleet ([`demo`]) drives the same operations.
//!
//! Where `/dev/kvm` is missing the control still answers: the host reports the hypervisor
//! absent with the reason, listing works (empty), and creating a VM is refused as unavailable.

pub mod demo;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;

use self::stats::KvmStatsFds;
pub use self::stats::{MemoryPlacement, VcpuThread, VmStats};
use crate::flavour::{KvmStatus, detect_kvm};
use crate::guest::{Mix, Workload};
use crate::placement::{HostTopology, bind_memory, pin_thread};
use crate::vmm::{BalloonStatus, Limits, VmHandle, VmSpec, VmState, Vmm};

/// What a failure means to a caller, so a transport can map it (HTTP: 400, 404, 409, 503,
/// 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlErrorKind {
    /// The request is wrong; the message names the field.
    Invalid,
    /// No VM of that name.
    NotFound,
    /// The VM exists already, or is in the wrong state for the request.
    Conflict,
    /// This host cannot run VMs (no usable KVM).
    Unavailable,
    /// The host or KVM failed.
    Internal,
}

/// A failed control operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// What kind of failure.
    pub kind: ControlErrorKind,
    /// The whole story, source chain included.
    pub message: String,
}

impl ControlError {
    fn new(kind: ControlErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// `error` and its sources, joined with ": ".
    fn from_error(kind: ControlErrorKind, error: &dyn std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self::new(kind, message)
    }

    fn not_found(name: &str) -> Self {
        Self::new(ControlErrorKind::NotFound, format!("no VM named {name:?}"))
    }
}

/// What kind of control failure an error of the layers below is.
trait Classify: std::error::Error + Sized {
    fn kind(&self) -> ControlErrorKind;

    fn classify(self) -> ControlError {
        ControlError::from_error(self.kind(), &self)
    }
}

impl Classify for crate::vmm::CreateVmError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::Spec(_) => ControlErrorKind::Invalid,
            _ => ControlErrorKind::Internal,
        }
    }
}

impl Classify for crate::vmm::PauseError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::NotRunning { .. } => ControlErrorKind::Conflict,
            Self::Timeout(_) => ControlErrorKind::Internal,
        }
    }
}

impl Classify for crate::vmm::ResumeError {
    fn kind(&self) -> ControlErrorKind {
        ControlErrorKind::Conflict
    }
}

impl Classify for crate::vmm::SetLevelError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::Level => ControlErrorKind::Invalid,
            Self::Control(_) => ControlErrorKind::Internal,
        }
    }
}

impl Classify for crate::vmm::SetWorkloadError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::Workload(_) => ControlErrorKind::Invalid,
            Self::Control(_) => ControlErrorKind::Internal,
        }
    }
}

impl Classify for crate::vmm::SetMixError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::NotPhased { .. } | Self::Mix(_) => ControlErrorKind::Invalid,
            Self::Control(_) => ControlErrorKind::Internal,
        }
    }
}

impl Classify for crate::vmm::SetBalloonError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::Target { .. } => ControlErrorKind::Invalid,
            Self::Control(_) => ControlErrorKind::Internal,
        }
    }
}

impl Classify for crate::placement::PinError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::SetAffinity { .. } | Self::Check(_) => ControlErrorKind::Internal,
            Self::NoSuchThread { .. } => ControlErrorKind::Conflict,
            _ => ControlErrorKind::Invalid,
        }
    }
}

impl Classify for crate::placement::MoveMemoryError {
    fn kind(&self) -> ControlErrorKind {
        match self {
            Self::Mbind { .. } | Self::MovePages { .. } => ControlErrorKind::Internal,
            _ => ControlErrorKind::Invalid,
        }
    }
}

/// The hypervisor as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// The host name this VMM plays.
    pub host: String,
    /// The VMM process.
    pub pid: u32,
    /// KVM, with its flavour or the reason it is absent.
    pub hypervisor: KvmStatus,
    /// What one VM may have now; absent without KVM.
    pub limits: Option<Limits>,
    /// Online CPUs.
    pub cpus: Vec<u32>,
    /// Online NUMA nodes.
    pub nodes: Vec<u32>,
    /// VMs on this host.
    pub vms: usize,
}

/// One VM as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    /// Unique within this VMM process.
    pub id: u64,
    /// Unique within this host; the API's key.
    pub name: String,
    /// Its state (and failure reason).
    #[serde(flatten)]
    pub state: VmState,
    /// The spec as it is now (level and workload follow later changes).
    pub spec: VmSpec,
    /// Kernel thread id of each vCPU.
    pub vcpu_tids: Vec<i32>,
    /// The balloon.
    pub balloon: BalloonStatus,
}

/// One VM and what the control keeps beside it.
#[derive(Debug)]
struct ManagedVm {
    handle: VmHandle,
    /// KVM stats fds, opened at the first stats request.
    stats: Mutex<Option<KvmStatsFds>>,
}

/// One VMM host: its VMs by name, and the operations on them.
#[derive(Debug)]
pub struct VmmControl {
    host: String,
    hypervisor: KvmStatus,
    vmm: Option<Vmm>,
    proc_root: PathBuf,
    sys_root: PathBuf,
    vms: RwLock<BTreeMap<String, Arc<ManagedVm>>>,
}

/// Longest VM name.
pub const MAX_NAME_LEN: usize = 64;

/// Names are API keys and file-name safe: letters, digits, `.`, `_`, `-`.
fn check_name(name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ControlError::new(
            ControlErrorKind::Invalid,
            format!(
                "name must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', not starting \
                 with '.' (got {name:?})"
            ),
        ))
    }
}

impl VmmControl {
    /// A control for host `host` on this machine's `/dev/kvm`, `/proc` and `/sys`. Without a
    /// usable KVM the control still works, with the hypervisor reported absent.
    #[must_use]
    pub fn new(host: impl Into<String>) -> Self {
        Self::with_roots(host, "/proc", "/sys", "/dev/kvm")
    }

    /// As [`Self::new`], with injectable roots and device (for hosts without KVM in tests).
    #[must_use]
    pub fn with_roots(
        host: impl Into<String>,
        proc_root: impl Into<PathBuf>,
        sys_root: impl Into<PathBuf>,
        dev_kvm: impl Into<PathBuf>,
    ) -> Self {
        let (proc_root, sys_root, dev_kvm) = (proc_root.into(), sys_root.into(), dev_kvm.into());
        let mut hypervisor = detect_kvm(&sys_root, &dev_kvm);
        let vmm = match &hypervisor {
            KvmStatus::Available { .. } => match Vmm::new() {
                Ok(vmm) => Some(vmm.with_proc_root(&proc_root)),
                Err(e) => {
                    let reason = ControlError::from_error(ControlErrorKind::Unavailable, &e);
                    hypervisor = KvmStatus::Absent {
                        reason: reason.message,
                    };
                    None
                }
            },
            KvmStatus::Absent { .. } => None,
        };
        if let KvmStatus::Absent { reason } = &hypervisor {
            tracing::warn!(%reason, "no usable KVM: this VMM host cannot run VMs");
        }
        Self {
            host: host.into(),
            hypervisor,
            vmm,
            proc_root,
            sys_root,
            vms: RwLock::new(BTreeMap::new()),
        }
    }

    /// The host name this VMM plays.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The hypervisor, as detected at start.
    #[must_use]
    pub fn hypervisor(&self) -> &KvmStatus {
        &self.hypervisor
    }

    fn vmm(&self) -> Result<&Vmm, ControlError> {
        self.vmm.as_ref().ok_or_else(|| {
            let reason = match &self.hypervisor {
                KvmStatus::Absent { reason } => reason.as_str(),
                KvmStatus::Available { .. } => "the VMM did not start",
            };
            ControlError::new(
                ControlErrorKind::Unavailable,
                format!("this host cannot run VMs: {reason}"),
            )
        })
    }

    fn topology(&self) -> Result<HostTopology, ControlError> {
        HostTopology::read(&self.sys_root)
            .map_err(|e| ControlError::from_error(ControlErrorKind::Internal, &e))
    }

    fn vm(&self, name: &str) -> Result<Arc<ManagedVm>, ControlError> {
        self.vms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::not_found(name))
    }

    /// The host: hypervisor, limits, CPUs, nodes.
    #[must_use]
    pub fn host_info(&self) -> HostInfo {
        let topology = HostTopology::read(&self.sys_root).ok();
        HostInfo {
            host: self.host.clone(),
            pid: std::process::id(),
            hypervisor: self.hypervisor.clone(),
            limits: self.vmm.as_ref().and_then(|v| v.limits().ok()),
            cpus: topology
                .as_ref()
                .map(|t| t.online_cpus.clone())
                .unwrap_or_default(),
            nodes: topology
                .map(|t| t.nodes.keys().copied().collect())
                .unwrap_or_default(),
            vms: self
                .vms
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
        }
    }

    /// Every VM, by name.
    #[must_use]
    pub fn list(&self) -> Vec<VmInfo> {
        let vms: Vec<_> = self
            .vms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        vms.iter().map(|vm| info(&vm.handle)).collect()
    }

    /// One VM.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`].
    pub fn get(&self, name: &str) -> Result<VmInfo, ControlError> {
        Ok(info(&self.vm(name)?.handle))
    }

    /// Creates and starts a VM.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::Invalid`] for a bad spec (the message names the field),
    /// [`ControlErrorKind::Conflict`] if the name is taken, [`ControlErrorKind::Unavailable`]
    /// without KVM, [`ControlErrorKind::Internal`] if KVM or the host refuse.
    pub fn create(&self, spec: VmSpec) -> Result<VmInfo, ControlError> {
        check_name(&spec.name)?;
        let vmm = self.vmm()?;
        let name = spec.name.clone();
        // Hold the write lock across creation so two creates of one name cannot race.
        let mut vms = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        if vms.contains_key(&name) {
            return Err(ControlError::new(
                ControlErrorKind::Conflict,
                format!("a VM named {name:?} exists already"),
            ));
        }
        let handle = vmm.launch(spec).map_err(Classify::classify)?;
        let vm = Arc::new(ManagedVm {
            handle,
            stats: Mutex::new(None),
        });
        let out = info(&vm.handle);
        vms.insert(name, vm);
        Ok(out)
    }

    /// Stops a VM and forgets it.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`].
    pub fn delete(&self, name: &str) -> Result<VmInfo, ControlError> {
        let vm = self
            .vms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .ok_or_else(|| ControlError::not_found(name))?;
        vm.handle.stop();
        Ok(info(&vm.handle))
    }

    /// Stops every VM and forgets them (at shutdown).
    pub fn delete_all(&self) {
        let vms = std::mem::take(&mut *self.vms.write().unwrap_or_else(PoisonError::into_inner));
        for vm in vms.values() {
            vm.handle.stop();
        }
    }

    /// Pauses a running VM.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Conflict`] unless it runs.
    pub fn pause(&self, name: &str) -> Result<VmInfo, ControlError> {
        let vm = self.vm(name)?;
        vm.handle.pause().map_err(Classify::classify)?;
        Ok(info(&vm.handle))
    }

    /// Resumes a paused VM.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Conflict`] unless it is paused.
    pub fn resume(&self, name: &str) -> Result<VmInfo, ControlError> {
        let vm = self.vm(name)?;
        vm.handle.resume().map_err(Classify::classify)?;
        Ok(info(&vm.handle))
    }

    /// Sets a VM's load level.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Invalid`] above 100.
    pub fn set_level(&self, name: &str, level: u8) -> Result<VmInfo, ControlError> {
        let vm = self.vm(name)?;
        vm.handle.set_level(level).map_err(Classify::classify)?;
        Ok(info(&vm.handle))
    }

    /// Replaces a VM's workload.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Invalid`] if it does not fit.
    pub fn set_workload(&self, name: &str, workload: Workload) -> Result<VmInfo, ControlError> {
        let vm = self.vm(name)?;
        vm.handle
            .set_workload(workload)
            .map_err(Classify::classify)?;
        Ok(info(&vm.handle))
    }

    /// Replaces a `phased` VM's mix.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Invalid`] for a weight above 100
    /// or a VM that is not phased.
    pub fn set_mix(&self, name: &str, mix: Mix) -> Result<VmInfo, ControlError> {
        let vm = self.vm(name)?;
        vm.handle.set_mix(mix).map_err(Classify::classify)?;
        Ok(info(&vm.handle))
    }

    /// Sets a VM's balloon target.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Invalid`] above the guest's memory.
    pub fn set_balloon(&self, name: &str, target_mib: u32) -> Result<BalloonStatus, ControlError> {
        let vm = self.vm(name)?;
        vm.handle
            .set_balloon(target_mib)
            .map_err(Classify::classify)?;
        Ok(vm.handle.balloon())
    }

    /// A VM's balloon.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`].
    pub fn balloon(&self, name: &str) -> Result<BalloonStatus, ControlError> {
        Ok(self.vm(name)?.handle.balloon())
    }

    /// Everything known about a VM now: VMM exit counts, guest counters, KVM's own stats,
    /// vCPU threads and where guest memory resides.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Internal`] if KVM's stats cannot be
    /// read.
    pub fn stats(&self, name: &str) -> Result<VmStats, ControlError> {
        let vm = self.vm(name)?;
        let mut fds = vm.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let mappings = stats::own_numa_maps(&self.proc_root);
        stats::collect(&vm.handle, &mut fds, &self.proc_root, &mappings)
    }

    /// Stats of every VM, for collectors (one request per host and interval). A VM whose
    /// stats cannot be read is left out and logged.
    #[must_use]
    pub fn stats_all(&self) -> Vec<VmStats> {
        let vms: Vec<_> = self
            .vms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mappings = stats::own_numa_maps(&self.proc_root);
        vms.iter()
            .filter_map(|vm| {
                let mut fds = vm.stats.lock().unwrap_or_else(PoisonError::into_inner);
                stats::collect(&vm.handle, &mut fds, &self.proc_root, &mappings)
                    .inspect_err(|e| {
                        tracing::warn!(vm = %vm.handle.name(), error = %e, "VM stats unreadable");
                    })
                    .ok()
            })
            .collect()
    }

    /// Pins vCPU `vcpu` of a VM to `cpus`.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Invalid`] for a vCPU the VM does
    /// not have or CPUs the host does not offer (named).
    pub fn pin(&self, name: &str, vcpu: u32, cpus: &[u32]) -> Result<VcpuThread, ControlError> {
        let vm = self.vm(name)?;
        let tids = vm.handle.vcpu_tids();
        let tid = *tids.get(vcpu as usize).ok_or_else(|| {
            ControlError::new(
                ControlErrorKind::Invalid,
                format!("vcpu must be below {} for VM {name:?}", tids.len()),
            )
        })?;
        let topology = self.topology()?;
        pin_thread(&topology, tid, cpus).map_err(Classify::classify)?;
        tracing::info!(vm = name, vcpu, ?cpus, "vCPU pinned");
        Ok(stats::vcpu_thread(&self.proc_root, vcpu, tid))
    }

    /// Binds a VM's guest memory to NUMA node `node` and moves the pages already resident.
    ///
    /// # Errors
    ///
    /// [`ControlErrorKind::NotFound`]; [`ControlErrorKind::Invalid`] for a node that cannot
    /// take memory (named); [`ControlErrorKind::Internal`] if the kernel refuses.
    pub fn move_memory(&self, name: &str, node: u32) -> Result<MemoryPlacement, ControlError> {
        let vm = self.vm(name)?;
        let topology = self.topology()?;
        let range = vm.handle.guest_memory();
        bind_memory(&topology, range.addr, range.len, node, true).map_err(Classify::classify)?;
        tracing::info!(vm = name, node, "guest memory bound and moved");
        Ok(stats::memory_placement(&self.proc_root, &vm.handle))
    }
}

impl Drop for VmmControl {
    fn drop(&mut self) {
        self.delete_all();
    }
}

fn info(handle: &VmHandle) -> VmInfo {
    let spec = handle.spec();
    VmInfo {
        id: handle.id(),
        name: spec.name.clone(),
        state: handle.state(),
        spec,
        vcpu_tids: handle.vcpu_tids(),
        balloon: handle.balloon(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["web-1", "db_2.prod", "A"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "sp ace", &"x".repeat(65)] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.kind, ControlErrorKind::Invalid);
            assert!(err.message.starts_with("name must be"), "{}", err.message);
        }
    }

    #[test]
    fn without_kvm_the_host_answers_and_refuses_vms() {
        let dir = tempfile::tempdir().unwrap();
        let control =
            VmmControl::with_roots("h1", dir.path(), dir.path(), dir.path().join("no-such-kvm"));
        let host = control.host_info();
        assert!(matches!(host.hypervisor, KvmStatus::Absent { .. }));
        assert_eq!(host.limits, None);
        assert!(control.list().is_empty());
        let spec: VmSpec = serde_json::from_str(
            r#"{"name":"a","vcpus":1,"mem_mib":16,"workload":{"kind":"cpu"}}"#,
        )
        .unwrap();
        let err = control.create(spec).unwrap_err();
        assert_eq!(err.kind, ControlErrorKind::Unavailable);
        assert!(err.message.contains("no-such-kvm"), "{}", err.message);
        assert_eq!(
            control.stats("a").unwrap_err().kind,
            ControlErrorKind::NotFound
        );
    }
}
