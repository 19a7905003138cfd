//! Claim, produce, mark: one batch of the outbox.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use uuid::Uuid;

use crate::observe::names;
use crate::{RelayConfig, kafka};

/// One unpublished outbox row.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    aggregatetype: String,
    aggregateid: String,
    #[sqlx(rename = "type")]
    event_type: String,
    payload: String,
    created_at: DateTime<Utc>,
}

/// Why a batch did not fully publish.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{failed} of {claimed} events not acknowledged; first error: {first}")]
    Undelivered {
        failed: usize,
        claimed: usize,
        first: String,
    },
}

/// Claims up to `batch_size` unpublished rows in `seq` order, produces them in
/// that order, waits for every delivery report, and marks published the rows
/// up to the first failure. Rows after a failure stay unpublished even when
/// acknowledged, so a retry resends them after the failed one and per-key
/// order holds (their duplicates carry the same `ce_id`). Returns the number
/// of rows claimed.
///
/// # Errors
/// [`BatchError`]; rows not marked are claimed again by a later batch.
pub async fn drain_batch(
    pool: &PgPool,
    producer: &FutureProducer,
    config: &RelayConfig,
    topics: &mut HashSet<String>,
) -> Result<usize, BatchError> {
    let started = std::time::Instant::now();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, aggregatetype, aggregateid, type, payload::text AS payload, created_at
         FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
    )
    .bind(config.batch_size)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let names: Vec<String> = rows
        .iter()
        .map(|r| config.topic_for(&r.aggregatetype))
        .collect();
    for name in &names {
        if !topics.contains(name) {
            kafka::ensure_topic(config, name).await?;
            topics.insert(name.clone());
        }
    }

    let mut deliveries = Vec::with_capacity(rows.len());
    for (row, topic) in rows.iter().zip(&names) {
        let id = row.id.to_string();
        let time = row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(header("ce_id", &id))
            .insert(header("ce_type", &row.event_type))
            .insert(header("ce_source", &config.ce_source))
            .insert(header("ce_specversion", "1.0"))
            .insert(header("ce_time", &time))
            .insert(header("content-type", "application/json"));
        let record = FutureRecord::to(topic)
            .key(&row.aggregateid)
            .payload(&row.payload)
            .headers(headers);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            // Queue full: produce the rest in a later batch.
            Err((e, _)) => {
                tracing::warn!(error = %e, "producer queue refused a message");
                break;
            }
        }
    }
    let enqueued = deliveries.len();
    let reports = futures::future::join_all(deliveries).await;

    let mut acked = Vec::with_capacity(enqueued);
    let mut first_error = None;
    // Events the broker did not acknowledge (failed or timed out); rows left
    // unmarked for other reasons (after a failure, or never queued) are not.
    let mut failed = 0u64;
    for (row, report) in rows.iter().zip(reports) {
        match report {
            Ok(Ok(_)) if first_error.is_none() => acked.push(row.id),
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                failed += 1;
                first_error.get_or_insert_with(|| "delivery report dropped".to_owned());
            }
        }
    }
    if !acked.is_empty() {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&acked)
            .execute(pool)
            .await?;
    }
    tracing::debug!(claimed = rows.len(), published = acked.len(), "batch done");
    metrics::counter!(names::PUBLISHED).increment(acked.len() as u64);
    metrics::counter!(names::FAILURES).increment(failed);
    metrics::histogram!(names::BATCH_SIZE).record(rows.len() as f64);
    metrics::histogram!(names::BATCH_DURATION).record(started.elapsed().as_secs_f64());
    match first_error {
        Some(first) => Err(BatchError::Undelivered {
            failed: rows.len() - acked.len(),
            claimed: rows.len(),
            first,
        }),
        None if enqueued < rows.len() => Ok(enqueued),
        None => Ok(rows.len()),
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
