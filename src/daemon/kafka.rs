//! The Kafka side of the server role: the shipper emptying the embedded log (the spill) into
//! the broker in order, and the engine's consumer group reading the topics back into the store.
//! The embedded log stays the write-ahead record of everything collected or ingested here, so a
//! broker outage loses nothing: the shipper resumes from its persisted offset when it returns.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleetmind_engine::{IncidentFeed, Store};
use fleetmind_schema::Envelope;
use fleetmind_stream::EventSource;
use tokio::sync::watch;

use super::pipeline::IngestProgress;

/// The running shipper and consumer, and their progress for the health endpoint.
pub struct KafkaPipeline {
    brokers: String,
    shipper: Arc<fleetmind_stream::ShipperStatus>,
    consumer: Arc<fleetmind_stream::ConsumerStatus>,
    consumer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl KafkaPipeline {
    /// The consumer's task, to await at shutdown (once; later calls get a finished task).
    pub fn consumer_handle(&self) -> tokio::task::JoinHandle<()> {
        self.consumer_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| tokio::spawn(async {}))
    }

    /// The stream part of the health answer, given the embedded log's end offset.
    pub fn status_fn(&self) -> impl Fn(u64) -> serde_json::Value + Send + Sync + 'static {
        let (brokers, shipper, consumer) = (
            self.brokers.clone(),
            Arc::clone(&self.shipper),
            Arc::clone(&self.consumer),
        );
        move |end_offset| {
            let s = shipper.snapshot();
            let c = consumer.snapshot();
            serde_json::json!({
                "kind": "kafka",
                "brokers": brokers,
                "end_offset": end_offset,
                "shipper": {
                    "shipped_offset": s.shipped_offset.0,
                    "lag": s.lag,
                    "peak_lag": s.peak_lag,
                    "in_flight": s.in_flight,
                    "delivered": s.delivered,
                    "failures": s.failures,
                    "lost": s.lost,
                    "broker_reachable": s.broker_reachable,
                    "last_error": s.last_error,
                },
                "consumer": {
                    "processed": c.processed,
                    "duplicates_dropped": c.duplicates_dropped,
                    "commits": c.commits,
                    "broker_reachable": c.broker_reachable,
                    "last_error": c.last_error,
                },
            })
        }
    }
}

/// Starts the shipper and the engine's consumer.
///
/// # Errors
///
/// If the shipper's state directory cannot be created.
pub fn start_kafka(
    config: fleetmind_stream::KafkaConfig,
    data_dir: &std::path::Path,
    source: Arc<dyn EventSource>,
    store: Arc<Store>,
    feed: Arc<IncidentFeed>,
    progress: Arc<IngestProgress>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<KafkaPipeline> {
    let state_dir = data_dir.join("kafka");
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the Kafka state directory {}: {e}",
            state_dir.display()
        )
    })?;
    let shipper = fleetmind_stream::ShipperStatus::new();
    let consumer = fleetmind_stream::ConsumerStatus::new();
    tracing::info!(brokers = %config.brokers, prefix = %config.topic_prefix, "event stream: Kafka");
    {
        let (config, status, shutdown) = (config.clone(), Arc::clone(&shipper), shutdown.clone());
        let state = state_dir.join("shipped-offset");
        tokio::spawn(async move {
            if let Err(e) =
                fleetmind_stream::run_shipper(source, state, config, status, shutdown).await
            {
                tracing::error!(error = %e, "Kafka shipper stopped");
            }
        });
    }
    let brokers = config.brokers.clone();
    let consumer_task = {
        let (status, shutdown) = (Arc::clone(&consumer), shutdown.clone());
        let brokers = brokers.clone();
        tokio::spawn(async move {
            let kinds: Vec<&str> = fleetmind_schema::RecordKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect();
            let handler = |payload: &[u8]| -> Result<(), std::convert::Infallible> {
                match serde_json::from_slice::<Envelope>(payload) {
                    Ok(envelope) => {
                        feed.observe(&envelope.record);
                        if let Err(e) = store.ingest([envelope.record]) {
                            progress.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "engine rejected a record");
                        }
                    }
                    Err(e) => {
                        progress.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "skipping an undecodable record from Kafka");
                    }
                }
                Ok(())
            };
            if let Err(e) =
                fleetmind_stream::run_consumer(&config, &kinds, status, handler, shutdown).await
            {
                progress.stop(format!("Kafka consumer on {brokers} stopped: {e}"));
            }
        })
    };
    Ok(KafkaPipeline {
        brokers,
        shipper,
        consumer,
        consumer_task: std::sync::Mutex::new(Some(consumer_task)),
    })
}
