//! The guest: a small 64-bit program assembled with iced-x86, and the ABI between it and the
//! VMM.
//!
//! The VMM needs guests whose load it controls exactly, on any KVM flavour, without shipping a
//! kernel image. So the guest is one program of a few hundred instructions ([`program`]) that
//! starts in long mode with tables the VMM has written ([`tables`]), reads what to do from a
//! control page at every tick, and reports what it did in per-vCPU counters. Workloads
//! ([`workload`]) are just control-page values, so they, their level and their mix can change
//! while the guest runs.
//!
//! # Guest ABI (version 1)
//!
//! ## Memory map (guest-physical = guest-virtual, identity-mapped)
//!
//! | address | size | what |
//! |---|---|---|
//! | `0x0_1000` | 8 KiB | GDT: null, unused, kernel code `0x10`, kernel data `0x18`, user code32 `0x23`, user data `0x2b`, user code `0x33`, unused, then a TSS descriptor per vCPU from `0x40` (16 bytes each) |
//! | `0x0_3000` | 4 KiB | IDT: vectors 0..32 go to exception stubs (ring 0); vector 3 (`int3`) is callable from ring 3 and is ring 3's way back to ring 0; others not present |
//! | `0x0_4000` | 32 KiB | TSS per vCPU, `0x80` apart; RSP0 = that vCPU's ring-0 stack top |
//! | `0x0_C000` | 4 KiB | PML4 |
//! | `0x0_D000` | 4 KiB | PDPT |
//! | `0x1_0000` | ≤ 256 KiB | page directories: 2 MiB pages, present + writable + user, covering RAM and the MMIO page, at most 64 GiB |
//! | `0x5_0000` | 4 KiB | **control page** (VMM → guest) |
//! | `0x5_1000` | 32 KiB | **vCPU slots** (guest → VMM), `0x80` apart |
//! | `0x5_9000` | 4 KiB | **balloon page** (guest → VMM) |
//! | `0x5_A000` | 4 KiB | **balloon PFN buffer**: up to 512 `u64` page frames per report |
//! | `0x6_0000` | 128 KiB | ring-0 stacks, 512 bytes per vCPU |
//! | `0x8_0000` | 128 KiB | ring-3 stacks, 512 bytes per vCPU |
//! | `0xA_0000` | ≤ 384 KiB | the program |
//! | `0x10_0000` | to end of RAM | working set of the memory load, split evenly between vCPUs |
//! | end of RAM rounded up to 2 MiB | 4 KiB | the **MMIO page**: mapped, but no memory slot, so writes exit with `KVM_EXIT_MMIO` |
//!
//! Hence the limits: at most 256 vCPUs and 63 GiB of RAM; 1 MiB of RAM suffices for
//! everything but a working set.
//!
//! ## Boot state
//!
//! Every vCPU starts in 64-bit ring 0 (CR0.PG/PE/WP/NE/ET/MP/AM, CR4.PAE/OSFXSR/OSXMMEXCPT,
//! EFER.LME/LMA/SCE, interrupts off, no interrupt controller) at the program's entry with
//! `rdi` = vCPU index, `rsi` = its slot and `rsp` = its ring-0 stack.
//!
//! ## Ports (`out imm8` from ring 0)
//!
//! | port | value | meaning |
//! |---|---|---|
//! | `0xF0` | any | first instruction of each vCPU (timestamps create-to-first-instruction) |
//! | `0xF1` | u32 µs | paravirtual sleep: the next `hlt` sleeps this long |
//! | `0xF2` | u32 vector | the guest took an exception; vector, error code, RIP and CR2 are in the slot; the VM is failed |
//! | `0xF3` | any | the `io_burst` workload finished its burst |
//! | `0xF4` | u32 count | balloon inflate: the guest gave up the pages listed in the PFN buffer |
//! | `0xF5` | u32 count | balloon deflate: the guest took back the pages listed in the PFN buffer |
//! | `0xF8` | any | the `io` load's target |
//!
//! A `hlt` without a pending sleep request sleeps until the vCPU's next tick boundary (every
//! 10 ms, scheduled by the VMM with absolute deadlines so the rate does not drift). Pausing or
//! stopping the VM interrupts the sleep. Guests get no interrupts.
//!
//! ## Control page (little-endian; written by the VMM, read by the guest each tick)
//!
//! | offset | type | field |
//! |---|---|---|
//! | `0x00` | u64 | magic `"FLEETVM1"` |
//! | `0x08` | u32 | ABI version (1) |
//! | `0x0C` | u32 | vCPUs |
//! | `0x10` | u64 | generation, bumped after every change |
//! | `0x18` | u32 | mode: 0 halt, 1 paced, 2 idle, 3 crash, 4 burst, 5 spin ring 0, 6 spin ring 3 |
//! | `0x1C` | u32 | level 0..=100 (informative) |
//! | `0x20` | u64 | compute per vCPU per tick, TSC cycles |
//! | `0x28` | u64 | port writes per vCPU per tick, 48.16 fixed point |
//! | `0x30` | u64 | MMIO writes per vCPU per tick, 48.16 fixed point |
//! | `0x38` | u64 | pages dirtied per vCPU per tick, 48.16 fixed point |
//! | `0x40` | u64 | MMIO page address |
//! | `0x48` | u64 | working-set start |
//! | `0x50` | u64 | working-set pages per vCPU |
//! | `0x58` | u64 | tick period, ns (informative) |
//! | `0x60` | u64 | idle: µs per sleep |
//! | `0x68` | u64 | crash: ticks before crashing |
//! | `0x70` | u32 | crash: 0 triple fault, 1 exception |
//! | `0x74` | u32 | burst: port writes |
//! | `0x78` | u64 | bytes of RAM |
//! | `0x80` | u64 | balloon target, pages |
//!
//! ## vCPU slot (u64 fields, written by the guest)
//!
//! `0x00` ticks, `0x08` compute blocks, `0x10` port writes, `0x18` MMIO writes, `0x20` pages
//! dirtied, `0x28..0x48` guest-private accumulators and cursor, `0x48` burst done,
//! `0x50` exception vector, `0x58` error code, `0x60` RIP, `0x68` CR2, `0x70` 16 zero bytes.
//!
//! ## Balloon page (u64 fields, written by vCPU 0)
//!
//! `0x00` pages held in the balloon, `0x08` pages free (above the working set, not in the
//! balloon), `0x10` PFNs in the buffer for the current report.
//!
//! At the top of each tick vCPU 0 runs the balloon agent: it moves the balloon up to 512
//! pages towards `min(target, free memory)`, always holding the topmost pages of RAM, lists
//! the pages it moved in the PFN buffer, updates the balloon page and reports on `0xF4` or
//! `0xF5`. It never touches a page it gave up; it writes to each page it takes back. The VMM
//! releases given-up pages with `MADV_DONTNEED` and ignores frames it did not expect (see
//! [`crate::vmm`]'s balloon module).
//!
//! ## Paced tick
//!
//! Ring 0 adds the control page's budgets to the slot's fractional accumulators, does the whole
//! port writes and MMIO writes, then `iretq`s to ring 3 with the page and cycle budgets; ring 3
//! dirties pages and computes until the TSC passes its budget, then `int3`s back; ring 0 counts
//! the tick and halts. Compute runs in ring 3 because PVM hosts emulate a non-PVM guest's
//! ring 0 but run its ring 3 natively (see [`program`]).

pub mod layout;
pub mod program;
pub mod tables;
pub mod workload;

pub use workload::{ControlValues, CrashKind, Mix, Ring, Workload, WorkloadError};
