//! Facts about VMM threads and memory from procfs: per-thread CPU time and run-queue delay, last CPU, resident memory per NUMA node.
