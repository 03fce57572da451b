//! The incident feed: the latest version of every incident and its current recommendations,
//! for the API.
//!
//! The pipeline feeds it every record it ingests ([`IncidentFeed::observe`]), also when it
//! replays the event log after a restart, so observing is idempotent: an incident record
//! replaces the stored version only if it is newer (a resolved record wins a tie), and
//! recommendations come in sets, all with the time of the tick that made them: a newer set
//! replaces the incident's older one, and a record seen twice changes nothing. A version of
//! an incident with another class or leading culprit drops the old set at once, so that no
//! reader sees a new diagnosis with the old advice; the correlator writes the new set right
//! after it. Memory is
//! bounded: resolved incidents older than the retention are dropped, and past the cap the
//! oldest resolved incidents go first, then the oldest open ones.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use fleetmind_schema::{
    ActionKind, Incident, IncidentClass, IncidentStatus, Recommendation, Record, TimestampMs,
};

use super::config::ms;

/// Results per query unless a limit says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest limit a query may ask for.
pub const MAX_LIMIT: usize = 1000;
/// Recommendations kept per incident.
const MAX_RECOMMENDATIONS: usize = 32;

/// How much the feed keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentFeedConfig {
    /// Resolved incidents older than this (behind the newest record seen) are dropped.
    /// Default 24 hours.
    pub retention: Duration,
    /// Incidents kept at most. Default 10 000.
    pub max_incidents: usize,
}

impl Default for IncidentFeedConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            max_incidents: 10_000,
        }
    }
}

/// Which incidents a query wants by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    /// Open ones.
    Open,
    /// Resolved ones.
    Resolved,
    /// Both.
    #[default]
    All,
}

/// A status filter that is none of `open`, `resolved`, `all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("status must be one of open, resolved, all (got {0:?})")]
pub struct ParseStatusError(pub String);

impl FromStr for StatusFilter {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(StatusFilter::Open),
            "resolved" => Ok(StatusFilter::Resolved),
            "all" => Ok(StatusFilter::All),
            other => Err(ParseStatusError(other.to_owned())),
        }
    }
}

/// Which incidents to list; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentQuery {
    /// By status.
    pub status: StatusFilter,
    /// By class.
    pub class: Option<IncidentClass>,
    /// Involving this host.
    pub host: Option<String>,
    /// Involving this VM (its id `host/name`, or its name).
    pub vm: Option<String>,
    /// Updated at or after this time.
    pub since: Option<TimestampMs>,
    /// At most this many (default [`DEFAULT_LIMIT`], capped at [`MAX_LIMIT`]).
    pub limit: Option<usize>,
}

/// Which recommendations to list; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecommendationQuery {
    /// For this incident.
    pub incident: Option<String>,
    /// Targeting this host.
    pub host: Option<String>,
    /// Targeting this VM (its id `host/name`, or its name).
    pub vm: Option<String>,
    /// Of this kind.
    pub action: Option<ActionKind>,
    /// At most this many (default [`DEFAULT_LIMIT`], capped at [`MAX_LIMIT`]).
    pub limit: Option<usize>,
}

/// An incident's current recommendations: the set of the latest tick that made any.
#[derive(Debug, Clone)]
struct RecSet {
    ts: TimestampMs,
    recs: Vec<Recommendation>,
}

#[derive(Debug, Default)]
struct Inner {
    incidents: HashMap<String, Incident>,
    recs: HashMap<String, RecSet>,
    newest: TimestampMs,
}

/// The latest incidents and recommendations; share it as `Arc<IncidentFeed>`.
#[derive(Debug, Default)]
pub struct IncidentFeed {
    config: IncidentFeedConfig,
    inner: RwLock<Inner>,
}

/// Whether a VM id matches what a caller asked for (the id, or the name after the host).
fn vm_matches(id: &str, wanted: &str) -> bool {
    id == wanted || id.rsplit_once('/').is_some_and(|(_, name)| name == wanted)
}

fn limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)
}

/// An incident's class and leading culprit: what its recommendations were made for.
fn lead(i: &Incident) -> (IncidentClass, Option<&fleetmind_schema::Subject>) {
    (i.class, i.hypotheses.first().map(|h| &h.culprit))
}

fn resolved(i: &Incident) -> bool {
    i.status == IncidentStatus::Resolved
}

impl IncidentFeed {
    /// An empty feed.
    #[must_use]
    pub fn new(config: IncidentFeedConfig) -> Self {
        Self {
            config,
            inner: RwLock::default(),
        }
    }

    /// Takes in one record; kinds other than incidents and recommendations are ignored.
    pub fn observe(&self, record: &Record) {
        match record {
            Record::Incident(incident) => self.observe_incident(incident),
            Record::Recommendation(rec) => self.observe_recommendation(rec),
            _ => {}
        }
    }

    fn observe_incident(&self, incident: &Incident) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.newest = inner.newest.max(incident.ts);
        let is_new = match inner.incidents.get(&incident.id) {
            Some(old) => {
                if (old.ts, resolved(old)) > (incident.ts, resolved(incident)) {
                    return;
                }
                // Recommendations made for another class or culprit are stale; the new set
                // follows the incident record.
                if lead(old) != lead(incident) {
                    inner.recs.insert(
                        incident.id.clone(),
                        RecSet {
                            ts: incident.ts,
                            recs: Vec::new(),
                        },
                    );
                }
                false
            }
            None => true,
        };
        inner
            .incidents
            .insert(incident.id.clone(), incident.clone());
        if is_new {
            self.prune(&mut inner);
        }
    }

    fn observe_recommendation(&self, rec: &Recommendation) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if !inner.incidents.contains_key(&rec.incident_id) {
            return;
        }
        let set = inner
            .recs
            .entry(rec.incident_id.clone())
            .or_insert_with(|| RecSet {
                ts: rec.ts,
                recs: Vec::new(),
            });
        if rec.ts < set.ts {
            return;
        }
        if rec.ts > set.ts {
            set.ts = rec.ts;
            set.recs.clear();
        }
        if let Some(existing) = set.recs.iter_mut().find(|r| r.id == rec.id) {
            *existing = rec.clone();
        } else if set.recs.len() < MAX_RECOMMENDATIONS {
            set.recs.push(rec.clone());
        }
        set.recs
            .sort_by(|a, b| a.rank.cmp(&b.rank).then_with(|| a.id.cmp(&b.id)));
    }

    /// Drops resolved incidents past the retention, then the oldest past the cap.
    fn prune(&self, inner: &mut Inner) {
        let cutoff = inner.newest.saturating_sub(ms(self.config.retention));
        let mut dropped: Vec<String> = inner
            .incidents
            .values()
            .filter(|i| resolved(i) && i.ts < cutoff)
            .map(|i| i.id.clone())
            .collect();
        let excess = inner
            .incidents
            .len()
            .saturating_sub(dropped.len())
            .saturating_sub(self.config.max_incidents.max(1));
        if excess > 0 {
            let mut rest: Vec<&Incident> = inner
                .incidents
                .values()
                .filter(|i| !dropped.contains(&i.id))
                .collect();
            // Resolved before open, oldest first.
            rest.sort_by_key(|i| (!resolved(i), i.ts, i.id.clone()));
            dropped.extend(rest.into_iter().take(excess).map(|i| i.id.clone()));
        }
        for id in dropped {
            inner.incidents.remove(&id);
            inner.recs.remove(&id);
        }
    }

    /// Incidents matching `query`, newest update first.
    #[must_use]
    pub fn incidents(&self, query: &IncidentQuery) -> Vec<Incident> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<&Incident> = inner
            .incidents
            .values()
            .filter(|i| match query.status {
                StatusFilter::Open => !resolved(i),
                StatusFilter::Resolved => resolved(i),
                StatusFilter::All => true,
            })
            .filter(|i| query.class.is_none_or(|c| i.class == c))
            .filter(|i| {
                query
                    .host
                    .as_deref()
                    .is_none_or(|h| i.subjects.iter().any(|s| s.host == h))
            })
            .filter(|i| {
                query.vm.as_deref().is_none_or(|vm| {
                    i.subjects
                        .iter()
                        .any(|s| s.vm.as_deref().is_some_and(|id| vm_matches(id, vm)))
                })
            })
            .filter(|i| query.since.is_none_or(|since| i.ts >= since))
            .collect();
        out.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| b.id.cmp(&a.id)));
        out.into_iter().take(limit(query.limit)).cloned().collect()
    }

    /// One incident and its current recommendations, best first.
    #[must_use]
    pub fn incident(&self, id: &str) -> Option<(Incident, Vec<Recommendation>)> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let incident = inner.incidents.get(id)?.clone();
        let recs = inner
            .recs
            .get(id)
            .map(|s| s.recs.clone())
            .unwrap_or_default();
        Some((incident, recs))
    }

    /// Current recommendations matching `query`: newest first, then by incident and rank.
    #[must_use]
    pub fn recommendations(&self, query: &RecommendationQuery) -> Vec<Recommendation> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<&Recommendation> = inner
            .recs
            .iter()
            .filter(|(id, _)| {
                query
                    .incident
                    .as_deref()
                    .is_none_or(|want| want == id.as_str())
            })
            .flat_map(|(_, set)| set.recs.iter())
            .filter(|r| {
                query
                    .host
                    .as_deref()
                    .is_none_or(|h| r.spec.target.host == h)
            })
            .filter(|r| {
                query.vm.as_deref().is_none_or(|vm| {
                    r.spec
                        .target
                        .vm
                        .as_deref()
                        .is_some_and(|id| vm_matches(id, vm))
                })
            })
            .filter(|r| query.action.is_none_or(|a| r.spec.action == a))
            .collect();
        out.sort_by(|a, b| {
            b.ts.cmp(&a.ts)
                .then_with(|| a.incident_id.cmp(&b.incident_id))
                .then_with(|| a.rank.cmp(&b.rank))
        });
        out.into_iter().take(limit(query.limit)).cloned().collect()
    }

    /// Incidents held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .incidents
            .len()
    }

    /// Whether no incident is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleetmind_schema::{ActionCost, ActionSpec, Severity, Subject};

    use super::*;

    fn incident(
        id: &str,
        ts: TimestampMs,
        status: IncidentStatus,
        host: &str,
        vm: &str,
    ) -> Incident {
        Incident {
            id: id.to_owned(),
            ts,
            opened_ts: ts,
            resolved_ts: (status == IncidentStatus::Resolved).then_some(ts),
            status,
            class: IncidentClass::NoisyNeighbour,
            severity: Severity::Warning,
            title: "t".into(),
            subjects: vec![Subject {
                host: host.to_owned(),
                vm: Some(format!("{host}/{vm}")),
            }],
            anomaly_ids: vec![],
            hypotheses: vec![],
        }
    }

    fn rec(incident: &str, ts: TimestampMs, rank: u32, action: ActionKind) -> Recommendation {
        Recommendation {
            id: format!("{incident}-r{ts}-{rank}"),
            ts,
            incident_id: incident.to_owned(),
            spec: ActionSpec {
                action,
                target: Subject {
                    host: "h1".into(),
                    vm: Some("h1/a".into()),
                },
                params: BTreeMap::new(),
            },
            rationale: String::new(),
            expected_benefit: 0.5,
            rank,
            expected_effect: String::new(),
            cost: ActionCost {
                duration_s: 0.0,
                bytes: 0,
                score: 0.0,
                summary: String::new(),
            },
        }
    }

    #[test]
    fn newer_versions_win_and_replays_change_nothing() {
        let feed = IncidentFeed::default();
        let open = incident("i1", 1_000, IncidentStatus::Open, "h1", "a");
        let closed = incident("i1", 5_000, IncidentStatus::Resolved, "h1", "a");
        for r in [&open, &closed, &open, &closed] {
            feed.observe(&Record::Incident(r.clone()));
        }
        let all = feed.incidents(&IncidentQuery::default());
        assert_eq!(all, vec![closed.clone()]);
        // A tie goes to the resolved version.
        let mut tie = closed.clone();
        tie.status = IncidentStatus::Open;
        feed.observe(&Record::Incident(tie));
        assert_eq!(
            feed.incident("i1").map(|(i, _)| i.status),
            Some(IncidentStatus::Resolved)
        );
    }

    #[test]
    fn recommendation_sets_replace_older_ones() {
        let feed = IncidentFeed::default();
        feed.observe(&Record::Incident(incident(
            "i1",
            1_000,
            IncidentStatus::Open,
            "h1",
            "a",
        )));
        feed.observe(&Record::Recommendation(rec(
            "unknown",
            1_000,
            1,
            ActionKind::Notify,
        )));
        for r in [
            rec("i1", 1_000, 2, ActionKind::Notify),
            rec("i1", 1_000, 1, ActionKind::PinVcpus),
            rec("i1", 1_000, 1, ActionKind::PinVcpus),
        ] {
            feed.observe(&Record::Recommendation(r));
        }
        let (_, recs) = feed.incident("i1").expect("known");
        let ranks: Vec<u32> = recs.iter().map(|r| r.rank).collect();
        assert_eq!(ranks, [1, 2]);
        feed.observe(&Record::Recommendation(rec(
            "i1",
            3_000,
            1,
            ActionKind::Balloon,
        )));
        // An older one replayed after does not come back.
        feed.observe(&Record::Recommendation(rec(
            "i1",
            1_000,
            2,
            ActionKind::Notify,
        )));
        let (_, recs) = feed.incident("i1").expect("known");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].spec.action, ActionKind::Balloon);
        assert!(
            feed.recommendations(&RecommendationQuery::default())
                .iter()
                .all(|r| r.incident_id == "i1")
        );
    }

    #[test]
    fn a_new_diagnosis_drops_the_old_advice() {
        let feed = IncidentFeed::default();
        let mut first = incident("i1", 1_000, IncidentStatus::Open, "h1", "a");
        first.class = IncidentClass::Unknown;
        feed.observe(&Record::Incident(first.clone()));
        feed.observe(&Record::Recommendation(rec(
            "i1",
            1_000,
            1,
            ActionKind::Notify,
        )));
        // Same diagnosis, newer version: the advice stands.
        let mut same = first.clone();
        same.ts = 2_000;
        feed.observe(&Record::Incident(same));
        assert_eq!(feed.incident("i1").map(|(_, r)| r.len()), Some(1));
        let mut reclassified = first;
        reclassified.ts = 3_000;
        reclassified.class = IncidentClass::NoisyNeighbour;
        feed.observe(&Record::Incident(reclassified.clone()));
        assert_eq!(feed.incident("i1").map(|(_, r)| r.len()), Some(0));
        // An older one arriving late does not come back.
        feed.observe(&Record::Recommendation(rec(
            "i1",
            1_000,
            1,
            ActionKind::Notify,
        )));
        assert_eq!(feed.incident("i1").map(|(_, r)| r.len()), Some(0));
        feed.observe(&Record::Recommendation(rec(
            "i1",
            3_000,
            1,
            ActionKind::PinVcpus,
        )));
        // Replaying the older records changes nothing.
        feed.observe(&Record::Recommendation(rec(
            "i1",
            1_000,
            1,
            ActionKind::Notify,
        )));
        feed.observe(&Record::Incident(reclassified));
        let (_, recs) = feed.incident("i1").expect("known");
        assert_eq!(
            recs.iter().map(|r| r.spec.action).collect::<Vec<_>>(),
            [ActionKind::PinVcpus]
        );
    }

    #[test]
    fn queries_filter_sort_and_limit() {
        let feed = IncidentFeed::default();
        feed.observe(&Record::Incident(incident(
            "i1",
            1_000,
            IncidentStatus::Open,
            "h1",
            "a",
        )));
        feed.observe(&Record::Incident(incident(
            "i2",
            2_000,
            IncidentStatus::Resolved,
            "h2",
            "b",
        )));
        let mut numa = incident("i3", 3_000, IncidentStatus::Open, "h1", "c");
        numa.class = IncidentClass::NumaImbalance;
        feed.observe(&Record::Incident(numa));
        let ids = |q: IncidentQuery| -> Vec<String> {
            feed.incidents(&q).into_iter().map(|i| i.id).collect()
        };
        assert_eq!(ids(IncidentQuery::default()), ["i3", "i2", "i1"]);
        assert_eq!(
            ids(IncidentQuery {
                status: StatusFilter::Open,
                ..Default::default()
            }),
            ["i3", "i1"]
        );
        assert_eq!(
            ids(IncidentQuery {
                status: StatusFilter::Resolved,
                ..Default::default()
            }),
            ["i2"]
        );
        assert_eq!(
            ids(IncidentQuery {
                class: Some(IncidentClass::NumaImbalance),
                ..Default::default()
            }),
            ["i3"]
        );
        assert_eq!(
            ids(IncidentQuery {
                host: Some("h1".into()),
                ..Default::default()
            }),
            ["i3", "i1"]
        );
        assert_eq!(
            ids(IncidentQuery {
                vm: Some("b".into()),
                ..Default::default()
            }),
            ["i2"]
        );
        assert_eq!(
            ids(IncidentQuery {
                vm: Some("h1/a".into()),
                ..Default::default()
            }),
            ["i1"]
        );
        assert_eq!(
            ids(IncidentQuery {
                since: Some(2_000),
                ..Default::default()
            }),
            ["i3", "i2"]
        );
        assert_eq!(
            ids(IncidentQuery {
                limit: Some(1),
                ..Default::default()
            }),
            ["i3"]
        );

        feed.observe(&Record::Recommendation(rec(
            "i1",
            1_000,
            1,
            ActionKind::PinVcpus,
        )));
        feed.observe(&Record::Recommendation(rec(
            "i3",
            3_000,
            1,
            ActionKind::MoveMemory,
        )));
        let recs = |q: RecommendationQuery| -> Vec<String> {
            feed.recommendations(&q).into_iter().map(|r| r.id).collect()
        };
        assert_eq!(
            recs(RecommendationQuery::default()),
            ["i3-r3000-1", "i1-r1000-1"]
        );
        assert_eq!(
            recs(RecommendationQuery {
                incident: Some("i1".into()),
                ..Default::default()
            }),
            ["i1-r1000-1"]
        );
        assert_eq!(
            recs(RecommendationQuery {
                action: Some(ActionKind::MoveMemory),
                ..Default::default()
            }),
            ["i3-r3000-1"]
        );
        assert!(
            recs(RecommendationQuery {
                host: Some("h9".into()),
                ..Default::default()
            })
            .is_empty()
        );
        assert_eq!(
            recs(RecommendationQuery {
                vm: Some("a".into()),
                limit: Some(1),
                ..Default::default()
            }),
            ["i3-r3000-1"]
        );
    }

    #[test]
    fn the_feed_is_bounded() {
        let feed = IncidentFeed::new(IncidentFeedConfig {
            retention: Duration::from_secs(10),
            max_incidents: 3,
        });
        feed.observe(&Record::Incident(incident(
            "old",
            1_000,
            IncidentStatus::Resolved,
            "h",
            "a",
        )));
        feed.observe(&Record::Recommendation(rec(
            "old",
            1_000,
            1,
            ActionKind::Notify,
        )));
        feed.observe(&Record::Incident(incident(
            "o1",
            20_000,
            IncidentStatus::Open,
            "h",
            "a",
        )));
        assert!(feed.incident("old").is_none(), "past the retention");
        assert!(
            feed.recommendations(&RecommendationQuery::default())
                .is_empty()
        );
        for (i, ts) in [(2, 21_000), (3, 22_000), (4, 23_000)] {
            feed.observe(&Record::Incident(incident(
                &format!("o{i}"),
                ts,
                IncidentStatus::Open,
                "h",
                "a",
            )));
        }
        assert_eq!(feed.len(), 3);
        assert!(
            feed.incident("o1").is_none(),
            "the oldest goes past the cap"
        );
    }

    #[test]
    fn status_filters_parse() {
        assert_eq!("open".parse(), Ok(StatusFilter::Open));
        assert_eq!("resolved".parse(), Ok(StatusFilter::Resolved));
        assert_eq!("all".parse(), Ok(StatusFilter::All));
        let err = "bogus".parse::<StatusFilter>().unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }
}
