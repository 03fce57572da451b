//! Guest workloads on the real `/dev/kvm`: rates met on the VMM's exit counters, idle costs
//! almost no CPU, levels, mixes and workloads change while the guest runs.
//!
//! Rates are measured over a window of guest ticks (read from the guest's counters), and
//! compared both to ticks × budget and to the wall time the window took.

mod vm_common;

use std::time::{Duration, Instant};

use fleetmind_vmm_probe::guest::layout;
use fleetmind_vmm_probe::guest::{Mix, Workload};
use fleetmind_vmm_probe::vmm::{ExitCounts, GuestCounters, SetMixError, VmHandle};
use vm_common::{cpu_time_ns, spec, vmm_or_skip, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// What a VM did over a window of guest ticks.
#[derive(Debug)]
struct Window {
    ticks: u64,
    exits: ExitCounts,
    guest: GuestCounters,
    elapsed: Duration,
}

/// Waits for a tick boundary, then for `ticks` more ticks (summed over vCPUs), and returns the
/// deltas.
fn window(vm: &VmHandle, ticks: u64) -> Window {
    let before = vm.guest_counters().ticks;
    let (g0, e0, t0) = wait_for("a tick boundary", WAIT, || {
        let g = vm.guest_counters();
        (g.ticks > before).then(|| (g, vm.exit_counts(), Instant::now()))
    });
    let (g1, e1, t1) = wait_for("the window's ticks", WAIT, || {
        let g = vm.guest_counters();
        (g.ticks >= g0.ticks + ticks).then(|| (g, vm.exit_counts(), Instant::now()))
    });
    Window {
        ticks: g1.ticks - g0.ticks,
        exits: ExitCounts {
            io_out: e1.io_out - e0.io_out,
            mmio_write: e1.mmio_write - e0.mmio_write,
            hlt: e1.hlt - e0.hlt,
            ..ExitCounts::default()
        },
        guest: GuestCounters {
            ticks: g1.ticks - g0.ticks,
            cpu_ops: g1.cpu_ops - g0.cpu_ops,
            io_ops: g1.io_ops - g0.io_ops,
            mmio_ops: g1.mmio_ops - g0.mmio_ops,
            mem_ops: g1.mem_ops - g0.mem_ops,
        },
        elapsed: t1 - t0,
    }
}

fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured - expected).abs() <= expected * tolerance
}

/// The acceptance check: `count` events over the window are within 20% of `rate_per_s` VM-wide
/// both per tick (ticks × per-vCPU budget) and per second of wall time.
fn assert_rate(what: &str, w: &Window, count: u64, rate_per_s: f64, vcpus: u32) {
    let ticks_per_s = 1e9 / layout::TICK_NS as f64;
    let per_vcpu_tick = rate_per_s / ticks_per_s / f64::from(vcpus);
    let by_ticks = count as f64 / w.ticks as f64;
    let by_time = count as f64 / w.elapsed.as_secs_f64();
    eprintln!(
        "{what}: {count} over {} ticks in {:?}: {by_ticks:.2}/tick (want {per_vcpu_tick:.2}), \
         {by_time:.0}/s (want {rate_per_s:.0})",
        w.ticks, w.elapsed
    );
    assert!(within(by_ticks, per_vcpu_tick, 0.2), "{what}: per tick off");
    assert!(within(by_time, rate_per_s, 0.2), "{what}: per second off");
}

#[test]
fn io_exits_meet_the_requested_rate() {
    let Some(vmm) = vmm_or_skip("io_exits_meet_the_requested_rate") else {
        return;
    };
    for (vcpus, rate) in [(1, 2000), (2, 3000)] {
        let vm = vmm
            .launch(spec("io", vcpus, 8, Workload::Io { rate_per_s: rate }))
            .unwrap();
        let w = window(&vm, 100 * u64::from(vcpus));
        assert_rate(
            &format!("io {rate}/s on {vcpus} vCPUs"),
            &w,
            w.exits.io_out,
            f64::from(rate),
            vcpus,
        );
        assert_eq!(
            w.exits.io_out, w.guest.io_ops,
            "no exits but the workload's"
        );
    }
}

#[test]
fn mmio_exits_meet_the_requested_rate() {
    let Some(vmm) = vmm_or_skip("mmio_exits_meet_the_requested_rate") else {
        return;
    };
    let vm = vmm
        .launch(spec("mmio", 1, 4, Workload::Mmio { rate_per_s: 1500 }))
        .unwrap();
    let w = window(&vm, 100);
    assert_rate("mmio 1500/s", &w, w.exits.mmio_write, 1500.0, 1);
    assert!(w.exits.mmio_write.abs_diff(w.guest.mmio_ops) <= 15);
}

#[test]
fn idle_halts_and_uses_almost_no_cpu() {
    let Some(vmm) = vmm_or_skip("idle_halts_and_uses_almost_no_cpu") else {
        return;
    };
    let vm = vmm
        .launch(spec("idle", 1, 4, Workload::Idle { wake_us: 10_000 }))
        .unwrap();
    let tid = vm.vcpu_tids()[0];
    wait_for("first wake-up", WAIT, || {
        (vm.guest_counters().ticks >= 1).then_some(())
    });
    let (cpu0, t0) = (cpu_time_ns(tid).unwrap(), Instant::now());
    let w = window(&vm, 50);
    let (cpu1, t1) = (cpu_time_ns(tid).unwrap(), Instant::now());
    let share = (cpu1 - cpu0) as f64 / (t1 - t0).as_nanos() as f64;
    eprintln!(
        "idle: {} hlt exits, {} wake-ups, vCPU thread on CPU {:.2}% of the time",
        w.exits.hlt,
        w.guest.ticks,
        share * 100.0
    );
    // The window is cut at tick increments, so its exits may be one short at the edge.
    assert!(w.exits.hlt >= 49, "every wake-up follows a hlt");
    assert!(
        w.exits.io_out >= 49,
        "every sleep is requested on the PV port"
    );
    assert!(share < 0.2, "an idle vCPU thread should barely run");
}

#[test]
fn raising_a_phased_level_raises_exits_without_restart() {
    let Some(vmm) = vmm_or_skip("raising_a_phased_level_raises_exits_without_restart") else {
        return;
    };
    let mix = Mix {
        cpu: 0,
        io: 100,
        mmio: 100,
        memory: 0,
    };
    let workload = Workload::Phased {
        mix,
        io_per_s: 2000,
        mmio_per_s: 1000,
        pages_per_s: 0,
        working_set_mib: 0,
    };
    let mut s = spec("phased", 1, 8, workload);
    s.level = 10;
    let vm = vmm.launch(s).unwrap();
    let tids = vm.vcpu_tids();
    let low = window(&vm, 50);
    vm.set_level(80).unwrap();
    let high = window(&vm, 50);
    eprintln!("level 10: {:?}\nlevel 80: {:?}", low.exits, high.exits);
    let per_tick = |w: &Window, n: u64| n as f64 / w.ticks as f64;
    assert!(within(per_tick(&low, low.exits.io_out), 2.0, 0.2));
    assert!(within(per_tick(&high, high.exits.io_out), 16.0, 0.2));
    assert!(within(per_tick(&high, high.exits.mmio_write), 8.0, 0.2));
    assert!(high.exits.total() > 4 * low.exits.total());
    assert_eq!(vm.vcpu_tids(), tids, "same threads: no restart");

    // The mix changes on the fly too.
    vm.set_mix(Mix { mmio: 0, ..mix }).unwrap();
    let no_mmio = window(&vm, 20);
    assert_eq!(no_mmio.exits.mmio_write, 0);
    assert!(no_mmio.exits.io_out > 0);
    assert_eq!(vm.spec().level, 80);
}

#[test]
fn cpu_and_memory_work_follow_the_level() {
    let Some(vmm) = vmm_or_skip("cpu_and_memory_work_follow_the_level") else {
        return;
    };
    let workload = Workload::Phased {
        mix: Mix {
            cpu: 30,
            io: 0,
            mmio: 0,
            memory: 100,
        },
        io_per_s: 0,
        mmio_per_s: 0,
        pages_per_s: 10_000,
        working_set_mib: 4,
    };
    let vm = vmm.launch(spec("compute", 2, 8, workload)).unwrap();
    let busy = window(&vm, 40);
    eprintln!("level 100: {:?}", busy.guest);
    assert!(busy.guest.cpu_ops > 0, "ring 3 computes");
    // 10,000 pages/s = 100 per tick over both vCPUs = 50 per vCPU tick.
    assert!(within(
        busy.guest.mem_ops as f64 / busy.ticks as f64,
        50.0,
        0.2
    ));
    // Pages of both vCPUs' partitions were dirtied.
    for partition in 0..2u64 {
        let mut word = [0u8; 8];
        vm.read_guest(layout::WORKING_SET_GPA + partition * (2 << 20), &mut word)
            .unwrap();
        assert_ne!(word, [0; 8], "partition {partition} untouched");
    }
    vm.set_level(0).unwrap();
    window(&vm, 4); // let a tick with the old budget pass
    let quiet = window(&vm, 20);
    assert_eq!((quiet.guest.cpu_ops, quiet.guest.mem_ops), (0, 0));
    assert!(quiet.exits.hlt >= 19, "level 0 still ticks");
}

#[test]
fn workloads_switch_without_restart() {
    let Some(vmm) = vmm_or_skip("workloads_switch_without_restart") else {
        return;
    };
    let vm = vmm
        .launch(spec("switch", 1, 4, Workload::Idle { wake_us: 2000 }))
        .unwrap();
    let tids = vm.vcpu_tids();
    window(&vm, 5);
    vm.set_workload(Workload::Io { rate_per_s: 1000 }).unwrap();
    window(&vm, 2);
    let w = window(&vm, 50);
    assert!(within(w.exits.io_out as f64 / w.ticks as f64, 10.0, 0.2));
    assert!(matches!(
        vm.set_mix(Mix::default()),
        Err(SetMixError::NotPhased { kind: "io" })
    ));
    assert!(
        vm.set_workload(Workload::Memory {
            working_set_mib: 4,
            pages_per_s: 1
        })
        .is_err(),
        "4 MiB working set does not fit a 4 MiB VM"
    );
    assert_eq!(vm.vcpu_tids(), tids);
    assert!(vm.set_level(101).is_err());
}
