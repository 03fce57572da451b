//! Pinning and NUMA hooks: vCPU thread affinity, guest memory binding and migration between nodes.
