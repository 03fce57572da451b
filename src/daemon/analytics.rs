//! The analytics task: reads the event log, scores every sample's series, correlates, and
//! appends anomalies, incidents and recommendations back to the log (from where the engine and
//! the incident feed take them like any other record).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetmind_engine::analytics::{Analytics, AnalyticsConfig};
use fleetmind_schema::{Envelope, Record};
use fleetmind_stream::{EventSink, EventSource, Offset, ReadError};
use tokio::sync::watch;

/// How often the state is saved while running (and once more at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// How often the correlator is asked to resolve incidents when no records arrive.
const TICK_EVERY: Duration = Duration::from_secs(5);
/// Most records processed before the outputs are appended.
const BATCH: usize = 1024;

/// Progress shown by the health endpoint.
#[derive(Debug, Default)]
pub struct AnalyticsProgress {
    /// One past the last offset processed.
    pub next_offset: AtomicU64,
    /// Series with a detector.
    pub series: AtomicU64,
    /// Anomalies written since start.
    pub anomalies: AtomicU64,
    /// Incident and recommendation records written since start.
    pub incident_records: AtomicU64,
    /// Why the task stopped, if it did.
    pub stopped: std::sync::Mutex<Option<String>>,
}

impl AnalyticsProgress {
    fn stop(&self, reason: String) {
        tracing::error!(%reason, "analytics stopped");
        *self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    }

    /// Records that analytics does not run by configuration (shown by the health endpoint).
    pub fn turned_off(&self, reason: &str) {
        tracing::info!(%reason, "analytics off");
        *self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.to_owned());
    }

    /// The health endpoint's view.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "next_offset": self.next_offset.load(Ordering::Acquire),
            "series": self.series.load(Ordering::Relaxed),
            "anomalies": self.anomalies.load(Ordering::Relaxed),
            "incident_records": self.incident_records.load(Ordering::Relaxed),
            "stopped": self
                .stopped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        })
    }
}

/// What woke the loop.
enum Wake {
    Stop,
    Tick,
    Save,
    Read(Option<Result<fleetmind_stream::Record, ReadError>>),
}

/// Runs until shutdown: restores the state from `state_path`, follows `source` from where the
/// state left off, and appends what it finds to `sink`.
pub async fn run_analytics(
    config: AnalyticsConfig,
    state_path: PathBuf,
    source: Arc<dyn EventSource>,
    sink: Arc<dyn EventSink>,
    progress: Arc<AnalyticsProgress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let restore = {
        let path = state_path.clone();
        tokio::task::spawn_blocking(move || Analytics::restore(config, &path)).await
    };
    let mut analytics = match restore {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return progress.stop(e.to_string()),
        Err(e) => return progress.stop(format!("analytics restore task failed: {e}")),
    };
    let from = Offset(analytics.next_offset());
    let mut subscription = match super::pipeline::subscribe_at_or_after(source.as_ref(), from) {
        Ok(s) => s,
        Err(e) => return progress.stop(format!("cannot subscribe to the event stream: {e}")),
    };
    tracing::info!(from = %from, series = analytics.series_count(), "analytics started");
    let mut out: Vec<Record> = Vec::new();
    let mut tick = tokio::time::interval(TICK_EVERY);
    let mut save = tokio::time::interval(SAVE_EVERY);
    save.tick().await;
    loop {
        let wake = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => Wake::Stop,
            _ = tick.tick() => Wake::Tick,
            _ = save.tick() => Wake::Save,
            next = subscription.next() => Wake::Read(next),
        };
        let first = match wake {
            Wake::Stop | Wake::Read(None) => break,
            Wake::Tick => {
                out.extend(analytics.tick(fleetmind_schema::now_ms()));
                None
            }
            Wake::Save => {
                save_state(&analytics, &state_path).await;
                None
            }
            Wake::Read(item) => item,
        };
        let mut newest = None;
        let mut item = first;
        let mut taken = 0;
        while let Some(read) = item.take() {
            match read {
                Ok(record) => {
                    match serde_json::from_slice::<Envelope>(&record.payload) {
                        Ok(envelope) => {
                            if let Some(ts) = sample_ts(&envelope.record) {
                                newest = Some(newest.map_or(ts, |n: i64| n.max(ts)));
                            }
                            out.extend(analytics.process(record.offset.0, &envelope.record));
                        }
                        // The engine consumer counts and logs undecodable records.
                        Err(_) => analytics.skip(record.offset.0),
                    }
                }
                Err(ReadError::Expired { earliest, .. }) => {
                    tracing::warn!(%earliest, "retention removed records before analytics read them; continuing at the earliest");
                    match source.subscribe(earliest) {
                        Ok(s) => subscription = s,
                        Err(e) => {
                            return progress
                                .stop(format!("cannot resubscribe to the event stream: {e}"));
                        }
                    }
                    break;
                }
                Err(e) => return progress.stop(format!("cannot read the event stream: {e}")),
            }
            taken += 1;
            if taken >= BATCH {
                break;
            }
            if let Some(more) = futures::FutureExt::now_or_never(subscription.next()) {
                item = more;
            }
        }
        if let Some(ts) = newest {
            // Data time: a replay of old records resolves incidents as of their own time.
            out.extend(analytics.tick(ts));
        }
        if !out.is_empty() {
            append(&sink, &mut out, &progress).await;
        }
        progress
            .next_offset
            .store(analytics.next_offset(), Ordering::Release);
        progress
            .series
            .store(analytics.series_count() as u64, Ordering::Relaxed);
    }
    if !out.is_empty() {
        append(&sink, &mut out, &progress).await;
    }
    save_state(&analytics, &state_path).await;
}

fn sample_ts(record: &Record) -> Option<i64> {
    match record {
        Record::HostSample(s) => Some(s.ts),
        Record::VmSample(s) => Some(s.ts),
        _ => None,
    }
}

async fn append(sink: &Arc<dyn EventSink>, out: &mut Vec<Record>, progress: &AnalyticsProgress) {
    let anomalies = out
        .iter()
        .filter(|r| matches!(r, Record::Anomaly(_)))
        .count() as u64;
    let others = out.len() as u64 - anomalies;
    let payloads: Vec<Vec<u8>> = out
        .drain(..)
        .filter_map(|record| {
            serde_json::to_vec(&Envelope::new(record))
                .inspect_err(|e| tracing::error!(error = %e, "cannot encode an analytics record"))
                .ok()
        })
        .collect();
    let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    match sink.append(&slices).await {
        Ok(_) => {
            progress.anomalies.fetch_add(anomalies, Ordering::Relaxed);
            progress
                .incident_records
                .fetch_add(others, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, records = slices.len(), "cannot append analytics records");
        }
    }
}

async fn save_state(analytics: &Analytics, path: &std::path::Path) {
    // The state is small (a few KiB per series); serialising it in place is cheaper than
    // cloning it for a blocking task.
    if let Err(e) = tokio::task::block_in_place(|| analytics.save(path)) {
        tracing::error!(error = %e, "cannot save the analytics state");
    }
}
