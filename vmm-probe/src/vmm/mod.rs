//! The VMM's lifecycle API: create VMs from a [`VmSpec`], run, pause, resume and stop them,
//! change their load while they run, and read what they did.
//!
//! This is what the rest of fleetmind (the control API, scenarios, benchmarks) uses; it builds
//! on [`crate::vstate`] for the KVM file descriptors and [`crate::guest`] for the guest
//! program and its ABI. A [`Vmm`] holds the `/dev/kvm` handle and the assembled guest program;
//! it keeps no registry of VMs and nothing here is process-global except the vCPU kick signal
//! handler, so several `Vmm`s per process and several VMM processes per host coexist.
//!
//! ```no_run
//! use fleetmind_vmm_probe::vmm::{Vmm, VmSpec};
//! use fleetmind_vmm_probe::guest::Workload;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vmm = Vmm::new()?;
//! let vm = vmm.launch(VmSpec {
//!     name: "web-1".into(),
//!     vcpus: 1,
//!     mem_mib: 16,
//!     workload: Workload::Io { rate_per_s: 2000 },
//!     level: 100,
//! })?;
//! vm.set_level(30)?;
//! println!("{:?} {:?}", vm.state(), vm.exit_counts());
//! vm.stop();
//! # Ok(()) }
//! ```

mod balloon;
mod handle;
mod runner;
mod spec;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use balloon::BalloonStatus;
pub use handle::{
    GuestCounters, PauseError, ResumeError, SetBalloonError, SetLevelError, SetMixError,
    SetWorkloadError, StartError, VmHandle,
};
pub use spec::{Limits, VmSpec, VmSpecError, mem_available_mib, parse_mem_available_mib};
pub use state::{ExitCounts, FailureReason, VmState};

use self::runner::VcpuRunner;
use self::state::{ExitCounters, VcpuShared, VmShared};
use crate::flavour::KvmFlavour;
use crate::guest::layout::{self, control};
use crate::guest::program::{self, BuildProgramError, Program};
use crate::guest::tables;
use crate::vstate::kvm::OpenKvmError;
use crate::vstate::memory::MapMemoryError;
use crate::vstate::vcpu::{
    ConfigureVcpuError, CreateKickerError, InstallKickHandlerError, install_kick_handler,
};
use crate::vstate::vm::{CreateVcpuError, SetupVmError};
use crate::vstate::{GuestAccessError, GuestMemory, KvmContext, VcpuKicker, Vm};

/// How long `create_vm` waits for the vCPU threads to start.
const THREAD_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The VMM: a `/dev/kvm` handle and the guest program, from which VMs are made.
#[derive(Debug)]
pub struct Vmm {
    kvm: KvmContext,
    program: Program,
    proc_root: PathBuf,
    next_id: AtomicU64,
}

/// The VMM could not start.
#[derive(Debug, thiserror::Error)]
pub enum NewVmmError {
    /// No usable KVM.
    #[error("opening KVM failed")]
    Kvm(#[source] OpenKvmError),
    /// The vCPU kick signal handler could not be installed.
    #[error("installing the vCPU kick handler failed")]
    KickHandler(#[source] InstallKickHandlerError),
    /// The guest program did not assemble (a bug).
    #[error("building the guest program failed")]
    Program(#[source] BuildProgramError),
}

/// A VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateVmError {
    /// The spec is invalid; the source names the field.
    #[error("invalid VM spec")]
    Spec(#[source] VmSpecError),
    /// The host's available memory could not be read.
    #[error("reading the host's available memory failed")]
    MemAvailable(#[source] std::io::Error),
    /// Guest memory could not be mapped.
    #[error("mapping guest memory failed")]
    Memory(#[source] MapMemoryError),
    /// KVM refused the VM.
    #[error("creating the KVM VM failed")]
    Vm(#[source] SetupVmError),
    /// Writing the tables or program failed (a layout bug).
    #[error("loading the guest failed")]
    Load(#[source] GuestAccessError),
    /// KVM refused a vCPU.
    #[error("creating a vCPU failed")]
    Vcpu(#[source] CreateVcpuError),
    /// A vCPU's initial state was refused.
    #[error("configuring vCPU {vcpu} failed")]
    Configure {
        /// The vCPU.
        vcpu: u32,
        /// Why.
        #[source]
        source: ConfigureVcpuError,
    },
    /// A vCPU's kicker could not be made.
    #[error("preparing vCPU {vcpu} for kicks failed")]
    Kicker {
        /// The vCPU.
        vcpu: u32,
        /// Why.
        #[source]
        source: CreateKickerError,
    },
    /// A vCPU thread could not be spawned.
    #[error("spawning a vCPU thread failed")]
    Spawn(#[source] std::io::Error),
    /// The vCPU threads did not start in time.
    #[error("vCPU threads did not start within {0:?}")]
    ThreadStart(Duration),
}

impl Vmm {
    /// Opens `/dev/kvm`, installs the vCPU kick handler and assembles the guest program.
    ///
    /// # Errors
    ///
    /// [`NewVmmError`] if KVM is unusable.
    pub fn new() -> Result<Self, NewVmmError> {
        install_kick_handler().map_err(NewVmmError::KickHandler)?;
        let kvm = KvmContext::new().map_err(NewVmmError::Kvm)?;
        let program = program::build().map_err(NewVmmError::Program)?;
        tracing::info!(flavour = ?kvm.flavour(), max_vcpus = kvm.max_vcpus(), "VMM ready");
        Ok(Self {
            kvm,
            program,
            proc_root: PathBuf::from("/proc"),
            next_id: AtomicU64::new(1),
        })
    }

    /// Reads the host's available memory under `proc_root` instead of `/proc` (for fixtures).
    #[must_use]
    pub fn with_proc_root(mut self, proc_root: impl Into<PathBuf>) -> Self {
        self.proc_root = proc_root.into();
        self
    }

    /// The KVM flavour of this host.
    #[must_use]
    pub fn flavour(&self) -> KvmFlavour {
        self.kvm.flavour()
    }

    /// What a VM may have on this host right now.
    ///
    /// # Errors
    ///
    /// An I/O error if `/proc/meminfo` cannot be read.
    pub fn limits(&self) -> std::io::Result<Limits> {
        Ok(Limits::new(
            self.kvm.max_vcpus(),
            mem_available_mib(&self.proc_root)?,
        ))
    }

    /// Creates a VM: guest memory, tables, program, vCPUs and their threads, which wait for
    /// [`VmHandle::start`].
    ///
    /// # Errors
    ///
    /// [`CreateVmError::Spec`] for an invalid spec (the source names the field); other
    /// variants if the host or KVM refuse.
    pub fn create_vm(&self, spec: VmSpec) -> Result<VmHandle, CreateVmError> {
        let created_at = Instant::now();
        let limits = self.limits().map_err(CreateVmError::MemAvailable)?;
        spec.validate(&limits).map_err(CreateVmError::Spec)?;
        let mem_bytes = u64::from(spec.mem_mib) << 20;
        let memory = GuestMemory::new(mem_bytes as usize).map_err(CreateVmError::Memory)?;
        let vm = Vm::new(&self.kvm, memory).map_err(CreateVmError::Vm)?;
        self.load(&vm, spec.vcpus, mem_bytes)
            .map_err(CreateVmError::Load)?;

        let mut vcpus = Vec::with_capacity(spec.vcpus as usize);
        let mut shared_vcpus = Vec::with_capacity(spec.vcpus as usize);
        for index in 0..spec.vcpus {
            let vcpu = vm.create_vcpu(index).map_err(CreateVmError::Vcpu)?;
            let boot = tables::boot_registers(index, spec.vcpus, self.program.entry);
            vcpu.configure(self.kvm.supported_cpuid(), &boot)
                .map_err(|source| CreateVmError::Configure {
                    vcpu: index,
                    source,
                })?;
            let kicker = VcpuKicker::new(&vm, &vcpu).map_err(|source| CreateVmError::Kicker {
                vcpu: index,
                source,
            })?;
            shared_vcpus.push(VcpuShared {
                tid: AtomicI32::new(0),
                exits: ExitCounters::default(),
                kicker,
            });
            vcpus.push(vcpu);
        }
        let tsc_khz = vcpus
            .first()
            .and_then(|v| v.tsc_khz())
            .unwrap_or_else(crate::vstate::kvm::host_tsc_khz);

        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(VmShared::new(vm, shared_vcpus, created_at));
        let mut threads = Vec::with_capacity(vcpus.len());
        let mut spawn_error = None;
        for vcpu in vcpus {
            let runner = VcpuRunner::new(vcpu, Arc::clone(&shared));
            let name = format!("fm-vm{id}-vcpu{}", threads.len());
            match std::thread::Builder::new()
                .name(name)
                .stack_size(256 * 1024)
                .spawn(move || runner.run())
            {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        // From here on the handle owns the threads: on any error, dropping it stops them.
        let handle = VmHandle::new(id, spec.clone(), shared, threads, tsc_khz);
        if let Some(e) = spawn_error {
            return Err(CreateVmError::Spawn(e));
        }
        handle.apply(&spec).map_err(CreateVmError::Load)?;
        if !handle.wait_ready(THREAD_START_TIMEOUT) {
            return Err(CreateVmError::ThreadStart(THREAD_START_TIMEOUT));
        }
        tracing::info!(
            vm = id,
            name = %spec.name,
            vcpus = spec.vcpus,
            mem_mib = spec.mem_mib,
            workload = spec.workload.kind(),
            "VM created"
        );
        Ok(handle)
    }

    /// [`Self::create_vm`] then [`VmHandle::start`].
    ///
    /// # Errors
    ///
    /// As [`Self::create_vm`].
    ///
    /// # Panics
    ///
    /// Never: a VM fresh from `create_vm` can always start.
    pub fn launch(&self, spec: VmSpec) -> Result<VmHandle, CreateVmError> {
        let vm = self.create_vm(spec)?;
        vm.start()
            .expect("a VM fresh from create_vm is in the created state");
        Ok(vm)
    }

    /// Writes the system tables, the program and the control page's fixed fields.
    fn load(&self, vm: &Vm, vcpus: u32, mem_bytes: u64) -> Result<(), GuestAccessError> {
        let memory = vm.memory();
        for chunk in tables::system_tables(vcpus, mem_bytes, &self.program.handlers) {
            memory.write(chunk.gpa, &chunk.bytes)?;
        }
        memory.write(layout::CODE_GPA, &self.program.code)?;
        let c = layout::CONTROL_GPA;
        memory.write_u64(c + control::MAGIC, layout::CONTROL_MAGIC)?;
        memory.write_u32(c + control::ABI_VERSION, layout::ABI_VERSION)?;
        memory.write_u32(c + control::VCPUS, vcpus)?;
        memory.write_u64(c + control::MMIO_GPA, layout::mmio_gpa(mem_bytes))?;
        memory.write_u64(c + control::WS_BASE, layout::WORKING_SET_GPA)?;
        memory.write_u64(c + control::MEM_BYTES, mem_bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<VmHandle>();
        shareable::<Vmm>();
    }
}
