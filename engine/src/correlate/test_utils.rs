//! Synthetic hosts and VMs for the correlator's tests, and a simulator that samples them once a
//! second with deterministic noise, as the collectors would.

use fleetmind_schema::{
    Anomaly, CpuFractions, ExitCounter, HostSample, MemorySample, NodeBytes, NumaNodeSample,
    PerCpuSample, PsiSample, Record, Subject, TimestampMs, VcpuSample, VmSample, VmmKind,
    VmstatRates,
};

use super::{Correlator, CorrelatorConfig};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

/// A host to sample.
#[derive(Debug, Clone)]
pub(crate) struct HostSpec {
    pub name: String,
    pub cpus: u32,
    /// CPUs of each node; one node with every CPU by default.
    pub nodes: Vec<Vec<u32>>,
    pub mem_total: u64,
    pub mem_available: u64,
    /// Free memory per node (same length as `nodes`).
    pub node_free: Vec<u64>,
    /// Busy fraction per CPU.
    pub busy: Vec<f64>,
    pub psi_memory_some: f64,
    pub majfault_per_s: f64,
}

impl HostSpec {
    pub(crate) fn new(name: &str, cpus: u32) -> Self {
        Self {
            name: name.to_owned(),
            cpus,
            nodes: vec![(0..cpus).collect()],
            mem_total: 64 * GIB,
            mem_available: 48 * GIB,
            node_free: vec![40 * GIB],
            busy: vec![0.1; cpus as usize],
            psi_memory_some: 0.0,
            majfault_per_s: 0.0,
        }
    }

    pub(crate) fn nodes(mut self, nodes: &[&[u32]]) -> Self {
        self.nodes = nodes.iter().map(|n| n.to_vec()).collect();
        self.node_free = vec![20 * GIB; nodes.len()];
        self
    }
}

/// One vCPU to sample.
#[derive(Debug, Clone)]
pub(crate) struct VcpuSpec {
    pub run: f64,
    pub wait: f64,
    pub exits: f64,
    pub affinity: Vec<u32>,
    /// The CPUs it moves between, in turn (its affinity when empty).
    pub runs_on: Vec<u32>,
}

/// A VM to sample.
#[derive(Debug, Clone)]
pub(crate) struct VmSpec {
    pub host: String,
    pub vm: String,
    pub vmm: VmmKind,
    pub mem_bytes: u64,
    pub rss_bytes: u64,
    pub vcpus: Vec<VcpuSpec>,
    /// (target, actual).
    pub balloon: Option<(u64, u64)>,
    pub guest_free: Option<u64>,
    pub dirty: Option<f64>,
    /// (node, bytes).
    pub numa_resident: Vec<(u32, u64)>,
}

impl VmSpec {
    /// A built-in VM `host/name` with one vCPU per affinity list, quiet: 10 % run, 1 % wait,
    /// 50 exits/s; 1 GiB with a balloon at 0 and 600 MiB free.
    pub(crate) fn builtin(id: &str, affinities: &[&[u32]]) -> Self {
        let (host, _) = id.split_once('/').unwrap_or((id, id));
        Self {
            host: host.to_owned(),
            vm: id.to_owned(),
            vmm: VmmKind::Builtin,
            mem_bytes: GIB,
            rss_bytes: 400 * MIB,
            vcpus: affinities
                .iter()
                .map(|a| VcpuSpec {
                    run: 0.1,
                    wait: 0.01,
                    exits: 50.0,
                    affinity: a.to_vec(),
                    runs_on: Vec::new(),
                })
                .collect(),
            balloon: Some((0, 0)),
            guest_free: Some(600 * MIB),
            dirty: Some(10.0 * MIB as f64),
            numa_resident: vec![(0, 400 * MIB)],
        }
    }

    pub(crate) fn qemu(id: &str, affinities: &[&[u32]]) -> Self {
        Self {
            vmm: VmmKind::Qemu,
            ..Self::builtin(id, affinities)
        }
    }

    /// Sets every vCPU's run, wait and exits.
    pub(crate) fn load(&mut self, run: f64, wait: f64, exits: f64) {
        for v in &mut self.vcpus {
            v.run = run;
            v.wait = wait;
            v.exits = exits;
        }
    }
}

/// A host sample of `spec` at `ts`, without noise.
pub(crate) fn host_sample(spec: &HostSpec, ts: TimestampMs) -> HostSample {
    noisy_host(spec, ts, &mut Noise::none())
}

/// A VM sample of `spec` at `ts`, without noise.
pub(crate) fn vm_sample(spec: &VmSpec, ts: TimestampMs) -> VmSample {
    noisy_vm(spec, ts, 0, &mut Noise::none())
}

/// Deterministic noise (xorshift).
#[derive(Debug)]
pub(crate) struct Noise {
    state: u64,
    amplitude: f64,
}

impl Noise {
    fn none() -> Self {
        Self {
            state: 1,
            amplitude: 0.0,
        }
    }

    pub(crate) fn new(seed: u64, amplitude: f64) -> Self {
        Self {
            state: seed.max(1),
            amplitude,
        }
    }

    /// A factor in `1 ± amplitude`.
    fn factor(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let unit = (self.state >> 11) as f64 / (1u64 << 53) as f64;
        1.0 + self.amplitude * (2.0 * unit - 1.0)
    }

    fn frac(&mut self, v: f64) -> f64 {
        (v * self.factor()).clamp(0.0, 1.0)
    }
}

fn noisy_host(spec: &HostSpec, ts: TimestampMs, noise: &mut Noise) -> HostSample {
    let busy: Vec<f64> = spec.busy.iter().map(|&b| noise.frac(b)).collect();
    let mean_busy = busy.iter().sum::<f64>() / busy.len().max(1) as f64;
    let used = 1.0 - spec.mem_available as f64 / spec.mem_total.max(1) as f64;
    HostSample {
        ts,
        host: spec.name.clone(),
        interval_ms: 1000,
        cpus: spec.cpus,
        cpu: CpuFractions {
            user_frac: mean_busy * 0.8,
            system_frac: mean_busy * 0.2,
            iowait_frac: 0.0,
            steal_frac: 0.0,
            idle_frac: 1.0 - mean_busy,
            busy_frac: mean_busy,
        },
        per_cpu: busy
            .iter()
            .enumerate()
            .map(|(cpu, &b)| PerCpuSample {
                cpu: u32::try_from(cpu).unwrap_or(u32::MAX),
                busy_frac: b,
                steal_frac: 0.0,
            })
            .collect(),
        load1: mean_busy * f64::from(spec.cpus),
        procs_running: 2,
        procs_blocked: 0,
        ctxt_per_s: 1000.0,
        mem: MemorySample {
            total_bytes: spec.mem_total,
            free_bytes: spec.mem_available / 2,
            available_bytes: spec.mem_available,
            cached_bytes: spec.mem_available / 2,
            used_frac: used,
            ..MemorySample::default()
        },
        psi: Some(PsiSample {
            memory_some_frac: noise.frac(spec.psi_memory_some),
            memory_some_avg10: spec.psi_memory_some * 100.0,
            ..PsiSample::default()
        }),
        vmstat: VmstatRates {
            pgmajfault_per_s: spec.majfault_per_s * noise.factor(),
            ..VmstatRates::default()
        },
        numa: spec
            .nodes
            .iter()
            .enumerate()
            .map(|(i, cpus)| {
                let total = spec.mem_total / spec.nodes.len().max(1) as u64;
                let free = spec.node_free.get(i).copied().unwrap_or(0);
                NumaNodeSample {
                    node: u32::try_from(i).unwrap_or(u32::MAX),
                    mem_total_bytes: total,
                    mem_free_bytes: free,
                    mem_used_bytes: total.saturating_sub(free),
                    hugepages_total: 0,
                    hugepages_free: 0,
                    cpus: cpus.clone(),
                    distances: (0..spec.nodes.len())
                        .map(|j| if i == j { 10 } else { 21 })
                        .collect(),
                }
            })
            .collect(),
    }
}

fn noisy_vm(spec: &VmSpec, ts: TimestampMs, step: usize, noise: &mut Noise) -> VmSample {
    let vcpus: Vec<VcpuSample> = spec
        .vcpus
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let places = if v.runs_on.is_empty() {
                &v.affinity
            } else {
                &v.runs_on
            };
            VcpuSample {
                vcpu: u32::try_from(i).unwrap_or(u32::MAX),
                tid: Some(1000 + u32::try_from(i).unwrap_or(0)),
                run_frac: noise.frac(v.run),
                wait_frac: noise.frac(v.wait),
                host_cpu: places.get((step + i) % places.len().max(1)).copied(),
                affinity: v.affinity.clone(),
                exits_per_s: v.exits * noise.factor(),
            }
        })
        .collect();
    let total_exits: f64 = vcpus.iter().map(|v| v.exits_per_s).sum();
    VmSample {
        ts,
        host: spec.host.clone(),
        vm: spec.vm.clone(),
        name: spec
            .vm
            .rsplit_once('/')
            .map_or(spec.vm.clone(), |(_, n)| n.to_owned()),
        vmm: spec.vmm,
        interval_ms: 1000,
        mem_bytes: spec.mem_bytes,
        rss_bytes: spec.rss_bytes,
        numa_resident: spec
            .numa_resident
            .iter()
            .map(|&(node, bytes)| NodeBytes { node, bytes })
            .collect(),
        balloon_target_bytes: spec.balloon.map(|b| b.0),
        balloon_actual_bytes: spec.balloon.map(|b| b.1),
        guest_free_bytes: spec.guest_free,
        dirty_bytes_per_s: spec.dirty,
        vcpus,
        exits: vec![
            ExitCounter {
                reason: "exits".into(),
                total: 0,
                per_s: total_exits,
            },
            ExitCounter {
                reason: "io_exits".into(),
                total: 0,
                per_s: total_exits * 0.9,
            },
        ],
    }
}

/// A fleet sampled once a second into a correlator that ticks after every round.
#[derive(Debug)]
pub(crate) struct Sim {
    pub correlator: Correlator,
    pub hosts: Vec<HostSpec>,
    pub vms: Vec<VmSpec>,
    pub ts: TimestampMs,
    pub step: usize,
    noise: Noise,
    /// Every record the correlator wrote.
    pub out: Vec<Record>,
}

impl Sim {
    pub(crate) fn new(hosts: Vec<HostSpec>, vms: Vec<VmSpec>) -> Self {
        Self::with_config(hosts, vms, CorrelatorConfig::default())
    }

    pub(crate) fn with_config(
        hosts: Vec<HostSpec>,
        vms: Vec<VmSpec>,
        config: CorrelatorConfig,
    ) -> Self {
        Self {
            correlator: Correlator::new(config),
            hosts,
            vms,
            ts: 1_700_000_000_000,
            step: 0,
            noise: Noise::new(0x9E37_79B9_7F4A_7C15, 0.1),
            out: Vec::new(),
        }
    }

    pub(crate) fn vm(&mut self, id: &str) -> &mut VmSpec {
        self.vms
            .iter_mut()
            .find(|v| v.vm == id)
            .unwrap_or_else(|| panic!("no VM {id}"))
    }

    pub(crate) fn host(&mut self, name: &str) -> &mut HostSpec {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Feeds an anomaly at the current time.
    pub(crate) fn anomaly(
        &mut self,
        subject: (&str, Option<&str>),
        series: &str,
        value: f64,
        expected: f64,
    ) {
        let a = Anomaly {
            id: format!("an-{}-{series}-{}", subject.1.unwrap_or(subject.0), self.ts),
            ts: self.ts,
            subject: Subject {
                host: subject.0.to_owned(),
                vm: subject.1.map(str::to_owned),
            },
            series: series.to_owned(),
            value,
            expected,
            score: 0.95,
            detector: "test".into(),
        };
        self.correlator.observe(&Record::Anomaly(a));
    }

    /// One second: sample everything, tick, and return what the tick wrote.
    pub(crate) fn step(&mut self) -> Vec<Record> {
        self.ts += 1000;
        self.step += 1;
        for h in &self.hosts {
            let s = noisy_host(h, self.ts, &mut self.noise);
            self.correlator.observe(&Record::HostSample(s));
        }
        for v in &self.vms {
            let s = noisy_vm(v, self.ts, self.step, &mut self.noise);
            self.correlator.observe(&Record::VmSample(s));
        }
        let records = self.correlator.tick(self.ts);
        self.out.extend(records.iter().cloned());
        records
    }

    /// `n` seconds; what they wrote.
    pub(crate) fn run(&mut self, n: usize) -> Vec<Record> {
        (0..n).flat_map(|_| self.step()).collect()
    }
}
