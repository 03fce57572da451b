//! The system tables the VMM writes before the first instruction: GDT, IDT, one TSS per vCPU,
//! the identity page tables, and each vCPU's initial registers.
//!
//! The guest never builds or loads a table itself (its only `lidt` is the deliberate triple
//! fault); it starts in 64-bit ring 0 with everything in place. All of it is plain data here so
//! it can be checked without KVM.

use super::layout::{self, selector};
use crate::vstate::vcpu::{BootRegisters, DescriptorTable, Segment};

/// Bytes to write at a guest-physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where.
    pub gpa: u64,
    /// What.
    pub bytes: Vec<u8>,
}

/// Where the guest program's interrupt handlers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerAddresses {
    /// Stub of each exception vector 0..32 (vector 3 excepted, see `yield_entry`).
    pub exceptions: [u64; 32],
    /// Handler of `int3` from ring 3: the ring-3 code's way back to ring 0.
    pub yield_entry: u64,
}

const CODE64: u8 = 0xA; // L=1, G=1 (flags nibble: G D/B L AVL)
const DATA32: u8 = 0xC; // G=1, D/B=1 (also 32-bit code)

/// A segment descriptor (8 bytes).
#[must_use]
pub const fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xFFFF)
        | ((base as u64 & 0xFF_FFFF) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xF) << 48)
        | (((flags as u64) & 0xF) << 52)
        | (((base as u64 >> 24) & 0xFF) << 56)
}

/// The GDT for `vcpus` vCPUs, entry by entry.
#[must_use]
pub fn gdt_entries(vcpus: u32) -> Vec<u64> {
    let mut gdt = vec![
        0,
        0,
        descriptor(0, 0xF_FFFF, 0x9B, CODE64), // 0x10 kernel code
        descriptor(0, 0xF_FFFF, 0x93, DATA32), // 0x18 kernel data
        descriptor(0, 0xF_FFFF, 0xFB, DATA32), // 0x20 user code 32 (G, D/B as for data)
        descriptor(0, 0xF_FFFF, 0xF3, DATA32), // 0x28 user data
        descriptor(0, 0xF_FFFF, 0xFB, CODE64), // 0x30 user code 64
        0,
    ];
    for i in 0..vcpus {
        let base = layout::tss_gpa(i);
        // Available 64-bit TSS (type 9), present, DPL 0; the base's upper half follows.
        gdt.push(descriptor(
            (base & 0xFFFF_FFFF) as u32,
            (layout::TSS_SIZE - 1) as u32,
            0x89,
            0,
        ));
        gdt.push(base >> 32);
    }
    gdt
}

/// An IDT gate (16 bytes) to a 64-bit interrupt gate at `target` in the kernel code segment.
#[must_use]
pub fn idt_gate(target: u64, dpl: u8) -> [u8; 16] {
    let low = (target & 0xFFFF)
        | (u64::from(selector::KERNEL_CS) << 16)
        | (u64::from(0x8E | (dpl << 5)) << 40)
        | (((target >> 16) & 0xFFFF) << 48);
    let high = target >> 32;
    let mut gate = [0u8; 16];
    gate[..8].copy_from_slice(&low.to_le_bytes());
    gate[8..].copy_from_slice(&high.to_le_bytes());
    gate
}

/// The whole IDT: exception vectors to their stubs, `int3` (callable from ring 3) to the
/// yield entry, everything else not present (so it raises `#NP`, which is reported).
#[must_use]
pub fn idt(handlers: &HandlerAddresses) -> Vec<u8> {
    let mut idt = vec![0u8; 256 * 16];
    for (vector, target) in handlers.exceptions.iter().enumerate() {
        let (target, dpl) = if vector == 3 {
            (handlers.yield_entry, 3)
        } else {
            (*target, 0)
        };
        idt[vector * 16..vector * 16 + 16].copy_from_slice(&idt_gate(target, dpl));
    }
    idt
}

/// vCPU `index`'s TSS: only RSP0 (its ring-0 stack) matters; no I/O bitmap.
#[must_use]
pub fn tss(index: u32) -> Vec<u8> {
    let mut tss = vec![0u8; layout::TSS_SIZE as usize];
    tss[4..12].copy_from_slice(&layout::kernel_stack_top(index).to_le_bytes());
    tss[102..104].copy_from_slice(&(layout::TSS_SIZE as u16).to_le_bytes());
    tss
}

/// Identity page tables covering `gib` GiB with 2 MiB pages, all user-accessible and writable
/// (ring 3 runs the compute and touches the working set; there is nothing to protect from it).
#[must_use]
pub fn page_tables(gib: u64) -> Vec<Chunk> {
    const PRESENT_RW_USER: u64 = 0x7;
    const LARGE: u64 = 0x80;
    let mut pml4 = vec![0u8; layout::PAGE_SIZE as usize];
    pml4[..8].copy_from_slice(&(layout::PDPT_GPA | PRESENT_RW_USER).to_le_bytes());
    let mut pdpt = vec![0u8; layout::PAGE_SIZE as usize];
    let mut pds = vec![0u8; (gib * layout::PAGE_SIZE) as usize];
    for g in 0..gib {
        let pd = layout::PD_GPA + g * layout::PAGE_SIZE;
        let at = (g * 8) as usize;
        pdpt[at..at + 8].copy_from_slice(&(pd | PRESENT_RW_USER).to_le_bytes());
        for e in 0..512u64 {
            let addr = (g * 512 + e) * layout::LARGE_PAGE_SIZE;
            let at = ((g * 512 + e) * 8) as usize;
            pds[at..at + 8].copy_from_slice(&(addr | PRESENT_RW_USER | LARGE).to_le_bytes());
        }
    }
    vec![
        Chunk {
            gpa: layout::PML4_GPA,
            bytes: pml4,
        },
        Chunk {
            gpa: layout::PDPT_GPA,
            bytes: pdpt,
        },
        Chunk {
            gpa: layout::PD_GPA,
            bytes: pds,
        },
    ]
}

/// Everything to write before the first instruction, apart from the program and control page.
///
/// # Panics
///
/// Never for `vcpus <= MAX_VCPUS` and `mem_bytes <= MAX_MEM_MIB` MiB (checked by the spec
/// validation); the asserts guard the layout.
#[must_use]
pub fn system_tables(vcpus: u32, mem_bytes: u64, handlers: &HandlerAddresses) -> Vec<Chunk> {
    assert!(
        vcpus <= layout::MAX_VCPUS,
        "more vCPUs than the layout has room for"
    );
    let gib = layout::identity_map_gib(mem_bytes);
    assert!(
        gib <= layout::MAX_PAGE_DIRECTORIES,
        "identity map too large"
    );
    let gdt: Vec<u8> = gdt_entries(vcpus)
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    let mut chunks = vec![
        Chunk {
            gpa: layout::GDT_GPA,
            bytes: gdt,
        },
        Chunk {
            gpa: layout::IDT_GPA,
            bytes: idt(handlers),
        },
    ];
    chunks.extend((0..vcpus).map(|i| Chunk {
        gpa: layout::tss_gpa(i),
        bytes: tss(i),
    }));
    chunks.extend(page_tables(gib));
    chunks
}

/// The registers vCPU `index` starts with: 64-bit ring 0 at `entry`, on its own stack and TSS,
/// with its index in `rdi` and its slot's address in `rsi`.
#[must_use]
pub fn boot_registers(index: u32, vcpus: u32, entry: u64) -> BootRegisters {
    let flat = |selector: u16, code: bool| Segment {
        selector,
        base: 0,
        limit: 0xFFFF_FFFF,
        type_: if code { 0xB } else { 0x3 },
        dpl: 0,
        long: code,
        system: false,
    };
    BootRegisters {
        rip: entry,
        rsp: layout::kernel_stack_top(index),
        rdi: u64::from(index),
        rsi: layout::slot_gpa(index),
        cs: flat(selector::KERNEL_CS, true),
        ds: flat(selector::KERNEL_DS, false),
        tr: Segment {
            selector: layout::tss_selector(index),
            base: layout::tss_gpa(index),
            limit: (layout::TSS_SIZE - 1) as u32,
            type_: 0xB, // busy 64-bit TSS
            dpl: 0,
            long: false,
            system: true,
        },
        gdt: DescriptorTable {
            base: layout::GDT_GPA,
            limit: (layout::gdt_len(vcpus) - 1) as u16,
        },
        idt: DescriptorTable {
            base: layout::IDT_GPA,
            limit: 256 * 16 - 1,
        },
        cr3: layout::PML4_GPA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_descriptors_match_the_usual_encodings() {
        let gdt = gdt_entries(1);
        assert_eq!(gdt[2], 0x00AF_9B00_0000_FFFF, "kernel code 64");
        assert_eq!(gdt[3], 0x00CF_9300_0000_FFFF, "kernel data");
        assert_eq!(gdt[5], 0x00CF_F300_0000_FFFF, "user data");
        assert_eq!(gdt[6], 0x00AF_FB00_0000_FFFF, "user code 64");
        assert_eq!(
            gdt[8], 0x0000_8900_4000_0067,
            "TSS of vCPU 0 at 0x4000, limit 0x67"
        );
        assert_eq!(gdt[9], 0);
        assert_eq!(gdt.len() as u64 * 8, layout::gdt_len(1));
    }

    #[test]
    fn gate_encoding() {
        let gate = idt_gate(0x1234_5678_9ABC, 3);
        let low = u64::from_le_bytes(gate[..8].try_into().unwrap());
        let high = u64::from_le_bytes(gate[8..].try_into().unwrap());
        assert_eq!(low & 0xFFFF, 0x9ABC);
        assert_eq!((low >> 16) & 0xFFFF, 0x10);
        assert_eq!((low >> 40) & 0xFF, 0xEE);
        assert_eq!(low >> 48, 0x5678);
        assert_eq!(high, 0x1234);
    }

    #[test]
    fn int3_is_the_only_ring3_gate() {
        let handlers = HandlerAddresses {
            exceptions: [0xA0000; 32],
            yield_entry: 0xA1000,
        };
        let idt = idt(&handlers);
        for v in 0..256 {
            let attr = idt[v * 16 + 5];
            match v {
                3 => assert_eq!(attr, 0xEE),
                0..32 => assert_eq!(attr, 0x8E),
                _ => assert_eq!(attr, 0, "vector {v} must not be present"),
            }
        }
    }

    #[test]
    fn tss_points_at_own_stack() {
        let t = tss(3);
        assert_eq!(
            u64::from_le_bytes(t[4..12].try_into().unwrap()),
            layout::kernel_stack_top(3)
        );
        assert_eq!(u16::from_le_bytes([t[102], t[103]]), 104);
    }

    #[test]
    fn identity_map_maps_each_large_page_to_itself() {
        let chunks = page_tables(2);
        let pd = &chunks[2].bytes;
        for i in [0u64, 1, 511, 512, 1023] {
            let e = u64::from_le_bytes(pd[i as usize * 8..i as usize * 8 + 8].try_into().unwrap());
            assert_eq!(e & !0xFFF, i << 21);
            assert_eq!(e & 0xFFF, 0x87);
        }
        let pdpt = &chunks[1].bytes;
        assert_eq!(
            u64::from_le_bytes(pdpt[8..16].try_into().unwrap()),
            (layout::PD_GPA + 0x1000) | 7
        );
    }

    #[test]
    fn boot_registers_start_in_ring0_long_mode() {
        let regs = boot_registers(2, 4, 0xA0000);
        assert_eq!(regs.cs.selector, 0x10);
        assert!(regs.cs.long);
        assert_eq!(regs.rsp, layout::kernel_stack_top(2));
        assert_eq!(regs.tr.selector, 0x60);
        assert_eq!(u64::from(regs.gdt.limit) + 1, layout::gdt_len(4));
    }
}
