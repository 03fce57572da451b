//! Helpers for tests that need a real resource: they skip, with a printed reason, where the
//! resource is missing, and record the skip for the test summary of `scripts/test`.

use std::io::Write as _;
use std::path::Path;

use crate::flavour::{KvmStatus, detect_kvm};

/// Records that `test` was skipped for `reason`: prints it, and appends a line to the file
/// named by `FLEETMIND_SKIP_LOG` when that is set (the summary of `scripts/test` lists them).
pub fn record_skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("FLEETMIND_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{test}: {reason}");
    }
}

/// Whether `/dev/kvm` is usable; if not, records the skip of `test` and returns false.
///
/// ```
/// # fn check() {
/// if !fleetmind_vmm_probe::test_utils::kvm_or_skip("my_test") {
///     return;
/// }
/// // ... a test on real KVM ...
/// # }
/// ```
#[must_use]
pub fn kvm_or_skip(test: &str) -> bool {
    match detect_kvm(Path::new("/sys"), Path::new("/dev/kvm")) {
        KvmStatus::Available { .. } => true,
        KvmStatus::Absent { reason } => {
            record_skip(test, &reason);
            false
        }
    }
}
