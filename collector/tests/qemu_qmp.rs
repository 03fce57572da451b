//! The QMP source against a real QEMU: exit counters of a tiny multiboot guest under KVM, the
//! balloon of a Debian guest under TCG, and reconnecting to a QEMU that starts late or
//! restarts. Each test skips, with a printed reason, where QEMU, KVM or the guest assets
//! (`scripts/guest-assets`) are missing.

mod qemu_common;

use std::path::Path;
use std::time::{Duration, Instant};

use fleetmind_collector::vm::qmp::{QmpSource, QmpSourceConfig};
use fleetmind_collector::vm::{RateTracker, VmReading, VmSource};
use fleetmind_schema::VmmKind;
use fleetmind_vmm_probe::flavour::{KvmFlavour, KvmStatus, detect_kvm};
use fleetmind_vmm_probe::test_utils::record_skip;
use qemu_common::{Qemu, guest_assets, multiboot_image, poll, qemu_binary, qemu_version};

const POLL: Duration = Duration::from_millis(100);

fn counter(reading: &VmReading, name: &str) -> u64 {
    reading
        .exits
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| *v)
}

/// Reads until the source answers (QEMU creates the socket a moment after it starts).
async fn first_reading(source: &mut QmpSource, qemu: &Qemu, deadline: Duration) -> VmReading {
    let mut last_error = String::new();
    let reading = poll(deadline, POLL, async || match source.read().await {
        Ok(mut readings) => readings.pop(),
        Err(e) => {
            last_error = e.message;
            None
        }
    })
    .await;
    reading.unwrap_or_else(|| {
        panic!(
            "no reading from {} within {deadline:?}: {last_error}\nQEMU log:\n{}",
            qemu.qmp.display(),
            qemu.log_text()
        )
    })
}

/// Which counters port I/O moves on this KVM flavour (see `fleetmind_vmm_probe::flavour`).
fn counters_moved_by_port_io(flavour: KvmFlavour) -> &'static [&'static str] {
    match flavour {
        // PVM emulates a guest that is not PVM-aware: port writes are emulated instructions.
        KvmFlavour::Pvm => &["exits", "insn_emulation"],
        KvmFlavour::Vmx | KvmFlavour::Svm => &["exits", "io_exits"],
        KvmFlavour::Unknown => &["exits"],
    }
}

#[tokio::test]
async fn kvm_exit_counters_of_a_multiboot_guest_grow() {
    const TEST: &str = "qemu_qmp::kvm_exit_counters_of_a_multiboot_guest_grow";
    let qemu_bin = match qemu_binary() {
        Ok(q) => q,
        Err(reason) => return record_skip(TEST, &reason),
    };
    let flavour = match detect_kvm(Path::new("/sys"), Path::new("/dev/kvm")) {
        KvmStatus::Available { flavour } => flavour,
        KvmStatus::Absent { reason } => return record_skip(TEST, &reason),
    };
    eprintln!("{}; KVM flavour {flavour:?}", qemu_version(&qemu_bin));
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("guest.mb");
    std::fs::write(&image, multiboot_image()).expect("write the guest image");
    let qmp = dir.path().join("kvm-guest.qmp");
    let image_arg = image.to_str().expect("utf-8 temp path");
    let qemu = Qemu::start(
        &qemu_bin,
        &qmp,
        &["-accel", "kvm", "-m", "32", "-kernel", image_arg],
    );

    let mut source = QmpSource::new(QmpSourceConfig::new(&qmp, "test-host"));
    let first = first_reading(&mut source, &qemu, Duration::from_secs(20)).await;
    assert_eq!(first.vmm, VmmKind::Qemu);
    assert_eq!(first.name, "kvm-guest", "no -name: the socket's stem");
    assert_eq!(first.vm, "test-host/kvm-guest");
    assert_eq!(
        first.instance,
        u64::from(qemu.pid()),
        "instance is QEMU's pid"
    );
    assert_eq!(first.mem_bytes, 32 << 20);
    assert!(first.rss_bytes > 0);
    assert_eq!(first.balloon_actual_bytes, None, "no balloon device");
    assert_eq!(first.vcpus.len(), 1);
    let vcpu = &first.vcpus[0];
    let tid = vcpu.tid.expect("query-cpus-fast gives the vCPU thread");
    assert!(
        Path::new(&format!("/proc/{}/task/{tid}", qemu.pid())).exists(),
        "vCPU thread {tid} is a thread of QEMU {}",
        qemu.pid()
    );
    assert_ne!(tid, qemu.pid(), "the vCPU runs in its own thread");
    assert!(vcpu.run_ns.is_some() && vcpu.host_cpu.is_some() && !vcpu.affinity.is_empty());
    assert!(
        vcpu.exits.is_some(),
        "query-stats gives per-vCPU exits under KVM"
    );
    let names: Vec<&str> = first.exits.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("exit counters: {names:?}");

    // Read again until the counters moved and at least a second passed.
    let moved = counters_moved_by_port_io(flavour);
    let second = poll(Duration::from_secs(20), POLL, async || {
        let reading = source.read().await.ok()?.pop()?;
        let grown = moved
            .iter()
            .all(|name| counter(&reading, name) > counter(&first, name));
        (grown && reading.at.duration_since(first.at) >= Duration::from_secs(1)).then_some(reading)
    })
    .await
    .unwrap_or_else(|| panic!("{moved:?} did not grow on {flavour:?}"));
    for (name, total) in &second.exits {
        let before = counter(&first, name);
        if *total != before {
            eprintln!("moved: {name} {before} -> {total}");
        }
    }
    assert_eq!(
        second.instance, first.instance,
        "same QEMU, same connection"
    );
    assert_eq!(second.vcpus[0].tid, Some(tid));
    assert!(second.vcpus[0].exits > vcpu.exits);

    let mut tracker = RateTracker::new();
    assert!(tracker.update(first).is_none());
    let sample = tracker.update(second).expect("two readings give a sample");
    for name in moved {
        let rate = sample
            .exits
            .iter()
            .find(|e| e.reason == *name)
            .map_or(0.0, |e| e.per_s);
        eprintln!("{name}: {rate:.0}/s");
        assert!(rate > 0.0, "{name} rate");
    }
    assert!(sample.vcpus[0].exits_per_s > 0.0);
    assert!(sample.vcpus[0].run_frac > 0.0, "the vCPU thread ran");
}

#[tokio::test]
async fn balloon_of_a_tcg_guest_follows_the_target_and_reports_free_memory() {
    const TEST: &str =
        "qemu_qmp::balloon_of_a_tcg_guest_follows_the_target_and_reports_free_memory";
    const MEM: u64 = 256 << 20;
    const TARGET: u64 = 160 << 20;
    let qemu_bin = match qemu_binary() {
        Ok(q) => q,
        Err(reason) => return record_skip(TEST, &reason),
    };
    let (kernel, initrd) = match guest_assets() {
        Ok(assets) => assets,
        Err(reason) => return record_skip(TEST, &reason),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let qmp = dir.path().join("tcg-guest.qmp");
    let serial = dir.path().join("serial.log");
    let serial_arg = format!("file:{}", serial.display());
    let qemu = Qemu::start(
        &qemu_bin,
        &qmp,
        &[
            "-accel",
            "tcg",
            "-m",
            "256",
            "-name",
            "balloon-guest",
            "-kernel",
            kernel.to_str().expect("utf-8 path"),
            "-initrd",
            initrd.to_str().expect("utf-8 path"),
            "-append",
            "console=ttyS0 quiet panic=-1",
            "-no-reboot",
            "-serial",
            &serial_arg,
            "-device",
            "virtio-balloon-pci",
        ],
    );
    let mut source = QmpSource::new(QmpSourceConfig::new(&qmp, "test-host"));
    let first = first_reading(&mut source, &qemu, Duration::from_secs(20)).await;
    assert_eq!(
        first.name, "balloon-guest",
        "-name wins over the socket stem"
    );
    assert_eq!(first.mem_bytes, MEM);
    assert!(first.exits.is_empty(), "TCG has no KVM statistics");
    assert!(first.vcpus[0].exits.is_none());
    assert!(
        source
            .set_guest_stats_polling_interval(1)
            .await
            .expect("qom-set"),
        "the VM has a balloon device"
    );

    // QEMU answers query-balloon before the guest has a driver; the guest's first statistics
    // report says the driver is up (modules loaded by /init).
    let booted = poll(
        Duration::from_secs(90),
        Duration::from_millis(250),
        async || {
            let reading = source.read().await.ok()?.pop()?;
            reading.guest_free_bytes.is_some().then_some(reading)
        },
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "the balloon driver did not come up; serial:\n{}\nQEMU log:\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default(),
            qemu.log_text()
        )
    });
    eprintln!(
        "guest balloon driver up {:.1}s after QEMU started (free {} MiB)",
        qemu.started.elapsed().as_secs_f64(),
        booted.guest_free_bytes.unwrap_or(0) >> 20
    );
    assert!(booted.guest_free_bytes < Some(MEM));
    assert_eq!(booted.balloon_actual_bytes, Some(MEM));
    assert_eq!(
        booted.balloon_target_bytes,
        Some(MEM),
        "no target set yet: the actual size"
    );

    source.balloon(TARGET).await.expect("balloon");
    let inflated = poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        async || {
            let actual = source.execute("query-balloon", None).await.ok()?["actual"].as_u64()?;
            (actual == TARGET).then_some(actual)
        },
    )
    .await;
    assert_eq!(inflated, Some(TARGET), "query-balloon actual follows");
    eprintln!(
        "balloon at target {:.1}s after QEMU started",
        qemu.started.elapsed().as_secs_f64()
    );

    // The guest reports every second (the polling interval set above); wait for a report
    // made after the inflation.
    let reading = poll(
        Duration::from_secs(30),
        Duration::from_millis(250),
        async || {
            let reading = source.read().await.ok()?.pop()?;
            (reading.guest_free_bytes? < TARGET).then_some(reading)
        },
    )
    .await
    .expect("the guest reports free memory below the ballooned size");
    assert_eq!(reading.balloon_actual_bytes, Some(TARGET));
    assert_eq!(reading.balloon_target_bytes, Some(TARGET));
    let free = reading.guest_free_bytes.expect("checked");
    eprintln!("guest free memory {} MiB", free >> 20);
    assert!(free > 0);
    assert_eq!(reading.instance, u64::from(qemu.pid()));
}

#[tokio::test]
async fn a_source_reconnects_when_qemu_starts_late_and_restarts() {
    const TEST: &str = "qemu_qmp::a_source_reconnects_when_qemu_starts_late_and_restarts";
    let qemu_bin = match qemu_binary() {
        Ok(q) => q,
        Err(reason) => return record_skip(TEST, &reason),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("guest.mb");
    std::fs::write(&image, multiboot_image()).expect("write the guest image");
    let image_arg = image.to_str().expect("utf-8 temp path");
    // TCG: this test is about the connection, not KVM, so it runs without /dev/kvm too.
    let args = ["-accel", "tcg", "-m", "32", "-kernel", image_arg];
    let qmp = dir.path().join("late.qmp");
    let mut config = QmpSourceConfig::new(&qmp, "test-host");
    config.timeout_ms = 1000;
    let mut source = QmpSource::new(config);

    let started = Instant::now();
    let err = source.read().await.expect_err("nothing listens yet");
    assert!(
        err.message.contains(&qmp.display().to_string()),
        "the error names the socket: {}",
        err.message
    );
    assert!(err.message.contains("connect"), "{}", err.message);

    let mut qemu = Qemu::start(&qemu_bin, &qmp, &args);
    let first = first_reading(&mut source, &qemu, Duration::from_secs(20)).await;
    assert_eq!(first.instance, u64::from(qemu.pid()));

    qemu.stop();
    let err = source.read().await.expect_err("QEMU is gone");
    assert!(
        err.message.contains(&qmp.display().to_string()),
        "{}",
        err.message
    );
    // QEMU leaves its socket file behind; a new QEMU binds the path again.
    let _ = std::fs::remove_file(&qmp);
    let qemu = Qemu::start(&qemu_bin, &qmp, &args);
    let again = first_reading(&mut source, &qemu, Duration::from_secs(20)).await;
    assert_eq!(again.instance, u64::from(qemu.pid()), "the new QEMU");
    assert_ne!(again.instance, first.instance);

    // A restart between two reads: the kept connection is found closed and the same read
    // connects to the new QEMU, without a failed read in between.
    drop(qemu);
    let _ = std::fs::remove_file(&qmp);
    let qemu = Qemu::start(&qemu_bin, &qmp, &args);
    let listening = poll(Duration::from_secs(20), POLL, async || {
        // A probe connection, closed at once: QEMU then serves the next client.
        std::os::unix::net::UnixStream::connect(&qmp).ok().map(drop)
    })
    .await;
    assert!(
        listening.is_some(),
        "QEMU did not listen: {}",
        qemu.log_text()
    );
    let third = source
        .read()
        .await
        .expect("the read reconnects at once")
        .pop()
        .expect("one VM");
    assert_eq!(third.instance, u64::from(qemu.pid()));
    eprintln!(
        "reconnect test took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
