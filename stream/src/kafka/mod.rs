//! The Kafka backend of the event stream: records of every host reach the central engine
//! through a Kafka-protocol broker instead of `POST /api/v1/ingest`.
//!
//! It exists so that a fleet can put a durable, replicated broker between its collectors and
//! the engine, and so that a broker outage costs no sample. The embedded [`EventLog`] stays the
//! write-ahead spill on every host: collectors append to it as always, and the shipper moves
//! its records to the broker in order; the engine reads them back with a consumer group.
//!
//! ```text
//!  collector ──append──▶ EventLog ──subscribe(shipped)──▶ shipper ──produce (idempotent)──▶ broker
//!                          ▲                                 │                               │
//!                          │                state file ◀─────┘ persist offset of             │
//!                          │                (shipped offset)    delivered records            │
//!                          │                                                                 ▼
//!                  spill while the broker                engine ◀── handler ◀── consumer (group,
//!                  is away: lag grows here                         dedup by hash, commit after
//!                                                                  the handler)
//! ```
//!
//! Flow and guarantees:
//! - Routing ([`route`]): a payload is a JSON envelope; only `kind`, `host` and `vm` are read.
//!   The topic is `<prefix>.<kind>`; the key is the VM id (`host/vm`) for VM records, else the
//!   host, else the kind, so that per-VM and per-host order holds inside one partition.
//! - [`shipper`]: reads the log from the offset in its state file, produces with
//!   `enable.idempotence=true`, `acks=all` and an unlimited `message.timeout.ms` (librdkafka
//!   retries in order until the broker answers), keeps at most `max_in_flight` records without
//!   a delivery report, and persists the offset only past records whose delivery succeeded.
//!   While the broker is away the records simply stay in the log (the lag grows); when it
//!   returns librdkafka delivers the window in order and the shipper reads on.
//! - [`consumer`]: a consumer group with manual commits; offsets are stored only after the
//!   handler has processed a message and committed in batches. Redeliveries (a shipper
//!   restart, a re-sent window, a rebalance) are dropped by a 128-bit hash of (topic, key,
//!   payload) kept for a bounded time and count.
//! - [`topics`]: topics are created at start when missing (CreateTopics).

pub mod config;
pub mod consumer;
pub mod dedup;
pub mod shipper;
pub mod topics;

mod context;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub use config::KafkaConfig;
pub use consumer::{ConsumeError, ConsumerProgress, ConsumerStatus, run_consumer};
pub use dedup::RecentSet;
pub use shipper::{ShipError, ShipperProgress, ShipperStatus, read_shipped_offset, run_shipper};
pub use topics::{TopicError, ensure_topics};

#[cfg(doc)]
use crate::EventLog;

/// Where a record goes: its topic and its message key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The record kind (`vm_sample`, ...), or [`INVALID_KIND`] for a payload without one.
    pub kind: String,
    /// The message key: VM id, host or kind (see [`route`]); `None` for an invalid payload.
    pub key: Option<String>,
}

/// The pseudo-kind of payloads that are not a JSON object with a string `kind`: they go to
/// `<prefix>.invalid` (keyless), which no engine consumer reads, so they are kept for
/// inspection without blocking the records behind them.
pub const INVALID_KIND: &str = "invalid";

/// Routes a JSON envelope by its `kind`, `host` and `vm` fields.
///
/// The key is `vm` when it already starts with `<host>/` (the schema's VM ids do), else
/// `<host>/<vm>`; `<host>` for host records; the kind itself for records without a host
/// (anomalies, incidents, ...), which keeps each of those kinds in one ordered partition.
#[must_use]
pub fn route(payload: &[u8]) -> Route {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(payload) else {
        return invalid();
    };
    let text = |name: &str| fields.get(name).and_then(serde_json::Value::as_str);
    let Some(kind) = text("kind").filter(|k| valid_kind(k)) else {
        return invalid();
    };
    let key = match (text("host"), text("vm")) {
        (Some(host), Some(vm)) if vm.starts_with(host) && vm[host.len()..].starts_with('/') => {
            vm.to_owned()
        }
        (Some(host), Some(vm)) => format!("{host}/{vm}"),
        (None, Some(vm)) => vm.to_owned(),
        (Some(host), None) => host.to_owned(),
        (None, None) => kind.to_owned(),
    };
    Route {
        kind: kind.to_owned(),
        key: Some(key),
    }
}

fn invalid() -> Route {
    Route {
        kind: INVALID_KIND.to_owned(),
        key: None,
    }
}

/// Whether `kind` can be part of a Kafka topic name (`[a-zA-Z0-9._-]`, at most 200 bytes).
fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 200
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reachability of the broker as one client sees it, shared with its librdkafka callbacks.
#[derive(Debug)]
pub struct LinkHealth {
    reachable: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Default for LinkHealth {
    fn default() -> Self {
        LinkHealth {
            reachable: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }
}

impl LinkHealth {
    /// Whether the last exchange with the broker succeeded.
    #[must_use]
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The last error seen, if any (kept after recovery, for the health endpoint).
    #[must_use]
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_kind_host_and_vm() {
        let vm = route(br#"{"schema_version":1,"kind":"vm_sample","host":"h1","vm":"h1/vm-2"}"#);
        assert_eq!(vm.kind, "vm_sample");
        assert_eq!(vm.key.as_deref(), Some("h1/vm-2"));
        let bare = route(br#"{"kind":"vm_sample","host":"h1","vm":"vm-2"}"#);
        assert_eq!(bare.key.as_deref(), Some("h1/vm-2"));
        let host = route(br#"{"kind":"host_sample","host":"h1","ts":1}"#);
        assert_eq!(
            (host.kind.as_str(), host.key.as_deref()),
            ("host_sample", Some("h1"))
        );
        let hostless = route(br#"{"kind":"incident","id":"i-1"}"#);
        assert_eq!(hostless.key.as_deref(), Some("incident"));
    }

    #[test]
    fn invalid_payloads_are_routed_aside() {
        for payload in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"host":"h"}"#,
            br#"{"kind":7}"#,
            br#"{"kind":"a b"}"#,
        ] {
            assert_eq!(route(payload), invalid(), "{payload:?}");
        }
    }
}
