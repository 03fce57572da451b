//! Wrappers over the KVM file descriptors: the `/dev/kvm` handle, the VM, its vCPUs and guest
//! memory.
//!
//! This is the layer that talks to the kernel, split by concern as in Firecracker's
//! `vstate/`: [`kvm`] (the system fd and host facts), [`vm`] (VM fd and memory slot),
//! [`vcpu`] (register setup, `KVM_RUN`, kicking a vCPU thread) and [`memory`] (the guest RAM
//! mapping). It knows nothing of workloads or lifecycles; [`crate::vmm`] builds those on top.
//! Nearly all of the crate's `unsafe` is here, each block with its `// SAFETY:` argument.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;

pub use kvm::{KvmContext, OpenKvmError};
pub use memory::{DiscardError, GuestAccessError, GuestMemory, HostRange, MapMemoryError};
pub use vcpu::{BootRegisters, DescriptorTable, Segment, Vcpu, VcpuKicker};
pub use vm::Vm;
