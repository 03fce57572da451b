//! What the correlator knows of the fleet: each host's and VM's latest sample, a few recent
//! points for the guards, and each VM's baselines (running medians of its own history).
//!
//! A VM names the host it runs on. QEMU and libvirt VMs name the agent's host, which also
//! writes that host's samples; the built-in VMM's VMs name their VMM host (`demo-host-1`), a
//! process on a machine whose samples carry the machine's name. [`Fleet::host_of`] resolves
//! a VM host to the host samples that describe its hardware: its own, else the one machine
//! that reports samples but no VMs under its own name (one agent or `fleetmind run` with its
//! VMM hosts), provided every CPU the VM host's vCPUs may use is one of that machine's. Where
//! neither holds, only the CPUs the VMs' affinities name are known ([`Fleet::cpus_of`]) and
//! nothing is recommended that needs more.
//!
//! Baselines skip samples taken while the VM is abnormal (an exit storm, a run-fraction rise,
//! run-queue delay over the guard), so that a problem that lasts does not become the norm the
//! problem is judged against; after [`CorrelatorConfig::relearn_after`] of being abnormal they
//! learn again, since by then it is the VM's new normal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetmind_schema::{HostSample, TimestampMs, VmSample};

use super::config::{CorrelatorConfig, ms};
use super::series::vm_exits_per_s;

/// The most vCPUs of one VM the correlator tracks (the built-in VMM allows 256).
const MAX_VCPUS: usize = 1024;
/// The most CPUs remembered per VM host from its VMs' affinities.
const MAX_CPUS: usize = 4096;

/// A running median over a bounded window.
#[derive(Debug, Clone, Default)]
pub(super) struct Median {
    values: VecDeque<f64>,
    median: f64,
}

impl Median {
    fn push(&mut self, value: f64, cap: usize) {
        if !value.is_finite() {
            return;
        }
        self.values.push_back(value);
        while self.values.len() > cap.max(1) {
            self.values.pop_front();
        }
        let mut sorted: Vec<f64> = self.values.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        self.median = sorted[sorted.len() / 2];
    }

    /// The median once `min` values are in.
    pub(super) fn get(&self, min: usize) -> Option<f64> {
        (self.values.len() >= min.max(1)).then_some(self.median)
    }

    /// The smallest value in the window.
    pub(super) fn min(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::min)
    }
}

/// One VM's baselines.
#[derive(Debug, Clone, Default)]
pub(super) struct Baseline {
    pub exits: Median,
    pub run: BTreeMap<u32, Median>,
    pub wait: BTreeMap<u32, Median>,
    pub guest_free: Median,
}

/// One vCPU in one sample.
#[derive(Debug, Clone, Copy)]
pub(super) struct VcpuPoint {
    pub vcpu: u32,
    pub run: f64,
    pub wait: f64,
    pub host_cpu: Option<u32>,
}

/// What the guards look at in one VM sample.
#[derive(Debug, Clone)]
pub(super) struct VmPoint {
    pub exits: f64,
    pub vcpus: Vec<VcpuPoint>,
    pub guest_free: Option<u64>,
    /// Share of resident memory off the node the vCPUs run on (multi-node hosts only).
    pub remote_frac: Option<f64>,
}

/// A VM as last seen.
#[derive(Debug, Clone)]
pub(super) struct VmState {
    pub sample: VmSample,
    /// The last `guard_samples` points, oldest first.
    pub recent: VecDeque<VmPoint>,
    pub baseline: Baseline,
    /// Resident memory over the baseline window (its minimum is where growth is measured from).
    pub rss: Median,
    /// Since when the VM's samples have been abnormal.
    pub abnormal_since: Option<TimestampMs>,
}

impl VmState {
    /// The run fractions of `vcpu` in the recent points.
    pub(super) fn recent_vcpu(&self, vcpu: u32) -> impl Iterator<Item = &VcpuPoint> {
        self.recent
            .iter()
            .filter_map(move |p| p.vcpus.iter().find(|v| v.vcpu == vcpu))
    }

    /// Mean over the recent points of `f` of `vcpu`.
    pub(super) fn recent_vcpu_mean(&self, vcpu: u32, f: impl Fn(&VcpuPoint) -> f64) -> f64 {
        mean(self.recent_vcpu(vcpu).map(f))
    }

    /// Mean recent exit rate of the whole VM.
    pub(super) fn recent_exits_mean(&self) -> f64 {
        mean(self.recent.iter().map(|p| p.exits))
    }

    /// Mean recent runnable demand of all vCPUs (run + wait, in CPUs).
    pub(super) fn recent_demand(&self) -> f64 {
        mean(
            self.recent
                .iter()
                .map(|p| p.vcpus.iter().map(|v| v.run + v.wait).sum()),
        )
    }

    /// The host CPUs `vcpu` ran on in the recent points.
    pub(super) fn recent_host_cpus(&self, vcpu: u32) -> BTreeSet<u32> {
        self.recent_vcpu(vcpu).filter_map(|v| v.host_cpu).collect()
    }

    /// The CPUs `vcpu` is restricted to, if its affinity is narrower than `host_cpus`; `None`
    /// when it may run anywhere (or its affinity is unknown).
    pub(super) fn restricted_affinity(
        &self,
        vcpu: u32,
        host_cpus: &BTreeSet<u32>,
    ) -> Option<BTreeSet<u32>> {
        let v = self.sample.vcpus.iter().find(|v| v.vcpu == vcpu)?;
        let affinity: BTreeSet<u32> = v.affinity.iter().copied().collect();
        if affinity.is_empty() || (!host_cpus.is_empty() && host_cpus.is_subset(&affinity)) {
            None
        } else {
            Some(affinity)
        }
    }

    /// Where `vcpu` runs: its restricted affinity, else the CPUs it ran on recently.
    pub(super) fn footprint(&self, vcpu: u32, host_cpus: &BTreeSet<u32>) -> BTreeSet<u32> {
        self.restricted_affinity(vcpu, host_cpus)
            .unwrap_or_else(|| self.recent_host_cpus(vcpu))
    }

    /// Where the whole VM runs (every vCPU's footprint).
    pub(super) fn vm_footprint(&self, host_cpus: &BTreeSet<u32>) -> BTreeSet<u32> {
        self.sample
            .vcpus
            .iter()
            .flat_map(|v| self.footprint(v.vcpu, host_cpus))
            .collect()
    }

    /// The vCPU indexes of the latest sample.
    pub(super) fn vcpu_ids(&self) -> BTreeSet<u32> {
        self.sample.vcpus.iter().map(|v| v.vcpu).collect()
    }

    /// Resident bytes per node, total.
    pub(super) fn resident_total(&self) -> u64 {
        self.sample
            .numa_resident
            .iter()
            .fold(0u64, |acc, n| acc.saturating_add(n.bytes))
    }

    /// The NUMA node holding most of the VM's resident memory.
    pub(super) fn memory_node(&self) -> Option<u32> {
        self.sample
            .numa_resident
            .iter()
            .max_by_key(|n| (n.bytes, std::cmp::Reverse(n.node)))
            .filter(|n| n.bytes > 0)
            .map(|n| n.node)
    }
}

/// A host as last seen.
#[derive(Debug, Clone)]
pub(super) struct HostState {
    pub sample: HostSample,
    /// The last `guard_samples` samples' figures, oldest first.
    pub recent: VecDeque<HostPoint>,
}

/// What the guards look at in one host sample.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostPoint {
    pub psi_memory_some: f64,
    pub psi_memory_full: f64,
    pub majfault: f64,
    pub swapout: f64,
    pub used_frac: f64,
}

impl HostState {
    /// The host's CPUs: those of its NUMA nodes, else of its per-CPU list, else `0..cpus`.
    pub(super) fn cpus(&self) -> BTreeSet<u32> {
        let from_nodes: BTreeSet<u32> = self
            .sample
            .numa
            .iter()
            .flat_map(|n| n.cpus.iter().copied())
            .collect();
        if !from_nodes.is_empty() {
            return from_nodes;
        }
        let from_per_cpu: BTreeSet<u32> = self.sample.per_cpu.iter().map(|c| c.cpu).collect();
        if !from_per_cpu.is_empty() {
            return from_per_cpu;
        }
        (0..self.sample.cpus.min(4096)).collect()
    }

    /// The node `cpu` belongs to, where the host reports its nodes' CPUs.
    pub(super) fn node_of(&self, cpu: u32) -> Option<u32> {
        self.sample
            .numa
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.node)
    }

    /// Nodes that have CPUs (a node list of one means a single-node host).
    pub(super) fn nodes_with_cpus(&self) -> usize {
        self.sample
            .numa
            .iter()
            .filter(|n| !n.cpus.is_empty())
            .count()
    }

    /// Busy fraction of `cpu` in the latest sample (0 when unknown).
    pub(super) fn cpu_busy(&self, cpu: u32) -> f64 {
        self.sample
            .per_cpu
            .iter()
            .find(|c| c.cpu == cpu)
            .map_or(0.0, |c| c.busy_frac)
            .clamp(0.0, 1.0)
    }

    /// Idle CPUs' worth of capacity in the latest sample.
    pub(super) fn idle_cpus(&self) -> f64 {
        f64::from(self.sample.cpus) * (1.0 - self.sample.cpu.busy_frac.clamp(0.0, 1.0))
    }
}

/// Hosts and VMs.
#[derive(Debug, Default)]
pub(super) struct Fleet {
    /// Hosts with samples, by name.
    pub hosts: BTreeMap<String, HostState>,
    pub vms: BTreeMap<String, VmState>,
    /// Every CPU the vCPUs of a VM host's VMs have been allowed on or seen on, by VM host.
    seen_cpus: BTreeMap<String, BTreeSet<u32>>,
    /// The one host with samples that no VM names (see the module docs), if exactly one.
    machine: Option<String>,
}

/// Mean of the values, 0 for none.
pub(super) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .filter(|v| v.is_finite())
        .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / f64::from(n) }
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

impl Fleet {
    /// Takes in a host sample; older or repeated samples are ignored.
    pub(super) fn observe_host(&mut self, sample: &HostSample, config: &CorrelatorConfig) {
        let point = HostPoint {
            psi_memory_some: sample.psi.map_or(0.0, |p| {
                finite_or_zero(p.memory_some_frac).max(finite_or_zero(p.memory_some_avg10) / 100.0)
            }),
            psi_memory_full: sample.psi.map_or(0.0, |p| {
                finite_or_zero(p.memory_full_frac).max(finite_or_zero(p.memory_full_avg10) / 100.0)
            }),
            majfault: finite_or_zero(sample.vmstat.pgmajfault_per_s),
            swapout: finite_or_zero(sample.vmstat.pswpout_per_s),
            used_frac: finite_or_zero(sample.mem.used_frac),
        };
        if let Some(state) = self.hosts.get_mut(&sample.host) {
            if sample.ts <= state.sample.ts {
                return;
            }
            state.sample = sample.clone();
            push_bounded(&mut state.recent, point, config.guard_samples);
            return;
        }
        if self.hosts.len() >= config.max_hosts.max(1) {
            evict_oldest(&mut self.hosts, |h| h.sample.ts);
        }
        let mut recent = VecDeque::new();
        recent.push_back(point);
        self.hosts.insert(
            sample.host.clone(),
            HostState {
                sample: sample.clone(),
                recent,
            },
        );
    }

    /// Takes in a VM sample; older or repeated samples are ignored.
    pub(super) fn observe_vm(&mut self, sample: &VmSample, config: &CorrelatorConfig) {
        let mut sample = sample.clone();
        sample.vcpus.truncate(MAX_VCPUS);
        let seen = self.seen_cpus.entry(sample.host.clone()).or_default();
        for v in &sample.vcpus {
            if seen.len() >= MAX_CPUS {
                break;
            }
            seen.extend(v.affinity.iter().copied().take(MAX_CPUS));
            seen.extend(v.host_cpu);
        }
        let remote_frac = self
            .host_of(&sample.host)
            .and_then(|h| remote_frac(h, &sample));
        let point = VmPoint {
            exits: vm_exits_per_s(&sample),
            vcpus: sample
                .vcpus
                .iter()
                .map(|v| VcpuPoint {
                    vcpu: v.vcpu,
                    run: finite_or_zero(v.run_frac).clamp(0.0, 1.0),
                    wait: finite_or_zero(v.wait_frac).clamp(0.0, 1.0),
                    host_cpu: v.host_cpu,
                })
                .collect(),
            guest_free: sample.guest_free_bytes,
            remote_frac,
        };
        if !self.vms.contains_key(&sample.vm) && self.vms.len() >= config.max_vms.max(1) {
            evict_oldest(&mut self.vms, |v| v.sample.ts);
        }
        let state = match self.vms.get_mut(&sample.vm) {
            Some(state) => {
                if sample.ts <= state.sample.ts {
                    return;
                }
                if state.sample.host != sample.host {
                    // Moved: the recent points describe another host's CPUs.
                    state.recent.clear();
                }
                state
            }
            None => self
                .vms
                .entry(sample.vm.clone())
                .or_insert_with(|| VmState {
                    sample: sample.clone(),
                    recent: VecDeque::new(),
                    baseline: Baseline::default(),
                    rss: Median::default(),
                    abnormal_since: None,
                }),
        };
        let abnormal = is_abnormal(state, &point, config);
        state.abnormal_since = match (abnormal, state.abnormal_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some(sample.ts),
        };
        let learn = state
            .abnormal_since
            .is_none_or(|since| sample.ts.saturating_sub(since) >= ms(config.relearn_after));
        if learn {
            let cap = config.baseline_samples;
            state.baseline.exits.push(point.exits, cap);
            for v in &point.vcpus {
                state
                    .baseline
                    .run
                    .entry(v.vcpu)
                    .or_default()
                    .push(v.run, cap);
                state
                    .baseline
                    .wait
                    .entry(v.vcpu)
                    .or_default()
                    .push(v.wait, cap);
            }
            if let Some(free) = point.guest_free {
                state.baseline.guest_free.push(as_f64(free), cap);
            }
            let vcpus: BTreeSet<u32> = point.vcpus.iter().map(|v| v.vcpu).collect();
            state.baseline.run.retain(|k, _| vcpus.contains(k));
            state.baseline.wait.retain(|k, _| vcpus.contains(k));
        }
        state
            .rss
            .push(as_f64(sample.rss_bytes), config.baseline_samples);
        state.sample = sample;
        push_bounded(&mut state.recent, point, config.guard_samples);
    }

    /// Forgets hosts and VMs last seen before `cutoff`, and works out the machine again.
    pub(super) fn forget_before(&mut self, cutoff: TimestampMs) {
        self.hosts.retain(|_, h| h.sample.ts >= cutoff);
        self.vms.retain(|_, v| v.sample.ts >= cutoff);
        let vm_hosts: BTreeSet<&str> = self.vms.values().map(|v| v.sample.host.as_str()).collect();
        self.seen_cpus.retain(|h, _| vm_hosts.contains(h.as_str()));
        let mut bare = self.hosts.keys().filter(|h| !vm_hosts.contains(h.as_str()));
        self.machine = match (bare.next(), bare.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        };
    }

    /// The host samples that describe the hardware of VM host `name` (see the module docs).
    pub(super) fn host_of(&self, name: &str) -> Option<&HostState> {
        if let Some(own) = self.hosts.get(name) {
            return Some(own);
        }
        let machine = self.hosts.get(self.machine.as_deref()?)?;
        let seen = self.seen_cpus.get(name)?;
        seen.is_subset(&machine.cpus()).then_some(machine)
    }

    /// The CPUs of VM host `name`: its hardware's, else those its VMs were seen allowed on.
    pub(super) fn cpus_of(&self, name: &str) -> BTreeSet<u32> {
        match self.host_of(name) {
            Some(h) => h.cpus(),
            None => self.seen_cpus.get(name).cloned().unwrap_or_default(),
        }
    }

    /// The names of every host VMs run on.
    pub(super) fn vm_hosts(&self) -> BTreeSet<&str> {
        self.vms.values().map(|v| v.sample.host.as_str()).collect()
    }

    /// The VMs on `host`.
    pub(super) fn vms_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a VmState> {
        self.vms.values().filter(move |v| v.sample.host == host)
    }
}

/// Whether a point is out of the VM's normal (so it stays out of the baselines).
fn is_abnormal(state: &VmState, point: &VmPoint, config: &CorrelatorConfig) -> bool {
    let min = config.min_baseline_samples;
    let storm = state.baseline.exits.get(min).is_some_and(|m| {
        point.exits >= config.exit_storm_floor_per_s
            && point.exits >= config.exit_storm_ratio * m.max(1.0)
    });
    storm
        || point.vcpus.iter().any(|v| {
            v.wait >= config.wait_guard
                || state
                    .baseline
                    .run
                    .get(&v.vcpu)
                    .and_then(|m| m.get(min))
                    .is_some_and(|m| v.run >= m + config.run_rise)
        })
}

/// Share of the VM's resident memory off the node most of its vCPUs run on, on hosts with
/// more than one node with CPUs.
fn remote_frac(host: &HostState, vm: &VmSample) -> Option<f64> {
    if host.nodes_with_cpus() < 2 {
        return None;
    }
    let mut votes: BTreeMap<u32, u32> = BTreeMap::new();
    for v in &vm.vcpus {
        let node = v.host_cpu.and_then(|c| host.node_of(c)).or_else(|| {
            // No last CPU: an affinity within one node says where it runs.
            let nodes: BTreeSet<u32> = v.affinity.iter().filter_map(|&c| host.node_of(c)).collect();
            (nodes.len() == 1)
                .then(|| nodes.into_iter().next())
                .flatten()
        });
        if let Some(node) = node {
            *votes.entry(node).or_default() += 1;
        }
    }
    let home = votes
        .into_iter()
        .max_by_key(|&(node, n)| (n, std::cmp::Reverse(node)))?
        .0;
    let total = vm
        .numa_resident
        .iter()
        .fold(0u64, |acc, n| acc.saturating_add(n.bytes));
    if total == 0 {
        return None;
    }
    let local = vm
        .numa_resident
        .iter()
        .filter(|n| n.node == home)
        .fold(0u64, |acc, n| acc.saturating_add(n.bytes));
    Some(as_f64(total - local.min(total)) / as_f64(total))
}

fn push_bounded<T>(deque: &mut VecDeque<T>, value: T, cap: usize) {
    deque.push_back(value);
    while deque.len() > cap.max(1) {
        deque.pop_front();
    }
}

fn evict_oldest<T>(map: &mut BTreeMap<String, T>, ts: impl Fn(&T) -> TimestampMs) {
    if let Some(key) = map
        .iter()
        .min_by_key(|(k, v)| (ts(v), (*k).clone()))
        .map(|(k, _)| k.clone())
    {
        map.remove(&key);
    }
}

// Byte counts as f64: precision beyond 2^53 bytes does not matter here.
#[allow(clippy::cast_precision_loss)]
pub(super) fn as_f64(v: u64) -> f64 {
    v as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::test_utils::{HostSpec, VmSpec, host_sample, vm_sample};

    #[test]
    fn baselines_skip_a_storm_and_relearn_after_a_while() {
        let config = CorrelatorConfig {
            relearn_after: std::time::Duration::from_secs(20),
            ..CorrelatorConfig::default()
        };
        let mut fleet = Fleet::default();
        let spec = VmSpec::builtin("h/a", &[&[0]]);
        for i in 0..10 {
            let mut s = vm_sample(&spec, i * 1000);
            s.vcpus[0].exits_per_s = 100.0;
            s.exits.clear();
            fleet.observe_vm(&s, &config);
        }
        let median = |f: &Fleet| f.vms["h/a"].baseline.exits.get(5);
        assert_eq!(median(&fleet), Some(100.0));
        for i in 10..25 {
            let mut s = vm_sample(&spec, i * 1000);
            s.vcpus[0].exits_per_s = 50_000.0;
            s.exits.clear();
            fleet.observe_vm(&s, &config);
        }
        assert_eq!(median(&fleet), Some(100.0), "the storm stays out");
        for i in 25..200 {
            let mut s = vm_sample(&spec, i * 1000);
            s.vcpus[0].exits_per_s = 50_000.0;
            s.exits.clear();
            fleet.observe_vm(&s, &config);
        }
        assert_eq!(
            median(&fleet),
            Some(50_000.0),
            "a new normal after relearn_after"
        );
    }

    #[test]
    fn repeated_and_older_samples_are_ignored() {
        let config = CorrelatorConfig::default();
        let mut fleet = Fleet::default();
        let spec = VmSpec::builtin("h/a", &[&[0]]);
        fleet.observe_vm(&vm_sample(&spec, 2000), &config);
        fleet.observe_vm(&vm_sample(&spec, 2000), &config);
        fleet.observe_vm(&vm_sample(&spec, 1000), &config);
        assert_eq!(fleet.vms["h/a"].recent.len(), 1);
        assert_eq!(fleet.vms["h/a"].baseline.exits.values.len(), 1);
    }

    #[test]
    fn remote_share_is_measured_from_the_vcpus_node() {
        let config = CorrelatorConfig::default();
        let mut fleet = Fleet::default();
        let host = HostSpec::new("h", 4).nodes(&[&[0, 1], &[2, 3]]);
        fleet.observe_host(&host_sample(&host, 1000), &config);
        let mut spec = VmSpec::builtin("h/a", &[&[0]]);
        spec.numa_resident = vec![(0, 100 << 20), (1, 300 << 20)];
        fleet.observe_vm(&vm_sample(&spec, 1000), &config);
        let frac = fleet.vms["h/a"].recent[0].remote_frac.expect("two nodes");
        assert!((frac - 0.75).abs() < 1e-9, "{frac}");

        let single = HostSpec::new("s", 4);
        fleet.observe_host(&host_sample(&single, 1000), &config);
        let spec = VmSpec::builtin("s/a", &[&[0]]);
        fleet.observe_vm(&vm_sample(&spec, 1000), &config);
        assert_eq!(fleet.vms["s/a"].recent[0].remote_frac, None);
    }

    #[test]
    fn the_fleet_is_bounded() {
        let config = CorrelatorConfig {
            max_vms: 3,
            ..CorrelatorConfig::default()
        };
        let mut fleet = Fleet::default();
        for i in 0..10 {
            let spec = VmSpec::builtin(&format!("h/vm-{i}"), &[&[0]]);
            fleet.observe_vm(&vm_sample(&spec, 1000 + i), &config);
        }
        assert_eq!(fleet.vms.len(), 3);
        assert!(fleet.vms.contains_key("h/vm-9"));
        fleet.forget_before(1009);
        assert_eq!(fleet.vms.len(), 1);
    }
}
