//! The shipper: moves the embedded log's records to the broker, in order, without loss.
//!
//! Collectors always append to the local [`EventLog`](crate::EventLog); it is the write-ahead
//! spill. The shipper is one task per host that reads the log from its *shipped offset* (the
//! first record not yet known to be delivered, kept in a small state file) and produces every
//! record to `<prefix>.<kind>`, keyed by VM or host (see [`super::route`]).
//!
//! ```text
//!   state file ──read──▶ shipped ──subscribe──▶ record ──send──▶ window (≤ max_in_flight)
//!       ▲                                                          │ delivery reports,
//!       └──── persist (every state_interval, at shutdown) ◀─ shipped += 1 ◀┘ oldest first
//! ```
//!
//! - The producer is idempotent (`enable.idempotence=true`, `acks=all`) with an unlimited
//!   `message.timeout.ms`: librdkafka retries a batch in order, with the same sequence numbers,
//!   until the broker answers, so a broker outage neither fails nor duplicates nor reorders
//!   records within one producer session. Batching comes from `linger.ms`.
//! - At most `max_in_flight` records wait for their delivery report; past that the shipper
//!   stops reading, and the rest stays on disk in the log. The lag (log end - shipped) is what
//!   is spilled.
//! - Reports are taken oldest first and the shipped offset moves only over delivered records,
//!   so it never passes a record whose delivery failed. When one fails (a non-retriable error:
//!   the producer gave up), the shipper waits for the rest of the window, backs off, and
//!   re-sends from the failed record with a fresh producer. The records after it that had
//!   arrived arrive again; the consumer drops them by hash.
//! - A crash or restart re-sends from the persisted offset: at most one `state_interval` of
//!   records plus the window, again dropped by the consumer.
//! - Records removed by the log's retention before they were shipped cannot be sent; the
//!   shipper logs an error, counts them in `lost` and goes on from the earliest retained one.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::millis;
use super::context::LinkContext;
use super::topics::{TopicError, ensure_topics};
use super::{KafkaConfig, LinkHealth, route};
use crate::api::{EventSource, ReadError, SubscribeError, Subscription};
use crate::{Offset, Record};

/// Live progress of a shipper, for the health endpoint and metrics: cheap to read, shared as
/// `Arc<ShipperStatus>`.
#[derive(Debug, Default)]
pub struct ShipperStatus {
    shipped: AtomicU64,
    end: AtomicU64,
    peak_lag: AtomicU64,
    in_flight: AtomicU64,
    delivered: AtomicU64,
    failures: AtomicU64,
    lost: AtomicU64,
    link: Arc<LinkHealth>,
}

/// A snapshot of [`ShipperStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperProgress {
    /// The first log offset not yet known to be delivered (what the state file holds).
    pub shipped_offset: Offset,
    /// The log's end offset when last looked at.
    pub end_offset: Offset,
    /// Records in the log not yet delivered: `end_offset - shipped_offset`.
    pub lag: u64,
    /// The largest lag seen since the shipper started: the peak of the spill.
    pub peak_lag: u64,
    /// Records handed to the producer and awaiting their delivery report (in memory); the
    /// rest of the lag is only in the embedded log.
    pub in_flight: u64,
    /// Records delivered since the shipper started (re-sends included).
    pub delivered: u64,
    /// Deliveries that failed and were re-sent (not counting librdkafka's internal retries).
    pub failures: u64,
    /// Records the log's retention removed before they could be shipped.
    pub lost: u64,
    /// Whether the broker answered lately.
    pub broker_reachable: bool,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

impl ShipperStatus {
    /// A fresh status: nothing shipped, broker assumed reachable.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(ShipperStatus::default())
    }

    /// The current progress.
    #[must_use]
    pub fn snapshot(&self) -> ShipperProgress {
        let shipped = self.shipped.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed).max(shipped);
        ShipperProgress {
            shipped_offset: Offset(shipped),
            end_offset: Offset(end),
            lag: end - shipped,
            peak_lag: self.peak_lag.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            broker_reachable: self.link.reachable(),
            last_error: self.link.last_error(),
        }
    }

    fn observe(&self, shipped: Offset, end: Offset) {
        self.shipped.store(shipped.0, Ordering::Relaxed);
        self.end.store(end.0, Ordering::Relaxed);
        self.peak_lag
            .fetch_max(end.0.saturating_sub(shipped.0), Ordering::Relaxed);
    }
}

/// Why the shipper stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// The state file exists but could not be read or does not hold an offset.
    #[error("could not read the shipper state file {}", path.display())]
    ReadState {
        /// The state file.
        path: PathBuf,
        /// The I/O or parse error.
        #[source]
        source: io::Error,
    },
    /// The state file could not be written.
    #[error("could not write the shipper state file {}", path.display())]
    WriteState {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The producer could not be created (a bad setting).
    #[error("could not create a Kafka producer for {brokers}")]
    Producer {
        /// The bootstrap brokers.
        brokers: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// A topic could not be created and retrying will not help.
    #[error("the shipper cannot use its topics")]
    Topics(#[source] Box<TopicError>),
    /// A blocking state-file task did not complete.
    #[error("the blocking state-file task did not complete")]
    Task(#[source] tokio::task::JoinError),
}

/// Why a shipping session ended; all but `Stopped` lead to a back-off and a new session.
#[derive(Debug)]
enum SessionEnd {
    /// Shutdown was asked for, or the log was closed.
    Stopped,
    /// A record's delivery failed.
    Delivery {
        offset: Offset,
        topic: String,
        error: KafkaError,
    },
    /// The producer refused a record (queue full, unknown topic...).
    Enqueue {
        offset: Offset,
        topic: String,
        error: KafkaError,
    },
    /// Reading the log failed.
    Read(ReadError),
    /// A topic could not be made to exist (transient).
    Topics(Box<TopicError>),
}

/// The state-file contents: the shipped offset as a decimal number and a newline.
fn encode_state(offset: Offset) -> String {
    format!("{}\n", offset.0)
}

/// Reads the shipped offset from `path`; 0 when the file does not exist yet.
///
/// # Errors
/// [`ShipError::ReadState`] when the file cannot be read or does not hold a number.
pub fn read_shipped_offset(path: &Path) -> Result<Offset, ShipError> {
    let read_error = |source| ShipError::ReadState {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u64>().map(Offset).map_err(|e| {
            read_error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an offset: {e}"),
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Offset::ZERO),
        Err(e) => Err(read_error(e)),
    }
}

/// Writes the offset atomically and durably: temporary file, fsync, rename, fsync of the
/// directory.
fn write_state(path: &Path, offset: Offset) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(encode_state(offset).as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

async fn persist(path: &Path, offset: Offset) -> Result<(), ShipError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || write_state(&owned, offset))
        .await
        .map_err(ShipError::Task)?
        .map_err(|source| ShipError::WriteState {
            path: path.to_owned(),
            source,
        })
}

/// Ships the records of `source` to the broker until `shutdown` turns true (or the log is
/// closed), starting at the offset persisted in `state_path`. See the module docs.
///
/// Broker outages are not errors: the shipper retries with back-off (up to
/// `config.max_backoff`), reporting them in `status`. At shutdown it waits up to
/// `config.request_timeout` for the records in flight and persists the shipped offset.
///
/// # Errors
/// Only what retrying cannot fix: an unreadable or unwritable state file, a producer setting
/// librdkafka refuses, a broker that cannot create the topics.
pub async fn run_shipper(
    source: Arc<dyn EventSource>,
    state_path: PathBuf,
    config: KafkaConfig,
    status: Arc<ShipperStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ShipError> {
    let mut shipper = Shipper {
        shipped: read_shipped_offset(&state_path)?,
        persisted: Offset::ZERO,
        last_persist: Instant::now(),
        state_path,
        known_topics: HashSet::new(),
        source,
        status,
        config,
    };
    shipper.persisted = shipper.shipped;
    shipper
        .status
        .observe(shipper.shipped, shipper.source.end_offset());
    info!(shipped = %shipper.shipped, brokers = %shipper.config.brokers, "kafka shipper starting");
    let mut backoff = Backoff::new(shipper.config.max_backoff);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let producer = shipper.producer()?;
        let delivered_before = shipper.status.delivered.load(Ordering::Relaxed);
        let end = shipper.session(&producer, &mut shutdown).await?;
        shipper.persist_now().await?;
        // A session that delivered something resets the back-off.
        if shipper.status.delivered.load(Ordering::Relaxed) != delivered_before {
            backoff.reset();
        }
        match end {
            SessionEnd::Stopped => break,
            SessionEnd::Topics(e) if !e.is_transient() => return Err(ShipError::Topics(e)),
            failure => {
                let message = shipper.describe(&failure);
                warn!(shipped = %shipper.shipped, "{message}; retrying");
                shipper.status.link.record_error(message);
                shipper.status.failures.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    shipper.persist_now().await?;
    info!(shipped = %shipper.shipped, "kafka shipper stopped");
    Ok(())
}

struct Shipper {
    shipped: Offset,
    persisted: Offset,
    last_persist: Instant,
    state_path: PathBuf,
    known_topics: HashSet<String>,
    source: Arc<dyn EventSource>,
    status: Arc<ShipperStatus>,
    config: KafkaConfig,
}

/// One record handed to the producer, waiting for its delivery report.
struct InFlight {
    offset: Offset,
    topic: String,
    delivery: DeliveryFuture,
}

impl Shipper {
    fn producer(&self) -> Result<FutureProducer<LinkContext>, ShipError> {
        let mut client = self.config.client_config();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("request.timeout.ms", millis(self.config.request_timeout))
            .set("linger.ms", millis(self.config.linger))
            // Headroom over the window: see the QueueFull case in `send`.
            .set(
                "queue.buffering.max.messages",
                self.config
                    .max_in_flight
                    .max(1)
                    .saturating_mul(2)
                    .min(10_000_000)
                    .to_string(),
            );
        client
            .create_with_context(LinkContext {
                health: Arc::clone(&self.status.link),
                role: "shipper",
            })
            .map_err(|source| ShipError::Producer {
                brokers: self.config.brokers.clone(),
                source,
            })
    }

    fn describe(&self, end: &SessionEnd) -> String {
        let brokers = &self.config.brokers;
        match end {
            SessionEnd::Stopped => "stopped".to_owned(),
            SessionEnd::Delivery {
                offset,
                topic,
                error,
            } => format!("delivery of record {offset} to {topic} on {brokers} failed: {error}"),
            SessionEnd::Enqueue {
                offset,
                topic,
                error,
            } => format!("producing record {offset} to {topic} on {brokers} failed: {error}"),
            SessionEnd::Read(e) => format!("reading the event log failed: {e}"),
            SessionEnd::Topics(e) => format!("{e}"),
        }
    }

    async fn persist_now(&mut self) -> Result<(), ShipError> {
        if self.shipped != self.persisted {
            persist(&self.state_path, self.shipped).await?;
            self.persisted = self.shipped;
        }
        self.last_persist = Instant::now();
        Ok(())
    }

    /// Opens a subscription at the shipped offset, skipping over records lost to retention.
    fn subscribe(&mut self) -> Result<Subscription, SessionEnd> {
        match self.source.subscribe(self.shipped) {
            Ok(sub) => Ok(sub),
            Err(SubscribeError::Expired {
                requested,
                earliest,
            }) => {
                let lost = earliest.0 - requested.0;
                error!(
                    from = %requested, to = %earliest, lost,
                    "event log retention removed records before they were shipped; they are lost"
                );
                self.status.lost.fetch_add(lost, Ordering::Relaxed);
                self.shipped = earliest;
                self.source
                    .subscribe(earliest)
                    .map_err(|e| SessionEnd::Read(ReadError::Backend(Box::new(e))))
            }
            Err(e) => Err(SessionEnd::Read(ReadError::Backend(Box::new(e)))),
        }
    }

    /// Ships from the shipped offset until shutdown or a failure; on return every record
    /// handed to the producer has its report (or shutdown's grace period ran out).
    async fn session(
        &mut self,
        producer: &FutureProducer<LinkContext>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, ShipError> {
        let mut sub = match self.subscribe() {
            Ok(sub) => sub,
            Err(end) => return Ok(end),
        };
        let mut window: VecDeque<InFlight> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_progress = Instant::now();
        let max_in_flight = self.config.max_in_flight.max(1);
        let end = loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break SessionEnd::Stopped,
                report = next_report(&mut window), if !window.is_empty() => {
                    let Some((offset, topic, report)) = report else { continue };
                    match report {
                        Ok(()) => {
                            self.delivered(offset);
                            last_progress = Instant::now();
                        }
                        Err(error) => break SessionEnd::Delivery { offset, topic, error },
                    }
                }
                record = sub.next(), if window.len() < max_in_flight => {
                    match record {
                        None => break SessionEnd::Stopped,
                        Some(Err(e)) => break SessionEnd::Read(e),
                        Some(Ok(record)) => {
                            if window.is_empty() {
                                last_progress = Instant::now();
                            }
                            match self.send(producer, record).await {
                                Ok(in_flight) => window.push_back(in_flight),
                                Err(end) => break end,
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    self.status.observe(self.shipped, self.source.end_offset());
                    self.status.in_flight.store(window.len() as u64, Ordering::Relaxed);
                    let stalled = last_progress.elapsed();
                    if !window.is_empty()
                        && stalled > self.config.request_timeout
                        && self.status.link.reachable()
                    {
                        let message = format!(
                            "no delivery report from {} for {stalled:.0?} with {} records in flight",
                            self.config.brokers,
                            window.len()
                        );
                        warn!("{message}; the broker looks unreachable");
                        self.status.link.set_reachable(false);
                        self.status.link.record_error(message);
                    }
                    if self.last_persist.elapsed() >= self.config.state_interval {
                        self.persist_now().await?;
                    }
                }
            }
        };
        self.drain(window, &end, shutdown).await;
        self.status.in_flight.store(0, Ordering::Relaxed);
        self.status.observe(self.shipped, self.source.end_offset());
        Ok(end)
    }

    /// Waits for the reports of the records still in flight, advancing the shipped offset
    /// over the delivered prefix. On shutdown it waits at most `request_timeout`.
    async fn drain(
        &mut self,
        mut window: VecDeque<InFlight>,
        end: &SessionEnd,
        shutdown: &watch::Receiver<bool>,
    ) {
        let stopping = matches!(end, SessionEnd::Stopped);
        // After a failed delivery the records behind it are re-sent anyway; their reports only
        // tell when the producer is done with them. After any other end, the window holds
        // records sent before the trouble, and their deliveries count.
        let mut failed = matches!(end, SessionEnd::Delivery { .. });
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut shutdown = shutdown.clone();
        while !window.is_empty() {
            let report = if stopping {
                match tokio::time::timeout_at(deadline, next_report(&mut window)).await {
                    Ok(report) => report,
                    Err(_) => {
                        warn!(
                            in_flight = window.len(),
                            "shutdown: records still in flight; they will be re-sent"
                        );
                        return;
                    }
                }
            } else {
                tokio::select! {
                    report = next_report(&mut window) => report,
                    _ = shutdown.changed() => return,
                }
            };
            match report {
                Some((offset, _, Ok(()))) if !failed => self.delivered(offset),
                Some(_) | None => failed = true,
            }
        }
    }

    fn delivered(&mut self, offset: Offset) {
        debug_assert_eq!(offset, self.shipped, "reports are taken in log order");
        self.shipped = offset.next();
        self.status.delivered.fetch_add(1, Ordering::Relaxed);
        self.status.link.set_reachable(true);
    }

    /// Routes one record, makes sure its topic exists, and hands it to the producer.
    async fn send(
        &mut self,
        producer: &FutureProducer<LinkContext>,
        record: Record,
    ) -> Result<InFlight, SessionEnd> {
        let route = route(&record.payload);
        let topic = self.config.topic(&route.kind);
        if !self.known_topics.contains(&topic) {
            ensure_topics(&self.config, std::slice::from_ref(&topic))
                .await
                .map_err(|e| SessionEnd::Topics(Box::new(e)))?;
            self.known_topics.insert(topic.clone());
        }
        let mut message = FutureRecord::to(&topic).payload(&record.payload);
        if let Some(key) = &route.key {
            message = message.key(key);
        }
        loop {
            match producer.send_result(message) {
                Ok(delivery) => {
                    return Ok(InFlight {
                        offset: record.offset,
                        topic,
                        delivery,
                    });
                }
                // librdkafka counts a message until its delivery callback has returned, a
                // moment after the report reached us: wait for it rather than fail.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    message = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    return Err(SessionEnd::Enqueue {
                        offset: record.offset,
                        topic,
                        error,
                    });
                }
            }
        }
    }
}

/// Awaits the delivery report of the oldest record in flight and removes it from the window.
async fn next_report(
    window: &mut VecDeque<InFlight>,
) -> Option<(Offset, String, Result<(), KafkaError>)> {
    let front = window.front_mut()?;
    let report = (&mut front.delivery).await;
    let InFlight { offset, topic, .. } = window.pop_front()?;
    let result = match report {
        Ok(Ok(_delivery)) => Ok(()),
        Ok(Err((error, _message))) => Err(error),
        Err(_canceled) => Err(KafkaError::Canceled),
    };
    Some((offset, topic, result))
}

/// Exponential back-off from 200 ms to a maximum.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(200);

    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::START.min(max),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = Self::START.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shipper.offset");
        assert_eq!(read_shipped_offset(&path).expect("missing is 0"), Offset(0));
        write_state(&path, Offset(42)).expect("write");
        write_state(&path, Offset(43)).expect("overwrite");
        assert_eq!(read_shipped_offset(&path).expect("read"), Offset(43));
        assert!(!dir.path().join("shipper.offset.tmp").exists());
        std::fs::write(&path, "garbage").expect("write garbage");
        let err = read_shipped_offset(&path).expect_err("garbage is refused");
        assert!(err.to_string().contains("shipper.offset"), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut backoff = Backoff::new(Duration::from_millis(700));
        let waits: Vec<u128> = (0..4).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [200, 400, 700, 700]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(200));
    }

    #[test]
    fn lag_and_peak() {
        let status = ShipperStatus::new();
        status.observe(Offset(5), Offset(50));
        status.observe(Offset(40), Offset(60));
        let progress = status.snapshot();
        assert_eq!((progress.lag, progress.peak_lag), (20, 45));
        assert!(progress.broker_reachable);
    }
}
