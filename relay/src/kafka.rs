//! The Kafka side: the idempotent producer and topic creation.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer as _};

use crate::RelayConfig;

/// The librdkafka settings every client of the relay shares: the extra
/// settings (`RELAY_KAFKA_*`, `--kafka-config`, e.g. SASL and TLS) first,
/// then the bootstrap servers.
pub fn client_config(config: &RelayConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.kafka_config {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.kafka_bootstrap_servers);
    client
}

/// The producer: `enable.idempotence=true` (so librdkafka's retries can
/// neither duplicate nor reorder within a partition) and `acks=all`. These
/// two are set after the extra settings, so no extra setting can weaken them.
///
/// # Errors
/// When librdkafka refuses the configuration.
pub fn producer(config: &RelayConfig) -> Result<FutureProducer, KafkaError> {
    for (key, value) in &config.kafka_config {
        if key == "enable.idempotence" || key == "acks" {
            tracing::warn!(%key, %value, "ignored: the relay always uses enable.idempotence=true and acks=all");
        }
    }
    let mut client = client_config(config);
    // No lingering: a claimed batch is queued at once, so waiting would only
    // add latency to the lone event of a quiet outbox (librdkafka's default
    // is 5 ms); RELAY_KAFKA_LINGER_MS still overrides it.
    if !config.kafka_config.iter().any(|(k, _)| k == "linger.ms") {
        client.set("linger.ms", "0");
    }
    client
        .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
}

/// The producer's fatal error, if it has one: an idempotent producer that
/// lost its guarantees (e.g. an unrecoverable sequence gap) stays failed
/// until it is replaced.
pub fn fatal_error(producer: &FutureProducer) -> Option<String> {
    producer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code:?}: {reason}"))
}

/// Extra librdkafka settings from the environment: `RELAY_KAFKA_SASL_MECHANISMS`
/// becomes `sasl.mechanisms` (the prefix dropped, lower-cased, `_` → `.`).
pub fn settings_from_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.filter_map(|(name, value)| {
        let key = name.strip_prefix("RELAY_KAFKA_")?;
        Some((key.to_ascii_lowercase().replace('_', "."), value))
    })
    .collect()
}

/// The CloudEvents headers of one event (Kafka protocol binding, binary
/// mode): `ce_id` (the outbox row's id), `ce_type`, `ce_source`,
/// `ce_specversion` 1.0, `ce_time` (RFC 3339, microseconds, UTC) and
/// `content-type: application/json`.
pub fn cloudevents_headers(
    id: &uuid::Uuid,
    event_type: &str,
    source: &str,
    time: &chrono::DateTime<chrono::Utc>,
) -> OwnedHeaders {
    let id = id.to_string();
    let time = time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    OwnedHeaders::new_with_capacity(6)
        .insert(header("ce_id", &id))
        .insert(header("ce_type", event_type))
        .insert(header("ce_source", source))
        .insert(header("ce_specversion", "1.0"))
        .insert(header("ce_time", &time))
        .insert(header("content-type", "application/json"))
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Creates `topic` unless it exists.
///
/// # Errors
/// When the broker cannot be reached or refuses the topic.
pub async fn ensure_topic(config: &RelayConfig, topic: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_settings_become_librdkafka_keys() {
        let vars = [
            ("RELAY_KAFKA_SASL_MECHANISMS", "PLAIN"),
            ("RELAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("RELAY_BATCH_SIZE", "10"),
            ("KAFKA_BOOTSTRAP_SERVERS", "x:9092"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            settings_from_env(vars.into_iter()),
            [
                ("sasl.mechanisms".to_owned(), "PLAIN".to_owned()),
                ("security.protocol".to_owned(), "sasl_ssl".to_owned()),
            ]
        );
    }
}
