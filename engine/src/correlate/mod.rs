//! Correlation: anomalies and samples into incidents, and incidents into recommendations.
//!
//! A detector scores one series at a time; an operator wants to know *what is wrong*: which VM
//! is starving which, on which CPUs, since when, and what to do about it. The [`Correlator`]
//! gets there in four steps each [`tick`](Correlator::tick):
//!
//! 1. **Topology and baselines** (`fleet`): every host's CPUs and NUMA nodes, every VM's vCPUs
//!    (where they run, where they may run), balloon and memory placement, and each VM's running
//!    medians of its own history.
//! 2. **Signals** (`signals`): a series counts when an absolute guard has held for a few
//!    samples (run-queue delay ≥ 20 %, an exit rate ≥ 10× its median, PSI memory ≥ 10 %, a
//!    guest under 5 % free while its balloon holds memory, ≥ 50 % of a VM's memory on a remote
//!    node, vCPU demand over the host's CPUs) or when a detector flagged it with a meaningful
//!    value. Guards matter because detectors adapt to a problem that lasts and stop flagging
//!    it; anomalies matter because they see a change before it crosses a guard.
//! 3. **Problems** (`classify`): the signals of one host grouped by topology and time into
//!    problems with a class (noisy neighbour, runaway guest, host overcommit, memory pressure,
//!    capacity, NUMA imbalance, unknown) and ranked hypotheses, each naming a culprit and its
//!    evidence (series, onset, worst value, expected value).
//! 4. **Incidents** (`lifecycle`): a problem joins the open incident about the same thing, or
//!    opens one; an incident whose evidence has all been back to normal for the quiet period
//!    resolves. Records are written only for what changed, with recommendations (`recommend`)
//!    whenever an incident opens or its class, culprit or subjects change.
//!
//! The series names the extractor and the detectors use live in [`series`]; the API reads
//! incidents through an [`IncidentFeed`].
//!
//! Built-in VMM hosts: their VMs name the VMM host (`demo-host-1`) while host samples name the
//! machine. The correlator describes such a VM host by the one machine that reports samples
//! but no VMs of its own (when every CPU its VMs may use is one of the machine's), and lets the
//! machine's own signals (load, PSI) join the VM host's incidents as evidence; see `fleet`.
//!
//! Time: `tick(now)` judges the latest samples against `now`. Pass the wall clock while live,
//! or the latest record's time while replaying, so that the quiet period means the same.

mod classify;
mod config;
pub mod cpuset;
mod feed;
mod fleet;
mod lifecycle;
mod recommend;
pub mod series;
mod signals;
#[cfg(test)]
pub(crate) mod test_utils;
#[cfg(test)]
mod tests;

use fleetmind_schema::{Record, TimestampMs};

pub use config::CorrelatorConfig;
pub use feed::{
    DEFAULT_LIMIT, IncidentFeed, IncidentFeedConfig, IncidentQuery, MAX_LIMIT, ParseStatusError,
    RecommendationQuery, StatusFilter,
};

use self::config::ms;
use self::fleet::Fleet;
use self::lifecycle::Incidents;
use self::signals::{Anomalies, Tracker};

/// Groups anomalies into incidents and recommends actions; see the [module docs](self).
///
/// Memory is bounded: hosts and VMs unseen for `forget_after`, anomalies older than the group
/// window and signals quiet for longer than the quiet period are forgotten, and at most
/// `max_vms`, `max_hosts` and `max_open_incidents` are held.
#[derive(Debug)]
pub struct Correlator {
    config: CorrelatorConfig,
    fleet: Fleet,
    anomalies: Anomalies,
    tracker: Tracker,
    incidents: Incidents,
}

impl Correlator {
    /// A correlator that knows nothing yet.
    #[must_use]
    pub fn new(config: CorrelatorConfig) -> Self {
        Self {
            config,
            fleet: Fleet::default(),
            anomalies: Anomalies::default(),
            tracker: Tracker::default(),
            incidents: Incidents::default(),
        }
    }

    /// The configuration it runs with.
    #[must_use]
    pub fn config(&self) -> &CorrelatorConfig {
        &self.config
    }

    /// Takes in one record.
    ///
    /// Host and VM samples update the topology and the current values (a sample not newer
    /// than the last one of its host or VM is ignored); anomalies become evidence (a repeated
    /// id is ignored). An open incident record the correlator does not know, written before a
    /// restart and replayed, is adopted so that it is still updated and resolved; the
    /// correlator's own incident records change nothing. Other kinds are ignored.
    pub fn observe(&mut self, record: &Record) {
        match record {
            Record::HostSample(s) => self.fleet.observe_host(s, &self.config),
            Record::VmSample(s) => self.fleet.observe_vm(s, &self.config),
            Record::Anomaly(a) => self.anomalies.observe(a),
            Record::Incident(i) => self.incidents.observe(i),
            _ => {}
        }
    }

    /// Correlates what was observed up to `now`, and returns an [`Incident`] record for every
    /// incident opened, changed or resolved, each open one followed by its
    /// [`Recommendation`] records when they are new or changed. Nothing when nothing changed.
    ///
    /// Incident ids are `inc-<opened ms>-<n>`, with `n` counting the incidents this
    /// correlator (and those it adopted) opened; recommendation ids are
    /// `<incident id>-r<tick ms>-<rank>`.
    ///
    /// [`Incident`]: fleetmind_schema::Incident
    /// [`Recommendation`]: fleetmind_schema::Recommendation
    pub fn tick(&mut self, now: TimestampMs) -> Vec<Record> {
        let c = &self.config;
        self.fleet
            .forget_before(now.saturating_sub(ms(c.forget_after)));
        self.anomalies
            .forget_before(now.saturating_sub(ms(c.group_window)));
        let hold = ms(c.signal_hold.min(c.quiet_period));
        let observations = signals::evaluate(&self.fleet, &self.anomalies, c, now);
        self.tracker.update(observations, hold);
        let problems = classify::classify(&self.fleet, &self.tracker, c, now);
        let records = self
            .incidents
            .update(problems, &self.tracker, &self.fleet, c, now);
        self.tracker.forget_before(
            now.saturating_sub(ms(c.quiet_period))
                .saturating_sub(ms(c.group_window)),
        );
        records
    }

    /// Incidents open now.
    #[must_use]
    pub fn open_incidents(&self) -> usize {
        self.incidents.open_count()
    }
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new(CorrelatorConfig::default())
    }
}
