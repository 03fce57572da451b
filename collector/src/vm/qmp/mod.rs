//! QEMU VMs through their QMP sockets (being written).
