//! Pinning on this host: a spawned thread is pinned to CPU 1, and the kernel's view of it
//! (affinity mask, `Cpus_allowed_list`, the CPU it last ran on) agrees; then it is restored.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetmind_vmm_probe::host_facts::{thread_allowed_cpus, thread_last_cpu, thread_schedstat};
use fleetmind_vmm_probe::placement::{
    HostTopology, PinError, ThreadAffinityError, current_tid, pin_thread, thread_affinity,
};
use fleetmind_vmm_probe::test_utils::record_skip;

fn spin(for_how_long: Duration) -> u64 {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < for_how_long {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    x
}

#[test]
fn pin_a_thread_to_cpu_1_and_see_it_run_there() {
    let topology = HostTopology::read(Path::new("/sys")).expect("sysfs topology");
    let pid = i32::try_from(std::process::id()).expect("pid");
    let proc = Path::new("/proc");
    let handle = std::thread::spawn(move || {
        let tid = current_tid();
        let original = thread_affinity(tid).expect("affinity");
        if !original.contains(&1) || !topology.online_cpus.contains(&1) {
            record_skip(
                "placement_live::pin_a_thread_to_cpu_1_and_see_it_run_there",
                &format!("CPU 1 is not available to this process (affinity {original:?})"),
            );
            return;
        }
        let before = thread_schedstat(proc, pid, tid).expect("schedstat");

        pin_thread(&topology, tid, &[1]).expect("pin to CPU 1");
        assert_eq!(thread_affinity(tid).expect("affinity"), [1]);
        assert_eq!(thread_allowed_cpus(proc, pid, tid).expect("status"), [1]);
        spin(Duration::from_millis(100));
        assert_eq!(thread_last_cpu(proc, pid, tid).expect("stat"), 1);
        let after = thread_schedstat(proc, pid, tid).expect("schedstat");
        assert!(
            after.run_ns >= before.run_ns + 50_000_000,
            "{before:?} -> {after:?}"
        );

        pin_thread(&topology, tid, &original).expect("restore");
        assert_eq!(thread_affinity(tid).expect("affinity"), original);
        assert_eq!(
            thread_allowed_cpus(proc, pid, tid).expect("status"),
            original
        );
    });
    handle.join().expect("pinned thread");
}

#[test]
fn a_missing_thread_is_named() {
    let topology = HostTopology::read(Path::new("/sys")).expect("sysfs topology");
    let cpu = topology.online_cpus[0];
    // Beyond pid_max (at most 2^22): never a thread.
    let err = pin_thread(&topology, i32::MAX, &[cpu]).expect_err("no such thread");
    assert!(
        matches!(err, PinError::NoSuchThread { tid: i32::MAX }),
        "{err:?}"
    );
    assert!(matches!(
        thread_affinity(i32::MAX),
        Err(ThreadAffinityError::NoSuchThread { tid: i32::MAX })
    ));
}

#[test]
fn current_tid_is_the_procfs_thread_id() {
    let link = std::fs::read_link("/proc/thread-self").expect("thread-self");
    let tid: i32 = link
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .expect("tid in the link");
    assert_eq!(current_tid(), tid);
}
