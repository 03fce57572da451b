//! The record types themselves, with their JSON form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SCHEMA_VERSION;

/// Milliseconds since the Unix epoch, UTC.
pub type TimestampMs = i64;

/// Returns the current wall-clock time as [`TimestampMs`]: the one clock every record uses.
#[must_use]
pub fn now_ms() -> TimestampMs {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// One record on the event stream: the schema version, the kind (as the `kind` tag) and the
/// record's own fields, flattened into one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

impl Envelope {
    /// Wraps a record with the current schema version.
    #[must_use]
    pub fn new(record: Record) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            record,
        }
    }
}

/// Every kind of record fleetmind writes to its event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A host sample.
    HostSample(HostSample),
    /// A VM sample.
    VmSample(VmSample),
    /// An anomaly on one series.
    Anomaly(Anomaly),
    /// An incident grouping anomalies.
    Incident(Incident),
    /// A recommended action.
    Recommendation(Recommendation),
    /// An action and its state.
    Action(Action),
    /// An audit record.
    Audit(AuditRecord),
    /// A collector source turned unhealthy, is still failing, or recovered.
    CollectorHealth(CollectorHealth),
}

impl Record {
    /// The kind tag, also the name of the engine table holding this kind.
    #[must_use]
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::HostSample(_) => RecordKind::HostSample,
            Record::VmSample(_) => RecordKind::VmSample,
            Record::Anomaly(_) => RecordKind::Anomaly,
            Record::Incident(_) => RecordKind::Incident,
            Record::Recommendation(_) => RecordKind::Recommendation,
            Record::Action(_) => RecordKind::Action,
            Record::Audit(_) => RecordKind::Audit,
            Record::CollectorHealth(_) => RecordKind::CollectorHealth,
        }
    }
}

/// The kinds of [`Record`], without their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// [`HostSample`]
    HostSample,
    /// [`VmSample`]
    VmSample,
    /// [`Anomaly`]
    Anomaly,
    /// [`Incident`]
    Incident,
    /// [`Recommendation`]
    Recommendation,
    /// [`Action`]
    Action,
    /// [`AuditRecord`]
    Audit,
    /// [`CollectorHealth`]
    CollectorHealth,
}

impl RecordKind {
    /// All kinds, in a fixed order.
    pub const ALL: [RecordKind; 8] = [
        RecordKind::HostSample,
        RecordKind::VmSample,
        RecordKind::Anomaly,
        RecordKind::Incident,
        RecordKind::Recommendation,
        RecordKind::Action,
        RecordKind::Audit,
        RecordKind::CollectorHealth,
    ];

    /// The kind tag as written in JSON (`host_sample`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::HostSample => "host_sample",
            RecordKind::VmSample => "vm_sample",
            RecordKind::Anomaly => "anomaly",
            RecordKind::Incident => "incident",
            RecordKind::Recommendation => "recommendation",
            RecordKind::Action => "action",
            RecordKind::Audit => "audit",
            RecordKind::CollectorHealth => "collector_health",
        }
    }

    /// The SQL table name the engine uses for this kind (`host_samples`, ...).
    #[must_use]
    pub fn table_name(self) -> &'static str {
        match self {
            RecordKind::HostSample => "host_samples",
            RecordKind::VmSample => "vm_samples",
            RecordKind::Anomaly => "anomalies",
            RecordKind::Incident => "incidents",
            RecordKind::Recommendation => "recommendations",
            RecordKind::Action => "actions",
            RecordKind::Audit => "audit",
            RecordKind::CollectorHealth => "collector_health",
        }
    }
}

/// One reading of a host, over the interval that ended at `ts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// End of the sampling interval.
    pub ts: TimestampMs,
    /// Host name (the agent's configured name, else the kernel hostname).
    pub host: String,
    /// Length of the interval the rates and fractions cover, in milliseconds.
    pub interval_ms: u64,
    /// Online logical CPUs.
    pub cpus: u32,
    /// Whole-host CPU time split, each a fraction of all CPUs' time over the interval.
    pub cpu: CpuFractions,
    /// Per-CPU split, in CPU-number order.
    #[serde(default)]
    pub per_cpu: Vec<PerCpuSample>,
    /// 1-minute load average.
    pub load1: f64,
    /// Runnable tasks at the end of the interval (`procs_running` of `/proc/stat`).
    #[serde(default)]
    pub procs_running: u32,
    /// Tasks blocked on I/O at the end of the interval (`procs_blocked`).
    #[serde(default)]
    pub procs_blocked: u32,
    /// Context switches per second over the interval (`ctxt`).
    #[serde(default)]
    pub ctxt_per_s: f64,
    /// Memory.
    pub mem: MemorySample,
    /// Pressure stall information; `None` where the kernel has no PSI.
    pub psi: Option<PsiSample>,
    /// Paging and swapping rates from `/proc/vmstat`.
    pub vmstat: VmstatRates,
    /// Memory and distances per NUMA node; one entry on a non-NUMA host.
    #[serde(default)]
    pub numa: Vec<NumaNodeSample>,
}

/// Fractions of CPU time, each in `0..=1`, summing to about 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuFractions {
    /// user + nice.
    pub user_frac: f64,
    /// system + irq + softirq.
    pub system_frac: f64,
    /// iowait.
    pub iowait_frac: f64,
    /// Time the hypervisor below this host ran something else (steal).
    pub steal_frac: f64,
    /// idle.
    pub idle_frac: f64,
    /// 1 - idle - iowait.
    pub busy_frac: f64,
}

/// One logical CPU over the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PerCpuSample {
    /// CPU number as the kernel numbers it.
    pub cpu: u32,
    /// Busy fraction (1 - idle - iowait).
    pub busy_frac: f64,
    /// Steal fraction.
    pub steal_frac: f64,
}

/// Host memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    /// MemTotal.
    pub total_bytes: u64,
    /// MemFree.
    pub free_bytes: u64,
    /// MemAvailable (the kernel's estimate of what can be allocated without swapping).
    pub available_bytes: u64,
    /// Buffers + Cached.
    pub cached_bytes: u64,
    /// total - available, as a fraction of total.
    pub used_frac: f64,
    /// SwapTotal.
    pub swap_total_bytes: u64,
    /// SwapFree.
    pub swap_free_bytes: u64,
    /// HugePages_Total.
    pub hugepages_total: u64,
    /// HugePages_Free.
    pub hugepages_free: u64,
    /// Hugepagesize.
    pub hugepage_size_bytes: u64,
}

/// Pressure stall information (`/proc/pressure/*`), the kernel's 10-second averages in
/// percent, and the stalled time over the interval as a fraction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiSample {
    /// cpu some avg10.
    pub cpu_some_avg10: f64,
    /// memory some avg10.
    pub memory_some_avg10: f64,
    /// memory full avg10.
    pub memory_full_avg10: f64,
    /// io some avg10.
    pub io_some_avg10: f64,
    /// io full avg10.
    pub io_full_avg10: f64,
    /// Fraction of the interval some task stalled on CPU (from the `total` counter).
    pub cpu_some_frac: f64,
    /// Fraction of the interval some task stalled on memory.
    pub memory_some_frac: f64,
    /// Fraction of the interval some task stalled on I/O.
    pub io_some_frac: f64,
    /// Fraction of the interval all non-idle tasks stalled on memory (thrashing).
    #[serde(default)]
    pub memory_full_frac: f64,
    /// Fraction of the interval all non-idle tasks stalled on I/O.
    #[serde(default)]
    pub io_full_frac: f64,
}

/// Rates from `/proc/vmstat` over the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct VmstatRates {
    /// pgfault.
    pub pgfault_per_s: f64,
    /// pgmajfault.
    pub pgmajfault_per_s: f64,
    /// pswpin.
    pub pswpin_per_s: f64,
    /// pswpout.
    pub pswpout_per_s: f64,
    /// numa_miss (allocations that landed on another node than intended).
    pub numa_miss_per_s: f64,
}

/// One NUMA node of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumaNodeSample {
    /// Node number.
    pub node: u32,
    /// MemTotal of the node.
    pub mem_total_bytes: u64,
    /// MemFree of the node.
    pub mem_free_bytes: u64,
    /// MemUsed of the node.
    pub mem_used_bytes: u64,
    /// HugePages_Total of the node (default-size huge pages reserved there).
    #[serde(default)]
    pub hugepages_total: u64,
    /// HugePages_Free of the node.
    #[serde(default)]
    pub hugepages_free: u64,
    /// CPUs of the node.
    #[serde(default)]
    pub cpus: Vec<u32>,
    /// Distance to every node, indexed by node number (`/sys/.../nodeN/distance`).
    #[serde(default)]
    pub distances: Vec<u32>,
}

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    /// fleetmind's own VMM (vmm-probe).
    Builtin,
    /// QEMU reached over QMP.
    Qemu,
    /// QEMU managed by libvirt.
    Libvirt,
}

/// One reading of a VM, over the interval that ended at `ts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSample {
    /// End of the sampling interval.
    pub ts: TimestampMs,
    /// Host the VM runs on.
    pub host: String,
    /// Stable VM id (unique in the fleet).
    pub vm: String,
    /// Human name; may be anything the operator chose.
    pub name: String,
    /// The VMM running it.
    pub vmm: VmmKind,
    /// Length of the interval, in milliseconds.
    pub interval_ms: u64,
    /// Configured guest memory.
    pub mem_bytes: u64,
    /// Resident memory of the VMM process (or the VM's share of it).
    pub rss_bytes: u64,
    /// Resident guest memory per host NUMA node.
    #[serde(default)]
    pub numa_resident: Vec<NodeBytes>,
    /// Balloon target (what the VMM asked the guest to give back); `None` without a balloon.
    pub balloon_target_bytes: Option<u64>,
    /// Balloon actual (what the guest has given back).
    pub balloon_actual_bytes: Option<u64>,
    /// Free memory the guest reports, where it reports any.
    pub guest_free_bytes: Option<u64>,
    /// Guest memory written per second over the interval, where the VMM can tell (the built-in
    /// VMM counts the pages its guest dirties); what a live migration has to keep re-sending.
    #[serde(default)]
    pub dirty_bytes_per_s: Option<f64>,
    /// Per-vCPU figures.
    #[serde(default)]
    pub vcpus: Vec<VcpuSample>,
    /// KVM exit counters of the whole VM by reason, as the KVM flavour names them.
    #[serde(default)]
    pub exits: Vec<ExitCounter>,
}

/// Bytes on one NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeBytes {
    /// Node number.
    pub node: u32,
    /// Bytes resident there.
    pub bytes: u64,
}

/// One vCPU over the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuSample {
    /// vCPU index in the VM.
    pub vcpu: u32,
    /// Host thread id running it.
    pub tid: Option<u32>,
    /// Fraction of the interval the thread ran on a host CPU (schedstat run time).
    pub run_frac: f64,
    /// Fraction of the interval the thread was runnable but waiting (run-queue delay).
    pub wait_frac: f64,
    /// Host CPU it last ran on.
    pub host_cpu: Option<u32>,
    /// Host CPUs it may run on (its affinity).
    #[serde(default)]
    pub affinity: Vec<u32>,
    /// All KVM exits of this vCPU per second.
    pub exits_per_s: f64,
}

/// One KVM exit counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitCounter {
    /// Counter name as KVM reports it (`exits`, `io_exits`, `halt_exits`, ...).
    pub reason: String,
    /// Cumulative value at `ts`.
    pub total: u64,
    /// Rate over the interval.
    pub per_s: f64,
}

/// What an anomaly or incident is about: a host, or a VM on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Host.
    pub host: String,
    /// VM, when the subject is a VM.
    pub vm: Option<String>,
}

/// An anomaly a detector found on one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Unique id.
    pub id: String,
    /// Time of the anomalous sample.
    pub ts: TimestampMs,
    /// Host and VM.
    pub subject: Subject,
    /// Series name, e.g. `cpu.busy_frac` or `vcpu.2.wait_frac`.
    pub series: String,
    /// Observed value.
    pub value: f64,
    /// What the detector expected.
    pub expected: f64,
    /// Anomaly score in `0..=1`.
    pub score: f64,
    /// Detector that raised it.
    pub detector: String,
}

/// Lifecycle of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// Still developing.
    Open,
    /// No new evidence for the quiet period.
    Resolved,
}

/// The fleet problems the correlator classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentClass {
    /// One VM's load hurts co-located VMs.
    NoisyNeighbour,
    /// Host or VM memory pressure.
    MemoryPressure,
    /// Memory or CPUs on the wrong NUMA node.
    NumaImbalance,
    /// A host running out of room.
    Capacity,
    /// A host whose VMs ask for more CPU or memory than it has: everyone waits, no single culprit.
    HostOvercommit,
    /// One guest spinning out of control: an exit storm or a vCPU pegged far above its baseline.
    RunawayGuest,
    /// Nothing known fits.
    Unknown,
}

/// Severity of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Degrading.
    Warning,
    /// Hurting now.
    Critical,
}

/// One piece of evidence for a hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Host and VM of the series.
    pub subject: Subject,
    /// Series name.
    pub series: String,
    /// When it deviated.
    pub ts: TimestampMs,
    /// Observed value.
    pub value: f64,
    /// Expected value.
    pub expected: f64,
}

/// A ranked root-cause hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    /// The class this hypothesis claims.
    pub class: IncidentClass,
    /// The suspected culprit.
    pub culprit: Subject,
    /// Confidence in `0..=1`.
    pub confidence: f64,
    /// Why.
    pub evidence: Vec<Evidence>,
}

/// Anomalies grouped by time and topology into one problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Unique id.
    pub id: String,
    /// Last update (the record's time).
    pub ts: TimestampMs,
    /// When it opened.
    pub opened_ts: TimestampMs,
    /// When it resolved.
    pub resolved_ts: Option<TimestampMs>,
    /// Open or resolved.
    pub status: IncidentStatus,
    /// Best classification.
    pub class: IncidentClass,
    /// Severity.
    pub severity: Severity,
    /// One line for the feed.
    pub title: String,
    /// Hosts and VMs involved.
    pub subjects: Vec<Subject>,
    /// Anomalies grouped here.
    pub anomaly_ids: Vec<String>,
    /// Hypotheses, best first.
    pub hypotheses: Vec<Hypothesis>,
}

/// Kinds of action the executor can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Pin vCPU threads to host CPUs.
    PinVcpus,
    /// Move guest memory to a NUMA node.
    MoveMemory,
    /// Inflate or deflate the balloon.
    Balloon,
    /// Live-migrate to another host.
    Migrate,
    /// Recommend only; nothing is executed.
    Notify,
}

/// What to do, to what: the part of an action a policy decides on and an executor runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// Kind.
    pub action: ActionKind,
    /// Target VM and its host.
    pub target: Subject,
    /// Kind-specific parameters (e.g. `cpus = "2-3"`, `node = "1"`, `target_mib = "512"`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// A recommended action for an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Unique id.
    pub id: String,
    /// When made.
    pub ts: TimestampMs,
    /// The incident it answers.
    pub incident_id: String,
    /// The action.
    pub spec: ActionSpec,
    /// Why, for the operator.
    pub rationale: String,
    /// Expected benefit in `0..=1`, used for ranking.
    pub expected_benefit: f64,
    /// Position among the incident's recommendations, from 1: the cheapest effective action first.
    pub rank: u32,
    /// What should change if the action is taken (`vm-1 vCPU 0 run-queue delay back under 5%`).
    pub expected_effect: String,
    /// What the action costs.
    pub cost: ActionCost,
}

/// The estimated cost of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionCost {
    /// How long the action takes, in seconds (for a migration: memory size and dirty rate over
    /// the link's bandwidth).
    pub duration_s: f64,
    /// Bytes the action copies (memory moved between nodes, sent to another host).
    pub bytes: u64,
    /// Relative cost in `0..=1` used for ordering: 0 is free, 1 the most disruptive.
    pub score: f64,
    /// One line for the operator (`copies 2.0 GiB at ~1 GiB/s: about 2 s`).
    pub summary: String,
}

/// States of an action, from proposal to verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// Waiting for a decision.
    Proposed,
    /// Approved by policy or a person.
    Approved,
    /// Rejected by policy or a person.
    Rejected,
    /// Not decided in time.
    Expired,
    /// Running.
    Executing,
    /// The executor finished.
    Succeeded,
    /// The executor failed.
    Failed,
    /// The targeted signal recovered.
    Verified,
    /// Undone after it did not help.
    RolledBack,
}

/// An action and its current state; a new record is written on every state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Unique id, stable across the action's state changes.
    pub id: String,
    /// Time of this state change.
    pub ts: TimestampMs,
    /// The recommendation it came from.
    pub recommendation_id: Option<String>,
    /// What to do.
    pub spec: ActionSpec,
    /// State after this change.
    pub state: ActionState,
    /// Who caused the change: `policy:<name>`, `user:<name>` or `executor`.
    pub actor: String,
    /// Why (policy reason, approver comment, error).
    pub reason: String,
}

/// One link of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When written.
    pub ts: TimestampMs,
    /// Who.
    pub actor: String,
    /// What happened (`decision`, `approve`, `execute`, ...).
    pub event: String,
    /// Action concerned.
    pub action_id: Option<String>,
    /// Policy that decided, with its version.
    pub policy: Option<String>,
    /// Policy version (content hash).
    pub policy_version: Option<String>,
    /// Inputs and outcome, as a JSON document.
    pub detail: String,
    /// Hex SHA-256 of the previous record (all zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this record's fields and `prev_hash`.
    pub hash: String,
}

/// The health of one collector source (a VMM host's socket, a QMP socket): written when the
/// source fails for the first time, at every retry while it keeps failing, and once when it
/// recovers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectorHealth {
    /// When.
    pub ts: TimestampMs,
    /// Host the collector runs on.
    pub host: String,
    /// The collector: `vm`, `host`.
    pub collector: String,
    /// The source: `builtin:demo-host-1`, `qmp:/run/vm1.qmp`.
    pub source: String,
    /// Whether the last read succeeded.
    pub healthy: bool,
    /// What failed (absent once healthy).
    pub message: Option<String>,
    /// Reads failed in a row (0 once healthy).
    pub consecutive_failures: u32,
    /// Milliseconds until the next attempt, while unhealthy.
    pub retry_in_ms: Option<u64>,
}
