//! The fixed guest-physical memory map, selectors, ports and field offsets of the guest ABI.
//!
//! Everything the VMM and the guest program must agree on is a constant here, so the program
//! (assembled in [`super::program`]), the tables ([`super::tables`]) and the VMM's readers and
//! writers cannot drift apart. The table in the [`super`] module docs is the prose version.

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a large page of the identity map.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// One GiB: what one page directory maps.
pub const GIB: u64 = 1 << 30;

/// Global descriptor table: 8 fixed entries, then one 16-byte TSS descriptor per vCPU.
pub const GDT_GPA: u64 = 0x1000;
/// Interrupt descriptor table: 256 gates of 16 bytes.
pub const IDT_GPA: u64 = 0x3000;
/// Task-state segments, one per vCPU, [`TSS_STRIDE`] apart.
pub const TSS_GPA: u64 = 0x4000;
/// Distance between two TSSs (a TSS is 104 bytes).
pub const TSS_STRIDE: u64 = 0x80;
const _: () = assert!(TSS_SIZE <= TSS_STRIDE);
/// Size of a 64-bit TSS without I/O bitmap.
pub const TSS_SIZE: u64 = 104;
/// Page-map level 4 of the identity map.
pub const PML4_GPA: u64 = 0xC000;
/// Page-directory-pointer table of the identity map.
pub const PDPT_GPA: u64 = 0xD000;
/// First page directory; [`MAX_PAGE_DIRECTORIES`] of them follow each other.
pub const PD_GPA: u64 = 0x10000;
/// Page directories available below [`CONTROL_GPA`]: the identity map covers at most this many
/// GiB.
pub const MAX_PAGE_DIRECTORIES: u64 = 64;
/// The control page: written by the VMM, read by the guest at every tick.
pub const CONTROL_GPA: u64 = 0x50000;
/// Per-vCPU slots: counters written by the guest, [`SLOT_STRIDE`] apart.
pub const SLOTS_GPA: u64 = 0x51000;
/// Distance between two vCPU slots.
pub const SLOT_STRIDE: u64 = 0x80;
/// The balloon page: the guest agent's report to the VMM (see [`balloon`]).
pub const BALLOON_GPA: u64 = 0x59000;
/// The balloon's page-frame buffer: up to [`BALLOON_BATCH_PAGES`] little-endian `u64` PFNs,
/// the pages of one inflate or deflate report.
pub const BALLOON_PFNS_GPA: u64 = 0x5A000;
/// Most pages one balloon report carries (one page of PFNs).
pub const BALLOON_BATCH_PAGES: u64 = PAGE_SIZE / 8;
/// Ring-0 stacks, one per vCPU, [`STACK_SIZE`] each (the top of stack `i` is the bottom of
/// stack `i + 1`).
pub const KERNEL_STACKS_GPA: u64 = 0x60000;
/// Ring-3 stacks, one per vCPU.
pub const USER_STACKS_GPA: u64 = 0x80000;
/// Size of one stack; the guest program only needs room for an exception frame or two.
pub const STACK_SIZE: u64 = 0x200;
/// The guest program.
pub const CODE_GPA: u64 = 0xA0000;
/// Room for the guest program.
pub const CODE_MAX_BYTES: u64 = 0x60000;
/// Start of the memory workload's working set: everything from here to the end of RAM.
pub const WORKING_SET_GPA: u64 = 0x10_0000;

/// vCPUs the layout has room for (stacks, slots, TSSs, GDT).
pub const MAX_VCPUS: u32 = 256;
/// Guest memory the identity map can cover, leaving room for the MMIO page above RAM.
pub const MAX_MEM_MIB: u32 = 63 * 1024;

/// Period of the guest's paced loop: each vCPU does one tick's budget, then halts until the
/// VMM wakes it at the next tick boundary.
pub const TICK_NS: u64 = 10_000_000;

/// Segment selectors. The numbering follows Linux (kernel CS 0x10, user DS 0x2b, user CS
/// 0x33) so that a PVM host, which requires the guest's user selectors to equal its own, finds
/// them where it expects.
pub mod selector {
    /// 64-bit ring-0 code.
    pub const KERNEL_CS: u16 = 0x10;
    /// Ring-0 data and stack.
    pub const KERNEL_DS: u16 = 0x18;
    /// 32-bit ring-3 code (present for the SYSRET layout; not used).
    pub const USER_CS32: u16 = 0x20 | 3;
    /// Ring-3 data and stack.
    pub const USER_DS: u16 = 0x28 | 3;
    /// 64-bit ring-3 code.
    pub const USER_CS: u16 = 0x30 | 3;
    /// TSS of vCPU 0; vCPU `i` uses `TSS_BASE + 16 * i`.
    pub const TSS_BASE: u16 = 0x40;
}

/// I/O ports of the guest ABI. All are written with `out imm8`, from ring 0.
pub mod port {
    /// Written (any value) by each vCPU as its very first instruction.
    pub const FIRST_INSTRUCTION: u16 = 0xF0;
    /// 32-bit value: microseconds to sleep at the next `hlt` (the paravirtual timed wake-up).
    pub const PV_SLEEP: u16 = 0xF1;
    /// 32-bit value: exception vector; the details are in the vCPU slot. The guest is dead.
    pub const EXCEPTION: u16 = 0xF2;
    /// Written once the `io_burst` workload has done its count.
    pub const DONE: u16 = 0xF3;
    /// 32-bit value: the guest put that many pages into its balloon; their PFNs are in the
    /// buffer at [`super::BALLOON_PFNS_GPA`]. The VMM releases them.
    pub const BALLOON_INFLATE: u16 = 0xF4;
    /// 32-bit value: the guest took that many pages back out of its balloon (PFNs in the
    /// buffer); it has already written to them.
    pub const BALLOON_DEFLATE: u16 = 0xF5;
    /// Target of the `io` workload's storm (and of `io_burst`).
    pub const WORKLOAD_IO: u16 = 0xF8;
}

/// Offsets in the control page. Unless noted, fields are little-endian `u64`.
pub mod control {
    /// [`super::CONTROL_MAGIC`].
    pub const MAGIC: u64 = 0x00;
    /// `u32`: [`super::ABI_VERSION`].
    pub const ABI_VERSION: u64 = 0x08;
    /// `u32`: number of vCPUs.
    pub const VCPUS: u64 = 0x0C;
    /// Bumped by the VMM after each change of the fields below.
    pub const GENERATION: u64 = 0x10;
    /// `u32`: what the guest loop does, one of [`super::mode`].
    pub const MODE: u64 = 0x18;
    /// `u32`: load level 0..=100 (informative: the budgets already include it).
    pub const LEVEL: u64 = 0x1C;
    /// TSC cycles of compute per vCPU per tick (ring 3).
    pub const CPU_TSC_PER_TICK: u64 = 0x20;
    /// Port writes per vCPU per tick, fixed point with [`super::BUDGET_FRACTION_BITS`].
    pub const IO_PER_TICK: u64 = 0x28;
    /// MMIO writes per vCPU per tick, fixed point.
    pub const MMIO_PER_TICK: u64 = 0x30;
    /// Working-set pages dirtied per vCPU per tick, fixed point.
    pub const MEM_PER_TICK: u64 = 0x38;
    /// Guest-physical address of the unbacked page the `mmio` ops write to.
    pub const MMIO_GPA: u64 = 0x40;
    /// Guest-physical start of the working set.
    pub const WS_BASE: u64 = 0x48;
    /// Pages of the working set per vCPU (vCPU `i` owns partition `i`).
    pub const WS_PART_PAGES: u64 = 0x50;
    /// Tick period in nanoseconds (informative: the VMM times the ticks).
    pub const TICK_NS: u64 = 0x58;
    /// Idle mode: microseconds to sleep per wake-up.
    pub const IDLE_SLEEP_US: u64 = 0x60;
    /// Crash mode: ticks to run before crashing.
    pub const CRASH_AFTER_TICKS: u64 = 0x68;
    /// `u32`: crash mode: one of [`super::crash`].
    pub const CRASH_KIND: u64 = 0x70;
    /// `u32`: burst mode: port writes to do back to back.
    pub const BURST_COUNT: u64 = 0x74;
    /// Bytes of guest RAM.
    pub const MEM_BYTES: u64 = 0x78;
    /// Pages the VMM asks the guest to hold in its balloon.
    pub const BALLOON_TARGET_PAGES: u64 = 0x80;
}

/// Offsets in the balloon page. All fields are little-endian `u64` written by vCPU 0's agent.
pub mod balloon {
    /// Pages the guest holds in its balloon (given to the VMM).
    pub const HELD_PAGES: u64 = 0x00;
    /// Pages the guest has free: above its working set and not in the balloon.
    pub const FREE_PAGES: u64 = 0x08;
    /// PFNs in the buffer for the current report.
    pub const BATCH: u64 = 0x10;
}

/// Offsets in a vCPU slot. All fields are little-endian `u64` written by the guest.
pub mod slot {
    /// Ticks completed (idle: wake-ups).
    pub const TICKS: u64 = 0x00;
    /// Compute blocks done (spin modes: loop iterations).
    pub const CPU_OPS: u64 = 0x08;
    /// Workload port writes done.
    pub const IO_OPS: u64 = 0x10;
    /// MMIO writes done.
    pub const MMIO_OPS: u64 = 0x18;
    /// Working-set pages dirtied.
    pub const MEM_OPS: u64 = 0x20;
    /// Fractional remainder of the io budget (guest-private).
    pub const ACC_IO: u64 = 0x28;
    /// Fractional remainder of the mmio budget (guest-private).
    pub const ACC_MMIO: u64 = 0x30;
    /// Fractional remainder of the memory budget (guest-private).
    pub const ACC_MEM: u64 = 0x38;
    /// Byte offset of the next page to dirty in this vCPU's partition (guest-private).
    pub const MEM_CURSOR: u64 = 0x40;
    /// Non-zero once the burst is done.
    pub const BURST_DONE: u64 = 0x48;
    /// Exception report: vector.
    pub const EXC_VECTOR: u64 = 0x50;
    /// Exception report: error code (0 for vectors without one).
    pub const EXC_ERROR: u64 = 0x58;
    /// Exception report: faulting instruction pointer.
    pub const EXC_RIP: u64 = 0x60;
    /// Exception report: CR2 (the faulting address of a page fault).
    pub const EXC_CR2: u64 = 0x68;
    /// 16 zero bytes: an empty IDT descriptor, loaded to provoke a triple fault.
    pub const ZERO_IDTR: u64 = 0x70;
}

/// Values of [`control::MODE`].
pub mod mode {
    /// Not configured: halt at every tick.
    pub const HALT: u32 = 0;
    /// Budgeted compute, port writes, MMIO writes and memory dirtying per tick.
    pub const PACED: u32 = 1;
    /// Paravirtual sleep then `hlt`, forever.
    pub const IDLE: u32 = 2;
    /// Tick, then crash after [`super::control::CRASH_AFTER_TICKS`].
    pub const CRASH: u32 = 3;
    /// [`super::control::BURST_COUNT`] port writes back to back, then [`super::port::DONE`].
    pub const BURST: u32 = 4;
    /// Tight counting loop in ring 0.
    pub const SPIN_KERNEL: u32 = 5;
    /// Tight counting loop in ring 3.
    pub const SPIN_USER: u32 = 6;
}

/// Values of [`control::CRASH_KIND`].
pub mod crash {
    /// Load an empty IDT and execute `ud2`: the exception cannot be delivered.
    pub const TRIPLE_FAULT: u32 = 0;
    /// Execute `ud2`: the IDT stub reports `#UD`.
    pub const EXCEPTION: u32 = 1;
}

/// "FLEETVM1", little-endian.
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"FLEETVM1");
/// Version of this ABI.
pub const ABI_VERSION: u32 = 1;
/// Fractional bits of the per-tick budgets.
pub const BUDGET_FRACTION_BITS: u32 = 16;
/// Iterations of the compute block between two TSC reads.
pub const CPU_BLOCK_ITERATIONS: u32 = 1024;

/// Guest-physical address of vCPU `index`'s slot.
#[must_use]
pub const fn slot_gpa(index: u32) -> u64 {
    SLOTS_GPA + index as u64 * SLOT_STRIDE
}

/// Guest-physical address of vCPU `index`'s TSS.
#[must_use]
pub const fn tss_gpa(index: u32) -> u64 {
    TSS_GPA + index as u64 * TSS_STRIDE
}

/// Selector of vCPU `index`'s TSS.
#[must_use]
pub const fn tss_selector(index: u32) -> u16 {
    selector::TSS_BASE + 16 * index as u16
}

/// Top of vCPU `index`'s ring-0 stack.
#[must_use]
pub const fn kernel_stack_top(index: u32) -> u64 {
    KERNEL_STACKS_GPA + (index as u64 + 1) * STACK_SIZE
}

/// Top of vCPU `index`'s ring-3 stack.
#[must_use]
pub const fn user_stack_top(index: u32) -> u64 {
    USER_STACKS_GPA + (index as u64 + 1) * STACK_SIZE
}

/// Bytes of GDT for `vcpus` vCPUs.
#[must_use]
pub const fn gdt_len(vcpus: u32) -> u64 {
    (8 + 2 * vcpus as u64) * 8
}

/// The unbacked guest-physical page the `mmio` ops write to: the first large-page boundary at
/// or above the end of RAM, so the identity map covers it and KVM finds no memory slot there.
#[must_use]
pub const fn mmio_gpa(mem_bytes: u64) -> u64 {
    mem_bytes.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE
}

/// GiB of identity map needed to cover RAM and the MMIO page.
#[must_use]
pub const fn identity_map_gib(mem_bytes: u64) -> u64 {
    (mmio_gpa(mem_bytes) + LARGE_PAGE_SIZE).div_ceil(GIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_do_not_overlap() {
        let regions = [
            (GDT_GPA, gdt_len(MAX_VCPUS)),
            (IDT_GPA, 256 * 16),
            (TSS_GPA, u64::from(MAX_VCPUS) * TSS_STRIDE),
            (PML4_GPA, PAGE_SIZE),
            (PDPT_GPA, PAGE_SIZE),
            (PD_GPA, MAX_PAGE_DIRECTORIES * PAGE_SIZE),
            (CONTROL_GPA, PAGE_SIZE),
            (BALLOON_GPA, PAGE_SIZE),
            (BALLOON_PFNS_GPA, BALLOON_BATCH_PAGES * 8),
            (SLOTS_GPA, u64::from(MAX_VCPUS) * SLOT_STRIDE),
            (KERNEL_STACKS_GPA, u64::from(MAX_VCPUS) * STACK_SIZE),
            (USER_STACKS_GPA, u64::from(MAX_VCPUS) * STACK_SIZE),
            (CODE_GPA, CODE_MAX_BYTES),
        ];
        for (i, (a, alen)) in regions.iter().enumerate() {
            for (b, blen) in &regions[i + 1..] {
                assert!(
                    a + alen <= *b || b + blen <= *a,
                    "{a:#x}+{alen:#x} vs {b:#x}+{blen:#x}"
                );
            }
            assert!(a + alen <= WORKING_SET_GPA, "{a:#x} ends above 1 MiB");
        }
    }

    #[test]
    fn identity_map_covers_ram_and_mmio_page_within_budget() {
        let max = u64::from(MAX_MEM_MIB) << 20;
        assert!(identity_map_gib(max) <= MAX_PAGE_DIRECTORIES);
        assert_eq!(mmio_gpa(1 << 20), 2 << 20);
        assert_eq!(mmio_gpa(64 << 20), 64 << 20);
        assert_eq!(identity_map_gib(1 << 20), 1);
        assert_eq!(identity_map_gib(GIB), 2);
    }

    #[test]
    fn per_vcpu_addresses() {
        assert_eq!(slot_gpa(1), SLOTS_GPA + SLOT_STRIDE);
        assert_eq!(kernel_stack_top(0), KERNEL_STACKS_GPA + STACK_SIZE);
        assert_eq!(tss_selector(2), 0x60);
        assert_eq!(CONTROL_MAGIC.to_le_bytes(), *b"FLEETVM1");
    }
}
