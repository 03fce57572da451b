//! The event stream of the fleetmind daemon.
//!
//! Every collector, detector and executor of the daemon talks to one ordered stream of events. This
//! crate says what such a stream is ([`EventSink`] to append, [`EventSource`] to read from an
//! offset and tail) and ships the default implementation, [`EventLog`]: an append-only log of
//! segment files in a local directory, safe against `kill -9`, with a configurable fsync policy,
//! size and age retention, replay from any retained offset and live tail subscriptions for many
//! readers. Nothing above this crate needs to know which backend it talks to. The [`kafka`]
//! module moves the log's records through a Kafka-protocol broker to a remote engine, with the
//! embedded log as the spill while the broker is away.
//!
//! Payloads are opaque byte strings; the daemon stores one JSON-encoded event envelope per record.
//! Offsets are a global, monotonic `u64` record index starting at 0 and stable across restarts
//! and retention.
//!
//! Module map:
//! - [`api`]: the backend-neutral traits, their errors and [`Subscription`].
//! - [`config`]: [`LogConfig`], [`FsyncPolicy`], [`RetentionPolicy`].
//! - [`segment`]: the on-disk format (documented there) and crash recovery of the last segment.
//! - [`log`]: [`EventLog`] itself: open, append, flush, retention.
//! - [`reader`]: synchronous replay ([`Replay`]) shared by replays and subscriptions.
//! - [`subscribe`]: live tail subscriptions of the embedded log.
//! - [`bench`](mod@bench): [`bench_log`], the measurement behind `fleetmind bench log`.
//! - [`kafka`]: the Kafka backend: [`KafkaConfig`], the shipper ([`run_shipper`]) that moves the
//!   log's records to the broker, the engine's consumer ([`run_consumer`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod bench;
pub mod config;
pub mod kafka;
pub mod log;
pub mod reader;
pub mod segment;
pub mod subscribe;

mod writer;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use api::{
    AppendError, BackendError, BoxFuture, EventSink, EventSource, FlushError, ReadError,
    SubscribeError, Subscription,
};
pub use bench::{BenchError, BenchReport, Throughput, bench_log};
pub use config::{FsyncPolicy, LogConfig, RetentionPolicy};
pub use kafka::{
    ConsumeError, ConsumerProgress, ConsumerStatus, KafkaConfig, ShipError, ShipperProgress,
    ShipperStatus, TopicError, run_consumer, run_shipper,
};
pub use log::{EventLog, OpenLogError, ReplayError, RetentionError, RetentionReport};
pub use reader::Replay;

/// The position of a record in the stream: a global record index, 0 for the first record ever
/// appended, never reused, unchanged by restarts and retention.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset of the first record of a stream.
    pub const ZERO: Offset = Offset(0);

    /// The raw record index.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The offset that follows this one.
    #[must_use]
    pub const fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Offset {
    fn from(value: u64) -> Self {
        Offset(value)
    }
}

impl From<Offset> for u64 {
    fn from(value: Offset) -> Self {
        value.0
    }
}

/// One record read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record sits in the stream.
    pub offset: Offset,
    /// The bytes given to [`EventSink::append`], unchanged.
    pub payload: Vec<u8>,
}

/// What a successful append returns: the offsets given to the batch, in order.
///
/// A batch of `n` payloads gets the offsets `first_offset ..= last_offset`, so
/// `last_offset - first_offset + 1 == n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppendAck {
    /// Offset of the first payload of the batch.
    pub first_offset: Offset,
    /// Offset of the last payload of the batch.
    pub last_offset: Offset,
}

impl AppendAck {
    /// Number of records in the acknowledged batch.
    #[must_use]
    pub const fn len(&self) -> u64 {
        self.last_offset.0 - self.first_offset.0 + 1
    }

    /// Always false: an acknowledged batch holds at least one record.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_serializes_as_a_bare_number() {
        let json = serde_json::to_string(&Offset(42)).expect("serialize");
        assert_eq!(json, "42");
        let back: Offset = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, Offset(42));
        assert_eq!(Offset(41).next(), back);
    }

    #[test]
    fn ack_len_counts_both_ends() {
        let ack = AppendAck {
            first_offset: Offset(10),
            last_offset: Offset(12),
        };
        assert_eq!(ack.len(), 3);
    }
}
