//! Benchmarks printed by ignored tests: VM create-to-first-instruction time, and the round trip
//! of one port-write exit through the VMM.
//!
//! `cargo test --release -p fleetmind-vmm-probe --test vm_bench -- --ignored --nocapture --test-threads 1`

mod vm_common;

use std::time::{Duration, Instant};

use fleetmind_vmm_probe::guest::Workload;
use vm_common::{spec, vmm_or_skip, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "min {:.1} µs, median {:.1} µs, max {:.1} µs over {} runs",
        us(samples[0]),
        us(samples[samples.len() / 2]),
        us(samples[samples.len() - 1]),
        samples.len()
    )
}

#[test]
#[ignore = "benchmark: prints create-to-first-instruction times"]
fn create_to_first_instruction() {
    let Some(vmm) = vmm_or_skip("create_to_first_instruction") else {
        return;
    };
    let (mut total, mut create, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..30 {
        let t0 = Instant::now();
        let vm = vmm
            .create_vm(spec(
                &format!("b{i}"),
                1,
                16,
                Workload::Idle { wake_us: 1000 },
            ))
            .unwrap();
        let created = Instant::now();
        vm.start().unwrap();
        let first = wait_for("the first instruction", WAIT, || vm.first_instruction_at());
        total.push(vm.create_to_first_instruction().unwrap());
        create.push(created - t0);
        start.push(first.duration_since(created));
    }
    println!("flavour: {:?}", vmm.flavour());
    println!("create_vm to first instruction: {}", summary(total));
    println!("  of which create_vm:           {}", summary(create));
    println!("  of which start to first insn: {}", summary(start));
}

#[test]
#[ignore = "benchmark: prints the round trip of one port-write exit"]
fn io_exit_round_trip() {
    let Some(vmm) = vmm_or_skip("io_exit_round_trip") else {
        return;
    };
    const COUNT: u32 = 10_000;
    let mut samples = Vec::new();
    for i in 0..5 {
        let vm = vmm
            .launch(spec(
                &format!("burst{i}"),
                1,
                4,
                Workload::IoBurst { count: COUNT },
            ))
            .unwrap();
        let done = wait_for("the burst", WAIT, || vm.burst_done_at());
        let first = vm.first_instruction_at().unwrap();
        assert!(vm.exit_counts().io_out >= u64::from(COUNT));
        samples.push(done.duration_since(first) / COUNT);
    }
    println!("flavour: {:?}", vmm.flavour());
    println!(
        "{COUNT} back-to-back OUTs, per exit round trip: {}",
        summary(samples)
    );
}
