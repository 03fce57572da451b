//! Pinning and NUMA hooks: vCPU thread affinity, guest memory binding and migration between
//! nodes, and the planning of such moves.
//!
//! These are the levers the remediator pulls when a VM suffers from CPU contention or remote
//! memory: pin its vCPU threads to other CPUs ([`pin_thread`]), bind its memory to the node of
//! those CPUs ([`bind_memory`]) or move it page by page ([`move_pages`]), after deciding how
//! much can move ([`plan_memory_move`]). Everything that names a CPU or node is checked first
//! against a [`HostTopology`] read from an injectable sysfs root, so that errors name the bad
//! CPU or node and fixtures stand in for multi-node hosts.
//!
//! The kernel calls (`sched_setaffinity`, `mbind`, `move_pages`) are the module's only
//! `unsafe` code. They change where threads run and where pages live, never the contents of
//! memory, so the functions wrapping them are safe.

mod affinity;
mod memory;
mod plan;
mod topology;

pub use affinity::{PinError, ThreadAffinityError, current_tid, pin_thread, thread_affinity};
pub use memory::{
    MoveMemoryError, PageNode, QueryPagesError, bind_memory, move_pages, move_range, page_size,
    pages_per_node, query_nodes_of_pages,
};
pub use plan::{MovePlan, MovePlanInput, MoveVerdict, NodeMove, plan_memory_move};
pub use topology::{HostTopology, NodeInfo, ReadTopologyError};
