//! The in-memory store: one Arrow table per record kind, holding the records of the memory
//! window.
//!
//! Writers call [`Store::ingest`] with whatever records arrived; readers take a snapshot (the
//! chunk lists, cloned: each chunk is a few `Arc`s) under a short read lock and never hold the
//! lock while a query runs, so a slow query does not stall ingestion. The store also keeps the
//! latest [`HostSample`] of every host, which the host list needs without running SQL.
//! Queries themselves are in [`crate::query`].
//!
//! With a Parquet tier attached ([`Store::attach_archive`]), queries read the memory rows from
//! the tier's watermark on and the Parquet files below it, and the memory window does not drop
//! rows the tier does not serve yet (see [`crate::archive`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use fleetmind_schema::{
    Action, Anomaly, ArrowRecord, AuditRecord, CollectorHealth, HostSample, Incident,
    Recommendation, Record, RecordKind, TimestampMs, ToBatchError, VmSample, now_ms,
    to_record_batch,
};

use crate::archive::Archive;
use crate::chunk::{self, Chunk};
use crate::executor::Executor;
use crate::retention::{self, RetentionError};

/// How the store behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// How far back the store keeps rows; older rows are dropped on ingest and by
    /// [`Store::enforce_window`]. Default 6 hours. With a Parquet tier attached, rows at or
    /// after its watermark are kept even when older, up to [`Archive::hold`] more.
    pub memory_window: Duration,
    /// Threads that run queries, and the partitions a query is split into. Default 2.
    pub query_threads: usize,
    /// Queries that may run at once; more are refused with `QueryError::Busy`. A query keeps
    /// its slot until its work has really stopped (past a timeout, until DataFusion yields),
    /// so memory stays bounded by this times `QueryLimits::max_memory_bytes`. Default 4.
    pub max_concurrent_queries: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_window: Duration::from_secs(6 * 3600),
            query_threads: 2,
            max_concurrent_queries: 4,
        }
    }
}

/// Failure of [`Store::ingest`]. Records of the kinds not named in the error were stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Records of one kind did not fit their Arrow schema; none of that kind were stored.
    #[error("{count} records for table {table} were not stored")]
    Convert {
        /// Table the records were for.
        table: &'static str,
        /// How many records were lost.
        count: usize,
        /// Why they did not convert.
        #[source]
        source: ToBatchError,
    },
    /// Records of one kind lack the `ts` column the store orders rows by (a schema bug); none
    /// of that kind were stored.
    #[error("{count} records for table {table} were not stored")]
    NoTimestamp {
        /// Table the records were for.
        table: &'static str,
        /// How many records were lost.
        count: usize,
        /// The Arrow failure.
        #[source]
        source: ArrowError,
    },
    /// The records were stored, but old rows could not be dropped.
    #[error("records were stored but the memory window was not enforced")]
    Retention(#[from] RetentionError),
    /// The records were stored, but small batches could not be compacted.
    #[error("records were stored but table {table} could not be compacted")]
    Compact {
        /// Table concerned.
        table: &'static str,
        /// The Arrow failure.
        #[source]
        source: ArrowError,
    },
}

/// The engine's tables in memory. Share it as `Arc<Store>`.
pub struct Store {
    config: StoreConfig,
    inner: RwLock<Inner>,
    executor: Executor,
    query_slots: Arc<tokio::sync::Semaphore>,
    archive: RwLock<Option<Arc<Archive>>>,
}

struct Inner {
    /// Every kind has an entry, empty or not.
    tables: BTreeMap<RecordKind, Vec<Chunk>>,
    /// Latest sample per host, by `ts`.
    latest_hosts: BTreeMap<String, HostSample>,
}

/// One table as a query sees it: a consistent, cheap copy of the batch list.
#[derive(Debug, Clone)]
pub(crate) struct TableSnapshot {
    pub(crate) name: &'static str,
    pub(crate) schema: SchemaRef,
    pub(crate) batches: Vec<RecordBatch>,
}

/// The Parquet tier as one query sees it: the files under `root`, cut at `watermark`.
#[derive(Debug, Clone)]
pub(crate) struct TierSnapshot {
    pub(crate) root: std::path::PathBuf,
    pub(crate) watermark: TimestampMs,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(StoreConfig::default())
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("row_counts", &self.row_counts())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// An empty store with every table registered.
    #[must_use]
    pub fn new(config: StoreConfig) -> Self {
        let tables = RecordKind::ALL
            .into_iter()
            .map(|k| (k, Vec::new()))
            .collect();
        Self {
            executor: Executor::new(config.query_threads),
            query_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_queries.max(1),
            )),
            config,
            inner: RwLock::new(Inner {
                tables,
                latest_hosts: BTreeMap::new(),
            }),
            archive: RwLock::new(None),
        }
    }

    /// Makes queries read the Parquet tier `archive` below its watermark (and memory from it
    /// on), and keeps memory rows the tier does not serve yet. Replaces an earlier archive.
    pub fn attach_archive(&self, archive: Arc<Archive>) {
        *self.archive.write().unwrap_or_else(PoisonError::into_inner) = Some(archive);
    }

    /// The attached Parquet tier, if any.
    #[must_use]
    pub fn archive(&self) -> Option<Arc<Archive>> {
        self.archive
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The configuration the store was built with.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Stores records, then drops rows older than the memory window measured from the wall
    /// clock ([`now_ms`]). See [`Store::ingest_at`].
    ///
    /// # Errors
    ///
    /// As [`Store::ingest_at`].
    pub fn ingest(&self, records: impl IntoIterator<Item = Record>) -> Result<(), IngestError> {
        self.ingest_at(records, now_ms())
    }

    /// Stores records, grouped by kind into one batch each, then drops rows older than
    /// `now - memory_window` (records that arrive already older are dropped at once; with a
    /// Parquet tier attached, see [`StoreConfig::memory_window`]) and compacts tables that hold
    /// too many small batches.
    ///
    /// # Errors
    ///
    /// [`IngestError::Convert`] or [`IngestError::NoTimestamp`] if records of one kind do
    /// not fit their table (the other kinds are stored); [`IngestError::Retention`] or [`IngestError::Compact`] if the
    /// records were stored but the housekeeping after failed.
    pub fn ingest_at(
        &self,
        records: impl IntoIterator<Item = Record>,
        now: TimestampMs,
    ) -> Result<(), IngestError> {
        let grouped = ByKind::group(records);
        let latest = latest_per_host(&grouped.host_samples);
        let (batches, convert_error) = grouped.batches();
        // Conversion and time ranges are worked out before the lock is taken.
        let mut first_error = convert_error;
        let mut chunks = Vec::with_capacity(batches.len());
        for (kind, batch) in batches {
            let count = batch.num_rows();
            match Chunk::new(batch) {
                Ok(c) => chunks.push((kind, c)),
                Err(source) => {
                    first_error.get_or_insert(IngestError::NoTimestamp {
                        table: kind.table_name(),
                        count,
                        source,
                    });
                }
            }
        }

        let mut inner = self.write();
        for (kind, chunk) in chunks {
            inner.tables.entry(kind).or_default().push(chunk);
        }
        for sample in latest {
            match inner.latest_hosts.get(&sample.host) {
                Some(known) if known.ts > sample.ts => {}
                _ => {
                    inner.latest_hosts.insert(sample.host.clone(), sample);
                }
            }
        }
        if let Err(e) = inner.trim(self.cutoff(now)) {
            first_error.get_or_insert(e.into());
        }
        if let Err(e) = inner.compact() {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Drops every row with `ts < now - memory_window` (with a Parquet tier attached, see
    /// [`StoreConfig::memory_window`]), and hosts whose latest sample is that old from
    /// [`Store::latest_hosts`]. Returns the number of rows dropped.
    ///
    /// # Errors
    ///
    /// [`RetentionError`] if a table could not be trimmed; its rows are then kept, and the
    /// other tables are trimmed.
    pub fn enforce_window(&self, now: TimestampMs) -> Result<usize, RetentionError> {
        self.write().trim(self.cutoff(now))
    }

    /// The latest sample of every host in the window, sorted by host.
    #[must_use]
    pub fn latest_hosts(&self) -> Vec<HostSample> {
        self.read().latest_hosts.values().cloned().collect()
    }

    /// Rows per table, every table included.
    #[must_use]
    pub fn row_counts(&self) -> BTreeMap<&'static str, usize> {
        self.read()
            .tables
            .iter()
            .map(|(kind, chunks)| (kind.table_name(), chunks.iter().map(Chunk::rows).sum()))
            .collect()
    }

    /// Every table's batches as of now; holds the read lock only while cloning the lists.
    pub(crate) fn snapshot(&self) -> Vec<TableSnapshot> {
        let inner = self.read();
        inner
            .tables
            .iter()
            .map(|(&kind, chunks)| TableSnapshot {
                name: kind.table_name(),
                schema: schema_of(kind),
                batches: chunks.iter().map(|c| c.batch.clone()).collect(),
            })
            .collect()
    }

    /// The Parquet tier for a query: `None` without one, or before it serves anything.
    pub(crate) fn tier_snapshot(&self) -> Option<TierSnapshot> {
        let archive = self.archive()?;
        Some(TierSnapshot {
            root: archive.root().to_path_buf(),
            watermark: archive.watermark()?,
        })
    }

    /// Takes a query slot, or says how many are all in use.
    pub(crate) fn query_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, usize> {
        self.query_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.config.max_concurrent_queries.max(1))
    }

    pub(crate) fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Rows older than this leave memory: `now - memory_window`, or with a Parquet tier, the
    /// older of that and the tier's watermark, but no older than [`Archive::hold`] beyond the
    /// window.
    fn cutoff(&self, now: TimestampMs) -> TimestampMs {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let window_cut = now.saturating_sub(millis(self.config.memory_window));
        let Some(archive) = self.archive() else {
            return window_cut;
        };
        let hold_cut = window_cut.saturating_sub(millis(archive.hold()));
        archive
            .watermark()
            .map_or(hold_cut, |w| w.min(window_cut).max(hold_cut))
    }

    // A panic under the lock cannot leave a table half-written (each table is replaced
    // whole), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Drops rows and hosts older than `cutoff`; returns the rows dropped.
    fn trim(&mut self, cutoff: TimestampMs) -> Result<usize, RetentionError> {
        let mut total = 0;
        let mut first_error = None;
        for (&kind, chunks) in &mut self.tables {
            let (kept, dropped, error) = retention::retain_since(std::mem::take(chunks), cutoff);
            *chunks = kept;
            total += dropped;
            if let Some(e) = error {
                first_error.get_or_insert(RetentionError::new(kind, e));
            }
        }
        self.latest_hosts.retain(|_, s| s.ts >= cutoff);
        first_error.map_or(Ok(total), Err)
    }

    fn compact(&mut self) -> Result<(), IngestError> {
        let mut first_error = None;
        for (&kind, chunks) in &mut self.tables {
            let taken = std::mem::take(chunks);
            let fallback = taken.clone();
            *chunks = match chunk::compact(taken) {
                Ok(compacted) => compacted,
                Err(source) => {
                    first_error.get_or_insert(IngestError::Compact {
                        table: kind.table_name(),
                        source,
                    });
                    fallback
                }
            };
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The Arrow schema of a kind's table.
pub(crate) fn schema_of(kind: RecordKind) -> SchemaRef {
    match kind {
        RecordKind::HostSample => HostSample::arrow_schema(),
        RecordKind::VmSample => VmSample::arrow_schema(),
        RecordKind::Anomaly => Anomaly::arrow_schema(),
        RecordKind::Incident => Incident::arrow_schema(),
        RecordKind::Recommendation => Recommendation::arrow_schema(),
        RecordKind::Action => Action::arrow_schema(),
        RecordKind::Audit => AuditRecord::arrow_schema(),
        RecordKind::CollectorHealth => CollectorHealth::arrow_schema(),
    }
}

/// The newest sample of each host among `samples`; of two with the same `ts`, the later one.
fn latest_per_host(samples: &[HostSample]) -> Vec<HostSample> {
    let mut latest: BTreeMap<&str, &HostSample> = BTreeMap::new();
    for s in samples {
        match latest.get(s.host.as_str()) {
            Some(known) if known.ts > s.ts => {}
            _ => {
                latest.insert(&s.host, s);
            }
        }
    }
    latest.into_values().cloned().collect()
}

/// Records sorted into one vector per kind.
#[derive(Default)]
pub(crate) struct ByKind {
    host_samples: Vec<HostSample>,
    vm_samples: Vec<VmSample>,
    anomalies: Vec<Anomaly>,
    incidents: Vec<Incident>,
    recommendations: Vec<Recommendation>,
    actions: Vec<Action>,
    audit: Vec<AuditRecord>,
    collector_health: Vec<CollectorHealth>,
}

impl ByKind {
    pub(crate) fn group(records: impl IntoIterator<Item = Record>) -> Self {
        let mut by = Self::default();
        for record in records {
            match record {
                Record::HostSample(r) => by.host_samples.push(r),
                Record::VmSample(r) => by.vm_samples.push(r),
                Record::Anomaly(r) => by.anomalies.push(r),
                Record::Incident(r) => by.incidents.push(r),
                Record::Recommendation(r) => by.recommendations.push(r),
                Record::Action(r) => by.actions.push(r),
                Record::Audit(r) => by.audit.push(r),
                Record::CollectorHealth(r) => by.collector_health.push(r),
            }
        }
        by
    }

    /// The records back, kind by kind.
    pub(crate) fn into_records(self) -> impl Iterator<Item = Record> {
        let Self {
            host_samples,
            vm_samples,
            anomalies,
            incidents,
            recommendations,
            actions,
            audit,
            collector_health,
        } = self;
        host_samples
            .into_iter()
            .map(Record::HostSample)
            .chain(vm_samples.into_iter().map(Record::VmSample))
            .chain(anomalies.into_iter().map(Record::Anomaly))
            .chain(incidents.into_iter().map(Record::Incident))
            .chain(recommendations.into_iter().map(Record::Recommendation))
            .chain(actions.into_iter().map(Record::Action))
            .chain(audit.into_iter().map(Record::Audit))
            .chain(collector_health.into_iter().map(Record::CollectorHealth))
    }

    /// One batch per non-empty kind, and the first conversion error.
    pub(crate) fn batches(&self) -> (Vec<(RecordKind, RecordBatch)>, Option<IngestError>) {
        let mut out = Vec::new();
        let mut first_error = None;
        let mut add = |result: Option<Result<(RecordKind, RecordBatch), IngestError>>| match result
        {
            Some(Ok(kb)) => out.push(kb),
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {}
        };
        add(convert(&self.host_samples));
        add(convert(&self.vm_samples));
        add(convert(&self.anomalies));
        add(convert(&self.incidents));
        add(convert(&self.recommendations));
        add(convert(&self.actions));
        add(convert(&self.audit));
        add(convert(&self.collector_health));
        (out, first_error)
    }
}

fn convert<T: ArrowRecord>(rows: &[T]) -> Option<Result<(RecordKind, RecordBatch), IngestError>> {
    if rows.is_empty() {
        return None;
    }
    Some(
        to_record_batch(rows)
            .map(|b| (T::KIND, b))
            .map_err(|source| IngestError::Convert {
                table: T::KIND.table_name(),
                count: rows.len(),
                source,
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{anomaly, host_records, host_sample};

    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn every_table_exists_when_empty() {
        let counts = Store::default().row_counts();
        let names: Vec<_> = RecordKind::ALL.iter().map(|k| k.table_name()).collect();
        assert_eq!(
            counts.keys().copied().collect::<Vec<_>>().len(),
            names.len()
        );
        for name in names {
            assert_eq!(counts[name], 0, "{name}");
        }
    }

    #[test]
    fn ingest_groups_by_kind() {
        let store = Store::default();
        let now = 10 * HOUR_MS;
        let mut records = host_records(&["a", "b"], now, 3);
        records.push(Record::Anomaly(anomaly("a", now)));
        store.ingest_at(records, now).expect("ingests");
        let counts = store.row_counts();
        assert_eq!(counts["host_samples"], 6);
        assert_eq!(counts["anomalies"], 1);
        assert_eq!(counts["vm_samples"], 0);
    }

    #[test]
    fn window_drops_old_rows_on_ingest_and_on_demand() {
        let store = Store::new(StoreConfig {
            memory_window: Duration::from_millis(HOUR_MS as u64),
            ..StoreConfig::default()
        });
        let now = 10 * HOUR_MS;
        let old = Record::HostSample(host_sample("old", now - 2 * HOUR_MS));
        let edge = Record::HostSample(host_sample("edge", now - HOUR_MS));
        let new = Record::HostSample(host_sample("new", now));
        store.ingest_at([old, edge, new], now).expect("ingests");
        assert_eq!(store.row_counts()["host_samples"], 2);
        let hosts: Vec<_> = store.latest_hosts().into_iter().map(|s| s.host).collect();
        assert_eq!(hosts, ["edge", "new"]);

        assert_eq!(store.enforce_window(now + 1).expect("trims"), 1);
        assert_eq!(store.row_counts()["host_samples"], 1);
        let hosts: Vec<_> = store.latest_hosts().into_iter().map(|s| s.host).collect();
        assert_eq!(hosts, ["new"]);
    }

    #[test]
    fn many_small_ingests_are_compacted() {
        let store = Store::default();
        let now = 10 * HOUR_MS;
        for i in 0..200 {
            store
                .ingest_at([Record::HostSample(host_sample("a", now + i))], now)
                .expect("ingests");
        }
        let snapshot = store.snapshot();
        let hosts = snapshot
            .iter()
            .find(|t| t.name == "host_samples")
            .expect("table exists");
        assert!(hosts.batches.len() <= chunk::MAX_SMALL_CHUNKS + 1);
        assert_eq!(
            hosts
                .batches
                .iter()
                .map(RecordBatch::num_rows)
                .sum::<usize>(),
            200
        );
    }

    #[test]
    fn latest_hosts_keeps_newest_whatever_the_arrival_order() {
        let store = Store::default();
        let now = 10 * HOUR_MS;
        let mut late = host_sample("a", now - 1000);
        late.load1 = 1.0;
        let mut newest = host_sample("a", now);
        newest.load1 = 2.0;
        store
            .ingest_at([Record::HostSample(newest)], now)
            .expect("ingests");
        store
            .ingest_at([Record::HostSample(late)], now)
            .expect("ingests");
        let latest = store.latest_hosts();
        assert_eq!(latest.len(), 1);
        assert!((latest[0].load1 - 2.0).abs() < f64::EPSILON);
    }
}
