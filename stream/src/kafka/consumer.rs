//! The engine's side of the Kafka backend: a consumer group that hands each record to the
//! engine and commits only what the engine has processed.
//!
//! ```text
//!  ensure topics ─▶ subscribe(<prefix>.<kind>...) ─▶ recv ─▶ duplicate? ──yes──▶ count, skip
//!                                                             │ no
//!                                                             ▼
//!                              store offset ◀── handler(payload) ok ──▶ every commit_every
//!                                                                      messages or
//!                                                                      commit_interval:
//!                                                                      commit (async);
//!                                                                      shutdown: commit (sync)
//! ```
//!
//! `enable.auto.commit` and `enable.auto.offset.store` are off, so an offset is stored only
//! after the handler returned `Ok` for its message (or the message was dropped as a
//! duplicate), and committed in batches. A restart or rebalance resumes after the last commit:
//! messages processed since then are delivered again, and the duplicate filter
//! ([`RecentSet`]) drops those it still remembers along with the shipper's re-sends. Where the
//! filter has forgotten (after a consumer restart) the engine sees at-least-once delivery;
//! records carry their own timestamps and ids for it to tell.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::watch;
use tracing::{info, warn};

use super::context::LinkContext;
use super::dedup::RecentSet;
use super::topics::{TopicError, ensure_topics};
use super::{KafkaConfig, LinkHealth};

/// Live progress of a consumer, shared as `Arc<ConsumerStatus>`.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    processed: AtomicU64,
    duplicates: AtomicU64,
    commits: AtomicU64,
    link: Arc<LinkHealth>,
}

/// A snapshot of [`ConsumerStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerProgress {
    /// Messages handed to the handler that it processed successfully.
    pub processed: u64,
    /// Messages dropped as exact duplicates of a recent one.
    pub duplicates_dropped: u64,
    /// Offset commits requested.
    pub commits: u64,
    /// Whether the broker answered lately.
    pub broker_reachable: bool,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

impl ConsumerStatus {
    /// A fresh status.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(ConsumerStatus::default())
    }

    /// The current progress.
    #[must_use]
    pub fn snapshot(&self) -> ConsumerProgress {
        ConsumerProgress {
            processed: self.processed.load(Ordering::Relaxed),
            duplicates_dropped: self.duplicates.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            broker_reachable: self.link.reachable(),
            last_error: self.link.last_error(),
        }
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The consumer could not be created or subscribed (a bad setting or topic name).
    #[error("could not start a Kafka consumer in group {group} on {brokers}")]
    Client {
        /// The bootstrap brokers.
        brokers: String,
        /// The consumer group.
        group: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The topics could not be made to exist and retrying will not help.
    #[error("the consumer cannot use its topics")]
    Topics(#[source] Box<TopicError>),
    /// The handler refused a message; its offset was not committed.
    #[error("the handler failed on {topic} partition {partition} offset {offset}")]
    Handler {
        /// The message's topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset in the partition.
        offset: i64,
        /// The handler's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Consumes the topics of `kinds` (`<prefix>.<kind>` each) in group `config.group_id` until
/// `shutdown` turns true, handing every new payload to `handler`; see the module docs.
///
/// Topics are created first when missing (retrying while the broker is unreachable). Broker
/// outages while running are not errors: librdkafka reconnects, and `status` shows them.
///
/// # Errors
/// [`ConsumeError::Client`] for settings librdkafka refuses, [`ConsumeError::Topics`] when the
/// broker cannot create the topics, [`ConsumeError::Handler`] when the handler fails (after a
/// commit of everything processed before).
pub async fn run_consumer<F, E>(
    config: &KafkaConfig,
    kinds: &[&str],
    status: Arc<ConsumerStatus>,
    mut handler: F,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumeError>
where
    F: FnMut(&[u8]) -> Result<(), E>,
    E: std::error::Error + Send + Sync + 'static,
{
    let topics: Vec<String> = kinds.iter().map(|k| config.topic(k)).collect();
    let client_error = |source| ConsumeError::Client {
        brokers: config.brokers.clone(),
        group: config.group_id.clone(),
        source,
    };
    if !wait_for_topics(config, &topics, &status, &mut shutdown).await? {
        return Ok(());
    }

    let consumer: StreamConsumer<LinkContext> = config
        .client_config()
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(LinkContext {
            health: Arc::clone(&status.link),
            role: "consumer",
        })
        .map_err(client_error)?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs).map_err(client_error)?;
    info!(group = %config.group_id, topics = ?topics, brokers = %config.brokers, "kafka consumer started");

    let mut recent = RecentSet::new(config.dedup_capacity, config.dedup_window);
    let mut uncommitted = 0u64;
    let mut last_commit = Instant::now();
    let mut tick = tokio::time::interval(config.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut result = Ok(());
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            message = consumer.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        warn!(%error, group = %config.group_id, "kafka consumer error");
                        status.link.set_reachable(false);
                        status.link.record_error(error.to_string());
                        continue;
                    }
                };
                status.link.set_reachable(true);
                let payload = message.payload().unwrap_or_default();
                let hash = RecentSet::message_hash(message.topic(), message.key(), payload);
                if recent.insert(hash, Instant::now()) {
                    if let Err(e) = handler(payload) {
                        result = Err(ConsumeError::Handler {
                            topic: message.topic().to_owned(),
                            partition: message.partition(),
                            offset: message.offset(),
                            source: Box::new(e),
                        });
                        break;
                    }
                    status.processed.fetch_add(1, Ordering::Relaxed);
                } else {
                    status.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(error) = consumer.store_offset_from_message(&message) {
                    // The partition was revoked meanwhile; its next owner re-reads the message.
                    warn!(%error, topic = message.topic(), "could not store a consumed offset");
                }
                uncommitted += 1;
                if uncommitted >= config.commit_every {
                    commit(&consumer, CommitMode::Async, &status);
                    uncommitted = 0;
                    last_commit = Instant::now();
                }
            }
            _ = tick.tick() => {
                if uncommitted > 0 && last_commit.elapsed() >= config.commit_interval {
                    commit(&consumer, CommitMode::Async, &status);
                    uncommitted = 0;
                    last_commit = Instant::now();
                }
            }
        }
    }
    // The final commit blocks until the broker answers (or librdkafka times out).
    let consumer = Arc::new(consumer);
    let final_consumer = Arc::clone(&consumer);
    let final_status = Arc::clone(&status);
    if tokio::task::spawn_blocking(move || commit(&final_consumer, CommitMode::Sync, &final_status))
        .await
        .is_err()
    {
        warn!("the final offset commit did not complete");
    }
    info!(progress = ?status.snapshot(), "kafka consumer stopped");
    result
}

/// Creates the topics, retrying with back-off while the broker is unreachable; false when
/// shutdown came first.
async fn wait_for_topics(
    config: &KafkaConfig,
    topics: &[String],
    status: &ConsumerStatus,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, ConsumeError> {
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return Ok(false);
        }
        match ensure_topics(config, topics).await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_transient() => {
                warn!(error = %e, "kafka topics not ready; retrying");
                status.link.set_reachable(false);
                status.link.record_error(e.to_string());
            }
            Err(e) => return Err(ConsumeError::Topics(Box::new(e))),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        wait = (wait * 2).min(config.max_backoff);
    }
}

fn commit(consumer: &StreamConsumer<LinkContext>, mode: CommitMode, status: &ConsumerStatus) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) => {
            status.commits.fetch_add(1, Ordering::Relaxed);
        }
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            warn!(%error, "kafka offset commit failed; the messages will be re-read after a restart");
            status
                .link
                .record_error(format!("offset commit failed: {error}"));
        }
    }
}
