//! The debugfs fallback on a fixture tree built here: KVM's per-VM directories and the
//! processes behind them (a QEMU with `-name` and named vCPU threads, and a process with two
//! VMs whose threads cannot be attributed).

use std::path::Path;

use std::sync::Arc;

use fleetmind_collector::vm::debugfs::{CoveredPids, DebugfsConfig, DebugfsSource};
use fleetmind_schema::VmmKind;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("fixture paths have a parent"))
        .expect("create fixture directory");
    std::fs::write(path, text).expect("write fixture file");
}

fn thread(proc_root: &Path, pid: u32, tid: u32, comm: &str, run_ns: u64) {
    let task = proc_root.join(format!("{pid}/task/{tid}"));
    write(&task.join("comm"), &format!("{comm}\n"));
    write(&task.join("schedstat"), &format!("{run_ns} 500 7\n"));
    // Fields 4.. follow the state (field 3); field 39 (processor) is 1.
    let mut fields = vec!["0"; 50];
    fields[39 - 4] = "1";
    write(
        &task.join("stat"),
        &format!("{tid} ({comm}) S {}\n", fields.join(" ")),
    );
    write(&task.join("status"), "Name:\tx\nCpus_allowed_list:\t0-1\n");
}

#[test]
fn debugfs_vm_directories_become_readings() {
    let root = tempfile::tempdir().unwrap();
    let kvm = root.path().join("debug/kvm");
    let proc_root = root.path().join("proc");
    // Global files at the top are not VMs.
    write(&kvm.join("exits"), "999\n");
    // A QEMU with one VM.
    for (stat, value) in [
        ("exits", "1200"),
        ("io_exits", "300"),
        ("halt_exits", "50"),
        ("remote_tlb_flush", "4"),
    ] {
        write(&kvm.join("4242-11").join(stat), &format!("{value}\n"));
    }
    write(
        &proc_root.join("4242/cmdline"),
        "qemu-system-x86_64\x00-name\x00guest=web-7,debug-threads=on\x00-m\x00512\x00",
    );
    write(&proc_root.join("4242/comm"), "qemu-system-x86\n");
    write(
        &proc_root.join("4242/status"),
        "Name:\tqemu\nVmRSS:\t  2048 kB\n",
    );
    thread(&proc_root, 4242, 4242, "qemu-system-x86", 1);
    thread(&proc_root, 4242, 4250, "CPU 0/KVM", 5_000);
    thread(&proc_root, 4242, 4251, "CPU 1/KVM", 6_000);
    // A process running two VMs.
    write(&kvm.join("5000-3/exits"), "10\n");
    write(&kvm.join("5000-4/exits"), "20\n");
    write(&proc_root.join("5000/comm"), "firecracker\n");
    thread(&proc_root, 5000, 5001, "fc_vcpu 0", 1);

    let covered = Arc::new(CoveredPids::default());
    let source = DebugfsSource::new(DebugfsConfig {
        kvm_dir: kvm.clone(),
        proc_root: proc_root.clone(),
        host: "h1".into(),
        covered: Arc::clone(&covered),
    });
    let readings = source.read_now().expect("reads");
    assert_eq!(readings.len(), 3);
    let qemu = &readings[0];
    assert_eq!(
        (qemu.vm.as_str(), qemu.name.as_str()),
        ("h1/web-7", "web-7")
    );
    assert_eq!(qemu.vmm, VmmKind::Qemu);
    assert_eq!(
        qemu.exits,
        vec![
            ("exits".to_owned(), 1200),
            ("halt_exits".to_owned(), 50),
            ("io_exits".to_owned(), 300)
        ]
    );
    assert_eq!(qemu.rss_bytes, 2048 * 1024);
    let vcpus: Vec<_> = qemu
        .vcpus
        .iter()
        .map(|v| (v.vcpu, v.tid, v.run_ns, v.host_cpu))
        .collect();
    assert_eq!(
        vcpus,
        vec![
            (0, Some(4250), Some(5_000), Some(1)),
            (1, Some(4251), Some(6_000), Some(1))
        ]
    );
    assert_eq!(qemu.vcpus[0].affinity, vec![0, 1]);
    // Two VMs in one process: named apart, threads not attributed.
    assert_eq!(readings[1].name, "firecracker-3");
    assert_eq!(readings[2].name, "firecracker-4");
    assert!(readings[1].vcpus.is_empty());
    assert_ne!(readings[1].instance, readings[2].instance);
    assert_eq!(qemu.vmm_pid, Some(4242));

    // Once another source (QMP) reads the QEMU, the fallback leaves it out.
    covered.mark(4242);
    let names: Vec<_> = source
        .read_now()
        .expect("reads")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["firecracker-3", "firecracker-4"]);

    // A VM directory that cannot be read is an error naming the path.
    std::fs::remove_dir_all(&kvm).unwrap();
    let err = source.read_now().unwrap_err();
    assert!(err.message.contains("debug/kvm"), "{err}");
}
