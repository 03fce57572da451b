//! A KVM VM file descriptor with its guest memory.
//!
//! The VM owns its memory, and the fields are ordered so that the VM fd closes before the
//! mapping goes away. vCPU fds keep the kernel's VM alive, so whoever holds [`Vcpu`]s must drop
//! them before the last reference to the [`Vm`].

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use super::kvm::KvmContext;
use super::memory::GuestMemory;
use super::vcpu::Vcpu;

/// A VM and its RAM (slot 0, guest-physical 0..len).
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    memory: GuestMemory,
}

/// The VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupVmError {
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("registering guest memory with KVM failed")]
    MemorySlot(#[source] kvm_ioctls::Error),
}

/// A vCPU could not be created.
#[derive(Debug, thiserror::Error)]
#[error("KVM_CREATE_VCPU failed for vCPU {index}")]
pub struct CreateVcpuError {
    /// The vCPU index.
    pub index: u32,
    /// Why.
    #[source]
    pub source: kvm_ioctls::Error,
}

impl Vm {
    /// Creates a VM and registers `memory` as its RAM at guest-physical 0.
    ///
    /// # Errors
    ///
    /// [`SetupVmError`] if KVM refuses the VM or the memory slot.
    pub fn new(kvm: &KvmContext, memory: GuestMemory) -> Result<Self, SetupVmError> {
        let fd = kvm.kvm().create_vm().map_err(SetupVmError::Create)?;
        let range = memory.host_range();
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: range.len as u64,
            userspace_addr: range.addr as u64,
        };
        // SAFETY: the region is the mapping owned by `memory`, which moves into the returned
        // `Vm` and is unmapped only after the VM fd is closed (field order) and every vCPU fd
        // is gone (documented contract of this type).
        unsafe { fd.set_user_memory_region(region) }.map_err(SetupVmError::MemorySlot)?;
        Ok(Self { fd, memory })
    }

    /// The guest memory.
    #[must_use]
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The VM file descriptor (for `KVM_GET_STATS_FD` and the like).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is open for as long as `self.fd` lives, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) }
    }

    /// The VM ioctl handle.
    #[must_use]
    pub fn vm_fd(&self) -> &VmFd {
        &self.fd
    }

    /// Creates vCPU `index`.
    ///
    /// # Errors
    ///
    /// [`CreateVcpuError`] if KVM refuses.
    pub fn create_vcpu(&self, index: u32) -> Result<Vcpu, CreateVcpuError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| CreateVcpuError { index, source })?;
        Ok(Vcpu::new(fd, index))
    }
}
