//! NUMA placement of memory of this process: binding a range to a node (`mbind`), moving
//! pages (`move_pages`), and asking which node each page is on.
//!
//! None of these read or write the memory itself: the kernel copies page contents when it
//! migrates them, so they are safe functions even on memory a guest is using. Addresses are
//! plain `usize` host virtual addresses (the VMM's guest memory mapping).

use std::io;

use super::HostTopology;

/// `mbind` flags (`include/uapi/linux/mempolicy.h`); libc does not have them.
const MPOL_MF_STRICT: libc::c_uint = 1 << 0;
const MPOL_MF_MOVE: libc::c_uint = 1 << 1;
/// `move_pages` flag: move only pages mapped by this process alone.
const MOVE_PAGES_MOVE: libc::c_int = 1 << 1;

/// Node mask bits we pass to `mbind` (16 words).
const MASK_NODES: u32 = 1024;
type NodeMask = [libc::c_ulong; MASK_NODES as usize / 64];

/// Pages per `move_pages` call, to bound the arrays we allocate per call.
const PAGES_PER_CALL: usize = 16 * 1024;

/// Where a page is, or why it could not be placed (the per-page status of `move_pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageNode {
    /// The page is on this node.
    Node(u32),
    /// The page is not present (never touched, or swapped out): `-ENOENT`.
    NotPresent,
    /// The kernel gave this error for the page (`EBUSY`, `EACCES` for pages shared with
    /// other processes, `EFAULT` for the zero page or an unmapped address...).
    Error(i32),
}

impl PageNode {
    fn from_status(status: libc::c_int) -> Self {
        match u32::try_from(status) {
            Ok(node) => Self::Node(node),
            Err(_) if status == -libc::ENOENT => Self::NotPresent,
            Err(_) => Self::Error(status.saturating_neg()),
        }
    }
}

/// Why memory could not be bound or moved.
#[derive(Debug, thiserror::Error)]
pub enum MoveMemoryError {
    /// The start address is not page-aligned.
    #[error("address {addr:#x} is not page-aligned")]
    Unaligned {
        /// The address.
        addr: usize,
    },
    /// The range is empty.
    #[error("empty range")]
    Empty,
    /// sysfs shows no NUMA nodes (a kernel without NUMA).
    #[error("this host has no NUMA nodes")]
    NoNuma,
    /// The node is not online (or does not exist).
    #[error("node {node} is not online (online nodes: {online})")]
    NodeOffline {
        /// The node.
        node: u32,
        /// The online nodes, as a list.
        online: String,
    },
    /// The node has no memory (a CPU-only node).
    #[error("node {node} has no memory")]
    NodeWithoutMemory {
        /// The node.
        node: u32,
    },
    /// `mbind` failed: `EFAULT` for a range that is not all mapped, `EIO` when some pages
    /// could not be moved, `ENOMEM` when the node is out of memory.
    #[error("mbind of {len} bytes at {addr:#x} to node {node} failed")]
    Mbind {
        /// Start address.
        addr: usize,
        /// Length in bytes.
        len: usize,
        /// Target node.
        node: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `move_pages` failed as a whole.
    #[error("move_pages to node {node} failed")]
    MovePages {
        /// Target node.
        node: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why the nodes of pages could not be queried.
#[derive(Debug, thiserror::Error)]
pub enum QueryPagesError {
    /// The start address is not page-aligned.
    #[error("address {addr:#x} is not page-aligned")]
    Unaligned {
        /// The address.
        addr: usize,
    },
    /// `move_pages` failed as a whole.
    #[error("move_pages query failed")]
    MovePages(#[source] io::Error),
}

/// The base page size.
#[must_use]
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Checks that `node` can take memory.
fn check_node(topology: &HostTopology, node: u32) -> Result<(), MoveMemoryError> {
    if topology.nodes.is_empty() {
        return Err(MoveMemoryError::NoNuma);
    }
    match topology.nodes.get(&node) {
        None => Err(MoveMemoryError::NodeOffline {
            node,
            online: topology.online_nodes_text(),
        }),
        Some(info) if !info.has_memory => Err(MoveMemoryError::NodeWithoutMemory { node }),
        Some(_) if node >= MASK_NODES => Err(MoveMemoryError::NodeOffline {
            node,
            online: topology.online_nodes_text(),
        }),
        Some(_) => Ok(()),
    }
}

/// Binds `[addr, addr + len)` to `node` with `mbind(MPOL_BIND)`: pages faulted in from now on
/// come from `node`. With `move_existing`, pages already present elsewhere are migrated too
/// (`MPOL_MF_MOVE | MPOL_MF_STRICT`), and the call fails if some cannot be.
///
/// # Errors
/// [`MoveMemoryError::NodeOffline`] and [`MoveMemoryError::NodeWithoutMemory`] name a node
/// `topology` says cannot take memory; [`MoveMemoryError::Mbind`] when the kernel refuses
/// (range not mapped, pages that cannot move, node out of memory).
pub fn bind_memory(
    topology: &HostTopology,
    addr: usize,
    len: usize,
    node: u32,
    move_existing: bool,
) -> Result<(), MoveMemoryError> {
    if len == 0 {
        return Err(MoveMemoryError::Empty);
    }
    if !addr.is_multiple_of(page_size()) {
        return Err(MoveMemoryError::Unaligned { addr });
    }
    check_node(topology, node)?;
    let mut mask: NodeMask = [0; MASK_NODES as usize / 64];
    mask[node as usize / 64] |= 1 << (node % 64);
    let flags = if move_existing {
        MPOL_MF_MOVE | MPOL_MF_STRICT
    } else {
        0
    };
    // The kernel reads maxnode - 1 bits of the mask.
    let maxnode = libc::c_ulong::from(MASK_NODES) + 1;
    // SAFETY: mbind changes the memory policy of the range and may migrate its pages, which
    // keeps their contents; it does not read or write the memory through our pointers. The
    // mask is as large as `maxnode - 1` bits and only read.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            libc::MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            flags,
        )
    };
    if ret != 0 {
        return Err(MoveMemoryError::Mbind {
            addr,
            len,
            node,
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(addr, len, node, move_existing, "bound memory to node");
    Ok(())
}

/// One `move_pages` call for this process on `pages`; `nodes` empty means query.
fn move_pages_call(pages: &[usize], nodes: Option<&[libc::c_int]>) -> io::Result<Vec<PageNode>> {
    let mut status: Vec<libc::c_int> = vec![0; pages.len()];
    let nodes_ptr = nodes.map_or(std::ptr::null(), <[libc::c_int]>::as_ptr);
    // SAFETY: `pages`, `nodes` (when given) and `status` all have `pages.len()` entries; the
    // kernel reads the first two and writes `status`. Moving pages keeps their contents, and
    // querying changes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len(),
            pages.as_ptr(),
            nodes_ptr,
            status.as_mut_ptr(),
            MOVE_PAGES_MOVE,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(status.into_iter().map(PageNode::from_status).collect())
}

/// The page addresses of `[addr, addr + len)`.
fn page_addresses(addr: usize, len: usize) -> impl Iterator<Item = usize> {
    let page = page_size();
    (0..len.div_ceil(page)).map(move |i| addr + i * page)
}

/// Which node each page of `[addr, addr + len)` is on (`move_pages` with no target nodes).
///
/// # Errors
/// When `addr` is not page-aligned or the call fails as a whole.
pub fn query_nodes_of_pages(addr: usize, len: usize) -> Result<Vec<PageNode>, QueryPagesError> {
    if !addr.is_multiple_of(page_size()) {
        return Err(QueryPagesError::Unaligned { addr });
    }
    let pages: Vec<usize> = page_addresses(addr, len).collect();
    let mut out = Vec::with_capacity(pages.len());
    for chunk in pages.chunks(PAGES_PER_CALL) {
        out.extend(move_pages_call(chunk, None).map_err(QueryPagesError::MovePages)?);
    }
    Ok(out)
}

/// Moves the pages at the given page-aligned addresses to `node`, page by page
/// (`move_pages`); returns where each page is afterwards, or why it could not be moved.
/// Pages mapped by other processes too are left where they are (`EACCES`).
///
/// # Errors
/// When `node` cannot take memory (as [`bind_memory`]) or the call fails as a whole.
pub fn move_pages(
    topology: &HostTopology,
    pages: &[usize],
    node: u32,
) -> Result<Vec<PageNode>, MoveMemoryError> {
    check_node(topology, node)?;
    let page = page_size();
    if let Some(&addr) = pages.iter().find(|&&a| !a.is_multiple_of(page)) {
        return Err(MoveMemoryError::Unaligned { addr });
    }
    let node_c = libc::c_int::try_from(node).map_err(|_| MoveMemoryError::NodeOffline {
        node,
        online: topology.online_nodes_text(),
    })?;
    let mut out = Vec::with_capacity(pages.len());
    for chunk in pages.chunks(PAGES_PER_CALL) {
        let nodes = vec![node_c; chunk.len()];
        out.extend(
            move_pages_call(chunk, Some(&nodes))
                .map_err(|source| MoveMemoryError::MovePages { node, source })?,
        );
    }
    let moved = out.iter().filter(|p| **p == PageNode::Node(node)).count();
    tracing::info!(pages = pages.len(), moved, node, "moved pages");
    Ok(out)
}

/// Moves every page of `[addr, addr + len)` to `node`; see [`move_pages`].
///
/// # Errors
/// As [`move_pages`], and when `addr` is not page-aligned or `len` is 0.
pub fn move_range(
    topology: &HostTopology,
    addr: usize,
    len: usize,
    node: u32,
) -> Result<Vec<PageNode>, MoveMemoryError> {
    if len == 0 {
        return Err(MoveMemoryError::Empty);
    }
    if !addr.is_multiple_of(page_size()) {
        return Err(MoveMemoryError::Unaligned { addr });
    }
    let pages: Vec<usize> = page_addresses(addr, len).collect();
    move_pages(topology, &pages, node)
}

/// Pages per node in a [`query_nodes_of_pages`] or [`move_pages`] result; pages that are not
/// present or in error are not counted.
#[must_use]
pub fn pages_per_node(pages: &[PageNode]) -> crate::host_facts::PerNode {
    let mut per_node = crate::host_facts::PerNode::new();
    for page in pages {
        if let PageNode::Node(node) = page {
            *per_node.entry(*node).or_insert(0) += 1;
        }
    }
    per_node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_facts::{MappingFilter, numa_residency};
    use crate::placement::NodeInfo;
    use std::path::Path;

    const REGION: usize = 64 << 20;

    /// An anonymous private mapping, unmapped on drop.
    struct Region {
        addr: usize,
        len: usize,
    }

    impl Region {
        fn new(len: usize) -> Self {
            // SAFETY: a fresh anonymous mapping; no existing memory is touched.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "mmap");
            Self {
                addr: ptr as usize,
                len,
            }
        }

        /// Writes one byte per page, so that every page is present.
        fn touch(&mut self) {
            for page in page_addresses(self.addr, self.len) {
                // SAFETY: `page` is inside our private read-write mapping.
                unsafe { std::ptr::write_volatile(page as *mut u8, 1) };
            }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }

    fn live_topology() -> HostTopology {
        HostTopology::read(Path::new("/sys")).expect("sysfs topology")
    }

    #[test]
    fn bind_64_mib_to_node_0_and_see_it_there() {
        let topology = live_topology();
        if !topology.nodes.contains_key(&0) {
            crate::test_utils::record_skip("placement::bind_64_mib", "no NUMA node 0 in sysfs");
            return;
        }
        let mut region = Region::new(REGION);
        region.touch();
        bind_memory(&topology, region.addr, region.len, 0, true).expect("bind to node 0");

        let pages = query_nodes_of_pages(region.addr, region.len).expect("query");
        assert_eq!(pages.len(), REGION / page_size());
        assert!(
            pages.iter().all(|p| *p == PageNode::Node(0)),
            "{:?}",
            pages_per_node(&pages)
        );

        // mbind split the mapping at the range, so numa_maps has a line starting at addr.
        let resident = numa_residency(
            Path::new("/proc"),
            i32::try_from(std::process::id()).expect("pid"),
            MappingFilter::StartIn {
                start: region.addr as u64,
                end: (region.addr + region.len) as u64,
            },
        )
        .expect("numa_maps");
        assert_eq!(
            resident.get(&0).copied(),
            Some(REGION as u64),
            "{resident:?}"
        );
        assert_eq!(resident.len(), 1, "{resident:?}");

        // Page-granular moves to the node the pages are on already.
        let moved = move_range(&topology, region.addr, 16 * page_size(), 0).expect("move");
        assert_eq!(moved, vec![PageNode::Node(0); 16]);
    }

    #[test]
    fn untouched_pages_are_not_present() {
        let region = Region::new(8 * page_size());
        let pages = query_nodes_of_pages(region.addr, region.len).expect("query");
        assert_eq!(pages, vec![PageNode::NotPresent; 8]);
        assert!(pages_per_node(&pages).is_empty());
    }

    #[test]
    fn binding_to_a_node_this_host_lacks_names_it() {
        let topology = live_topology();
        let missing = topology.nodes.keys().max().map_or(1, |n| n + 1);
        let mut region = Region::new(4 * page_size());
        region.touch();
        let err = bind_memory(&topology, region.addr, region.len, missing, true)
            .expect_err("no such node");
        let text = err.to_string();
        assert!(text.contains(&format!("node {missing}")), "{text}");
        println!("binding to node {missing}: {text}");
        assert!(matches!(
            move_range(&topology, region.addr, region.len, missing),
            Err(MoveMemoryError::NodeOffline { .. } | MoveMemoryError::NoNuma)
        ));
    }

    /// With a topology that wrongly claims the missing node, the kernel refuses, and the error
    /// still names the node.
    #[test]
    fn the_kernel_refuses_a_node_the_topology_wrongly_claims() {
        let mut topology = live_topology();
        let Some(node0) = topology.nodes.get(&0).cloned() else {
            return;
        };
        let missing = topology.nodes.keys().max().map_or(1, |n| n + 1);
        if Path::new(&format!("/sys/devices/system/node/node{missing}")).exists() {
            return;
        }
        topology.nodes.insert(
            missing,
            NodeInfo {
                id: missing,
                ..node0
            },
        );
        let mut region = Region::new(4 * page_size());
        region.touch();
        let err = bind_memory(&topology, region.addr, region.len, missing, true)
            .expect_err("kernel says no");
        assert!(
            matches!(err, MoveMemoryError::Mbind { node, .. } if node == missing),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("to node {missing}")),
            "{err}"
        );
        println!(
            "kernel on node {missing}: {err}: {:?}",
            std::error::Error::source(&err)
        );
    }

    #[test]
    fn the_kernel_refuses_an_unmapped_range() {
        let topology = live_topology();
        if topology.nodes.is_empty() {
            return;
        }
        // Page 1 is below mmap_min_addr: never mapped.
        let addr = page_size();
        let err = bind_memory(&topology, addr, 4 * page_size(), 0, true).expect_err("unmapped");
        assert!(matches!(err, MoveMemoryError::Mbind { .. }), "{err:?}");
    }

    #[test]
    fn unaligned_and_empty_ranges_are_refused_before_any_call() {
        let topology = live_topology();
        assert!(matches!(
            bind_memory(&topology, 4097, 4096, 0, false),
            Err(MoveMemoryError::Unaligned { addr: 4097 })
        ));
        assert!(matches!(
            bind_memory(&topology, 4096, 0, 0, false),
            Err(MoveMemoryError::Empty)
        ));
        assert!(matches!(
            query_nodes_of_pages(12, 4096),
            Err(QueryPagesError::Unaligned { addr: 12 })
        ));
        assert!(query_nodes_of_pages(4096, 0).expect("nothing").is_empty());
    }
}
