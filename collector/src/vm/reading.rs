//! What a VM source reads at one instant ([`VmReading`]: cumulative counters and current
//! values), and how two readings of the same VM become a [`VmSample`] with rates
//! ([`RateTracker`]).
//!
//! Sources only read; they never compute rates. The tracker owns the previous reading of each
//! VM and handles the awkward cases once for every source:
//! * the first reading of a VM only primes it (no sample: a rate needs two points);
//! * a missed sample just makes the interval longer: rates divide by the real elapsed time
//!   between the two readings, measured on one monotonic clock;
//! * a VM that restarted (its [`VmReading::instance`] changed) or a counter that went down
//!   counts from zero: the delta is the new value (the events since the reset), never negative;
//! * a counter that is 32 bits wide and wrapped (the previous value was in the top eighth of
//!   the 32-bit range, the new one far below) gains `2^32 - prev + new`.

use std::collections::HashMap;
use std::time::Instant;

use fleetmind_schema::{ExitCounter, NodeBytes, VcpuSample, VmSample, VmmKind};

/// One VM as a source sees it now. Counters are cumulative since the VM (instance) started.
#[derive(Debug, Clone, PartialEq)]
pub struct VmReading {
    /// Wall-clock time of the reading, ms since the Unix epoch (the sample's `ts`).
    pub ts_ms: fleetmind_schema::TimestampMs,
    /// Monotonic time of the reading (rates divide by differences of these).
    pub at: Instant,
    /// Host the VM runs on.
    pub host: String,
    /// Stable VM id, unique in the fleet (e.g. `host/name`).
    pub vm: String,
    /// Human name.
    pub name: String,
    /// Which VMM runs it.
    pub vmm: VmmKind,
    /// Changes when the VM (or its VMM process) restarts: a process id, a VMM-assigned id.
    pub instance: u64,
    /// The process running the VM, where known (lets the debugfs fallback skip VMs another
    /// source already reads).
    pub vmm_pid: Option<u32>,
    /// Configured guest memory.
    pub mem_bytes: u64,
    /// Resident memory of the VM (its guest memory's share of the VMM process).
    pub rss_bytes: u64,
    /// Resident guest memory per host NUMA node.
    pub numa_resident: Vec<NodeBytes>,
    /// Balloon target, where there is a balloon.
    pub balloon_target_bytes: Option<u64>,
    /// Balloon actual.
    pub balloon_actual_bytes: Option<u64>,
    /// Free memory the guest reports.
    pub guest_free_bytes: Option<u64>,
    /// Guest memory written so far, cumulative, where the VMM counts it.
    pub dirty_bytes: Option<u64>,
    /// Per-vCPU readings.
    pub vcpus: Vec<VcpuReading>,
    /// KVM exit counters of the whole VM by the flavour's names, cumulative.
    pub exits: Vec<(String, u64)>,
}

/// One vCPU as a source sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuReading {
    /// vCPU index.
    pub vcpu: u32,
    /// Host thread running it.
    pub tid: Option<u32>,
    /// Cumulative nanoseconds on a CPU (schedstat), if known.
    pub run_ns: Option<u64>,
    /// Cumulative nanoseconds waiting on a run queue, if known.
    pub wait_ns: Option<u64>,
    /// Host CPU it last ran on.
    pub host_cpu: Option<u32>,
    /// CPUs it may run on.
    pub affinity: Vec<u32>,
    /// All KVM exits of this vCPU, cumulative, if known.
    pub exits: Option<u64>,
}

/// How much a cumulative counter grew from `prev` to `cur` (see the module docs).
#[must_use]
pub fn counter_delta(prev: u64, cur: u64, restarted: bool) -> u64 {
    const TOP_EIGHTH_U32: u64 = (u32::MAX as u64) / 8 * 7;
    if restarted {
        return cur;
    }
    if cur >= prev {
        return cur - prev;
    }
    if prev <= u64::from(u32::MAX) && prev >= TOP_EIGHTH_U32 && cur < u64::from(u32::MAX) / 8 {
        return (u64::from(u32::MAX) + 1 - prev) + cur;
    }
    cur
}

/// Turns successive readings of each VM into samples with rates.
#[derive(Debug, Default)]
pub struct RateTracker {
    previous: HashMap<String, VmReading>,
}

impl RateTracker {
    /// A tracker with no history.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a reading; returns the sample for the interval since the previous reading of the
    /// same VM, or `None` for the first reading (or a reading not after the previous one, which
    /// is dropped).
    pub fn update(&mut self, reading: VmReading) -> Option<VmSample> {
        match self.previous.get(&reading.vm) {
            Some(previous) if reading.at <= previous.at => None,
            Some(previous) => {
                let out = sample(previous, &reading);
                self.previous.insert(reading.vm.clone(), reading);
                out
            }
            None => {
                self.previous.insert(reading.vm.clone(), reading);
                None
            }
        }
    }

    /// Forgets VMs not in `live` (deleted VMs), so the map does not grow without bound.
    pub fn retain(&mut self, live: &std::collections::HashSet<String>) {
        self.previous.retain(|vm, _| live.contains(vm));
    }

    /// VMs with a previous reading.
    #[must_use]
    pub fn len(&self) -> usize {
        self.previous.len()
    }

    /// Whether no VM has a reading yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.previous.is_empty()
    }
}

/// The sample for the interval between two readings of one VM.
fn sample(previous: &VmReading, current: &VmReading) -> Option<VmSample> {
    let elapsed = current.at.checked_duration_since(previous.at)?;
    if elapsed.is_zero() {
        return None;
    }
    let secs = elapsed.as_secs_f64();
    let nanos = secs * 1e9;
    let restarted = previous.instance != current.instance;
    let rate = |prev: Option<u64>, cur: Option<u64>| match (prev, cur) {
        (Some(p), Some(c)) => counter_delta(p, c, restarted) as f64 / secs,
        (None, Some(c)) if restarted => c as f64 / secs,
        _ => 0.0,
    };
    let frac = |prev: Option<u64>, cur: Option<u64>| match (prev, cur) {
        (Some(p), Some(c)) => (counter_delta(p, c, restarted) as f64 / nanos).clamp(0.0, 1.0),
        _ => 0.0,
    };
    let vcpus = current
        .vcpus
        .iter()
        .map(|v| {
            let before = previous
                .vcpus
                .iter()
                .find(|p| p.vcpu == v.vcpu && p.tid == v.tid);
            // A vCPU whose thread changed restarted on its own: count from zero.
            let fresh = before.is_none();
            let prev = |f: fn(&VcpuReading) -> Option<u64>| {
                if fresh { Some(0) } else { before.and_then(f) }
            };
            VcpuSample {
                vcpu: v.vcpu,
                tid: v.tid,
                run_frac: frac(prev(|p| p.run_ns), v.run_ns),
                wait_frac: frac(prev(|p| p.wait_ns), v.wait_ns),
                host_cpu: v.host_cpu,
                affinity: v.affinity.clone(),
                exits_per_s: rate(prev(|p| p.exits), v.exits),
            }
        })
        .collect();
    let exits = current
        .exits
        .iter()
        .map(|(reason, total)| {
            let before = previous
                .exits
                .iter()
                .find(|(r, _)| r == reason)
                .map(|(_, t)| *t);
            ExitCounter {
                reason: reason.clone(),
                total: *total,
                per_s: rate(before.or(Some(0)), Some(*total)),
            }
        })
        .collect();
    Some(VmSample {
        ts: current.ts_ms,
        host: current.host.clone(),
        vm: current.vm.clone(),
        name: current.name.clone(),
        vmm: current.vmm,
        interval_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        mem_bytes: current.mem_bytes,
        rss_bytes: current.rss_bytes,
        numa_resident: current.numa_resident.clone(),
        balloon_target_bytes: current.balloon_target_bytes,
        balloon_actual_bytes: current.balloon_actual_bytes,
        guest_free_bytes: current.guest_free_bytes,
        dirty_bytes_per_s: current
            .dirty_bytes
            .map(|now| rate(previous.dirty_bytes, Some(now))),
        vcpus,
        exits,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(at: Instant, instance: u64, exits: u64, run_ns: u64, tid: u32) -> VmReading {
        VmReading {
            ts_ms: 1_000,
            at,
            host: "h".into(),
            vm: "h/a".into(),
            name: "a".into(),
            vmm: VmmKind::Builtin,
            instance,
            vmm_pid: Some(1),
            mem_bytes: 64 << 20,
            rss_bytes: 1 << 20,
            numa_resident: vec![],
            balloon_target_bytes: None,
            balloon_actual_bytes: None,
            guest_free_bytes: None,
            dirty_bytes: None,
            vcpus: vec![VcpuReading {
                vcpu: 0,
                tid: Some(tid),
                run_ns: Some(run_ns),
                wait_ns: Some(0),
                host_cpu: Some(1),
                affinity: vec![0, 1],
                exits: Some(exits),
            }],
            exits: vec![("exits".into(), exits)],
        }
    }

    #[test]
    fn first_reading_primes_then_rates_use_real_elapsed_time() {
        let t0 = Instant::now();
        let mut tracker = RateTracker::new();
        assert!(tracker.update(reading(t0, 1, 100, 0, 7)).is_none());
        let s = tracker
            .update(reading(t0 + Duration::from_secs(2), 1, 300, 500_000_000, 7))
            .expect("second reading gives a sample");
        assert_eq!(s.interval_ms, 2000);
        assert!((s.exits[0].per_s - 100.0).abs() < 1e-9);
        assert_eq!(s.exits[0].total, 300);
        assert!((s.vcpus[0].run_frac - 0.25).abs() < 1e-9);
        assert!((s.vcpus[0].exits_per_s - 100.0).abs() < 1e-9);
        // A missed sample: 3 s later, the rate is the average over 3 s.
        let s = tracker
            .update(reading(t0 + Duration::from_secs(5), 1, 600, 500_000_000, 7))
            .unwrap();
        assert_eq!(s.interval_ms, 3000);
        assert!((s.exits[0].per_s - 100.0).abs() < 1e-9);
        // Out-of-order or duplicate readings are dropped.
        assert!(
            tracker
                .update(reading(t0 + Duration::from_secs(5), 1, 700, 0, 7))
                .is_none()
        );
    }

    #[test]
    fn restarts_and_resets_count_from_zero_and_never_go_negative() {
        let t0 = Instant::now();
        let mut tracker = RateTracker::new();
        tracker.update(reading(t0, 1, 10_000, 9_000_000_000, 7));
        // New instance: counters restarted.
        let s = tracker
            .update(reading(t0 + Duration::from_secs(1), 2, 50, 100_000_000, 8))
            .unwrap();
        assert!((s.exits[0].per_s - 50.0).abs() < 1e-9);
        assert!((s.vcpus[0].run_frac - 0.1).abs() < 1e-9);
        // Same instance but the counter went down: a reset.
        let s = tracker
            .update(reading(t0 + Duration::from_secs(2), 2, 20, 200_000_000, 8))
            .unwrap();
        assert!((s.exits[0].per_s - 20.0).abs() < 1e-9);
        assert!(s.vcpus[0].run_frac >= 0.0);
    }

    #[test]
    fn thirty_two_bit_wraps_are_recognised() {
        let max = u64::from(u32::MAX);
        assert_eq!(counter_delta(max - 9, 5, false), 15);
        assert_eq!(counter_delta(100, 250, false), 150);
        // A large u64 counter going down is a reset, not a wrap.
        assert_eq!(counter_delta(1 << 40, 5, false), 5);
        assert_eq!(counter_delta(7, 3, true), 3);
    }

    #[test]
    fn deleted_vms_are_forgotten() {
        let mut tracker = RateTracker::new();
        tracker.update(reading(Instant::now(), 1, 0, 0, 1));
        assert_eq!(tracker.len(), 1);
        tracker.retain(&std::collections::HashSet::new());
        assert!(tracker.is_empty());
    }
}
