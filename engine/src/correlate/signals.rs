//! Signals: which series are out of line right now, from the guards and the anomalies.
//!
//! Every tick each watched series is judged twice. *Active* means it opens or feeds an
//! incident: its guard has held for `guard_samples` samples in a row, or a detector flagged it
//! recently with a value past the rule's floor. *Abnormal* is looser: the series has not yet
//! recovered (its recent mean is still near the guard, or far from its expected value). An
//! incident resolves once all its series have stopped being abnormal for the quiet period,
//! so a signal that dips under its guard for one sample does not close and reopen it.
//!
//! The [`Tracker`] remembers each signal's episode: when it started (the evidence's "when"),
//! when it was last active and abnormal, and its worst value against its expected value.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetmind_schema::{Anomaly, Subject, TimestampMs};

use super::config::{CorrelatorConfig, ms};
use super::fleet::{Fleet, HostPoint, HostState, VmState, as_f64, mean};
use super::series::{self, VcpuMetric};

/// A subject as a map key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SubjectKey {
    pub host: String,
    pub vm: Option<String>,
}

impl SubjectKey {
    pub(super) fn host(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            vm: None,
        }
    }

    pub(super) fn vm(host: &str, vm: &str) -> Self {
        Self {
            host: host.to_owned(),
            vm: Some(vm.to_owned()),
        }
    }

    pub(super) fn to_subject(&self) -> Subject {
        Subject {
            host: self.host.clone(),
            vm: self.vm.clone(),
        }
    }

    pub(super) fn from_subject(s: &Subject) -> Self {
        Self {
            host: s.host.clone(),
            vm: s.vm.clone(),
        }
    }

    /// The VM id, or the host name for a host subject.
    pub(super) fn name(&self) -> &str {
        self.vm.as_deref().unwrap_or(&self.host)
    }
}

/// One series of one subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Key {
    pub subject: SubjectKey,
    pub series: String,
}

impl Key {
    fn new(subject: SubjectKey, series: impl Into<String>) -> Self {
        Self {
            subject,
            series: series.into(),
        }
    }

    /// The vCPU of a per-vCPU series.
    pub(super) fn vcpu(&self) -> Option<u32> {
        series::parse_vcpu_series(&self.series).map(|(v, _)| v)
    }
}

/// What a signal says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SignalKind {
    /// A vCPU waits for a host CPU (run-queue delay).
    VcpuWait,
    /// A vCPU runs far more than it used to.
    VcpuBusy,
    /// A VM (or one vCPU) exits far more than it used to.
    ExitStorm,
    /// A guest has almost no free memory.
    GuestMemoryLow,
    /// A balloon holds memory (at its target, or short of it because the guest took pages
    /// back) while its guest starves.
    BalloonAtTarget,
    /// A VM's resident memory grew.
    RssGrowth,
    /// Host tasks stall on memory (PSI).
    HostMemoryStall,
    /// Host major faults or swap-out.
    HostPaging,
    /// Host memory nearly all used.
    HostMemoryFull,
    /// A VM's memory sits mostly on another NUMA node than its vCPUs.
    RemoteMemory,
    /// The VMs on a host want more CPU than it has.
    HostCpuDemand,
    /// An anomaly on a series no rule above reads.
    Other,
}

/// One judgement of one series at one tick.
#[derive(Debug, Clone)]
pub(super) struct Observation {
    pub key: Key,
    pub kind: SignalKind,
    /// Time of the sample (or anomaly) judged.
    pub ts: TimestampMs,
    pub value: f64,
    pub expected: f64,
    /// How far past its guard, `0..=1`.
    pub strength: f64,
    pub active: bool,
    pub abnormal: bool,
    pub anomaly_id: Option<String>,
}

/// An anomaly as the correlator keeps it.
#[derive(Debug, Clone)]
pub(super) struct RecentAnomaly {
    pub id: String,
    pub ts: TimestampMs,
    pub value: f64,
    pub expected: f64,
    pub score: f64,
}

/// Anomalies of the last group window, per series.
#[derive(Debug, Default)]
pub(super) struct Anomalies {
    by_key: BTreeMap<Key, VecDeque<RecentAnomaly>>,
}

/// Anomalies kept per series.
const ANOMALIES_PER_KEY: usize = 16;
/// Series with anomalies kept at most.
const MAX_ANOMALY_KEYS: usize = 100_000;

impl Anomalies {
    /// Keeps an anomaly; a repeated id is ignored.
    pub(super) fn observe(&mut self, a: &Anomaly) {
        let key = Key::new(SubjectKey::from_subject(&a.subject), a.series.clone());
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_ANOMALY_KEYS {
            return;
        }
        let list = self.by_key.entry(key).or_default();
        if list.iter().any(|r| r.id == a.id) {
            return;
        }
        let clean = |v: f64| if v.is_finite() { v } else { 0.0 };
        list.push_back(RecentAnomaly {
            id: a.id.clone(),
            ts: a.ts,
            value: clean(a.value),
            expected: clean(a.expected),
            score: clean(a.score),
        });
        list.make_contiguous().sort_by_key(|r| r.ts);
        while list.len() > ANOMALIES_PER_KEY {
            list.pop_front();
        }
    }

    /// Forgets anomalies older than `cutoff`.
    pub(super) fn forget_before(&mut self, cutoff: TimestampMs) {
        self.by_key.retain(|_, list| {
            list.retain(|r| r.ts >= cutoff);
            !list.is_empty()
        });
    }

    /// The latest anomaly on `key` since `since` scored at least `min_score`.
    pub(super) fn latest(
        &self,
        key: &Key,
        since: TimestampMs,
        min_score: f64,
    ) -> Option<&RecentAnomaly> {
        self.by_key
            .get(key)?
            .iter()
            .rev()
            .find(|r| r.ts >= since && r.score >= min_score)
    }

    /// Every series with an anomaly.
    pub(super) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.by_key.keys()
    }
}

/// A signal's current episode.
#[derive(Debug, Clone)]
pub(super) struct Track {
    pub kind: SignalKind,
    /// When the episode started.
    pub onset: TimestampMs,
    pub last_active: TimestampMs,
    pub last_abnormal: TimestampMs,
    /// The worst value of the episode and what was expected then.
    pub value: f64,
    pub expected: f64,
    pub strength: f64,
    pub anomaly_ids: BTreeSet<String>,
}

/// Anomaly ids kept per track.
const IDS_PER_TRACK: usize = 64;

/// Every signal's episode, by series.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    pub tracks: BTreeMap<Key, Track>,
}

impl Tracker {
    /// Folds one tick's observations in. A new episode starts when a signal turns active
    /// after it was last active more than `hold` ago.
    pub(super) fn update(&mut self, observations: Vec<Observation>, hold: i64) {
        for o in observations {
            match self.tracks.get_mut(&o.key) {
                Some(t) => {
                    if o.active {
                        if o.ts.saturating_sub(t.last_active) > hold {
                            *t = Track::start(&o);
                        } else {
                            t.last_active = t.last_active.max(o.ts);
                            if o.strength > t.strength {
                                t.strength = o.strength;
                                t.value = o.value;
                                t.expected = o.expected;
                            }
                        }
                    }
                    if o.abnormal || o.active {
                        t.last_abnormal = t.last_abnormal.max(o.ts);
                    }
                    if let Some(id) = o.anomaly_id
                        && t.anomaly_ids.len() < IDS_PER_TRACK
                    {
                        t.anomaly_ids.insert(id);
                    }
                }
                None if o.active => {
                    self.tracks.insert(o.key.clone(), Track::start(&o));
                }
                None => {}
            }
        }
    }

    /// Forgets episodes abnormal last before `cutoff`.
    pub(super) fn forget_before(&mut self, cutoff: TimestampMs) {
        self.tracks.retain(|_, t| t.last_abnormal >= cutoff);
    }

    /// Tracks active at or after `since`.
    pub(super) fn held(&self, since: TimestampMs) -> impl Iterator<Item = (&Key, &Track)> {
        self.tracks
            .iter()
            .filter(move |(_, t)| t.last_active >= since)
    }
}

impl Track {
    fn start(o: &Observation) -> Self {
        Self {
            kind: o.kind,
            onset: o.ts,
            last_active: o.ts,
            last_abnormal: o.ts,
            value: o.value,
            expected: o.expected,
            strength: o.strength,
            anomaly_ids: o.anomaly_id.iter().cloned().collect(),
        }
    }
}

/// Judges every watched series of the fleet at `now`.
pub(super) fn evaluate(
    fleet: &Fleet,
    anomalies: &Anomalies,
    config: &CorrelatorConfig,
    now: TimestampMs,
) -> Vec<Observation> {
    let judge = Judge {
        anomalies,
        config,
        since: now.saturating_sub(ms(config.anomaly_hold)),
    };
    let mut out = Vec::new();
    for vm in fleet.vms.values() {
        judge.vm(vm, &mut out);
    }
    for host in fleet.hosts.values() {
        judge.host(host, &mut out);
    }
    for host in fleet.vm_hosts() {
        judge.demand(host, fleet, &mut out);
    }
    judge.others(now, &mut out);
    out
}

/// The smallest balloon change worth making for a guest of `mem_bytes`: 1/32 of it, between
/// 1 and 16 MiB.
pub(super) fn min_balloon_step(mem_bytes: u64) -> u64 {
    (mem_bytes / 32).clamp(1 << 20, 16 << 20)
}

fn clamp01(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A host guard: series, kind, threshold, and how to read it from a point.
type HostRule = (&'static str, SignalKind, f64, fn(&HostPoint) -> f64);

struct Judge<'a> {
    anomalies: &'a Anomalies,
    config: &'a CorrelatorConfig,
    /// Anomalies at or after this are live.
    since: TimestampMs,
}

/// A series' recent values and whether the guard held on all of the last `guard_samples`.
fn held_all(values: &[f64], n: usize, guard: impl Fn(f64) -> bool) -> bool {
    values.len() >= n.max(1) && values.iter().rev().take(n.max(1)).all(|&v| guard(v))
}

impl Judge<'_> {
    fn anomaly(&self, key: &Key) -> Option<&RecentAnomaly> {
        self.anomalies
            .latest(key, self.since, self.config.min_anomaly_score)
    }

    #[allow(clippy::too_many_lines)]
    fn vm(&self, vm: &VmState, out: &mut Vec<Observation>) {
        let c = self.config;
        let n = c.guard_samples;
        let min = c.min_baseline_samples;
        let s = &vm.sample;
        let subject = SubjectKey::vm(&s.host, &s.vm);
        let ts = s.ts;

        for vcpu in vm.vcpu_ids() {
            // Run-queue delay.
            let waits: Vec<f64> = vm.recent_vcpu(vcpu).map(|p| p.wait).collect();
            let key = Key::new(
                subject.clone(),
                series::vcpu_series(vcpu, VcpuMetric::WaitFrac),
            );
            let anomaly = self
                .anomaly(&key)
                .filter(|a| a.value >= c.wait_anomaly_floor && a.value > a.expected);
            let recent = mean(waits.iter().copied());
            let baseline = vm.baseline.wait.get(&vcpu).and_then(|m| m.get(min));
            let expected = anomaly.map_or(baseline.unwrap_or(0.0), |a| a.expected);
            let guard = held_all(&waits, n, |w| w >= c.wait_guard);
            let value = anomaly.map_or(recent, |a| a.value.max(recent));
            let active = guard || anomaly.is_some();
            let abnormal = active || recent >= c.wait_guard * 0.75 || recent > expected + 0.1;
            if active || abnormal {
                out.push(Observation {
                    key,
                    kind: SignalKind::VcpuWait,
                    ts,
                    value,
                    expected,
                    strength: clamp01(value / 0.5),
                    active,
                    abnormal,
                    anomaly_id: anomaly.map(|a| a.id.clone()),
                });
            }

            // Run fraction above its own median.
            let runs: Vec<f64> = vm.recent_vcpu(vcpu).map(|p| p.run).collect();
            let key = Key::new(
                subject.clone(),
                series::vcpu_series(vcpu, VcpuMetric::RunFrac),
            );
            let baseline = vm.baseline.run.get(&vcpu).and_then(|m| m.get(min));
            let anomaly = self
                .anomaly(&key)
                .filter(|a| a.value > a.expected + c.run_rise / 2.0);
            let recent = mean(runs.iter().copied());
            let expected = anomaly.map_or(baseline.unwrap_or(recent), |a| a.expected);
            let guard = baseline.is_some_and(|m| held_all(&runs, n, |r| r >= m + c.run_rise));
            let active = guard || anomaly.is_some();
            let abnormal = active || recent > expected + c.run_rise / 2.0;
            if active || abnormal {
                out.push(Observation {
                    key,
                    kind: SignalKind::VcpuBusy,
                    ts,
                    value: recent,
                    expected,
                    strength: clamp01((recent - expected) / 0.5),
                    active,
                    abnormal,
                    anomaly_id: anomaly.map(|a| a.id.clone()),
                });
            }

            // One vCPU's exits: anomalies only (the whole VM has the guard).
            let key = Key::new(
                subject.clone(),
                series::vcpu_series(vcpu, VcpuMetric::ExitsPerS),
            );
            let per_vcpu_floor =
                c.exit_storm_floor_per_s / as_f64(vm.sample.vcpus.len().max(1) as u64);
            if let Some(a) = self
                .anomaly(&key)
                .filter(|a| a.value >= per_vcpu_floor && a.value >= 3.0 * a.expected.max(1.0))
            {
                out.push(Observation {
                    key,
                    kind: SignalKind::ExitStorm,
                    ts,
                    value: a.value,
                    expected: a.expected,
                    strength: clamp01((a.value / a.expected.max(1.0)).log10() / 2.0),
                    active: true,
                    abnormal: true,
                    anomaly_id: Some(a.id.clone()),
                });
            }
        }

        // The whole VM's exits.
        let exits: Vec<f64> = vm.recent.iter().map(|p| p.exits).collect();
        let key = Key::new(subject.clone(), series::EXITS_PER_S);
        let baseline = vm.baseline.exits.get(min);
        let anomaly = self.anomaly(&key).filter(|a| {
            a.value >= c.exit_storm_floor_per_s && a.value >= 3.0 * a.expected.max(1.0)
        });
        let recent = mean(exits.iter().copied());
        let expected = anomaly.map_or(baseline.unwrap_or(recent), |a| a.expected);
        let guard = baseline.is_some_and(|m| {
            held_all(&exits, n, |e| {
                e >= c.exit_storm_floor_per_s && e >= c.exit_storm_ratio * m.max(1.0)
            })
        });
        let active = guard || anomaly.is_some();
        let abnormal = active
            || (recent >= c.exit_storm_floor_per_s * 0.5 && recent >= 3.0 * expected.max(1.0));
        if active || abnormal {
            let value = anomaly.map_or(recent, |a| a.value.max(recent));
            out.push(Observation {
                key,
                kind: SignalKind::ExitStorm,
                ts,
                value,
                expected,
                strength: clamp01((value / expected.max(1.0)).log10() / 2.0),
                active,
                abnormal,
                anomaly_id: anomaly.map(|a| a.id.clone()),
            });
        }

        // Guest memory.
        let mem = as_f64(s.mem_bytes);
        let frees: Vec<f64> = vm
            .recent
            .iter()
            .filter_map(|p| p.guest_free.map(as_f64))
            .collect();
        let mut guest_low = false;
        if s.mem_bytes > 0 && !frees.is_empty() {
            let low = c.guest_free_low_frac * mem;
            let key = Key::new(subject.clone(), series::GUEST_FREE_BYTES);
            let anomaly = self
                .anomaly(&key)
                .filter(|a| a.value < a.expected && a.value < 2.0 * low);
            let recent = mean(frees.iter().copied());
            let expected = anomaly.map_or_else(
                || {
                    vm.baseline
                        .guest_free
                        .get(min)
                        .filter(|&m| m > low)
                        .unwrap_or(low)
                },
                |a| a.expected,
            );
            let guard = held_all(&frees, n, |f| f < low);
            guest_low = guard;
            let active = guard || anomaly.is_some();
            let abnormal = active || recent < 1.5 * low;
            if active || abnormal {
                out.push(Observation {
                    key,
                    kind: SignalKind::GuestMemoryLow,
                    ts,
                    value: recent,
                    expected,
                    strength: clamp01(1.0 - recent / low.max(1.0)),
                    active,
                    abnormal,
                    anomaly_id: anomaly.map(|a| a.id.clone()),
                });
            }
        }

        // A balloon holding memory while its guest starves: at its target, or short of it
        // because the guest took pages back (the target asks for more than it can spare).
        if let (Some(target), Some(actual)) = (s.balloon_target_bytes, s.balloon_actual_bytes)
            && target > 0
            && actual >= min_balloon_step(s.mem_bytes)
            && guest_low
        {
            out.push(Observation {
                key: Key::new(subject.clone(), series::BALLOON_ACTUAL_BYTES),
                kind: SignalKind::BalloonAtTarget,
                ts,
                value: as_f64(actual),
                expected: as_f64(target),
                strength: clamp01(as_f64(actual.min(target)) / mem.max(1.0) * 4.0),
                active: true,
                abnormal: true,
                anomaly_id: None,
            });
        }

        // Resident memory growth.
        if s.mem_bytes > 0 {
            let key = Key::new(subject.clone(), series::RSS_BYTES);
            let rss = as_f64(s.rss_bytes);
            let floor = vm.rss.min().unwrap_or(rss);
            let growth = (rss - floor).max(0.0);
            let anomaly = self
                .anomaly(&key)
                .filter(|a| a.value > a.expected * 1.2 && a.value - a.expected >= 0.1 * mem);
            let active = growth >= c.rss_growth_frac * mem || anomaly.is_some();
            if active {
                out.push(Observation {
                    key,
                    kind: SignalKind::RssGrowth,
                    ts,
                    value: rss,
                    expected: anomaly.map_or(floor, |a| a.expected),
                    strength: clamp01(growth / mem / 0.5),
                    active,
                    abnormal: true,
                    anomaly_id: anomaly.map(|a| a.id.clone()),
                });
            }
        }

        // Memory away from the vCPUs' node.
        let remote: Vec<f64> = vm.recent.iter().filter_map(|p| p.remote_frac).collect();
        if !remote.is_empty() && vm.resident_total() >= c.numa_min_resident_bytes {
            let recent = mean(remote.iter().copied());
            let active = held_all(&remote, n, |r| r >= c.numa_remote_guard);
            let abnormal = active || recent >= c.numa_remote_guard * 0.8;
            if active || abnormal {
                out.push(Observation {
                    key: Key::new(subject, series::NUMA_REMOTE_FRAC),
                    kind: SignalKind::RemoteMemory,
                    ts,
                    value: recent,
                    expected: 0.0,
                    strength: clamp01(recent),
                    active,
                    abnormal,
                    anomaly_id: None,
                });
            }
        }
    }

    fn host(&self, host: &HostState, out: &mut Vec<Observation>) {
        let c = self.config;
        let n = c.guard_samples;
        let s = &host.sample;
        let subject = SubjectKey::host(&s.host);
        let ts = s.ts;
        let rules: [HostRule; 5] = [
            (
                series::PSI_MEMORY_SOME_FRAC,
                SignalKind::HostMemoryStall,
                c.psi_memory_some_guard,
                |p| p.psi_memory_some,
            ),
            (
                series::PSI_MEMORY_FULL_FRAC,
                SignalKind::HostMemoryStall,
                c.psi_memory_full_guard,
                |p| p.psi_memory_full,
            ),
            (
                series::PGMAJFAULT_PER_S,
                SignalKind::HostPaging,
                c.majfault_guard_per_s,
                |p| p.majfault,
            ),
            (
                series::PSWPOUT_PER_S,
                SignalKind::HostPaging,
                c.swapout_guard_per_s,
                |p| p.swapout,
            ),
            (
                series::MEM_USED_FRAC,
                SignalKind::HostMemoryFull,
                c.mem_used_guard,
                |p| p.used_frac,
            ),
        ];
        for (name, kind, guard, read) in rules {
            let values: Vec<f64> = host.recent.iter().map(read).collect();
            let key = Key::new(subject.clone(), name);
            let (soft, recover) = match kind {
                // Used memory: an anomaly counts from 90 %, recovery under guard - 5 points.
                SignalKind::HostMemoryFull => (guard - 0.05, guard - 0.05),
                SignalKind::HostPaging => (guard * 0.1, guard * 0.5),
                _ => (guard * 0.5, guard * 0.5),
            };
            let anomaly = self.anomaly(&key).filter(|a| {
                a.value >= soft
                    && if kind == SignalKind::HostPaging {
                        a.value >= 3.0 * a.expected.max(1.0)
                    } else {
                        a.value > a.expected
                    }
            });
            let recent = mean(values.iter().copied());
            let active = held_all(&values, n, |v| v >= guard) || anomaly.is_some();
            let abnormal = active || recent >= recover;
            if active || abnormal {
                let value = anomaly.map_or(recent, |a| a.value.max(recent));
                let strength = match kind {
                    SignalKind::HostPaging => clamp01((value / guard.max(1e-9)).log10() + 0.5),
                    SignalKind::HostMemoryFull => clamp01((value - guard + 0.05) / 0.1),
                    _ => clamp01(value / (2.0 * guard)),
                };
                out.push(Observation {
                    key,
                    kind,
                    ts,
                    value,
                    expected: anomaly.map_or(0.0, |a| a.expected),
                    strength,
                    active,
                    abnormal,
                    anomaly_id: anomaly.map(|a| a.id.clone()),
                });
            }
        }
    }

    /// Runnable vCPU demand of the VMs of VM host `name` against its CPUs.
    fn demand(&self, name: &str, fleet: &Fleet, out: &mut Vec<Observation>) {
        let c = self.config;
        let cpus = match fleet.host_of(name) {
            Some(h) => h.sample.cpus,
            None => u32::try_from(fleet.cpus_of(name).len()).unwrap_or(u32::MAX),
        };
        let vms: Vec<&VmState> = fleet.vms_on(name).collect();
        let Some(ts) = vms.iter().map(|v| v.sample.ts).max() else {
            return;
        };
        let demand: f64 = vms.iter().map(|v| v.recent_demand()).sum();
        let per_cpu = demand / f64::from(cpus.max(1));
        let active = per_cpu > c.overcommit_ratio;
        let abnormal = per_cpu > c.overcommit_ratio * 0.9;
        if active || abnormal {
            out.push(Observation {
                key: Key::new(SubjectKey::host(name), series::VCPU_DEMAND_PER_CPU),
                kind: SignalKind::HostCpuDemand,
                ts,
                value: per_cpu,
                expected: c.overcommit_ratio,
                strength: clamp01(per_cpu - c.overcommit_ratio),
                active,
                abnormal,
                anomaly_id: None,
            });
        }
    }

    /// Anomalies on series no rule reads: live ones are signals of their own.
    fn others(&self, now: TimestampMs, out: &mut Vec<Observation>) {
        for key in self.anomalies.keys() {
            if is_ruled(&key.series) {
                continue;
            }
            if let Some(a) = self.anomaly(key) {
                out.push(Observation {
                    key: key.clone(),
                    kind: SignalKind::Other,
                    ts: a.ts.min(now),
                    value: a.value,
                    expected: a.expected,
                    strength: clamp01(a.score),
                    active: true,
                    abnormal: true,
                    anomaly_id: Some(a.id.clone()),
                });
            }
        }
    }
}

/// Whether a rule above reads the series (its anomalies count only through the rule).
fn is_ruled(series: &str) -> bool {
    series::parse_vcpu_series(series).is_some()
        || [
            series::EXITS_PER_S,
            series::GUEST_FREE_BYTES,
            series::RSS_BYTES,
            series::PSI_MEMORY_SOME_FRAC,
            series::PSI_MEMORY_FULL_FRAC,
            series::PGMAJFAULT_PER_S,
            series::PSWPOUT_PER_S,
            series::MEM_USED_FRAC,
        ]
        .contains(&series)
}

/// Which kind of problem an otherwise unexplained series speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Cpu,
    Memory,
    Numa,
    Any,
}

/// The family of a series, for attaching loose anomalies to incidents.
pub(super) fn family(series: &str) -> Family {
    if series::parse_vcpu_series(series).is_some()
        || [
            series::CPU_BUSY_FRAC,
            series::CPU_STEAL_FRAC,
            series::LOAD1,
            series::PROCS_RUNNING,
            series::PSI_CPU_SOME_FRAC,
            series::EXITS_PER_S,
            series::VCPU_DEMAND_PER_CPU,
        ]
        .contains(&series)
    {
        Family::Cpu
    } else if [
        series::MEM_USED_FRAC,
        series::PSI_MEMORY_SOME_FRAC,
        series::PSI_MEMORY_FULL_FRAC,
        series::PGMAJFAULT_PER_S,
        series::PSWPOUT_PER_S,
        series::GUEST_FREE_BYTES,
        series::RSS_BYTES,
        series::BALLOON_ACTUAL_BYTES,
        series::DIRTY_BYTES_PER_S,
    ]
    .contains(&series)
    {
        Family::Memory
    } else if series == series::NUMA_MISS_PER_S || series == series::NUMA_REMOTE_FRAC {
        Family::Numa
    } else {
        Family::Any
    }
}
