//! host_facts on recorded procfs trees: one recorded on the one-node development host, one
//! written for a two-node host we do not have (see `tests/fixtures/host_facts/README.md`).

use std::path::{Path, PathBuf};

use fleetmind_vmm_probe::host_facts::{
    MappingFilter, PerNode, ReadThreadError, SchedStat, numa_residency, read_numa_maps,
    thread_allowed_cpus, thread_last_cpu, thread_schedstat, thread_stat, thread_status,
};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn root(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/host_facts")
        .join(name)
}

#[test]
fn two_node_vcpu_threads() {
    let proc = root("proc-two-node");
    assert_eq!(
        thread_schedstat(&proc, 4242, 4250).expect("schedstat"),
        SchedStat {
            run_ns: 982_341_000_000,
            wait_ns: 18_250_000_000,
            timeslices: 4_412_398
        }
    );
    let stat = thread_stat(&proc, 4242, 4250).expect("stat");
    assert_eq!(
        (stat.comm.as_str(), stat.state, stat.processor),
        ("CPU 0/KVM", 'R', 5)
    );
    assert_eq!((stat.utime_ticks, stat.stime_ticks), (982_341, 12_033));
    assert_eq!(
        thread_allowed_cpus(&proc, 4242, 4250).expect("status"),
        [4, 5, 6, 7]
    );

    // A name with spaces and parentheses: the fields are found from the last ')'.
    let stat = thread_stat(&proc, 4242, 4251).expect("stat");
    assert_eq!(stat.comm, "vcpu (1) x)");
    assert_eq!(thread_last_cpu(&proc, 4242, 4251).expect("last cpu"), 2);
    let status = thread_status(&proc, 4242, 4251).expect("status");
    assert_eq!(status.cpus_allowed, [2, 6]);
    assert_eq!(status.mems_allowed, Some(vec![0, 1]));
    assert_eq!(status.nonvoluntary_ctxt_switches, Some(45_876));
    // The second vCPU waited far longer on run queues: the contention signal.
    let waits = [4250, 4251].map(|t| thread_schedstat(&proc, 4242, t).expect("schedstat").wait_ns);
    assert!(waits[1] > 5 * waits[0]);
}

#[test]
fn two_node_guest_memory_residency() {
    let proc = root("proc-two-node");
    let maps = read_numa_maps(&proc, 4242).expect("numa_maps");
    assert_eq!(maps.len(), 10);
    assert_eq!(maps[6].policy, "prefer (many):0-1");

    // Guest RAM: the anonymous 2 GiB region, the 512 MiB region bound to node 1 and the
    // 512 MiB hugetlb memfd region (2 MiB pages).
    let guest = MappingFilter::StartIn {
        start: 0x7f00_0000_0000,
        end: 0x7fb0_0000_0000,
    };
    assert_eq!(
        numa_residency(&proc, 4242, guest).expect("residency"),
        PerNode::from([(0, 1536 * MIB), (1, 1536 * MIB)])
    );
    // Only the first region.
    let first = MappingFilter::StartIn {
        start: 0x7f00_0000_0000,
        end: 0x7f00_0000_0001,
    };
    assert_eq!(
        numa_residency(&proc, 4242, first).expect("residency"),
        PerNode::from([(0, 327_680 * PAGE), (1, 196_608 * PAGE)])
    );
    // Anonymous memory: heap, guest RAM without the memfd, prefer-many region, stack.
    assert_eq!(
        numa_residency(&proc, 4242, MappingFilter::Anonymous).expect("residency"),
        PerNode::from([
            (0, (1900 + 327_680 + 256 + 33) * PAGE),
            (1, (148 + 196_608 + 131_072 + 256) * PAGE)
        ])
    );
}

#[test]
fn recorded_one_node_process() {
    let proc = root("proc-one-node");
    let (pid, tid) = (11555, 11555);
    let stat = thread_stat(&proc, pid, tid).expect("stat");
    assert_eq!(stat.comm, "sleep");
    assert!(stat.processor < 2);
    assert_eq!(
        thread_allowed_cpus(&proc, pid, tid).expect("status"),
        [0, 1]
    );
    let sched = thread_schedstat(&proc, pid, tid).expect("schedstat");
    assert!(sched.timeslices >= 1);
    let all = numa_residency(&proc, pid, MappingFilter::All).expect("residency");
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), [0], "one node");
    let anon = numa_residency(&proc, pid, MappingFilter::Anonymous).expect("residency");
    assert!(anon[&0] > 0 && anon[&0] < all[&0]);
    let maps = read_numa_maps(&proc, pid).expect("numa_maps");
    assert!(maps.iter().any(|m| m.heap) && maps.iter().any(|m| m.stack));
    assert!(
        maps.iter().any(|m| m.node_pages.is_empty()),
        "mappings without pages"
    );
}

#[test]
fn missing_thread_is_an_io_error_naming_the_file() {
    let proc = root("proc-two-node");
    let err = thread_schedstat(&proc, 4242, 9999).expect_err("no such thread");
    assert!(matches!(err, ReadThreadError::Io { .. }));
    assert!(
        err.to_string().ends_with("4242/task/9999/schedstat"),
        "{err}"
    );
    assert!(numa_residency(&proc, 1, MappingFilter::All).is_err());
}

#[test]
fn malformed_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let task = dir.path().join("7/task/8");
    std::fs::create_dir_all(&task).expect("mkdir");
    std::fs::write(task.join("stat"), "8 (cut short) S 1 2\n").expect("write");
    std::fs::write(task.join("schedstat"), "12 x 3\n").expect("write");
    std::fs::write(task.join("status"), "Name:\tx\n").expect("write");
    std::fs::write(
        dir.path().join("7/numa_maps"),
        "1000 default N0=1\nnot-hex default\n",
    )
    .expect("write");
    for err in [
        thread_stat(dir.path(), 7, 8).expect_err("stat"),
        thread_schedstat(dir.path(), 7, 8).expect_err("schedstat"),
        thread_status(dir.path(), 7, 8).expect_err("status"),
    ] {
        assert!(matches!(err, ReadThreadError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().starts_with("malformed "), "{err}");
    }
    let err = read_numa_maps(dir.path(), 7).expect_err("numa_maps");
    let source = std::error::Error::source(&err)
        .expect("line error")
        .to_string();
    assert_eq!(source, "line 2: no start address");
}
