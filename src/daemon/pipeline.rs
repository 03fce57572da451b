//! The record pipeline inside one process: host samples into the event stream, and the event
//! stream into the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleetmind_engine::Store;
use fleetmind_schema::{Envelope, HostSample, Record};
use fleetmind_stream::{EventSink, EventSource, Offset, SubscribeError};
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
}

/// Appends every sample from `samples` to `sink` until the channel closes, batching what has
/// queued up. Returns when the collector side hangs up (on shutdown).
pub async fn append_samples(mut samples: mpsc::Receiver<HostSample>, sink: Arc<dyn EventSink>) {
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
            .filter_map(|sample| {
                serde_json::to_vec(&Envelope::new(Record::HostSample(sample)))
                    .inspect_err(|e| tracing::error!(error = %e, "cannot encode host sample"))
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
    progress: Arc<IngestProgress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut subscription = match source.subscribe(Offset(0)) {
        Ok(s) => s,
        Err(SubscribeError::Expired { earliest, .. }) => match source.subscribe(earliest) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe the engine to the event stream");
                return;
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe the engine to the event stream");
            return;
        }
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
                Some(Err(e)) => {
                    tracing::error!(error = %e, "engine cannot read the event stream; stopping ingest");
                    return;
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
