//! How fast guest code runs in ring 0 and in ring 3 on this host. On a PVM host, ring 0 of a
//! guest that is not PVM-aware runs in KVM's instruction emulator while ring 3 runs natively;
//! this measurement is why the guest computes in ring 3 (see `guest::program`).
//!
//! Ignored by default (it burns a CPU for a few seconds and asserts nothing but progress):
//! `cargo test -p fleetmind-vmm-probe --test vm_ring_speed -- --ignored --nocapture`

mod vm_common;

use std::time::{Duration, Instant};

use fleetmind_vmm_probe::guest::{Ring, Workload};
use fleetmind_vmm_probe::vmm::Vmm;
use vm_common::{spec, vmm_or_skip, wait_for};

/// Instructions per iteration of the spin loop (inc, mov, test, jnz).
const INSTRUCTIONS_PER_ITERATION: f64 = 4.0;

/// Loop iterations per second in `ring`, best of three 1-second windows.
fn iterations_per_s(vmm: &Vmm, ring: Ring) -> f64 {
    let vm = vmm
        .launch(spec("spin", 1, 4, Workload::Spin { ring }))
        .expect("a spin VM launches");
    wait_for("the loop to start", Duration::from_secs(10), || {
        (vm.guest_counters().cpu_ops > 0).then_some(())
    });
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let (c0, t0) = (vm.guest_counters().cpu_ops, Instant::now());
        std::thread::sleep(Duration::from_secs(1)); // the measurement window, not a sync
        let (c1, t1) = (vm.guest_counters().cpu_ops, Instant::now());
        best = best.max((c1 - c0) as f64 / (t1 - t0).as_secs_f64());
    }
    let exits = vm.exit_counts();
    assert_eq!(
        exits.total(),
        1,
        "only the first-instruction port write: {exits:?}"
    );
    best
}

#[test]
#[ignore = "measurement: prints ring-0 vs ring-3 guest instruction rates"]
fn ring0_vs_ring3_instruction_rate() {
    let Some(vmm) = vmm_or_skip("ring0_vs_ring3_instruction_rate") else {
        return;
    };
    let kernel = iterations_per_s(&vmm, Ring::Kernel);
    let user = iterations_per_s(&vmm, Ring::User);
    println!("flavour: {:?}", vmm.flavour());
    for (name, rate) in [("ring 0 (CPL0)", kernel), ("ring 3 (CPL3)", user)] {
        println!(
            "{name}: {:.3} M loop iterations/s = {:.1} M guest instructions/s",
            rate / 1e6,
            rate * INSTRUCTIONS_PER_ITERATION / 1e6
        );
    }
    println!("ring 3 / ring 0: {:.0}x", user / kernel);
    assert!(kernel > 0.0 && user > 0.0);
}
