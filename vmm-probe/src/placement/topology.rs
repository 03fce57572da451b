//! The host's CPUs and NUMA nodes from sysfs: what pinning and memory moves are checked
//! against, and the free memory and distances that move plans weigh.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::host_facts::{PerNode, format_id_list, parse_id_list};

/// One online NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node number.
    pub id: u32,
    /// CPUs of the node (`cpulist`).
    pub cpus: Vec<u32>,
    /// Whether the node has memory (in `has_memory`); CPU-only nodes cannot take memory.
    pub has_memory: bool,
    /// `MemTotal` of the node's `meminfo`, in bytes.
    pub mem_total_bytes: u64,
    /// `MemFree` of the node's `meminfo`, in bytes, when read.
    pub mem_free_bytes: u64,
    /// SLIT distance from this node to each online node (10 is local).
    pub distances: BTreeMap<u32, u32>,
}

/// CPUs and NUMA nodes of the host, read from a sysfs tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTopology {
    /// The sysfs root it was read from.
    pub sys_root: PathBuf,
    /// Online CPUs, sorted.
    pub online_cpus: Vec<u32>,
    /// Online nodes by number; empty on a kernel without NUMA support.
    pub nodes: BTreeMap<u32, NodeInfo>,
}

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadTopologyError {
    /// A sysfs file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file does not have the expected shape.
    #[error("malformed {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

fn read(path: &Path) -> Result<String, ReadTopologyError> {
    std::fs::read_to_string(path).map_err(|source| ReadTopologyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_list(path: &Path) -> Result<Vec<u32>, ReadTopologyError> {
    parse_id_list(&read(path)?).map_err(|_| ReadTopologyError::Malformed {
        path: path.to_owned(),
        reason: "not a CPU or node list",
    })
}

/// `(MemTotal, MemFree)` in bytes from a node's `meminfo` (`Node 0 MemFree:  6531252 kB`).
fn read_meminfo(path: &Path) -> Result<(u64, u64), ReadTopologyError> {
    let text = read(path)?;
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let mut words = line.split_ascii_whitespace().skip(2);
            (words.next()? == key).then(|| words.next()?.parse::<u64>().ok())?
        })
    };
    let malformed = |reason| ReadTopologyError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let total = field("MemTotal:").ok_or(malformed("no MemTotal"))?;
    let free = field("MemFree:").ok_or(malformed("no MemFree"))?;
    Ok((total.saturating_mul(1024), free.saturating_mul(1024)))
}

impl HostTopology {
    /// Reads CPUs and nodes under `sys_root` (`/sys` on a live host): `devices/system/cpu/online`
    /// and, for each node in `devices/system/node/online`, its `cpulist`, `meminfo` and
    /// `distance`. A kernel without NUMA (no `devices/system/node`) gives no nodes.
    ///
    /// # Errors
    /// When a file that should be there cannot be read or is malformed.
    pub fn read(sys_root: &Path) -> Result<Self, ReadTopologyError> {
        let system = sys_root.join("devices/system");
        let online_cpus = read_list(&system.join("cpu/online"))?;
        let node_dir = system.join("node");
        let mut nodes = BTreeMap::new();
        if node_dir.is_dir() {
            let online = read_list(&node_dir.join("online"))?;
            let with_memory = match read_list(&node_dir.join("has_memory")) {
                Ok(list) => list,
                // Older kernels: assume every online node has memory.
                Err(ReadTopologyError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    online.clone()
                }
                Err(e) => return Err(e),
            };
            for &id in &online {
                let dir = node_dir.join(format!("node{id}"));
                let (mem_total_bytes, mem_free_bytes) = read_meminfo(&dir.join("meminfo"))?;
                let distance_path = dir.join("distance");
                let distance_text = read(&distance_path)?;
                let values: Vec<u32> = distance_text
                    .split_ascii_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| ReadTopologyError::Malformed {
                        path: distance_path.clone(),
                        reason: "not a list of numbers",
                    })?;
                if values.len() != online.len() {
                    return Err(ReadTopologyError::Malformed {
                        path: distance_path,
                        reason: "not one distance per online node",
                    });
                }
                nodes.insert(
                    id,
                    NodeInfo {
                        id,
                        cpus: read_list(&dir.join("cpulist"))?,
                        has_memory: with_memory.contains(&id),
                        mem_total_bytes,
                        mem_free_bytes,
                        distances: online.iter().copied().zip(values).collect(),
                    },
                );
            }
        }
        Ok(Self {
            sys_root: sys_root.to_owned(),
            online_cpus,
            nodes,
        })
    }

    /// Free bytes per node with memory.
    #[must_use]
    pub fn free_bytes_per_node(&self) -> PerNode {
        self.nodes
            .values()
            .filter(|n| n.has_memory)
            .map(|n| (n.id, n.mem_free_bytes))
            .collect()
    }

    /// Distances from `node` to each online node; empty for an unknown node.
    #[must_use]
    pub fn distances_from(&self, node: u32) -> BTreeMap<u32, u32> {
        self.nodes
            .get(&node)
            .map(|n| n.distances.clone())
            .unwrap_or_default()
    }

    /// The node a CPU belongs to.
    #[must_use]
    pub fn node_of_cpu(&self, cpu: u32) -> Option<u32> {
        self.nodes
            .values()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.id)
    }

    /// The online CPUs as the kernel writes them (`0-3,8`).
    #[must_use]
    pub fn online_cpus_text(&self) -> String {
        format_id_list(&self.online_cpus)
    }

    /// The online nodes as the kernel writes them.
    #[must_use]
    pub fn online_nodes_text(&self) -> String {
        format_id_list(&self.nodes.keys().copied().collect::<Vec<_>>())
    }
}
