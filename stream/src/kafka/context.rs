//! The librdkafka client context shared by the shipper's producer and the engine's consumer.
//!
//! librdkafka reports connection trouble through its error callback and logs through its log
//! callback, on its own threads. This context turns both into `tracing` events and updates the
//! [`LinkHealth`] that the progress structs expose, so the health endpoint can tell whether the
//! broker is reachable without a round trip.

use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use tracing::{debug, info, warn};

use super::LinkHealth;

/// Forwards librdkafka's logs and errors to `tracing` and to a [`LinkHealth`].
#[derive(Debug, Clone)]
pub(crate) struct LinkContext {
    pub(crate) health: Arc<LinkHealth>,
    /// What the client is, for log lines: "shipper" or "consumer".
    pub(crate) role: &'static str,
}

impl ClientContext for LinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let role = self.role;
        match level {
            // While the link is known to be down (already reported once, and shown by the
            // health endpoint), librdkafka repeats its timeouts every few seconds per broker
            // connection: those go to debug, so an outage is one warning, not a stream of them.
            RDKafkaLogLevel::Warning if !self.health.reachable() => {
                debug!(role, facility = fac, "librdkafka: {log_message}");
            }
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => warn!(role, facility = fac, "librdkafka: {log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(role, facility = fac, "librdkafka: {log_message}");
            }
            RDKafkaLogLevel::Debug => debug!(role, facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka calls this for connection failures, request timeouts and "all brokers
        // down"; it keeps retrying by itself, so these mark the link down but are not fatal.
        warn!(role = self.role, %error, reason, "kafka client error");
        self.health.set_reachable(false);
        self.health.record_error(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for LinkContext {}
