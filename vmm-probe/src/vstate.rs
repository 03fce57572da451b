//! Wrappers over the KVM file descriptors: the VM, its vCPUs and guest memory.
