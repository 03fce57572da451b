//! Runs a tiny real-mode guest on real KVM and checks that the statistics this host's KVM
//! flavour moves for port I/O grow by at least the number of `out` instructions executed.
//!
//! This lives in the module (not in `tests/`) because setting up guest memory takes `unsafe`
//! code, which the workspace allows only here.

use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

use super::{KvmStats, StatsSnapshot};
use crate::flavour::{KvmFlavour, KvmStatus, detect_kvm};
use crate::test_utils::kvm_or_skip;

const GUEST_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x4000;
const PORT: u16 = 0x3f8;
const OUTS: usize = 500;

/// Anonymous memory for the guest, unmapped on drop.
struct GuestMemory {
    addr: *mut u8,
    len: usize,
}

impl GuestMemory {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap guest memory");
        Self {
            addr: addr.cast(),
            len,
        }
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: the range is inside our mapping (checked above) and nothing else aliases it
        // while the guest is not running.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.addr.add(offset), bytes.len())
        };
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the VM using it is dropped first.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// `mov dx, PORT; mov al, 'a'; out dx, al` × OUTS; `hlt`.
fn guest_code() -> Vec<u8> {
    let [lo, hi] = PORT.to_le_bytes();
    let mut code = vec![0xba, lo, hi, 0xb0, b'a'];
    code.extend(std::iter::repeat_n(0xee, OUTS));
    code.push(0xf4);
    code
}

fn moved(before: &StatsSnapshot, after: &StatsSnapshot) -> Vec<(String, u64)> {
    after
        .values
        .iter()
        .filter(|v| v.value().is_some())
        .filter_map(|v| {
            let d = after.delta(before, &v.name)?;
            (d > 0).then(|| (v.name.to_string(), d))
        })
        .collect()
}

#[test]
fn port_io_moves_the_flavours_exit_counters() {
    if !kvm_or_skip("stats::port_io_moves_the_flavours_exit_counters") {
        return;
    }
    let KvmStatus::Available { flavour } = detect_kvm(Path::new("/sys"), Path::new("/dev/kvm"))
    else {
        unreachable!("kvm_or_skip said KVM is available");
    };

    let mut memory = GuestMemory::new(MEM_SIZE);
    memory.write(0, &guest_code());
    let vm = Kvm::new()
        .expect("open /dev/kvm")
        .create_vm()
        .expect("create VM");
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: MEM_SIZE as u64,
        userspace_addr: memory.addr as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping of MEM_SIZE bytes that outlives the VM (the VM is
    // dropped at the end of this function, before `memory`, declared earlier).
    unsafe { vm.set_user_memory_region(region) }.expect("set memory region");
    let mut vcpu = vm.create_vcpu(0).expect("create vCPU");
    let mut sregs = vcpu.get_sregs().expect("get sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let mut regs = vcpu.get_regs().expect("get regs");
    regs.rip = GUEST_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("set regs");

    let vm_stats = KvmStats::open(&vm).expect("VM stats");
    let vcpu_stats = KvmStats::open(&vcpu).expect("vCPU stats");
    let (vm_before, vcpu_before) = (
        vm_stats.read().expect("read"),
        vcpu_stats.read().expect("read"),
    );

    let mut outs = 0;
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => {
                assert_eq!((port, data), (PORT, &b"a"[..]));
                outs += 1;
            }
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit after {outs} OUTs: {other:?}"),
        }
    }
    assert_eq!(outs, OUTS, "userspace saw every OUT");

    let (vm_after, vcpu_after) = (
        vm_stats.read().expect("read"),
        vcpu_stats.read().expect("read"),
    );
    let vcpu_moved = moved(&vcpu_before, &vcpu_after);
    println!("flavour {flavour:?}, {OUTS} OUTs + HLT");
    println!("vCPU stats that moved: {vcpu_moved:?}");
    println!("VM stats that moved: {:?}", moved(&vm_before, &vm_after));

    let expected: &[&str] = match flavour {
        KvmFlavour::Vmx | KvmFlavour::Svm => &["exits", "io_exits"],
        KvmFlavour::Pvm => &["exits", "insn_emulation"],
        KvmFlavour::Unknown => &["exits"],
    };
    for name in expected {
        let grew = vcpu_after
            .delta(&vcpu_before, name)
            .unwrap_or_else(|| panic!("{name} missing or went down"));
        assert!(
            grew >= OUTS as u64,
            "{name} grew by {grew}, fewer than {OUTS} OUTs"
        );
    }
    drop(vcpu);
    drop(vm);
}
