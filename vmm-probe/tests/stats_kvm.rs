//! KVM binary statistics on real KVM: a VM and a vCPU that never run, so every assertion is
//! structural (descriptors parse, the well-known names are there, histograms have buckets,
//! cumulative values never go down). Run with `--nocapture` to see what this host exposes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use fleetmind_vmm_probe::flavour::{KvmFlavour, KvmStatus, detect_kvm};
use fleetmind_vmm_probe::stats::{KvmStats, OpenStatsError, StatKind, StatUnit, StatsSnapshot};
use fleetmind_vmm_probe::test_utils::kvm_or_skip;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

fn vm_and_vcpu() -> (VmFd, VcpuFd) {
    let vm = Kvm::new()
        .expect("open /dev/kvm")
        .create_vm()
        .expect("create VM");
    let vcpu = vm.create_vcpu(0).expect("create vCPU");
    (vm, vcpu)
}

fn flavour() -> KvmFlavour {
    match detect_kvm(Path::new("/sys"), Path::new("/dev/kvm")) {
        KvmStatus::Available { flavour } => flavour,
        KvmStatus::Absent { reason } => panic!("KVM vanished: {reason}"),
    }
}

fn describe(label: &str, stats: &KvmStats, snapshot: &StatsSnapshot) {
    println!(
        "{label} stats, id {:?}, {} descriptors, header {:?}",
        stats.id(),
        stats.descriptors().len(),
        stats.header()
    );
    for (d, v) in stats.descriptors().iter().zip(&snapshot.values) {
        println!(
            "  {:<32} {:?}/{:?} base {:?} exp {} size {} bucket {} offset {} = {:?}",
            d.name, d.kind, d.unit, d.base, d.exponent, d.size, d.bucket_size, d.offset, v.values
        );
    }
}

/// Names every x86 kernel since binary stats (5.14) has, whatever the flavour.
const VM_NAMES: &[&str] = &["remote_tlb_flush", "pages_4k", "pages_2m"];
const VCPU_NAMES: &[&str] = &[
    "halt_successful_poll",
    "halt_attempted_poll",
    "halt_wakeup",
    "halt_poll_success_ns",
    "halt_poll_fail_ns",
    "halt_wait_ns",
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "insn_emulation",
    "hypercalls",
    "irq_injections",
];

#[test]
fn descriptors_parse_and_list_on_this_host() {
    if !kvm_or_skip("stats_kvm::descriptors_parse_and_list_on_this_host") {
        return;
    }
    let (vm, vcpu) = vm_and_vcpu();
    println!("flavour: {:?}", flavour());
    for (label, stats, required) in [
        ("VM", KvmStats::open(&vm).expect("VM stats"), VM_NAMES),
        (
            "vCPU",
            KvmStats::open(&vcpu).expect("vCPU stats"),
            VCPU_NAMES,
        ),
    ] {
        let snapshot = stats.read().expect("read");
        describe(label, &stats, &snapshot);
        assert!(
            stats.id().starts_with("kvm-"),
            "{label} id {:?}",
            stats.id()
        );
        assert_eq!(
            label == "vCPU",
            stats.id().contains("/vcpu-"),
            "{label} id {:?}",
            stats.id()
        );
        assert_eq!(stats.descriptors().len(), stats.header().num_desc as usize);
        assert_eq!(snapshot.values.len(), stats.descriptors().len());
        for name in required {
            assert!(
                stats.descriptor(name).is_some(),
                "{label} stats lack {name}"
            );
        }
        for (d, v) in stats.descriptors().iter().zip(&snapshot.values) {
            assert_eq!(d.name, v.name);
            assert!(d.size >= 1, "{} has no values", d.name);
            assert_eq!(v.values.len(), usize::from(d.size), "{}", d.name);
            assert!(
                !matches!(d.kind, StatKind::Unknown(_)),
                "{} kind {:?}",
                d.name,
                d.kind
            );
            if d.kind.is_histogram() {
                assert!(d.size > 1, "histogram {} has {} bucket", d.name, d.size);
                assert_eq!(snapshot.get(&d.name), None, "get() is for single values");
            } else {
                assert_eq!(snapshot.get(&d.name), Some(v.values[0]), "{}", d.name);
            }
        }
    }
}

#[test]
fn vcpu_has_the_halt_histograms_and_time_units() {
    if !kvm_or_skip("stats_kvm::vcpu_has_the_halt_histograms_and_time_units") {
        return;
    }
    let (_vm, vcpu) = vm_and_vcpu();
    let stats = KvmStats::open(&vcpu).expect("vCPU stats");
    let hist = stats
        .descriptor("halt_wait_hist")
        .expect("halt_wait_hist (kernel 5.15+)");
    assert_eq!(hist.kind, StatKind::LogHist);
    assert!(hist.size > 1);
    let wait = stats.descriptor("halt_wait_ns").expect("halt_wait_ns");
    assert_eq!(
        (wait.kind, wait.unit, wait.exponent),
        (StatKind::Cumulative, StatUnit::Seconds, -9)
    );
    let snapshot = stats.read().expect("read");
    let raw = snapshot.get("halt_wait_ns").expect("value");
    let seconds = snapshot.scaled("halt_wait_ns").expect("scaled");
    #[allow(clippy::cast_precision_loss)]
    let want = raw as f64 * 1e-9;
    assert!(
        (seconds - want).abs() <= want * 1e-12,
        "{seconds} vs {want}"
    );
}

#[test]
fn cumulative_values_never_go_down_and_the_fd_is_reusable() {
    if !kvm_or_skip("stats_kvm::cumulative_values_never_go_down_and_the_fd_is_reusable") {
        return;
    }
    let (vm, vcpu) = vm_and_vcpu();
    for stats in [
        KvmStats::open(&vm).expect("VM"),
        KvmStats::open(&vcpu).expect("vCPU"),
    ] {
        let mut previous = stats.read().expect("first read");
        for _ in 0..50 {
            let next = stats.read().expect("next read");
            for (a, b) in previous.values.iter().zip(&next.values) {
                if a.kind == StatKind::Cumulative {
                    assert!(b.values[0] >= a.values[0], "{} went down", a.name);
                    assert_eq!(
                        next.delta(&previous, &a.name),
                        Some(b.values[0] - a.values[0])
                    );
                }
            }
            previous = next;
        }
    }
}

#[test]
fn open_works_from_a_borrowed_fd_and_fails_on_a_non_kvm_fd() {
    if !kvm_or_skip("stats_kvm::open_works_from_a_borrowed_fd_and_fails_on_a_non_kvm_fd") {
        return;
    }
    let (vm, _vcpu) = vm_and_vcpu();
    let raw = vm.as_raw_fd();
    let file = std::fs::File::open("/dev/null").expect("/dev/null");
    let borrowed: BorrowedFd<'_> = file.as_fd();
    assert!(matches!(
        KvmStats::open(&borrowed),
        Err(OpenStatsError::Ioctl(_))
    ));
    assert!(KvmStats::open(&raw).is_ok(), "a RawFd works too");
    let err = KvmStats::open(&borrowed).expect_err("not KVM");
    assert_eq!(err.to_string(), "KVM_GET_STATS_FD failed");
}
