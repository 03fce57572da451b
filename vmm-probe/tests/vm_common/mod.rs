//! Helpers shared by the `vm_*` integration tests: a VMM or a recorded skip, specs, bounded
//! polling on observable counters, and per-thread CPU time.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use fleetmind_vmm_probe::guest::Workload;
use fleetmind_vmm_probe::test_utils::kvm_or_skip;
use fleetmind_vmm_probe::vmm::{VmSpec, Vmm};

/// A VMM on the real `/dev/kvm`, or `None` (skip recorded) where there is none.
pub fn vmm_or_skip(test: &str) -> Option<Vmm> {
    if !kvm_or_skip(test) {
        return None;
    }
    Some(Vmm::new().expect("KVM is present, so the VMM starts"))
}

/// A spec with level 100.
pub fn spec(name: &str, vcpus: u32, mem_mib: u32, workload: Workload) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus,
        mem_mib,
        workload,
        level: 100,
    }
}

/// Polls `probe` every millisecond until it returns `Some`, for at most `timeout`; panics with
/// `what` on timeout. This is how tests synchronise: on counters the guest or VMM exposes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Nanoseconds thread `tid` of this process has run on a CPU (schedstat field 1), or `None`
/// if the thread is gone.
pub fn cpu_time_ns(tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}
