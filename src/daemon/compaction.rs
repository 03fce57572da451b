//! The Parquet tier in the daemon (`run` and `server` roles): the compactor is opened, and its
//! tier attached to the engine, before the API serves a query; then a compaction pass and the
//! Parquet retention run every `engine.compact_interval` on the blocking pool until shutdown.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use fleetmind_engine::{ArchiveConfig, Compactor, Store};
use fleetmind_stream::EventLog;
use tokio::sync::watch;

use crate::config::Config;

/// What the health endpoint shows of the Parquet tier: updated after every pass.
#[derive(Debug, Default)]
pub(super) struct CompactionStatus(std::sync::Mutex<serde_json::Value>);

impl CompactionStatus {
    fn set(&self, value: serde_json::Value) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }

    /// The latest pass: when, the watermark, totals since start, the last error.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let value = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if value.is_null() {
            serde_json::json!({"passes": 0})
        } else {
            value
        }
    }
}

/// Opens the tier under `data_dir/parquet` (deleting the files of a step that crashed before
/// its commit), attaches it to `store`, and returns the compaction loop to spawn.
///
/// # Errors
///
/// The tier cannot be opened: its directory cannot be created, or its progress file is
/// unreadable or damaged (the message names the file).
pub(super) async fn start(
    config: &Config,
    data_dir: &Path,
    log: EventLog,
    store: Arc<Store>,
    status: Arc<CompactionStatus>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let archive = ArchiveConfig {
        compact_after: config.engine.compact_after,
        compact_interval: config.engine.compact_interval,
        retention: config.engine.parquet_retention,
        max_bytes: config.engine.parquet_max_bytes,
        ..ArchiveConfig::new(data_dir.join("parquet"))
    };
    let compactor = tokio::task::spawn_blocking(move || Compactor::open(archive, log))
        .await
        .context("the Parquet tier's open task failed")?
        .context("cannot open the Parquet tier")?;
    store.attach_archive(compactor.archive());
    Ok(run(
        compactor,
        store,
        status,
        config.engine.compact_interval,
        shutdown.clone(),
    ))
}

/// A pass at once (catching up on what arrived while the daemon was down), then one per
/// `interval`. A pass in progress at shutdown stops after its current step.
async fn run(
    mut compactor: Compactor,
    store: Arc<Store>,
    status: Arc<CompactionStatus>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let (mut passes, mut rows, mut lost) = (0_u64, 0_u64, 0_u64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let flag = Arc::clone(&stop);
        let mut pass = tokio::task::spawn_blocking(move || {
            let now = fleetmind_schema::now_ms();
            let compacted = compactor.run(now, &flag);
            let retention = compactor.enforce_retention(now);
            (compactor, now, compacted, retention)
        });
        let finished = tokio::select! {
            outcome = &mut pass => Some(outcome),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let outcome = match finished {
            Some(outcome) => outcome,
            None => {
                stop.store(true, Ordering::Release);
                pass.await
            }
        };
        let (back, now, compacted, retention) = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "the compaction task failed; Parquet compaction stops");
                return;
            }
        };
        compactor = back;
        passes += 1;
        let error = match &compacted {
            Ok(report) => {
                rows += report.rows_written;
                lost += report.lost_offsets;
                None
            }
            Err(e) => Some(e.to_string()),
        };
        status.set(serde_json::json!({
            "passes": passes,
            "last_pass_ts": now,
            "watermark": compactor.archive().watermark(),
            "rows_written": rows,
            "lost_offsets": lost,
            "last_error": error,
        }));
        match compacted {
            Ok(report) if report.rows_written > 0 || report.lost_offsets > 0 => {
                tracing::info!(
                    rows = report.rows_written,
                    files = report.files_written,
                    bytes = report.bytes_written,
                    records_read = report.records_read,
                    skipped = report.skipped,
                    watermark = ?report.watermark,
                    elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
                    "records compacted into Parquet"
                );
            }
            Ok(report) => tracing::debug!(watermark = ?report.watermark, "nothing to compact"),
            Err(e) => {
                tracing::error!(error = %e, "Parquet compaction failed; retrying next interval")
            }
        }
        if let Err(e) = retention {
            tracing::error!(error = %e, "Parquet retention failed");
        }
        warn_if_behind(&compactor, &store, now);
    }
}

/// Memory keeps rows the tier does not serve yet only up to a limit; past it, rows are in
/// neither tier (still in the event log) until compaction catches up.
fn warn_if_behind(compactor: &Compactor, store: &Store, now: i64) {
    let archive = compactor.archive();
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let kept_from = now
        .saturating_sub(millis(store.config().memory_window))
        .saturating_sub(millis(archive.hold()));
    if let Some(watermark) = archive.watermark()
        && watermark < kept_from
    {
        tracing::warn!(
            watermark,
            memory_kept_from = kept_from,
            "Parquet compaction is behind: rows between the watermark and the memory window \
             are not queryable until it catches up"
        );
    }
}
