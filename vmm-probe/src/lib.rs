//! vmm-probe: fleetmind's own VMM on KVM.
//!
//! It runs micro-VMs whose guests generate real, controllable load, reads their counters
//! straight from KVM, and exposes the hooks the remediator uses (pinning, NUMA placement,
//! ballooning). It is the only crate of the workspace that touches `/dev/kvm`, and the only one
//! allowed `unsafe` code, confined to the modules that talk to the kernel; every `unsafe` block
//! carries a `// SAFETY:` comment.
//!
//! The KVM flavour matters everywhere here: the same guest exits are counted under different KVM
//! statistics on VMX/SVM hosts and on PVM hosts (where a guest that is not PVM-aware is run by
//! KVM's instruction emulator); see [`flavour`].
//!
//! Layers, bottom up: [`vstate`] wraps the KVM file descriptors and guest memory; [`guest`] is
//! the guest program and its ABI; [`vmm`] runs VMs ([`vmm::Vmm`], [`vmm::VmHandle`]), with the
//! balloon's host side; [`stats`], [`host_facts`] and [`placement`] read and move what the
//! kernel knows about them; [`control`] is one VMM host's operations as the control API offers
//! them, and [`control::demo`] the demo fleet.

pub mod control;
pub mod flavour;
pub mod guest;
pub mod host_facts;
#[allow(unsafe_code)]
pub mod placement;
#[allow(unsafe_code)]
pub mod stats;
pub mod test_utils;
pub mod vmm;
#[allow(unsafe_code)]
pub mod vstate;

pub use flavour::{KvmFlavour, KvmStatus, detect_kvm};
