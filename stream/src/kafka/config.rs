//! Configuration of the Kafka backend, `[stream] kind = "kafka"` in the daemon's config file.
//!
//! Kept apart from the clients so the daemon can embed [`KafkaConfig`] (serde, unknown fields
//! rejected, durations in humantime form such as `"20ms"` or `"10s"`). Only `brokers` is
//! required, e.g. in TOML:
//!
//! ```toml
//! brokers = "127.0.0.1:9092"
//! topic_prefix = "fleetmind"      # topics are <prefix>.<kind>, e.g. fleetmind.vm_sample
//! group_id = "fleetmind-engine"
//! linger = "20ms"
//! ```

use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How the daemon talks to a Kafka-protocol broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers, `host:port` each (e.g. `"127.0.0.1:9092"`).
    pub brokers: String,
    /// Topics are named `<topic_prefix>.<kind>` (default `"fleetmind"`).
    #[serde(default = "defaults::topic_prefix")]
    pub topic_prefix: String,
    /// Consumer group of the engine; offsets are committed under it (default
    /// `"fleetmind-engine"`).
    #[serde(default = "defaults::group_id")]
    pub group_id: String,
    /// `client.id` reported to the broker, for its logs and quotas (default `"fleetmind"`).
    #[serde(default = "defaults::client_id")]
    pub client_id: String,
    /// Partitions of a topic the backend creates (default 1). More partitions spread load;
    /// order is kept per message key (host or VM) either way.
    #[serde(default = "defaults::partitions")]
    pub partitions: i32,
    /// Replication factor of a topic the backend creates (default 1).
    #[serde(default = "defaults::replication_factor")]
    pub replication_factor: i32,
    /// How long the producer waits to fill a batch (`linger.ms`, default 20 ms).
    #[serde(default = "defaults::linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Most records the shipper has handed to the producer without a delivery report (default
    /// 10,000). Everything past this window stays in the embedded log, not in memory.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Timeout of one broker request and of an idle socket (`request.timeout.ms`,
    /// `socket.timeout.ms`, default 10 s). After it the client reconnects; the shipper also
    /// reports the broker unreachable when no delivery completed for this long.
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Timeout of topic creation and metadata look-ups at start (default 10 s).
    #[serde(default = "defaults::admin_timeout", with = "humantime_serde")]
    pub admin_timeout: Duration,
    /// Longest wait between two attempts after a failure (default 10 s; the wait doubles from
    /// 200 ms up to this).
    #[serde(default = "defaults::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How often the shipper persists its shipped offset (default 1 s; also at shutdown).
    /// A crash re-ships at most this much plus the in-flight window; the consumer drops the
    /// duplicates.
    #[serde(default = "defaults::state_interval", with = "humantime_serde")]
    pub state_interval: Duration,
    /// The consumer commits its offsets after this many processed messages (default 500)...
    #[serde(default = "defaults::commit_every")]
    pub commit_every: u64,
    /// ... or after this long, whichever comes first (default 1 s).
    #[serde(default = "defaults::commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How many recent message hashes the consumer keeps to drop duplicates (default
    /// 1,000,000; 16 bytes plus set overhead each).
    #[serde(default = "defaults::dedup_capacity")]
    pub dedup_capacity: usize,
    /// How long the consumer remembers a message hash to drop duplicates (default 10 min).
    #[serde(default = "defaults::dedup_window", with = "humantime_serde")]
    pub dedup_window: Duration,
}

impl KafkaConfig {
    /// A configuration with every default and the given bootstrap brokers.
    #[must_use]
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: defaults::topic_prefix(),
            group_id: defaults::group_id(),
            client_id: defaults::client_id(),
            partitions: defaults::partitions(),
            replication_factor: defaults::replication_factor(),
            linger: defaults::linger(),
            max_in_flight: defaults::max_in_flight(),
            request_timeout: defaults::request_timeout(),
            admin_timeout: defaults::admin_timeout(),
            max_backoff: defaults::max_backoff(),
            state_interval: defaults::state_interval(),
            commit_every: defaults::commit_every(),
            commit_interval: defaults::commit_interval(),
            dedup_capacity: defaults::dedup_capacity(),
            dedup_window: defaults::dedup_window(),
        }
    }

    /// The topic that holds records of `kind`: `<topic_prefix>.<kind>`.
    #[must_use]
    pub fn topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.topic_prefix)
    }

    /// The librdkafka settings every client of this backend shares.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("socket.timeout.ms", millis(self.request_timeout))
            .set("reconnect.backoff.max.ms", millis(self.max_backoff));
        config
    }
}

/// A duration as a whole number of milliseconds (at least 1), for librdkafka settings.
pub(crate) fn millis(duration: Duration) -> String {
    duration.as_millis().clamp(1, i32::MAX as u128).to_string()
}

mod defaults {
    use std::time::Duration;

    pub(super) fn topic_prefix() -> String {
        "fleetmind".to_owned()
    }
    pub(super) fn group_id() -> String {
        "fleetmind-engine".to_owned()
    }
    pub(super) fn client_id() -> String {
        "fleetmind".to_owned()
    }
    pub(super) const fn partitions() -> i32 {
        1
    }
    pub(super) const fn replication_factor() -> i32 {
        1
    }
    pub(super) const fn linger() -> Duration {
        Duration::from_millis(20)
    }
    pub(super) const fn max_in_flight() -> usize {
        10_000
    }
    pub(super) const fn request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) const fn admin_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) const fn max_backoff() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) const fn state_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) const fn commit_every() -> u64 {
        500
    }
    pub(super) const fn commit_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) const fn dedup_capacity() -> usize {
        1_000_000
    }
    pub(super) const fn dedup_window() -> Duration {
        Duration::from_secs(600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_brokers_is_required() {
        let config: KafkaConfig =
            serde_json::from_str(r#"{"brokers":"127.0.0.1:9092"}"#).expect("parse");
        assert_eq!(config, KafkaConfig::new("127.0.0.1:9092"));
        assert_eq!(config.topic("vm_sample"), "fleetmind.vm_sample");
    }

    #[test]
    fn unknown_fields_and_humantime() {
        let err = serde_json::from_str::<KafkaConfig>(r#"{"brokers":"b:1","bogus":1}"#);
        assert!(err.is_err());
        let config: KafkaConfig =
            serde_json::from_str(r#"{"brokers":"b:1","linger":"5ms","dedup_window":"1m"}"#)
                .expect("parse");
        assert_eq!(config.linger, Duration::from_millis(5));
        assert_eq!(config.dedup_window, Duration::from_secs(60));
        assert_eq!(millis(Duration::ZERO), "1");
    }
}
