//! Placement decisions on recorded sysfs and procfs trees: the one-node development host and
//! a two-node host we do not have (see `tests/fixtures/placement/README.md`). Validation
//! happens before any system call, so the errors for bad CPUs and nodes are checked here
//! without touching this host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleetmind_vmm_probe::host_facts::{MappingFilter, PerNode, numa_residency};
use fleetmind_vmm_probe::placement::{
    HostTopology, MoveMemoryError, MovePlanInput, MoveVerdict, NodeMove, PinError,
    ReadTopologyError, bind_memory, move_pages, pin_thread, plan_memory_move,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn two_node() -> HostTopology {
    HostTopology::read(&fixture("placement/sys-two-node")).expect("two-node sysfs")
}

#[test]
fn two_node_topology() {
    let topo = two_node();
    assert_eq!(topo.online_cpus, [0, 1, 2, 3, 4, 5, 7]);
    assert_eq!(topo.nodes.keys().copied().collect::<Vec<_>>(), [0, 1]);
    let node1 = &topo.nodes[&1];
    assert_eq!(node1.cpus, [4, 5, 7]);
    assert!(node1.has_memory);
    assert_eq!(
        (node1.mem_total_bytes, node1.mem_free_bytes),
        (16 * GIB, GIB)
    );
    assert_eq!(topo.distances_from(0), BTreeMap::from([(0, 10), (1, 21)]));
    assert_eq!(
        topo.free_bytes_per_node(),
        PerNode::from([(0, 8 * GIB), (1, GIB)])
    );
    assert_eq!(topo.node_of_cpu(5), Some(1));
    assert_eq!(topo.node_of_cpu(6), None);
    assert_eq!(topo.online_cpus_text(), "0-5,7");
}

#[test]
fn recorded_one_node_topology() {
    let topo = HostTopology::read(&fixture("placement/sys-one-node")).expect("one-node sysfs");
    assert_eq!(topo.online_cpus, [0, 1]);
    assert_eq!(topo.nodes.len(), 1);
    let node0 = &topo.nodes[&0];
    assert_eq!(node0.cpus, [0, 1]);
    assert_eq!(node0.distances, BTreeMap::from([(0, 10)]));
    assert!(node0.mem_free_bytes > 0 && node0.mem_free_bytes < node0.mem_total_bytes);
}

#[test]
fn pinning_to_an_offline_cpu_names_it() {
    let topo = two_node();
    let err = pin_thread(&topo, 1, &[4, 6]).expect_err("CPU 6 is offline");
    assert!(
        matches!(err, PinError::CpuOffline { cpu: 6, .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "CPU 6 is not online (online CPUs: 0-5,7)");
    assert!(matches!(pin_thread(&topo, 1, &[]), Err(PinError::NoCpus)));
    assert!(matches!(
        pin_thread(&topo, 1, &[64]),
        Err(PinError::CpuOffline { cpu: 64, .. })
    ));
}

#[test]
fn binding_to_a_missing_or_memoryless_node_names_it() {
    let topo = two_node();
    let err = bind_memory(&topo, 0x10_0000, 4096, 2, true).expect_err("node 2 is not online");
    assert_eq!(err.to_string(), "node 2 is not online (online nodes: 0-1)");
    assert!(matches!(
        move_pages(&topo, &[0x10_0000], 7),
        Err(MoveMemoryError::NodeOffline { node: 7, .. })
    ));

    // The same host with node 1 memoryless (CPU-only).
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("placement/sys-two-node"), dir.path());
    std::fs::write(dir.path().join("devices/system/node/has_memory"), "0\n").expect("write");
    let topo = HostTopology::read(dir.path()).expect("sysfs");
    assert!(!topo.nodes[&1].has_memory);
    assert_eq!(topo.free_bytes_per_node(), PerNode::from([(0, 8 * GIB)]));
    let err = bind_memory(&topo, 0x10_0000, 4096, 1, false).expect_err("memoryless");
    assert_eq!(err.to_string(), "node 1 has no memory");
}

#[test]
fn a_kernel_without_numa_has_no_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("devices/system/cpu")).expect("mkdir");
    std::fs::write(dir.path().join("devices/system/cpu/online"), "0-3\n").expect("write");
    let topo = HostTopology::read(dir.path()).expect("sysfs");
    assert!(topo.nodes.is_empty());
    assert!(matches!(
        bind_memory(&topo, 0x10_0000, 4096, 0, true),
        Err(MoveMemoryError::NoNuma)
    ));
}

#[test]
fn malformed_sysfs_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("placement/sys-two-node"), dir.path());
    let distance = dir.path().join("devices/system/node/node1/distance");
    std::fs::write(&distance, "21\n").expect("write");
    let err = HostTopology::read(dir.path()).expect_err("one distance for two nodes");
    assert!(matches!(err, ReadTopologyError::Malformed { .. }));
    assert!(err.to_string().contains("node1/distance"), "{err}");
    std::fs::remove_file(dir.path().join("devices/system/cpu/online")).expect("rm");
    assert!(matches!(
        HostTopology::read(dir.path()),
        Err(ReadTopologyError::Io { .. })
    ));
}

/// A VM whose guest memory (recorded two-node numa_maps) is split evenly over both nodes:
/// onto node 0, with 8 GiB free, it all fits; onto node 1, with 1 GiB free and 256 MiB kept
/// in reserve, only 768 MiB can move.
#[test]
fn plans_for_a_split_guest_on_two_nodes() {
    let topo = two_node();
    let resident = numa_residency(
        &fixture("host_facts/proc-two-node"),
        4242,
        MappingFilter::StartIn {
            start: 0x7f00_0000_0000,
            end: 0x7fb0_0000_0000,
        },
    )
    .expect("numa_maps");
    assert_eq!(resident, PerNode::from([(0, 1536 * MIB), (1, 1536 * MIB)]));
    let free = topo.free_bytes_per_node();

    let to_0 = plan_memory_move(&MovePlanInput {
        resident: &resident,
        target: 0,
        free: &free,
        reserve_bytes: 256 * MIB,
        distances: &topo.distances_from(0),
    });
    assert_eq!(to_0.verdict, MoveVerdict::Complete);
    assert_eq!(
        to_0.moves,
        [NodeMove {
            from: 1,
            bytes: 1536 * MIB
        }]
    );
    assert_eq!(
        (to_0.local_bytes, to_0.remote_bytes),
        (1536 * MIB, 1536 * MIB)
    );

    let to_1 = plan_memory_move(&MovePlanInput {
        resident: &resident,
        target: 1,
        free: &free,
        reserve_bytes: 256 * MIB,
        distances: &topo.distances_from(1),
    });
    assert_eq!(
        to_1.verdict,
        MoveVerdict::Partial {
            left_remote_bytes: 768 * MIB
        }
    );
    assert_eq!(
        to_1.moves,
        [NodeMove {
            from: 0,
            bytes: 768 * MIB
        }]
    );
    assert!((to_1.local_fraction_after() - 0.75).abs() < 1e-9);

    let nowhere = plan_memory_move(&MovePlanInput {
        resident: &resident,
        target: 1,
        free: &free,
        reserve_bytes: 2 * GIB,
        distances: &BTreeMap::new(),
    });
    assert_eq!(nowhere.verdict, MoveVerdict::NoRoom { free_bytes: GIB });
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
