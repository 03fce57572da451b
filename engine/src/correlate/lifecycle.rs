//! Incidents over time: a problem joins the open incident about the same thing (dedup), an
//! incident changes when its class, severity, subjects, hypotheses or evidence change, and it
//! resolves once all its evidence series have been normal for the quiet period.
//!
//! Matching: an incident of a per-host class (host overcommit, memory pressure, capacity, NUMA
//! imbalance) takes the next problem of its class on its host; an incident about VMs (noisy
//! neighbour, runaway guest, unknown) takes a problem of a related class that shares a subject,
//! so a runaway guest that starts to hurt a neighbour becomes that noisy-neighbour incident.
//!
//! Stability on noisy data: severity only rises while an incident is open; the leading
//! hypothesis keeps its place unless another beats it by a margin; a record is written only
//! when something an operator reads changed, not when a number moved.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetmind_schema::{
    ActionKind, ActionSpec, Evidence, Hypothesis, Incident, IncidentClass, IncidentStatus,
    Recommendation, Record, Severity, TimestampMs,
};

use super::classify::{Draft, Problem, class_family};
use super::config::{CorrelatorConfig, ms};
use super::fleet::Fleet;
use super::recommend::{self, Case, RecDraft};
use super::signals::{Family, Key, SubjectKey, Tracker};

/// Anomaly ids kept per incident.
const MAX_ANOMALY_IDS: usize = 256;
/// Evidence series kept per incident.
const MAX_KEYS: usize = 256;
/// Resolved ids remembered, so that an incident's own earlier records are not adopted again.
const RESOLVED_MEMORY: usize = 4096;
/// A challenger must beat the leading hypothesis by this much to take its place.
const LEAD_MARGIN: f64 = 0.15;

/// What a record of an incident shows, for change detection.
#[derive(Debug, Clone, PartialEq)]
struct Signature {
    class: IncidentClass,
    severity: Severity,
    subjects: BTreeSet<SubjectKey>,
    hypotheses: Vec<(IncidentClass, SubjectKey)>,
    keys: BTreeSet<Key>,
}

/// What the recommendations were made for.
#[derive(Debug, Clone, PartialEq)]
struct RecBasis {
    class: IncidentClass,
    culprit: Option<SubjectKey>,
    subjects: BTreeSet<SubjectKey>,
}

/// An open incident.
#[derive(Debug, Clone)]
struct Open {
    id: String,
    host: String,
    opened_ts: TimestampMs,
    severity: Severity,
    title: String,
    subjects: BTreeSet<SubjectKey>,
    keys: BTreeSet<Key>,
    anomaly_ids: BTreeSet<String>,
    hypotheses: Vec<Draft>,
    evidence: BTreeMap<Key, Evidence>,
    /// Latest time any evidence series was abnormal.
    last_abnormal: TimestampMs,
    emitted: Option<Signature>,
    rec_basis: Option<RecBasis>,
    /// The specs last written.
    rec_specs: Vec<ActionSpec>,
    /// Whether the recommendations stand until the basis changes; unsettled (nothing but
    /// Notify was possible) they are worked out again every tick, in case the fleet now
    /// allows more.
    recs_settled: bool,
}

impl Open {
    fn class(&self) -> IncidentClass {
        self.hypotheses
            .first()
            .map_or(IncidentClass::Unknown, |h| h.class)
    }

    fn signature(&self) -> Signature {
        Signature {
            class: self.class(),
            severity: self.severity,
            subjects: self.subjects.clone(),
            hypotheses: self
                .hypotheses
                .iter()
                .map(|h| (h.class, h.culprit.clone()))
                .collect(),
            keys: self.keys.clone(),
        }
    }

    fn rec_basis(&self) -> RecBasis {
        RecBasis {
            class: self.class(),
            culprit: self.hypotheses.first().map(|h| h.culprit.clone()),
            subjects: self.subjects.clone(),
        }
    }

    fn record(&self, now: TimestampMs, resolved: bool) -> Incident {
        let hypotheses = self
            .hypotheses
            .iter()
            .map(|h| Hypothesis {
                class: h.class,
                culprit: h.culprit.to_subject(),
                confidence: (h.confidence * 100.0).round() / 100.0,
                evidence: h
                    .evidence
                    .iter()
                    .filter_map(|k| self.evidence.get(k).cloned())
                    .collect(),
            })
            .collect();
        // Host subjects first, then VMs, each sorted.
        let mut subjects: Vec<&SubjectKey> = self.subjects.iter().collect();
        subjects.sort_by_key(|s| (s.vm.is_some(), s.host.clone(), s.vm.clone()));
        Incident {
            id: self.id.clone(),
            ts: now,
            opened_ts: self.opened_ts,
            resolved_ts: resolved.then_some(now),
            status: if resolved {
                IncidentStatus::Resolved
            } else {
                IncidentStatus::Open
            },
            class: self.class(),
            severity: self.severity,
            title: self.title.clone(),
            subjects: subjects.into_iter().map(SubjectKey::to_subject).collect(),
            anomaly_ids: self.anomaly_ids.iter().cloned().collect(),
            hypotheses,
        }
    }

    /// Folds in the tracks' current view of every evidence series.
    fn refresh_evidence(&mut self, tracker: &Tracker) {
        for key in &self.keys {
            if let Some(t) = tracker.tracks.get(key) {
                self.last_abnormal = self.last_abnormal.max(t.last_abnormal);
                if self.anomaly_ids.len() < MAX_ANOMALY_IDS {
                    for id in &t.anomaly_ids {
                        if self.anomaly_ids.len() >= MAX_ANOMALY_IDS {
                            break;
                        }
                        self.anomaly_ids.insert(id.clone());
                    }
                }
                self.evidence.insert(
                    key.clone(),
                    Evidence {
                        subject: key.subject.to_subject(),
                        series: key.series.clone(),
                        ts: t.onset,
                        value: finite(t.value),
                        expected: finite(t.expected),
                    },
                );
            }
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// The classes that are one per host.
fn per_host(class: IncidentClass) -> bool {
    matches!(
        class,
        IncidentClass::HostOvercommit
            | IncidentClass::MemoryPressure
            | IncidentClass::Capacity
            | IncidentClass::NumaImbalance
    )
}

fn related(a: IncidentClass, b: IncidentClass) -> bool {
    let (fa, fb) = (class_family(a), class_family(b));
    fa == fb || fa == Family::Any || fb == Family::Any
}

/// The severity a problem of `class` with its strongest signal at `strength` deserves.
fn severity(class: IncidentClass, strength: f64) -> Severity {
    match class {
        IncidentClass::Unknown => Severity::Info,
        IncidentClass::NumaImbalance => {
            if strength >= 0.8 {
                Severity::Warning
            } else {
                Severity::Info
            }
        }
        _ => {
            if strength >= 0.8 {
                Severity::Critical
            } else {
                Severity::Warning
            }
        }
    }
}

/// Every open incident, and the ids given so far.
#[derive(Debug, Default)]
pub(super) struct Incidents {
    open: BTreeMap<String, Open>,
    counter: u64,
    resolved: VecDeque<String>,
    warned_full: bool,
}

impl Incidents {
    /// One tick: match problems, open, update and resolve incidents, and write the records.
    pub(super) fn update(
        &mut self,
        mut problems: Vec<Problem>,
        tracker: &Tracker,
        fleet: &Fleet,
        config: &CorrelatorConfig,
        now: TimestampMs,
    ) -> Vec<Record> {
        problems.sort_by(|a, b| {
            b.strength
                .total_cmp(&a.strength)
                .then_with(|| a.host.cmp(&b.host))
                .then_with(|| a.subjects.cmp(&b.subjects))
        });
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for problem in problems {
            match self.best_match(&problem, &touched) {
                Some(id) => {
                    if let Some(open) = self.open.get_mut(&id) {
                        merge(open, problem);
                    }
                    touched.insert(id);
                }
                None => {
                    if self.open.len() >= config.max_open_incidents.max(1) {
                        if !self.warned_full {
                            tracing::warn!(
                                open = self.open.len(),
                                "too many open incidents; new problems are not opened"
                            );
                            self.warned_full = true;
                        }
                        continue;
                    }
                    self.counter += 1;
                    let id = format!("inc-{now}-{}", self.counter);
                    let open = Open {
                        id: id.clone(),
                        host: problem.host.clone(),
                        opened_ts: now,
                        severity: severity(problem.class(), problem.strength),
                        title: problem.title,
                        subjects: problem.subjects,
                        keys: problem.keys.into_iter().take(MAX_KEYS).collect(),
                        anomaly_ids: BTreeSet::new(),
                        hypotheses: problem.hypotheses,
                        evidence: BTreeMap::new(),
                        last_abnormal: now,
                        emitted: None,
                        rec_basis: None,
                        rec_specs: Vec::new(),
                        recs_settled: false,
                    };
                    tracing::info!(id = %id, class = ?open.class(), host = %open.host, "incident opened");
                    self.open.insert(id.clone(), open);
                    touched.insert(id);
                }
            }
        }

        let quiet = ms(config.quiet_period);
        let stressed: BTreeSet<String> = self
            .open
            .values()
            .filter(|o| {
                matches!(
                    o.class(),
                    IncidentClass::HostOvercommit
                        | IncidentClass::MemoryPressure
                        | IncidentClass::Capacity
                )
            })
            .map(|o| o.host.clone())
            .collect();
        let mut records = Vec::new();
        let mut resolved = Vec::new();
        for (id, open) in &mut self.open {
            open.refresh_evidence(tracker);
            if !touched.contains(id) && now.saturating_sub(open.last_abnormal) >= quiet {
                resolved.push(id.clone());
                continue;
            }
            let signature = open.signature();
            if open.emitted.as_ref() != Some(&signature) {
                records.push(Record::Incident(open.record(now, false)));
                open.emitted = Some(signature);
            }
            let basis = open.rec_basis();
            let basis_changed = open.rec_basis.as_ref() != Some(&basis);
            if basis_changed || !open.recs_settled {
                let case = Case {
                    host: &open.host,
                    class: open.class(),
                    culprit: open.hypotheses.first().map(|h| &h.culprit),
                    subjects: &open.subjects,
                    keys: &open.keys,
                };
                let drafts = recommend::recommend(&case, fleet, tracker, config, &stressed);
                let specs: Vec<ActionSpec> = drafts.iter().map(|d| d.spec.clone()).collect();
                open.recs_settled = specs.iter().any(|s| s.action != ActionKind::Notify);
                // A changed incident always comes with its set (the feed drops the old one
                // when the class or culprit changes); an unchanged one only with a new set.
                if basis_changed || specs != open.rec_specs {
                    records.extend(rec_records(id, now, drafts));
                    open.rec_specs = specs;
                }
                open.rec_basis = Some(basis);
            }
        }
        for id in resolved {
            if let Some(open) = self.open.remove(&id) {
                tracing::info!(id = %id, class = ?open.class(), "incident resolved");
                records.push(Record::Incident(open.record(now, true)));
                self.remember_resolved(id);
            }
        }
        if self.open.len() < config.max_open_incidents {
            self.warned_full = false;
        }
        records
    }

    fn remember_resolved(&mut self, id: String) {
        self.resolved.push_back(id);
        while self.resolved.len() > RESOLVED_MEMORY {
            self.resolved.pop_front();
        }
    }

    /// The open incident a problem belongs to.
    fn best_match(&self, problem: &Problem, touched: &BTreeSet<String>) -> Option<String> {
        let class = problem.class();
        self.open
            .values()
            .filter(|o| o.host == problem.host && !touched.contains(&o.id))
            .filter_map(|o| {
                let same = o.class() == class;
                let common = o.subjects.intersection(&problem.subjects).count();
                let fits = (same && per_host(class)) || (common > 0 && related(o.class(), class));
                fits.then_some(((same, common, std::cmp::Reverse(o.opened_ts)), o.id.clone()))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
            .map(|(_, id)| id)
    }

    /// Takes in an incident record: an open incident this correlator does not know (written
    /// before a restart) is adopted so that it can still be updated and resolved; a resolved
    /// one is dropped. Its own records are recognised by id and change nothing.
    pub(super) fn observe(&mut self, incident: &Incident) {
        if let Some(n) = incident
            .id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.counter = self.counter.max(n);
        }
        match incident.status {
            IncidentStatus::Resolved => {
                if self.open.remove(&incident.id).is_some() || !self.resolved.contains(&incident.id)
                {
                    self.remember_resolved(incident.id.clone());
                }
            }
            IncidentStatus::Open => {
                if self.open.contains_key(&incident.id) || self.resolved.contains(&incident.id) {
                    return;
                }
                let Some(host) = incident.subjects.first().map(|s| s.host.clone()) else {
                    return;
                };
                let mut keys = BTreeSet::new();
                let mut evidence = BTreeMap::new();
                let hypotheses: Vec<Draft> = incident
                    .hypotheses
                    .iter()
                    .map(|h| Draft {
                        class: h.class,
                        culprit: SubjectKey::from_subject(&h.culprit),
                        confidence: h.confidence,
                        evidence: h
                            .evidence
                            .iter()
                            .map(|e| {
                                let key = Key {
                                    subject: SubjectKey::from_subject(&e.subject),
                                    series: e.series.clone(),
                                };
                                keys.insert(key.clone());
                                evidence.insert(key.clone(), e.clone());
                                key
                            })
                            .collect(),
                    })
                    .collect();
                if hypotheses.is_empty() {
                    return;
                }
                let mut open = Open {
                    id: incident.id.clone(),
                    host,
                    opened_ts: incident.opened_ts,
                    severity: incident.severity,
                    title: incident.title.clone(),
                    subjects: incident
                        .subjects
                        .iter()
                        .map(SubjectKey::from_subject)
                        .collect(),
                    keys: keys.into_iter().take(MAX_KEYS).collect(),
                    anomaly_ids: incident
                        .anomaly_ids
                        .iter()
                        .take(MAX_ANOMALY_IDS)
                        .cloned()
                        .collect(),
                    hypotheses,
                    evidence,
                    last_abnormal: incident.ts,
                    emitted: None,
                    rec_basis: None,
                    rec_specs: Vec::new(),
                    // Its recommendations were written before; again only if it changes.
                    recs_settled: true,
                };
                open.emitted = Some(open.signature());
                open.rec_basis = Some(open.rec_basis());
                self.open.insert(incident.id.clone(), open);
            }
        }
    }

    /// Open incidents (for tests and status).
    pub(super) fn open_count(&self) -> usize {
        self.open.len()
    }
}

/// Merges this tick's problem into its incident. A problem of unknown class only adds its
/// evidence to an incident already classified: what is left of a noisy neighbour after the
/// neighbour calmed down does not make the incident unknown again.
fn merge(open: &mut Open, problem: Problem) {
    let problem_class = problem.class();
    let keep_class =
        problem_class == IncidentClass::Unknown && open.class() != IncidentClass::Unknown;
    if !keep_class {
        let previous_lead = open
            .hypotheses
            .first()
            .map(|h| (h.class, h.culprit.clone()));
        let mut hypotheses = problem.hypotheses;
        // A hypothesis that stands keeps the evidence it had: signals that have calmed down
        // still explain how the incident came about.
        for h in &mut hypotheses {
            if let Some(before) = open
                .hypotheses
                .iter()
                .find(|b| b.class == h.class && b.culprit == h.culprit)
            {
                for key in &before.evidence {
                    if !h.evidence.contains(key) && h.evidence.len() < MAX_KEYS {
                        h.evidence.push(key.clone());
                    }
                }
            }
        }
        if let Some((class, culprit)) = previous_lead
            && let Some(pos) = hypotheses
                .iter()
                .position(|h| h.class == class && h.culprit == culprit)
            && pos > 0
            && hypotheses[pos].confidence >= hypotheses[0].confidence - LEAD_MARGIN
        {
            let lead = hypotheses.remove(pos);
            hypotheses.insert(0, lead);
        }
        open.hypotheses = hypotheses;
        if open.class() == problem_class {
            open.title = problem.title;
        }
    }
    open.subjects.extend(problem.subjects);
    for key in problem.keys {
        if open.keys.len() >= MAX_KEYS {
            break;
        }
        open.keys.insert(key);
    }
    open.severity = open.severity.max(severity(open.class(), problem.strength));
}

fn rec_records(incident_id: &str, now: TimestampMs, drafts: Vec<RecDraft>) -> Vec<Record> {
    drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
            Record::Recommendation(Recommendation {
                id: format!("{incident_id}-r{now}-{rank}"),
                ts: now,
                incident_id: incident_id.to_owned(),
                spec: d.spec,
                rationale: d.rationale,
                expected_benefit: (d.benefit * 100.0).round() / 100.0,
                rank,
                expected_effect: d.effect,
                cost: d.cost,
            })
        })
        .collect()
}
