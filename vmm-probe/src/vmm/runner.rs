//! The vCPU thread: `KVM_RUN` in a loop, counting and handling exits, sleeping through
//! paravirtual waits, parking while paused.
//!
//! Exit handling is the guest ABI's host side (see [`crate::guest`]): port writes to the ABI
//! ports drive timestamps, sleeps and failure reports; other port and MMIO accesses are load
//! and are only counted; `hlt` sleeps until the pending paravirtual deadline or the next tick;
//! anything fatal fails this VM and no other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;

use super::balloon::Direction;
use super::state::{ExitKind, FailureReason, Request, VmShared};
use crate::guest::layout::{self, port, slot};
use crate::vstate::Vcpu;
use crate::vstate::vcpu::current_tid;

/// What the loop does after an exit.
enum Action {
    Continue,
    Halt,
    Fail(FailureReason),
    /// `KVM_EXIT_INTERNAL_ERROR`: the suberror is read once the exit's borrow has ended.
    InternalError,
}

/// Absolute tick deadlines, so the guest's rate does not drift with wake-up latency.
#[derive(Debug)]
struct TickSchedule {
    period: Duration,
    last: Option<Instant>,
}

impl TickSchedule {
    fn new(period: Duration) -> Self {
        Self { period, last: None }
    }

    /// Restart the schedule (after a pause: no catching up on paused time).
    fn reset(&mut self) {
        self.last = None;
    }

    /// The deadline of the tick after the current one. A guest more than a tick behind loses
    /// the debt instead of bursting to catch up.
    fn next(&mut self, now: Instant) -> Instant {
        let next = match self.last {
            Some(last) => last + self.period,
            None => now + self.period,
        };
        let next = if next + self.period < now { now } else { next };
        self.last = Some(next);
        next
    }
}

/// One vCPU thread. Field order matters: the vCPU fd closes before the shared VM state.
pub(super) struct VcpuRunner {
    vcpu: Vcpu,
    index: u32,
    shared: Arc<VmShared>,
}

/// Detaches the kicker and counts the thread out, also when it unwinds.
struct ExitGuard<'a> {
    shared: &'a VmShared,
    index: u32,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.shared.vcpus[self.index as usize]
            .kicker
            .detach_current_thread();
        if std::thread::panicking() {
            self.shared
                .fail(FailureReason::Panicked { vcpu: self.index });
        }
        self.shared.mark_exited();
    }
}

impl VcpuRunner {
    pub(super) fn new(vcpu: Vcpu, shared: Arc<VmShared>) -> Self {
        Self {
            index: vcpu.index(),
            vcpu,
            shared,
        }
    }

    /// The thread body.
    pub(super) fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let me = &shared.vcpus[self.index as usize];
        me.kicker.attach_current_thread();
        me.tid
            .store(current_tid(), std::sync::atomic::Ordering::Release);
        let _guard = ExitGuard {
            shared: &shared,
            index: self.index,
        };
        shared.mark_ready();
        self.run_loop();
    }

    fn run_loop(&mut self) {
        let mut schedule = TickSchedule::new(Duration::from_nanos(layout::TICK_NS));
        let mut pending_sleep: Option<Duration> = None;
        loop {
            if self.shared.request() != Request::Run {
                match self.shared.park() {
                    Request::Run => {
                        self.vcpu.clear_immediate_exit();
                        schedule.reset();
                    }
                    _ => return,
                }
            }
            let action = match self.vcpu.run() {
                Ok(exit) => handle_exit(&self.shared, self.index, &mut pending_sleep, exit),
                Err(e) if e.errno() == libc::EINTR => {
                    self.vcpu.clear_immediate_exit();
                    Action::Continue
                }
                Err(e) if e.errno() == libc::EAGAIN => Action::Continue,
                Err(e) => Action::Fail(FailureReason::RunFailed {
                    vcpu: self.index,
                    errno: e.errno(),
                }),
            };
            match action {
                Action::Continue => {}
                Action::Halt => {
                    let now = Instant::now();
                    let deadline = match pending_sleep.take() {
                        Some(sleep) => now + sleep,
                        None => schedule.next(now),
                    };
                    self.shared.sleep_until(deadline);
                }
                Action::InternalError => {
                    let suberror = self.vcpu.internal_error_suberror();
                    self.shared.fail(FailureReason::InternalError {
                        vcpu: self.index,
                        suberror,
                    });
                    return;
                }
                Action::Fail(reason) => {
                    self.shared.fail(reason);
                    return;
                }
            }
        }
    }
}

/// What an exit means, before any side effect: its counter and what follows.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Continue,
    /// A port write: the ABI ports need handling.
    PortWrite(u16, u32),
    Halt,
    InternalError,
    Fail(FailureReason),
}

/// Classifies `exit` of vCPU `index`.
fn classify(exit: &VcpuExit<'_>, index: u32) -> (ExitKind, Fate) {
    match exit {
        VcpuExit::IoOut(p, data) => (ExitKind::IoOut, Fate::PortWrite(*p, le_u32(data))),
        VcpuExit::IoIn(..) => (ExitKind::IoIn, Fate::Continue),
        VcpuExit::MmioWrite(..) => (ExitKind::MmioWrite, Fate::Continue),
        VcpuExit::MmioRead(..) => (ExitKind::MmioRead, Fate::Continue),
        VcpuExit::Hlt => (ExitKind::Hlt, Fate::Halt),
        VcpuExit::Shutdown => (
            ExitKind::Shutdown,
            Fate::Fail(FailureReason::Shutdown { vcpu: index }),
        ),
        VcpuExit::InternalError => (ExitKind::InternalError, Fate::InternalError),
        VcpuExit::FailEntry(hardware_reason, _) => (
            ExitKind::Other,
            Fate::Fail(FailureReason::FailEntry {
                vcpu: index,
                hardware_reason: *hardware_reason,
            }),
        ),
        other => (
            ExitKind::Other,
            Fate::Fail(FailureReason::UnexpectedExit {
                vcpu: index,
                exit: format!("{other:?}"),
            }),
        ),
    }
}

/// Counts `exit` and decides what to do about it.
fn handle_exit(
    shared: &VmShared,
    index: u32,
    pending_sleep: &mut Option<Duration>,
    mut exit: VcpuExit<'_>,
) -> Action {
    let (kind, fate) = classify(&exit, index);
    shared.vcpus[index as usize].exits.bump(kind);
    // Reads from ports or MMIO with nothing behind them: all ones, and zeros.
    match &mut exit {
        VcpuExit::IoIn(_, data) => data.fill(0xFF),
        VcpuExit::MmioRead(_, data) => data.fill(0),
        _ => {}
    }
    match fate {
        Fate::Continue => Action::Continue,
        Fate::PortWrite(p, value) => handle_port_write(shared, index, pending_sleep, p, value),
        Fate::Halt => Action::Halt,
        Fate::InternalError => Action::InternalError,
        Fate::Fail(reason) => Action::Fail(reason),
    }
}

fn le_u32(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

/// The guest ABI's ports.
fn handle_port_write(
    shared: &VmShared,
    index: u32,
    pending_sleep: &mut Option<Duration>,
    port_number: u16,
    value: u32,
) -> Action {
    match port_number {
        port::FIRST_INSTRUCTION => {
            let now = Instant::now();
            if shared.first_instruction.set(now).is_ok() {
                tracing::debug!(
                    vcpu = index,
                    since_create_us = (now - shared.created_at).as_micros() as u64,
                    "first guest instruction"
                );
            }
            Action::Continue
        }
        port::PV_SLEEP => {
            *pending_sleep = Some(Duration::from_micros(u64::from(value)));
            Action::Continue
        }
        port::EXCEPTION => Action::Fail(exception_report(shared, index, value)),
        port::DONE => {
            let _ = shared.burst_done.set(Instant::now());
            Action::Continue
        }
        port::BALLOON_INFLATE | port::BALLOON_DEFLATE => {
            let direction = if port_number == port::BALLOON_INFLATE {
                Direction::Inflate
            } else {
                Direction::Deflate
            };
            shared
                .balloon()
                .report(shared.vm.memory(), direction, value);
            Action::Continue
        }
        _ => Action::Continue,
    }
}

/// The exception the guest reported, with the details from its slot.
fn exception_report(shared: &VmShared, index: u32, vector: u32) -> FailureReason {
    let memory = shared.vm.memory();
    let field = |offset: u64| {
        memory
            .read_u64(layout::slot_gpa(index) + offset)
            .unwrap_or(u64::MAX)
    };
    FailureReason::GuestException {
        vcpu: index,
        vector: u64::from(vector),
        error_code: field(slot::EXC_ERROR),
        rip: field(slot::EXC_RIP),
        cr2: field(slot::EXC_CR2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_keep_absolute_deadlines() {
        let period = Duration::from_millis(10);
        let mut s = TickSchedule::new(period);
        let t0 = Instant::now();
        let d1 = s.next(t0);
        assert_eq!(d1, t0 + period);
        // A late wake-up does not shift the schedule.
        let d2 = s.next(d1 + Duration::from_millis(3));
        assert_eq!(d2, d1 + period);
        // Slightly behind: the next deadline is already due, catch up one tick.
        let d3 = s.next(d2 + Duration::from_millis(15));
        assert_eq!(d3, d2 + period);
        // Far behind: drop the debt.
        let late = d3 + Duration::from_millis(100);
        assert_eq!(s.next(late), late);
        s.reset();
        let now = Instant::now();
        assert_eq!(s.next(now), now + period);
    }

    #[test]
    fn exits_are_classified() {
        let mut four = [0x10u8, 0x27, 0, 0];
        assert_eq!(
            classify(&VcpuExit::IoOut(port::PV_SLEEP, &four), 0),
            (ExitKind::IoOut, Fate::PortWrite(port::PV_SLEEP, 10_000))
        );
        assert_eq!(
            classify(&VcpuExit::IoIn(0x60, &mut four), 0),
            (ExitKind::IoIn, Fate::Continue)
        );
        assert_eq!(
            classify(&VcpuExit::MmioWrite(0x20_0000, &[1, 2, 3, 4]), 0),
            (ExitKind::MmioWrite, Fate::Continue)
        );
        assert_eq!(classify(&VcpuExit::Hlt, 0), (ExitKind::Hlt, Fate::Halt));
        assert_eq!(
            classify(&VcpuExit::Shutdown, 3),
            (
                ExitKind::Shutdown,
                Fate::Fail(FailureReason::Shutdown { vcpu: 3 })
            )
        );
        assert_eq!(
            classify(&VcpuExit::InternalError, 0),
            (ExitKind::InternalError, Fate::InternalError)
        );
        assert_eq!(
            classify(&VcpuExit::FailEntry(0x21, 1), 1),
            (
                ExitKind::Other,
                Fate::Fail(FailureReason::FailEntry {
                    vcpu: 1,
                    hardware_reason: 0x21
                })
            )
        );
        let (kind, fate) = classify(&VcpuExit::Unknown, 2);
        assert_eq!(kind, ExitKind::Other);
        assert_eq!(
            fate,
            Fate::Fail(FailureReason::UnexpectedExit {
                vcpu: 2,
                exit: "Unknown".into()
            })
        );
        assert!(matches!(
            classify(&VcpuExit::SystemEvent(1, &[]), 0).1,
            Fate::Fail(FailureReason::UnexpectedExit { .. })
        ));
    }

    #[test]
    fn port_values_are_little_endian_and_short_writes_zero_extend() {
        assert_eq!(le_u32(&[0x10, 0x27, 0, 0]), 10_000);
        assert_eq!(le_u32(&[7]), 7);
    }
}
