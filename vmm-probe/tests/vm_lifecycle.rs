//! Lifecycle of VMs on the real `/dev/kvm`: create, start, pause, resume, stop, drop; handles'
//! accessors; spec validation. Skipped (with a recorded reason) where there is no KVM.

mod vm_common;

use std::error::Error as _;
use std::time::Duration;

use fleetmind_vmm_probe::guest::Workload;
use fleetmind_vmm_probe::guest::layout;
use fleetmind_vmm_probe::vmm::{CreateVmError, PauseError, VmSpec, VmSpecError, VmState};
use vm_common::{spec, vmm_or_skip, wait_for};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn create_start_pause_resume_stop() {
    let Some(vmm) = vmm_or_skip("create_start_pause_resume_stop") else {
        return;
    };
    let vm = vmm
        .create_vm(spec("lifecycle", 2, 8, Workload::Io { rate_per_s: 1000 }))
        .unwrap();
    assert_eq!(vm.state(), VmState::Created);
    assert_eq!(vm.guest_counters().ticks, 0, "nothing runs before start");
    assert!(vm.resume().is_err());
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(vm.start().is_err(), "start twice");
    wait_for("ticks", WAIT, || {
        (vm.guest_counters().ticks >= 10).then_some(())
    });

    // A witness VM keeps running, so "the paused VM did not move" is checked over an observed
    // stretch of guest time rather than a fixed sleep.
    let witness = vmm
        .launch(spec("witness", 1, 4, Workload::Idle { wake_us: 1000 }))
        .unwrap();
    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    assert_eq!(vm.pause(), Err(PauseError::NotRunning { state: "paused" }));
    let (guest, exits) = (vm.guest_counters(), vm.exit_counts());
    let seen = witness.guest_counters().ticks;
    wait_for("witness wake-ups", WAIT, || {
        (witness.guest_counters().ticks >= seen + 100).then_some(())
    });
    assert_eq!(
        vm.guest_counters(),
        guest,
        "guest counters moved while paused"
    );
    assert_eq!(vm.exit_counts(), exits, "exits happened while paused");

    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    wait_for("ticks after resume", WAIT, || {
        (vm.guest_counters().ticks >= guest.ticks + 10).then_some(())
    });
    assert!(vm.exit_counts().io_out > exits.io_out);

    vm.stop();
    assert_eq!(vm.state(), VmState::Stopped);
    vm.stop();
    assert_eq!(vm.state(), VmState::Stopped);
    assert!(vm.pause().is_err() && vm.resume().is_err() && vm.start().is_err());
    witness.stop();
}

#[test]
fn pause_interrupts_a_long_paravirtual_sleep() {
    let Some(vmm) = vmm_or_skip("pause_interrupts_a_long_paravirtual_sleep") else {
        return;
    };
    // An hour-long sleep: pause and stop must not wait for it.
    let vm = vmm
        .launch(spec("sleeper", 1, 4, Workload::Idle { wake_us: u32::MAX }))
        .unwrap();
    wait_for("the first sleep", WAIT, || {
        (vm.exit_counts().hlt >= 1).then_some(())
    });
    vm.pause().unwrap();
    vm.resume().unwrap();
    vm.stop();
    assert_eq!(vm.state(), VmState::Stopped);
}

#[test]
fn handle_accessors() {
    let Some(vmm) = vmm_or_skip("handle_accessors") else {
        return;
    };
    let vm = vmm
        .launch(spec("accessors", 3, 8, Workload::Idle { wake_us: 5000 }))
        .unwrap();
    let tids = vm.vcpu_tids();
    assert_eq!(tids.len(), 3);
    for tid in &tids {
        assert!(*tid > 0);
        assert!(std::path::Path::new(&format!("/proc/self/task/{tid}")).exists());
    }
    let mut unique = tids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 3, "one thread per vCPU");
    assert_eq!(vm.vcpu_fds().len(), 3);
    let range = vm.guest_memory();
    assert_eq!(range.len, 8 << 20);
    assert_ne!(range.addr, 0);

    // Bounded guest-memory access.
    let gpa = layout::WORKING_SET_GPA;
    vm.write_guest(gpa, b"fleetmind").unwrap();
    let mut buf = [0u8; 9];
    vm.read_guest(gpa, &mut buf).unwrap();
    assert_eq!(&buf, b"fleetmind");
    assert!(vm.write_guest((8 << 20) - 4, b"too long").is_err());
    assert!(vm.read_guest(u64::MAX - 1, &mut buf).is_err());
    let mut magic = [0u8; 8];
    vm.read_guest(layout::CONTROL_GPA, &mut magic).unwrap();
    assert_eq!(&magic, b"FLEETVM1");

    wait_for("first instruction", WAIT, || {
        vm.create_to_first_instruction()
    });
    assert_eq!(vm.name(), "accessors");
    assert_eq!(vm.spec().vcpus, 3);
}

#[test]
fn drop_stops_and_joins_the_vcpu_threads() {
    let Some(vmm) = vmm_or_skip("drop_stops_and_joins_the_vcpu_threads") else {
        return;
    };
    let vm = vmm.launch(spec("dropped", 2, 4, Workload::Cpu)).unwrap();
    wait_for("ticks", WAIT, || {
        (vm.guest_counters().ticks >= 4).then_some(())
    });
    let tids = vm.vcpu_tids();
    drop(vm);
    for tid in tids {
        assert!(
            !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists(),
            "vCPU thread {tid} outlived its VM"
        );
    }
}

#[test]
fn invalid_specs_name_the_field() {
    let Some(vmm) = vmm_or_skip("invalid_specs_name_the_field") else {
        return;
    };
    let limits = vmm.limits().unwrap();
    type Case = (VmSpec, fn(&VmSpecError) -> bool, String);
    let cases: Vec<Case> = vec![
        (
            spec("v0", 0, 4, Workload::Cpu),
            |e| matches!(e, VmSpecError::Vcpus { .. }),
            format!("vcpus must be between 1 and {}", limits.max_vcpus),
        ),
        (
            spec("vmax", limits.max_vcpus + 1, 4, Workload::Cpu),
            |e| matches!(e, VmSpecError::Vcpus { .. }),
            format!("vcpus must be between 1 and {}", limits.max_vcpus),
        ),
        (
            spec("m0", 1, 0, Workload::Cpu),
            |e| matches!(e, VmSpecError::MemMib { .. }),
            format!("mem_mib must be between 1 and {}", limits.max_mem_mib),
        ),
        (
            spec("mmax", 1, limits.max_mem_mib + 1, Workload::Cpu),
            |e| matches!(e, VmSpecError::MemMib { .. }),
            format!("mem_mib must be between 1 and {}", limits.max_mem_mib),
        ),
        (
            spec("", 1, 4, Workload::Cpu),
            |e| matches!(e, VmSpecError::Name),
            "name must not be empty".into(),
        ),
        (
            spec(
                "ws",
                1,
                4,
                Workload::Memory {
                    working_set_mib: 4,
                    pages_per_s: 1,
                },
            ),
            |e| matches!(e, VmSpecError::Workload(_)),
            "workload is invalid for this VM".into(),
        ),
    ];
    for (s, is_expected, message) in cases {
        let err = vmm.create_vm(s.clone()).unwrap_err();
        let CreateVmError::Spec(spec_err) = &err else {
            panic!("{s:?}: expected a spec error, got {err:?}");
        };
        assert!(is_expected(spec_err), "{s:?}: {spec_err:?}");
        assert_eq!(err.source().unwrap().to_string(), message);
    }
    let mut high = spec("lvl", 1, 4, Workload::Cpu);
    high.level = 101;
    assert!(matches!(
        vmm.create_vm(high),
        Err(CreateVmError::Spec(VmSpecError::Level))
    ));
}

#[test]
fn pause_kicks_a_vcpu_out_of_guest_code() {
    let Some(vmm) = vmm_or_skip("pause_kicks_a_vcpu_out_of_guest_code") else {
        return;
    };
    // A ring-3 loop that never exits on its own: only the kick (signal + immediate_exit) can
    // get the vCPU thread out of KVM_RUN.
    let vm = vmm
        .launch(spec(
            "spinner",
            1,
            4,
            Workload::Spin {
                ring: fleetmind_vmm_probe::guest::Ring::User,
            },
        ))
        .unwrap();
    wait_for("the loop", WAIT, || {
        (vm.guest_counters().cpu_ops > 0).then_some(())
    });
    let witness = vmm
        .launch(spec("witness2", 1, 4, Workload::Idle { wake_us: 1000 }))
        .unwrap();
    vm.pause().unwrap();
    let frozen = vm.guest_counters().cpu_ops;
    let seen = witness.guest_counters().ticks;
    wait_for("witness wake-ups", WAIT, || {
        (witness.guest_counters().ticks >= seen + 50).then_some(())
    });
    assert_eq!(
        vm.guest_counters().cpu_ops,
        frozen,
        "the loop ran while paused"
    );
    vm.resume().unwrap();
    wait_for("the loop again", WAIT, || {
        (vm.guest_counters().cpu_ops > frozen).then_some(())
    });
    vm.stop();
    assert_eq!(vm.state(), VmState::Stopped);
}
