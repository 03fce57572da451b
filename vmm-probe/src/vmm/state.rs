//! State shared between a VM's handle and its vCPU threads: the lifecycle request, counters,
//! timestamps, and the failure that ended the VM.
//!
//! One mutex and condition variable per VM carry every transition (start, pause, resume, stop,
//! failure) and every interruptible sleep, so a request always wakes a sleeping vCPU; the
//! request is mirrored in an atomic for the vCPU threads' fast path between exits.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::balloon::BalloonState;
use crate::vstate::{VcpuKicker, Vm};

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VmState {
    /// Built; vCPU threads wait for [`super::VmHandle::start`].
    Created,
    /// vCPUs run.
    Running,
    /// vCPUs are parked; guest time does not advance.
    Paused,
    /// Stopped on request.
    Stopped,
    /// The guest or KVM failed; the VM is stopped.
    Failed {
        /// What happened.
        reason: FailureReason,
    },
}

/// Why a VM failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureReason {
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    #[error("vCPU {vcpu}: triple fault (KVM_EXIT_SHUTDOWN)")]
    Shutdown {
        /// The vCPU.
        vcpu: u32,
    },
    /// `KVM_EXIT_INTERNAL_ERROR`.
    #[error("vCPU {vcpu}: KVM internal error, suberror {suberror}")]
    InternalError {
        /// The vCPU.
        vcpu: u32,
        /// `kvm_run.internal.suberror` (1: emulation failure).
        suberror: u32,
    },
    /// `KVM_EXIT_FAIL_ENTRY`.
    #[error("vCPU {vcpu}: VM entry failed, hardware reason {hardware_reason:#x}")]
    FailEntry {
        /// The vCPU.
        vcpu: u32,
        /// `hardware_entry_failure_reason`.
        hardware_reason: u64,
    },
    /// An exit this VMM does not handle.
    #[error("vCPU {vcpu}: unexpected exit {exit}")]
    UnexpectedExit {
        /// The vCPU.
        vcpu: u32,
        /// The exit, as kvm-ioctls prints it.
        exit: String,
    },
    /// The guest's IDT stub reported an exception.
    #[error(
        "vCPU {vcpu}: guest exception {name} (vector {vector}) at rip {rip:#x}, error code \
         {error_code:#x}, cr2 {cr2:#x}",
        name = exception_name(.vector)
    )]
    GuestException {
        /// The vCPU.
        vcpu: u32,
        /// The exception vector (6 = #UD, 13 = #GP, 14 = #PF, ...).
        vector: u64,
        /// The error code (0 where the CPU pushes none).
        error_code: u64,
        /// The faulting instruction.
        rip: u64,
        /// CR2 at the time (the faulting address of a #PF).
        cr2: u64,
    },
    /// `KVM_RUN` returned an error other than `EINTR`/`EAGAIN`.
    #[error("vCPU {vcpu}: KVM_RUN failed with errno {errno}")]
    RunFailed {
        /// The vCPU.
        vcpu: u32,
        /// The errno.
        errno: i32,
    },
    /// The vCPU thread panicked (a bug in the VMM).
    #[error("vCPU {vcpu}: thread panicked")]
    Panicked {
        /// The vCPU.
        vcpu: u32,
    },
}

/// The mnemonic of an x86 exception vector.
fn exception_name(vector: &u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "reserved", "reserved",
        "reserved", "reserved", "reserved", "reserved", "#HV", "#VC", "#SX", "reserved",
    ];
    usize::try_from(*vector)
        .ok()
        .and_then(|v| NAMES.get(v))
        .copied()
        .unwrap_or("unknown")
}

/// Exits to userspace of one vCPU or a VM, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    /// `KVM_EXIT_IO`, port reads.
    pub io_in: u64,
    /// `KVM_EXIT_IO`, port writes (workload and guest-ABI ports alike).
    pub io_out: u64,
    /// `KVM_EXIT_MMIO`, reads.
    pub mmio_read: u64,
    /// `KVM_EXIT_MMIO`, writes.
    pub mmio_write: u64,
    /// `KVM_EXIT_HLT`.
    pub hlt: u64,
    /// `KVM_EXIT_SHUTDOWN`.
    pub shutdown: u64,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    pub internal_error: u64,
    /// Anything else (including `KVM_EXIT_FAIL_ENTRY`).
    pub other: u64,
}

impl ExitCounts {
    /// All exits.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.io_in
            + self.io_out
            + self.mmio_read
            + self.mmio_write
            + self.hlt
            + self.shutdown
            + self.internal_error
            + self.other
    }

    fn add(mut self, other: &Self) -> Self {
        self.io_in += other.io_in;
        self.io_out += other.io_out;
        self.mmio_read += other.mmio_read;
        self.mmio_write += other.mmio_write;
        self.hlt += other.hlt;
        self.shutdown += other.shutdown;
        self.internal_error += other.internal_error;
        self.other += other.other;
        self
    }

    /// Sum of per-vCPU counts.
    #[must_use]
    pub fn sum<'a>(counts: impl IntoIterator<Item = &'a Self>) -> Self {
        counts
            .into_iter()
            .fold(Self::default(), |acc, c| acc.add(c))
    }
}

/// The reasons [`ExitCounters`] tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    Shutdown,
    InternalError,
    Other,
}

/// Live exit counters of one vCPU, readable at any time.
#[derive(Debug, Default)]
pub(super) struct ExitCounters([AtomicU64; 8]);

impl ExitCounters {
    pub(super) fn bump(&self, kind: ExitKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ExitCounts {
        let v = |k: ExitKind| self.0[k as usize].load(Ordering::Relaxed);
        ExitCounts {
            io_in: v(ExitKind::IoIn),
            io_out: v(ExitKind::IoOut),
            mmio_read: v(ExitKind::MmioRead),
            mmio_write: v(ExitKind::MmioWrite),
            hlt: v(ExitKind::Hlt),
            shutdown: v(ExitKind::Shutdown),
            internal_error: v(ExitKind::InternalError),
            other: v(ExitKind::Other),
        }
    }
}

/// What the lifecycle asks of the vCPU threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Request {
    /// Created, not started: wait.
    Hold = 0,
    Run = 1,
    Pause = 2,
    Stop = 3,
}

impl Request {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Hold,
            1 => Self::Run,
            2 => Self::Pause,
            _ => Self::Stop,
        }
    }
}

/// Lifecycle bookkeeping, under [`VmShared::control`].
#[derive(Debug)]
pub(super) struct Control {
    pub(super) request: Request,
    /// vCPU threads waiting in [`VmShared::park`].
    pub(super) parked: u32,
    /// vCPU threads that have started (recorded their tid).
    pub(super) ready: u32,
    /// vCPU threads that have left their loop.
    pub(super) exited: u32,
    pub(super) failure: Option<FailureReason>,
}

/// Per-vCPU state visible to the handle.
#[derive(Debug)]
pub(super) struct VcpuShared {
    pub(super) tid: AtomicI32,
    pub(super) exits: ExitCounters,
    pub(super) kicker: VcpuKicker,
}

/// Everything a VM's handle and vCPU threads share. Field order matters: the kickers' vCPU fds
/// close before the VM and its memory.
#[derive(Debug)]
pub(super) struct VmShared {
    pub(super) vcpus: Vec<VcpuShared>,
    pub(super) vm: Vm,
    control: Mutex<Control>,
    changed: Condvar,
    request: AtomicU8,
    pub(super) created_at: Instant,
    pub(super) first_instruction: OnceLock<Instant>,
    pub(super) burst_done: OnceLock<Instant>,
    pub(super) balloon: Mutex<BalloonState>,
}

impl VmShared {
    pub(super) fn new(vm: Vm, vcpus: Vec<VcpuShared>, created_at: Instant) -> Self {
        Self {
            vcpus,
            vm,
            control: Mutex::new(Control {
                request: Request::Hold,
                parked: 0,
                ready: 0,
                exited: 0,
                failure: None,
            }),
            changed: Condvar::new(),
            request: AtomicU8::new(Request::Hold as u8),
            created_at,
            first_instruction: OnceLock::new(),
            burst_done: OnceLock::new(),
            balloon: Mutex::new(BalloonState::default()),
        }
    }

    pub(super) fn balloon(&self) -> MutexGuard<'_, BalloonState> {
        self.balloon.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current request, without locking.
    pub(super) fn request(&self) -> Request {
        Request::from_u8(self.request.load(Ordering::Acquire))
    }

    /// Sets the request (under the lock), wakes every waiter and kicks every vCPU out of
    /// `KVM_RUN` when it is no longer to run.
    pub(super) fn set_request(&self, control: &mut Control, request: Request) {
        control.request = request;
        self.request.store(request as u8, Ordering::Release);
        self.changed.notify_all();
        if request != Request::Run {
            for vcpu in &self.vcpus {
                vcpu.kicker.kick();
            }
        }
    }

    /// Records `reason` (the first failure wins) and stops every vCPU.
    pub(super) fn fail(&self, reason: FailureReason) {
        let mut control = self.lock();
        if control.failure.is_none() {
            tracing::error!(reason = %reason, "VM failed");
            control.failure = Some(reason);
        }
        self.set_request(&mut control, Request::Stop);
    }

    /// The state as the handle reports it.
    pub(super) fn state(&self) -> VmState {
        let control = self.lock();
        if let Some(reason) = &control.failure {
            return VmState::Failed {
                reason: reason.clone(),
            };
        }
        match control.request {
            Request::Hold => VmState::Created,
            Request::Run => VmState::Running,
            Request::Pause => VmState::Paused,
            Request::Stop => VmState::Stopped,
        }
    }

    /// A vCPU thread has started.
    pub(super) fn mark_ready(&self) {
        let mut control = self.lock();
        control.ready += 1;
        self.changed.notify_all();
    }

    /// A vCPU thread has left its loop.
    pub(super) fn mark_exited(&self) {
        let mut control = self.lock();
        control.exited += 1;
        self.changed.notify_all();
    }

    /// Blocks the calling vCPU thread while the VM is held or paused. Returns the request that
    /// released it: `Run` or `Stop`.
    pub(super) fn park(&self) -> Request {
        let mut control = self.lock();
        control.parked += 1;
        self.changed.notify_all();
        while matches!(control.request, Request::Hold | Request::Pause) {
            control = self
                .changed
                .wait(control)
                .unwrap_or_else(PoisonError::into_inner);
        }
        control.parked -= 1;
        control.request
    }

    /// Sleeps until `deadline` unless the VM stops running first. Returns whether the sleep ran
    /// to its end.
    pub(super) fn sleep_until(&self, deadline: Instant) -> bool {
        let mut control = self.lock();
        loop {
            if control.request != Request::Run {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            control = self
                .changed
                .wait_timeout(control, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until `done(control)` holds or `timeout` passes; returns whether it held.
    pub(super) fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Control) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut control = self.lock();
        loop {
            if done(&control) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            control = self
                .changed
                .wait_timeout(control, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_counts_sum_and_total() {
        let counters = ExitCounters::default();
        counters.bump(ExitKind::IoOut);
        counters.bump(ExitKind::IoOut);
        counters.bump(ExitKind::Hlt);
        let one = counters.snapshot();
        assert_eq!((one.io_out, one.hlt, one.total()), (2, 1, 3));
        let both = ExitCounts::sum([&one, &one]);
        assert_eq!((both.io_out, both.total()), (4, 6));
    }

    #[test]
    fn failure_reasons_read_well_and_serialise() {
        let r = FailureReason::GuestException {
            vcpu: 0,
            vector: 6,
            error_code: 0,
            rip: 0xA0123,
            cr2: 0,
        };
        assert_eq!(
            r.to_string(),
            "vCPU 0: guest exception #UD (vector 6) at rip 0xa0123, error code 0x0, cr2 0x0"
        );
        let state = VmState::Failed {
            reason: FailureReason::Shutdown { vcpu: 1 },
        };
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"state":"failed","reason":{"kind":"shutdown","vcpu":1}}"#
        );
    }
}
