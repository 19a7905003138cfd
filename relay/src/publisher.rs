//! The Kafka side: the [`Publisher`] owns the idempotent producer and the
//! topics known to exist, and turns outbox rows into Kafka messages with
//! CloudEvents headers.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use crate::config::KafkaConfig;
use crate::store::Row;

/// The relay's producer and the topics it has made sure of.
pub struct Publisher {
    config: KafkaConfig,
    producer: FutureProducer,
    /// Topics created or found to exist; a topic not here is ensured before
    /// the first message to it.
    topics: HashSet<String>,
}

impl Publisher {
    /// A publisher with a new producer (see [`producer`]) and no topic known.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            config: config.clone(),
            producer: producer(config)?,
            topics: HashSet::new(),
        })
    }

    /// Creates the topics of the configured aggregate types where absent. A
    /// topic that cannot be created yet is logged and retried before its
    /// first message.
    pub async fn ensure_topics(&mut self) {
        for aggregate in &self.config.aggregate_types {
            let topic = self.config.topic_for(aggregate);
            match ensure_topic(&self.config, &topic).await {
                Ok(()) => {
                    self.topics.insert(topic);
                }
                Err(e) => tracing::warn!(%topic, error = %e, "cannot create topic yet; will retry"),
            }
        }
    }

    /// Hands `rows` to the producer in order, each to its aggregate type's
    /// topic (created first where not known), keyed by aggregate id, with
    /// its CloudEvents headers. Returns the delivery reports of the first
    /// rows: when the producer's queue refuses one, it and the rest are not
    /// sent (they stay unpublished, for a later batch).
    ///
    /// # Errors
    /// When a topic cannot be created; then nothing was sent.
    pub async fn produce(&mut self, rows: &[Row]) -> Result<Vec<DeliveryFuture>, KafkaError> {
        let names: Vec<String> = rows
            .iter()
            .map(|r| self.config.topic_for(&r.aggregatetype))
            .collect();
        for name in &names {
            if !self.topics.contains(name) {
                ensure_topic(&self.config, name).await?;
                self.topics.insert(name.clone());
            }
        }

        let mut deliveries = Vec::with_capacity(rows.len());
        for (row, topic) in rows.iter().zip(&names) {
            let headers = cloudevents_headers(
                &row.id,
                &row.event_type,
                &self.config.ce_source,
                &row.created_at,
            );
            let record = FutureRecord::to(topic)
                .key(&row.aggregateid)
                .payload(&row.payload)
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                // Queue full: produce the rest in a later batch.
                Err((e, _)) => {
                    tracing::warn!(error = %e, "producer queue refused a message");
                    break;
                }
            }
        }
        Ok(deliveries)
    }

    /// Replaces the producer with a new one (new producer id, fresh sequence
    /// numbers). Call only with nothing in flight.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration; the old producer stays.
    pub fn replace_producer(&mut self) -> Result<(), KafkaError> {
        self.producer = producer(&self.config)?;
        Ok(())
    }

    /// The producer's fatal error, if it has one: an idempotent producer that
    /// lost its guarantees (e.g. an unrecoverable sequence gap) stays failed
    /// until it is replaced.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Waits up to 10 seconds for queued messages before exit.
    pub fn flush(&self) {
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

/// The producer: `enable.idempotence=true` (so librdkafka's retries can
/// neither duplicate nor reorder within a partition) and `acks=all`. These
/// two are set after the extra settings, so no extra setting can weaken them.
///
/// # Errors
/// When librdkafka refuses the configuration.
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    for (key, value) in &config.kafka_config {
        if key == "enable.idempotence" || key == "acks" {
            tracing::warn!(%key, %value, "ignored: the relay always uses enable.idempotence=true and acks=all");
        }
    }
    let mut client = config.client_config();
    // No lingering: a claimed batch is queued at once, so waiting would only
    // add latency to the lone event of a quiet outbox (librdkafka's default
    // is 5 ms); RELAY_KAFKA_LINGER_MS still overrides it.
    if !config.sets("linger.ms") {
        client.set("linger.ms", "0");
    }
    client
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
}

/// Creates `topic` unless it exists, with the configured partitions and
/// replication; waits up to 10 seconds for the broker.
///
/// # Errors
/// When the broker cannot be reached or refuses the topic.
pub async fn ensure_topic(config: &KafkaConfig, topic: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.client_config().create()?;
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
