//! What the host kernel knows of a QEMU process: its resident memory, where its guest RAM
//! lives, and its vCPU threads' scheduling.
//!
//! QMP does not tell where guest RAM is in QEMU's address space, so we find it in
//! `/proc/<pid>/maps`: the read-write mapping exactly as large as the configured guest memory
//! (QEMU maps each RAM block of the `pc.ram`/memory-backend kind as one mapping of its size,
//! anonymous or memfd/hugetlbfs backed), or failing that the largest read-write anonymous
//! mapping. Its per-node residency then comes from `numa_maps` via
//! [`fleetmind_vmm_probe::host_facts::numa_residency`] with a [`MappingFilter::StartIn`] over
//! the mapping's range (a range, not one start, because `mbind` or `madvise` on part of guest
//! RAM splits the mapping). Guests with several RAM blocks (hotplugged DIMMs) are counted by
//! their main block only. `rss_bytes` is the whole QEMU process's `VmRSS` (guest RAM dominates
//! it; QEMU's own heap and code are included).

use std::path::Path;

use fleetmind_schema::NodeBytes;
use fleetmind_vmm_probe::host_facts::{
    MappingFilter, numa_residency, thread_allowed_cpus, thread_last_cpu, thread_schedstat,
};

use crate::vm::VcpuReading;

/// One line of `/proc/<pid>/maps`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    writable: bool,
    path: String,
}

fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            // offset, dev, inode, then the path (which may contain spaces).
            let path = fields.nth(3).map_or(String::new(), |first| {
                let rest: Vec<&str> = fields.collect();
                std::iter::once(first)
                    .chain(rest)
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                writable: perms.starts_with("rw"),
                path,
            })
        })
        .collect()
}

/// The address range of guest RAM in QEMU's address space (see the module docs).
fn guest_ram_range(maps: &[Mapping], mem_bytes: u64) -> Option<(u64, u64)> {
    let size = |m: &Mapping| m.end.saturating_sub(m.start);
    let exact = maps
        .iter()
        .filter(|m| m.writable && mem_bytes > 0 && size(m) == mem_bytes)
        .max_by_key(|m| m.start);
    let largest_anon = || {
        maps.iter()
            .filter(|m| m.writable && m.path.is_empty())
            .max_by_key(|m| size(m))
    };
    exact.or_else(largest_anon).map(|m| (m.start, m.end))
}

/// Resident guest RAM per NUMA node of QEMU process `pid`; empty when it cannot be read (the
/// process is gone, or the kernel has no NUMA).
pub(crate) fn guest_numa_resident(proc_root: &Path, pid: i32, mem_bytes: u64) -> Vec<NodeBytes> {
    let maps_path = proc_root.join(pid.to_string()).join("maps");
    let Ok(text) = std::fs::read_to_string(&maps_path) else {
        return Vec::new();
    };
    let Some((start, end)) = guest_ram_range(&parse_maps(&text), mem_bytes) else {
        return Vec::new();
    };
    match numa_residency(proc_root, pid, MappingFilter::StartIn { start, end }) {
        Ok(per_node) => per_node
            .into_iter()
            .map(|(node, bytes)| NodeBytes { node, bytes })
            .collect(),
        Err(e) => {
            tracing::debug!(pid, error = %e, "no NUMA residency for a QEMU process");
            Vec::new()
        }
    }
}

/// `VmRSS` of process `pid` in bytes, 0 when unknown.
pub(crate) fn rss_bytes(proc_root: &Path, pid: i32) -> u64 {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"))
        .ok()
        .and_then(|text| parse_vm_rss(&text))
        .unwrap_or(0)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// A vCPU's reading from procfs: what the kernel knows of its thread `tid` in process `pid`.
/// Fields stay `None` (or empty) when the thread cannot be read (it just exited).
pub(crate) fn vcpu_reading(
    proc_root: &Path,
    pid: Option<i32>,
    vcpu: u32,
    tid: Option<u32>,
    exits: Option<u64>,
) -> VcpuReading {
    let mut reading = VcpuReading {
        vcpu,
        tid,
        run_ns: None,
        wait_ns: None,
        host_cpu: None,
        affinity: Vec::new(),
        exits,
    };
    let (Some(pid), Some(tid)) = (pid, tid.and_then(|t| i32::try_from(t).ok())) else {
        return reading;
    };
    if let Ok(stat) = thread_schedstat(proc_root, pid, tid) {
        reading.run_ns = Some(stat.run_ns);
        reading.wait_ns = Some(stat.wait_ns);
    }
    reading.host_cpu = thread_last_cpu(proc_root, pid, tid).ok();
    reading.affinity = thread_allowed_cpus(proc_root, pid, tid).unwrap_or_default();
    reading
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0e00000 r--p 00000000 08:01 1234 /usr/bin/qemu-system-x86_64
55d0c2000000-55d0c4000000 rw-p 00000000 00:00 0 [heap]
7f1000000000-7f1002000000 rw-p 00000000 00:00 0
7f2000000000-7f2000800000 rw-p 00000000 00:00 0
7f3000000000-7f3000200000 rw-s 00000000 00:01 99 /memfd:pc.ram (deleted)
";

    #[test]
    fn guest_ram_is_the_mapping_of_guest_size_else_the_largest_anonymous() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps[4].path, "/memfd:pc.ram (deleted)");
        // 2 MiB guest in a memfd: the exact size wins.
        assert_eq!(
            guest_ram_range(&maps, 2 << 20),
            Some((0x7f30_0000_0000, 0x7f30_0020_0000))
        );
        // No mapping of the guest's size: the largest anonymous one ([heap] is named).
        assert_eq!(
            guest_ram_range(&maps, 3 << 20),
            Some((0x7f10_0000_0000, 0x7f10_0200_0000))
        );
    }

    #[test]
    fn vm_rss_in_bytes() {
        assert_eq!(
            parse_vm_rss("Name:\tqemu\nVmRSS:\t   2048 kB\nThreads:\t5\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_vm_rss("Name:\tkthread\n"), None);
    }

    #[test]
    fn a_gone_thread_reads_as_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = vcpu_reading(dir.path(), Some(1), 0, Some(2), Some(5));
        assert_eq!(r.tid, Some(2));
        assert_eq!(r.exits, Some(5));
        assert_eq!(r.run_ns, None);
        assert!(r.affinity.is_empty());
    }
}
