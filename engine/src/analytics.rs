//! Streaming analytics: one anomaly detector per host and VM series, and the correlator that
//! turns their anomalies (and absolute guards) into incidents and recommendations.
//!
//! [`Analytics`] is fed every record of the event stream in order, with its offset. Samples
//! are split into series ([`crate::correlate::series`]); each series has a
//! [`SeriesDetector`] of its own, created on first sight, so one parameter set serves every
//! series. A score at or above the detector's threshold becomes an [`Anomaly`] record. The
//! samples and the anomalies go to the [`Correlator`], whose output comes out of
//! [`Analytics::tick`].
//!
//! The detectors' state and the offset after the last record they saw are saved with
//! [`Analytics::save`] (atomically: temporary file, fsync, rename) and read back with
//! [`Analytics::restore`], so a restart neither forgets the baselines nor scores a record
//! twice. Anomaly ids derive from the sample's offset, so records processed again after a crash
//! (between an append and the next save) carry the ids they had the first time.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use fleetmind_detect::{DETECTOR_NAME, DetectorConfig, SeriesDetector};
use fleetmind_schema::{Anomaly, Incident, IncidentStatus, Record, Subject, TimestampMs};
use serde::{Deserialize, Serialize};

use crate::correlate::series::{host_series, vm_series};
use crate::correlate::{Correlator, CorrelatorConfig};

/// Version of the saved state's layout; a different version is discarded with a warning.
const STATE_VERSION: u32 = 1;

/// Settings of the analytics stage.
#[derive(Debug, Clone, Default)]
pub struct AnalyticsConfig {
    /// The one parameter set of every series' detector.
    pub detector: DetectorConfig,
    /// The correlator's settings.
    pub correlator: CorrelatorConfig,
}

/// A series' detector and when it last saw a value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Series {
    detector: SeriesDetector,
    last_ts: TimestampMs,
}

/// What [`Analytics::save`] writes.
#[derive(Serialize, Deserialize)]
struct SavedState {
    version: u32,
    /// The detector parameters the state was built with: other parameters start afresh.
    detector: serde_json::Value,
    next_offset: u64,
    series: HashMap<String, Series>,
    /// The latest record of every incident still open, handed back to the correlator on
    /// restore so that it goes on updating and resolving them instead of opening new ones.
    #[serde(default)]
    open_incidents: Vec<Incident>,
}

/// Saving or restoring the analytics state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("analytics state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a state this version wrote.
    #[error("analytics state {path} is unreadable ({source}); delete it to start afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Detectors per series plus the correlator. See the module docs.
pub struct Analytics {
    config: AnalyticsConfig,
    series: HashMap<String, Series>,
    correlator: Correlator,
    /// The latest record of each open incident (see [`SavedState::open_incidents`]).
    open_incidents: HashMap<String, Incident>,
    next_offset: u64,
    /// Series forgotten after this long without a value.
    idle_ms: i64,
    last_ts: TimestampMs,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("series", &self.series.len())
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

/// Series that have not had a value for an hour are dropped (a deleted VM, a renamed host).
const SERIES_IDLE_MS: i64 = 3_600_000;

impl Analytics {
    /// Fresh detectors, starting at offset 0.
    #[must_use]
    pub fn new(config: AnalyticsConfig) -> Self {
        let correlator = Correlator::new(config.correlator.clone());
        Self {
            config,
            series: HashMap::new(),
            correlator,
            open_incidents: HashMap::new(),
            next_offset: 0,
            idle_ms: SERIES_IDLE_MS,
            last_ts: 0,
        }
    }

    /// The state saved at `path`, or fresh detectors when there is none. A state written by
    /// another layout version or for other detector parameters is set aside (logged) and the
    /// detectors start afresh from its offset, so no record is scored twice.
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read or parsed.
    pub fn restore(config: AnalyticsConfig, path: &Path) -> Result<Self, StateError> {
        let mut analytics = Self::new(config);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(analytics),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let saved: SavedState =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        analytics.next_offset = saved.next_offset;
        for incident in saved.open_incidents {
            let record = Record::Incident(incident);
            analytics.correlator.observe(&record);
            analytics.remember(&record);
        }
        let same_params = serde_json::to_value(&analytics.config.detector)
            .ok()
            .as_ref()
            == Some(&saved.detector);
        if saved.version != STATE_VERSION || !same_params {
            tracing::warn!(
                path = %path.display(),
                "analytics state was written for other detector parameters; the detectors start afresh"
            );
        } else {
            analytics.last_ts = saved.series.values().map(|s| s.last_ts).max().unwrap_or(0);
            analytics.series = saved.series;
        }
        Ok(analytics)
    }

    /// Writes the state to `path` atomically.
    ///
    /// # Errors
    ///
    /// The file or its directory cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        #[derive(Serialize)]
        struct SavedRef<'a> {
            version: u32,
            detector: serde_json::Value,
            next_offset: u64,
            series: &'a HashMap<String, Series>,
            open_incidents: Vec<&'a Incident>,
        }
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let state = SavedRef {
            version: STATE_VERSION,
            detector: serde_json::to_value(&self.config.detector).unwrap_or_default(),
            next_offset: self.next_offset,
            series: &self.series,
            open_incidents: self.open_incidents.values().collect(),
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| io(std::io::Error::other(e)))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The offset of the first record not yet processed.
    #[must_use]
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Series with a detector.
    #[must_use]
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Passes over the record at `offset` (one that could not be decoded).
    pub fn skip(&mut self, offset: u64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// Processes the record at `offset`: samples are scored series by series and shown to the
    /// correlator; returns the anomalies found. Records before [`Self::next_offset`] were
    /// processed already and are skipped; anomaly, incident and recommendation records are not
    /// scored (the correlator gets anomalies straight from the detectors).
    pub fn process(&mut self, offset: u64, record: &Record) -> Vec<Record> {
        if offset < self.next_offset {
            return Vec::new();
        }
        self.next_offset = offset + 1;
        let (ts, subject, values) = match record {
            Record::HostSample(s) => (
                s.ts,
                Subject {
                    host: s.host.clone(),
                    vm: None,
                },
                host_series(s),
            ),
            Record::VmSample(s) => (
                s.ts,
                Subject {
                    host: s.host.clone(),
                    vm: Some(s.vm.clone()),
                },
                vm_series(s),
            ),
            _ => return Vec::new(),
        };
        self.correlator.observe(record);
        self.last_ts = self.last_ts.max(ts);
        let mut anomalies = Vec::new();
        for (index, (name, value)) in values.into_iter().enumerate() {
            let key = format!(
                "{}|{}|{name}",
                subject.host,
                subject.vm.as_deref().unwrap_or("")
            );
            let config = &self.config.detector;
            let series = self.series.entry(key).or_insert_with(|| Series {
                detector: SeriesDetector::new(config, None),
                last_ts: ts,
            });
            series.last_ts = ts;
            let detection = series.detector.update(ts, value);
            if detection.warming_up || detection.score < config.threshold() {
                continue;
            }
            let anomaly = Anomaly {
                id: format!("an-{offset}-{index}"),
                ts,
                subject: subject.clone(),
                series: name,
                value,
                expected: detection.expected,
                score: detection.score,
                detector: DETECTOR_NAME.to_owned(),
            };
            let record = Record::Anomaly(anomaly);
            self.correlator.observe(&record);
            anomalies.push(record);
        }
        anomalies
    }

    /// Lets the correlator open, update and resolve incidents as of `now`, and forgets series
    /// idle for an hour (as of the newest sample seen). Returns incident and recommendation
    /// records.
    pub fn tick(&mut self, now: TimestampMs) -> Vec<Record> {
        let horizon = self.last_ts - self.idle_ms;
        self.series.retain(|_, s| s.last_ts >= horizon);
        let out = self.correlator.tick(now);
        for record in &out {
            self.remember(record);
        }
        out
    }

    /// Keeps the latest record of each open incident; forgets resolved ones.
    fn remember(&mut self, record: &Record) {
        if let Record::Incident(incident) = record {
            if incident.status == IncidentStatus::Open {
                self.open_incidents
                    .insert(incident.id.clone(), incident.clone());
            } else {
                self.open_incidents.remove(&incident.id);
            }
        }
    }

    /// Incidents open as of the last tick.
    #[must_use]
    pub fn open_incidents(&self) -> usize {
        self.open_incidents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::host_sample;

    /// A host whose busy fraction wobbles around 0.2 with a deterministic pattern, then jumps
    /// to 0.95 at record `jump_at`.
    fn busy_series(n: usize, jump_at: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let mut s = host_sample("h", 1_000_000 + i as i64 * 1_000);
                let wobble = [0.0, 0.01, -0.01, 0.02, -0.02, 0.005][i % 6];
                s.cpu.busy_frac = if i >= jump_at { 0.95 } else { 0.2 + wobble };
                Record::HostSample(s)
            })
            .collect()
    }

    fn anomalies_on(records: &[Record], series: &str) -> Vec<i64> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Anomaly(a) if a.series == series => Some(a.ts),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_level_jump_is_an_anomaly_with_the_baseline_as_expected() {
        let mut analytics = Analytics::new(AnalyticsConfig::default());
        let mut out = Vec::new();
        for (offset, record) in busy_series(200, 150).iter().enumerate() {
            out.extend(analytics.process(offset as u64, record));
        }
        let jumps = anomalies_on(&out, "cpu.busy_frac");
        assert!(
            jumps.first() == Some(&(1_000_000 + 150 * 1_000)),
            "the first anomaly on cpu.busy_frac is the jump itself: {jumps:?}"
        );
        let Some(Record::Anomaly(first)) = out
            .iter()
            .find(|r| matches!(r, Record::Anomaly(a) if a.series == "cpu.busy_frac"))
        else {
            unreachable!("found above")
        };
        assert!((first.value - 0.95).abs() < 1e-9);
        assert!(
            first.expected < 0.5,
            "expected near the baseline: {first:?}"
        );
        assert_eq!(first.subject.vm, None);
    }

    #[test]
    fn saved_state_resumes_with_the_same_scores_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let records = busy_series(220, 180);

        let mut whole = Analytics::new(AnalyticsConfig::default());
        let mut expected = Vec::new();
        for (offset, record) in records.iter().enumerate() {
            expected.extend(whole.process(offset as u64, record));
        }

        let mut first = Analytics::new(AnalyticsConfig::default());
        let mut got = Vec::new();
        for (offset, record) in records[..100].iter().enumerate() {
            got.extend(first.process(offset as u64, record));
        }
        first.save(&path).expect("save");
        let mut second = Analytics::restore(AnalyticsConfig::default(), &path).expect("restore");
        assert_eq!(second.next_offset(), 100);
        assert_eq!(second.series_count(), first.series_count());
        // Records already seen are skipped, as after a crash between an append and a save.
        for (offset, record) in records.iter().enumerate() {
            got.extend(second.process(offset as u64, record));
        }
        assert_eq!(got, expected, "same anomalies, same ids");
        assert!(!anomalies_on(&got, "cpu.busy_frac").is_empty());
    }

    /// A noisy neighbour opens an incident; the daemon restarts mid-incident; the restored
    /// analytics goes on with the same incident and resolves it under its own id, opening no
    /// second one for the same problem.
    #[test]
    fn open_incidents_survive_a_restart_and_resolve_under_their_own_id() {
        use crate::correlate::test_utils::{HostSpec, VmSpec, host_sample, vm_sample};

        struct Fleet {
            host: HostSpec,
            victim: VmSpec,
            noisy: VmSpec,
            ts: i64,
            offset: u64,
        }
        impl Fleet {
            fn calm(&mut self) {
                self.victim.load(0.6, 0.02, 100.0);
                self.noisy.load(0.05, 0.01, 80.0);
                self.host.busy[1] = 0.65;
            }
            fn storm(&mut self) {
                self.victim.load(0.4, 0.45, 100.0);
                self.noisy.load(0.5, 0.3, 60_000.0);
                self.host.busy[1] = 1.0;
            }
            fn run(&mut self, analytics: &mut Analytics, seconds: usize) -> Vec<Record> {
                let mut out = Vec::new();
                for _ in 0..seconds {
                    self.ts += 1_000;
                    for record in [
                        Record::HostSample(host_sample(&self.host, self.ts)),
                        Record::VmSample(vm_sample(&self.victim, self.ts)),
                        Record::VmSample(vm_sample(&self.noisy, self.ts)),
                    ] {
                        out.extend(analytics.process(self.offset, &record));
                        self.offset += 1;
                    }
                    out.extend(analytics.tick(self.ts));
                }
                out
            }
        }
        fn incidents(records: &[Record]) -> Vec<&Incident> {
            records
                .iter()
                .filter_map(|r| match r {
                    Record::Incident(i) => Some(i),
                    _ => None,
                })
                .collect()
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let mut fleet = Fleet {
            host: HostSpec::new("h", 4),
            victim: VmSpec::builtin("h/victim", &[&[1]]),
            noisy: VmSpec::builtin("h/noisy", &[&[1]]),
            ts: 1_700_000_000_000,
            offset: 0,
        };
        fleet.host.busy = vec![0.1, 0.65, 0.1, 0.1];
        fleet.calm();
        let mut before = Analytics::new(AnalyticsConfig::default());
        assert!(incidents(&fleet.run(&mut before, 60)).is_empty());
        fleet.storm();
        let opened = fleet.run(&mut before, 20);
        let open_ids: std::collections::BTreeSet<&str> = incidents(&opened)
            .iter()
            .filter(|i| i.status == IncidentStatus::Open)
            .map(|i| i.id.as_str())
            .collect();
        assert!(!open_ids.is_empty(), "the storm opens an incident");
        assert_eq!(before.open_incidents(), open_ids.len());
        before.save(&path).expect("save");
        drop(before);

        let mut after = Analytics::restore(AnalyticsConfig::default(), &path).expect("restore");
        assert_eq!(after.open_incidents(), open_ids.len());
        let mut later = fleet.run(&mut after, 10);
        fleet.calm();
        later.extend(fleet.run(&mut after, 180));
        let later = incidents(&later);
        assert!(
            later.iter().all(|i| open_ids.contains(i.id.as_str())),
            "no second incident for the same problem: {later:#?}"
        );
        for id in &open_ids {
            assert!(
                later
                    .iter()
                    .any(|i| i.id == *id && i.status == IncidentStatus::Resolved),
                "{id} resolves after the restart: {later:#?}"
            );
        }
        assert_eq!(after.open_incidents(), 0);
    }

    #[test]
    fn a_corrupt_state_is_an_error_naming_the_file_and_a_missing_one_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let fresh = Analytics::restore(AnalyticsConfig::default(), &path).expect("no file");
        assert_eq!(fresh.next_offset(), 0);
        std::fs::write(&path, b"{not json").expect("write");
        let err = Analytics::restore(AnalyticsConfig::default(), &path).expect_err("corrupt");
        assert!(err.to_string().contains("state.json"), "{err}");
    }
}
