//! Creating the backend's topics when they are missing.
//!
//! Producing to or subscribing to a topic that does not exist fails or waits, depending on the
//! broker's auto-creation setting, so the shipper and the consumer make sure their topics exist
//! first: a metadata request lists the broker's topics, and the missing ones are created with
//! CreateTopics (`partitions` and `replication_factor` from [`KafkaConfig`]); a topic created
//! meanwhile by someone else counts as created. A broker that does not implement CreateTopics
//! gets an error that names the topics and the command to create them by hand.

use std::collections::HashSet;
use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::info;

use super::KafkaConfig;

/// Why the topics could not be made to exist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The admin client could not be created (a bad setting).
    #[error("could not create a Kafka admin client for {brokers}")]
    Client {
        /// The bootstrap brokers.
        brokers: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The broker did not answer the metadata or create request (retry later).
    #[error("broker {brokers} did not answer while checking topics {}", topics.join(", "))]
    Unreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// The topics concerned.
        topics: Vec<String>,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The broker does not implement CreateTopics.
    #[error(
        "broker {brokers} cannot create topics ({code}); create {} by hand, e.g. {}",
        topics.join(", "),
        topics.iter().map(|t| format!("`tansu topic create --broker tcp://{} --partitions {partitions} {t}`", first_broker(brokers))).collect::<Vec<_>>().join(", ")
    )]
    CreateUnsupported {
        /// The bootstrap brokers.
        brokers: String,
        /// The missing topics.
        topics: Vec<String>,
        /// Partitions the topics should have.
        partitions: i32,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The broker refused to create one topic.
    #[error("broker {brokers} refused to create topic {topic} ({code})")]
    Rejected {
        /// The bootstrap brokers.
        brokers: String,
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The blocking metadata request did not complete.
    #[error("the blocking metadata task did not complete")]
    Task(#[source] tokio::task::JoinError),
}

impl TopicError {
    /// Whether trying again later may succeed (the broker was unreachable or busy).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, TopicError::Unreachable { .. } | TopicError::Task(_))
    }
}

fn first_broker(brokers: &str) -> &str {
    brokers.split(',').next().unwrap_or(brokers).trim()
}

/// Makes sure every topic in `topics` exists on the broker, creating the missing ones.
///
/// # Errors
/// [`TopicError::Unreachable`] when the broker does not answer within `admin_timeout` (retry),
/// [`TopicError::CreateUnsupported`] when it does not implement CreateTopics,
/// [`TopicError::Rejected`] when it refuses a topic.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[String]) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> =
        config
            .client_config()
            .create()
            .map_err(|source| TopicError::Client {
                brokers: config.brokers.clone(),
                source,
            })?;
    let admin = Arc::new(admin);
    let unreachable = |source| TopicError::Unreachable {
        brokers: config.brokers.clone(),
        topics: topics.to_vec(),
        source,
    };

    let timeout = config.admin_timeout;
    let meta_admin = Arc::clone(&admin);
    let existing: HashSet<String> = tokio::task::spawn_blocking(move || {
        meta_admin
            .inner()
            .fetch_metadata(None, timeout)
            .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
    })
    .await
    .map_err(TopicError::Task)?
    .map_err(unreachable)?;
    let missing: Vec<String> = topics
        .iter()
        .filter(|t| !existing.contains(*t))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }

    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = match admin.create_topics(&new_topics, &options).await {
        Ok(results) => results,
        Err(KafkaError::AdminOp(code)) if unsupported(code) => {
            return Err(TopicError::CreateUnsupported {
                brokers: config.brokers.clone(),
                topics: missing,
                partitions: config.partitions,
                code,
            });
        }
        Err(source) => return Err(unreachable(source)),
    };
    let mut unsupported_topics = Vec::new();
    let mut unsupported_code = None;
    for result in results {
        match result {
            Ok(topic) => info!(topic, brokers = %config.brokers, "created kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) if unsupported(code) => {
                unsupported_topics.push(topic);
                unsupported_code = Some(code);
            }
            Err((topic, code)) if transient(code) => {
                return Err(unreachable(KafkaError::AdminOp(code)).with_topic(topic));
            }
            Err((topic, code)) => {
                return Err(TopicError::Rejected {
                    brokers: config.brokers.clone(),
                    topic,
                    code,
                });
            }
        }
    }
    if let Some(code) = unsupported_code {
        return Err(TopicError::CreateUnsupported {
            brokers: config.brokers.clone(),
            topics: unsupported_topics,
            partitions: config.partitions,
            code,
        });
    }
    Ok(())
}

impl TopicError {
    fn with_topic(self, topic: String) -> Self {
        match self {
            TopicError::Unreachable {
                brokers, source, ..
            } => TopicError::Unreachable {
                brokers,
                topics: vec![topic],
                source,
            },
            other => other,
        }
    }
}

fn unsupported(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::InvalidRequest
    )
}

fn transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_names_topics_and_command() {
        let err = TopicError::CreateUnsupported {
            brokers: "127.0.0.1:9092,other:9092".into(),
            topics: vec!["fleetmind.vm_sample".into()],
            partitions: 1,
            code: RDKafkaErrorCode::UnsupportedVersion,
        };
        let text = err.to_string();
        assert!(text.contains("fleetmind.vm_sample"), "{text}");
        assert!(
            text.contains(
                "`tansu topic create --broker tcp://127.0.0.1:9092 --partitions 1 fleetmind.vm_sample`"
            ),
            "{text}"
        );
        assert!(!err.is_transient());
    }
}
