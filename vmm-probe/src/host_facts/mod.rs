//! Facts about VMM threads and memory from procfs: per-thread CPU time and run-queue delay,
//! the CPU a thread last ran on and the CPUs it may run on, and resident memory per NUMA node.
//!
//! KVM statistics say what a guest asked of KVM; they do not say whether its vCPU threads got
//! the host CPU when they wanted it, or whether its memory sits on the node its vCPUs run on.
//! Those are host facts, and procfs has them: `/proc/<pid>/task/<tid>/{schedstat,stat,status}`
//! and `/proc/<pid>/numa_maps`. Every reader takes the procfs root as a parameter so that the
//! fixture tests can stand in recorded trees for hosts we do not have (two NUMA nodes, odd
//! thread names). The parsers are public too, for callers that already hold the text.

mod numa_maps;
mod thread;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use numa_maps::{
    MappingFilter, NumaMapping, NumaMapsLineError, ReadNumaMapsError, numa_residency,
    parse_numa_maps, read_numa_maps, residency,
};
pub use thread::{
    MalformedError, ReadThreadError, SchedStat, ThreadStat, ThreadStatus, parse_schedstat,
    parse_thread_stat, parse_thread_status, thread_allowed_cpus, thread_last_cpu, thread_schedstat,
    thread_stat, thread_status,
};

/// A quantity per NUMA node (bytes, pages), by node number.
pub type PerNode = BTreeMap<u32, u64>;

/// Largest CPU or node number accepted in a list (the kernel's limit is 8192 CPUs).
const MAX_LIST_ID: u32 = 1 << 16;

/// Why a CPU or node list (`0-3,8,10-11`) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdListError {
    /// A part is not a number or a range of numbers.
    #[error("bad list element {part:?}")]
    BadElement {
        /// The offending part.
        part: String,
    },
    /// A range ends before it starts.
    #[error("range {part:?} is reversed")]
    Reversed {
        /// The offending part.
        part: String,
    },
    /// A number beyond any CPU or node count.
    #[error("id {id} is beyond {MAX_LIST_ID}")]
    TooLarge {
        /// The number.
        id: u32,
    },
}

/// Parses a kernel CPU or node list (`Cpus_allowed_list`, sysfs `online`, `cpulist`):
/// comma-separated numbers and `a-b` ranges, possibly empty. Returns the ids sorted, without
/// duplicates.
///
/// # Errors
/// On anything but numbers and ranges, reversed ranges, and ids of 65536 and above.
pub fn parse_id_list(text: &str) -> Result<Vec<u32>, IdListError> {
    let mut ids = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || IdListError::BadElement {
            part: part.to_owned(),
        };
        let number = |s: &str| -> Result<u32, IdListError> {
            let id: u32 = s.trim().parse().map_err(|_| bad())?;
            if id >= MAX_LIST_ID {
                return Err(IdListError::TooLarge { id });
            }
            Ok(id)
        };
        match part.split_once('-') {
            None => ids.push(number(part)?),
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if b < a {
                    return Err(IdListError::Reversed {
                        part: part.to_owned(),
                    });
                }
                ids.extend(a..=b);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Formats ids as the kernel does (`0-3,8,10-11`); the inverse of [`parse_id_list`] for
/// sorted ids.
#[must_use]
pub fn format_id_list(ids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && end.checked_add(1) == Some(ids[i + 1]) {
            i += 1;
            end = ids[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// `proc_root/<pid>/task/<tid>/<file>`.
fn task_file(proc_root: &Path, pid: i32, tid: i32, file: &str) -> PathBuf {
    proc_root
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string())
        .join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists() {
        assert_eq!(
            parse_id_list("0-3,8,10-11\n"),
            Ok(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_id_list("1"), Ok(vec![1]));
        assert_eq!(parse_id_list(""), Ok(vec![]));
        assert_eq!(parse_id_list("\n"), Ok(vec![]));
        assert_eq!(parse_id_list("3,1,1-2"), Ok(vec![1, 2, 3]));
        for text in ["0-3,8,10-11", "1", "", "0,2,4-5"] {
            let ids = parse_id_list(text).expect("parses");
            assert_eq!(format_id_list(&ids), text);
        }
        assert!(matches!(
            parse_id_list("a"),
            Err(IdListError::BadElement { .. })
        ));
        assert!(matches!(
            parse_id_list("1-"),
            Err(IdListError::BadElement { .. })
        ));
        assert!(matches!(
            parse_id_list("3-1"),
            Err(IdListError::Reversed { .. })
        ));
        assert!(matches!(
            parse_id_list("0-4294967295"),
            Err(IdListError::TooLarge { id: 4_294_967_295 })
        ));
    }
}
