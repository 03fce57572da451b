//! [`VmHandle`]: one running VM as the rest of fleetmind sees it.
//!
//! The handle is `Send + Sync` and every method takes `&self`, so the control API can share it
//! behind an `Arc`. Lifecycle methods return once the change has taken effect (a paused VM's
//! vCPUs are parked when `pause` returns); counters and state can be read at any time without
//! stopping the guest. Dropping the handle stops the VM and joins its threads.

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::balloon::BalloonStatus;
use super::spec::VmSpec;
use super::state::{ExitCounts, FailureReason, Request, VmShared, VmState};
use crate::guest::layout::{self, control, slot};
use crate::guest::{ControlValues, Mix, Workload, WorkloadError};
use crate::vstate::{GuestAccessError, HostRange};

/// How long `pause` waits for the vCPUs to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The guest's own counters (from its slots), per vCPU or summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuestCounters {
    /// Ticks completed (idle: wake-ups).
    pub ticks: u64,
    /// Compute blocks (spin workloads: loop iterations).
    pub cpu_ops: u64,
    /// Workload port writes.
    pub io_ops: u64,
    /// MMIO writes.
    pub mmio_ops: u64,
    /// Working-set pages dirtied.
    pub mem_ops: u64,
}

impl GuestCounters {
    fn add(mut self, other: &Self) -> Self {
        self.ticks += other.ticks;
        self.cpu_ops += other.cpu_ops;
        self.io_ops += other.io_ops;
        self.mmio_ops += other.mmio_ops;
        self.mem_ops += other.mem_ops;
        self
    }
}

/// `start` on a VM that is not freshly created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("only a created VM can start; this one is {state}")]
pub struct StartError {
    /// The VM's state.
    pub state: &'static str,
}

/// `pause` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// Only a running VM can pause.
    #[error("only a running VM can pause; this one is {state}")]
    NotRunning {
        /// The VM's state.
        state: &'static str,
    },
    /// Some vCPU did not park in time.
    #[error("vCPUs did not park within {0:?}")]
    Timeout(Duration),
}

/// `resume` on a VM that is not paused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("only a paused VM can resume; this one is {state}")]
pub struct ResumeError {
    /// The VM's state.
    pub state: &'static str,
}

/// `set_level` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetLevelError {
    /// Above 100.
    #[error("level must be between 0 and 100")]
    Level,
    /// Writing the control page failed (a bug: it is always mapped).
    #[error("writing the control page failed")]
    Control(#[source] GuestAccessError),
}

/// `set_workload` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetWorkloadError {
    /// The workload does not fit the VM.
    #[error("workload is invalid for this VM")]
    Workload(#[source] WorkloadError),
    /// Writing the control page failed.
    #[error("writing the control page failed")]
    Control(#[source] GuestAccessError),
}

/// `set_mix` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetMixError {
    /// Only `phased` workloads have a mix.
    #[error("only a phased workload has a mix; this one is {kind}")]
    NotPhased {
        /// The workload's kind.
        kind: &'static str,
    },
    /// A weight above 100.
    #[error("mix is invalid")]
    Mix(#[source] WorkloadError),
    /// Writing the control page failed.
    #[error("writing the control page failed")]
    Control(#[source] GuestAccessError),
}

/// `set_balloon` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetBalloonError {
    /// More than the guest has above its first MiB.
    #[error("target_mib must be at most {max_mib} for {mem_mib} MiB of guest memory")]
    Target {
        /// The largest valid target.
        max_mib: u32,
        /// The VM's memory.
        mem_mib: u32,
    },
    /// Writing the control page failed.
    #[error("writing the control page failed")]
    Control(#[source] GuestAccessError),
}

impl VmState {
    /// The state's name, as in the JSON form.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Failed { .. } => "failed",
        }
    }
}

/// A VM created by [`super::Vmm::create_vm`].
#[derive(Debug)]
pub struct VmHandle {
    id: u64,
    shared: Arc<VmShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    spec: Mutex<VmSpec>,
    tsc_khz: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VmHandle {
    pub(super) fn new(
        id: u64,
        spec: VmSpec,
        shared: Arc<VmShared>,
        threads: Vec<JoinHandle<()>>,
        tsc_khz: u32,
    ) -> Self {
        Self {
            id,
            shared,
            threads: Mutex::new(threads),
            spec: Mutex::new(spec),
            tsc_khz,
        }
    }

    /// The VM's id, unique within its [`super::Vmm`].
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The VM's name.
    #[must_use]
    pub fn name(&self) -> String {
        lock(&self.spec).name.clone()
    }

    /// The spec as it is now (level and workload reflect later changes).
    #[must_use]
    pub fn spec(&self) -> VmSpec {
        lock(&self.spec).clone()
    }

    /// Number of vCPUs.
    #[must_use]
    pub fn vcpu_count(&self) -> u32 {
        self.shared.vcpus.len() as u32
    }

    /// The guest TSC frequency the compute budgets are based on.
    #[must_use]
    pub fn tsc_khz(&self) -> u32 {
        self.tsc_khz
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> VmState {
        self.shared.state()
    }

    /// Lets the vCPUs run.
    ///
    /// # Errors
    ///
    /// [`StartError`] unless the VM is in the created state.
    pub fn start(&self) -> Result<(), StartError> {
        let mut control = self.shared.lock();
        if control.failure.is_some() || control.request != Request::Hold {
            drop(control);
            return Err(StartError {
                state: self.state().name(),
            });
        }
        self.shared.set_request(&mut control, Request::Run);
        tracing::info!(vm = self.id, "VM started");
        Ok(())
    }

    /// Stops guest execution until [`Self::resume`]; returns once every vCPU has parked, so
    /// guest counters no longer move.
    ///
    /// # Errors
    ///
    /// [`PauseError::NotRunning`] unless the VM runs; [`PauseError::Timeout`] if a vCPU did
    /// not park in time.
    pub fn pause(&self) -> Result<(), PauseError> {
        {
            let mut control = self.shared.lock();
            if control.failure.is_some() || control.request != Request::Run {
                drop(control);
                return Err(PauseError::NotRunning {
                    state: self.state().name(),
                });
            }
            self.shared.set_request(&mut control, Request::Pause);
        }
        let vcpus = self.vcpu_count();
        let parked = self.shared.wait_until(PAUSE_TIMEOUT, |c| {
            c.request != Request::Pause || c.parked + c.exited >= vcpus
        });
        if !parked {
            return Err(PauseError::Timeout(PAUSE_TIMEOUT));
        }
        let state = self.state();
        if state != VmState::Paused {
            // Failed or stopped while the vCPUs were parking.
            return Err(PauseError::NotRunning {
                state: state.name(),
            });
        }
        tracing::info!(vm = self.id, "VM paused");
        Ok(())
    }

    /// Lets a paused VM run again; tick schedules restart, paused time is not caught up.
    ///
    /// # Errors
    ///
    /// [`ResumeError`] unless the VM is paused.
    pub fn resume(&self) -> Result<(), ResumeError> {
        let mut control = self.shared.lock();
        if control.failure.is_some() || control.request != Request::Pause {
            drop(control);
            return Err(ResumeError {
                state: self.state().name(),
            });
        }
        self.shared.set_request(&mut control, Request::Run);
        tracing::info!(vm = self.id, "VM resumed");
        Ok(())
    }

    /// Stops the VM and joins its vCPU threads. Idempotent; a failed VM stays failed.
    pub fn stop(&self) {
        {
            let mut control = self.shared.lock();
            if control.request != Request::Stop {
                self.shared.set_request(&mut control, Request::Stop);
            }
        }
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        let had_threads = !threads.is_empty();
        for (index, thread) in threads.into_iter().enumerate() {
            if thread.join().is_err() {
                self.shared
                    .fail(FailureReason::Panicked { vcpu: index as u32 });
            }
        }
        if had_threads {
            tracing::info!(vm = self.id, state = self.state().name(), "VM stopped");
        }
    }

    fn write_control(&self, values: &ControlValues) -> Result<(), GuestAccessError> {
        let memory = self.shared.vm.memory();
        for (offset, value) in values.u64_fields() {
            memory.write_u64(layout::CONTROL_GPA + offset, value)?;
        }
        for (offset, value) in values.u32_fields() {
            memory.write_u32(layout::CONTROL_GPA + offset, value)?;
        }
        memory
            .atomic_u64(layout::CONTROL_GPA + control::GENERATION)?
            .fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub(super) fn apply(&self, spec: &VmSpec) -> Result<(), GuestAccessError> {
        let values =
            ControlValues::compute(&spec.workload, spec.level, self.vcpu_count(), self.tsc_khz);
        self.write_control(&values)
    }

    /// Sets the load level (0..=100 %); the guest follows from its next tick.
    ///
    /// # Errors
    ///
    /// [`SetLevelError::Level`] above 100.
    pub fn set_level(&self, level: u8) -> Result<(), SetLevelError> {
        if level > 100 {
            return Err(SetLevelError::Level);
        }
        let mut spec = lock(&self.spec);
        spec.level = level;
        self.apply(&spec).map_err(SetLevelError::Control)
    }

    /// Replaces the workload; the guest switches at its next tick, without restarting.
    ///
    /// # Errors
    ///
    /// [`SetWorkloadError::Workload`] if it does not fit the VM.
    pub fn set_workload(&self, workload: Workload) -> Result<(), SetWorkloadError> {
        let mut spec = lock(&self.spec);
        workload
            .validate(spec.mem_mib)
            .map_err(SetWorkloadError::Workload)?;
        spec.workload = workload;
        self.apply(&spec).map_err(SetWorkloadError::Control)
    }

    /// Replaces the mix of a `phased` workload.
    ///
    /// # Errors
    ///
    /// [`SetMixError::NotPhased`] for other workloads, [`SetMixError::Mix`] for weights above
    /// 100.
    pub fn set_mix(&self, new_mix: Mix) -> Result<(), SetMixError> {
        new_mix.validate().map_err(SetMixError::Mix)?;
        let mut spec = lock(&self.spec);
        let kind = spec.workload.kind();
        match &mut spec.workload {
            Workload::Phased { mix, .. } => *mix = new_mix,
            _ => return Err(SetMixError::NotPhased { kind }),
        }
        self.apply(&spec).map_err(SetMixError::Control)
    }

    /// Asks the guest to hold `target_mib` in its balloon. The guest moves towards it by up to
    /// 2 MiB per tick (200 MiB/s), taking only memory above its working set; the pages it gives
    /// up leave the VMM process's resident memory. 0 deflates fully.
    ///
    /// # Errors
    ///
    /// [`SetBalloonError::Target`] above the guest's memory less its first MiB.
    pub fn set_balloon(&self, target_mib: u32) -> Result<(), SetBalloonError> {
        let mem_mib = lock(&self.spec).mem_mib;
        let max_mib = mem_mib.saturating_sub((layout::WORKING_SET_GPA >> 20) as u32);
        if target_mib > max_mib {
            return Err(SetBalloonError::Target { max_mib, mem_mib });
        }
        let memory = self.shared.vm.memory();
        let mut balloon = self.shared.balloon();
        balloon.set_target(target_mib);
        let pages = (u64::from(target_mib) << 20) / layout::PAGE_SIZE;
        memory
            .write_u64(layout::CONTROL_GPA + control::BALLOON_TARGET_PAGES, pages)
            .map_err(SetBalloonError::Control)?;
        tracing::info!(vm = self.id, target_mib, "balloon target set");
        Ok(())
    }

    /// The balloon's target, what it holds, and the guest's free memory.
    #[must_use]
    pub fn balloon(&self) -> BalloonStatus {
        self.shared.balloon().status(self.shared.vm.memory())
    }

    /// Kernel thread id of each vCPU thread, by vCPU index.
    #[must_use]
    pub fn vcpu_tids(&self) -> Vec<i32> {
        self.shared
            .vcpus
            .iter()
            .map(|v| v.tid.load(Ordering::Acquire))
            .collect()
    }

    /// Exits to userspace of each vCPU, by reason.
    #[must_use]
    pub fn vcpu_exit_counts(&self) -> Vec<ExitCounts> {
        self.shared
            .vcpus
            .iter()
            .map(|v| v.exits.snapshot())
            .collect()
    }

    /// Exits to userspace of the whole VM, by reason.
    #[must_use]
    pub fn exit_counts(&self) -> ExitCounts {
        ExitCounts::sum(&self.vcpu_exit_counts())
    }

    /// The guest's counters of each vCPU.
    ///
    /// # Panics
    ///
    /// Never: the slots lie inside guest memory for every valid spec.
    #[must_use]
    pub fn vcpu_guest_counters(&self) -> Vec<GuestCounters> {
        let memory = self.shared.vm.memory();
        (0..self.vcpu_count())
            .map(|i| {
                let field = |offset| {
                    memory
                        .read_u64(layout::slot_gpa(i) + offset)
                        .expect("vCPU slots lie inside guest memory")
                };
                GuestCounters {
                    ticks: field(slot::TICKS),
                    cpu_ops: field(slot::CPU_OPS),
                    io_ops: field(slot::IO_OPS),
                    mmio_ops: field(slot::MMIO_OPS),
                    mem_ops: field(slot::MEM_OPS),
                }
            })
            .collect()
    }

    /// The guest's counters summed over vCPUs.
    #[must_use]
    pub fn guest_counters(&self) -> GuestCounters {
        self.vcpu_guest_counters()
            .iter()
            .fold(GuestCounters::default(), |acc, c| acc.add(c))
    }

    /// The VM fd (for `KVM_GET_STATS_FD`), valid while the handle lives.
    #[must_use]
    pub fn vm_fd(&self) -> BorrowedFd<'_> {
        self.shared.vm.fd()
    }

    /// A fd of each vCPU (for `KVM_GET_STATS_FD`), valid while the handle lives.
    #[must_use]
    pub fn vcpu_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.shared.vcpus.iter().map(|v| v.kicker.fd()).collect()
    }

    /// The host address range backing guest memory (for `madvise`/`mbind`).
    #[must_use]
    pub fn guest_memory(&self) -> HostRange {
        self.shared.vm.memory().host_range()
    }

    /// Reads guest-physical memory.
    ///
    /// # Errors
    ///
    /// [`GuestAccessError`] if the range is outside guest memory.
    pub fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        self.shared.vm.memory().read(gpa, buf)
    }

    /// Writes guest-physical memory.
    ///
    /// # Errors
    ///
    /// [`GuestAccessError`] if the range is outside guest memory.
    pub fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), GuestAccessError> {
        self.shared.vm.memory().write(gpa, data)
    }

    /// When `create_vm` was called.
    #[must_use]
    pub fn created_at(&self) -> Instant {
        self.shared.created_at
    }

    /// When the first vCPU executed its first instruction, if it has.
    #[must_use]
    pub fn first_instruction_at(&self) -> Option<Instant> {
        self.shared.first_instruction.get().copied()
    }

    /// Time from the start of `create_vm` to the guest's first instruction, if it has run.
    #[must_use]
    pub fn create_to_first_instruction(&self) -> Option<Duration> {
        self.first_instruction_at()
            .map(|t| t.duration_since(self.shared.created_at))
    }

    /// When an `io_burst` workload reported its burst done, if it has.
    #[must_use]
    pub fn burst_done_at(&self) -> Option<Instant> {
        self.shared.burst_done.get().copied()
    }

    /// Waits until every vCPU thread has started and recorded its tid.
    pub(super) fn wait_ready(&self, timeout: Duration) -> bool {
        let vcpus = self.vcpu_count();
        self.shared
            .wait_until(timeout, |c| c.ready + c.exited >= vcpus)
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
