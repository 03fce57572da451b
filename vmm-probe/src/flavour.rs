//! Detection of the KVM flavour from sysfs and the device node.
//!
//! The kernel module that is loaded tells the flavour: `kvm_intel` (VMX), `kvm_amd` (SVM) or
//! `kvm_pvm` (PVM, KVM running on a host without hardware virtualisation exposed to it). Both
//! the sysfs root and the device path are parameters so that fixtures can stand in for hosts
//! we do not have.

use std::path::Path;

use serde::Serialize;

/// Which implementation of KVM runs guests on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmFlavour {
    /// Intel VT-x (`kvm_intel`).
    Vmx,
    /// AMD-V (`kvm_amd`).
    Svm,
    /// PVM (`kvm_pvm`): guests that are not PVM-aware are emulated, and exits are counted
    /// differently (port I/O shows under `insn_emulation`, not `io_exits`).
    Pvm,
    /// `/dev/kvm` works but no known vendor module is loaded.
    Unknown,
}

/// What this host offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KvmStatus {
    /// `/dev/kvm` can be opened for reading and writing.
    Available {
        /// The flavour.
        flavour: KvmFlavour,
    },
    /// No usable `/dev/kvm`; the reason says why (missing, permission denied, ...).
    Absent {
        /// Why, for the operator.
        reason: String,
    },
}

/// Detects KVM on this host: opens `dev_kvm` read-write (and closes it) and reads the loaded
/// modules under `sys_root/module`.
#[must_use]
pub fn detect_kvm(sys_root: &Path, dev_kvm: &Path) -> KvmStatus {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!(
                    "{} does not exist (no KVM module loaded, or not exposed to this container)",
                    dev_kvm.display()
                )
            }
            std::io::ErrorKind::PermissionDenied => format!(
                "{} exists but cannot be opened read-write (add the user to the kvm group)",
                dev_kvm.display()
            ),
            _ => format!("{} cannot be opened: {e}", dev_kvm.display()),
        };
        return KvmStatus::Absent { reason };
    }
    KvmStatus::Available {
        flavour: flavour_from_modules(sys_root),
    }
}

fn flavour_from_modules(sys_root: &Path) -> KvmFlavour {
    let module = |name: &str| sys_root.join("module").join(name).exists();
    // PVM first: a PVM host may have kvm_intel loaded too, without VMX usable.
    if module("kvm_pvm") {
        KvmFlavour::Pvm
    } else if module("kvm_intel") {
        KvmFlavour::Vmx
    } else if module("kvm_amd") {
        KvmFlavour::Svm
    } else {
        KvmFlavour::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(modules: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        for m in modules {
            std::fs::create_dir_all(dir.path().join("sys/module").join(m)).expect("mkdir");
        }
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").expect("stand-in device");
        (dir, dev)
    }

    #[test]
    fn flavours_from_modules() {
        for (modules, want) in [
            (&["kvm", "kvm_intel"][..], KvmFlavour::Vmx),
            (&["kvm", "kvm_amd"][..], KvmFlavour::Svm),
            (&["kvm", "kvm_pvm", "kvm_intel"][..], KvmFlavour::Pvm),
            (&["kvm"][..], KvmFlavour::Unknown),
        ] {
            let (dir, dev) = fixture(modules);
            assert_eq!(
                detect_kvm(&dir.path().join("sys"), &dev),
                KvmStatus::Available { flavour: want },
                "{modules:?}"
            );
        }
    }

    #[test]
    fn missing_device_is_absent_with_reason() {
        let (dir, _) = fixture(&["kvm", "kvm_intel"]);
        let status = detect_kvm(&dir.path().join("sys"), &dir.path().join("no-such-kvm"));
        match status {
            KvmStatus::Absent { reason } => assert!(reason.contains("does not exist"), "{reason}"),
            other => panic!("expected absent, got {other:?}"),
        }
    }

    /// On this machine: report what is here; the assertion is that detection agrees with the
    /// device node's presence, whichever flavour this host is.
    #[test]
    fn live_host_detection_is_consistent() {
        let status = detect_kvm(Path::new("/sys"), Path::new("/dev/kvm"));
        eprintln!("this host: {status:?}");
        let openable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        assert_eq!(matches!(status, KvmStatus::Available { .. }), openable);
    }
}
