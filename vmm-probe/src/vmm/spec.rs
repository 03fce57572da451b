//! What a VM should be ([`VmSpec`], as the control API receives it in JSON) and the checks
//! that it can be on this host.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::guest::layout;
use crate::guest::{Workload, WorkloadError};

/// A VM to create. JSON:
/// `{"name": "web-1", "vcpus": 2, "mem_mib": 64, "workload": {"kind": "cpu"}, "level": 40}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Name for operators; the control API keys VMs by it, so it is unique per VMM host.
    pub name: String,
    /// vCPUs, each run by its own thread.
    pub vcpus: u32,
    /// Guest memory in MiB (reserved lazily: the host pays for touched pages only).
    pub mem_mib: u32,
    /// What the guest does.
    pub workload: Workload,
    /// Load level 0..=100 % scaling the workload (default 100).
    #[serde(default = "full_level")]
    pub level: u8,
}

fn full_level() -> u8 {
    100
}

/// What this host allows a VM to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// The smaller of KVM's vCPU limit and the guest layout's.
    pub max_vcpus: u32,
    /// The smaller of the host's available memory and the guest layout's limit.
    pub max_mem_mib: u32,
}

/// A spec that cannot be satisfied; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmSpecError {
    /// Empty name.
    #[error("name must not be empty")]
    Name,
    /// Too few or too many vCPUs.
    #[error("vcpus must be between 1 and {max}")]
    Vcpus {
        /// The host's limit.
        max: u32,
    },
    /// No memory, or more than the host has available.
    #[error("mem_mib must be between 1 and {max}")]
    MemMib {
        /// The host's limit.
        max: u32,
    },
    /// A level above 100.
    #[error("level must be between 0 and 100")]
    Level,
    /// The workload does not fit the VM.
    #[error("workload is invalid for this VM")]
    Workload(#[source] WorkloadError),
}

impl VmSpec {
    /// Checks the spec against `limits`.
    ///
    /// # Errors
    ///
    /// The first [`VmSpecError`] found, in field order.
    pub fn validate(&self, limits: &Limits) -> Result<(), VmSpecError> {
        if self.name.trim().is_empty() {
            return Err(VmSpecError::Name);
        }
        if self.vcpus == 0 || self.vcpus > limits.max_vcpus {
            return Err(VmSpecError::Vcpus {
                max: limits.max_vcpus,
            });
        }
        if self.mem_mib == 0 || self.mem_mib > limits.max_mem_mib {
            return Err(VmSpecError::MemMib {
                max: limits.max_mem_mib,
            });
        }
        if self.level > 100 {
            return Err(VmSpecError::Level);
        }
        self.workload
            .validate(self.mem_mib)
            .map_err(VmSpecError::Workload)
    }
}

impl Limits {
    /// Limits from KVM's vCPU limit and the host's available memory, capped by the guest
    /// layout.
    #[must_use]
    pub fn new(kvm_max_vcpus: usize, mem_available_mib: u64) -> Self {
        Self {
            max_vcpus: u32::try_from(kvm_max_vcpus)
                .unwrap_or(u32::MAX)
                .min(layout::MAX_VCPUS),
            max_mem_mib: u32::try_from(mem_available_mib)
                .unwrap_or(u32::MAX)
                .min(layout::MAX_MEM_MIB),
        }
    }
}

/// `MemAvailable` from the text of `/proc/meminfo`, in MiB.
#[must_use]
pub fn parse_mem_available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => Some(value / 1024),
            _ => None,
        }
    })
}

/// `MemAvailable` of the host whose procfs is at `proc_root`, in MiB.
///
/// # Errors
///
/// An I/O error if `meminfo` cannot be read, `InvalidData` if it has no `MemAvailable`.
pub fn mem_available_mib(proc_root: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(proc_root.join("meminfo"))?;
    parse_mem_available_mib(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no MemAvailable line in meminfo",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "t".into(),
            vcpus: 2,
            mem_mib: 16,
            workload: Workload::Cpu,
            level: 100,
        }
    }

    const LIMITS: Limits = Limits {
        max_vcpus: 8,
        max_mem_mib: 1024,
    };

    #[test]
    fn each_field_is_named() {
        type Case = (fn(&mut VmSpec), &'static str);
        let cases: [Case; 6] = [
            (|s| s.name.clear(), "name must not be empty"),
            (|s| s.vcpus = 0, "vcpus must be between 1 and 8"),
            (|s| s.vcpus = 9, "vcpus must be between 1 and 8"),
            (|s| s.mem_mib = 0, "mem_mib must be between 1 and 1024"),
            (|s| s.mem_mib = 1025, "mem_mib must be between 1 and 1024"),
            (|s| s.level = 101, "level must be between 0 and 100"),
        ];
        for (mutate, message) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(s.validate(&LIMITS).unwrap_err().to_string(), message);
        }
        assert!(spec().validate(&LIMITS).is_ok());
        let mut s = spec();
        s.workload = Workload::Memory {
            working_set_mib: 16,
            pages_per_s: 1,
        };
        assert!(matches!(
            s.validate(&LIMITS),
            Err(VmSpecError::Workload(WorkloadError::WorkingSet { .. }))
        ));
    }

    #[test]
    fn limits_take_the_smaller_bound() {
        let l = Limits::new(1024, 1 << 30);
        assert_eq!(l.max_vcpus, layout::MAX_VCPUS);
        assert_eq!(l.max_mem_mib, layout::MAX_MEM_MIB);
        let l = Limits::new(4, 512);
        assert_eq!((l.max_vcpus, l.max_mem_mib), (4, 512));
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   23068672 kB\n";
        assert_eq!(parse_mem_available_mib(text), Some(22528));
        assert_eq!(parse_mem_available_mib("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available_mib("MemAvailable: x kB\n"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meminfo"), text).unwrap();
        assert_eq!(mem_available_mib(dir.path()).unwrap(), 22528);
        assert!(mem_available_mib(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn json_form() {
        let s: VmSpec = serde_json::from_str(
            r#"{"name":"a","vcpus":1,"mem_mib":4,"workload":{"kind":"io","rate_per_s":10}}"#,
        )
        .unwrap();
        assert_eq!(s.level, 100);
        assert_eq!(s.workload, Workload::Io { rate_per_s: 10 });
        assert!(
            serde_json::from_str::<VmSpec>(
                r#"{"name":"a","vcpus":1,"mem_mib":4,"workload":{"kind":"cpu"},"cpus":3}"#
            )
            .is_err()
        );
    }
}
