//! A vCPU file descriptor: initial register state, `KVM_RUN`, and the kick that gets a vCPU
//! thread out of `KVM_RUN`.
//!
//! The kick is the standard one (Firecracker's): set `immediate_exit` in the vCPU's `kvm_run`
//! page, then send the vCPU thread a real-time signal whose handler does nothing. A thread in
//! `KVM_RUN` returns `EINTR`; a thread about to enter it returns at once because of
//! `immediate_exit`. The handler is installed once per process: a signal disposition is
//! process-wide by nature.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{Ordering, fence};
use std::sync::{Mutex, OnceLock, PoisonError};

use kvm_bindings::{CpuId, kvm_dtable, kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use super::vm::Vm;

/// A segment register's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (descriptor limit with granularity applied).
    pub limit: u32,
    /// Type field (e.g. 0xB execute/read accessed code, 0x3 read/write accessed data, 0xB busy
    /// 64-bit TSS).
    pub type_: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// 64-bit code segment.
    pub long: bool,
    /// System segment (TSS) rather than code or data.
    pub system: bool,
}

/// A GDTR or IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorTable {
    /// Base address.
    pub base: u64,
    /// Limit (size - 1).
    pub limit: u16,
}

/// The state a vCPU starts in: 64-bit mode, paging on, at `rip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootRegisters {
    /// Entry point.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// First argument.
    pub rdi: u64,
    /// Second argument.
    pub rsi: u64,
    /// Code segment.
    pub cs: Segment,
    /// Data segment, also loaded into ES, FS, GS and SS.
    pub ds: Segment,
    /// Task register.
    pub tr: Segment,
    /// GDTR.
    pub gdt: DescriptorTable,
    /// IDTR.
    pub idt: DescriptorTable,
    /// Page-table root.
    pub cr3: u64,
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

impl Segment {
    fn to_kvm(self) -> kvm_segment {
        kvm_segment {
            base: self.base,
            limit: self.limit,
            selector: self.selector,
            type_: self.type_,
            present: 1,
            dpl: self.dpl,
            db: u8::from(!self.long && !self.system),
            s: u8::from(!self.system),
            l: u8::from(self.long),
            g: u8::from(!self.system),
            avl: 0,
            unusable: 0,
            padding: 0,
        }
    }
}

/// One vCPU of a [`Vm`].
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
}

/// Loading a vCPU's initial state failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureVcpuError {
    /// `KVM_SET_CPUID2`.
    #[error("KVM_SET_CPUID2 failed")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SREGS` or `KVM_SET_SREGS`.
    #[error("setting the special registers failed")]
    Sregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_REGS`.
    #[error("setting the general registers failed")]
    Regs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_FPU`.
    #[error("setting the FPU state failed")]
    Fpu(#[source] kvm_ioctls::Error),
}

impl Vcpu {
    pub(super) fn new(fd: VcpuFd, index: u32) -> Self {
        Self { fd, index }
    }

    /// The vCPU's index in its VM.
    #[must_use]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Gives the vCPU `cpuid` and the long-mode state `boot`.
    ///
    /// # Errors
    ///
    /// [`ConfigureVcpuError`] naming the ioctl KVM refused.
    pub fn configure(&self, cpuid: &CpuId, boot: &BootRegisters) -> Result<(), ConfigureVcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(ConfigureVcpuError::Cpuid)?;
        let mut sregs = self.fd.get_sregs().map_err(ConfigureVcpuError::Sregs)?;
        sregs.cs = boot.cs.to_kvm();
        let data = boot.ds.to_kvm();
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = boot.tr.to_kvm();
        sregs.gdt = kvm_dtable {
            base: boot.gdt.base,
            limit: boot.gdt.limit,
            padding: [0; 3],
        };
        sregs.idt = kvm_dtable {
            base: boot.idt.base,
            limit: boot.idt.limit,
            padding: [0; 3],
        };
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
        sregs.cr3 = boot.cr3;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.efer = EFER_SCE | EFER_LME | EFER_LMA;
        self.fd
            .set_sregs(&sregs)
            .map_err(ConfigureVcpuError::Sregs)?;
        let regs = kvm_regs {
            rip: boot.rip,
            rsp: boot.rsp,
            rdi: boot.rdi,
            rsi: boot.rsi,
            rflags: 0x2,
            ..kvm_regs::default()
        };
        self.fd.set_regs(&regs).map_err(ConfigureVcpuError::Regs)?;
        let fpu = kvm_fpu {
            fcw: 0x37F,
            mxcsr: 0x1F80,
            ..kvm_fpu::default()
        };
        self.fd.set_fpu(&fpu).map_err(ConfigureVcpuError::Fpu)?;
        Ok(())
    }

    /// The guest TSC frequency (`KVM_GET_TSC_KHZ`), if KVM reports one.
    #[must_use]
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|khz| *khz > 0)
    }

    /// Runs the vCPU until the next exit to userspace (`KVM_RUN`).
    ///
    /// # Errors
    ///
    /// The `KVM_RUN` errno; `EINTR` means the vCPU was kicked.
    pub fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        self.fd.run()
    }

    /// `kvm_run.internal.suberror` after a `KVM_EXIT_INTERNAL_ERROR` (1 = emulation failure).
    pub fn internal_error_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            return 0;
        }
        // SAFETY: the exit reason says the `internal` member of the union is the valid one.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// Clears `immediate_exit` after a kick has been handled.
    pub fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// The vCPU file descriptor.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is open for as long as `self.fd` lives, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) }
    }
}

/// The signal that kicks vCPU threads.
#[must_use]
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // Nothing to do: the signal only interrupts KVM_RUN. The fence makes the kicker's write of
    // immediate_exit visible before the vCPU thread re-enters.
    fence(Ordering::Acquire);
}

/// Installing the kick signal handler failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("installing the vCPU kick signal handler failed: errno {errno}")]
pub struct InstallKickHandlerError {
    /// The `sigaction` errno.
    pub errno: i32,
}

/// Installs the no-op handler of [`kick_signal`] (once per process; later calls return the
/// first result).
///
/// # Errors
///
/// [`InstallKickHandlerError`] if `sigaction` failed.
pub fn install_kick_handler() -> Result<(), InstallKickHandlerError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), handle_kick).map_err(|e| e.errno()))
        .map_err(|errno| InstallKickHandlerError { errno })
}

/// What the kicker needs from the vCPU thread, under one lock so that a thread that has exited
/// is never signalled.
#[derive(Debug)]
struct KickTarget {
    fd: VcpuFd,
    thread: Option<libc::pthread_t>,
}

/// Kicks one vCPU out of `KVM_RUN` from any thread. Holds a second handle to the vCPU (a
/// duplicate fd, mapping the same `kvm_run` page).
#[derive(Debug)]
pub struct VcpuKicker {
    target: Mutex<KickTarget>,
    raw_fd: RawFd,
}

/// The kicker's duplicate vCPU handle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateKickerError {
    /// `dup` of the vCPU fd failed.
    #[error("duplicating the vCPU fd failed")]
    Dup(#[source] std::io::Error),
    /// Mapping the duplicate's `kvm_run` failed.
    #[error("mapping kvm_run for the duplicate vCPU fd failed")]
    Map(#[source] kvm_ioctls::Error),
}

impl VcpuKicker {
    /// A kicker for `vcpu` of `vm`.
    ///
    /// # Errors
    ///
    /// [`CreateKickerError`] if the fd cannot be duplicated or its `kvm_run` mapped.
    pub fn new(vm: &Vm, vcpu: &Vcpu) -> Result<Self, CreateKickerError> {
        // SAFETY: dup of an fd we own; the result is checked.
        let dup = unsafe { libc::dup(vcpu.fd.as_raw_fd()) };
        if dup < 0 {
            return Err(CreateKickerError::Dup(std::io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a valid, open vCPU fd that nothing else owns; kvm-ioctls takes
        // ownership of it (and closes it if mapping fails).
        let fd =
            unsafe { vm.vm_fd().create_vcpu_from_rawfd(dup) }.map_err(CreateKickerError::Map)?;
        Ok(Self {
            raw_fd: dup,
            target: Mutex::new(KickTarget { fd, thread: None }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KickTarget> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the calling thread as the one running the vCPU.
    pub fn attach_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().thread = Some(me);
    }

    /// Forgets the vCPU thread; call before the thread exits.
    pub fn detach_current_thread(&self) {
        self.lock().thread = None;
    }

    /// Makes the vCPU leave `KVM_RUN` (or not enter it) as soon as possible.
    pub fn kick(&self) {
        let mut target = self.lock();
        target.fd.set_kvm_immediate_exit(1);
        fence(Ordering::Release);
        if let Some(thread) = target.thread {
            // SAFETY: `thread` is attached, so it has not exited (it detaches under this lock
            // before exiting) and its pthread_t is valid; the signal has a handler installed.
            let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
            if rc != 0 {
                tracing::warn!(errno = rc, "kicking a vCPU thread failed");
            }
        }
    }

    /// The duplicate vCPU fd (same vCPU; usable for `KVM_GET_STATS_FD`).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by the `VcpuFd` inside `self`, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.raw_fd) }
    }
}

/// The kernel thread id of the calling thread (as in `/proc/self/task/<tid>`).
#[must_use]
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_convert_to_kvm_form() {
        let code = Segment {
            selector: 0x10,
            base: 0,
            limit: 0xFFFF_FFFF,
            type_: 0xB,
            dpl: 0,
            long: true,
            system: false,
        }
        .to_kvm();
        assert_eq!(
            (code.l, code.db, code.s, code.g, code.present),
            (1, 0, 1, 1, 1)
        );
        let tss = Segment {
            selector: 0x40,
            base: 0x4000,
            limit: 0x67,
            type_: 0xB,
            dpl: 0,
            long: false,
            system: true,
        }
        .to_kvm();
        assert_eq!((tss.l, tss.db, tss.s, tss.g), (0, 0, 0, 0));
    }

    #[test]
    fn kick_handler_installs_once() {
        install_kick_handler().unwrap();
        install_kick_handler().unwrap();
        assert!(current_tid() > 0);
    }
}
