//! The paravirtual balloon on the real `/dev/kvm`: inflating by 64 MiB lowers the VMM
//! process's resident memory by at least 60 MiB, deflating restores it, and the guest keeps
//! running throughout.
//!
//! One test in its own binary, so no other VM in the process moves the resident-set figure.

mod vm_common;

use std::time::Duration;

use fleetmind_vmm_probe::guest::Workload;
use fleetmind_vmm_probe::vmm::{SetBalloonError, VmHandle};
use vm_common::{spec, vmm_or_skip, wait_for};

const WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// `VmRSS` of this process, bytes.
fn process_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Waits until the guest has completed `ticks` more ticks.
fn guest_runs_on(vm: &VmHandle, ticks: u64) {
    let start = vm.guest_counters().ticks;
    wait_for("guest ticks", WAIT, || {
        (vm.guest_counters().ticks >= start + ticks).then_some(())
    });
}

#[test]
fn balloon_inflate_releases_host_memory_and_deflate_restores_it() {
    let Some(vmm) = vmm_or_skip("balloon_inflate_releases_host_memory_and_deflate_restores_it")
    else {
        return;
    };
    // 160 MiB guest: first dirty a working set of all its RAM above 1 MiB, so it is resident, then
    // shrink the working set to 16 MiB. The guest now has ~143 MiB free that the host still
    // backs: the memory a balloon exists to reclaim.
    let vm = vmm
        .launch(spec(
            "balloon",
            1,
            160,
            Workload::Memory {
                working_set_mib: 159,
                pages_per_s: 2_000_000,
            },
        ))
        .expect("launch");
    let ws_pages = 159 * MIB / 4096;
    wait_for("the working set to be dirtied", WAIT, || {
        (vm.guest_counters().mem_ops >= ws_pages).then_some(())
    });
    vm.set_workload(Workload::Memory {
        working_set_mib: 16,
        pages_per_s: 20_000,
    })
    .expect("shrink the working set");
    guest_runs_on(&vm, 3);
    let free = vm.balloon().guest_free_bytes;
    assert!(
        free >= 140 * MIB,
        "the guest reports {free} bytes free above its working set"
    );

    // Errors name the field.
    let err = vm.set_balloon(160).unwrap_err();
    assert!(matches!(err, SetBalloonError::Target { max_mib: 159, .. }));
    assert!(err.to_string().contains("target_mib"), "{err}");

    let before = process_rss();
    let ops_before = vm.guest_counters().mem_ops;
    vm.set_balloon(64).expect("inflate");
    let status = wait_for("the balloon to reach 64 MiB", WAIT, || {
        let s = vm.balloon();
        (s.actual_bytes == 64 * MIB).then_some(s)
    });
    let inflated = process_rss();
    let dropped = before.saturating_sub(inflated);
    println!(
        "balloon: RSS {} MiB -> {} MiB after inflating 64 MiB (-{:.1} MiB); guest free {} MiB",
        before / MIB,
        inflated / MIB,
        dropped as f64 / MIB as f64,
        status.guest_free_bytes / MIB
    );
    assert!(
        dropped >= 60 * MIB,
        "RSS dropped by only {dropped} bytes (from {before} to {inflated})"
    );
    assert_eq!(status.target_mib, 64);
    assert_eq!(status.inflated_pages_total, 64 * MIB / 4096);
    assert_eq!(status.rejected_pages_total, 0);
    assert!(status.guest_free_bytes + 64 * MIB <= free);

    // The guest keeps running, and keeps dirtying its working set.
    guest_runs_on(&vm, 10);
    assert!(vm.guest_counters().mem_ops > ops_before);
    assert_eq!(vm.state().name(), "running");

    vm.set_balloon(0).expect("deflate");
    let status = wait_for("the balloon to empty", WAIT, || {
        let s = vm.balloon();
        (s.actual_bytes == 0).then_some(s)
    });
    let deflated = process_rss();
    println!(
        "balloon: RSS {} MiB after deflating; guest free {} MiB",
        deflated / MIB,
        status.guest_free_bytes / MIB
    );
    assert!(
        deflated >= inflated + 60 * MIB,
        "deflating restored only {} bytes",
        deflated.saturating_sub(inflated)
    );
    assert_eq!(status.deflated_pages_total, 64 * MIB / 4096);
    assert_eq!(status.guest_free_bytes, free);
    guest_runs_on(&vm, 5);
    assert_eq!(vm.state().name(), "running");

    // A working set that grows into the balloon takes the memory back first.
    vm.set_balloon(100).expect("inflate again");
    wait_for("the balloon to reach 100 MiB", WAIT, || {
        (vm.balloon().actual_bytes == 100 * MIB).then_some(())
    });
    vm.set_workload(Workload::Memory {
        working_set_mib: 100,
        pages_per_s: 20_000,
    })
    .expect("grow the working set");
    let status = wait_for("the balloon to give way to the working set", WAIT, || {
        let s = vm.balloon();
        (s.actual_bytes == (159 - 100) * MIB).then_some(s)
    });
    assert_eq!(status.target_mib, 100, "the target stays what was asked");
    assert_eq!(status.guest_free_bytes, 0);
    vm.stop();
}
