//! The `/dev/kvm` handle and what it tells about this host: flavour, vCPU limit, CPUID.
//!
//! One [`KvmContext`] per VMM instance: nothing here is process-global, so several VMMs can
//! share a process or a machine.

use std::path::Path;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};

use crate::flavour::{KvmFlavour, KvmStatus, detect_kvm};

/// An open `/dev/kvm` with the facts the VMM needs from it.
#[derive(Debug)]
pub struct KvmContext {
    kvm: kvm_ioctls::Kvm,
    flavour: KvmFlavour,
    max_vcpus: usize,
    cpuid: CpuId,
}

/// `/dev/kvm` could not be opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum OpenKvmError {
    /// No usable `/dev/kvm`; the reason says why.
    #[error("KVM is not available: {0}")]
    Absent(String),
    /// Opening the device failed.
    #[error("opening /dev/kvm failed")]
    Open(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("reading the supported CPUID failed")]
    Cpuid(#[source] kvm_ioctls::Error),
}

impl KvmContext {
    /// Opens `/dev/kvm` and detects the flavour from `/sys/module`.
    ///
    /// # Errors
    ///
    /// [`OpenKvmError`] if KVM is absent or refuses the queries.
    pub fn new() -> Result<Self, OpenKvmError> {
        let flavour = match detect_kvm(Path::new("/sys"), Path::new("/dev/kvm")) {
            KvmStatus::Available { flavour } => flavour,
            KvmStatus::Absent { reason } => return Err(OpenKvmError::Absent(reason)),
        };
        let kvm = kvm_ioctls::Kvm::new().map_err(OpenKvmError::Open)?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(OpenKvmError::Cpuid)?;
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Self {
            kvm,
            flavour,
            max_vcpus,
            cpuid,
        })
    }

    /// The KVM flavour of this host.
    #[must_use]
    pub fn flavour(&self) -> KvmFlavour {
        self.flavour
    }

    /// The most vCPUs KVM allows in one VM (`KVM_CAP_MAX_VCPUS`).
    #[must_use]
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// The CPUID KVM supports, given to every vCPU as is.
    #[must_use]
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// The underlying handle.
    #[must_use]
    pub fn kvm(&self) -> &kvm_ioctls::Kvm {
        &self.kvm
    }
}

/// The host TSC frequency in kHz, calibrated against the monotonic clock over 20 ms: the
/// fallback when KVM does not report the guest's (`KVM_GET_TSC_KHZ`).
#[must_use]
pub fn host_tsc_khz() -> u32 {
    use std::time::{Duration, Instant};
    // SAFETY: RDTSC has no memory effects; every x86-64 CPU implements it.
    let read = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), read());
    std::thread::sleep(Duration::from_millis(20));
    let (t1, c1) = (Instant::now(), read());
    let nanos = (t1 - t0).as_nanos().max(1);
    u32::try_from(u128::from(c1.wrapping_sub(c0)) * 1_000_000 / nanos).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_tsc_is_plausible() {
        let khz = host_tsc_khz();
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
