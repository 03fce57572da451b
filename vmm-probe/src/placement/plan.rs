//! Deciding a memory move: given where a VM's memory is resident, which node it should be on,
//! and how much memory each node has free, how much can move, and from which nodes first.
//!
//! A pure function, so that multi-node decisions are tested on fixtures of hosts we do not
//! have. Executing a plan is up to the caller: a [`MoveVerdict::Complete`] plan is one
//! `bind_memory(.., move_existing: true)`; a [`MoveVerdict::Partial`] one needs page-granular
//! `move_pages` on pages picked from the source nodes in plan order.

use std::collections::BTreeMap;

use crate::host_facts::PerNode;

/// Granularity of planned moves: base pages.
const PAGE: u64 = 4096;

/// What the planner knows.
#[derive(Debug, Clone, Copy)]
pub struct MovePlanInput<'a> {
    /// Bytes resident per node now (from `numa_maps`, see
    /// [`crate::host_facts::numa_residency`]).
    pub resident: &'a PerNode,
    /// The node the memory should be on (usually the node of the CPUs its vCPUs are
    /// pinned to).
    pub target: u32,
    /// Free bytes per node (see [`super::HostTopology::free_bytes_per_node`]).
    pub free: &'a PerNode,
    /// Bytes to leave free on the target after the move.
    pub reserve_bytes: u64,
    /// Distance from the target to each node (see [`super::HostTopology::distances_from`]);
    /// the farthest nodes are drained first. Empty when unknown: largest first.
    pub distances: &'a BTreeMap<u32, u32>,
}

/// Bytes to move from one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMove {
    /// Source node.
    pub from: u32,
    /// Bytes to move from it (a multiple of 4 KiB).
    pub bytes: u64,
}

/// The outcome of planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveVerdict {
    /// Everything is on the target already.
    AlreadyLocal,
    /// All remote memory fits on the target.
    Complete,
    /// Only part fits; `left_remote_bytes` stay where they are.
    Partial {
        /// Bytes that stay off the target.
        left_remote_bytes: u64,
    },
    /// The target has no room beyond the reserve.
    NoRoom {
        /// Free bytes on the target.
        free_bytes: u64,
    },
    /// The target is not a node with known free memory (offline, memoryless or unknown).
    UnknownTarget,
}

/// A memory move decided by [`plan_memory_move`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovePlan {
    /// The node the memory goes to.
    pub target: u32,
    /// Whether and how much of it can move.
    pub verdict: MoveVerdict,
    /// Bytes on the target before the move.
    pub local_bytes: u64,
    /// Bytes elsewhere before the move.
    pub remote_bytes: u64,
    /// What to move, in order.
    pub moves: Vec<NodeMove>,
}

impl MovePlan {
    /// Total bytes the plan moves.
    #[must_use]
    pub fn bytes_to_move(&self) -> u64 {
        self.moves.iter().map(|m| m.bytes).sum()
    }

    /// Fraction of the memory on the target after the move (1.0 when there is none).
    #[must_use]
    pub fn local_fraction_after(&self) -> f64 {
        let total = self.local_bytes + self.remote_bytes;
        if total == 0 {
            return 1.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let fraction = (self.local_bytes + self.bytes_to_move()) as f64 / total as f64;
        fraction
    }
}

/// Plans moving memory resident on several nodes to `input.target`: the remote bytes move if
/// the target has room for them beyond `reserve_bytes`; otherwise as much as fits, drained
/// from the farthest (then largest) nodes first.
#[must_use]
pub fn plan_memory_move(input: &MovePlanInput<'_>) -> MovePlan {
    let target = input.target;
    let local_bytes = input.resident.get(&target).copied().unwrap_or(0);
    let mut sources: Vec<(u32, u64)> = input
        .resident
        .iter()
        .filter(|&(&node, &bytes)| node != target && bytes > 0)
        .map(|(&node, &bytes)| (node, bytes))
        .collect();
    let remote_bytes: u64 = sources.iter().map(|&(_, b)| b).sum();
    let plan = |verdict, moves| MovePlan {
        target,
        verdict,
        local_bytes,
        remote_bytes,
        moves,
    };
    if remote_bytes == 0 {
        return plan(MoveVerdict::AlreadyLocal, Vec::new());
    }
    let Some(&free_bytes) = input.free.get(&target) else {
        return plan(MoveVerdict::UnknownTarget, Vec::new());
    };
    let budget = free_bytes.saturating_sub(input.reserve_bytes) / PAGE * PAGE;
    if budget == 0 {
        return plan(MoveVerdict::NoRoom { free_bytes }, Vec::new());
    }
    // Farthest first (a node without a known distance counts as farthest), then largest,
    // then by number.
    let distance = |node: u32| input.distances.get(&node).copied().unwrap_or(u32::MAX);
    sources.sort_by(|a, b| {
        distance(b.0)
            .cmp(&distance(a.0))
            .then(b.1.cmp(&a.1))
            .then(a.0.cmp(&b.0))
    });
    let mut left = budget;
    let mut moves = Vec::new();
    for (from, bytes) in sources {
        let take = if bytes <= left {
            bytes
        } else {
            left / PAGE * PAGE
        };
        if take == 0 {
            break;
        }
        moves.push(NodeMove { from, bytes: take });
        left -= take;
    }
    let moved: u64 = moves.iter().map(|m| m.bytes).sum();
    let verdict = if moved == remote_bytes {
        MoveVerdict::Complete
    } else {
        MoveVerdict::Partial {
            left_remote_bytes: remote_bytes - moved,
        }
    };
    plan(verdict, moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn plan(resident: &[(u32, u64)], target: u32, free: &[(u32, u64)], reserve: u64) -> MovePlan {
        plan_memory_move(&MovePlanInput {
            resident: &resident.iter().copied().collect(),
            target,
            free: &free.iter().copied().collect(),
            reserve_bytes: reserve,
            distances: &BTreeMap::new(),
        })
    }

    #[test]
    fn already_local() {
        let p = plan(&[(0, GIB)], 0, &[(0, 0)], 0);
        assert_eq!(p.verdict, MoveVerdict::AlreadyLocal);
        assert!(p.moves.is_empty());
        assert!((p.local_fraction_after() - 1.0).abs() < f64::EPSILON);
        assert_eq!(plan(&[], 0, &[], 0).verdict, MoveVerdict::AlreadyLocal);
    }

    #[test]
    fn complete_partial_and_no_room() {
        let resident = [(0, GIB), (1, 3 * GIB)];
        let p = plan(&resident, 0, &[(0, 8 * GIB), (1, GIB)], GIB);
        assert_eq!(p.verdict, MoveVerdict::Complete);
        assert_eq!(
            p.moves,
            [NodeMove {
                from: 1,
                bytes: 3 * GIB
            }]
        );
        assert!((p.local_fraction_after() - 1.0).abs() < f64::EPSILON);

        let p = plan(&resident, 0, &[(0, 2 * GIB + 100)], GIB);
        assert_eq!(
            p.verdict,
            MoveVerdict::Partial {
                left_remote_bytes: 2 * GIB
            }
        );
        assert_eq!(
            p.moves,
            [NodeMove {
                from: 1,
                bytes: GIB
            }],
            "page-rounded budget"
        );
        assert!((p.local_fraction_after() - 0.5).abs() < 1e-9);

        let p = plan(&resident, 0, &[(0, GIB)], GIB);
        assert_eq!(p.verdict, MoveVerdict::NoRoom { free_bytes: GIB });
        assert_eq!(
            plan(&resident, 5, &[(0, GIB)], 0).verdict,
            MoveVerdict::UnknownTarget
        );
    }

    #[test]
    fn farthest_nodes_drain_first_then_largest() {
        // Four nodes, two sockets of two sub-NUMA clusters: 0-1 near, 2-3 far.
        let resident: PerNode = [(0, GIB), (1, 2 * GIB), (2, GIB), (3, 2 * GIB)].into();
        let distances: BTreeMap<u32, u32> = [(0, 10), (1, 12), (2, 21), (3, 21)].into();
        let free: PerNode = [(0, 4 * GIB)].into();
        let p = plan_memory_move(&MovePlanInput {
            resident: &resident,
            target: 0,
            free: &free,
            reserve_bytes: GIB / 2,
            distances: &distances,
        });
        assert_eq!(
            p.moves,
            [
                NodeMove {
                    from: 3,
                    bytes: 2 * GIB
                },
                NodeMove {
                    from: 2,
                    bytes: GIB
                },
                NodeMove {
                    from: 1,
                    bytes: GIB / 2
                },
            ]
        );
        assert_eq!(
            p.verdict,
            MoveVerdict::Partial {
                left_remote_bytes: 3 * GIB / 2
            }
        );
        assert_eq!(p.bytes_to_move(), 3 * GIB + GIB / 2);
    }
}
