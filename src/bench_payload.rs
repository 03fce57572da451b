//! `fleetmind bench payload`: the event stream's payload encodings side by side (JSON envelope
//! per record, Arrow IPC per record, Arrow IPC per batch) on VM samples shaped like the ones
//! the VM collector writes (16 KVM exit counters, one to four vCPUs, NUMA residency, balloon).

use fleetmind_schema::payload::measure_vm_samples;
use fleetmind_schema::{ExitCounter, NodeBytes, VcpuSample, VmSample, VmmKind};

use crate::cli::BenchPayloadArgs;

/// The exit counters a PVM host's KVM reports per VM (as the built-in VMM's samples carry
/// them).
const EXIT_COUNTERS: [&str; 16] = [
    "exits",
    "halt_exits",
    "halt_wakeup",
    "hypercalls",
    "insn_emulation",
    "insn_emulation_fail",
    "io_exits",
    "irq_exits",
    "irq_window_exits",
    "mmio_exits",
    "nmi_window_exits",
    "notify_window_exits",
    "pf_fixed",
    "pf_taken",
    "request_irq_exits",
    "signal_exits",
];

/// A VM sample like the collector's: sample `i` of a fleet of 64 VMs on 8 hosts.
#[allow(clippy::cast_precision_loss)]
fn sample(i: usize) -> VmSample {
    let vm = i % 64;
    let host = format!("rack1-h{:02}", vm % 8);
    let vcpus = 1 + vm % 4;
    VmSample {
        ts: 1_763_892_000_000 + i as i64 * 1000 / 64,
        host: host.clone(),
        vm: format!("{host}/vm-{vm:03}"),
        name: format!("vm-{vm:03}"),
        vmm: VmmKind::Builtin,
        interval_ms: 1000,
        mem_bytes: 1 << 30,
        rss_bytes: (200 + (i % 97) as u64) << 20,
        numa_resident: vec![NodeBytes {
            node: 0,
            bytes: (200 + (i % 97) as u64) << 20,
        }],
        balloon_target_bytes: Some(0),
        balloon_actual_bytes: Some(0),
        guest_free_bytes: Some((500 + (i % 13) as u64) << 20),
        dirty_bytes_per_s: None,
        vcpus: (0..vcpus)
            .map(|v| VcpuSample {
                vcpu: v as u32,
                tid: Some(10_000 + (vm * 8 + v) as u32),
                run_frac: ((i * 7 + v) % 100) as f64 / 100.0,
                wait_frac: ((i + v) % 10) as f64 / 200.0,
                host_cpu: Some((v % 2) as u32),
                affinity: vec![0, 1],
                exits_per_s: 500.0 + ((i * 13 + v) % 1000) as f64,
            })
            .collect(),
        exits: EXIT_COUNTERS
            .iter()
            .enumerate()
            .map(|(k, reason)| ExitCounter {
                reason: (*reason).to_owned(),
                total: (i as u64 + 1) * (k as u64 * 37 + 1),
                per_s: ((i * (k + 3)) % 5000) as f64,
            })
            .collect(),
    }
}

/// Runs the comparison and prints one line per encoding, and the ratios to JSON.
///
/// # Errors
///
/// If a round trip fails (a bug).
pub fn payload(args: &BenchPayloadArgs) -> anyhow::Result<()> {
    let samples: Vec<VmSample> = (0..args.records).map(sample).collect();
    println!(
        "fleetmind bench payload: {} VM samples, Arrow batches of {}, best of {} rounds",
        args.records, args.batch, args.rounds
    );
    let mut best: Option<Vec<fleetmind_schema::payload::PayloadFigures>> = None;
    for _ in 0..args.rounds.max(1) {
        let figures = measure_vm_samples(&samples, args.batch)?;
        best = Some(match best {
            None => figures,
            Some(b) => b
                .into_iter()
                .zip(figures)
                .map(|(mut b, f)| {
                    b.encode_ns_per_record = b.encode_ns_per_record.min(f.encode_ns_per_record);
                    b.decode_ns_per_record = b.decode_ns_per_record.min(f.decode_ns_per_record);
                    b
                })
                .collect(),
        });
    }
    let figures = best.unwrap_or_default();
    let Some(json) = figures.first().cloned() else {
        anyhow::bail!("no figures measured");
    };
    for f in &figures {
        println!(
            "{f}   ratio to JSON: bytes {:.2}, encode {:.2}, decode {:.2}",
            f.bytes_per_record / json.bytes_per_record,
            f.encode_ns_per_record / json.encode_ns_per_record,
            f.decode_ns_per_record / json.decode_ns_per_record
        );
    }
    Ok(())
}
