//! NUMA topology and per-node memory from `/sys/devices/system/node/node*/`.
//!
//! procfs-core covers `/proc` only, so these sysfs files are parsed here: `meminfo` (lines
//! like `Node 0 MemTotal:       24576000 kB`), `distance` (space-separated) and `cpulist`
//! (ranges like `0-3,8-11`). A kernel without NUMA has no node directory; the host is then
//! one node 0 holding all memory and CPUs, so consumers never special-case it.

use std::io;
use std::path::Path;

use fleetmind_schema::{MemorySample, NumaNodeSample};

use super::error::{SampleError, read_required};

/// Distance of a node to itself, as the kernel (ACPI SLIT) reports it.
const LOCAL_DISTANCE: u32 = 10;

/// More CPUs than any Linux build supports (`NR_CPUS` tops out at 8192): a `cpulist` naming
/// more is garbage, and is refused rather than allocated.
const MAX_CPUS: usize = 1 << 16;

/// Reads every node under `sys_root`, sorted by node number; `None` when the kernel has no
/// node directory (or it holds no node).
pub(super) fn read_nodes(sys_root: &Path) -> Result<Option<Vec<NumaNodeSample>>, SampleError> {
    let dir = sys_root.join("devices/system/node");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SampleError::Read { path: dir, source }),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SampleError::Read {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        if let Some(node) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            numbers.push(node);
        }
    }
    if numbers.is_empty() {
        return Ok(None);
    }
    numbers.sort_unstable();
    numbers
        .into_iter()
        .map(|node| read_node(&dir.join(format!("node{node}")), node))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn read_node(dir: &Path, node: u32) -> Result<NumaNodeSample, SampleError> {
    let meminfo_path = dir.join("meminfo");
    let mem = parse_node_meminfo(&meminfo_path, &read_required(&meminfo_path)?)?;
    let distance_path = dir.join("distance");
    let distances = parse_distance(&distance_path, &read_required(&distance_path)?)?;
    let cpulist_path = dir.join("cpulist");
    let cpus = parse_cpulist(&cpulist_path, &read_required(&cpulist_path)?)?;
    Ok(NumaNodeSample {
        node,
        mem_total_bytes: mem.total,
        mem_free_bytes: mem.free,
        mem_used_bytes: mem
            .used
            .unwrap_or_else(|| mem.total.saturating_sub(mem.free)),
        hugepages_total: mem.hugepages_total,
        hugepages_free: mem.hugepages_free,
        cpus,
        distances,
    })
}

/// The one node of a host without NUMA: all of its memory and CPUs.
pub(super) fn single_node(mem: &MemorySample, cpus: Vec<u32>) -> NumaNodeSample {
    NumaNodeSample {
        node: 0,
        mem_total_bytes: mem.total_bytes,
        mem_free_bytes: mem.free_bytes,
        mem_used_bytes: mem.total_bytes.saturating_sub(mem.free_bytes),
        hugepages_total: mem.hugepages_total,
        hugepages_free: mem.hugepages_free,
        cpus,
        distances: vec![LOCAL_DISTANCE],
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct NodeMem {
    total: u64,
    free: u64,
    used: Option<u64>,
    /// Huge page counts (no unit in the file: these are pages, not bytes).
    hugepages_total: u64,
    hugepages_free: u64,
}

fn parse_node_meminfo(path: &Path, content: &str) -> Result<NodeMem, SampleError> {
    let (mut total, mut free, mut used) = (None, None, None);
    let (mut huge_total, mut huge_free) = (0, 0);
    for (index, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason| SampleError::malformed(path, index + 1, line, reason);
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let [node_word, number, key, value, rest @ ..] = tokens.as_slice() else {
            return Err(bad("expected `Node N Key: value [kB]`"));
        };
        if *node_word != "Node" || number.parse::<u32>().is_err() || !key.ends_with(':') {
            return Err(bad("expected `Node N Key: value [kB]`"));
        }
        let value: u64 = value
            .parse()
            .map_err(|_| bad("value is not an unsigned integer"))?;
        let bytes = match rest {
            [] => value,
            ["kB"] => value
                .checked_mul(1024)
                .ok_or_else(|| bad("value too large"))?,
            _ => return Err(bad("unknown unit")),
        };
        match *key {
            "MemTotal:" => total = Some(bytes),
            "MemFree:" => free = Some(bytes),
            "MemUsed:" => used = Some(bytes),
            "HugePages_Total:" => huge_total = bytes,
            "HugePages_Free:" => huge_free = bytes,
            _ => {}
        }
    }
    Ok(NodeMem {
        total: total.ok_or_else(|| SampleError::incomplete(path, "no MemTotal line"))?,
        free: free.ok_or_else(|| SampleError::incomplete(path, "no MemFree line"))?,
        used,
        hugepages_total: huge_total,
        hugepages_free: huge_free,
    })
}

fn parse_distance(path: &Path, content: &str) -> Result<Vec<u32>, SampleError> {
    let line = content.lines().next().unwrap_or_default();
    line.split_whitespace()
        .map(str::parse::<u32>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SampleError::malformed(path, 1, line, "distance is not an unsigned integer"))
}

/// Parses a kernel CPU list (`0-3,8-11`, `5`, or empty for a node without CPUs).
fn parse_cpulist(path: &Path, content: &str) -> Result<Vec<u32>, SampleError> {
    let line = content.lines().next().unwrap_or_default();
    let bad = |reason| SampleError::malformed(path, 1, line, reason);
    let mut cpus = Vec::new();
    for part in line.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        let (Ok(first), Ok(last)) = (first, last) else {
            return Err(bad("expected CPU ranges like `0-3,8-11`"));
        };
        if last < first {
            return Err(bad("CPU range ends before it starts"));
        }
        if (last - first) as usize >= MAX_CPUS - cpus.len().min(MAX_CPUS) {
            return Err(bad("more CPUs than any kernel supports"));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpulist(s: &str) -> Result<Vec<u32>, SampleError> {
        parse_cpulist(Path::new("cpulist"), s)
    }

    #[test]
    fn cpulist_ranges_and_singles() {
        assert_eq!(
            cpulist("0-3,8-11\n").expect("ok"),
            [0, 1, 2, 3, 8, 9, 10, 11]
        );
        assert_eq!(cpulist("5\n").expect("ok"), [5]);
        assert_eq!(cpulist("\n").expect("ok"), Vec::<u32>::new());
        assert_eq!(cpulist("").expect("ok"), Vec::<u32>::new());
    }

    #[test]
    fn cpulist_garbage_is_refused() {
        for bad in ["3-1", "a-b", "0-4294967295", "1,,x"] {
            let err = cpulist(bad).expect_err(bad);
            assert!(matches!(err, SampleError::Malformed { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn node_meminfo_reads_totals_and_ignores_other_keys() {
        let content = "Node 1 MemTotal:       33030144 kB\n\
                       Node 1 MemFree:         2097152 kB\n\
                       Node 1 MemUsed:        30932992 kB\n\
                       Node 1 Shmem:              8788 kB\n\
                       Node 1 HugePages_Total:  4096\n\
                       Node 1 HugePages_Free:    512\n";
        let mem = parse_node_meminfo(Path::new("meminfo"), content).expect("ok");
        assert_eq!(
            mem,
            NodeMem {
                total: 33_030_144 * 1024,
                free: 2_097_152 * 1024,
                used: Some(30_932_992 * 1024),
                hugepages_total: 4096,
                hugepages_free: 512,
            }
        );
    }

    #[test]
    fn node_meminfo_garbage_names_the_line() {
        let err = parse_node_meminfo(
            Path::new("m"),
            "Node 0 MemTotal: 1 kB\nNode 0 MemFree: x kB\n",
        )
        .expect_err("garbage");
        assert_eq!(
            err.to_string(),
            "m:2: value is not an unsigned integer: \"Node 0 MemFree: x kB\""
        );
    }

    #[test]
    fn distances_parse_in_order() {
        assert_eq!(
            parse_distance(Path::new("d"), "10 21\n").expect("ok"),
            [10, 21]
        );
        assert!(parse_distance(Path::new("d"), "10 far\n").is_err());
    }
}
