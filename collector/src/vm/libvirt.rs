//! libvirt-managed QEMU: discovery of domains QMP sockets (being written).
