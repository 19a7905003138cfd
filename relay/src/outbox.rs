//! Claim, produce, mark: the outbox's batches, two at a time (one in
//! flight while the next is claimed).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::PgPool;
use uuid::Uuid;

use crate::observe::names;
use crate::{RelayConfig, kafka};

/// The claim statement: up to `$1` unpublished rows in `seq` order whose
/// `seq` is below `$2` or above `$3` (the range of the batch in flight;
/// `$2 = 0, $3 = -1` skips nothing). Columns: `id`, `seq`, `aggregatetype`,
/// `aggregateid`, `type`, `payload` (as text), `created_at`.
///
/// It is two ordered scans of the unpublished-rows index, below and above
/// the range, merged, so each stops after `$1` rows and a claim costs the
/// same whatever the backlog. (`seq < $2 OR seq > $3` made PostgreSQL read
/// every unpublished row and sort them; see [`crate::connect`] for the
/// rest.)
pub const CLAIM: &str = "\
    SELECT id, seq, aggregatetype, aggregateid, type, payload::text AS payload, created_at
    FROM ((SELECT * FROM outbox WHERE published_at IS NULL AND seq < $2 ORDER BY seq LIMIT $1)
          UNION ALL
          (SELECT * FROM outbox WHERE published_at IS NULL AND seq > $3 ORDER BY seq LIMIT $1))
         AS unpublished
    ORDER BY seq LIMIT $1";

/// One unpublished outbox row.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    seq: i64,
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

/// A claimed batch whose messages are with the producer.
pub struct InFlight {
    /// Ids and `seq` of the claimed rows, in `seq` order.
    rows: Vec<(Uuid, i64)>,
    /// Delivery reports of the first `deliveries.len()` rows (the producer's
    /// queue may have refused the rest; they stay unpublished).
    deliveries: Vec<DeliveryFuture>,
    started: std::time::Instant,
}

impl InFlight {
    /// The `seq` range of the batch: rows inside it that are not in it (late
    /// commits) wait until the batch is done.
    fn range(&self) -> Option<(i64, i64)> {
        Some((self.rows.first()?.1, self.rows.last()?.1))
    }
}

/// The relay's two-stage pipeline: while one batch waits for the broker's
/// acknowledgements, the next one is claimed and produced, so database and
/// broker work overlap. Batches complete (are marked) in claim order.
#[derive(Default)]
pub struct Pipeline {
    in_flight: Option<InFlight>,
}

impl Pipeline {
    /// One step: claims up to `batch_size` unpublished rows in `seq` order
    /// (skipping the batch in flight) and produces them, while it completes
    /// the batch that was in flight before (see [`complete`]). When fewer rows
    /// than a full batch were claimed, or the producer's queue refused some,
    /// the new batch is completed too, so a quiet outbox leaves nothing in
    /// flight. Returns the number of rows handed to the producer.
    ///
    /// # Errors
    /// [`BatchError`]. After an error nothing is in flight, and no row after
    /// the failure is marked, so a retry resends them in order.
    pub async fn step(
        &mut self,
        pool: &PgPool,
        producer: &FutureProducer,
        config: &RelayConfig,
        topics: &mut HashSet<String>,
    ) -> Result<usize, BatchError> {
        let skip = self.in_flight.as_ref().and_then(InFlight::range);
        // The next batch is claimed and produced while the one before is
        // awaited and marked: two database connections, so PostgreSQL's
        // work on the two batches overlaps with the relay's.
        let (claimed, completed) = tokio::join!(
            claim_and_produce(pool, producer, config, topics, skip),
            self.finish(pool)
        );
        let claimed = match (claimed, completed) {
            (Ok(claimed), Ok(())) => claimed,
            (Err(e), Ok(())) => return Err(e),
            // Both failed: the batch before's error is the one returned, as
            // an `Undelivered` makes the caller replace the producer.
            (Err(claim), Err(e)) => {
                tracing::warn!(error = %claim, "claiming the next batch failed too");
                return Err(e);
            }
            (Ok(claimed), Err(e)) => {
                // The newer batch was produced after the failed row: leave
                // it unmarked (its reports are awaited so none is left
                // behind).
                if let Some(batch) = claimed {
                    futures::future::join_all(batch.deliveries).await;
                }
                return Err(e);
            }
        };
        let Some(batch) = claimed else {
            return Ok(0);
        };
        // Only a full batch that the producer took whole stays in flight
        // beside the next one: after a short batch the outbox is drained,
        // and after a refused message the next batch must wait for it.
        let full = batch.rows.len() >= usize::try_from(config.batch_size).unwrap_or(usize::MAX);
        let enqueued = batch.deliveries.len();
        if full && enqueued == batch.rows.len() {
            self.in_flight = Some(batch);
            Ok(enqueued)
        } else {
            complete(pool, batch).await?;
            Ok(enqueued)
        }
    }

    /// Completes the batch in flight, if any: in each step, and before
    /// stopping or standing by, so everything acknowledged is marked.
    ///
    /// # Errors
    /// [`BatchError`].
    pub async fn finish(&mut self, pool: &PgPool) -> Result<(), BatchError> {
        match self.in_flight.take() {
            Some(batch) => complete(pool, batch).await.map(drop),
            None => Ok(()),
        }
    }
}

/// Claims up to `batch_size` unpublished rows in `seq` order, skipping the
/// `seq` range `skip` (that of the batch in flight), and hands them to the
/// producer in that order. `None` when there is nothing to claim.
async fn claim_and_produce(
    pool: &PgPool,
    producer: &FutureProducer,
    config: &RelayConfig,
    topics: &mut HashSet<String>,
    skip: Option<(i64, i64)>,
) -> Result<Option<InFlight>, BatchError> {
    let started = std::time::Instant::now();
    // Claiming is by the flag, never by a cursor: the range only keeps the
    // batch in flight from being claimed twice, and a late commit inside it
    // is claimed once that batch is done.
    let (lo, hi) = skip.unwrap_or((0, -1));
    let rows: Vec<Row> = sqlx::query_as(CLAIM)
        .bind(config.batch_size)
        .bind(lo)
        .bind(hi)
        .fetch_all(pool)
        .await?;
    if rows.is_empty() {
        return Ok(None);
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
        let headers = kafka::cloudevents_headers(
            &row.id,
            &row.event_type,
            &config.ce_source,
            &row.created_at,
        );
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
    Ok(Some(InFlight {
        rows: rows.iter().map(|r| (r.id, r.seq)).collect(),
        deliveries,
        started,
    }))
}

/// Waits for every delivery report of `batch` and marks published the rows
/// up to the first failure. Rows after a failure stay unpublished even when
/// acknowledged, so a retry resends them after the failed one and per-key
/// order holds (their duplicates carry the same `ce_id`). Returns the number
/// of rows marked.
///
/// # Errors
/// [`BatchError`]; rows not marked are claimed again by a later batch.
async fn complete(pool: &PgPool, batch: InFlight) -> Result<usize, BatchError> {
    let enqueued = batch.deliveries.len();
    let claimed = batch.rows.len();
    let reports = futures::future::join_all(batch.deliveries).await;

    let mut acked = Vec::with_capacity(enqueued);
    let mut first_error = None;
    // Events the broker did not acknowledge (failed or timed out); rows left
    // unmarked for other reasons (after a failure, or never queued) are not.
    let mut failed = 0u64;
    for ((id, _), report) in batch.rows.iter().zip(reports) {
        match report {
            Ok(Ok(_)) if first_error.is_none() => acked.push(*id),
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
    tracing::debug!(claimed, published = acked.len(), "batch done");
    metrics::counter!(names::PUBLISHED).increment(acked.len() as u64);
    metrics::counter!(names::FAILURES).increment(failed);
    metrics::histogram!(names::BATCH_SIZE).record(claimed as f64);
    metrics::histogram!(names::BATCH_DURATION).record(batch.started.elapsed().as_secs_f64());
    match first_error {
        Some(first) => Err(BatchError::Undelivered {
            failed: claimed - acked.len(),
            claimed,
            first,
        }),
        None => Ok(acked.len()),
    }
}
