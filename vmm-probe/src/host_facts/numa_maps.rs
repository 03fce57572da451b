//! Resident memory per NUMA node from `/proc/<pid>/numa_maps`.
//!
//! Each line is one mapping (VMA): its start address, its memory policy, what backs it, then
//! page counts, `N<node>=<pages>` per node, and `kernelpagesize_kB`:
//!
//! ```text
//! 7f0000000000 default anon=65536 dirty=65536 active=0 N0=40000 N1=25536 kernelpagesize_kB=4
//! 7f4000000000 bind:1 file=/memfd:guest\040ram (deleted) dirty=512 N1=512 kernelpagesize_kB=2048
//! ```
//!
//! The policy may itself contain spaces (`prefer (many):0-1`, `weighted interleave:0-1`), and
//! the counts are printed only when the mapping has pages. Page counts are in the mapping's
//! page size (huge pages for hugetlb mappings; base pages for transparent huge pages), so bytes
//! are `pages × kernelpagesize_kB × 1024`.

use std::io;
use std::path::{Path, PathBuf};

use super::PerNode;

/// One line of `numa_maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaMapping {
    /// Start address of the mapping.
    pub start: u64,
    /// The memory policy as printed (`default`, `bind:0`, `interleave:0-1`...).
    pub policy: String,
    /// The backing file (`file=`), escaped as the kernel prints it; `None` for anonymous
    /// memory (including heap and stack). memfd and hugetlb memory have a file.
    pub file: Option<String>,
    /// The process heap.
    pub heap: bool,
    /// The main thread's stack.
    pub stack: bool,
    /// A hugetlb mapping.
    pub huge: bool,
    /// Anonymous pages (`anon=`).
    pub anon_pages: u64,
    /// Dirty pages (`dirty=`).
    pub dirty_pages: u64,
    /// Pages per node (`N<node>=`), in units of `page_size_kb`.
    pub node_pages: PerNode,
    /// The mapping's page size in KiB (`kernelpagesize_kB`; 4 when not printed, which the
    /// kernel does only for mappings without pages).
    pub page_size_kb: u64,
}

impl NumaMapping {
    /// Whether the mapping is anonymous memory (no backing file).
    #[must_use]
    pub fn is_anonymous(&self) -> bool {
        self.file.is_none()
    }

    /// Resident bytes per node.
    #[must_use]
    pub fn node_bytes(&self) -> PerNode {
        self.node_pages
            .iter()
            .map(|(&node, &pages)| {
                (
                    node,
                    pages.saturating_mul(self.page_size_kb).saturating_mul(1024),
                )
            })
            .collect()
    }
}

/// Which mappings to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingFilter {
    /// Every mapping.
    All,
    /// Mappings without a backing file (see [`NumaMapping::is_anonymous`]).
    Anonymous,
    /// Mappings whose start address lies in `[start, end)`: guest memory, whose host address
    /// range the VMM knows.
    StartIn {
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
    },
}

impl MappingFilter {
    /// Whether `mapping` passes.
    #[must_use]
    pub fn matches(self, mapping: &NumaMapping) -> bool {
        match self {
            Self::All => true,
            Self::Anonymous => mapping.is_anonymous(),
            Self::StartIn { start, end } => (start..end).contains(&mapping.start),
        }
    }
}

/// A malformed `numa_maps` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct NumaMapsLineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Why `numa_maps` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadNumaMapsError {
    /// The file could not be read (no such process, or a kernel without NUMA).
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A line does not have the expected shape.
    #[error("malformed {path}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line and what is wrong.
        #[source]
        source: NumaMapsLineError,
    },
}

/// Keys whose presence ends the policy; unknown keys after them are ignored.
const KNOWN_KEYS: &[&str] = &[
    "file",
    "anon",
    "dirty",
    "mapped",
    "mapcount",
    "mapmax",
    "swapcache",
    "active",
    "writeback",
    "kernelpagesize_kB",
];

fn is_attribute(token: &str) -> bool {
    if matches!(token, "heap" | "stack" | "huge") {
        return true;
    }
    let Some((key, _)) = token.split_once('=') else {
        return false;
    };
    KNOWN_KEYS.contains(&key) || node_digits(key).is_some()
}

/// `N<digits>` → the digits.
fn node_digits(key: &str) -> Option<&str> {
    let digits = key.strip_prefix('N')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

fn parse_line(text: &str, line: usize) -> Result<NumaMapping, NumaMapsLineError> {
    let err = |reason| NumaMapsLineError { line, reason };
    let mut tokens = text.split_ascii_whitespace().peekable();
    let start = tokens
        .next()
        .and_then(|a| u64::from_str_radix(a, 16).ok())
        .ok_or(err("no start address"))?;
    let mut policy_words = Vec::new();
    while let Some(token) = tokens.next_if(|t| !is_attribute(t)) {
        policy_words.push(token);
    }
    let mut mapping = NumaMapping {
        start,
        policy: policy_words.join(" "),
        file: None,
        heap: false,
        stack: false,
        huge: false,
        anon_pages: 0,
        dirty_pages: 0,
        node_pages: PerNode::new(),
        page_size_kb: 4,
    };
    for token in tokens {
        match token {
            "heap" => mapping.heap = true,
            "stack" => mapping.stack = true,
            "huge" => mapping.huge = true,
            _ => {}
        }
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| err("count is not a number"))
        };
        match key {
            "file" => mapping.file = Some(value.to_owned()),
            "anon" => mapping.anon_pages = number()?,
            "dirty" => mapping.dirty_pages = number()?,
            "kernelpagesize_kB" => mapping.page_size_kb = number()?,
            _ => {
                if let Some(digits) = node_digits(key) {
                    let node = digits.parse().map_err(|_| err("bad node number"))?;
                    mapping.node_pages.insert(node, number()?);
                }
            }
        }
    }
    Ok(mapping)
}

/// Parses the text of a `numa_maps` file. Empty lines are skipped.
///
/// # Errors
/// On a line without a hexadecimal start address, or with a count that is not a number.
pub fn parse_numa_maps(text: &str) -> Result<Vec<NumaMapping>, NumaMapsLineError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l, i + 1))
        .collect()
}

/// Reads and parses `proc_root/<pid>/numa_maps`.
///
/// # Errors
/// When the file cannot be read or is malformed.
pub fn read_numa_maps(proc_root: &Path, pid: i32) -> Result<Vec<NumaMapping>, ReadNumaMapsError> {
    let path = proc_root.join(pid.to_string()).join("numa_maps");
    let text = std::fs::read_to_string(&path).map_err(|source| ReadNumaMapsError::Io {
        path: path.clone(),
        source,
    })?;
    parse_numa_maps(&text).map_err(|source| ReadNumaMapsError::Malformed { path, source })
}

/// Resident bytes per node of the mappings that pass `filter`. Nodes without resident
/// pages are absent.
#[must_use]
pub fn residency(mappings: &[NumaMapping], filter: MappingFilter) -> PerNode {
    let mut total = PerNode::new();
    for mapping in mappings.iter().filter(|m| filter.matches(m)) {
        for (node, bytes) in mapping.node_bytes() {
            let entry = total.entry(node).or_insert(0);
            *entry = entry.saturating_add(bytes);
        }
    }
    total
}

/// Resident bytes per node of the mappings of process `pid` that pass `filter`.
///
/// # Errors
/// As [`read_numa_maps`].
pub fn numa_residency(
    proc_root: &Path,
    pid: i32,
    filter: MappingFilter,
) -> Result<PerNode, ReadNumaMapsError> {
    Ok(residency(&read_numa_maps(proc_root, pid)?, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_node_anonymous_line() {
        let m = parse_line(
            "7f0000000000 default anon=65536 dirty=65536 active=0 N0=40000 N1=25536 kernelpagesize_kB=4",
            1,
        )
        .expect("parses");
        assert_eq!(m.start, 0x7f00_0000_0000);
        assert_eq!(m.policy, "default");
        assert!(m.is_anonymous());
        assert_eq!(
            (m.anon_pages, m.dirty_pages, m.page_size_kb),
            (65536, 65536, 4)
        );
        assert_eq!(
            m.node_bytes(),
            PerNode::from([(0, 40000 * 4096), (1, 25536 * 4096)])
        );
    }

    #[test]
    fn policies_with_spaces_and_flags() {
        for (line, policy) in [
            (
                "1000 prefer (many):0-1 anon=1 N1=1 kernelpagesize_kB=4",
                "prefer (many):0-1",
            ),
            (
                "1000 weighted interleave:0-1 heap anon=2 N0=2",
                "weighted interleave:0-1",
            ),
            ("1000 bind=static:1 stack anon=1 N1=1", "bind=static:1"),
            ("1000 interleave:0-3", "interleave:0-3"),
            ("1000 default", "default"),
        ] {
            assert_eq!(parse_line(line, 1).expect(line).policy, policy, "{line}");
        }
    }

    #[test]
    fn huge_and_file_mappings() {
        let m = parse_line(
            r"7f4000000000 bind:1 file=/memfd:guest\040ram\040(deleted) huge dirty=512 N1=512 kernelpagesize_kB=2048",
            1,
        )
        .expect("parses");
        assert!(m.huge && !m.is_anonymous());
        assert_eq!(m.file.as_deref(), Some(r"/memfd:guest\040ram\040(deleted)"));
        assert_eq!(m.node_bytes(), PerNode::from([(1, 512 * 2048 * 1024)]));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(
            parse_line("zz default", 3),
            Err(NumaMapsLineError {
                line: 3,
                reason: "no start address"
            })
        );
        assert!(parse_line("1000 default anon=x", 1).is_err());
        assert!(parse_line("1000 default N0=-1", 1).is_err());
        assert!(parse_line("1000 default N99999999999=1", 1).is_err());
        // Unknown future attributes are ignored.
        let m =
            parse_line("1000 default anon=1 newthing=7 N0=1 kernelpagesize_kB=4", 1).expect("ok");
        assert_eq!(m.node_pages, PerNode::from([(0, 1)]));
    }

    #[test]
    fn filters() {
        let maps = parse_numa_maps(
            "1000 default anon=1 N0=1 kernelpagesize_kB=4\n\
             2000 default file=/bin/x mapped=2 N1=2 kernelpagesize_kB=4\n\
             \n\
             3000 default heap anon=4 N1=4 kernelpagesize_kB=4\n",
        )
        .expect("parses");
        assert_eq!(
            residency(&maps, MappingFilter::All),
            PerNode::from([(0, 4096), (1, 6 * 4096)])
        );
        assert_eq!(
            residency(&maps, MappingFilter::Anonymous),
            PerNode::from([(0, 4096), (1, 4 * 4096)])
        );
        assert_eq!(
            residency(
                &maps,
                MappingFilter::StartIn {
                    start: 0x2000,
                    end: 0x3000
                }
            ),
            PerNode::from([(1, 2 * 4096)])
        );
        assert!(
            residency(
                &maps,
                MappingFilter::StartIn {
                    start: 0x4000,
                    end: 0x3000
                }
            )
            .is_empty()
        );
    }
}
