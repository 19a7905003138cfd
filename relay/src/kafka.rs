//! The Kafka side: the idempotent producer and topic creation.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer as _};

use crate::RelayConfig;

/// The producer: `enable.idempotence=true` (so librdkafka's retries can
/// neither duplicate nor reorder within a partition) and `acks=all`.
///
/// # Errors
/// When librdkafka refuses the configuration.
pub fn producer(config: &RelayConfig) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
        .set("linger.ms", "5")
        .create()
}

/// Creates `topic` unless it exists.
///
/// # Errors
/// When the broker cannot be reached or refuses the topic.
pub async fn ensure_topic(config: &RelayConfig, topic: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_bootstrap_servers)
        .create()?;
    let new = NewTopic::new(
        topic,
        config.topic_partitions,
        TopicReplication::Fixed(config.topic_replication),
    );
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    tracing::info!(%topic, "topic ready");
    Ok(())
}

/// Waits up to the delivery timeout for queued messages before exit.
pub fn flush(producer: &FutureProducer) {
    if let Err(e) = producer.flush(Duration::from_secs(10)) {
        tracing::warn!(error = %e, "producer flush incomplete");
    }
}
