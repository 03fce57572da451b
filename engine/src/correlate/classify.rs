//! From signals to problems: which signals on one host belong together, what class of fleet
//! problem they make, and who is to blame, as ranked hypotheses with their evidence.
//!
//! Rules, per host, over the signals active within the hold:
//!
//! * **Noisy neighbour**: vCPUs wait (run-queue delay) on CPUs they share with a VM whose exits
//!   or run fraction rose. Sharing is by affinity, or by the CPUs they last ran on when one of
//!   them may run anywhere. A suspect's score adds, over its victims, the CPU overlap times the
//!   co-timing of its rise with their delay times the size of its rise. A VM that did not rise
//!   but exits at the storm floor on the shared CPUs is a weaker suspect (both were started
//!   busy, so neither has a baseline to rise from). Three or more comparable risers are no
//!   single culprit.
//! * **Host overcommit**: waiting VMs no culprit explains, when at least
//!   `overcommit_min_waiting_vms` wait past the guard or the host's vCPU demand is over its
//!   CPUs. One such VM alone is a problem of unknown class (something outside the VMs).
//!   Delays only a detector noticed, under the guard, count only with a culprit to blame.
//! * **Runaway guest**: an exit storm, or a vCPU pegged far above its baseline, with no victims.
//! * **Memory pressure**: host memory stalls or paging, or a starving guest with something to
//!   show for it (its balloon holding memory, its own growth, a memory anomaly, or host
//!   pressure). Suspects: the squeezing balloon, the VM whose resident memory grew, the host.
//! * **Capacity**: host memory nearly full with no stalls.
//! * **NUMA imbalance**: VMs whose memory sits mostly off their vCPUs' node.
//! * **Unknown**: at least `unknown_min_series` anomalous series on a host that no rule above
//!   explains.
//!
//! Loose anomalies (host CPU load, the dirty rate, NUMA misses, ...) join the problems of
//! their host and family as further evidence. A built-in VM host also sees the host-level
//! signals of the machine it runs on; those it does not explain stay the machine's.

use std::collections::{BTreeMap, BTreeSet};

use fleetmind_schema::{IncidentClass, TimestampMs};

use super::config::{CorrelatorConfig, ms};
use super::fleet::{Fleet, VmState};
use super::signals::{Family, Key, SignalKind, SubjectKey, Track, Tracker, family};

/// Run fraction from which a VM exiting at the storm floor is a suspect without a rise.
const HEAVY_RUN_FRAC: f64 = 0.15;

/// A hypothesis before it is written out.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Draft {
    pub class: IncidentClass,
    pub culprit: SubjectKey,
    pub confidence: f64,
    pub evidence: Vec<Key>,
}

/// Signals that make one problem.
#[derive(Debug, Clone)]
pub(super) struct Problem {
    pub host: String,
    pub subjects: BTreeSet<SubjectKey>,
    /// Best first; never empty.
    pub hypotheses: Vec<Draft>,
    pub keys: BTreeSet<Key>,
    /// The strongest signal's strength.
    pub strength: f64,
    pub title: String,
}

impl Problem {
    pub(super) fn class(&self) -> IncidentClass {
        self.hypotheses
            .first()
            .map_or(IncidentClass::Unknown, |h| h.class)
    }
}

/// The family of signals a class is made of.
pub(super) fn class_family(class: IncidentClass) -> Family {
    match class {
        IncidentClass::NoisyNeighbour
        | IncidentClass::HostOvercommit
        | IncidentClass::RunawayGuest => Family::Cpu,
        IncidentClass::MemoryPressure | IncidentClass::Capacity => Family::Memory,
        IncidentClass::NumaImbalance => Family::Numa,
        IncidentClass::Unknown => Family::Any,
    }
}

/// Problems of the whole fleet from the signals active since `now - hold`.
pub(super) fn classify(
    fleet: &Fleet,
    tracker: &Tracker,
    config: &CorrelatorConfig,
    now: TimestampMs,
) -> Vec<Problem> {
    let hold = ms(config.signal_hold.min(config.quiet_period));
    let mut by_host: BTreeMap<&str, BTreeMap<&Key, &Track>> = BTreeMap::new();
    for (key, track) in tracker.held(now.saturating_sub(hold)) {
        by_host
            .entry(key.subject.host.as_str())
            .or_default()
            .insert(key, track);
    }
    // VM hosts whose hardware is a machine of another name (the built-in VMM's hosts) see
    // the machine's own signals too, and go first: what they explain is not the machine's
    // problem again.
    let borrowing: Vec<(&str, &str)> = fleet
        .vm_hosts()
        .into_iter()
        .filter_map(|vm_host| {
            let machine = fleet.host_of(vm_host)?.sample.host.as_str();
            (machine != vm_host && by_host.contains_key(vm_host)).then_some((vm_host, machine))
        })
        .collect();
    let mut order: Vec<(&str, Option<&str>)> =
        borrowing.iter().map(|&(h, m)| (h, Some(m))).collect();
    order.extend(
        by_host
            .keys()
            .filter(|h| !borrowing.iter().any(|(b, _)| b == *h))
            .map(|h| (*h, None)),
    );
    let mut used: BTreeSet<Key> = BTreeSet::new();
    let mut out = Vec::new();
    for (host, machine) in order {
        let mut tracks: BTreeMap<&Key, &Track> = by_host.get(host).cloned().unwrap_or_default();
        if let Some(machine_tracks) = machine.and_then(|m| by_host.get(m)) {
            tracks.extend(
                machine_tracks
                    .iter()
                    .filter(|(k, _)| k.subject.vm.is_none()),
            );
        }
        tracks.retain(|k, _| !used.contains(*k));
        let mut view = HostView {
            host,
            fleet,
            config,
            tracks,
            used: BTreeSet::new(),
            problems: Vec::new(),
        };
        view.cpu();
        view.memory();
        view.numa();
        view.leftovers();
        for p in &view.problems {
            used.extend(p.keys.iter().cloned());
        }
        out.extend(view.problems);
    }
    out
}

struct HostView<'a> {
    host: &'a str,
    fleet: &'a Fleet,
    config: &'a CorrelatorConfig,
    /// Signals of this host (and of the machine it runs on, when borrowed).
    tracks: BTreeMap<&'a Key, &'a Track>,
    used: BTreeSet<Key>,
    problems: Vec<Problem>,
}

/// A VM whose vCPUs wait.
struct Waiter {
    vm: String,
    keys: Vec<Key>,
    vcpus: BTreeSet<u32>,
    onset: TimestampMs,
    /// The worst delay of its vCPUs.
    peak: f64,
}

/// A VM whose exits or run fraction rose (or, without a rise, exits heavily).
struct Suspect {
    vm: String,
    keys: Vec<Key>,
    onset: TimestampMs,
    strength: f64,
    storm: bool,
    pegged: bool,
    /// Rose against its own baseline (else: only heavy).
    rose: bool,
    anomaly: bool,
}

fn vm_subject_name(key: &Key) -> Option<&str> {
    key.subject.vm.as_deref()
}

impl HostView<'_> {
    fn of_kind(&self, kinds: &[SignalKind]) -> Vec<(&Key, &Track)> {
        self.tracks
            .iter()
            .filter(|(_, t)| kinds.contains(&t.kind))
            .map(|(k, t)| (*k, *t))
            .collect()
    }

    fn vm(&self, vm: &str) -> Option<&VmState> {
        self.fleet
            .vms
            .get(vm)
            .filter(|v| v.sample.host == self.host)
    }

    fn host_cpus(&self) -> BTreeSet<u32> {
        self.fleet.cpus_of(self.host)
    }

    fn strength(&self, keys: &BTreeSet<Key>) -> f64 {
        keys.iter()
            .filter_map(|k| self.tracks.get(k))
            .map(|t| t.strength)
            .fold(0.0, f64::max)
    }

    fn push(&mut self, subjects: BTreeSet<SubjectKey>, mut hypotheses: Vec<Draft>, title: String) {
        hypotheses.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then_with(|| a.culprit.cmp(&b.culprit))
        });
        let mut seen = BTreeSet::new();
        hypotheses.retain(|h| seen.insert((h.class as u8, h.culprit.clone())));
        if hypotheses.is_empty() {
            return;
        }
        let keys: BTreeSet<Key> = hypotheses
            .iter()
            .flat_map(|h| h.evidence.iter().cloned())
            .collect();
        self.used.extend(keys.iter().cloned());
        let strength = self.strength(&keys);
        self.problems.push(Problem {
            host: self.host.to_owned(),
            subjects,
            hypotheses,
            keys,
            strength,
            title,
        });
    }

    /// How much `w`'s waiting vCPUs share CPUs with `suspect`, in `0..=1`, and the shared CPUs.
    fn overlap(&self, w: &Waiter, suspect: &VmState) -> (f64, BTreeSet<u32>) {
        let Some(victim) = self.vm(&w.vm) else {
            return (0.0, BTreeSet::new());
        };
        let host_cpus = self.host_cpus();
        let mut best = (0.0, BTreeSet::new());
        for &v in &w.vcpus {
            let a = victim.restricted_affinity(v, &host_cpus);
            let a_ran = victim.recent_host_cpus(v);
            for cv in suspect.vcpu_ids() {
                let b = suspect.restricted_affinity(cv, &host_cpus);
                let b_ran = suspect.recent_host_cpus(cv);
                let (o, shared): (f64, BTreeSet<u32>) = match (&a, &b) {
                    (Some(a), Some(b)) => {
                        let shared: BTreeSet<u32> = a.intersection(b).copied().collect();
                        #[allow(clippy::cast_precision_loss)]
                        let o = shared.len() as f64 / a.len().max(1) as f64;
                        (o, shared)
                    }
                    (Some(a), None) => {
                        let shared: BTreeSet<u32> = a.intersection(&b_ran).copied().collect();
                        if shared.is_empty() {
                            (0.5, a.clone())
                        } else {
                            (1.0, shared)
                        }
                    }
                    (None, Some(b)) => {
                        let shared: BTreeSet<u32> = a_ran.intersection(b).copied().collect();
                        if shared.is_empty() {
                            (0.5, b.clone())
                        } else {
                            (1.0, shared)
                        }
                    }
                    (None, None) => {
                        let shared: BTreeSet<u32> = a_ran.intersection(&b_ran).copied().collect();
                        if shared.is_empty() {
                            (0.5, shared)
                        } else {
                            (0.75, shared)
                        }
                    }
                };
                if o > best.0 {
                    best = (o, shared);
                }
            }
        }
        best
    }

    /// Runnable demand (run + wait) of every vCPU on this host confined within `set`.
    fn demand_within(&self, set: &BTreeSet<u32>) -> f64 {
        let host_cpus = self.host_cpus();
        self.fleet
            .vms_on(self.host)
            .map(|vm| {
                vm.vcpu_ids()
                    .into_iter()
                    .filter(|&v| {
                        vm.restricted_affinity(v, &host_cpus)
                            .is_some_and(|a| a.is_subset(set))
                    })
                    .map(|v| vm.recent_vcpu_mean(v, |p| p.run + p.wait))
                    .sum::<f64>()
            })
            .sum()
    }

    /// Whether a suspect's rise came with the victim's delay.
    fn cotime(&self, w: &Waiter, s: &Suspect) -> f64 {
        if !s.rose {
            return 0.5;
        }
        let window = ms(self.config.group_window);
        let d = s.onset.saturating_sub(w.onset);
        if d.abs() <= window {
            1.0
        } else if d < 0 {
            // Rose long before and still at it: the victim arrived or woke up later.
            0.7
        } else {
            0.3
        }
    }

    #[allow(clippy::too_many_lines)]
    fn cpu(&mut self) {
        let c = self.config;
        // Victims.
        let mut waiters: BTreeMap<String, Waiter> = BTreeMap::new();
        for (key, track) in self.of_kind(&[SignalKind::VcpuWait]) {
            let (Some(vm), Some(vcpu)) = (vm_subject_name(key), key.vcpu()) else {
                continue;
            };
            if self.vm(vm).is_none() {
                continue;
            }
            let w = waiters.entry(vm.to_owned()).or_insert_with(|| Waiter {
                vm: vm.to_owned(),
                keys: Vec::new(),
                vcpus: BTreeSet::new(),
                onset: track.onset,
                peak: 0.0,
            });
            w.keys.push(key.clone());
            w.vcpus.insert(vcpu);
            w.onset = w.onset.min(track.onset);
            w.peak = w.peak.max(track.value);
        }
        // Suspects: risers, then heavy exiters.
        let mut suspects: BTreeMap<String, Suspect> = BTreeMap::new();
        for (key, track) in self.of_kind(&[SignalKind::VcpuBusy, SignalKind::ExitStorm]) {
            let Some(vm) = vm_subject_name(key) else {
                continue;
            };
            let Some(state) = self.vm(vm) else {
                continue;
            };
            let pegged = key.vcpu().is_some_and(|v| {
                track.kind == SignalKind::VcpuBusy
                    && state.recent_vcpu_mean(v, |p| p.run) >= c.pegged_run_frac
            });
            let s = suspects.entry(vm.to_owned()).or_insert_with(|| Suspect {
                vm: vm.to_owned(),
                keys: Vec::new(),
                onset: track.onset,
                strength: 0.0,
                storm: false,
                pegged: false,
                rose: true,
                anomaly: false,
            });
            s.keys.push(key.clone());
            s.onset = s.onset.min(track.onset);
            s.strength = s.strength.max(track.strength);
            s.storm |= track.kind == SignalKind::ExitStorm;
            s.pegged |= pegged;
            s.anomaly |= !track.anomaly_ids.is_empty();
        }
        for state in self.fleet.vms_on(self.host) {
            let vm = &state.sample.vm;
            if suspects.contains_key(vm) {
                continue;
            }
            let busy = state
                .vcpu_ids()
                .into_iter()
                .any(|v| state.recent_vcpu_mean(v, |p| p.run) >= HEAVY_RUN_FRAC);
            if busy && state.recent_exits_mean() >= c.exit_storm_floor_per_s {
                suspects.insert(
                    vm.clone(),
                    Suspect {
                        vm: vm.clone(),
                        keys: Vec::new(),
                        onset: state.sample.ts,
                        strength: 0.0,
                        storm: false,
                        pegged: false,
                        rose: false,
                        anomaly: false,
                    },
                );
            }
        }

        // Score the suspects against the victims.
        let mut scored: Vec<(f64, &Suspect)> = suspects
            .values()
            .filter_map(|s| {
                let state = self.vm(&s.vm)?;
                let factor = if s.rose { 0.5 + 0.5 * s.strength } else { 0.3 };
                let score: f64 = waiters
                    .values()
                    .filter(|w| w.vm != s.vm)
                    .map(|w| self.overlap(w, state).0 * self.cotime(w, s) * factor)
                    .sum();
                (score > 0.0).then_some((score, s))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.vm.cmp(&b.1.vm)));
        let risers = scored.iter().filter(|(_, s)| s.rose).count();
        let no_single_culprit = risers >= 3
            && scored
                .get(1)
                .is_some_and(|(second, _)| *second >= 0.5 * scored[0].0);

        let demand_key = Key {
            subject: SubjectKey::host(self.host),
            series: super::series::VCPU_DEMAND_PER_CPU.to_owned(),
        };
        let demand = self
            .tracks
            .get(&demand_key)
            .filter(|t| t.kind == SignalKind::HostCpuDemand)
            .map(|t| t.value);

        let mut claimed: BTreeSet<String> = BTreeSet::new();
        let mut culprits: BTreeSet<String> = BTreeSet::new();
        let mut nn_count = 0usize;
        if !no_single_culprit {
            for (score, s) in &scored {
                if claimed.contains(&s.vm) {
                    continue;
                }
                let Some(state) = self.vm(&s.vm) else {
                    continue;
                };
                let victims: Vec<(&Waiter, f64, BTreeSet<u32>, f64)> = waiters
                    .values()
                    .filter(|w| {
                        w.vm != s.vm && !claimed.contains(&w.vm) && !culprits.contains(&w.vm)
                    })
                    .filter_map(|w| {
                        let (o, shared) = self.overlap(w, state);
                        (o > 0.0).then(|| (w, o, shared, self.cotime(w, s)))
                    })
                    .collect();
                if victims.is_empty() {
                    continue;
                }
                let best_fit = victims.iter().map(|(_, o, _, t)| o * t).fold(0.0, f64::max);
                let victim_anomaly = victims.iter().any(|(w, ..)| {
                    w.keys.iter().any(|k| {
                        self.tracks
                            .get(k)
                            .is_some_and(|t| !t.anomaly_ids.is_empty())
                    })
                });
                let confidence = if s.rose {
                    0.3 + 0.4 * best_fit
                        + 0.2 * s.strength
                        + if s.anomaly || victim_anomaly {
                            0.1
                        } else {
                            0.0
                        }
                } else {
                    0.25 + 0.3 * best_fit
                };
                let culprit = SubjectKey::vm(self.host, &s.vm);
                let mut evidence: Vec<Key> =
                    victims.iter().flat_map(|(w, ..)| w.keys.clone()).collect();
                evidence.extend(s.keys.iter().cloned());
                let mut hypotheses = vec![Draft {
                    class: IncidentClass::NoisyNeighbour,
                    culprit: culprit.clone(),
                    confidence: confidence.min(0.95),
                    evidence: evidence.clone(),
                }];
                // Other suspects of the same victims, as lesser hypotheses.
                for (other_score, other) in &scored {
                    if other.vm == s.vm || victims.iter().any(|(w, ..)| w.vm == other.vm) {
                        continue;
                    }
                    let share = (other_score / score.max(1e-9)).min(1.0);
                    let mut ev: Vec<Key> =
                        victims.iter().flat_map(|(w, ..)| w.keys.clone()).collect();
                    ev.extend(other.keys.iter().cloned());
                    hypotheses.push(Draft {
                        class: IncidentClass::NoisyNeighbour,
                        culprit: SubjectKey::vm(self.host, &other.vm),
                        confidence: (confidence * share * 0.8).min(0.9),
                        evidence: ev,
                    });
                }
                if s.storm {
                    hypotheses.push(Draft {
                        class: IncidentClass::RunawayGuest,
                        culprit,
                        confidence: 0.3,
                        evidence: s.keys.clone(),
                    });
                }
                if let Some(d) = demand {
                    let mut ev = vec![demand_key.clone()];
                    ev.extend(victims.iter().flat_map(|(w, ..)| w.keys.clone()));
                    hypotheses.push(Draft {
                        class: IncidentClass::HostOvercommit,
                        culprit: SubjectKey::host(self.host),
                        confidence: (0.2 + 0.2 * (d - c.overcommit_ratio)).clamp(0.05, 0.4),
                        evidence: ev,
                    });
                }
                let mut subjects: BTreeSet<SubjectKey> = victims
                    .iter()
                    .map(|(w, ..)| SubjectKey::vm(self.host, &w.vm))
                    .collect();
                subjects.insert(SubjectKey::vm(self.host, &s.vm));
                let shared: BTreeSet<u32> = victims
                    .iter()
                    .flat_map(|(_, _, sh, _)| sh.iter().copied())
                    .collect();
                let names: Vec<&str> = victims.iter().map(|(w, ..)| w.vm.as_str()).collect();
                let title = format!(
                    "noisy neighbour on {}: {} slows {}{}",
                    self.host,
                    s.vm,
                    list(&names),
                    if shared.is_empty() {
                        String::new()
                    } else {
                        format!(" on shared CPU {}", super::cpuset::format_cpu_list(&shared))
                    }
                );
                for (w, ..) in &victims {
                    claimed.insert(w.vm.clone());
                }
                culprits.insert(s.vm.clone());
                nn_count += 1;
                self.push(subjects, hypotheses, title);
            }
        }

        // Waiting VMs no culprit explains: only a delay past the guard counts here (a detector's
        // surprise at a small delay is worth reporting only with a neighbour to blame).
        let remaining: Vec<&Waiter> = waiters
            .values()
            .filter(|w| !claimed.contains(&w.vm) && !culprits.contains(&w.vm))
            .filter(|w| w.peak >= c.wait_guard)
            .collect();
        let mut in_overcommit: BTreeSet<String> = BTreeSet::new();
        // Where they wait: the CPUs they are confined to, when all are; else the whole host.
        let host_cpus = self.host_cpus();
        let confined = confinement(self.fleet, &remaining, &host_cpus);
        let set_demand = confined
            .as_ref()
            .map(|set| self.demand_within(set) / as_f64_len(set.len()));
        let set_over = set_demand.is_some_and(|d| d > c.overcommit_ratio);
        let enough = remaining.len() >= c.overcommit_min_waiting_vms.max(1);
        if (enough && (set_over || (confined.is_none() && demand.is_some())))
            || (demand.is_some() && (!remaining.is_empty() || nn_count == 0))
        {
            let d = set_demand.filter(|_| set_over).or(demand).unwrap_or(0.0);
            let mut evidence: Vec<Key> = remaining.iter().flat_map(|w| w.keys.clone()).collect();
            if demand.is_some() {
                evidence.insert(0, demand_key.clone());
            }
            let confidence = 0.4
                + 0.3 * (d - c.overcommit_ratio).clamp(0.0, 1.0)
                + if remaining.len() >= 3 { 0.15 } else { 0.0 }
                + if demand.is_some() || set_over {
                    0.1
                } else {
                    0.0
                };
            let mut hypotheses = vec![Draft {
                class: IncidentClass::HostOvercommit,
                culprit: SubjectKey::host(self.host),
                confidence: confidence.min(0.95),
                evidence,
            }];
            for s in suspects
                .values()
                .filter(|s| s.rose && !culprits.contains(&s.vm))
            {
                hypotheses.push(Draft {
                    class: if s.storm {
                        IncidentClass::RunawayGuest
                    } else {
                        IncidentClass::NoisyNeighbour
                    },
                    culprit: SubjectKey::vm(self.host, &s.vm),
                    confidence: 0.2 + 0.1 * s.strength,
                    evidence: s.keys.clone(),
                });
                in_overcommit.insert(s.vm.clone());
            }
            let mut subjects: BTreeSet<SubjectKey> = remaining
                .iter()
                .map(|w| SubjectKey::vm(self.host, &w.vm))
                .collect();
            subjects.insert(SubjectKey::host(self.host));
            in_overcommit.extend(remaining.iter().map(|w| w.vm.clone()));
            let title = match (&confined, set_over) {
                (Some(set), true) => format!(
                    "CPU {} of {} overcommitted: the VMs pinned there want {d:.1}× it, {} wait",
                    super::cpuset::format_cpu_list(set),
                    self.host,
                    remaining.len()
                ),
                _ => format!(
                    "{} overcommitted: its VMs want {d:.1}× its CPUs, {} VM(s) wait",
                    self.host,
                    remaining.len()
                ),
            };
            self.push(subjects, hypotheses, title);
        } else if !remaining.is_empty() {
            // Waiting that the VMs' own demand does not explain: load from outside the VMs.
            let evidence: Vec<Key> = remaining.iter().flat_map(|w| w.keys.clone()).collect();
            let hypotheses = vec![Draft {
                class: IncidentClass::Unknown,
                culprit: SubjectKey::host(self.host),
                confidence: 0.3,
                evidence,
            }];
            let subjects: BTreeSet<SubjectKey> = remaining
                .iter()
                .map(|w| SubjectKey::vm(self.host, &w.vm))
                .collect();
            let names: Vec<&str> = remaining.iter().map(|w| w.vm.as_str()).collect();
            let title = format!(
                "{} wait{} for CPU on {}; the VMs' own demand does not explain it",
                list(&names),
                if names.len() == 1 { "s" } else { "" },
                self.host
            );
            in_overcommit.extend(remaining.iter().map(|w| w.vm.clone()));
            self.push(subjects, hypotheses, title);
        }

        // Risers with no victims.
        for s in suspects.values() {
            if !s.rose || culprits.contains(&s.vm) || in_overcommit.contains(&s.vm) {
                continue;
            }
            let confidence = if s.storm {
                0.5 + 0.4 * s.strength
            } else if s.pegged {
                0.4 + 0.3 * s.strength
            } else {
                continue;
            };
            let what = if s.storm { "exit storm" } else { "pegged vCPU" };
            let hypotheses = vec![Draft {
                class: IncidentClass::RunawayGuest,
                culprit: SubjectKey::vm(self.host, &s.vm),
                confidence,
                evidence: s.keys.clone(),
            }];
            let subjects = BTreeSet::from([SubjectKey::vm(self.host, &s.vm)]);
            self.push(
                subjects,
                hypotheses,
                format!("runaway guest {} on {}: {what}", s.vm, self.host),
            );
        }
    }

    #[allow(clippy::too_many_lines)]
    fn memory(&mut self) {
        let stall: Vec<Key> = self
            .of_kind(&[SignalKind::HostMemoryStall, SignalKind::HostPaging])
            .into_iter()
            .filter(|(k, _)| k.subject.vm.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let full: Vec<Key> = self
            .of_kind(&[SignalKind::HostMemoryFull])
            .into_iter()
            .filter(|(k, _)| k.subject.vm.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        // The host whose memory it is: the machine's, where its signals were borrowed.
        let host_subject = stall
            .first()
            .or(full.first())
            .map_or_else(|| SubjectKey::host(self.host), |k| k.subject.clone());
        let by_vm = |kinds: &[SignalKind]| -> BTreeMap<String, (Key, f64, bool)> {
            self.of_kind(kinds)
                .into_iter()
                .filter_map(|(k, t)| {
                    let vm = vm_subject_name(k)?;
                    self.vm(vm)?;
                    Some((
                        vm.to_owned(),
                        (k.clone(), t.strength, !t.anomaly_ids.is_empty()),
                    ))
                })
                .collect()
        };
        let starving = by_vm(&[SignalKind::GuestMemoryLow]);
        let balloon = by_vm(&[SignalKind::BalloonAtTarget]);
        let growers = by_vm(&[SignalKind::RssGrowth]);
        let memory_anomaly = |vm: &str| {
            self.tracks.iter().any(|(k, t)| {
                t.kind == SignalKind::Other
                    && vm_subject_name(k) == Some(vm)
                    && family(&k.series) == Family::Memory
            })
        };
        let starving: BTreeMap<&String, &(Key, f64, bool)> = starving
            .iter()
            .filter(|(vm, (_, _, anomaly))| {
                *anomaly
                    || balloon.contains_key(*vm)
                    || growers.contains_key(*vm)
                    || memory_anomaly(vm)
                    || !stall.is_empty()
            })
            .collect();

        if !stall.is_empty() || !starving.is_empty() {
            let mut subjects = BTreeSet::new();
            if !stall.is_empty() {
                subjects.insert(host_subject.clone());
            }
            let mut hypotheses = Vec::new();
            for (vm, (key, strength, _)) in &starving {
                subjects.insert(SubjectKey::vm(self.host, vm));
                let mut evidence = vec![key.clone()];
                let confidence = if let Some((bkey, ..)) = balloon.get(*vm) {
                    evidence.push(bkey.clone());
                    0.75 + 0.15 * strength
                } else if let Some((gkey, ..)) = growers.get(*vm) {
                    evidence.push(gkey.clone());
                    evidence.extend(stall.iter().cloned());
                    0.55 + 0.2 * strength
                } else {
                    0.45 + 0.1 * strength
                };
                hypotheses.push(Draft {
                    class: IncidentClass::MemoryPressure,
                    culprit: SubjectKey::vm(self.host, vm),
                    confidence,
                    evidence,
                });
            }
            if !stall.is_empty() {
                for (vm, (gkey, strength, _)) in &growers {
                    if starving.contains_key(vm) {
                        continue;
                    }
                    subjects.insert(SubjectKey::vm(self.host, vm));
                    let mut evidence = vec![gkey.clone()];
                    evidence.extend(stall.iter().cloned());
                    hypotheses.push(Draft {
                        class: IncidentClass::MemoryPressure,
                        culprit: SubjectKey::vm(self.host, vm),
                        confidence: 0.5 + 0.4 * strength,
                        evidence,
                    });
                }
                let strength = self.strength(&stall.iter().cloned().collect());
                let mut evidence = stall.clone();
                evidence.extend(full.iter().cloned());
                hypotheses.push(Draft {
                    class: IncidentClass::MemoryPressure,
                    culprit: host_subject.clone(),
                    confidence: if growers.is_empty() {
                        0.5 + 0.3 * strength
                    } else {
                        0.35
                    },
                    evidence,
                });
            }
            let names: Vec<&str> = starving.keys().map(|v| v.as_str()).collect();
            let title = if names.is_empty() {
                format!("memory pressure on {}", self.host)
            } else {
                format!(
                    "memory pressure on {}: {} short of memory",
                    self.host,
                    list(&names)
                )
            };
            self.push(subjects, hypotheses, title);
        } else if !full.is_empty() {
            let hypotheses = vec![Draft {
                class: IncidentClass::Capacity,
                culprit: host_subject.clone(),
                confidence: 0.6,
                evidence: full,
            }];
            self.push(
                BTreeSet::from([host_subject]),
                hypotheses,
                format!("{} is running out of memory", self.host),
            );
        }
    }

    fn numa(&mut self) {
        let remote: Vec<(Key, f64)> = self
            .of_kind(&[SignalKind::RemoteMemory])
            .into_iter()
            .filter(|(k, _)| vm_subject_name(k).is_some_and(|vm| self.vm(vm).is_some()))
            .map(|(k, t)| (k.clone(), t.value))
            .collect();
        if remote.is_empty() {
            return;
        }
        let mut subjects = BTreeSet::new();
        let mut hypotheses = Vec::new();
        for (key, frac) in &remote {
            subjects.insert(key.subject.clone());
            hypotheses.push(Draft {
                class: IncidentClass::NumaImbalance,
                culprit: key.subject.clone(),
                confidence: 0.5 + 0.4 * frac.clamp(0.0, 1.0),
                evidence: vec![key.clone()],
            });
        }
        let names: Vec<&str> = remote.iter().map(|(k, _)| k.subject.name()).collect();
        let title = format!(
            "NUMA imbalance on {}: memory of {} away from its vCPUs",
            self.host,
            list(&names)
        );
        self.push(subjects, hypotheses, title);
    }

    /// Signals no rule used: evidence for a problem of their subject and family, else (when
    /// enough of them) a problem of unknown class.
    fn leftovers(&mut self) {
        let left: Vec<(Key, SignalKind)> = self
            .tracks
            .iter()
            .filter(|(k, _)| !self.used.contains(*k))
            .map(|(k, t)| ((*k).clone(), t.kind))
            .collect();
        let mut unexplained: Vec<Key> = Vec::new();
        for (key, kind) in left {
            let fam = family(&key.series);
            // A problem of the signal's own family first, then one of any class.
            let about = |p: &Problem| {
                p.subjects.contains(&key.subject)
                    || (key.subject.vm.is_none() && fam != Family::Any)
            };
            let target = self
                .problems
                .iter()
                .position(|p| about(p) && class_family(p.class()) == fam)
                .or_else(|| {
                    self.problems.iter().position(|p| {
                        about(p) && (fam == Family::Any || class_family(p.class()) == Family::Any)
                    })
                });
            let attached = target.is_some();
            if let Some(p) = target.and_then(|i| self.problems.get_mut(i)) {
                p.keys.insert(key.clone());
                if let Some(h) = p.hypotheses.first_mut() {
                    h.evidence.push(key.clone());
                }
            }
            // Borrowed machine signals only ever join this host's problems; unexplained, they
            // are the machine's own business.
            if !attached && kind == SignalKind::Other && key.subject.host == self.host {
                unexplained.push(key);
            }
        }
        let series: BTreeSet<(&SubjectKey, &str)> = unexplained
            .iter()
            .map(|k| (&k.subject, k.series.as_str()))
            .collect();
        if series.len() < self.config.unknown_min_series.max(1) {
            return;
        }
        let mut counts: BTreeMap<&SubjectKey, usize> = BTreeMap::new();
        for k in &unexplained {
            *counts.entry(&k.subject).or_default() += 1;
        }
        let Some(culprit) = counts
            .iter()
            .max_by_key(|(s, n)| (**n, std::cmp::Reverse(*s)))
            .map(|(s, _)| (*s).clone())
        else {
            return;
        };
        let subjects: BTreeSet<SubjectKey> = counts.keys().map(|s| (*s).clone()).collect();
        #[allow(clippy::cast_precision_loss)]
        let confidence = (0.2 + 0.05 * series.len() as f64).min(0.5);
        let hypotheses = vec![Draft {
            class: IncidentClass::Unknown,
            culprit,
            confidence,
            evidence: unexplained.clone(),
        }];
        let title = format!(
            "{} anomalous series on {} with no known cause",
            series.len(),
            self.host
        );
        self.push(subjects, hypotheses, title);
    }
}

/// The CPUs the waiting vCPUs are confined to, if every one of them is pinned narrower than
/// the host.
fn confinement(
    fleet: &Fleet,
    waiters: &[&Waiter],
    host_cpus: &BTreeSet<u32>,
) -> Option<BTreeSet<u32>> {
    let mut set = BTreeSet::new();
    for w in waiters {
        let vm = fleet.vms.get(&w.vm)?;
        for &v in &w.vcpus {
            set.extend(vm.restricted_affinity(v, host_cpus)?);
        }
    }
    (!set.is_empty() && !host_cpus.is_subset(&set)).then_some(set)
}

#[allow(clippy::cast_precision_loss)]
fn as_f64_len(n: usize) -> f64 {
    n.max(1) as f64
}

/// `a`, `a and b`, `a, b and 3 more`.
fn list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [a] => (*a).to_owned(),
        [a, b] => format!("{a} and {b}"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} more", rest.len()),
    }
}
