//! KVM binary statistics (`KVM_GET_STATS_FD`) for VMs and vCPUs.
