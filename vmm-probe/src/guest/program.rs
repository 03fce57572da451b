//! The guest program, assembled with iced-x86 at VMM start.
//!
//! One program serves every workload: a ring-0 loop reads the control page at each tick and
//! branches on its mode, so the VMM can switch workloads, levels and mixes without restarting
//! the guest. Port and MMIO writes and `hlt` happen in ring 0; compute and working-set
//! dirtying happen in ring 3, entered with `iretq` and left with `int3`. The split follows a
//! measurement on PVM hosts (see the `vm_ring_speed` test): there, ring-0 code of a guest that
//! is not PVM-aware runs in KVM's instruction emulator (about 1.4 M instructions/s) while
//! ring-3 code runs natively (about 10,000 M instructions/s); on VMX/SVM both run natively and
//! the split costs two ring transitions per tick.
//!
//! Register use in ring 0: `r13` = vCPU index, `r14` = control page, `r15` = this vCPU's slot.
//! Ring-3 code preserves them.

use iced_x86::code_asm::{
    AsmRegister64, CodeAssembler, CodeLabel, al, cr2, dword_ptr, eax, ecx, esi, ptr, qword_ptr, r8,
    r9, r10, r11, r13, r14, r15, rax, rbx, rcx, rdi, rdx, rsi, rsp,
};
use iced_x86::{BlockEncoderOptions, IcedError};

use super::layout::{self, balloon, control, crash, mode, port, selector, slot};
use super::tables::HandlerAddresses;

/// Vectors for which the CPU pushes an error code.
const ERROR_CODE_VECTORS: [u32; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

const _: () = assert!(layout::STACK_SIZE.is_power_of_two());
const _: () = assert!(layout::SLOT_STRIDE.is_power_of_two());

/// The assembled guest program.
#[derive(Debug, Clone)]
pub struct Program {
    /// Machine code, to be loaded at [`layout::CODE_GPA`].
    pub code: Vec<u8>,
    /// Where every vCPU starts (in ring 0).
    pub entry: u64,
    /// Interrupt handlers, for the IDT.
    pub handlers: HandlerAddresses,
}

/// The guest program could not be assembled (a bug in this module).
#[derive(Debug, thiserror::Error)]
#[error("assembling the guest program failed")]
pub struct BuildProgramError(#[from] IcedError);

/// Offsets are small positive constants; this keeps the casts in one place.
fn off(offset: u64) -> i32 {
    i32::try_from(offset).expect("layout offsets fit in a displacement")
}

/// Imm32 form of a small layout constant.
fn imm(value: u64) -> i32 {
    i32::try_from(value).expect("layout constants fit in an immediate")
}

/// Labels the program's parts jump between.
struct Labels {
    tick: CodeLabel,
    end_tick: CodeLabel,
    idle: CodeLabel,
    paced: CodeLabel,
    crash: CodeLabel,
    burst: CodeLabel,
    spin_kernel: CodeLabel,
    spin_user: CodeLabel,
    user_work: CodeLabel,
    user_spin: CodeLabel,
    yield_entry: CodeLabel,
    exception_common: CodeLabel,
    balloon_agent: CodeLabel,
}

/// Assembles the guest program.
///
/// # Errors
///
/// [`BuildProgramError`] if iced-x86 rejects an instruction, which would be a bug here.
///
/// # Panics
///
/// If the program outgrows its region of the layout (a bug caught by the unit tests).
pub fn build() -> Result<Program, BuildProgramError> {
    let mut a = CodeAssembler::new(64)?;
    let mut l = Labels {
        tick: a.create_label(),
        end_tick: a.create_label(),
        idle: a.create_label(),
        paced: a.create_label(),
        crash: a.create_label(),
        burst: a.create_label(),
        spin_kernel: a.create_label(),
        spin_user: a.create_label(),
        user_work: a.create_label(),
        user_spin: a.create_label(),
        yield_entry: a.create_label(),
        exception_common: a.create_label(),
        balloon_agent: a.create_label(),
    };
    let mut entry = a.create_label();
    a.set_label(&mut entry)?;
    // The very first instruction: tells the VMM this vCPU runs.
    a.out(i32::from(port::FIRST_INSTRUCTION), al)?;
    a.mov(r13, rdi)?;
    a.mov(r15, rsi)?;
    a.mov(r14, layout::CONTROL_GPA)?;

    dispatch(&mut a, &mut l)?;
    idle(&mut a, &mut l)?;
    paced(&mut a, &mut l)?;
    crash_mode(&mut a, &mut l)?;
    burst(&mut a, &mut l)?;
    spin_kernel(&mut a, &mut l)?;
    spin_user(&mut a, &mut l)?;
    user_work(&mut a, &mut l)?;
    balloon_agent(&mut a, &mut l)?;
    // int3 from ring 3: drop the 5-word frame (int3 pushes no error code) and finish the tick.
    a.set_label(&mut l.yield_entry)?;
    a.add(rsp, 40)?;
    a.jmp(l.end_tick)?;
    let stubs = exception_stubs(&mut a, &mut l)?;

    let result = a.assemble_options(
        layout::CODE_GPA,
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let mut exceptions = [0u64; 32];
    for (address, label) in exceptions.iter_mut().zip(&stubs) {
        *address = result.label_ip(label)?;
    }
    let program = Program {
        entry: result.label_ip(&entry)?,
        handlers: HandlerAddresses {
            exceptions,
            yield_entry: result.label_ip(&l.yield_entry)?,
        },
        code: result.inner.code_buffer,
    };
    assert!(
        program.code.len() as u64 <= layout::CODE_MAX_BYTES,
        "guest program larger than its region"
    );
    Ok(program)
}

/// Top of the tick loop: vCPU 0 runs the balloon agent, then every vCPU branches on the mode;
/// the end of a tick counts it and halts until the VMM's next tick boundary.
fn dispatch(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.tick)?;
    let mut not_first = a.create_label();
    a.test(r13, r13)?;
    a.jnz(not_first)?;
    a.call(l.balloon_agent)?;
    a.set_label(&mut not_first)?;
    a.mov(eax, dword_ptr(r14 + off(control::MODE)))?;
    for (value, target) in [
        (mode::PACED, l.paced),
        (mode::IDLE, l.idle),
        (mode::CRASH, l.crash),
        (mode::BURST, l.burst),
        (mode::SPIN_KERNEL, l.spin_kernel),
        (mode::SPIN_USER, l.spin_user),
    ] {
        a.cmp(eax, imm(u64::from(value)))?;
        a.je(target)?;
    }
    // Unknown mode or HALT: fall through to an empty tick.
    a.set_label(&mut l.end_tick)?;
    a.inc(qword_ptr(r15 + off(slot::TICKS)))?;
    a.hlt()?;
    a.jmp(l.tick)?;
    Ok(())
}

/// Idle: paravirtual sleep request, `hlt`, count the wake-up.
fn idle(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.idle)?;
    a.mov(eax, dword_ptr(r14 + off(control::IDLE_SLEEP_US)))?;
    a.out(i32::from(port::PV_SLEEP), eax)?;
    a.hlt()?;
    a.inc(qword_ptr(r15 + off(slot::TICKS)))?;
    a.jmp(l.tick)?;
    Ok(())
}

/// `dst = whole ops of (slot[acc] + control[budget])`; the fraction stays in `slot[acc]`.
fn take_budget(
    a: &mut CodeAssembler,
    dst: AsmRegister64,
    acc: u64,
    budget: u64,
) -> Result<(), IcedError> {
    a.mov(rax, qword_ptr(r15 + off(acc)))?;
    a.add(rax, qword_ptr(r14 + off(budget)))?;
    a.mov(dst, rax)?;
    a.shr(dst, layout::BUDGET_FRACTION_BITS)?;
    a.and(eax, imm((1 << layout::BUDGET_FRACTION_BITS) - 1))?;
    a.mov(qword_ptr(r15 + off(acc)), rax)?;
    Ok(())
}

/// Paced: this tick's port writes and MMIO writes in ring 0, then compute and memory in ring 3.
fn paced(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.paced)?;
    // Port writes.
    let mut io_loop = a.create_label();
    let mut io_done = a.create_label();
    take_budget(a, rcx, slot::ACC_IO, control::IO_PER_TICK)?;
    a.test(rcx, rcx)?;
    a.jz(io_done)?;
    a.add(qword_ptr(r15 + off(slot::IO_OPS)), rcx)?;
    a.set_label(&mut io_loop)?;
    a.out(i32::from(port::WORKLOAD_IO), al)?;
    a.dec(rcx)?;
    a.jnz(io_loop)?;
    // MMIO writes to the unbacked page.
    a.set_label(&mut io_done)?;
    let mut mmio_loop = a.create_label();
    let mut mmio_done = a.create_label();
    take_budget(a, rcx, slot::ACC_MMIO, control::MMIO_PER_TICK)?;
    a.test(rcx, rcx)?;
    a.jz(mmio_done)?;
    a.add(qword_ptr(r15 + off(slot::MMIO_OPS)), rcx)?;
    a.mov(rdx, qword_ptr(r14 + off(control::MMIO_GPA)))?;
    a.set_label(&mut mmio_loop)?;
    a.mov(dword_ptr(rdx), ecx)?;
    a.dec(rcx)?;
    a.jnz(mmio_loop)?;
    // Memory and compute budgets, handed to ring 3.
    a.set_label(&mut mmio_done)?;
    let mut has_ws = a.create_label();
    take_budget(a, rsi, slot::ACC_MEM, control::MEM_PER_TICK)?;
    a.mov(r8, qword_ptr(r14 + off(control::WS_PART_PAGES)))?;
    a.test(r8, r8)?;
    a.jnz(has_ws)?;
    a.xor(esi, esi)?;
    a.set_label(&mut has_ws)?;
    a.add(qword_ptr(r15 + off(slot::MEM_OPS)), rsi)?;
    a.shl(r8, layout::PAGE_SIZE.trailing_zeros())?;
    a.mov(rdx, r8)?;
    a.imul_2(rdx, r13)?;
    a.add(rdx, qword_ptr(r14 + off(control::WS_BASE)))?;
    a.mov(rdi, qword_ptr(r14 + off(control::CPU_TSC_PER_TICK)))?;
    a.mov(rax, rdi)?;
    a.or(rax, rsi)?;
    a.jz(l.end_tick)?;
    enter_user(a, l.user_work)?;
    Ok(())
}

/// `iretq` to `target` in ring 3 on this vCPU's user stack, interrupts off.
fn enter_user(a: &mut CodeAssembler, target: CodeLabel) -> Result<(), IcedError> {
    a.mov(rax, r13)?;
    a.shl(rax, layout::STACK_SIZE.trailing_zeros())?;
    a.add(rax, imm(layout::USER_STACKS_GPA + layout::STACK_SIZE))?;
    a.push(i32::from(selector::USER_DS))?;
    a.push(rax)?;
    a.push(0x2)?; // RFLAGS: reserved bit 1 only
    a.push(i32::from(selector::USER_CS))?;
    a.lea(rax, ptr(target))?;
    a.push(rax)?;
    a.iretq()?;
    Ok(())
}

/// Crash: tick normally until `CRASH_AFTER_TICKS`, then fault as `CRASH_KIND` says.
fn crash_mode(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.crash)?;
    let mut triple = a.create_label();
    a.mov(rax, qword_ptr(r15 + off(slot::TICKS)))?;
    a.cmp(rax, qword_ptr(r14 + off(control::CRASH_AFTER_TICKS)))?;
    a.jb(l.end_tick)?;
    a.cmp(
        dword_ptr(r14 + off(control::CRASH_KIND)),
        imm(u64::from(crash::TRIPLE_FAULT)),
    )?;
    a.je(triple)?;
    a.ud2()?;
    a.set_label(&mut triple)?;
    a.lidt(ptr(r15 + off(slot::ZERO_IDTR)))?;
    a.ud2()?;
    Ok(())
}

/// Burst: `BURST_COUNT` port writes back to back, once, then report done and idle at ticks.
fn burst(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.burst)?;
    let mut out_loop = a.create_label();
    let mut finished = a.create_label();
    a.cmp(qword_ptr(r15 + off(slot::BURST_DONE)), 0)?;
    a.jne(l.end_tick)?;
    a.mov(ecx, dword_ptr(r14 + off(control::BURST_COUNT)))?;
    a.test(ecx, ecx)?;
    a.jz(finished)?;
    a.add(qword_ptr(r15 + off(slot::IO_OPS)), rcx)?;
    a.set_label(&mut out_loop)?;
    a.out(i32::from(port::WORKLOAD_IO), al)?;
    a.dec(ecx)?;
    a.jnz(out_loop)?;
    a.set_label(&mut finished)?;
    a.mov(qword_ptr(r15 + off(slot::BURST_DONE)), 1)?;
    a.out(i32::from(port::DONE), al)?;
    a.jmp(l.end_tick)?;
    Ok(())
}

/// The counting loop of the spin modes: 4 instructions per iteration, checking the mode every
/// 65,536 iterations. Leaves with the mode changed.
fn counting_loop(a: &mut CodeAssembler, spin_mode: u32) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(rax, qword_ptr(r15 + off(slot::CPU_OPS)))?;
    a.set_label(&mut top)?;
    a.inc(rax)?;
    a.mov(qword_ptr(r15 + off(slot::CPU_OPS)), rax)?;
    a.test(eax, 0xFFFF)?;
    a.jnz(top)?;
    a.cmp(
        dword_ptr(r14 + off(control::MODE)),
        imm(u64::from(spin_mode)),
    )?;
    a.je(top)?;
    Ok(())
}

/// Spin in ring 0 (diagnostic: measures how fast ring-0 code runs).
fn spin_kernel(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.spin_kernel)?;
    counting_loop(a, mode::SPIN_KERNEL)?;
    a.jmp(l.end_tick)?;
    Ok(())
}

/// Spin in ring 3 (diagnostic: measures how fast ring-3 code runs).
fn spin_user(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.spin_user)?;
    enter_user(a, l.user_spin)?;
    a.set_label(&mut l.user_spin)?;
    counting_loop(a, mode::SPIN_USER)?;
    a.int3()?;
    Ok(())
}

/// Ring-3 work of a paced tick. In: `rdi` = TSC cycles of compute, `rsi` = pages to dirty,
/// `rdx` = this vCPU's partition of the working set, `r8` = its size in bytes. Leaves by
/// `int3`.
fn user_work(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.user_work)?;
    let mut mem_loop = a.create_label();
    let mut no_wrap = a.create_label();
    let mut compute = a.create_label();
    let mut compute_loop = a.create_label();
    let mut block = a.create_label();
    let mut done = a.create_label();
    a.test(rsi, rsi)?;
    a.jz(compute)?;
    a.mov(rcx, qword_ptr(r15 + off(slot::MEM_CURSOR)))?;
    a.cmp(rcx, r8)?;
    a.jb(mem_loop)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut mem_loop)?;
    // Dirty one word of the page; the value changes every pass.
    a.mov(qword_ptr(rdx + rcx), rsi)?;
    a.add(rcx, imm(layout::PAGE_SIZE))?;
    a.cmp(rcx, r8)?;
    a.jb(no_wrap)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut no_wrap)?;
    a.dec(rsi)?;
    a.jnz(mem_loop)?;
    a.mov(qword_ptr(r15 + off(slot::MEM_CURSOR)), rcx)?;
    // Compute until the TSC passes start + rdi.
    a.set_label(&mut compute)?;
    a.test(rdi, rdi)?;
    a.jz(done)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.add(rax, rdi)?;
    a.mov(r9, rax)?;
    a.set_label(&mut compute_loop)?;
    a.mov(ecx, imm(u64::from(layout::CPU_BLOCK_ITERATIONS)))?;
    a.set_label(&mut block)?;
    a.imul_3(rbx, rbx, 0x2545_F491)?;
    a.add(rbx, rcx)?;
    a.dec(ecx)?;
    a.jnz(block)?;
    a.inc(qword_ptr(r15 + off(slot::CPU_OPS)))?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.cmp(rax, r9)?;
    a.jb(compute_loop)?;
    a.set_label(&mut done)?;
    a.int3()?;
    Ok(())
}

/// The balloon agent (vCPU 0, ring 0, once per tick; clobbers `rax`..`r11`).
///
/// The guest's free memory is RAM above its working set. The balloon holds the top of it: page
/// `top - 1` first, then downwards, so the held pages are always `top - held .. top`. Each
/// tick the agent moves at most [`layout::BALLOON_BATCH_PAGES`] towards
/// `min(target, free memory)`: inflating, it lists the pages it gives up in the PFN buffer and
/// reports them on [`port::BALLOON_INFLATE`], after which it never touches them; deflating, it
/// takes the lowest held pages back, writes a free-list link into each (as a guest kernel's
/// allocator would) and reports them on [`port::BALLOON_DEFLATE`]. A working set that grows
/// into the balloon shrinks the balloon first (the guest needs the memory back).
fn balloon_agent(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    let page_shift = layout::PAGE_SIZE.trailing_zeros();
    a.set_label(&mut l.balloon_agent)?;
    let mut have_free = a.create_label();
    let mut target_ok = a.create_label();
    let mut inflate = a.create_label();
    let mut inflate_loop = a.create_label();
    let mut deflate = a.create_label();
    let mut deflate_loop = a.create_label();
    let mut report = a.create_label();
    // Free memory as the guest sees it, r10 - held or 0, written before each report so the VMM
    // never sees a balloon size and a stale free figure.
    let write_free = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        let mut positive = a.create_label();
        a.mov(rax, r10)?;
        a.sub(rax, r11)?;
        a.jae(positive)?;
        a.xor(eax, eax)?;
        a.set_label(&mut positive)?;
        a.mov(qword_ptr(rdi + off(balloon::FREE_PAGES)), rax)?;
        Ok(())
    };
    // r8 = top PFN (end of RAM).
    a.mov(r8, qword_ptr(r14 + off(control::MEM_BYTES)))?;
    a.shr(r8, page_shift)?;
    // r9 = first PFN above the working set.
    a.mov(r9, qword_ptr(r14 + off(control::WS_PART_PAGES)))?;
    a.mov(eax, dword_ptr(r14 + off(control::VCPUS)))?;
    a.imul_2(r9, rax)?;
    a.mov(rax, qword_ptr(r14 + off(control::WS_BASE)))?;
    a.shr(rax, page_shift)?;
    a.add(r9, rax)?;
    // r10 = pages the balloon may hold: top - r9, or 0.
    a.mov(r10, r8)?;
    a.sub(r10, r9)?;
    a.jae(have_free)?;
    a.xor(r10, r10)?;
    a.set_label(&mut have_free)?;
    // rdx = target, capped at r10; r11 = held; rdi = balloon page; rsi = PFN buffer.
    a.mov(rdx, qword_ptr(r14 + off(control::BALLOON_TARGET_PAGES)))?;
    a.cmp(rdx, r10)?;
    a.jbe(target_ok)?;
    a.mov(rdx, r10)?;
    a.set_label(&mut target_ok)?;
    a.mov(rdi, layout::BALLOON_GPA)?;
    a.mov(rsi, layout::BALLOON_PFNS_GPA)?;
    a.mov(r11, qword_ptr(rdi + off(balloon::HELD_PAGES)))?;
    a.cmp(r11, rdx)?;
    a.jb(inflate)?;
    a.ja(deflate)?;
    a.jmp(report)?;
    let batch = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        // rcx = min(rcx, batch size); record it; rax = 0 (the buffer index).
        let mut small = a.create_label();
        a.cmp(rcx, imm(layout::BALLOON_BATCH_PAGES))?;
        a.jbe(small)?;
        a.mov(ecx, imm(layout::BALLOON_BATCH_PAGES))?;
        a.set_label(&mut small)?;
        a.mov(qword_ptr(rdi + off(balloon::BATCH)), rcx)?;
        a.xor(eax, eax)?;
        Ok(())
    };
    // Inflate: give up pages top - held - 1, top - held - 2, ...
    a.set_label(&mut inflate)?;
    a.mov(rcx, rdx)?;
    a.sub(rcx, r11)?;
    batch(a)?;
    a.set_label(&mut inflate_loop)?;
    a.mov(rdx, r8)?;
    a.sub(rdx, r11)?;
    a.dec(rdx)?;
    a.mov(qword_ptr(rsi + rax * 8), rdx)?;
    a.inc(r11)?;
    a.inc(rax)?;
    a.cmp(rax, rcx)?;
    a.jb(inflate_loop)?;
    a.mov(qword_ptr(rdi + off(balloon::HELD_PAGES)), r11)?;
    write_free(a)?;
    a.mov(eax, ecx)?;
    a.out(i32::from(port::BALLOON_INFLATE), eax)?;
    a.ret()?;
    // Deflate: take back pages top - held, top - held + 1, ..., linking each into the free list.
    a.set_label(&mut deflate)?;
    a.mov(rcx, r11)?;
    a.sub(rcx, rdx)?;
    batch(a)?;
    a.set_label(&mut deflate_loop)?;
    a.mov(rdx, r8)?;
    a.sub(rdx, r11)?;
    a.mov(qword_ptr(rsi + rax * 8), rdx)?;
    a.shl(rdx, page_shift)?;
    a.mov(qword_ptr(rdx), rdx)?;
    a.dec(r11)?;
    a.inc(rax)?;
    a.cmp(rax, rcx)?;
    a.jb(deflate_loop)?;
    a.mov(qword_ptr(rdi + off(balloon::HELD_PAGES)), r11)?;
    write_free(a)?;
    a.mov(eax, ecx)?;
    a.out(i32::from(port::BALLOON_DEFLATE), eax)?;
    a.ret()?;
    a.set_label(&mut report)?;
    write_free(a)?;
    a.ret()?;
    Ok(())
}

/// One stub per exception vector (pushing a dummy error code where the CPU pushes none, then
/// the vector), and the common handler: record vector, error code, RIP and CR2 in the vCPU's
/// slot (found from the stack pointer, in case registers are corrupt), report the vector on
/// [`port::EXCEPTION`] and halt for good.
fn exception_stubs(a: &mut CodeAssembler, l: &mut Labels) -> Result<Vec<CodeLabel>, IcedError> {
    let mut stubs = Vec::with_capacity(32);
    for vector in 0..32u32 {
        let mut stub = a.create_label();
        a.set_label(&mut stub)?;
        if !ERROR_CODE_VECTORS.contains(&vector) {
            a.push(0)?;
        }
        a.push(imm(u64::from(vector)))?;
        a.jmp(l.exception_common)?;
        stubs.push(stub);
    }
    a.set_label(&mut l.exception_common)?;
    let mut dead = a.create_label();
    a.mov(rax, rsp)?;
    a.sub(rax, imm(layout::KERNEL_STACKS_GPA))?;
    a.shr(rax, layout::STACK_SIZE.trailing_zeros())?;
    a.shl(rax, layout::SLOT_STRIDE.trailing_zeros())?;
    a.add(rax, imm(layout::SLOTS_GPA))?;
    for (frame, field) in [
        (0, slot::EXC_VECTOR),
        (8, slot::EXC_ERROR),
        (16, slot::EXC_RIP),
    ] {
        a.mov(rcx, qword_ptr(rsp + frame))?;
        a.mov(qword_ptr(rax + off(field)), rcx)?;
    }
    a.mov(rcx, cr2)?;
    a.mov(qword_ptr(rax + off(slot::EXC_CR2)), rcx)?;
    a.mov(rax, qword_ptr(rsp))?;
    a.out(i32::from(port::EXCEPTION), eax)?;
    a.set_label(&mut dead)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(dead)?;
    Ok(stubs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_within_its_region() {
        let program = build().expect("assembles");
        assert_eq!(program.entry, layout::CODE_GPA);
        assert!(!program.code.is_empty());
        let end = layout::CODE_GPA + program.code.len() as u64;
        for address in program
            .handlers
            .exceptions
            .iter()
            .chain([&program.handlers.yield_entry])
        {
            assert!((layout::CODE_GPA..end).contains(address));
        }
    }

    #[test]
    fn first_instruction_is_the_first_instruction_port_write() {
        let program = build().expect("assembles");
        // out imm8, al
        assert_eq!(program.code[..2], [0xE6, port::FIRST_INSTRUCTION as u8]);
    }

    #[test]
    fn stubs_push_a_dummy_error_code_only_where_the_cpu_does_not() {
        let program = build().expect("assembles");
        let at = |v: usize| (program.handlers.exceptions[v] - layout::CODE_GPA) as usize;
        // push 0 (6a 00) then push vector (6a vv) for #UD; just push vector for #GP.
        assert_eq!(program.code[at(6)..at(6) + 4], [0x6A, 0x00, 0x6A, 0x06]);
        assert_eq!(program.code[at(13)..at(13) + 2], [0x6A, 0x0D]);
    }
}
