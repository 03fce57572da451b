//! The backend-neutral face of the event stream.
//!
//! The daemon writes through an [`EventSink`] and reads through an [`EventSource`], held as
//! `Arc<dyn EventSink>` / `Arc<dyn EventSource>`, so the embedded [`EventLog`](crate::EventLog)
//! and a later Kafka backend are interchangeable. The traits return boxed futures
//! ([`BoxFuture`]) rather than `async fn` so that they stay object-safe without an extra crate.
//!
//! Semantics every backend keeps:
//! - `append` returns only once the batch is acknowledged; what "acknowledged" guarantees is the
//!   backend's to document (for the embedded log: see [`crate::log`]). A failed append may still
//!   have stored a prefix of the batch, so delivery is at-least-once for callers that retry.
//! - Offsets of a batch are consecutive and in payload order.
//! - A [`Subscription`] yields records in offset order, without gaps, from its start offset on,
//!   then waits for new ones. It ends (`None`) when the stream is closed, and after yielding an
//!   error.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

use crate::{AppendAck, Offset, Record};

/// A boxed, sendable future: what the trait methods return so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The boxed error of a backend that is not the embedded log (e.g. a Kafka client error).
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// Where events are written.
pub trait EventSink: Send + Sync {
    /// Appends `payloads` as consecutive records and returns their offsets once acknowledged.
    ///
    /// # Errors
    /// [`AppendError::EmptyBatch`] for an empty batch, [`AppendError::RecordTooLarge`] for an
    /// oversized payload (nothing is written then), and the backend's write or sync failures.
    fn append<'a>(
        &'a self,
        payloads: &'a [&'a [u8]],
    ) -> BoxFuture<'a, Result<AppendAck, AppendError>>;

    /// Makes every record acknowledged so far durable (for the embedded log: fsync), whatever
    /// the configured fsync policy.
    ///
    /// # Errors
    /// The backend's sync failure.
    fn flush(&self) -> BoxFuture<'_, Result<(), FlushError>>;
}

/// Where events are read from.
pub trait EventSource: Send + Sync {
    /// Starts a live subscription at `from`: it yields every record from `from` on, in order,
    /// then waits for new appends. `from` may be at or past the end; the subscription then waits
    /// until records with that offset exist.
    ///
    /// # Errors
    /// [`SubscribeError::Expired`] when `from` is older than the earliest retained record.
    fn subscribe(&self, from: Offset) -> Result<Subscription, SubscribeError>;

    /// The offset the next appended record will get (one past the last acknowledged record).
    fn end_offset(&self) -> Offset;
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The batch held no payload.
    #[error("an append needs at least one payload")]
    EmptyBatch,
    /// One payload is larger than a record may be.
    #[error("payload {index} of the batch is {len} bytes, more than the {max} a record may hold")]
    RecordTooLarge {
        /// Position of the payload in the batch.
        index: usize,
        /// Its length in bytes.
        len: usize,
        /// The largest payload a record may hold.
        max: usize,
    },
    /// Writing the batch to the active segment failed; nothing of it is acknowledged.
    #[error("could not write to segment {}", path.display())]
    Write {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The batch was written but could not be made durable; the log refuses further writes.
    #[error("could not fsync segment {}", path.display())]
    Sync {
        /// The file that failed to sync.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A new segment could not be started.
    #[error("could not start segment {}", path.display())]
    Roll {
        /// The new segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An earlier failure left the log in a state where writing on is unsafe.
    #[error("the log refuses writes after an earlier failure ({reason}); reopen it")]
    Poisoned {
        /// What failed earlier.
        reason: String,
    },
    /// The blocking task that performed the write did not complete.
    #[error("the blocking write task did not complete")]
    Task(#[source] tokio::task::JoinError),
    /// A non-embedded backend failed.
    #[error("the stream backend failed to append")]
    Backend(#[source] BackendError),
}

/// Why a flush failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// fsync failed; the log refuses further writes.
    #[error("could not fsync {}", path.display())]
    Sync {
        /// The file or directory that failed to sync.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An earlier failure left the log in a state where durability cannot be promised.
    #[error("the log refuses to flush after an earlier failure ({reason}); reopen it")]
    Poisoned {
        /// What failed earlier.
        reason: String,
    },
    /// The blocking task that performed the flush did not complete.
    #[error("the blocking flush task did not complete")]
    Task(#[source] tokio::task::JoinError),
    /// A non-embedded backend failed.
    #[error("the stream backend failed to flush")]
    Backend(#[source] BackendError),
}

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The requested records were removed by retention.
    #[error("offset {requested} is no longer retained; the earliest retained offset is {earliest}")]
    Expired {
        /// The offset asked for.
        requested: Offset,
        /// The earliest offset still available.
        earliest: Offset,
    },
    /// A non-embedded backend failed.
    #[error("the stream backend failed to subscribe")]
    Backend(#[source] BackendError),
}

/// Why reading a record (by a subscription or a replay) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Retention removed the next record before the reader got to it.
    #[error("offset {requested} is no longer retained; the earliest retained offset is {earliest}")]
    Expired {
        /// The offset the reader needed.
        requested: Offset,
        /// The earliest offset still available.
        earliest: Offset,
    },
    /// A segment holds bytes that are not a valid record where one must be.
    #[error("segment {} is corrupt at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record (or header) in the file.
        position: u64,
        /// What is wrong there.
        reason: String,
    },
    /// Reading a segment failed.
    #[error("could not read segment {}", path.display())]
    Io {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The blocking task that performed the read did not complete.
    #[error("the blocking read task did not complete")]
    Task(#[source] tokio::task::JoinError),
    /// A non-embedded backend failed.
    #[error("the stream backend failed to deliver a record")]
    Backend(#[source] BackendError),
}

/// A live, ordered feed of records from one offset on; see [`EventSource::subscribe`].
///
/// It is a [`Stream`] and also has an inherent [`Subscription::next`]. It yields
/// `Ok(record)` in offset order, waits when caught up, ends with `None` when the stream is
/// closed (every handle of the embedded log dropped), and ends after yielding an `Err`.
pub struct Subscription {
    stream: Pin<Box<dyn Stream<Item = Result<Record, ReadError>> + Send>>,
}

impl Subscription {
    /// Wraps a backend's record stream. Backends call this; users get subscriptions from
    /// [`EventSource::subscribe`].
    pub fn new<S>(stream: S) -> Self
    where
        S: Stream<Item = Result<Record, ReadError>> + Send + 'static,
    {
        Subscription {
            stream: Box::pin(stream),
        }
    }

    /// Waits for the next record; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Record, ReadError>> {
        self.stream.next().await
    }
}

impl Stream for Subscription {
    type Item = Result<Record, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscription_wraps_any_stream() {
        let records = vec![
            Ok(Record {
                offset: Offset(0),
                payload: b"a".to_vec(),
            }),
            Ok(Record {
                offset: Offset(1),
                payload: b"b".to_vec(),
            }),
        ];
        let mut sub = Subscription::new(futures::stream::iter(records));
        let first = sub.next().await.expect("one record").expect("ok");
        assert_eq!(first.offset, Offset(0));
        let second = sub.next().await.expect("two records").expect("ok");
        assert_eq!(second.payload, b"b");
        assert!(sub.next().await.is_none());
    }

    #[test]
    fn traits_are_object_safe() {
        fn takes(
            _: Option<std::sync::Arc<dyn EventSink>>,
            _: Option<std::sync::Arc<dyn EventSource>>,
        ) {
        }
        takes(None, None);
    }
}
