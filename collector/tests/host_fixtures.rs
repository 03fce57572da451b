//! The host collector against recorded procfs/sysfs trees (`tests/fixtures/`, described in
//! its README): a real single-node host, a hand-written two-node NUMA host, a kernel without
//! PSI or NUMA, and broken trees.

mod common;

use std::time::Duration;

use common::{Replay, assert_in_range};
use fleetmind_collector::{SampleError, hostname};
use fleetmind_schema::{CpuFractions, NumaNodeSample, PerCpuSample};

const KIB: u64 = 1024;

#[test]
fn single_node_real_recording() {
    let replay = Replay::new("single-node");
    let s = replay.sample_t0_t1(Duration::from_secs(1));
    assert_in_range(&s);
    assert_eq!(s.host, "fixture-host");
    assert_eq!(s.ts, 2_000);
    assert_eq!(s.interval_ms, 1_000);
    assert_eq!(s.cpus, 2);
    // Aggregate deltas: user 3, system 8, idle 187, iowait 3, softirq 1 (202 jiffies).
    assert_eq!(
        s.cpu,
        CpuFractions {
            user_frac: 3.0 / 202.0,
            system_frac: 9.0 / 202.0,
            iowait_frac: 3.0 / 202.0,
            steal_frac: 0.0,
            idle_frac: 187.0 / 202.0,
            busy_frac: 12.0 / 202.0,
        }
    );
    assert_eq!(
        s.per_cpu,
        [
            PerCpuSample {
                cpu: 0,
                busy_frac: 6.0 / 101.0,
                steal_frac: 0.0
            },
            PerCpuSample {
                cpu: 1,
                busy_frac: 5.0 / 100.0,
                steal_frac: 0.0
            },
        ]
    );
    assert_eq!(s.load1, 0.61);
    assert_eq!(s.mem.total_bytes, 24_684_096 * KIB);
    assert_eq!(s.mem.available_bytes, 24_337_380 * KIB);
    assert_eq!(s.mem.cached_bytes, (5_976 + 1_277_188) * KIB);
    assert_eq!(s.mem.hugepage_size_bytes, 2048 * KIB);
    assert_eq!(s.vmstat.pgfault_per_s, 8_902.0);
    assert_eq!(s.vmstat.pgmajfault_per_s, 35.0);
    assert_eq!(s.vmstat.numa_miss_per_s, 0.0);
    let psi = s.psi.expect("this host has PSI");
    assert_eq!(psi.cpu_some_frac, 6_964.0 / 1e6);
    assert_eq!(psi.io_some_frac, 19_541.0 / 1e6);
    assert_eq!(psi.memory_some_frac, 0.0);
    assert_eq!(psi.cpu_some_avg10, 0.02);
    assert_eq!(
        s.numa,
        [NumaNodeSample {
            node: 0,
            mem_total_bytes: 6_252_760 * KIB,
            mem_free_bytes: 4_809_108 * KIB,
            mem_used_bytes: 1_443_652 * KIB,
            hugepages_total: 0,
            hugepages_free: 0,
            cpus: vec![0, 1],
            distances: vec![10],
        }]
    );
}

#[test]
fn two_node_numa_exact_fractions() {
    let replay = Replay::new("two-node-numa");
    let s = replay.sample_t0_t1(Duration::from_secs(2));
    assert_in_range(&s);
    assert_eq!(s.interval_ms, 2_000);
    assert_eq!(s.cpus, 8);
    // 1600 jiffies in all: user+nice 500, system+irq+softirq 110, idle 810, iowait 60, steal 120.
    assert_eq!(
        s.cpu,
        CpuFractions {
            user_frac: 0.3125,
            system_frac: 0.06875,
            iowait_frac: 0.0375,
            steal_frac: 0.075,
            idle_frac: 0.50625,
            busy_frac: 0.45625,
        }
    );
    let per_cpu: Vec<(u32, f64, f64)> = s
        .per_cpu
        .iter()
        .map(|p| (p.cpu, p.busy_frac, p.steal_frac))
        .collect();
    assert_eq!(
        per_cpu,
        [
            (0, 0.65, 0.0),
            (1, 0.6, 0.05),
            (2, 0.25, 0.0),
            (3, 0.15, 0.0),
            (4, 1.0, 0.2),
            (5, 0.5, 0.1),
            (6, 0.0, 0.0),
            (7, 0.5, 0.25),
        ]
    );
    assert_eq!(s.load1, 5.87);
    // Gauges come from the second read.
    assert_eq!(s.mem.total_bytes, 65_689_076 * KIB);
    assert_eq!(s.mem.free_bytes, 12_582_912 * KIB);
    assert_eq!(s.mem.available_bytes, 16_777_216 * KIB);
    assert_eq!(
        s.mem.used_frac,
        (65_689_076.0 - 16_777_216.0) / 65_689_076.0
    );
    assert_eq!(s.mem.swap_total_bytes, 8_388_604 * KIB);
    assert_eq!(s.mem.hugepages_total, 8192);
    assert_eq!(s.mem.hugepages_free, 1024);
    assert_eq!(s.mem.hugepage_size_bytes, 2 << 20);
    // Over 2 s: +24000 faults, +74 major, +512 swapped out, +8192 NUMA misses.
    assert_eq!(s.vmstat.pgfault_per_s, 12_000.0);
    assert_eq!(s.vmstat.pgmajfault_per_s, 37.0);
    assert_eq!(s.vmstat.pswpin_per_s, 0.0);
    assert_eq!(s.vmstat.pswpout_per_s, 256.0);
    assert_eq!(s.vmstat.numa_miss_per_s, 4096.0);
    let psi = s.psi.expect("PSI present");
    assert_eq!(psi.cpu_some_avg10, 24.53);
    assert_eq!(psi.memory_some_avg10, 4.91);
    assert_eq!(psi.memory_full_avg10, 1.2);
    assert_eq!(psi.io_some_avg10, 12.47);
    assert_eq!(psi.io_full_avg10, 3.1);
    // Stalled 0.5 s, 0.1 s and 0.25 s of the 2 s.
    assert_eq!(psi.cpu_some_frac, 0.25);
    assert_eq!(psi.memory_some_frac, 0.05);
    assert_eq!(psi.io_some_frac, 0.125);
    // full: memory +30,000 us and io +80,000 us over 2 s.
    assert_eq!(psi.memory_full_frac, 0.015);
    assert_eq!(psi.io_full_frac, 0.04);
    // ctxt +400,000 over 2 s; procs_* are the t1 values.
    assert_eq!(s.ctxt_per_s, 200_000.0);
    assert_eq!((s.procs_running, s.procs_blocked), (9, 1));
    assert_eq!(
        s.numa,
        [
            NumaNodeSample {
                node: 0,
                mem_total_bytes: 32_658_932 * KIB,
                mem_free_bytes: 10_485_760 * KIB,
                mem_used_bytes: 22_173_172 * KIB,
                hugepages_total: 4096,
                hugepages_free: 1024,
                cpus: vec![0, 1, 2, 3],
                distances: vec![10, 21],
            },
            NumaNodeSample {
                node: 1,
                mem_total_bytes: 33_030_144 * KIB,
                mem_free_bytes: 2_097_152 * KIB,
                mem_used_bytes: 30_932_992 * KIB,
                hugepages_total: 4096,
                hugepages_free: 0,
                cpus: vec![4, 5, 6, 7],
                distances: vec![21, 10],
            },
        ]
    );
    assert_eq!(hostname(replay.proc_root()), "kvm-host-07");
}

#[test]
fn nodes_are_sorted_by_number_not_by_name() {
    let replay = Replay::new("two-node-numa");
    let mut collector = replay.collector("h");
    replay.load("t0");
    collector.sample_at(0, Duration::ZERO).expect("primes");
    replay.load("t1");
    // node10 sorts before node2 as text.
    for (n, cpus) in [(2, "8"), (10, "9")] {
        let dir = format!("sys/devices/system/node/node{n}");
        replay.write(
            &format!("{dir}/meminfo"),
            &format!("Node {n} MemTotal: 4 kB\nNode {n} MemFree: 1 kB\n"),
        );
        replay.write(
            &format!("{dir}/distance"),
            "21 21 10 21 21 21 21 21 21 21 21\n",
        );
        replay.write(&format!("{dir}/cpulist"), &format!("{cpus}\n"));
    }
    let s = collector
        .sample_at(1, Duration::from_secs(1))
        .expect("reads")
        .expect("sample");
    let nodes: Vec<u32> = s.numa.iter().map(|n| n.node).collect();
    assert_eq!(nodes, [0, 1, 2, 10]);
    assert_eq!(
        s.numa[2].mem_used_bytes,
        3 * KIB,
        "MemUsed derived when absent"
    );
}

#[test]
fn no_psi_no_numa_degrades() {
    let replay = Replay::new("no-psi-no-numa");
    let s = replay.sample_t0_t1(Duration::from_secs(1));
    assert_in_range(&s);
    assert_eq!(s.psi, None);
    assert_eq!(
        s.vmstat.numa_miss_per_s, 0.0,
        "no numa_miss key on a non-NUMA kernel"
    );
    assert_eq!(s.vmstat.pgfault_per_s, 8_902.0);
    assert_eq!(
        s.numa,
        [NumaNodeSample {
            node: 0,
            mem_total_bytes: 24_684_096 * KIB,
            mem_free_bytes: 23_240_392 * KIB,
            mem_used_bytes: (24_684_096 - 23_240_392) * KIB,
            hugepages_total: 0,
            hugepages_free: 0,
            cpus: vec![0, 1],
            distances: vec![10],
        }]
    );
}

#[test]
fn unreadable_pressure_means_no_psi() {
    let replay = Replay::new("two-node-numa");
    let mut collector = replay.collector("h");
    replay.load("t0");
    collector.sample_at(0, Duration::ZERO).expect("primes");
    replay.load("t1");
    // What `psi=0` looks like to a reader of a tree: a pressure entry that cannot be read.
    replay.remove("proc/pressure/io");
    std::fs::create_dir(replay.proc_root().join("pressure/io")).expect("mkdir");
    let s = collector
        .sample_at(1, Duration::from_secs(2))
        .expect("reads")
        .expect("sample");
    assert_eq!(s.psi, None);
}

#[test]
fn missing_proc_stat_names_the_path() {
    let replay = Replay::new("two-node-numa");
    replay.load("t0");
    replay.remove("proc/stat");
    let mut collector = replay.collector("h");
    let err = collector.sample_at(0, Duration::ZERO).expect_err("no stat");
    let path = replay.proc_root().join("stat");
    assert!(
        matches!(&err, SampleError::Missing { path: p } if *p == path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_proc_meminfo_is_an_error() {
    let replay = Replay::new("two-node-numa");
    replay.load("t0");
    replay.remove("proc/meminfo");
    let err = replay
        .collector("h")
        .sample_at(0, Duration::ZERO)
        .expect_err("no meminfo");
    assert_eq!(err.path(), replay.proc_root().join("meminfo"));
}

#[test]
fn garbage_meminfo_line_names_file_and_line() {
    let replay = Replay::new("two-node-numa");
    replay.load("t0");
    let meminfo = replay
        .read("proc/meminfo")
        .replace("Cached:          4194304 kB", "Cached:     lots kB");
    replay.write("proc/meminfo", &meminfo);
    let err = replay
        .collector("h")
        .sample_at(0, Duration::ZERO)
        .expect_err("garbage");
    match &err {
        SampleError::Malformed {
            path,
            line_no,
            line,
            ..
        } => {
            assert_eq!(*path, replay.proc_root().join("meminfo"));
            assert_eq!(*line_no, 5);
            assert_eq!(line, "Cached:     lots kB");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(
        shown.contains("meminfo:5:") && shown.contains("lots"),
        "{shown}"
    );
}

#[test]
fn failed_read_keeps_the_previous_counters() {
    let replay = Replay::new("two-node-numa");
    let mut collector = replay.collector("h");
    replay.load("t0");
    collector.sample_at(0, Duration::ZERO).expect("primes");
    replay.remove("proc/stat");
    collector
        .sample_at(1, Duration::from_secs(1))
        .expect_err("no stat");
    replay.load("t1");
    let s = collector
        .sample_at(2, Duration::from_secs(2))
        .expect("reads")
        .expect("t0 kept");
    assert_eq!(s.cpu.busy_frac, 0.45625);
}

#[test]
fn counters_going_backwards_stay_finite_and_in_range() {
    // Replay in reverse: every counter goes backwards.
    let replay = Replay::new("two-node-numa");
    let mut collector = replay.collector("h");
    replay.load("t1");
    collector.sample_at(0, Duration::ZERO).expect("primes");
    replay.load("t0");
    let s = collector
        .sample_at(2_000, Duration::from_secs(2))
        .expect("reads")
        .expect("sample");
    assert_in_range(&s);
    assert!(s.per_cpu.is_empty(), "no CPU has data: {:?}", s.per_cpu);
    assert_eq!(s.cpu, CpuFractions::default());
    assert_eq!(s.vmstat.pgfault_per_s, 0.0);
    assert_eq!(s.psi.expect("present").cpu_some_frac, 0.0);
}

#[test]
fn cpu_hotplug_drops_only_the_cpus_without_data() {
    let replay = Replay::new("two-node-numa");
    let mut collector = replay.collector("h");
    replay.load("t0");
    collector.sample_at(0, Duration::ZERO).expect("primes");
    replay.load("t1");
    let stat = replay.read("proc/stat");
    let stat: String = stat
        .lines()
        .filter(|l| !l.starts_with("cpu2 ")) // cpu2 went offline
        .map(|l| match l.split_whitespace().next() {
            // cpu5 came back online with its counters restarted
            Some("cpu5") => "cpu5 100 0 20 80 0 0 0 0 0 0".to_owned(),
            // cpu0's iowait dipped, which proc(5) says can happen
            Some("cpu0") => l.replacen(" 120344 ", " 120000 ", 1),
            _ => l.to_owned(),
        })
        .map(|l| l + "\n")
        .collect();
    replay.write("proc/stat", &stat);
    let s = collector
        .sample_at(2_000, Duration::from_secs(2))
        .expect("reads")
        .expect("sample");
    assert_in_range(&s);
    assert_eq!(s.cpus, 7);
    let ids: Vec<u32> = s.per_cpu.iter().map(|p| p.cpu).collect();
    assert_eq!(ids, [0, 1, 3, 4, 6, 7], "cpu2 offline, cpu5 reset");
    // cpu0: 190 jiffies without the iowait, 60 of them idle.
    assert_eq!(s.per_cpu[0].busy_frac, 130.0 / 190.0);
    assert_eq!(
        s.per_cpu[3],
        PerCpuSample {
            cpu: 4,
            busy_frac: 1.0,
            steal_frac: 0.2
        }
    );
}

#[test]
fn aggregate_falls_back_to_the_cpus_with_data() {
    let replay = Replay::new("two-node-numa");
    let mut collector = replay.collector("h");
    replay.load("t0");
    collector.sample_at(0, Duration::ZERO).expect("primes");
    replay.load("t1");
    // The aggregate line restarts (goes backwards); the per-CPU lines are fine.
    let stat: String = replay
        .read("proc/stat")
        .lines()
        .map(|l| {
            if l.starts_with("cpu ") {
                "cpu  5 0 5 5 0 0 0 0 0 0".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    replay.write("proc/stat", &stat);
    let s = collector
        .sample_at(2_000, Duration::from_secs(2))
        .expect("reads")
        .expect("sample");
    assert_eq!(s.cpu.busy_frac, 0.45625);
    assert_eq!(s.cpu.steal_frac, 0.075);
}
