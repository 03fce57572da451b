//! The correlator's knobs, with the defaults an operator of a KVM fleet would start from.

use std::time::Duration;

const MIB: u64 = 1 << 20;

/// How the [`Correlator`](super::Correlator) groups, classifies, resolves and recommends.
///
/// Every threshold here is a *guard*: an absolute level that opens an incident even when the
/// detectors have adapted to a sustained problem and stopped flagging it. Anomalies open
/// incidents too, but only when they are past a smaller floor (a statistically surprising
/// change from 1 % to 3 % run-queue delay is not a problem).
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelatorConfig {
    /// Signals whose onsets lie within this of each other count as simultaneous (a victim's
    /// delay and a neighbour's rise); anomalies older than this are forgotten. Default 60 s.
    pub group_window: Duration,
    /// How long a signal still counts for classification after it was last active, so that a
    /// flapping signal does not flap the incident's class. Capped at `quiet_period`.
    /// Default 30 s.
    pub signal_hold: Duration,
    /// An incident resolves once every one of its evidence series has been back within its
    /// guard and near its expected value for this long. Default 60 s.
    pub quiet_period: Duration,
    /// Hosts and VMs without a sample for this long are forgotten. Default 5 min.
    pub forget_after: Duration,
    /// An anomaly counts as a live signal for this long after its sample. Default 15 s.
    pub anomaly_hold: Duration,
    /// Samples of a VM's own history its baselines (running medians) cover. Default 120.
    pub baseline_samples: usize,
    /// Samples a baseline needs before a rise is judged against it. Default 5.
    pub min_baseline_samples: usize,
    /// Samples taken while a VM is abnormal do not enter its baselines, so a sustained storm
    /// does not become the norm; after this long abnormal they do (a new normal).
    /// Default 30 min.
    pub relearn_after: Duration,
    /// Consecutive samples a guard must hold before it opens an incident (one-second samples
    /// are noisy). Default 3.
    pub guard_samples: usize,
    /// vCPU run-queue delay (fraction of the interval) that is a problem. Default 0.2.
    pub wait_guard: f64,
    /// Smallest run-queue delay an anomaly must show to count. Default 0.1.
    pub wait_anomaly_floor: f64,
    /// Rise of a vCPU's run fraction over its own median that makes it a suspect.
    /// Default 0.25.
    pub run_rise: f64,
    /// Run fraction at which a vCPU counts as pegged. Default 0.9.
    pub pegged_run_frac: f64,
    /// A VM's exit rate at this multiple of its own median is an exit storm... Default 10.
    pub exit_storm_ratio: f64,
    /// ...if it is also at least this many exits per second. Default 1000.
    pub exit_storm_floor_per_s: f64,
    /// Guest free memory below this fraction of the VM's memory starves the guest (an incident
    /// when its balloon holds memory, its memory grew, a detector saw it, or the host is
    /// short). Default 0.05.
    pub guest_free_low_frac: f64,
    /// Free fraction a balloon deflate aims to give a starving guest. Default 0.15.
    pub guest_free_goal_frac: f64,
    /// A VM with at least this fraction of its memory free can give some back (inflate).
    /// Default 0.25.
    pub donor_free_frac: f64,
    /// Fraction of its memory a donor keeps free after inflating. Default 0.10.
    pub donor_keep_frac: f64,
    /// Growth of a VM's resident memory over its recent minimum, as a fraction of its memory,
    /// that marks it as the one taking memory. Default 0.2.
    pub rss_growth_frac: f64,
    /// Host PSI memory "some" (fraction of time) that is pressure. Default 0.10.
    pub psi_memory_some_guard: f64,
    /// Host PSI memory "full" that is thrashing. Default 0.05.
    pub psi_memory_full_guard: f64,
    /// Host major page faults per second that are pressure. Default 1000.
    pub majfault_guard_per_s: f64,
    /// Host pages swapped out per second that are pressure. Default 256.
    pub swapout_guard_per_s: f64,
    /// Host used memory fraction that means the host is full. Default 0.95.
    pub mem_used_guard: f64,
    /// Share of a VM's resident memory away from its vCPUs' node that is an imbalance (only on
    /// hosts with more than one node). Default 0.5.
    pub numa_remote_guard: f64,
    /// VMs with less resident memory than this are not judged for NUMA balance. Default 16 MiB.
    pub numa_min_resident_bytes: u64,
    /// Runnable vCPU demand (run + wait of every vCPU) per host CPU above which a host is
    /// overcommitted. Default 1.0.
    pub overcommit_ratio: f64,
    /// VMs waiting with no single culprit that make an overcommitted host. Default 2.
    pub overcommit_min_waiting_vms: usize,
    /// Anomalous series on one host, unexplained by any rule, that open an incident of unknown
    /// class. Default 3.
    pub unknown_min_series: usize,
    /// Anomalies scored below this are ignored. Default 0.5.
    pub min_anomaly_score: f64,
    /// Bandwidth of the live-migration link, bytes per second. Default 1.25 GB/s (10 GbE).
    pub migration_bandwidth_bytes_per_s: f64,
    /// Pause a live migration may end with (the last copy round). Default 300 ms.
    pub migration_max_downtime: Duration,
    /// Pre-copy rounds after which a migration that has not got its remainder under the
    /// downtime is taken not to converge and is not recommended. Default 30.
    pub migration_max_rounds: u32,
    /// Rate at which guest memory moves between NUMA nodes, bytes per second. Default 2 GiB/s.
    pub numa_move_bytes_per_s: f64,
    /// Rate at which a balloon moves, bytes per second. Default 200 MiB/s (the built-in
    /// VMM's agent moves 512 pages per 10 ms tick).
    pub balloon_bytes_per_s: f64,
    /// Open incidents kept at most; beyond it no new ones open (and a warning is logged).
    /// Default 1000.
    pub max_open_incidents: usize,
    /// VMs tracked at most; the least recently seen is forgotten first. Default 20 000.
    pub max_vms: usize,
    /// Hosts tracked at most; the least recently seen is forgotten first. Default 5000.
    pub max_hosts: usize,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        Self {
            group_window: Duration::from_secs(60),
            signal_hold: Duration::from_secs(30),
            quiet_period: Duration::from_secs(60),
            forget_after: Duration::from_secs(300),
            anomaly_hold: Duration::from_secs(15),
            baseline_samples: 120,
            min_baseline_samples: 5,
            relearn_after: Duration::from_secs(30 * 60),
            guard_samples: 3,
            wait_guard: 0.2,
            wait_anomaly_floor: 0.1,
            run_rise: 0.25,
            pegged_run_frac: 0.9,
            exit_storm_ratio: 10.0,
            exit_storm_floor_per_s: 1000.0,
            guest_free_low_frac: 0.05,
            guest_free_goal_frac: 0.15,
            donor_free_frac: 0.25,
            donor_keep_frac: 0.10,
            rss_growth_frac: 0.2,
            psi_memory_some_guard: 0.10,
            psi_memory_full_guard: 0.05,
            majfault_guard_per_s: 1000.0,
            swapout_guard_per_s: 256.0,
            mem_used_guard: 0.95,
            numa_remote_guard: 0.5,
            numa_min_resident_bytes: 16 * MIB,
            overcommit_ratio: 1.0,
            overcommit_min_waiting_vms: 2,
            unknown_min_series: 3,
            min_anomaly_score: 0.5,
            migration_bandwidth_bytes_per_s: 1.25e9,
            migration_max_downtime: Duration::from_millis(300),
            migration_max_rounds: 30,
            numa_move_bytes_per_s: 2.0 * (1u64 << 30) as f64,
            balloon_bytes_per_s: 200.0 * MIB as f64,
            max_open_incidents: 1000,
            max_vms: 20_000,
            max_hosts: 5000,
        }
    }
}

/// A duration in milliseconds, as record timestamps count.
pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
