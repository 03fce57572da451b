//! The whole VM collector (`run_vm_collector`, as the daemon runs it) over QMP sockets of real
//! QEMUs: a configured socket nobody serves yet is reported unhealthy, recovers once QEMU
//! starts, and its VM's KVM exit counters show up as rates in the samples (a tiny multiboot
//! guest under `-accel kvm`); a Debian guest under TCG shows its balloon following a `balloon`
//! command in the samples. Skips with a printed reason without QEMU, KVM or the guest assets.

mod qemu_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleetmind_collector::vm::qmp::{QmpSource, QmpSourceConfig};
use fleetmind_collector::vm::{VmCollectorConfig, run_vm_collector};
use fleetmind_schema::{CollectorHealth, Record, VmSample, VmmKind};
use fleetmind_vmm_probe::flavour::{KvmStatus, detect_kvm};
use fleetmind_vmm_probe::test_utils::record_skip;
use qemu_common::{Qemu, guest_assets, multiboot_image, qemu_binary};
use tokio::sync::{mpsc, watch};

const TEST: &str = "qemu_pipeline::qmp_sources_report_health_exit_rates_and_the_balloon";

/// Everything the collector sent so far.
#[derive(Default)]
struct Seen {
    health: Vec<CollectorHealth>,
    samples: Vec<VmSample>,
}

/// Receives records until `done(&seen)` holds or `limit` passes.
async fn until(
    rx: &mut mpsc::Receiver<Record>,
    seen: &mut Seen,
    limit: Duration,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let end = Instant::now() + limit;
    while !done(seen) {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Record::CollectorHealth(h))) => seen.health.push(h),
            Ok(Some(Record::VmSample(s))) => seen.samples.push(s),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the collector stopped while waiting for {what}"),
            Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
        }
    }
}

#[tokio::test]
async fn qmp_sources_report_health_exit_rates_and_the_balloon() {
    let qemu_bin = match qemu_binary() {
        Ok(q) => q,
        Err(reason) => return record_skip(TEST, &reason),
    };
    if let KvmStatus::Absent { reason } = detect_kvm("/sys".as_ref(), "/dev/kvm".as_ref()) {
        return record_skip(TEST, &format!("no usable KVM: {reason}"));
    }
    let (kernel, initrd) = match guest_assets() {
        Ok(assets) => assets,
        Err(reason) => return record_skip(TEST, &reason),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let kvm_qmp = dir.path().join("kvm-guest.qmp");
    let tcg_qmp = dir.path().join("tcg-guest.qmp");
    let config = VmCollectorConfig {
        host: "test-host".into(),
        interval: Duration::from_millis(250),
        timeout: Duration::from_secs(2),
        rescan: Duration::from_secs(1),
        builtin_dir: None,
        debugfs_kvm_dir: None,
        proc_root: PathBuf::from("/proc"),
        qmp_sockets: vec![kvm_qmp.clone(), tcg_qmp.clone()],
        libvirt_run_dir: None,
        qmp_guest_stats_interval_s: Some(1),
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop, stopped) = watch::channel(false);
    let collector = tokio::spawn(run_vm_collector(config, tx, stopped));
    let mut seen = Seen::default();
    let kvm_source = format!("qmp:{}", kvm_qmp.display());

    // Nothing serves the socket yet: unhealthy, with the path in the message.
    until(
        &mut rx,
        &mut seen,
        Duration::from_secs(10),
        "an unhealthy record",
        |s| {
            s.health
                .iter()
                .any(|h| h.source == kvm_source && !h.healthy)
        },
    )
    .await;
    let failing = seen.health.iter().find(|h| h.source == kvm_source).unwrap();
    assert!(
        failing
            .message
            .as_deref()
            .unwrap_or("")
            .contains("kvm-guest.qmp"),
        "{failing:?}"
    );
    assert!(failing.retry_in_ms.is_some());

    // QEMU starts on that socket: the source recovers and its exit counters become rates.
    let image = dir.path().join("guest.elf");
    std::fs::write(&image, multiboot_image()).expect("write the guest image");
    let _kvm_guest = Qemu::start(
        &qemu_bin,
        &kvm_qmp,
        &[
            "-accel",
            "kvm",
            "-m",
            "32",
            "-kernel",
            image.to_str().unwrap(),
        ],
    );
    until(
        &mut rx,
        &mut seen,
        Duration::from_secs(60),
        "a healthy record and exit rates of the KVM guest",
        |s| {
            s.health.iter().any(|h| h.source == kvm_source && h.healthy)
                && s.samples.iter().any(|v| {
                    v.name == "kvm-guest"
                        && v.exits.iter().any(|e| e.reason == "exits" && e.per_s > 0.0)
                })
        },
    )
    .await;
    let sample = seen
        .samples
        .iter()
        .rev()
        .find(|v| v.name == "kvm-guest")
        .unwrap();
    assert_eq!(sample.vmm, VmmKind::Qemu);
    assert_eq!(sample.vm, "test-host/kvm-guest");
    assert!(sample.vcpus[0].tid.is_some(), "{sample:?}");

    // A Linux guest under TCG with a balloon, and a second QMP monitor for this test to
    // send the balloon command (a monitor serves one client: the collector holds the first).
    let own_qmp = dir.path().join("tcg-test.qmp");
    let own_arg = format!("unix:{},server=on,wait=off", own_qmp.display());
    let _tcg_guest = Qemu::start(
        &qemu_bin,
        &tcg_qmp,
        &[
            "-qmp",
            &own_arg,
            "-accel",
            "tcg",
            "-m",
            "256",
            "-name",
            "balloon-guest",
            "-kernel",
            kernel.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            "console=ttyS0 quiet panic=-1",
            "-no-reboot",
            "-device",
            "virtio-balloon-pci",
        ],
    );
    // The guest's first statistics report means its balloon driver is up.
    until(
        &mut rx,
        &mut seen,
        Duration::from_secs(120),
        "the guest's free memory",
        |s| {
            s.samples
                .iter()
                .any(|v| v.name == "balloon-guest" && v.guest_free_bytes.is_some())
        },
    )
    .await;
    let mut own = QmpSource::new(QmpSourceConfig::new(&own_qmp, "test-host"));
    own.balloon(160 << 20).await.expect("balloon command");
    until(
        &mut rx,
        &mut seen,
        Duration::from_secs(60),
        "the balloon at 160 MiB in the samples",
        |s| {
            s.samples
                .iter()
                .any(|v| v.name == "balloon-guest" && v.balloon_actual_bytes == Some(160 << 20))
        },
    )
    .await;
    let balloon = seen
        .samples
        .iter()
        .rev()
        .find(|v| v.name == "balloon-guest")
        .unwrap();
    assert_eq!(balloon.mem_bytes, 256 << 20);
    assert!(balloon.guest_free_bytes.is_some());

    let _ = stop.send(true);
    collector.await.expect("collector task");
}
