//! host_facts on this process and thread: the parsers agree with what the kernel shows now.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetmind_vmm_probe::host_facts::{
    MappingFilter, numa_residency, read_numa_maps, thread_schedstat, thread_stat, thread_status,
};
use fleetmind_vmm_probe::placement::{HostTopology, current_tid, thread_affinity};

fn me() -> (i32, i32) {
    (
        i32::try_from(std::process::id()).expect("pid"),
        current_tid(),
    )
}

#[test]
fn this_thread_stat_and_status() {
    let proc = Path::new("/proc");
    let (pid, tid) = me();
    let stat = thread_stat(proc, pid, tid).expect("stat");
    let comm = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
    assert_eq!(stat.comm, comm.trim_end_matches('\n'));
    assert_eq!(
        stat.state, 'R',
        "this thread is running while it reads its stat"
    );
    let status = thread_status(proc, pid, tid).expect("status");
    assert!(
        status.cpus_allowed.contains(&stat.processor),
        "{stat:?} {status:?}"
    );
    assert_eq!(status.cpus_allowed, thread_affinity(tid).expect("affinity"));
    assert!(status.voluntary_ctxt_switches.is_some());
    let topology = HostTopology::read(Path::new("/sys")).expect("sysfs");
    for node in status.mems_allowed.unwrap_or_default() {
        assert!(topology.nodes.contains_key(&node), "node {node}");
    }
}

#[test]
fn schedstat_run_time_grows_while_spinning() {
    let proc = Path::new("/proc");
    let (pid, tid) = me();
    let before = thread_schedstat(proc, pid, tid).expect("schedstat");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        std::hint::black_box(start.elapsed());
    }
    let after = thread_schedstat(proc, pid, tid).expect("schedstat");
    assert!(
        after.run_ns >= before.run_ns + 25_000_000,
        "{before:?} -> {after:?}"
    );
    assert!(after.timeslices >= before.timeslices && after.wait_ns >= before.wait_ns);
}

#[test]
fn this_process_numa_maps() {
    let proc = Path::new("/proc");
    let (pid, _) = me();
    let buffer = vec![1u8; 16 << 20];
    let maps = read_numa_maps(proc, pid).expect("numa_maps");
    assert!(maps.iter().any(|m| m.stack), "the main stack is listed");
    let anon = numa_residency(proc, pid, MappingFilter::Anonymous).expect("residency");
    let all = numa_residency(proc, pid, MappingFilter::All).expect("residency");
    assert!(anon.values().sum::<u64>() >= 16 << 20, "{anon:?}");
    for (node, bytes) in &anon {
        assert!(all[node] >= *bytes);
    }
    let everything = MappingFilter::StartIn {
        start: 0,
        end: u64::MAX,
    };
    assert_eq!(
        numa_residency(proc, pid, everything).expect("residency"),
        all
    );
    let topology = HostTopology::read(Path::new("/sys")).expect("sysfs");
    assert!(
        all.keys().all(|n| topology.nodes.contains_key(n)),
        "{all:?}"
    );
    drop(buffer);
}
