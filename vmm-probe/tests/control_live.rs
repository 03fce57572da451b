//! The control operations on the real `/dev/kvm`: create, list, errors that name the field,
//! stats from KVM and procfs, pinning, memory placement, balloon, pause and delete; and the
//! demo fleet's driver.

mod vm_common;

use std::sync::Arc;
use std::time::Duration;

use fleetmind_vmm_probe::control::demo::{DemoConfig, DemoDriver};
use fleetmind_vmm_probe::control::{ControlErrorKind, VmmControl};
use fleetmind_vmm_probe::test_utils::kvm_or_skip;
use fleetmind_vmm_probe::vmm::VmSpec;
use vm_common::wait_for;

const WAIT: Duration = Duration::from_secs(20);

fn spec(json: &str) -> VmSpec {
    serde_json::from_str(json).expect("test spec parses")
}

#[test]
fn control_creates_lists_reports_and_deletes() {
    if !kvm_or_skip("control_creates_lists_reports_and_deletes") {
        return;
    }
    let control = VmmControl::new("host-a");
    let io = control
        .create(spec(
            r#"{"name":"io-1","vcpus":1,"mem_mib":16,"workload":{"kind":"io","rate_per_s":500}}"#,
        ))
        .expect("create");
    assert_eq!(io.name, "io-1");
    assert_eq!(io.state.name(), "running");

    let dup = control
        .create(spec(
            r#"{"name":"io-1","vcpus":1,"mem_mib":16,"workload":{"kind":"cpu"}}"#,
        ))
        .unwrap_err();
    assert_eq!(dup.kind, ControlErrorKind::Conflict);

    let zero = control
        .create(spec(
            r#"{"name":"z","vcpus":0,"mem_mib":16,"workload":{"kind":"cpu"}}"#,
        ))
        .unwrap_err();
    assert_eq!(zero.kind, ControlErrorKind::Invalid);
    assert!(zero.message.contains("vcpus must be"), "{}", zero.message);
    let huge = control
        .create(spec(
            r#"{"name":"h","vcpus":1,"mem_mib":4000000,"workload":{"kind":"cpu"}}"#,
        ))
        .unwrap_err();
    assert_eq!(huge.kind, ControlErrorKind::Invalid);
    assert!(huge.message.contains("mem_mib must be"), "{}", huge.message);
    assert_eq!(control.list().len(), 1);
    assert_eq!(control.host_info().vms, 1);

    // Stats: the VMM's, the guest's and KVM's counters all move.
    wait_for("io exits", WAIT, || {
        (control.stats("io-1").unwrap().guest.io_ops >= 20).then_some(())
    });
    let stats = control.stats("io-1").expect("stats");
    assert!(stats.exits.io_out >= 20);
    assert!(stats.kvm.vm.len() > 5, "{:?}", stats.kvm.vm.keys());
    assert_eq!(stats.kvm.vcpus.len(), 1);
    assert!(stats.kvm.vcpus[0]["exits"].as_u64().unwrap() > 0);
    assert_eq!(stats.threads.len(), 1);
    assert!(stats.threads[0].tid > 0);
    assert!(stats.threads[0].run_ns.is_some());
    assert_eq!(stats.memory.guest_bytes, 16 << 20);
    assert!(stats.memory.resident_bytes > 0);

    // Pinning names the vCPU or CPU that does not exist, and shows in the thread's facts.
    let bad = control.pin("io-1", 3, &[0]).unwrap_err();
    assert_eq!(bad.kind, ControlErrorKind::Invalid);
    assert!(
        bad.message.contains("vcpu must be below 1"),
        "{}",
        bad.message
    );
    let offline = control.pin("io-1", 0, &[4096]).unwrap_err();
    assert_eq!(offline.kind, ControlErrorKind::Invalid);
    let cpus = control.host_info().cpus;
    let target = *cpus.last().expect("a CPU");
    let thread = control.pin("io-1", 0, &[target]).expect("pin");
    assert_eq!(thread.allowed_cpus, vec![target]);

    // Memory placement: node 0 works on every host with NUMA; a missing node is named.
    if control.host_info().nodes.contains(&0) {
        let placed = control.move_memory("io-1", 0).expect("move to node 0");
        assert_eq!(
            placed.resident_per_node.keys().copied().collect::<Vec<_>>(),
            vec![0]
        );
        let err = control.move_memory("io-1", 63).unwrap_err();
        assert_eq!(err.kind, ControlErrorKind::Invalid);
        assert!(err.message.contains("node 63"), "{}", err.message);
    }

    // Balloon and level limits are named.
    let err = control.set_balloon("io-1", 16).unwrap_err();
    assert!(err.message.contains("target_mib"), "{}", err.message);
    assert_eq!(control.set_balloon("io-1", 4).unwrap().target_mib, 4);
    assert!(
        control
            .set_level("io-1", 101)
            .unwrap_err()
            .message
            .contains("level")
    );

    // Pause twice: the second is a conflict.
    assert_eq!(control.pause("io-1").unwrap().state.name(), "paused");
    assert_eq!(
        control.pause("io-1").unwrap_err().kind,
        ControlErrorKind::Conflict
    );
    assert_eq!(control.resume("io-1").unwrap().state.name(), "running");

    assert_eq!(control.delete("io-1").unwrap().state.name(), "stopped");
    assert_eq!(
        control.get("io-1").unwrap_err().kind,
        ControlErrorKind::NotFound
    );
    assert!(control.list().is_empty());
}

#[test]
fn demo_driver_follows_the_day_and_hands_over_on_manual_change() {
    if !kvm_or_skip("demo_driver_follows_the_day_and_hands_over_on_manual_change") {
        return;
    }
    let control = Arc::new(VmmControl::new("host-b"));
    // A 24-second day: the simulated hour advances one hour per second.
    let driver = DemoDriver::start(
        Arc::clone(&control),
        DemoConfig {
            host_index: 0,
            vms: 4,
            day_length: Duration::from_secs(24),
            start_hour: 9.0,
        },
    )
    .expect("demo starts");
    let names: Vec<_> = control.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["batch-1-3", "db-1-2", "idle-1-4", "web-1-1"]);
    // The web VM ramps up towards its 15:00 peak.
    let first = control.get("web-1-1").unwrap().spec.level;
    wait_for("the web VM's level to rise", WAIT, || {
        (control.get("web-1-1").unwrap().spec.level > first).then_some(())
    });
    // An operator takes over the db VM: the driver leaves it alone.
    control.set_level("db-1-2", 99).unwrap();
    let web_now = control.get("web-1-1").unwrap().spec.level;
    wait_for("the driver to move the web VM again", WAIT, || {
        (control.get("web-1-1").unwrap().spec.level != web_now).then_some(())
    });
    wait_for("another driver round", WAIT, || {
        let l = control.get("web-1-1").unwrap().spec.level;
        (l != web_now).then_some(())
    });
    assert_eq!(control.get("db-1-2").unwrap().spec.level, 99);
    for vm in control.list() {
        assert_eq!(vm.state.name(), "running", "{}", vm.name);
    }
    drop(driver);
}
