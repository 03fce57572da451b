//! Many VMs on the real `/dev/kvm`: eight at once in one process, a failing guest that fails
//! alone, several VMMs per process and per machine.

mod vm_common;

use std::process::Command;
use std::time::Duration;

use fleetmind_vmm_probe::guest::{CrashKind, Mix, Workload};
use fleetmind_vmm_probe::vmm::{FailureReason, VmState, Vmm};
use vm_common::{spec, vmm_or_skip, wait_for};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn eight_vms_at_once() {
    let Some(vmm) = vmm_or_skip("eight_vms_at_once") else {
        return;
    };
    let workloads = [
        Workload::Idle { wake_us: 5000 },
        Workload::Io { rate_per_s: 500 },
        Workload::Mmio { rate_per_s: 500 },
        Workload::Memory {
            working_set_mib: 2,
            pages_per_s: 5000,
        },
        Workload::Cpu,
        Workload::Phased {
            mix: Mix {
                cpu: 10,
                io: 50,
                mmio: 50,
                memory: 50,
            },
            io_per_s: 400,
            mmio_per_s: 400,
            pages_per_s: 1000,
            working_set_mib: 2,
        },
        Workload::Io { rate_per_s: 200 },
        Workload::Idle { wake_us: 20_000 },
    ];
    let vms: Vec<_> = workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut s = spec(&format!("fleet-{i}"), 1 + (i as u32 % 2), 4, w.clone());
            s.level = 20; // keep the busy ones from hogging a small host
            vmm.launch(s).unwrap()
        })
        .collect();
    let mut ids: Vec<_> = vms.iter().map(|vm| vm.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "ids are unique");
    for vm in &vms {
        wait_for(&format!("{} to tick", vm.name()), WAIT, || {
            (vm.guest_counters().ticks >= 20).then_some(())
        });
    }
    for vm in &vms {
        assert_eq!(vm.state(), VmState::Running, "{}", vm.name());
        assert!(vm.exit_counts().hlt > 0, "{}", vm.name());
    }
    assert!(vms[1].exit_counts().io_out > 0);
    assert!(vms[2].exit_counts().mmio_write > 0);
    assert!(vms[3].guest_counters().mem_ops > 0);
    assert!(vms[4].guest_counters().cpu_ops > 0);
    for vm in &vms {
        vm.stop();
        assert_eq!(vm.state(), VmState::Stopped);
    }
}

#[test]
fn a_triple_faulting_guest_fails_alone() {
    let Some(vmm) = vmm_or_skip("a_triple_faulting_guest_fails_alone") else {
        return;
    };
    let healthy = vmm
        .launch(spec("healthy", 1, 4, Workload::Io { rate_per_s: 1000 }))
        .unwrap();
    let doomed = vmm
        .launch(spec(
            "doomed",
            2,
            4,
            Workload::Crash {
                after_ms: 100,
                how: CrashKind::TripleFault,
            },
        ))
        .unwrap();
    let reason = wait_for("the triple fault", WAIT, || match doomed.state() {
        VmState::Failed { reason } => Some(reason),
        _ => None,
    });
    assert!(
        matches!(reason, FailureReason::Shutdown { .. }),
        "{reason:?}"
    );
    // Both vCPUs reach the fault at the same tick; either or both may get there first.
    assert!((1..=2).contains(&doomed.exit_counts().shutdown));
    // Both vCPU threads of the failed VM are gone; the healthy VM keeps counting.
    let tids = doomed.vcpu_tids();
    doomed.stop();
    assert!(
        matches!(doomed.state(), VmState::Failed { .. }),
        "stays failed"
    );
    for tid in tids {
        assert!(!std::path::Path::new(&format!("/proc/self/task/{tid}")).exists());
    }
    let (ticks, io) = (healthy.guest_counters().ticks, healthy.exit_counts().io_out);
    wait_for("the healthy VM to go on", WAIT, || {
        (healthy.guest_counters().ticks >= ticks + 20).then_some(())
    });
    assert!(healthy.exit_counts().io_out > io);
    assert_eq!(healthy.state(), VmState::Running);
}

#[test]
fn a_guest_exception_is_reported_by_the_idt_stub() {
    let Some(vmm) = vmm_or_skip("a_guest_exception_is_reported_by_the_idt_stub") else {
        return;
    };
    let vm = vmm
        .launch(spec(
            "faulty",
            1,
            4,
            Workload::Crash {
                after_ms: 20,
                how: CrashKind::Exception,
            },
        ))
        .unwrap();
    let reason = wait_for("the exception", WAIT, || match vm.state() {
        VmState::Failed { reason } => Some(reason),
        _ => None,
    });
    eprintln!("{reason}");
    let FailureReason::GuestException { vector, rip, .. } = reason else {
        panic!("expected a guest exception, got {reason:?}");
    };
    assert_eq!(vector, 6, "#UD");
    assert!(
        (0xA_0000..0x10_0000).contains(&rip),
        "rip {rip:#x} in the program"
    );
}

#[test]
fn two_vmms_share_a_process() {
    if vmm_or_skip("two_vmms_share_a_process").is_none() {
        return;
    }
    let (a, b) = (Vmm::new().unwrap(), Vmm::new().unwrap());
    let va = a
        .launch(spec("a", 1, 4, Workload::Io { rate_per_s: 500 }))
        .unwrap();
    let vb = b
        .launch(spec("b", 1, 4, Workload::Io { rate_per_s: 500 }))
        .unwrap();
    for vm in [&va, &vb] {
        wait_for("ticks", WAIT, || {
            (vm.guest_counters().ticks >= 20).then_some(())
        });
    }
    assert_eq!(va.id(), vb.id(), "ids are per VMM: both are its first VM");
}

/// Run by `vmms_in_two_processes` in a child process; ignored in normal runs.
#[test]
#[ignore = "helper run in a child process by vmms_in_two_processes"]
fn child_process_vm() {
    let vmm = Vmm::new().unwrap();
    let vm = vmm
        .launch(spec("child", 1, 4, Workload::Io { rate_per_s: 500 }))
        .unwrap();
    wait_for("child ticks", WAIT, || {
        (vm.guest_counters().ticks >= 50).then_some(())
    });
    println!(
        "CHILD_OK ticks={} io={}",
        vm.guest_counters().ticks,
        vm.exit_counts().io_out
    );
}

#[test]
fn vmms_in_two_processes() {
    let Some(vmm) = vmm_or_skip("vmms_in_two_processes") else {
        return;
    };
    let vm = vmm
        .launch(spec("parent", 1, 4, Workload::Io { rate_per_s: 500 }))
        .unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_process_vm", "--nocapture"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(stdout.contains("CHILD_OK"), "{stdout}");
    assert_eq!(vm.state(), VmState::Running);
    assert!(
        vm.guest_counters().ticks >= 50,
        "the parent's VM ran meanwhile"
    );
}
