//! vmm-probe: fleetmind's own VMM on KVM.
//!
//! This crate owns everything that touches `/dev/kvm`. For now it answers the first question
//! every other part asks: is there a hypervisor here, and which flavour of KVM is it? The
//! flavour matters because the same guest exits are counted under different KVM statistics
//! on VMX/SVM hosts and on PVM hosts (where a guest that is not PVM-aware is run by KVM's
//! instruction emulator); collectors and tests choose which counters to trust from it.

#![forbid(unsafe_code)]

pub mod flavour;

pub use flavour::{KvmFlavour, KvmStatus, detect_kvm};
