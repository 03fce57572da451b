//! The record pipeline inside one process: host samples into the event stream, and the event
//! stream into the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleetmind_engine::{IncidentFeed, Store};
use fleetmind_schema::{Envelope, Record};
use fleetmind_stream::{EventSink, EventSource, Offset, ReadError, SubscribeError, Subscription};
use tokio::sync::{mpsc, watch};

/// Most records handed to the engine in one ingest call.
const INGEST_BATCH: usize = 1024;

/// Progress of the stream -> engine consumer, shown by the health endpoint.
#[derive(Debug, Default)]
pub struct IngestProgress {
    /// One past the last offset ingested (0: nothing yet).
    pub next_offset: AtomicU64,
    /// Records that could not be decoded or stored (each is logged).
    pub rejected: AtomicU64,
    /// Why ingest stopped, if it did (shown by the health endpoint).
    pub stopped: std::sync::Mutex<Option<String>>,
}

impl IngestProgress {
    pub(super) fn stop(&self, reason: String) {
        tracing::error!(%reason, "engine ingest stopped");
        *self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    }

    /// Why ingest stopped, if it did.
    pub fn stopped_reason(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Subscribes at `from`, or at the earliest retained offset if `from` is gone.
pub(super) fn subscribe_at_or_after(
    source: &dyn EventSource,
    from: Offset,
) -> Result<Subscription, SubscribeError> {
    match source.subscribe(from) {
        Err(SubscribeError::Expired { earliest, .. }) => {
            tracing::warn!(%from, %earliest, "records were removed by retention before the engine read them; continuing at the earliest");
            source.subscribe(earliest)
        }
        other => other,
    }
}

/// Appends every record from `samples` to `sink` until the channel closes, batching what has
/// queued up. Returns when the collector side hangs up (on shutdown).
pub async fn append_samples(mut samples: mpsc::Receiver<Record>, sink: Arc<dyn EventSink>) {
    let mut batch = Vec::new();
    while let Some(first) = samples.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < INGEST_BATCH {
            match samples.try_recv() {
                Ok(sample) => batch.push(sample),
                Err(_) => break,
            }
        }
        let payloads: Vec<Vec<u8>> = batch
            .drain(..)
            .filter_map(|record| {
                serde_json::to_vec(&Envelope::new(record))
                    .inspect_err(|e| tracing::error!(error = %e, "cannot encode a record"))
                    .ok()
            })
            .collect();
        if payloads.is_empty() {
            continue;
        }
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        if let Err(e) = sink.append(&slices).await {
            tracing::error!(error = %e, records = slices.len(), "cannot append samples to the event log; they are lost");
        }
    }
}

/// Feeds every record of `source` from its earliest retained offset into `store`, then
/// follows the tail until `shutdown` turns true.
pub async fn consume_into_engine(
    source: Arc<dyn EventSource>,
    store: Arc<Store>,
    feed: Arc<IncidentFeed>,
    progress: Arc<IngestProgress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut subscription = match subscribe_at_or_after(source.as_ref(), Offset(0)) {
        Ok(s) => s,
        Err(e) => return progress.stop(format!("cannot subscribe to the event stream: {e}")),
    };
    let mut pending: Vec<Record> = Vec::with_capacity(INGEST_BATCH);
    let mut last_offset = None;
    loop {
        // Wait for one record (or shutdown), then take whatever else is ready without waiting.
        let next = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            next = subscription.next() => next,
        };
        if next.is_none() {
            tracing::info!("event stream closed; engine ingest stops");
            break;
        }
        let mut item = next;
        loop {
            match item {
                None => break,
                Some(Ok(record)) => {
                    last_offset = Some(record.offset);
                    match serde_json::from_slice::<Envelope>(&record.payload) {
                        Ok(envelope) => pending.push(envelope.record),
                        Err(e) => {
                            progress.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(offset = %record.offset, error = %e, "skipping undecodable record");
                        }
                    }
                }
                Some(Err(ReadError::Expired { earliest, .. })) => {
                    // Retention overtook this reader: what it missed is gone; go on from there.
                    let from = last_offset.map_or(earliest, |o| o.next().max(earliest));
                    match subscribe_at_or_after(source.as_ref(), from) {
                        Ok(s) => subscription = s,
                        Err(e) => {
                            return progress
                                .stop(format!("cannot resubscribe to the event stream: {e}"));
                        }
                    }
                    break;
                }
                Some(Err(e)) => {
                    return progress.stop(format!("cannot read the event stream: {e}"));
                }
            }
            if pending.len() >= INGEST_BATCH {
                break;
            }
            match futures::FutureExt::now_or_never(subscription.next()) {
                Some(more) => item = more,
                None => break,
            }
        }
        if !pending.is_empty() {
            for record in &pending {
                feed.observe(record);
            }
            let count = pending.len();
            if let Err(e) = store.ingest(pending.drain(..)) {
                progress.rejected.fetch_add(count as u64, Ordering::Relaxed);
                tracing::error!(error = %e, records = count, "engine rejected records");
            }
        }
        if let Some(offset) = last_offset {
            progress.next_offset.store(offset.0 + 1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fleetmind_schema::{CpuFractions, Envelope, HostSample, MemorySample, Record, VmstatRates};
    use fleetmind_stream::{EventLog, LogConfig, RetentionPolicy};

    use super::*;

    fn payload(ts: i64) -> Vec<u8> {
        serde_json::to_vec(&Envelope::new(Record::HostSample(HostSample {
            ts,
            host: "h".into(),
            interval_ms: 1000,
            cpus: 1,
            cpu: CpuFractions::default(),
            per_cpu: vec![],
            load1: 0.0,
            procs_running: 0,
            procs_blocked: 0,
            ctxt_per_s: 0.0,
            mem: MemorySample::default(),
            psi: None,
            vmstat: VmstatRates::default(),
            numa: vec![],
        })))
        .expect("encode")
    }

    /// Retention removed records the engine never read: it starts at the earliest retained
    /// offset, ingests everything from there, and reports no stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn engine_starts_at_the_earliest_retained_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(
            dir.path(),
            LogConfig {
                segment_bytes: 16 << 10,
                retention: RetentionPolicy {
                    max_bytes: Some(64 << 10),
                    max_age: None,
                },
                ..LogConfig::default()
            },
        )
        .expect("open");
        let now = fleetmind_schema::now_ms();
        for i in 0..400 {
            log.append_blocking(&[&payload(now - 400 + i)])
                .expect("append");
        }
        log.enforce_retention().expect("retention");
        let earliest = log.earliest_offset();
        let end = log.end_offset();
        assert!(
            earliest > Offset(0),
            "retention removed nothing; shrink the segments"
        );

        let store = Arc::new(Store::default());
        let progress = Arc::new(IngestProgress::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(consume_into_engine(
            Arc::new(log.clone()),
            store.clone(),
            Arc::new(IncidentFeed::default()),
            progress.clone(),
            stop_rx,
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while progress.next_offset.load(Ordering::Acquire) < end.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "engine did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).expect("send stop");
        task.await.expect("consumer ends");
        assert_eq!(progress.stopped_reason(), None);
        assert_eq!(
            store.row_counts()["host_samples"] as u64,
            end.0 - earliest.0,
            "every retained record, and only those"
        );
    }
}
