//! Recommendations: concrete actions with their parameters, expected effect and cost, for one
//! incident, cheapest effective action first.
//!
//! Nothing is recommended that the target cannot honour:
//!
//! | VMM | pin vCPUs | move memory | balloon | migrate |
//! |---|---|---|---|---|
//! | built-in | yes | multi-node hosts | when it has a balloon | no (not yet) |
//! | QEMU, libvirt | yes (vCPU thread affinity) | no | when it has a balloon | to a known host with room, if pre-copy converges |
//!
//! CPUs are the host's own, nodes exist and have the free memory, balloon targets stay within
//! the guest's memory; every draft passes [`honourable`] before it is written.
//!
//! Parameters, as the executors read them: `PinVcpus` has `vcpu` (the VM's vCPU indexes) and
//! `cpus` (host CPUs), both kernel CPU lists (`0`, `2-3`, `1,3`); `MoveMemory` has `node`;
//! `Balloon` has `target_mib` (the new absolute target) and `delta_mib` (signed: positive
//! inflates, negative deflates); `Migrate` has `dest_host`. Notify has none.
//!
//! Ranking: drafts with an expected benefit of at least 0.3 come first, cheapest first (by
//! `cost.score`, then the larger benefit); then the rest; a notification is always last.

use std::collections::{BTreeMap, BTreeSet};

use fleetmind_schema::{ActionCost, ActionKind, ActionSpec, IncidentClass, Subject, VmmKind};

use super::config::CorrelatorConfig;
use super::cpuset::{format_cpu_list, parse_cpu_list};
use super::fleet::{Fleet, HostState, VmState, as_f64};
use super::series;
use super::signals::{Key, SignalKind, SubjectKey, Tracker, min_balloon_step};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// Recommendations per incident at most.
const MAX_RECOMMENDATIONS: usize = 8;
/// Benefit from which a draft counts as effective.
const EFFECTIVE: f64 = 0.3;

/// What the recommendations are for.
#[derive(Debug)]
pub(super) struct Case<'a> {
    pub host: &'a str,
    pub class: IncidentClass,
    pub culprit: Option<&'a SubjectKey>,
    pub subjects: &'a BTreeSet<SubjectKey>,
    pub keys: &'a BTreeSet<Key>,
}

/// A recommendation before it gets its id and rank.
#[derive(Debug, Clone)]
pub(super) struct RecDraft {
    pub spec: ActionSpec,
    pub rationale: String,
    pub benefit: f64,
    pub effect: String,
    pub cost: ActionCost,
}

/// Ranked recommendations for `case`.
pub(super) fn recommend(
    case: &Case<'_>,
    fleet: &Fleet,
    tracker: &Tracker,
    config: &CorrelatorConfig,
    stressed: &BTreeSet<String>,
) -> Vec<RecDraft> {
    let planner = Planner {
        case,
        fleet,
        tracker,
        config,
        stressed,
        host: fleet.host_of(case.host),
    };
    let mut drafts = match case.class {
        IncidentClass::NoisyNeighbour => planner.noisy_neighbour(),
        IncidentClass::RunawayGuest => planner.runaway(),
        IncidentClass::HostOvercommit => planner.overcommit(),
        IncidentClass::MemoryPressure => planner.memory(false),
        IncidentClass::Capacity => planner.memory(true),
        IncidentClass::NumaImbalance => planner.numa(),
        IncidentClass::Unknown => Vec::new(),
    };
    drafts.retain(|d| honourable(&d.spec, fleet, config));
    let always_notify = matches!(
        case.class,
        IncidentClass::RunawayGuest
            | IncidentClass::HostOvercommit
            | IncidentClass::Capacity
            | IncidentClass::Unknown
    );
    if drafts.is_empty() || always_notify {
        drafts.push(planner.notify());
    }
    drafts.sort_by(|a, b| {
        let key = |d: &RecDraft| (d.spec.action == ActionKind::Notify, d.benefit < EFFECTIVE);
        key(a)
            .cmp(&key(b))
            .then_with(|| a.cost.score.total_cmp(&b.cost.score))
            .then_with(|| b.benefit.total_cmp(&a.benefit))
            .then_with(|| a.spec.target.vm.cmp(&b.spec.target.vm))
    });
    let mut seen = Vec::new();
    drafts.retain(|d| {
        if seen.contains(&d.spec) {
            false
        } else {
            seen.push(d.spec.clone());
            true
        }
    });
    drafts.truncate(MAX_RECOMMENDATIONS);
    drafts
}

/// Whether the target can carry out `spec` as far as the correlator knows the fleet.
pub(super) fn honourable(spec: &ActionSpec, fleet: &Fleet, config: &CorrelatorConfig) -> bool {
    if spec.action == ActionKind::Notify {
        return true;
    }
    let Some(vm) = spec
        .target
        .vm
        .as_deref()
        .and_then(|v| fleet.vms.get(v))
        .filter(|v| v.sample.host == spec.target.host)
    else {
        return false;
    };
    let Some(host) = fleet.host_of(&spec.target.host) else {
        return false;
    };
    let param = |name: &str| spec.params.get(name).map(String::as_str);
    match spec.action {
        ActionKind::PinVcpus => {
            let (Some(vcpus), Some(cpus)) = (
                param("vcpu").and_then(parse_cpu_list),
                param("cpus").and_then(parse_cpu_list),
            ) else {
                return false;
            };
            !vcpus.is_empty()
                && !cpus.is_empty()
                && vcpus.is_subset(&vm.vcpu_ids())
                && cpus.is_subset(&host.cpus())
        }
        ActionKind::MoveMemory => {
            let Some(node) = param("node").and_then(|n| n.parse::<u32>().ok()) else {
                return false;
            };
            vm.sample.vmm == VmmKind::Builtin
                && host.sample.numa.len() >= 2
                && host
                    .sample
                    .numa
                    .iter()
                    .any(|n| n.node == node && n.mem_free_bytes >= remote_bytes(vm, node))
        }
        ActionKind::Balloon => {
            let Some(target) = param("target_mib").and_then(|t| t.parse::<u64>().ok()) else {
                return false;
            };
            vm.sample.balloon_target_bytes.is_some()
                && target.saturating_mul(MIB) <= vm.sample.mem_bytes
                && param("delta_mib").is_some_and(|d| d.parse::<i64>().is_ok())
        }
        ActionKind::Migrate => {
            let Some(dest) = param("dest_host") else {
                return false;
            };
            matches!(vm.sample.vmm, VmmKind::Qemu | VmmKind::Libvirt)
                && dest != spec.target.host
                && dest != host.sample.host
                && fleet.hosts.contains_key(dest)
                && precopy(vm, config).is_some()
        }
        ActionKind::Notify => true,
    }
}

/// Bytes of the VM resident off `node`.
fn remote_bytes(vm: &VmState, node: u32) -> u64 {
    vm.sample
        .numa_resident
        .iter()
        .filter(|n| n.node != node)
        .fold(0u64, |acc, n| acc.saturating_add(n.bytes))
}

/// A pre-copy live migration's estimate.
#[derive(Debug, Clone, Copy)]
struct Precopy {
    bytes: f64,
    duration_s: f64,
    rounds: u32,
    downtime_s: f64,
}

/// Rounds of pre-copy: send all memory, then what was dirtied meanwhile, until the remainder
/// fits in the downtime. `None` if it never gets there (the dirty rate is at or above the
/// link's bandwidth, or too close to it for the round limit).
fn precopy(vm: &VmState, config: &CorrelatorConfig) -> Option<Precopy> {
    let bandwidth = config.migration_bandwidth_bytes_per_s;
    if !(bandwidth.is_finite() && bandwidth > 0.0) {
        return None;
    }
    let dirty = vm
        .sample
        .dirty_bytes_per_s
        .filter(|d| d.is_finite() && *d >= 0.0)
        .unwrap_or(0.0);
    let mem = as_f64(vm.sample.mem_bytes);
    let max_downtime = config.migration_max_downtime.as_secs_f64();
    let mut remaining = mem;
    let mut total = 0.0;
    for round in 1..=config.migration_max_rounds.max(1) {
        let seconds = remaining / bandwidth;
        total += remaining;
        let dirtied = (dirty * seconds).min(mem);
        if dirtied / bandwidth <= max_downtime {
            total += dirtied;
            return Some(Precopy {
                bytes: total,
                duration_s: total / bandwidth,
                rounds: round + 1,
                downtime_s: dirtied / bandwidth,
            });
        }
        if dirtied >= remaining {
            return None;
        }
        remaining = dirtied;
    }
    None
}

fn fmt_bytes(bytes: f64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else {
        format!("{:.0} MiB", bytes / as_f64(MIB))
    }
}

fn pct(frac: f64) -> String {
    format!("{:.0}%", frac * 100.0)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn pin_cost(threads: usize) -> ActionCost {
    ActionCost {
        duration_s: 0.001 * as_f64(threads as u64),
        bytes: 0,
        score: 0.05,
        summary: format!(
            "{threads} sched_setaffinity call{}; no guest pause, caches warm up again",
            plural(threads)
        ),
    }
}

fn notify_cost() -> ActionCost {
    ActionCost {
        duration_s: 0.0,
        bytes: 0,
        score: 0.0,
        summary: "nothing runs; an operator decides".to_owned(),
    }
}

struct Planner<'a> {
    case: &'a Case<'a>,
    fleet: &'a Fleet,
    tracker: &'a Tracker,
    config: &'a CorrelatorConfig,
    stressed: &'a BTreeSet<String>,
    host: Option<&'a HostState>,
}

fn spec(action: ActionKind, vm: &VmState, params: &[(&str, String)]) -> ActionSpec {
    ActionSpec {
        action,
        target: Subject {
            host: vm.sample.host.clone(),
            vm: Some(vm.sample.vm.clone()),
        },
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

impl Planner<'_> {
    fn vm(&self, subject: &SubjectKey) -> Option<&VmState> {
        self.fleet
            .vms
            .get(subject.vm.as_deref()?)
            .filter(|v| v.sample.host == self.case.host)
    }

    fn culprit(&self) -> Option<&VmState> {
        self.case.culprit.and_then(|c| self.vm(c))
    }

    /// The case's evidence of `kind` on `subject`, worst value first.
    fn evidence(&self, subject: &SubjectKey, kind: SignalKind) -> Vec<(&Key, f64)> {
        let mut out: Vec<(&Key, f64)> = self
            .case
            .keys
            .iter()
            .filter(|k| &k.subject == subject)
            .filter_map(|k| {
                let t = self.tracker.tracks.get(k)?;
                (t.kind == kind).then_some((k, t.value))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// CPUs pinned (narrower than the host) by VMs outside `except` that use them.
    fn occupied(&self, host: &HostState, except: &BTreeSet<&str>) -> BTreeSet<u32> {
        let cpus = host.cpus();
        self.fleet
            .vms_on(self.case.host)
            .filter(|v| !except.contains(v.sample.vm.as_str()))
            .flat_map(|v| {
                v.vcpu_ids()
                    .into_iter()
                    .filter(|&i| v.recent_vcpu_mean(i, |p| p.run) >= 0.2)
                    .filter_map(|i| v.restricted_affinity(i, &cpus))
                    .flatten()
                    .collect::<Vec<u32>>()
            })
            .collect()
    }

    /// Up to `k` host CPUs outside `exclude`: free of other pinned VMs first, then on the
    /// preferred node, then the least busy.
    fn choose_cpus(
        host: &HostState,
        exclude: &BTreeSet<u32>,
        occupied: &BTreeSet<u32>,
        prefer_node: Option<u32>,
        k: usize,
    ) -> BTreeSet<u32> {
        let mut candidates: Vec<u32> = host.cpus().difference(exclude).copied().collect();
        // Busy fraction in 5 % steps, so that noise does not reorder equal CPUs.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bucket = |cpu: u32| (host.cpu_busy(cpu) * 20.0).round() as u32;
        candidates.sort_by_key(|&cpu| {
            (
                occupied.contains(&cpu),
                prefer_node.is_some_and(|n| host.node_of(cpu) != Some(n)),
                bucket(cpu),
                cpu,
            )
        });
        candidates.into_iter().take(k.max(1)).collect()
    }

    /// The CPUs `vcpus` are restricted to now, if they all are.
    fn current_pin(vm: &VmState, vcpus: &BTreeSet<u32>, host: &HostState) -> Option<BTreeSet<u32>> {
        let cpus = host.cpus();
        let mut out = BTreeSet::new();
        for &v in vcpus {
            out.extend(vm.restricted_affinity(v, &cpus)?);
        }
        Some(out)
    }

    fn busy_of(host: &HostState, cpus: &BTreeSet<u32>) -> f64 {
        super::fleet::mean(cpus.iter().map(|&c| host.cpu_busy(c)))
    }

    fn memory_node_pref(&self, vm: &VmState, host: &HostState) -> Option<u32> {
        (host.sample.numa.len() >= 2)
            .then(|| vm.memory_node())
            .flatten()
    }

    #[allow(clippy::too_many_lines)]
    fn noisy_neighbour(&self) -> Vec<RecDraft> {
        let mut out = Vec::new();
        let (Some(culprit), Some(host)) = (self.culprit(), self.host) else {
            return out;
        };
        let host_cpus = host.cpus();
        let target_wait = self.config.wait_guard / 2.0;
        let mut victims: Vec<(&VmState, BTreeSet<u32>, f64)> = self
            .case
            .subjects
            .iter()
            .filter(|s| Some(*s) != self.case.culprit)
            .filter_map(|s| {
                let vm = self.vm(s)?;
                let waits = self.evidence(s, SignalKind::VcpuWait);
                let mut vcpus: BTreeSet<u32> = waits.iter().filter_map(|(k, _)| k.vcpu()).collect();
                vcpus.retain(|v| vm.vcpu_ids().contains(v));
                if vcpus.is_empty() {
                    return None;
                }
                let worst = waits.first().map_or(0.0, |w| w.1);
                Some((vm, vcpus, worst))
            })
            .collect();
        victims.sort_by(|a, b| {
            b.2.total_cmp(&a.2)
                .then_with(|| a.0.sample.vm.cmp(&b.0.sample.vm))
        });
        victims.truncate(3);
        let culprit_name = culprit.sample.vm.as_str();
        let culprit_foot = culprit.vm_footprint(&host_cpus);
        let culprit_unpinned = culprit
            .vcpu_ids()
            .into_iter()
            .any(|v| culprit.restricted_affinity(v, &host_cpus).is_none());
        let rise = self.culprit_rise(culprit);

        // Pin each victim away from the culprit.
        for (victim, vcpus, wait) in &victims {
            let name = victim.sample.vm.as_str();
            let occupied = self.occupied(host, &BTreeSet::from([name, culprit_name]));
            let chosen = Self::choose_cpus(
                host,
                &culprit_foot,
                &occupied,
                self.memory_node_pref(victim, host),
                vcpus.len(),
            );
            if chosen.is_empty() || Self::current_pin(victim, vcpus, host).as_ref() == Some(&chosen)
            {
                continue;
            }
            let mut benefit = if culprit_unpinned { 0.45 } else { 0.75 };
            if chosen.is_subset(&occupied) {
                benefit *= 0.6;
            }
            benefit *= saturation_discount(host, &chosen);
            let shared: BTreeSet<u32> = vcpus
                .iter()
                .flat_map(|&v| victim.footprint(v, &host_cpus))
                .filter(|c| culprit_foot.contains(c))
                .collect();
            out.push(RecDraft {
                spec: spec(
                    ActionKind::PinVcpus,
                    victim,
                    &[
                        ("vcpu", format_cpu_list(vcpus)),
                        ("cpus", format_cpu_list(&chosen)),
                    ],
                ),
                rationale: format!(
                    "{name} vCPU {} waits {} of the time{} next to {culprit_name}, whose {rise}; \
                     CPU {} {} not used by {culprit_name} and {} busy",
                    format_cpu_list(vcpus),
                    pct(*wait),
                    if shared.is_empty() {
                        String::new()
                    } else {
                        format!(" on CPU {}", format_cpu_list(&shared))
                    },
                    format_cpu_list(&chosen),
                    if chosen.len() == 1 { "is" } else { "are" },
                    pct(Self::busy_of(host, &chosen)),
                ),
                benefit,
                effect: format!(
                    "{name} vCPU {} run-queue delay from {} to under {}",
                    format_cpu_list(vcpus),
                    pct(*wait),
                    pct(target_wait)
                ),
                cost: pin_cost(vcpus.len()),
            });
        }

        // Or give the culprit CPUs of its own.
        let victim_names: BTreeSet<&str> =
            victims.iter().map(|(v, ..)| v.sample.vm.as_str()).collect();
        let victims_foot: BTreeSet<u32> = victims
            .iter()
            .flat_map(|(v, ..)| v.vm_footprint(&host_cpus))
            .collect();
        let mut except = victim_names.clone();
        except.insert(culprit_name);
        let occupied = self.occupied(host, &except);
        let culprit_vcpus = culprit.vcpu_ids();
        if !victims.is_empty() && !culprit_vcpus.is_empty() {
            let mut exclude = victims_foot.clone();
            exclude.extend(occupied.iter().copied());
            let chosen = Self::choose_cpus(
                host,
                &exclude,
                &BTreeSet::new(),
                self.memory_node_pref(culprit, host),
                culprit_vcpus.len(),
            );
            if !chosen.is_empty()
                && Self::current_pin(culprit, &culprit_vcpus, host).as_ref() != Some(&chosen)
            {
                let names: Vec<&str> = victim_names.iter().copied().collect();
                out.push(RecDraft {
                    spec: spec(
                        ActionKind::PinVcpus,
                        culprit,
                        &[
                            ("vcpu", format_cpu_list(&culprit_vcpus)),
                            ("cpus", format_cpu_list(&chosen)),
                        ],
                    ),
                    rationale: format!(
                        "{culprit_name}'s {rise}; CPU {} {} used by none of {}",
                        format_cpu_list(&chosen),
                        if chosen.len() == 1 { "is" } else { "are" },
                        names.join(", ")
                    ),
                    benefit: (0.6 + 0.1 * as_f64(victims.len().saturating_sub(1) as u64)).min(0.85)
                        * saturation_discount(host, &chosen),
                    effect: format!(
                        "run-queue delay of {} under {}; {culprit_name} keeps CPU {} to itself",
                        names.join(", "),
                        pct(target_wait),
                        format_cpu_list(&chosen)
                    ),
                    cost: pin_cost(culprit_vcpus.len()),
                });
            }
        }

        // Or move one of them to another host.
        let effect = format!(
            "{} back under {} run-queue delay",
            victims
                .iter()
                .map(|(v, ..)| v.sample.vm.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            pct(target_wait)
        );
        if let Some(m) = self.migrate(culprit, 0.8, &effect) {
            out.push(m);
        } else if let Some(m) = victims
            .iter()
            .find_map(|(v, ..)| self.migrate(v, 0.7, &effect))
        {
            out.push(m);
        }
        out
    }

    /// "exits rose from X/s to Y/s" or "run fraction rose ...".
    fn culprit_rise(&self, culprit: &VmState) -> String {
        let subject = SubjectKey::vm(&culprit.sample.host, &culprit.sample.vm);
        if let Some(t) = self
            .case
            .keys
            .iter()
            .filter(|k| k.subject == subject)
            .filter_map(|k| self.tracker.tracks.get(k))
            .find(|t| t.kind == SignalKind::ExitStorm)
        {
            return format!("exits rose from {:.0}/s to {:.0}/s", t.expected, t.value);
        }
        if let Some(t) = self
            .case
            .keys
            .iter()
            .filter(|k| k.subject == subject)
            .filter_map(|k| self.tracker.tracks.get(k))
            .find(|t| t.kind == SignalKind::VcpuBusy)
        {
            return format!(
                "vCPU run time rose from {} to {}",
                pct(t.expected),
                pct(t.value)
            );
        }
        format!("exits run at {:.0}/s", culprit.recent_exits_mean())
    }

    fn runaway(&self) -> Vec<RecDraft> {
        let mut out = Vec::new();
        let (Some(vm), Some(host)) = (self.culprit(), self.host) else {
            return out;
        };
        let host_cpus = host.cpus();
        let name = vm.sample.vm.as_str();
        let others: BTreeSet<u32> = self
            .fleet
            .vms_on(self.case.host)
            .filter(|v| v.sample.vm != name)
            .flat_map(|v| v.vm_footprint(&host_cpus))
            .collect();
        let vcpus = vm.vcpu_ids();
        if vcpus.is_empty() || vm.vm_footprint(&host_cpus).is_disjoint(&others) {
            return out;
        }
        let free = Self::choose_cpus(host, &others, &BTreeSet::new(), None, vcpus.len());
        let (chosen, benefit) = if free.is_empty() {
            // Nothing free of others: confine it to one CPU, so it hurts one CPU's sharers.
            (
                Self::choose_cpus(host, &BTreeSet::new(), &BTreeSet::new(), None, 1),
                0.35,
            )
        } else {
            (free, 0.5)
        };
        if chosen.is_empty() || Self::current_pin(vm, &vcpus, host).as_ref() == Some(&chosen) {
            return out;
        }
        out.push(RecDraft {
            spec: spec(
                ActionKind::PinVcpus,
                vm,
                &[("vcpu", format_cpu_list(&vcpus)), ("cpus", format_cpu_list(&chosen))],
            ),
            rationale: format!(
                "{name}'s {}; confining it to CPU {} keeps its storm off the CPUs its neighbours use",
                self.culprit_rise(vm),
                format_cpu_list(&chosen)
            ),
            benefit,
            effect: format!(
                "co-located VMs keep their CPU time; {name}'s exits stay on CPU {}",
                format_cpu_list(&chosen)
            ),
            cost: pin_cost(vcpus.len()),
        });
        out
    }

    fn overcommit(&self) -> Vec<RecDraft> {
        let Some(host) = self.host else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let host_cpus = host.cpus();
        // The waiting VMs, worst first, and the CPUs they are confined to (if all are).
        let mut waiting: Vec<(&VmState, BTreeSet<u32>, f64)> = self
            .case
            .subjects
            .iter()
            .filter_map(|s| {
                let waits = self.evidence(s, SignalKind::VcpuWait);
                let vcpus: BTreeSet<u32> = waits.iter().filter_map(|(k, _)| k.vcpu()).collect();
                let worst = waits.first()?.1;
                Some((self.vm(s)?, vcpus, worst))
            })
            .collect();
        waiting.sort_by(|a, b| {
            b.2.total_cmp(&a.2)
                .then_with(|| a.0.sample.vm.cmp(&b.0.sample.vm))
        });
        let confined: Option<BTreeSet<u32>> =
            waiting
                .iter()
                .try_fold(BTreeSet::new(), |mut set, (vm, vcpus, _)| {
                    for &v in vcpus {
                        set.extend(vm.restricted_affinity(v, &host_cpus)?);
                    }
                    Some(set)
                });
        // Pinned into too few CPUs: move the worst off them.
        if let (Some(set), Some((vm, vcpus, wait))) = (confined, waiting.first())
            && !set.is_empty()
            && !host_cpus.is_subset(&set)
            && !vcpus.is_empty()
        {
            let name = vm.sample.vm.as_str();
            let occupied = self.occupied(host, &BTreeSet::from([name]));
            let chosen = Self::choose_cpus(
                host,
                &set,
                &occupied,
                self.memory_node_pref(vm, host),
                vcpus.len(),
            );
            if !chosen.is_empty() {
                out.push(RecDraft {
                    spec: spec(
                        ActionKind::PinVcpus,
                        vm,
                        &[("vcpu", format_cpu_list(vcpus)), ("cpus", format_cpu_list(&chosen))],
                    ),
                    rationale: format!(
                        "the VMs pinned to CPU {} want more than it has; {name} waits {} of the time \
                         and CPU {} {} {} busy",
                        format_cpu_list(&set),
                        pct(*wait),
                        format_cpu_list(&chosen),
                        if chosen.len() == 1 { "is" } else { "are" },
                        pct(Self::busy_of(host, &chosen)),
                    ),
                    benefit: 0.6 * saturation_discount(host, &chosen),
                    effect: format!(
                        "{name} vCPU {} run-queue delay from {} to under {}",
                        format_cpu_list(vcpus),
                        pct(*wait),
                        pct(self.config.wait_guard / 2.0)
                    ),
                    cost: pin_cost(vcpus.len()),
                });
            }
        }
        // Or move the biggest consumers to other hosts.
        let cpus = f64::from(host.sample.cpus.max(1));
        let total: f64 = self
            .fleet
            .vms_on(self.case.host)
            .map(VmState::recent_demand)
            .sum();
        let mut vms: Vec<&VmState> = self.fleet.vms_on(self.case.host).collect();
        vms.sort_by(|a, b| {
            b.recent_demand()
                .total_cmp(&a.recent_demand())
                .then_with(|| a.sample.vm.cmp(&b.sample.vm))
        });
        out.extend(
            vms.iter()
                .filter_map(|vm| {
                    let after = (total - vm.recent_demand()) / cpus;
                    let effect = format!(
                        "{} vCPU demand from {:.2} to {after:.2} per CPU",
                        self.case.host,
                        total / cpus
                    );
                    self.migrate(vm, 0.6, &effect)
                })
                .take(2),
        );
        out
    }

    #[allow(clippy::too_many_lines)]
    fn memory(&self, capacity: bool) -> Vec<RecDraft> {
        let mut out = Vec::new();
        let Some(host) = self.host else {
            return out;
        };
        let c = self.config;
        let total = host.sample.mem.total_bytes;
        let reserve = total / 20;
        let mut room = host.sample.mem.available_bytes.saturating_sub(reserve);
        let host_pressure = capacity
            || self.case.keys.iter().any(|k| {
                k.subject.vm.is_none()
                    && [
                        series::PSI_MEMORY_SOME_FRAC,
                        series::PSI_MEMORY_FULL_FRAC,
                        series::PGMAJFAULT_PER_S,
                        series::PSWPOUT_PER_S,
                        series::MEM_USED_FRAC,
                    ]
                    .contains(&k.series.as_str())
            });
        let starving: Vec<&VmState> = self
            .case
            .subjects
            .iter()
            .filter(|s| !self.evidence(s, SignalKind::GuestMemoryLow).is_empty())
            .filter_map(|s| self.vm(s))
            .collect();

        // Deflate the balloons of starving guests, where the host has the room.
        let mut room_wanted = 0u64;
        for vm in &starving {
            let (Some(target), Some(actual), Some(free)) = (
                vm.sample.balloon_target_bytes,
                vm.sample.balloon_actual_bytes,
                vm.sample.guest_free_bytes,
            ) else {
                continue;
            };
            let mem = vm.sample.mem_bytes;
            let step = min_balloon_step(mem);
            let held = target.min(actual);
            if held < step {
                continue;
            }
            let need = goal_bytes(mem, c.guest_free_goal_frac).saturating_sub(free);
            let delta = round_up_mib(need.max(step)).min(held / MIB * MIB);
            if delta < step {
                continue;
            }
            if delta > room {
                room_wanted = room_wanted.saturating_add(delta);
                continue;
            }
            room -= delta;
            let new_target = (held - delta) / MIB;
            let name = vm.sample.vm.as_str();
            out.push(RecDraft {
                spec: spec(
                    ActionKind::Balloon,
                    vm,
                    &[
                        ("target_mib", new_target.to_string()),
                        ("delta_mib", format!("-{}", delta / MIB)),
                    ],
                ),
                rationale: format!(
                    "{name}'s balloon holds {} while its guest has {} free ({} of its memory); \
                     {} has {} available",
                    fmt_bytes(as_f64(actual)),
                    fmt_bytes(as_f64(free)),
                    pct(as_f64(free) / as_f64(mem.max(1))),
                    self.case.host,
                    fmt_bytes(as_f64(host.sample.mem.available_bytes))
                ),
                benefit: 0.8,
                effect: format!(
                    "{name} guest free memory from {} to about {} ({})",
                    fmt_bytes(as_f64(free)),
                    fmt_bytes(as_f64(free + delta)),
                    pct(as_f64(free + delta) / as_f64(mem.max(1)))
                ),
                cost: ActionCost {
                    duration_s: as_f64(delta) / c.balloon_bytes_per_s.max(1.0),
                    bytes: delta,
                    score: 0.1,
                    summary: format!(
                        "deflates by {}; the guest takes its pages back as it touches them",
                        fmt_bytes(as_f64(delta))
                    ),
                },
            });
        }

        // Inflate the balloons of VMs with memory to spare.
        if host_pressure || room_wanted > 0 {
            let starving_names: BTreeSet<&str> =
                starving.iter().map(|v| v.sample.vm.as_str()).collect();
            let mut donors: Vec<(&VmState, u64)> = self
                .fleet
                .vms_on(self.case.host)
                .filter(|v| !starving_names.contains(v.sample.vm.as_str()))
                .filter_map(|v| {
                    let (Some(target), Some(free)) =
                        (v.sample.balloon_target_bytes, v.sample.guest_free_bytes)
                    else {
                        return None;
                    };
                    let mem = v.sample.mem_bytes;
                    if as_f64(free) < c.donor_free_frac * as_f64(mem) {
                        return None;
                    }
                    let keep = goal_bytes(mem, c.donor_keep_frac);
                    let base = target.max(v.sample.balloon_actual_bytes.unwrap_or(0));
                    let give = free
                        .saturating_sub(keep)
                        .min(mem.saturating_sub(base).saturating_sub(keep));
                    let give = give / MIB * MIB;
                    (give >= min_balloon_step(mem)).then_some((v, give))
                })
                .collect();
            donors.sort_by(|a, b| {
                b.1.cmp(&a.1)
                    .then_with(|| a.0.sample.vm.cmp(&b.0.sample.vm))
            });
            let mut wanted = if host_pressure { u64::MAX } else { room_wanted };
            for (vm, give) in donors.into_iter().take(3) {
                if wanted == 0 {
                    break;
                }
                let give = give.min(round_up_mib(wanted));
                wanted = wanted.saturating_sub(give);
                let base = vm
                    .sample
                    .balloon_target_bytes
                    .unwrap_or(0)
                    .max(vm.sample.balloon_actual_bytes.unwrap_or(0));
                let new_target = (base + give) / MIB;
                let name = vm.sample.vm.as_str();
                let free = vm.sample.guest_free_bytes.unwrap_or(0);
                let why = if host_pressure {
                    format!("{} is short of memory", self.case.host)
                } else {
                    format!(
                        "the starving guests' balloons need {} of host room to deflate",
                        fmt_bytes(as_f64(room_wanted))
                    )
                };
                out.push(RecDraft {
                    spec: spec(
                        ActionKind::Balloon,
                        vm,
                        &[
                            ("target_mib", new_target.to_string()),
                            ("delta_mib", (give / MIB).to_string()),
                        ],
                    ),
                    rationale: format!(
                        "{why}; {name}'s guest has {} free ({} of its memory) and can give {} back",
                        fmt_bytes(as_f64(free)),
                        pct(as_f64(free) / as_f64(vm.sample.mem_bytes.max(1))),
                        fmt_bytes(as_f64(give))
                    ),
                    benefit: 0.55,
                    effect: format!(
                        "{} available memory up by about {}{}",
                        self.case.host,
                        fmt_bytes(as_f64(give)),
                        if host_pressure {
                            format!("; memory stalls under {}", pct(c.psi_memory_some_guard))
                        } else {
                            String::new()
                        }
                    ),
                    cost: ActionCost {
                        duration_s: as_f64(give) / c.balloon_bytes_per_s.max(1.0),
                        bytes: give,
                        score: 0.2,
                        summary: format!(
                            "inflates by {}; the guest gives up free pages, none it uses",
                            fmt_bytes(as_f64(give))
                        ),
                    },
                });
            }
        }

        // Move the biggest consumer away.
        let grower = self
            .case
            .subjects
            .iter()
            .filter(|s| !self.evidence(s, SignalKind::RssGrowth).is_empty())
            .filter_map(|s| self.vm(s))
            .max_by_key(|v| (v.sample.rss_bytes, v.sample.vm.clone()));
        let candidate = grower.or_else(|| starving.first().copied()).or_else(|| {
            capacity
                .then(|| {
                    self.fleet
                        .vms_on(self.case.host)
                        .max_by_key(|v| (v.sample.rss_bytes, v.sample.vm.clone()))
                })
                .flatten()
        });
        if let Some(vm) = candidate {
            let effect = format!(
                "{} gets {} of memory back",
                self.case.host,
                fmt_bytes(as_f64(vm.sample.rss_bytes))
            );
            out.extend(self.migrate(vm, 0.6, &effect));
        }
        out
    }

    fn numa(&self) -> Vec<RecDraft> {
        let mut out = Vec::new();
        let Some(host) = self.host else {
            return out;
        };
        let host_cpus = host.cpus();
        let mut vms: Vec<(&VmState, f64)> = self
            .case
            .subjects
            .iter()
            .filter_map(|s| {
                let frac = self.evidence(s, SignalKind::RemoteMemory).first()?.1;
                Some((self.vm(s)?, frac))
            })
            .collect();
        vms.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| a.0.sample.vm.cmp(&b.0.sample.vm))
        });
        for (vm, frac) in vms.into_iter().take(3) {
            let name = vm.sample.vm.as_str();
            let Some(mem_node) = vm.memory_node() else {
                continue;
            };
            let home = vcpu_node(vm, host);
            let vcpus = vm.vcpu_ids();
            // Pin the vCPUs to the node that holds the memory.
            if let Some(node) = host.sample.numa.iter().find(|n| n.node == mem_node)
                && Some(mem_node) != home
                && !vcpus.is_empty()
            {
                let cpus: BTreeSet<u32> = node
                    .cpus
                    .iter()
                    .copied()
                    .filter(|c| host_cpus.contains(c))
                    .collect();
                let busy = Self::busy_of(host, &cpus);
                if !cpus.is_empty() && Self::current_pin(vm, &vcpus, host).as_ref() != Some(&cpus) {
                    out.push(RecDraft {
                        spec: spec(
                            ActionKind::PinVcpus,
                            vm,
                            &[
                                ("vcpu", format_cpu_list(&vcpus)),
                                ("cpus", format_cpu_list(&cpus)),
                            ],
                        ),
                        rationale: format!(
                            "{} of {name}'s memory is on node {mem_node}; its CPUs {} are {} busy",
                            pct(frac),
                            format_cpu_list(&cpus),
                            pct(busy)
                        ),
                        benefit: if busy <= 0.7 { 0.6 } else { 0.25 },
                        effect: format!(
                            "{name}'s remote memory share from {} to under 10%",
                            pct(frac)
                        ),
                        cost: pin_cost(vcpus.len()),
                    });
                }
            }
            // Move the memory to the vCPUs' node.
            if let Some(home) = home
                && home != mem_node
                && vm.sample.vmm == VmmKind::Builtin
                && host.sample.numa.len() >= 2
            {
                let bytes = remote_bytes(vm, home);
                let fits = host
                    .sample
                    .numa
                    .iter()
                    .any(|n| n.node == home && as_f64(n.mem_free_bytes) >= 1.1 * as_f64(bytes));
                if fits && bytes > 0 {
                    let seconds = as_f64(bytes) / self.config.numa_move_bytes_per_s.max(1.0);
                    out.push(RecDraft {
                        spec: spec(ActionKind::MoveMemory, vm, &[("node", home.to_string())]),
                        rationale: format!(
                            "{name}'s vCPUs run on node {home} but {} of its memory ({}) is elsewhere; \
                             node {home} has room for it",
                            pct(frac),
                            fmt_bytes(as_f64(bytes))
                        ),
                        benefit: 0.8,
                        effect: format!("{name}'s remote memory share from {} to under 10%", pct(frac)),
                        cost: ActionCost {
                            duration_s: seconds,
                            bytes,
                            score: 0.2 + 0.3 * (as_f64(bytes) / (8.0 * GIB)).min(1.0),
                            summary: format!(
                                "moves {} between nodes at ~{}/s: about {seconds:.1} s; the guest \
                                 keeps running, slower while its pages move",
                                fmt_bytes(as_f64(bytes)),
                                fmt_bytes(self.config.numa_move_bytes_per_s)
                            ),
                        },
                    });
                }
            }
        }
        out
    }

    /// A live migration of `vm` to the known host with the most room, if one has room for it,
    /// it is not itself short, its VMM can migrate and pre-copy converges.
    fn migrate(&self, vm: &VmState, benefit: f64, effect: &str) -> Option<RecDraft> {
        if !matches!(vm.sample.vmm, VmmKind::Qemu | VmmKind::Libvirt) {
            return None;
        }
        let estimate = precopy(vm, self.config)?;
        let mem = as_f64(vm.sample.mem_bytes);
        let demand = vm
            .recent_demand()
            .max(0.25 * as_f64(vm.sample.vcpus.len() as u64));
        let kinds_on = |host: &str| -> Vec<VmmKind> {
            self.fleet.vms_on(host).map(|v| v.sample.vmm).collect()
        };
        let (dest, _) = self
            .fleet
            .hosts
            .values()
            .filter(|h| {
                h.sample.host != vm.sample.host
                    && self.host.is_none_or(|own| own.sample.host != h.sample.host)
                    && !self.stressed.contains(&h.sample.host)
            })
            .filter(|h| {
                let kinds = kinds_on(&h.sample.host);
                kinds.is_empty() || kinds.iter().any(|k| *k != VmmKind::Builtin)
            })
            .filter_map(|h| {
                let total = as_f64(h.sample.mem.total_bytes);
                let need = 1.1 * mem + 0.05 * total;
                let available = as_f64(h.sample.mem.available_bytes);
                let idle = h.idle_cpus();
                (available >= need && idle >= demand + 0.5).then(|| {
                    let score = (available - need) / total.max(1.0)
                        + idle / f64::from(h.sample.cpus.max(1));
                    (h, score)
                })
            })
            .max_by(|a, b| {
                a.1.total_cmp(&b.1)
                    .then_with(|| b.0.sample.host.cmp(&a.0.sample.host))
            })?;
        let dest_name = dest.sample.host.clone();
        let name = vm.sample.vm.as_str();
        let dirty = vm.sample.dirty_bytes_per_s.filter(|d| d.is_finite());
        let bandwidth = self.config.migration_bandwidth_bytes_per_s;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bytes = estimate.bytes.max(0.0).min(u64::MAX as f64) as u64;
        Some(RecDraft {
            spec: spec(ActionKind::Migrate, vm, &[("dest_host", dest_name.clone())]),
            rationale: format!(
                "{dest_name} has {} available and {:.1} idle CPUs for {name} ({} of memory)",
                fmt_bytes(as_f64(dest.sample.mem.available_bytes)),
                dest.idle_cpus(),
                fmt_bytes(mem)
            ),
            benefit,
            effect: effect.to_owned(),
            cost: ActionCost {
                duration_s: (estimate.duration_s * 10.0).round() / 10.0,
                bytes,
                score: (0.5 + 0.5 * (estimate.duration_s / 600.0)).min(1.0),
                summary: format!(
                    "pre-copy sends {} over {:.2} GB/s in {} round{} ({}): about {:.0} s, \
                     then a pause of about {:.0} ms",
                    fmt_bytes(estimate.bytes),
                    bandwidth / 1e9,
                    estimate.rounds,
                    plural(estimate.rounds as usize),
                    match dirty {
                        Some(d) => format!("guest dirties {}/s", fmt_bytes(d)),
                        None => "dirty rate unknown, taken as idle".to_owned(),
                    },
                    estimate.duration_s.ceil(),
                    estimate.downtime_s * 1000.0
                ),
            },
        })
    }

    fn notify(&self) -> RecDraft {
        let case = self.case;
        let target = case
            .culprit
            .map_or_else(|| SubjectKey::host(case.host), Clone::clone);
        let series: BTreeSet<&str> = case.keys.iter().map(|k| k.series.as_str()).collect();
        let series: Vec<&str> = series.into_iter().take(6).collect();
        let (rationale, effect) = match case.class {
            IncidentClass::RunawayGuest => {
                let reason = self.culprit().and_then(top_exit_reason);
                (
                    format!(
                        "{} looks out of control{}; only its owner can fix the guest",
                        target.name(),
                        reason.map_or_else(String::new, |r| format!(" (mostly {r})"))
                    ),
                    format!("{}'s exit rate back to its usual level", target.name()),
                )
            }
            IncidentClass::HostOvercommit => {
                let demand: f64 = self
                    .fleet
                    .vms_on(case.host)
                    .map(VmState::recent_demand)
                    .sum();
                let cpus = self.host.map_or(0, |h| h.sample.cpus);
                (
                    format!(
                        "the VMs on {} wait for CPU (together they want {demand:.1} of its {cpus} \
                         CPUs); spread their pinning, move VMs away or add capacity",
                        case.host
                    ),
                    format!(
                        "run-queue delay of the VMs on {} back under the guard",
                        case.host
                    ),
                )
            }
            IncidentClass::MemoryPressure | IncidentClass::Capacity => (
                format!(
                    "no balloon or migration can make room on {}; give the guests more memory or \
                     move VMs by hand",
                    case.host
                ),
                format!("memory signals on {} back to normal", case.host),
            ),
            _ => (
                format!(
                    "look at {} on {}: {}",
                    target.name(),
                    case.host,
                    series.join(", ")
                ),
                format!("{} back to expected", series.join(", ")),
            ),
        };
        RecDraft {
            spec: ActionSpec {
                action: ActionKind::Notify,
                target: target.to_subject(),
                params: BTreeMap::new(),
            },
            rationale,
            benefit: 0.1,
            effect,
            cost: notify_cost(),
        }
    }
}

/// Less benefit from moving onto CPUs that are already nearly saturated (by anything).
fn saturation_discount(host: &HostState, cpus: &BTreeSet<u32>) -> f64 {
    if Planner::busy_of(host, cpus) >= 0.9 {
        0.6
    } else {
        1.0
    }
}

/// The exit reason with the highest rate, other than the total.
fn top_exit_reason(vm: &VmState) -> Option<String> {
    vm.sample
        .exits
        .iter()
        .filter(|e| e.reason != "exits" && e.per_s.is_finite() && e.per_s > 0.0)
        .max_by(|a, b| a.per_s.total_cmp(&b.per_s))
        .map(|e| format!("{} at {:.0}/s", e.reason, e.per_s))
}

/// The node most of the VM's vCPUs last ran on.
fn vcpu_node(vm: &VmState, host: &HostState) -> Option<u32> {
    let mut votes: BTreeMap<u32, u32> = BTreeMap::new();
    for v in &vm.sample.vcpus {
        if let Some(node) = v.host_cpu.and_then(|c| host.node_of(c)) {
            *votes.entry(node).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .max_by_key(|&(node, n)| (n, std::cmp::Reverse(node)))
        .map(|(node, _)| node)
}

/// `frac` of `mem`, in bytes.
fn goal_bytes(mem: u64, frac: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = (as_f64(mem) * frac.clamp(0.0, 1.0)) as u64;
    bytes
}

fn round_up_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).saturating_mul(MIB)
}
